"""Rasterize a corpus once into a Parquet samples table (what training streams from).

  python -m jobs.rasterize --input /usr/bin --output runs/corpus
  python -m jobs.rasterize --input manifest.csv --output s3://bucket/corpus   # path[,family]
"""

from __future__ import annotations

import argparse

from embedlib import ray_io, sources
from embedlib.config import Config

from jobs._common import add_config_args, load_config, setup_logging


def rasterize(input_uri: str, output: str, cfg: Config) -> ray_io.JobSummary:
    files = sources.list_inputs(input_uri)
    run_info = {"job": "rasterize", "input": input_uri, "input_config": cfg.to_dict()["input"],
                "raster": cfg.to_dict()["raster"]}
    return ray_io.run_files_job(files, output, cfg, "samples", run_info)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="directory, glob, fsspec URI, or manifest .csv/.parquet")
    parser.add_argument("--output", required=True, help="folder for samples/ and errors/ (resumable)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args)
    ray_io.init_ray(args.ray_address)
    print(rasterize(args.input, args.output, cfg).describe("samples"))


if __name__ == "__main__":
    main()
