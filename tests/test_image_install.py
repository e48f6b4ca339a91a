"""The image's and the launcher's pip commands, run for real as `pip install --dry-run`.

cluster/Dockerfile and cluster/launcher/embedlib-aws.yaml install embedlib with pip commands that cannot be
tried here by building the image (no Docker engine in CI). So the commands are taken from those files as
they are: the Dockerfile's ARG defaults are substituted and its COPY instructions are replayed from the
build context that Dockerfile.dockerignore lets through into a scratch "filesystem"; the launcher's
file_mounts are replayed likewise. Every `pip install` is then run with `--dry-run --ignore-installed`
(a fresh environment, nothing installed) against the package index pip is configured with.

That is what catches "ERROR: Constraints cannot have extras" (a constraints file line such as
`ray[data,train]==2.60.0`), a COPY of a file the .dockerignore keeps out, a pin that does not exist or
conflicts, and an image without `ray[default]` (no `ray job submit`, no dashboard).

The offline tests check the same commands without a network; the dry-runs need the package index
(marked `network` and `slow`; skipped with a clear reason when the index cannot be reached).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
LAUNCHER = CLUSTER / "launcher" / "embedlib-aws.yaml"
TORCH_INDEX = "download.pytorch.org/whl/"
NOT_SYNCED = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "out"}  # .gitignore'd, never on nodes


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def project_requirement(name: str) -> Requirement:
    return next(r for r in map(Requirement, pyproject()["project"]["dependencies"]) if r.name == name)


# -- the commands as the files spell them ----------------------------------------------------------------

@dataclass
class PipInstall:
    where: str
    args: list[str]  # what follows `pip install`
    root: Path  # the scratch filesystem that absolute paths in args refer to

    def local(self, arg: str) -> str:
        """An absolute path of the image/node, mapped into the scratch filesystem."""
        return str(self.root / arg.lstrip("/")) if arg.startswith("/") else arg

    @property
    def argv(self) -> list[str]:
        return [self.local(a) for a in self.args]

    def values(self, *flags: str) -> list[str]:
        out = []
        for i, arg in enumerate(self.args):
            for flag in flags:
                if arg == flag and i + 1 < len(self.args):
                    out.append(self.args[i + 1])
                elif len(flag) > 2 and arg.startswith(flag + "="):
                    out.append(arg.split("=", 1)[1])
        return out

    @property
    def requirements(self) -> list[str]:
        """Positional arguments: requirement specifiers or local project paths."""
        out, skip = [], False
        for arg in self.args:
            if skip:
                skip = False
            elif arg.startswith("-"):
                skip = arg in ("-r", "-c", "-e", "--index-url", "-i", "--extra-index-url", "--find-links", "-f",
                               "--requirement", "--constraint")
            else:
                out.append(arg)
        return out

    @property
    def is_torch_index(self) -> bool:
        return any(TORCH_INDEX in v for v in self.values("--index-url", "-i"))


def pip_installs(script: str) -> list[list[str]]:
    """The arguments of every `[python -m] pip install ...` in a shell command line."""
    tokens = shlex.split(script, comments=True)
    commands, current = [], []
    for token in tokens + [";"]:
        if token in (";", "&&", "||", "|"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    out = []
    for cmd in commands:
        for i in range(len(cmd) - 1):
            if re.fullmatch(r"(\S*/)?pip3?", cmd[i]) and cmd[i + 1] == "install":
                out.append(cmd[i + 2:])
                break
            if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", cmd[i]) and cmd[i + 1:i + 4] == ["-m", "pip", "install"]:
                out.append(cmd[i + 4:])
                break
    return out


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, joined = [], ""
    for raw in text.splitlines():
        if not joined and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            joined += raw.rstrip()[:-1] + " "
            continue
        lines.append(joined + raw)
        joined = ""
    out = []
    for line in lines:
        instruction, _, rest = line.strip().partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def _docker_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`), on a cleaned path."""
    pattern, out, i = os.path.normpath(pattern), "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_allows(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides; `!` re-includes."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    allowed = True
    for pattern in patterns:
        if any(_docker_pattern(pattern.lstrip("!")).match(p) for p in prefixes):
            allowed = pattern.startswith("!")
    return allowed


