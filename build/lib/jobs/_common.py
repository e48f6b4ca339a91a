"""Shared command-line plumbing for the jobs: config flags, logging."""

from __future__ import annotations

import argparse
import logging

from embedlib import config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (sections: input, raster, model, train, health, embed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")


def load_config(args: argparse.Namespace, base: config.Config | None = None) -> config.Config:
    return config.load(args.config, args.overrides, base=base)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
