"""CPU per file of the views and of the model forward of two (or more) checkpoints, side by side on the same
files, in one process, rounds interleaved (one torch thread, batches of 64, the first round discarded: it pays
the kernels' first call and the allocator's warm-up).

  nice -n 10 .venv/bin/python bench/embed_cost.py --model new=/work/p22/new/model --model old=/work/p22/old/model \
      --manifest /work/p22/m15.csv --files 200
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib import views  # noqa: E402
from embedlib.files.corpus import read_manifest  # noqa: E402
from embedlib.model.embedder import Embedder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeat)")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    paths = [f.path for f in read_manifest(a.manifest)]
    paths = paths[:: max(1, len(paths) // a.files)][: a.files]
    embedders = {name: Embedder(uri, device="cpu", threads=1) for name, uri in (m.split("=", 1) for m in a.model)}
    datas = []
    for p in paths:
        with open(p, "rb") as fh:
            datas.append(fh.read(min(e.config.input.max_bytes for e in embedders.values())))
    spent: dict[str, list[tuple[float, float]]] = {name: [] for name in embedders}
    for r in range(a.rounds + 1):
        for name, e in embedders.items():
            t = time.process_time()
            vs = [views.compute_views(d, e.config) for d in datas]
            t_views = time.process_time() - t
            t = time.process_time()
            for s in range(0, len(vs), 64):
                e.embed_views(views.stack(vs[s : s + 64], e.config))
            if r:
                spent[name].append((t_views, time.process_time() - t))
    print(f"{len(datas)} files, {a.rounds} rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, rounds in spent.items():
        v, m = (1000 * float(np.median([x[i] for x in rounds])) / len(datas) for i in (0, 1))
        print(f"{name:>12}: views {v:.3f} ms/file  model {m:.3f} ms/file  (D={embedders[name].dim})")


if __name__ == "__main__":
    main()
