"""Recalibrate an existing checkpoint's BatchNorm statistics (precise BN) over a corpus, then re-check health.

  python -m jobs.recalibrate --model runs/model --samples runs/corpus --output runs/model-recal
  python -m jobs.recalibrate --model s3://b/model --input s3://b/big-manifest.parquet --workdir s3://b/work \\
      --output s3://b/model-recal

No labels are needed: statistics come from the model's inputs alone, so a bigger unlabelled corpus is fine.
The sample is uniform over the corpus (by sha256 hash), at most --max-samples files.
"""

from __future__ import annotations

import argparse

from embedlib import pipeline, ray_io

from embedlib.model import checkpoint

from embedlib.train import trainer

from jobs._common import add_config_args, load_config, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="a rasterized corpus root (from jobs.rasterize)")
    src.add_argument("--input", help="files or a manifest to rasterize into WORKDIR/corpus first")
    parser.add_argument("--workdir", default="runs/recalibrate")
    parser.add_argument("--output", required=True, help="new checkpoint folder")
    parser.add_argument("--max-samples", type=int, default=None, help="default: train.precise_bn_max_samples")
    add_config_args(parser)
    args = parser.parse_args(argv)
    samples = args.samples
    if args.input:
        cfg = load_config(args, base=checkpoint.config_of(checkpoint.load_meta(args.model)))
        samples = f"{args.workdir.rstrip('/')}/corpus"
        for summary in pipeline.rasterize_files(args.input, samples, cfg,
                                                executor=ray_io.executor_factory(cfg, args.ray_address)):
            print("rasterize: " + summary.describe("rasterized"))
    trainer.recalibrate(args.model, samples, args.output, ray_io.block_map(args.ray_address), args.max_samples)


if __name__ == "__main__":
    run_cli(main)
