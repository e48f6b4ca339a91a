"""The main job on the embedded default: this machine's executables -> trained model -> embeddings -> DuckDB.

  python -m jobs.demo                 # everything under runs/demo: local Ray, local Parquet, a DuckDB file
  python -m jobs.demo --limit 300     # a quicker, smaller run

Steps: list the ELF files under /usr/bin, /usr/sbin, /usr/lib, /usr/libexec, labelled by their dpkg package
-> rasterize (incremental) -> Ray Train + precise BN + BN health check -> the embedding job (incremental)
-> DuckDB views in runs/demo/embedlib.duckdb -> nearest neighbours, families, errors, pictures.
"""

from __future__ import annotations

import argparse

from embedlib.config import load
from embedlib.demo import DEFAULT_EXAMPLES, run_demo

from jobs._common import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files (0 = all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--examples", nargs="*", default=list(DEFAULT_EXAMPLES), help="files to show neighbours of")
    args = parser.parse_args(argv)
    run_demo(args.workdir, load(None, args.overrides), args.limit, args.examples)


if __name__ == "__main__":
    run_cli(main)
