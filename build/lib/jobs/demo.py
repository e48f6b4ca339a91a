"""The main job on the embedded default: this machine's executables -> trained CNN -> embeddings -> DuckDB.

  python -m jobs.demo                 # everything under runs/demo, local Ray, local Parquet, a DuckDB file
  python -m jobs.demo --limit 300     # a quicker, smaller run

Steps: list ELF files under /usr/bin, /usr/sbin, /usr/lib, /usr/libexec, labelled by owning dpkg package
-> rasterize (resumable) -> Ray Train + precise BN + health check -> Ray Data embedding job -> DuckDB
tables in runs/demo/embedlib.duckdb -> a few similarity searches and the family table.
"""

from __future__ import annotations

import argparse
import os
import time

from embedlib import corpus, query, ray_io
from embedlib.config import load

from jobs.embed import embed
from jobs.rasterize import rasterize
from jobs.train import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files (0 = all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--examples", nargs="*", default=["/usr/bin/ls", "/usr/bin/python3.11", "/usr/bin/gcc-12"],
                        help="files to show neighbours of")
    args = parser.parse_args(argv)
    cfg = load(None, args.overrides)
    work = args.workdir.rstrip("/")
    t0 = time.perf_counter()

    files = corpus.system_executables()
    if args.limit:
        files = files[: args.limit]
    manifest = corpus.write_manifest(files, f"{work}/manifest.csv")
    labelled = sum(1 for f in files if f.family)
    print(f"[1/5] corpus: {len(files)} ELF files ({labelled} owned by a dpkg package) -> {manifest}")

    ray_io.init_ray()
    print("[2/5] " + rasterize(manifest, f"{work}/corpus", cfg).describe("samples"))
    print("[3/5] training")
    train(f"{work}/corpus", f"{work}/model", cfg, os.path.abspath(f"{work}/ray"), "demo")
    print("[4/5] " + embed(f"{work}/model", manifest, f"{work}/embeddings", cfg).describe("embeddings"))

    print(f"[5/5] DuckDB tables in {work}/embedlib.duckdb")
    con = query.connect(f"{work}/embeddings", database=f"{work}/embedlib.duckdb")
    for example in args.examples:
        _, rows = query.ask(con, "sha256_of_path", path=example)
        if not rows:
            continue
        cols, hits = query.similar(con, rows[0][0], 5)
        print(f"\nnearest to {example}:")
        print(query.format_rows(cols, hits))
    print("\nfamilies:")
    print(query.format_rows(*query.ask(con, "families", k=15)))
    print("\nnot embedded:")
    print(query.format_rows(*query.ask(con, "errors", run=None)))
    con.close()
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Query it: embedlib families --db {work}/embedlib.duckdb")

if __name__ == "__main__":
    main()
