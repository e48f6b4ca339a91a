"""Embed executables with a trained checkpoint into an output root that accumulates nightly runs.

  python -m jobs.embed --model runs/model --input /srv/corpus --output runs/embeddings
  python -m jobs.embed --model s3://b/model --input s3://b/manifest.parquet --output s3://b/embeddings

Each run embeds only contents not yet embedded with this model in OUTPUT (unchanged files are not even
re-read), writes OUTPUT/embeddings/model_version=V/run=R/, OUTPUT/errors/run=R/ and a summary row in
OUTPUT/runs/. A killed run is finished by running the same command again; an unfinished run of another input
is parked (one line names the command that resumes it) and does not block this one. A second run started
while one is in progress exits with code 75, as does a run that lost the root's lease (rerun it later).
Refuses a checkpoint whose training record (epochs that ran no step or skipped training rows) or BatchNorm
health check failed unless --allow-unhealthy-model.
"""

from __future__ import annotations

import argparse
import dataclasses

from embedlib import pipeline

from embedlib.model import checkpoint
from embedlib.config import Config

from jobs._common import add_config_args, command_line, executor_for, load_config, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (from jobs.train or jobs.recalibrate)")
    parser.add_argument("--input", required=True, help="folder, file, manifest .csv/.parquet, or s3://... URI")
    parser.add_argument("--glob", action="store_true", help="take --input as a glob pattern (e.g. '/data/**/*.exe')")
    parser.add_argument("--output", required=True, help="output root (local or s3://...): runs accumulate there")
    parser.add_argument("--allow-unhealthy-model", action="store_true",
                        help="embed even if the checkpoint failed its health check (training record, BatchNorm)")
    parser.add_argument("--abandon-unfinished", action="store_true",
                        help="delete the partial output of unfinished runs of OTHER jobs or inputs in --output "
                             "(by default they are parked: left for their own command to resume)")
    parser.add_argument("--neighbors", type=int, default=0, metavar="K",
                        help="then store the K nearest rows of every file each run embedded (as jobs.neighbors)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    base = checkpoint.config_of(checkpoint.load_meta(args.model))
    cfg = load_config(args, base=dataclasses.replace(base, input=Config().input, embed=Config().embed))
    if (cfg.raster, cfg.views, cfg.model) != (base.raster, base.views, base.model):
        raise checkpoint.CheckpointError("raster, views and model settings come from the checkpoint; they cannot be "
                                         "set here")
    summaries = pipeline.embed_files(args.model, args.input, args.output, cfg, glob=args.glob,
                                     executor=executor_for(args, cfg),
                                     progress=not args.no_progress, abandon_unfinished=args.abandon_unfinished,
                                     allow_unhealthy=args.allow_unhealthy_model,
                                     command=command_line("jobs.embed", argv))
    for summary in summaries:
        print(summary.describe("embedded"))
        if args.neighbors:
            from embedlib.query.neighbors import compute_neighbors

            print(compute_neighbors(args.output, run=summary.run_id, k=args.neighbors).describe())


if __name__ == "__main__":
    run_cli(main)
