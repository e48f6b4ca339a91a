"""Compute the model's input views (byteplot image, ...) of a corpus once: the table training streams from.

  python -m jobs.rasterize --input labels.csv --output runs/corpus       # manifest: path[,family]
  python -m jobs.rasterize --input /usr/bin --output s3://bucket/corpus

Incremental like jobs.embed: OUTPUT/samples/views_version=W/run=R/, OUTPUT/errors/run=R/, OUTPUT/runs/.
"""

from __future__ import annotations

import argparse

from embedlib import pipeline

from jobs._common import add_config_args, command_line, executor_for, load_config, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder, file, manifest .csv/.parquet, or s3://... URI")
    parser.add_argument("--glob", action="store_true", help="take --input as a glob pattern")
    parser.add_argument("--output", required=True, help="output root (local or s3://...)")
    parser.add_argument("--abandon-unfinished", action="store_true",
                        help="delete the partial output of unfinished runs of OTHER jobs or inputs in --output "
                             "(by default they are parked: left for their own command to resume)")
    parser.add_argument("--no-progress", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args)
    summaries = pipeline.rasterize_files(args.input, args.output, cfg, glob=args.glob,
                                         executor=executor_for(args, cfg),
                                         progress=not args.no_progress, abandon_unfinished=args.abandon_unfinished,
                                         command=command_line("jobs.rasterize", argv))
    for summary in summaries:
        print(summary.describe("rasterized"))


if __name__ == "__main__":
    run_cli(main)
