"""CPU per file of each view and step under study, beside TLSH on the same files (issue 22, question 5).

  nice -n 10 .venv/bin/python studies/unseen_families/costs.py --manifest M.csv --files 300 [--rounds 3]

One process, one thread, time.process_time, bytes already read (the read is timed separately), each step
repeated --rounds times per file and the median taken (this machine is shared and loaded: compare figures
side by side, never across runs). Steps:
  read                      the product's bounded read (embedlib.sources.read_path, sha256 included)
  tlsh                      py-tlsh digest
  default views (numpy)     embedlib.views.compute_views for strings+idents+tokens (today's numpy code)
  tokens view alone         compute_views(tokens)
  symbols (parse + hash)    symbols.symbol_hashes: .dynsym / PE imports+exports, names hashed
  .dynstr range only        the ELF header walk that finds .dynstr (for a symbols view made of the idents
                            inside it: their hashes are the idents view's own)
  tokens 2^20 bucket list   the tokens' distinct hashes -> sorted distinct 20-bit buckets (uint32 list): the
                            input of a sparse fixed part / learned encoder, from the hashes the tokens view has
  fixed part, countsketch   IDF^2-weighted count sketch of that list into 2048 dims (numpy; the model would do it)
  model forward             the study network (3 sketch views x 4096 -> 512, -> 128) per file, batched 256
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from embedlib import views  # noqa: E402
from embedlib.config import InputConfig, ViewsConfig  # noqa: E402
from embedlib.files.sources import read_path  # noqa: E402

import features  # noqa: E402
import symbols  # noqa: E402


def token_hashes(arr: np.ndarray) -> np.ndarray:
    v = ViewsConfig()
    s, e = views.runs(views.printable(arr), min(v.strings_min_len, v.idents_min_len))
    long = (e - s) >= v.strings_min_len
    si, ei = views.identifiers_among(arr, s[~long], e[~long], v.idents_min_len)
    return views.word_hashes(arr, np.concatenate([s[long], si]), np.concatenate([e[long], ei]), v.tokens_min_len)


def timed(fn, rounds: int) -> tuple[float, object]:
    best = []
    out = None
    for _ in range(rounds):
        t = time.process_time()
        out = fn()
        best.append(time.process_time() - t)
    return float(np.median(best)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    import gc

    import tlsh
    import torch

    import train as T

    torch.set_num_threads(1)
    gc.disable()
    rows = features.read_manifest(a.manifest)
    step = max(1, len(rows) // a.files)
    paths = [p for p, _ in rows[::step][: a.files]]
    cfg = features.CFG["default"]
    cfg_tok = features.CFG["tokens"]
    dims = 2048
    rng = np.random.default_rng(0)
    idf = (rng.random(1 << 20) * 10 + 1).astype(np.float32) ** 2
    cs_dim = (np.arange(1 << 20, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    cs_dim = (cs_dim % np.uint64(dims)).astype(np.int64)
    cs_sign = np.where(rng.random(1 << 20) < 0.5, -1.0, 1.0).astype(np.float32)
    cost: dict[str, list[float]] = {}
    sizes, sketches = [], []
    for p in paths:
        t = time.process_time()
        r = read_path(p, InputConfig())
        cost.setdefault("read", []).append(time.process_time() - t)
        data = r.data
        arr = np.frombuffer(data, np.uint8)
        sizes.append(len(data))
        c, _ = timed(lambda: tlsh.hash(data) if len(data) >= 50 else "", a.rounds)
        cost.setdefault("tlsh", []).append(c)
        c, v = timed(lambda: views.compute_views(data, cfg), a.rounds)
        cost.setdefault("default views (numpy)", []).append(c)
        sketches.append(v)
        c, _ = timed(lambda: views.compute_views(data, cfg_tok), a.rounds)
        cost.setdefault("tokens view alone", []).append(c)
        c, _ = timed(lambda: symbols.symbol_hashes(data), a.rounds)
        cost.setdefault("symbols (parse + hash)", []).append(c)
        c, _ = timed(lambda: features.dynstr_range(data), a.rounds)
        cost.setdefault(".dynstr range only", []).append(c)
        h = token_hashes(arr)
        c, b = timed(lambda: np.unique((h >> np.uint64(44)).astype(np.uint32)), a.rounds)
        cost.setdefault("tokens 2^20 bucket list", []).append(c)

        def cs():
            w = idf[b]
            out = np.bincount(cs_dim[b], weights=w * cs_sign[b], minlength=dims)
            return out / max(np.linalg.norm(out), 1e-12)

        c, _ = timed(cs, a.rounds)
        cost.setdefault("fixed part, countsketch 2048", []).append(c)
    # model forward, batched as the embed job does
    import scipy.sparse as sp

    ins = {}
    for name in ("strings", "idents", "tokens"):
        x = sp.csr_matrix(np.stack([s[name] for s in sketches]).astype(np.float32))
        x.data = np.log1p(x.data)
        n = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        ins[name] = sp.csr_matrix(sp.diags(1 / np.maximum(n, 1e-12)) @ x)
    model = T.StudyNet({k: 4096 for k in ins}, 512, 128, 1, 0, 1.0).eval()
    with torch.inference_mode():
        t = time.process_time()
        for s in range(0, len(paths), 256):
            b = T.make_batch(ins, None, np.arange(s, min(len(paths), s + 256)))
            model.embed(b)
        model_s = (time.process_time() - t) / len(paths)
    tl = float(np.mean(cost["tlsh"]))
    print(f"{len(paths)} files, mean {np.mean(sizes) / 1e6:.3f} MB (first 16 MiB); CPU ms per file, one thread")
    print("| step | ms/file (mean) | x TLSH |")
    print("|---|---|---|")
    for k, v in cost.items():
        print(f"| {k} | {1000 * np.mean(v):.3f} | {np.mean(v) / tl:.2f} |")
    print(f"| model forward (study network, 3 x 4096 -> 512 -> 128, batch 256) | {1000 * model_s:.3f} | {model_s / tl:.2f} |")


if __name__ == "__main__":
    main()
