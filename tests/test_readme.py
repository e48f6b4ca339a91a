"""README's commands are the code's: every `python -m jobs.X ...` and `embedlib ...` that README.md shows (inline,
indented or fenced) parses with that job's own argument parser, and every job and the `embedlib` command answer
--help. Flags that drift from the code fail here."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest
from shell_commands import job_commands, parse_with_job_parser

from embedlib.query.cli import build_parser as embedlib_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()
JOBS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "jobs")) if f.endswith(".py") and not f.startswith("_"))


def snippets() -> list[str]:
    """Inline code spans, indented code lines and fenced code lines of README.md."""
    fenced = [line for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S) for line in block.splitlines()]
    unfenced = re.sub(r"```.*?```", "", README, flags=re.S)
    indented = [line.strip() for line in unfenced.splitlines() if line.startswith("    ") and line.strip()]
    inline = re.findall(r"`([^`\n]+)`", unfenced)
    return fenced + indented + inline


def job_snippets() -> list[str]:
    return sorted({s for s in snippets() if re.search(r"python -m jobs\.\w+ ", s + " ")})


def embedlib_snippets() -> list[str]:
    # `embedlib similar|families|...` lists commands: not one to run
    return sorted({s for s in snippets() if re.match(r"embedlib [a-z]", s) and "|" not in s})


def test_readme_shows_the_jobs_and_the_embedlib_command():
    shown = {c.module for s in job_snippets() for c in job_commands(s)}
    assert {"rasterize", "train", "embed", "neighbors", "compact", "evaluate", "demo"} <= shown, shown
    assert embedlib_snippets()


@pytest.mark.parametrize("snippet", job_snippets())
def test_every_job_command_in_readme_parses_with_the_jobs_own_parser(snippet):
    for command in job_commands(snippet):
        if command.argv or command.module in ("demo", "bn_study"):  # else a mention of the job by name
            parse_with_job_parser(command)


@pytest.mark.parametrize("snippet", embedlib_snippets())
def test_every_embedlib_command_in_readme_parses(snippet):
    try:
        embedlib_parser().parse_args(shlex.split(snippet)[1:])
    except SystemExit as exc:
        raise AssertionError(f"README's `{snippet}` does not parse (exit {exc.code})") from None


@pytest.mark.parametrize("job", JOBS)
def test_every_job_answers_help(job, capsys):
    module = importlib.import_module(f"jobs.{job}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_installed_embedlib_command_answers_help():
    embedlib = os.path.join(os.path.dirname(sys.executable), "embedlib")
    proc = subprocess.run([embedlib, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: embedlib" in proc.stdout, proc.stderr
