"""Word-token hashes (embedlib.views.word_runs) for every file of study caches, beside them; never in CI.

  nice -n 10 python studies/retrieval/token_cache.py --cache runs/study/deb/cache-pre,runs/study/deb/cache-main \
      --out runs/study/deb/tokens

One output shard per cache shard (OUT/<cache folder name>-shard-NNNNN.npz), rows in the cache's order, keyed by
path: tks_h/tks_len = distinct lowercased words (>= 3 bytes) inside printable strings of >= 6 bytes, tki_h/tki_len
= those inside NUL-bounded identifiers of 4..5 bytes that are not strings; tokens_cpu_s = CPU seconds of the
whole tokens view (scan + words + hashes) for the file.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from embedlib import views  # noqa: E402
from embedlib.config import Config, InputConfig, ViewsConfig  # noqa: E402
from embedlib.files.sources import read_file  # noqa: E402


def _words(arr, s, e):
    buf, ws, we = views.word_runs(arr, s, e, 3)
    h, first = np.unique(views.hash_runs(buf, ws, we), return_index=True)
    return h, (we - ws)[first].astype(np.int32)


def _shard(job: tuple[str, str]) -> str:
    src, out = job
    cfg = Config(input=InputConfig(max_bytes=16 * 1024 * 1024),
                 views=ViewsConfig(names=("strings", "idents", "tokens")))
    cfg_tok = Config(input=cfg.input, views=ViewsConfig(names=("tokens",)))
    paths = np.load(src)["path"]
    rec: dict[str, list] = {k: [] for k in ("tks_h", "tks_len", "tki_h", "tki_len")}
    cpu, cpu_all = [], []
    for p in paths.tolist():
        read = read_file(p, cfg.input)
        data = read.data if read.ok and read.data else b""
        arr = np.frombuffer(data, np.uint8)
        t = time.process_time()
        views.compute_views(data, cfg_tok)
        cpu.append(time.process_time() - t)
        t = time.process_time()
        views.compute_views(data, cfg)
        cpu_all.append(time.process_time() - t)
        s, e = views.runs(views.printable(arr), 4)
        long = (e - s) >= 6
        si, ei = views.identifiers_among(arr, s[~long], e[~long], 4)
        for key, (a, b) in (("tks", (s[long], e[long])), ("tki", (si, ei))):
            h, ln = _words(arr, a, b)
            rec[key + "_h"].append(h)
            rec[key + "_len"].append(ln)
    arrays = {"path": paths, "tokens_cpu_s": np.array(cpu), "sit_cpu_s": np.array(cpu_all)}
    for k, v in rec.items():
        arrays[k] = np.concatenate(v) if v else np.zeros(0)
        arrays[k + "_n"] = np.array([len(x) for x in v], np.int64)
    tmp = os.path.join(os.path.dirname(out), "tmp-" + os.path.basename(out))
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return out


def load(out: str) -> dict[str, dict[str, np.ndarray]]:
    """path -> {tks_h, tks_len, tki_h, tki_len, tokens_cpu_s, sit_cpu_s}."""
    res: dict[str, dict[str, np.ndarray]] = {}
    for f in sorted(glob.glob(os.path.join(out, "*-shard-*.npz"))):
        z = dict(np.load(f))
        split = {k: np.split(z[k], np.cumsum(z[k + "_n"])[:-1]) if len(z[k + "_n"]) else []
                 for k in ("tks_h", "tks_len", "tki_h", "tki_len")}
        for i, p in enumerate(z["path"].tolist()):
            res[p] = {k: v[i] for k, v in split.items()}
            res[p]["tokens_cpu_s"] = z["tokens_cpu_s"][i]
            res[p]["sit_cpu_s"] = z["sit_cpu_s"][i]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    jobs = []
    for c in a.cache.split(","):
        for src in sorted(glob.glob(os.path.join(c, "shard-*.npz"))):
            out = os.path.join(a.out, f"{os.path.basename(os.path.normpath(c))}-{os.path.basename(src)}")
            if not os.path.exists(out):
                jobs.append((src, out))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        for n, out in enumerate(pool.map(_shard, jobs), 1):
            print(f"{n}/{len(jobs)} {out} {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
