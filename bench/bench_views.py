"""CPU cost per file of each view (embedlib.views) beside TLSH, on the same files, in the same process; the
sketch views (strings, idents, tokens) both ways: the compiled kernels that compute_views uses and the numpy
reference (views.compute_views_reference, rows marked "ref"), side by side.

  nice -n 10 .venv/bin/python bench/bench_views.py --manifest M.csv --files 400
  nice -n 10 .venv/bin/python bench/bench_views.py              # this machine's /usr/bin ELF files
  nice -n 10 .venv/bin/python bench/bench_views.py --roots /usr/bin /usr/lib --only-default --rounds 5

--only-default: TLSH, the default views and the default views before token_ids (strings+idents+tokens).

Each file is read once (bounded by --max-bytes, like the product) and kept in memory; then every method runs
over all files, --rounds times after a warm-up round (discarded; it also pays the kernels' first call, reported
apart: a compile, or a load from numba's on-disk cache), methods interleaved within each round so that a change
of load hits them alike. Timed with time.process_time (CPU seconds, so other load inflates it less than wall
time); each row gives the median round and the spread (min..max) of the rounds. Reading is timed separately
and counts for both sides. GB/s is per core: bytes looked at over CPU seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib import views  # noqa: E402
from embedlib.config import Config  # noqa: E402


def sample_paths(manifest: str | None, n: int, roots: list[str]) -> list[str]:
    if manifest:
        from embedlib.files.corpus import read_manifest

        paths = [f.path for f in read_manifest(manifest)]
    else:
        from embedlib.files.corpus import system_executables

        paths = [f.path for f in system_executables(roots, owners={})]
    return paths[:: max(1, len(paths) // n)][:n]


def first_call_seconds() -> tuple[float, float]:
    """CPU seconds of importing the kernels (numba) and of their first call in this process: a compile, or a
    load from numba's on-disk cache."""
    started = time.process_time()
    from embedlib.views import kernels  # noqa: F401

    imported = time.process_time()
    views.compute_views(b"\0warm up\0", Config())
    return imported - started, time.process_time() - imported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--roots", nargs="+", default=["/usr/bin"], help="folders of ELF files (without --manifest)")
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024)
    ap.add_argument("--raster-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round")
    ap.add_argument("--only-default", action="store_true", help="only TLSH and the default views, both ways")
    ap.add_argument("--hot", action="store_true", help="copy each file's bytes (untimed) right before each method "
                    "runs on them, as the job's read() does: the bytes start in the CPU caches, not in memory")
    a = ap.parse_args()
    import tlsh

    import_s, first_s = first_call_seconds()
    paths = sample_paths(a.manifest, a.files, a.roots)
    t = time.process_time()
    datas = []
    for p in paths:
        with open(p, "rb") as fh:
            datas.append(fh.read(a.max_bytes))
    read_ms = 1000 * (time.process_time() - t) / len(paths)
    base = Config()
    methods = {"tlsh": lambda d: tlsh.hash(d)}
    before_ids = ("strings", "idents", "tokens")  # the default views before token_ids (issue 22), side by side
    combos = [before_ids, base.views.names] if a.only_default else (
        [(n,) for n in views.VIEW_NAMES] + [("strings", "idents"), ("image", "strings", "idents"),
                                            ("strings", "idents", "bytehist"), views.VIEW_NAMES, ("tokens",),
                                            before_ids, ("idents", "tokens"), base.views.names])
    for combo in combos:
        cfg = dataclasses.replace(base, views=dataclasses.replace(base.views, names=combo),
                                  raster=dataclasses.replace(base.raster, size=a.raster_size))
        methods["+".join(combo)] = lambda d, cfg=cfg: views.compute_views(d, cfg)
        if {"strings", "idents", "tokens", "token_ids"} & set(combo):
            methods["ref " + "+".join(combo)] = lambda d, cfg=cfg: views.compute_views_reference(d, cfg)
    rounds: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(a.rounds + 1):
        for name, fn in methods.items():
            if a.hot:
                spent = 0.0
                for d in datas:
                    fresh = bytes(bytearray(d))
                    t = time.process_time()
                    fn(fresh)
                    spent += time.process_time() - t
            else:
                t = time.process_time()
                for d in datas:
                    fn(d)
                spent = time.process_time() - t
            if r:  # round 0 warms caches
                rounds[name].append(spent)
    total = sum(map(len, datas))
    print(f"{len(datas)} files, mean {total / len(datas) / 1e6:.3f} MB read per file; read {read_ms:.3f} ms/file "
          f"(CPU); kernels: import {import_s:.2f} s, first call {first_s:.2f} s (CPU); {a.rounds} rounds"
          f"{', bytes hot in cache' if a.hot else ''}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    med = {name: float(np.median(secs)) for name, secs in rounds.items()}
    tl = med["tlsh"]
    for name, secs in rounds.items():
        ms = 1000 * med[name] / len(datas)
        print(f"{name:>38}: {ms:7.3f} ms/file  {total / med[name] / 1e9:5.2f} GB/s per core  "
              f"({ms / (1000 * tl / len(datas)):5.2f} x TLSH; with the read: "
              f"{(read_ms + ms) / (read_ms + 1000 * tl / len(datas)):5.2f} x)  CPU {med[name]:6.2f} s per round "
              f"[{min(secs):.2f}..{max(secs):.2f}]")
    for name in methods:
        if "ref " + name in med:
            print(f"kernels vs reference, {name}: {med['ref ' + name] / med[name]:.1f} x faster")


if __name__ == "__main__":
    main()