def build_context(dest: Path) -> Path:
    """The files `docker build -f cluster/Dockerfile .` sends, per cluster/Dockerfile.dockerignore."""
    patterns = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for dirpath, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), REPO)
            if dockerignore_allows(rel, patterns):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)
    return dest


def dockerfile_pip_installs(scratch: Path) -> list[PipInstall]:
    """Replay ARG defaults and COPY into `scratch`/fs; return the pip installs of every RUN, in order."""
    context, fs = build_context(scratch / "context"), scratch / "fs"
    args: dict[str, str] = {}
    installs = []
    for instruction, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "ARG":
            name, eq, value = rest.partition("=")
            if eq:
                args[name] = value.strip().strip('"').strip("'")
        elif instruction == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            *sources, dest = parts
            for src in sources:
                origin = context / src.rstrip("/")
                assert origin.exists(), f"Dockerfile: COPY {src}: not in the build context (Dockerfile.dockerignore)"
                target = fs / dest.lstrip("/")
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True)
                else:
                    if dest.endswith("/"):
                        target = target / origin.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target)
        elif instruction == "RUN":
            for argv in pip_installs(substitute(rest, args)):
                installs.append(PipInstall(f"Dockerfile RUN {' '.join(argv)}", argv, fs))
    return installs


def launcher_commands() -> list[tuple[str, str]]:
    config = yaml.safe_load(LAUNCHER.read_text())
    out = [(f"setup_commands[{i}]", c) for i, c in enumerate(config.get("setup_commands", []))]
    out += [(f"head_setup_commands[{i}]", c) for i, c in enumerate(config.get("head_setup_commands", []))]
    out += [(f"worker_setup_commands[{i}]", c) for i, c in enumerate(config.get("worker_setup_commands", []))]
    for name, node_type in config["available_node_types"].items():
        out += [(f"{name}.worker_setup_commands[{i}]", c)
                for i, c in enumerate(node_type.get("worker_setup_commands", []))]
    return out


def launcher_pip_installs(scratch: Path) -> list[PipInstall]:
    """Replay the launcher's file_mounts (this checkout, without what .gitignore keeps off the nodes)."""
    fs = scratch / "node"
    for remote, local in yaml.safe_load(LAUNCHER.read_text())["file_mounts"].items():
        shutil.copytree(REPO / local, fs / remote.lstrip("/"), dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n in NOT_SYNCED or n.endswith(".egg-info")])
    return [PipInstall(f"launcher {where}: {cmd}", argv, fs)
            for where, cmd in launcher_commands() for argv in pip_installs(cmd)]


@pytest.fixture(scope="module")
def installs(tmp_path_factory) -> list[PipInstall]:
    scratch = tmp_path_factory.mktemp("image")
    found = dockerfile_pip_installs(scratch / "docker") + launcher_pip_installs(scratch / "launcher")
    assert len(found) >= 5, [i.where for i in found]
    return found


def constraint_files(install: PipInstall) -> list[Path]:
    return [Path(install.local(v)) for v in install.values("-c", "--constraint")]


def requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


# -- offline ----------------------------------------------------------------------------------------------

def test_project_installs_ray_default(installs):
    """`ray job submit` and the head's dashboard need ray[default] (aiohttp & co), in the project and the image."""
    ray = project_requirement("ray")
    assert {"default", "data", "train"} <= ray.extras, f"pyproject.toml: {ray}"
    for install in installs:
        for spec in install.requirements:
            if not spec.startswith("/") and Requirement(spec).name == "ray":
                req = Requirement(spec)
                assert req.extras == ray.extras and req.specifier == ray.specifier, f"{install.where}: {spec} vs {ray}"
    ray_extras_installed = [i for i in installs if any(not s.startswith("/") and Requirement(s).name == "ray"
                                                       and "default" in Requirement(s).extras for s in i.requirements)]
    assert any(i.where.startswith("Dockerfile") for i in ray_extras_installed), "the image never installs ray[default]"
    assert any(i.where.startswith("launcher") for i in ray_extras_installed), "the launcher never installs ray[default]"


