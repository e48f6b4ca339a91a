"""The BatchNorm study: does eval mode predict what train mode measured, on the very files it trained on?

Reproduces the seed experiment (a briefly trained BN network: accurate in train mode, near chance in eval
mode on its own training files) on real executables, for every norm choice, with and without precise BN,
and held-out accuracy with BN vs without on a larger multi-family corpus.

  python -m jobs.bn_study                                   # this machine's ELF files, CPU, minutes
  python -m jobs.bn_study --corpus runs/debian/manifest.csv --views top --epochs 5   # bench/debian_corpus.py
  python -m jobs.bn_study --epochs 20 --seeds 0 1 2 --size 64 --files-per-family 300

Corpus views (--views): `top` = the --families largest families (the seed's "3 families"); `multi` = every
family with >= --min-family-files files. --files-per-family caps each family (stable hash of the path).
Images are rasterized in-process with the library (sources.read_file + raster.to_image) over a process
pool and cached under OUTPUT/cache, so reruns start training at once.

Writes OUTPUT/results.csv, results.md (one row per corpus x norm x seed x epoch x precise_bn), summary.md
(the headline table, printed at the end) and PNG plots gap_<corpus>.png, heldout_<corpus>.png.
"""

from __future__ import annotations

import argparse

from embedlib import config as config_mod
from embedlib.config import NORM_KINDS, Config
from embedlib.study.run import DEFAULT_OUTPUT, run

from jobs._common import run_cli

def _csv_list(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="local",
                   help="'local' (this machine's ELF files, family = dpkg package) or a manifest .csv/.parquet "
                        "with path,family (e.g. from bench/debian_corpus.py)")
    p.add_argument("--roots", type=_csv_list, default=["/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec"],
                   help="comma-separated roots for --corpus local")
    p.add_argument("--views", type=_csv_list, default=["top", "multi"], help="top and/or multi (comma-separated)")
    p.add_argument("--families", type=int, default=3, help="number of families in the 'top' view")
    p.add_argument("--min-family-files", type=int, default=20, help="families in the 'multi' view have >= this")
    p.add_argument("--files-per-family", type=int, default=None, help="cap per family (default: no cap)")
    p.add_argument("--norms", type=_csv_list, default=list(NORM_KINDS), help="comma-separated norm kinds")
    p.add_argument("--epochs", type=int, default=5, help="epochs for the 'top' view")
    p.add_argument("--multi-epochs", type=int, default=None,
                   help="epochs for the 'multi' view (default 2 x --epochs: held-out needs longer training)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--size", type=int, default=64, help="image size (px)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: config train.lr)")
    p.add_argument("--bn-momentum", type=float, default=0.01,
                   help="BN momentum for norm=batch, PyTorch convention (0.01 == Keras' default 0.99)")
    p.add_argument("--holdout-fraction", type=float, default=None, help="default: config train.holdout_fraction")
    p.add_argument("--eval-files", type=int, default=512,
                   help="training files evaluated per epoch (train mode and eval mode), a fixed hash-chosen subset")
    p.add_argument("--probe-files", type=int, default=256, help="training files in the BN health probe")
    p.add_argument("--workers", type=int, default=2, help="rasterization processes")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a busy 2-core machine: oversubscribed threads spin)")
    p.add_argument("--output", default=DEFAULT_OUTPUT)
    p.add_argument("--cache", default=None, help="image cache folder (default OUTPUT/cache; 'none' disables)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="only rewrite results.md, summary.md and the plots from OUTPUT/results.csv")
    p.add_argument("--config", help="TOML config (model/train settings used as the base)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    bad = [n for n in args.norms if n not in NORM_KINDS]
    if bad:
        p.error(f"unknown norm(s) {bad}; choose from {list(NORM_KINDS)}")
    if args.multi_epochs is None:
        args.multi_epochs = 2 * args.epochs
    return args


def base_config(args: argparse.Namespace) -> Config:
    cfg = config_mod.load(args.config, args.overrides)
    train = {"batch_size": args.batch_size}
    if args.lr is not None:
        train["lr"] = args.lr
    if args.holdout_fraction is not None:
        train["holdout_fraction"] = args.holdout_fraction
    return config_mod.from_dict({"raster": {"size": args.size}, "train": train}, cfg)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    return run(args, base_config(args))


if __name__ == "__main__":
    run_cli(main)
