"""The house's architecture, enforced: imports inside embedlib flow one way (no circles, each package imports
only the packages below it), only embedlib.ray_io touches Ray, and jobs are thin entry points that never import
each other. Read from the source (ast), every import counted, those inside functions too."""

from __future__ import annotations

import ast
import os
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import modules of its own layer's packages only when they sit in the same package,
# and anything in a lower layer. README's code map says why each package exists.
LAYERS: list[set[str]] = [
    {"errors", "schedule"},  # no embedlib imports at all
    {"config", "schema", "sql"},  # settings, columns, statements: the vocabulary everything else speaks
    {"files"},  # what the user asked for; bounded reads of one file
    {"views"},  # pure: bytes -> fixed-shape arrays
    {"root"},  # an output root as a table: the one filesystem layer, commits, the lease, compaction
    {"model"},  # the network, checkpoints, the embedder
    {"train"},  # split, labels, batches, the torch loop, precise BN, health, the training job
    {"pipeline", "query"},  # files -> committed runs; SQL over committed runs
    {"eval", "study"},  # retrieval evaluation against training-free baselines; the BatchNorm study
    {"ray_io"},  # the only Ray code: executors, Ray Train, kNN fan-out
    {"demo"},  # the main job on this machine
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules(base: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(os.path.join(REPO, base)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


MODULES = _modules("embedlib")


def _graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        deps = {n for n in _imports(path) if n in MODULES}
        graph[mod] = {d for d in deps if d != mod and not mod.startswith(d + ".")}  # a package's own __init__
    return graph


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_is_in_a_layer():
    assert {_package(m) for m in MODULES if m != "embedlib"} <= set(LEVEL)


def test_no_import_circles_inside_embedlib():
    graph = _graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other: {circles}"


def test_imports_flow_down_the_layers():
    wrong = defaultdict(set)
    for mod, deps in _graph().items():
        for dep in deps:
            a, b = _package(mod), _package(dep)
            if a == b or not b:
                continue
            if LEVEL[b] >= LEVEL[a]:
                wrong[mod].add(dep)
    assert not wrong, f"imports that flow up or across the layers: {dict(wrong)}"


def test_only_the_ray_module_imports_ray():
    users = sorted(m for m, p in MODULES.items()
                   if any(n == "ray" or n.startswith("ray.") for n in _imports(p)) and _package(m) != "ray_io")
    assert not users, f"only embedlib.ray_io may import ray: {users}"


def test_jobs_are_thin_and_never_import_each_other():
    jobs = _modules("jobs")
    for mod, path in jobs.items():
        if mod in ("jobs", "jobs._common"):
            continue
        others = {n for n in _imports(path) if n.startswith("jobs.") and not n.startswith("jobs._common")}
        assert not others, f"{mod} imports other jobs: {others}"
        assert len(open(path).readlines()) <= 110, f"{mod} is not a thin entry point"


def test_a_files_jobs_driver_never_imports_torch():
    """torch costs a process about 2 s of CPU and 450 MB of RSS: the driver of a files job (embed, rasterize,
    neighbours: its workers load the model themselves) never imports it; the training entry points do, at first
    use."""
    code = ("import sys; import jobs.embed, jobs.rasterize, jobs.neighbors; from embedlib import ray_io; "
            "from embedlib.ray_io import RayExecutor, executor_factory, knn_ray; "
            "from embedlib.query import neighbors; print('torch' in sys.modules); ray_io.train_with_ray; "
            "print('torch' in sys.modules)")
    assert _python_says(code) == ["False", "True"]


def test_the_embed_jobs_driver_loads_no_model(tmp_path):
    """The embed job's driver checks a checkpoint from its meta.json and starts Ray; the workers load the model
    (and the evidence weights it gives). Before, the driver loaded the whole model for the evidence weights:
    torch imported, the network built, ~7 CPU s and ~850 MB of RSS before Ray started (bench/embed_job_cpu.py)."""
    from conftest import trained_checkpoint
    from embedlib.config import Config

    cfg = Config()
    assert cfg.embed.evidence_items > 0  # the default keeps evidence: the case that loaded the model
    trained_checkpoint(str(tmp_path / "model"), cfg)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.bin").write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    code = ("import sys\n"
            "from embedlib import pipeline\n"
            "from embedlib.config import Config\n"
            "class Started(Exception): pass\n"
            "def start(): raise Started\n"
            "try:\n"
            f"    pipeline.embed_files({str(tmp_path / 'model')!r}, {str(inputs)!r}, {str(tmp_path / 'root')!r}, "
            "Config(), executor=start, progress=False)\n"
            "except Started:\n"
            "    print('started', 'torch' in sys.modules)\n")
    assert _python_says(code) == ["started", "False"]


def _python_says(code: str) -> list[str]:
    """The words a fresh Python process prints running `code` in the repository (which must succeed)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()
