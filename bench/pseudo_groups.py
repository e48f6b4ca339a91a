"""Cost of grouping files into pseudo-families in the training driver (embedlib.train.pseudo): brute-force
nearest neighbours over fixed parts, then the mutual-link groups, at growing sample sizes.

Vectors are random unit rows of the fixed part's width (the cost does not depend on their values); the real
fixed parts come from one pass over the corpus in Ray tasks (timed by jobs.train in its pseudo-families line).

  python bench/pseudo_groups.py --sizes 10000,50000,100000 --dim 2048
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib.config import Config  # noqa: E402
from embedlib.train import pseudo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--dim", type=int, default=Config().model.skip_dim)
    a = ap.parse_args()
    cfg = Config().train
    print(f"{torch.get_num_threads()} torch threads, dim {a.dim}, {cfg.pseudo_neighbours} neighbours")
    for n in (int(s) for s in a.sizes.split(",")):
        v = torch.nn.functional.normalize(torch.randn(n, a.dim, generator=torch.Generator().manual_seed(0)), dim=1)
        t = time.perf_counter()
        idx, sim = pseudo.nearest(v, cfg.pseudo_neighbours)
        t_nn = time.perf_counter() - t
        t = time.perf_counter()
        pseudo.groups(idx, sim, -1.0)  # every link passes: the most work the union-find can get
        t_g = time.perf_counter() - t
        print(f"{n:>8} files: nearest {t_nn:7.1f} s, groups {t_g:5.1f} s, vectors {n * a.dim * 4 / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
