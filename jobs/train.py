"""Train the embedding network with Ray Train, recalibrate BatchNorm, check the training record and train-vs-eval
health, save a checkpoint.

  python -m jobs.train --input labels.csv --workdir runs/train --output runs/model
  python -m jobs.train --samples runs/corpus --output runs/model --set train.num_workers=4 --set train.use_gpu=true

--input (a manifest with path,family, or a folder) is rasterized first into WORKDIR/corpus (incremental);
--samples reuses a rasterized corpus (jobs.rasterize). The Ray Train run is --name plus a fingerprint of the
corpus, labels and settings: run again with the same --name and --workdir, a killed training resumes from its
last epoch checkpoint; with another input or other settings it starts from scratch (the first line says which).
"""

from __future__ import annotations

import argparse
import os

from embedlib import pipeline, ray_io

from embedlib.files import inputs

from embedlib.train import labels

from embedlib.train import trainer

from jobs._common import add_config_args, load_config, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="labelled manifest (.csv/.parquet with path,family) or folder to rasterize first")
    src.add_argument("--samples", help="an already rasterized corpus root (from jobs.rasterize)")
    parser.add_argument("--labels", help="manifest (path,family) whose families label the corpus (default: --input's; "
                                         "with --samples alone, the families recorded when it was rasterized)")
    parser.add_argument("--workdir", default="runs/train", help="rasterized corpus and Ray Train state")
    parser.add_argument("--output", required=True, help="checkpoint folder (local or s3://...)")
    parser.add_argument("--name", default="embedlib-train",
                        help="Ray Train run name (+ a fingerprint of input and settings): rerun with the same name, "
                             "input and settings to resume a killed training")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args)
    if args.labels:
        inputs.check_input(args.labels)  # a missing labels manifest is refused before anything starts
    samples = args.samples
    workdir = args.workdir.rstrip("/")
    if args.input:
        samples = f"{workdir}/corpus"
        for summary in pipeline.rasterize_files(args.input, samples, cfg,
                                                executor=ray_io.executor_factory(cfg, args.ray_address,
                                                                                 dashboard=True)):  # trains next
            print("rasterize: " + summary.describe("rasterized"))
    storage = f"{workdir}/ray" if "://" in workdir else os.path.abspath(f"{workdir}/ray")
    trainer.train(samples, args.output, cfg, fit=ray_io.train_with_ray, block_map=ray_io.block_map(args.ray_address),
                   storage=storage, name=args.name, labels=labels.for_training(args.labels or args.input, samples, cfg))


if __name__ == "__main__":
    run_cli(main)