def test_constraints_files_hold_plain_pins_only(installs):
    """pip accepts only `name==version`-like lines as constraints: no extras, no URLs, no editables."""
    used = {p for install in installs for p in constraint_files(install)}
    assert used, "no pip command uses a constraints file: nothing keeps the project install on the image's pins"
    for path in used:
        assert path.is_file(), f"constraints file {path} does not exist where the command runs"
        for line in requirement_lines(path):
            assert not line.startswith("-"), f"{path.name}: option line {line!r} in a constraints file"
            req = Requirement(line)
            assert not req.extras, f"{path.name}: {line!r}: pip refuses extras in constraints (put them on the requirement line)"
            assert not req.url and not req.marker, f"{path.name}: {line!r}"
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"{path.name}: {line!r} is not an exact pin"


def test_torch_comes_from_the_pytorch_index_at_the_project_pin(installs):
    torch = project_requirement("torch")
    from_index = [i for i in installs if i.is_torch_index]
    assert any(i.where.startswith("Dockerfile") for i in from_index) and any(i.where.startswith("launcher") for i in from_index)
    for install in from_index:
        assert install.requirements == [f"torch{torch.specifier}"], f"{install.where}: installs {install.requirements}"


def test_dockerfile_copies_only_what_the_build_context_has(tmp_path):
    dockerfile_pip_installs(tmp_path)  # asserts every COPY source is in the .dockerignore'd context


# -- online: the real commands as dry-runs ---------------------------------------------------------------

def index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            url = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            url = ""
    return url or "https://pypi.org/simple/"


def distinct(installs: list[PipInstall]) -> list[PipInstall]:
    """One command per distinct install (the launcher repeats the Dockerfile's): same flags, same files."""
    def key(install: PipInstall) -> tuple:
        parts = []
        for arg in install.args:
            if arg == "-q":
                continue
            local = Path(install.local(arg)) if arg.startswith("/") else None
            if local and local.is_file():
                parts.append(("file", hashlib.sha256(local.read_bytes()).hexdigest()))
            elif local and (local / "pyproject.toml").is_file():
                parts.append(("project", hashlib.sha256((local / "pyproject.toml").read_bytes()).hexdigest()))
            else:
                parts.append(arg)
        return tuple(parts)

    seen, out = set(), []
    for install in installs:
        if key(install) not in seen:
            seen.add(key(install))
            out.append(install)
    return out


@pytest.mark.slow
@pytest.mark.network
def test_install_commands_resolve_with_pip_dry_run(installs, tmp_path):
    """Run each pip command of the Dockerfile and the launcher with --dry-run --ignore-installed.

    The torch-from-the-PyTorch-index commands are checked offline only (a dry-run there downloads the
    CUDA wheels, gigabytes); torch==pin is resolved here anyway, through the requirements/constraints."""
    url = index_url()
    try:
        urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=15).close()
    except Exception as exc:  # no network: say so, do not pretend
        pytest.skip(f"package index {url} unreachable ({exc!r}); the offline checks above still ran")
    ray, torch = project_requirement("ray"), project_requirement("torch")
    ran = []
    for n, install in enumerate(distinct([i for i in installs if not i.is_torch_index])):
        report = tmp_path / f"report-{n}.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), *install.argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                              env={**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        assert proc.returncode == 0, f"{install.where}\n$ {shlex.join(cmd)}\n{proc.stderr[-3000:]}"
        ran.append(install.where)
        if not any(r.startswith("/") or Requirement(r).name == "ray" for r in install.requirements):
            continue  # e.g. boto3 for the autoscaler: resolving is all there is to check
        resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                    for item in json.loads(report.read_text())["install"]}
        assert resolved.get("ray") == str(next(iter(ray.specifier)).version), f"{install.where}: ray {resolved.get('ray')}"
        assert resolved.get("torch", "").split("+")[0] == str(next(iter(torch.specifier)).version), f"{install.where}: torch"
        # ray[default]: the dashboard and the Jobs SDK (aiohttp, aiohttp-cors, opencensus, ...)
        assert {"aiohttp", "aiohttp-cors", "opencensus"} <= resolved.keys(), f"{install.where}: no ray[default]"
    assert any(w.startswith("Dockerfile") for w in ran), ran
    print("\n".join(["dry-run:"] + ran))
