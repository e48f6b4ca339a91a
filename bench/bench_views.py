"""CPU cost per file of each view (embedlib.views) beside TLSH, on the same files, in the same process.

  nice -n 10 .venv/bin/python bench/bench_views.py --manifest M.csv --files 400
  nice -n 10 .venv/bin/python bench/bench_views.py              # this machine's /usr/bin ELF files

Each file is read once (bounded by --max-bytes, like the product) and kept in memory; then every method runs
over all files, twice (the first round warms caches and is discarded), timed with time.process_time (CPU
seconds, so other load inflates it less than wall time). Reading is timed separately and counts for both sides.
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


def sample_paths(manifest: str | None, n: int) -> list[str]:
    if manifest:
        from embedlib.files.corpus import read_manifest

        paths = [f.path for f in read_manifest(manifest)]
    else:
        from embedlib.files.corpus import system_executables

        paths = [f.path for f in system_executables(["/usr/bin"])]
    return paths[:: max(1, len(paths) // n)][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024)
    ap.add_argument("--raster-size", type=int, default=64)
    a = ap.parse_args()
    import tlsh

    paths = sample_paths(a.manifest, a.files)
    t = time.process_time()
    datas = []
    for p in paths:
        with open(p, "rb") as fh:
            datas.append(fh.read(a.max_bytes))
    read_ms = 1000 * (time.process_time() - t) / len(paths)
    base = Config()
    methods = {"tlsh": lambda d: tlsh.hash(d)}
    combos = [(n,) for n in views.VIEW_NAMES] + [("strings", "idents"), ("image", "strings", "idents"),
                                                  ("strings", "idents", "bytehist"), views.VIEW_NAMES,
                                                  ("tokens",), ("strings", "idents", "tokens"), ("idents", "tokens")]
    for combo in combos:
        cfg = dataclasses.replace(base, views=dataclasses.replace(base.views, names=combo),
                                  raster=dataclasses.replace(base.raster, size=a.raster_size))
        methods["+".join(combo)] = lambda d, cfg=cfg: views.compute_views(d, cfg)
    results = {}
    for _round in range(2):
        for name, fn in methods.items():
            t = time.process_time()
            for d in datas:
                fn(d)
            results[name] = 1000 * (time.process_time() - t) / len(datas)
    mb = sum(map(len, datas)) / len(datas) / 1e6
    print(f"{len(datas)} files, mean {mb:.3f} MB read per file; read {read_ms:.3f} ms/file (CPU)")
    tl = results["tlsh"]
    for name, ms in results.items():
        print(f"{name:>32}: {ms:7.3f} ms/file  ({ms / tl:5.2f} x TLSH); with the read: "
              f"{(read_ms + ms) / (read_ms + tl):5.2f} x (read + TLSH)")


if __name__ == "__main__":
    main()
