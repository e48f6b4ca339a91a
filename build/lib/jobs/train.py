"""Train the byteplot CNN with Ray Train, recalibrate BatchNorm, check train-vs-eval health, save a checkpoint.

  python -m jobs.train --input manifest.csv --workdir runs/train --output runs/model
  python -m jobs.train --samples runs/corpus --output runs/model --set train.num_workers=4 --set train.use_gpu=true

--input is rasterized first into WORKDIR/corpus (resumable); --samples reuses a rasterized corpus.
A run killed mid-training resumes from its last epoch checkpoint when run again with the same --name.
"""

from __future__ import annotations

import argparse
import os

from embedlib import checkpoint, health, ray_io
from embedlib.config import Config
from embedlib.model import build_model
from embedlib.training import calibrate_and_check, family_table, make_split

from jobs._common import add_config_args, load_config, setup_logging
from jobs.rasterize import rasterize


def train(samples_root: str, output: str, cfg: Config, storage: str, name: str) -> dict:
    table = family_table(samples_root)
    split = make_split(table.column("sha256").to_pylist(), table.column("family").to_pylist(), cfg)
    if len(split.families) < 2:
        raise SystemExit(f"need at least 2 families with >= {cfg.train.min_family_size} training files; "
                         f"found {len(split.families)}. Lower train.min_family_size or add labelled files.")
    print(f"training on {len(split.train)} files of {len(split.families)} families "
          f"({len(split.holdout)} held out, {table.num_rows - len(split.train) - len(split.holdout)} unlabelled "
          f"or in small families); {cfg.train.num_workers} Ray Train workers, norm={cfg.model.norm}")
    state, history = ray_io.train_with_ray(cfg, samples_root, split.train, split.probe, split.families,
                                           storage, name)
    for m in history:
        print(f"epoch {int(m['epoch']) + 1:>3}/{cfg.train.epochs}  loss {m['loss']:.4f}  "
              f"train-mode acc {m['train_mode_accuracy']:.3f}  probe: train-mode "
              f"{m.get('probe_train_mode_accuracy', float('nan')):.3f} eval-mode "
              f"{m.get('probe_eval_mode_accuracy', float('nan')):.3f}")
    model = build_model(cfg.model, len(split.families))
    model.load_state_dict(state)
    extra = calibrate_and_check(model, cfg, samples_root, split)
    extra.update({"history": history, "train_files": len(split.train), "samples_root": samples_root})
    print("before precise BN -> " + health.describe(extra["bn_health_before_precise_bn"]))
    print("saved checkpoint   -> " + health.describe(extra["bn_health"]))
    if "holdout_eval_mode_accuracy" in extra:
        print(f"held-out accuracy (eval mode): {extra['holdout_eval_mode_accuracy']:.3f} on {extra['holdout_files']} files")
    meta = checkpoint.save(output, model, cfg, split.families, extra)
    print(f"checkpoint {meta['model_version']} written to {output}")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="labelled manifest (.csv/.parquet with path,family) or URI to rasterize first")
    src.add_argument("--samples", help="an already rasterized corpus folder (from jobs.rasterize)")
    parser.add_argument("--workdir", default="runs/train", help="rasterized corpus and Ray Train state")
    parser.add_argument("--output", required=True, help="checkpoint folder (local or fsspec URI)")
    parser.add_argument("--name", default="embedlib-train", help="Ray Train run name (reuse it to resume)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args)
    ray_io.init_ray(args.ray_address)
    samples = args.samples
    if args.input:
        samples = f"{args.workdir.rstrip('/')}/corpus"
        print(rasterize(args.input, samples, cfg).describe("samples"))
    storage = os.path.abspath(f"{args.workdir}/ray") if "://" not in args.workdir else f"{args.workdir}/ray"
    train(samples, args.output, cfg, storage, args.name)


if __name__ == "__main__":
    main()
