"""Compact an output root: rewrite its committed parts into files of a target size, drop old model versions.

  python -m jobs.compact --root runs/out                              # every table, 128 MB files
  python -m jobs.compact --root s3://bucket/embedlib --keep-model-versions 2

Embeddings and neighbours (per model version), errors and runs: each group holding two or more files under half
the target is rewritten into files of about --target-mb, and committed in one record (ROOT/commits/W.json), so
readers see the old files or the new ones, never both, never neither. --keep-model-versions N also drops the
embeddings and neighbours of every model version but the N newest (never errors or runs). Superseded files are
deleted by a later compaction, once older than --grace-hours (24 by default: a query started before the switch
can still read them). Takes the root's lease like every writer.
Exit codes: 0 done, 2 bad input, 75 another job holds the root (or this one lost its lease): run it again later.
"""

from __future__ import annotations

import argparse

from embedlib.root import compact

from jobs._common import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.compact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="output root (local folder or s3://...)")
    parser.add_argument("--target-mb", type=float, default=compact.TARGET_MB,
                        help=f"size of the rewritten files (default {compact.TARGET_MB})")
    parser.add_argument("--keep-model-versions", type=int, metavar="N",
                        help="keep the embeddings and neighbours of the N newest model versions only")
    parser.add_argument("--grace-hours", type=float, default=compact.GRACE_SECONDS / 3600,
                        help="delete superseded files once their commit is this old "
                             f"(default {compact.GRACE_SECONDS / 3600:g})")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    summary = compact.compact(args.root, target_mb=args.target_mb, keep_model_versions=args.keep_model_versions,
                              grace_seconds=args.grace_hours * 3600)
    print(summary.describe())


if __name__ == "__main__":
    run_cli(main)
