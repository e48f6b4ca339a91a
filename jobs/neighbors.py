"""Nearest neighbours of every file a run embedded, against everything its model version holds.

  python -m jobs.neighbors --root runs/out          # every committed run of the current version without any, k=10
  python -m jobs.neighbors --root s3://bucket/embedlib --run 20261125T181500Z-1a2b3c -k 20    # (re)compute one run
  python -m jobs.neighbors --root runs/out --ray-tasks 8 --ray-address auto    # fan out over a Ray cluster

Writes ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet (sha256, rank, neighbor, distance,
metric, model_version, run_id) under the root's lease and commits them with ROOT/commits/W.json: a reader sees
all of a rewrite or none of it; a recomputed run's earlier neighbours are superseded in the same commit. Then,
in SQL: the `neighbors` and `attribution` views, near_duplicate_groups(max_distance), family_changes(a, b).
Blocks of queries x corpus rows keep memory flat; a GPU is used when there is one (torch), else numpy BLAS.
Exit codes: 0 done, 2 bad input, 75 another job holds the root (or this one lost its lease): run it again later.
"""

from __future__ import annotations

import argparse
import sys

from embedlib.errors import UserError
from embedlib.query.cli import OneLineParser
from embedlib.query.errors import QueryError
from embedlib.query.neighbors import METRICS, compute_neighbors

from jobs._common import interrupt_on_sigterm


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m jobs.neighbors", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="output root of jobs.embed (local folder or fsspec URI)")
    p.add_argument("--run", help="the committed run whose rows get neighbours (default: every committed run of the "
                                 "model version that has none yet)")
    p.add_argument("--model-version", help="model version to search (default: the run's, else the current one)")
    p.add_argument("-k", type=int, default=10, help="neighbours per file (default 10)")
    p.add_argument("--metric", choices=METRICS, default="cosine")
    p.add_argument("--backend", choices=("numpy", "torch", "torch:cpu", "torch:cuda"),
                   help="default: torch on a GPU when there is one, else numpy")
    p.add_argument("--block-rows", type=int, default=2048, help="queries per block (memory: x --corpus-block)")
    p.add_argument("--corpus-block", type=int, default=16384, help="corpus rows per block")
    p.add_argument("--ray-tasks", type=int, default=0, help="fan out over this many Ray tasks (0: in this process)")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    return p


def fan_out(args: argparse.Namespace):
    """knn over --ray-tasks Ray tasks (embedlib.ray_io.knn_ray), or None: in this process."""
    if args.ray_tasks <= 0:
        return None
    from functools import partial

    from embedlib import ray_io

    return partial(ray_io.knn_ray, num_tasks=args.ray_tasks, address=args.ray_address)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("block_rows", "corpus_block"):
        if getattr(args, name) < 1:
            print(f"jobs.neighbors: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        result = compute_neighbors(args.root, run=args.run, model_version=args.model_version, k=args.k,
                                   metric=args.metric, backend=args.backend, block_rows=args.block_rows,
                                   corpus_block=args.corpus_block, fan_out=fan_out(args))
    except UserError as exc:
        print(f"jobs.neighbors: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, QueryError) else exc.exit_code
    except KeyboardInterrupt:
        print("jobs.neighbors: interrupted: nothing was committed; run it again", file=sys.stderr)
        return 130
    print(result.describe())
    return 0


if __name__ == "__main__":
    interrupt_on_sigterm()
    sys.exit(main())
