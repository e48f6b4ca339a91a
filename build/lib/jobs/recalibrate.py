"""Recalibrate an existing checkpoint's BatchNorm statistics (precise BN) over a corpus, then re-check health.

  python -m jobs.recalibrate --model runs/model --samples runs/corpus --output runs/model-recal
  python -m jobs.recalibrate --model s3://b/model --input s3://b/big-manifest.parquet --workdir s3://b/work \\
      --output s3://b/model-recal

No labels are needed: statistics come from images alone, so a bigger unlabelled corpus is fine. Files of the
checkpoint's families (when the corpus has a family column) make up the health probe; otherwise the report
compares train- and eval-mode embeddings only.
"""

from __future__ import annotations

import argparse

import numpy as np

from embedlib import checkpoint, health, precise_bn, ray_io
from embedlib.model import batch_norms
from embedlib.train_loop import batches_of
from embedlib.training import bucket, family_table, image_batches, load_images

from jobs._common import add_config_args, load_config, setup_logging
from jobs.rasterize import rasterize


def recalibrate(model_uri: str, samples_root: str, output: str, max_samples: int | None = None) -> dict:
    ckpt = checkpoint.load(model_uri)
    cfg = ckpt.config
    if not batch_norms(ckpt.model):
        raise SystemExit(f"model {ckpt.version} has no BatchNorm layers (norm={cfg.model.norm}): nothing to do")
    size, bs = cfg.raster.size, cfg.train.batch_size
    index = {f: i for i, f in enumerate(ckpt.families)}
    table = family_table(samples_root)
    labelled = {s: index[f] for s, f in zip(table.column("sha256").to_pylist(), table.column("family").to_pylist())
                if f in index}
    probe_keys = sorted(labelled, key=lambda s: bucket(s, "probe"))[: cfg.train.probe_samples]
    if probe_keys:
        images, labels, _ = load_images(samples_root, {s: labelled[s] for s in probe_keys}, size)
    else:  # unlabelled corpus: agreement of embeddings only
        images, _, _ = load_images(samples_root, None, size, limit=cfg.train.probe_samples)
        labels = np.full(len(images), -1, dtype=np.int64)
    probe = list(batches_of(images, labels, bs, shuffle=True, seed=cfg.train.seed))
    before = health.bn_health(ckpt.model, probe, cfg.health)
    limit = max_samples or cfg.train.precise_bn_max_samples
    layers = precise_bn.precise_statistics(ckpt.model, image_batches(samples_root, size, max(bs, 256), limit))
    after = health.bn_health(ckpt.model, probe, cfg.health)
    extra = {k: v for k, v in ckpt.meta.items() if k not in ("model_version", "created_unix", "config", "families")}
    extra.update({"recalibrated_from": ckpt.version, "bn_health_before_precise_bn": before, "bn_health": after,
                  "precise_bn": {"layers": layers, "max_samples": limit, "samples_root": samples_root}})
    meta = checkpoint.save(output, ckpt.model, cfg, ckpt.families, extra)
    print("before -> " + health.describe(before))
    print("after  -> " + health.describe(after))
    print(f"checkpoint {meta['model_version']} (recalibrated from {ckpt.version}) written to {output}")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="a rasterized corpus folder (from jobs.rasterize)")
    src.add_argument("--input", help="files or a manifest to rasterize into WORKDIR/corpus first")
    parser.add_argument("--workdir", default="runs/recalibrate")
    parser.add_argument("--output", required=True, help="new checkpoint folder")
    parser.add_argument("--max-samples", type=int, default=None, help="default: train.precise_bn_max_samples")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    samples = args.samples
    if args.input:
        ray_io.init_ray(args.ray_address)
        samples = f"{args.workdir.rstrip('/')}/corpus"
        cfg = load_config(args, base=checkpoint.load(args.model).config)
        print(rasterize(args.input, samples, cfg).describe("samples"))
    recalibrate(args.model, samples, args.output, args.max_samples)


if __name__ == "__main__":
    main()
