"""Commands as they appear in docs and manifests (`python -m jobs.X ARGS`), parsed by the jobs' own parsers without
running them: what keeps README, cluster/README.md and the KubeRay manifests from drifting from the code."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from dataclasses import dataclass
from unittest import mock

SHELL_OPERATORS = {";", "&&", "||", "|", "&"}


@dataclass
class Command:
    module: str
    argv: list[str]

    def values(self, flag: str) -> list[str]:
        return [self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a == flag]

    @property
    def overrides(self) -> list[str]:
        return self.values("--set")


def job_commands(text: str) -> list[Command]:
    """Every `python -m jobs.X ARGS` in a shell command line."""
    tokens = shlex.split(text, comments=True)
    commands = []
    for i, token in enumerate(tokens[:-2]):
        if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", token) and tokens[i + 1] == "-m" and \
                tokens[i + 2].startswith("jobs."):
            argv = []
            for arg in tokens[i + 3:]:
                if arg in SHELL_OPERATORS:
                    break
                argv.append(arg)
            commands.append(Command(tokens[i + 2].removeprefix("jobs."), argv))
    return commands


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def parse_with_job_parser(command: Command) -> argparse.Namespace:
    """Run the job's main() only as far as its argument parser: parse_args is stopped right after parsing."""
    module = importlib.import_module(f"jobs.{command.module}")
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(real_parse_args(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop):
        try:
            module.main(command.argv)
        except _Parsed as parsed:
            return parsed.namespace
        except SystemExit as exc:
            raise AssertionError(f"jobs.{command.module} rejects its arguments {command.argv} (exit {exc.code})")
    raise AssertionError(f"jobs.{command.module}.main() returned without parsing arguments")
