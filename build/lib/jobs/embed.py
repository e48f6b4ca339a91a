"""Embed executables with a trained checkpoint: Ray Data CPU rasterize tasks -> embedding actors -> Parquet.

  python -m jobs.embed --model runs/model --input /usr/bin --output runs/embeddings
  python -m jobs.embed --model s3://b/model --input s3://b/manifest.parquet --output s3://b/emb/2026-11-25

Writes OUTPUT/embeddings/ (one row per unique sha256) and OUTPUT/errors/ (every other input path, with a
status and a reason). Run it again with the same arguments to finish a killed run: done shards are kept.
Refuses a checkpoint whose BatchNorm health check failed unless --allow-unhealthy-model.
"""

from __future__ import annotations

import argparse
import dataclasses

from embedlib import checkpoint, ray_io, sources
from embedlib.config import Config
from embedlib.embedder import check_health

from jobs._common import add_config_args, load_config, setup_logging


def embed(model_uri: str, input_uri: str, output: str, cfg: Config, allow_unhealthy: bool = False,
          progress: bool = True) -> ray_io.JobSummary:
    ckpt = checkpoint.load(model_uri)
    check_health(ckpt.meta, allow_unhealthy or cfg.embed.allow_unhealthy_model)
    if cfg.raster != ckpt.config.raster or cfg.model != ckpt.config.model:
        raise SystemExit("raster and model settings come from the checkpoint and cannot be overridden here")
    files = sources.list_inputs(input_uri)
    run_info = {"job": "embed", "input": input_uri, "model": model_uri, "model_version": ckpt.version,
                "input_config": cfg.to_dict()["input"]}
    return ray_io.run_files_job(files, output, cfg, "embeddings", run_info, model_uri=model_uri,
                                embedding_dim=ckpt.config.model.embedding_dim, progress=progress)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (from jobs.train or jobs.recalibrate)")
    parser.add_argument("--input", required=True, help="directory, glob, fsspec URI, or manifest .csv/.parquet")
    parser.add_argument("--output", required=True, help="output folder for embeddings/ and errors/ (resumable)")
    parser.add_argument("--allow-unhealthy-model", action="store_true",
                        help="embed even if the checkpoint's BN health report says eval mode disagrees with training")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    base = checkpoint.load(args.model).config
    cfg = load_config(args, base=dataclasses.replace(base, input=Config().input, embed=Config().embed))
    ray_io.init_ray(args.ray_address)
    print(embed(args.model, args.input, args.output, cfg, args.allow_unhealthy_model).describe("embeddings"))


if __name__ == "__main__":
    main()
