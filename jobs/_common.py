"""Shared command-line plumbing for the jobs: config flags, quiet logging, one-line errors."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from typing import Callable

from embedlib import config
from embedlib.errors import UserError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (sections: input, raster, model, train, health, embed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="ray (default): Ray tasks on a local or remote cluster; local: this process only")


def executor_for(args: argparse.Namespace, cfg: config.Config):
    """The pipeline executor the flags ask for (a factory: Ray starts only after the inputs are checked)."""
    from embedlib import ray_io
    from embedlib.pipeline import LocalExecutor

    return LocalExecutor() if args.executor == "local" else ray_io.executor_factory(cfg, args.ray_address)


def load_config(args: argparse.Namespace, base: config.Config | None = None) -> config.Config:
    try:
        return config.load(args.config, args.overrides, base=base)
    except FileNotFoundError as exc:
        raise config.ConfigError(f"config file {exc.filename} does not exist") from None


def command_line(job: str, argv: list[str] | None) -> str:
    """How this job was started, as a shell command (recorded so that a parked run names what resumes it)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", job, *(a for a in args if a != "--abandon-unfinished")])


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_sigterm() -> None:
    """SIGTERM (`ray job stop`, a pod being deleted) interrupts like Ctrl-C: the root's lease is released."""
    signal.signal(signal.SIGTERM, _interrupt)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a job's main; a UserError becomes one line on stderr and its exit code, never a traceback. SIGTERM
    (`ray job stop`, a pod being deleted) interrupts like Ctrl-C: the root's lease is released, exit 130."""
    setup_logging()
    interrupt_on_sigterm()
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to finish the work", file=sys.stderr)
        sys.exit(130)
