"""Fixtures: a real local Ray cluster, small corpora of this machine's real executables, bad inputs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from collections import defaultdict

import pytest

from embedlib.files import corpus
from embedlib.files.inputs import InputFile


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A real S3 API server (moto) on a free loopback port, with fake credentials in the environment and
    fsspec's s3 endpoint pointed at it; yields the s3fs filesystem with `bucket` created. Restores both after."""
    import fsspec
    from moto.server import ThreadedMotoServer

    from embedlib.files import sources

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://127.0.0.1:{port}"}
    sources.filesystem.cache_clear()
    try:
        fs = sources.filesystem("s3")
        fs.mkdir(bucket)
        yield fs
    finally:
        server.stop()
        fsspec.config.conf.pop("s3", None)
        sources.filesystem.cache_clear()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray cluster for the tests of one module, shut down after them: Ray prints its workers' output
    and the raylet's error reports (the traceback of an actor a test broke on purpose) on this process's stdout
    and stderr whenever they arrive, so while it runs here no test may read its own captured output (see
    _no_ray_while_reading_output). A Ray test parses a command's output from a subprocess instead."""
    import ray

    from embedlib import ray_io

    ray_io.init_ray(dashboard=True)  # modules that train (Ray Train) share it
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_ray_while_reading_output(request):
    """A test that reads its captured output (capsys, capfd) never runs while this process is a Ray driver:
    what it parsed could be another test's Ray output. Fails such a test at once instead of letting it flake."""
    if {"capsys", "capfd"} & set(request.fixturenames):
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            pytest.fail("this test reads its captured output while Ray runs in this process (its workers' output "
                        "and error reports land there at any time): run the command as a subprocess, or use Ray "
                        "in another module")
    yield


@pytest.fixture(scope="session")
def system_files() -> list[InputFile]:
    return corpus.system_executables(["/usr/bin", "/usr/sbin"])


def size_of(path: str) -> int | None:
    """A file's size, or None when it vanished since it was listed (a package being installed meanwhile)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def pick_families(files: list[InputFile], families: int, per_family: int, max_size: int = 400_000) -> list[InputFile]:
    """`per_family` files from each of the `families` largest dpkg families (small files: fast tests)."""
    by_family: dict[str, list[InputFile]] = defaultdict(list)
    for f in files:
        if f.family and (size_of(f.path) or max_size + 1) <= max_size:
            by_family[f.family].append(f)
    ranked = sorted(by_family, key=lambda k: (-len(by_family[k]), k))[:families]
    chosen = [f for fam in ranked for f in by_family[fam][:per_family]]
    assert len({f.family for f in chosen}) == families, "this machine lacks enough dpkg-owned executables"
    return chosen


@pytest.fixture(scope="session")
def small_corpus(system_files) -> list[InputFile]:
    """About 90 real ELF files of 3 dpkg families."""
    return pick_families(system_files, families=3, per_family=30)


@pytest.fixture
def bad_inputs(tmp_path):
    """A folder of every kind of bad input, plus one good executable. Returns (folder, {name: path})."""
    d = tmp_path / "bad"
    d.mkdir()
    paths = {}
    paths["empty"] = d / "empty.bin"
    paths["empty"].write_bytes(b"")
    paths["one_byte"] = d / "one.bin"
    paths["one_byte"].write_bytes(b"\x7f")
    paths["directory"] = d / "subdir"
    paths["directory"].mkdir()
    paths["good"] = d / "ls"
    shutil.copyfile("/usr/bin/ls", paths["good"])
    paths["symlink"] = d / "link-to-ls"
    os.symlink(paths["good"], paths["symlink"])
    paths["dangling"] = d / "dangling"
    os.symlink(d / "nowhere", paths["dangling"])
    paths["huge"] = d / "huge.bin"
    paths["huge"].write_bytes(os.urandom(300_000))  # over max_hash_bytes in the tests' config
    paths["big"] = d / "big.bin"
    paths["big"].write_bytes(os.urandom(100_000))  # over max_bytes, under max_hash_bytes: truncated
    paths["fifo"] = d / "fifo"
    os.mkfifo(paths["fifo"])
    return d, {k: str(v) for k, v in paths.items()}


def trained_checkpoint(path: str, cfg, seed: int = 0, rows: int = 64, epochs: int = 2) -> dict:
    """A small checkpoint that really trained, in this process, on `rows` synthetic files of 2 families (random
    sketch counts, one family's buckets shifted), with its true training record, precise BN and health report:
    pipeline and query tests need a model that passes the health gate, not a good one."""
    import numpy as np

    from embedlib.model import checkpoint

    from embedlib.train import health
    from embedlib.train.precise_bn import precise_statistics
    from embedlib.train.trainer import calibrate_gate, confidence_histogram
    from embedlib.train.loop import batches_of, make_optimizer, new_model, set_seed, train_epoch
    from embedlib.views import view_specs

    set_seed(seed)
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 2
    views = {}
    for name, (shape, dtype) in view_specs(cfg).items():
        counts = rng.integers(0, 3, (rows, *shape))
        counts[labels == 1, ..., : shape[-1] // 2] += 2
        views[name] = counts.astype(dtype)
    model = new_model(cfg, 2)
    optimizer = make_optimizer(model, cfg)
    batch = 16
    history = []
    for epoch in range(epochs):
        stats = train_epoch(model, batches_of(views, labels, batch, shuffle=True, seed=epoch, drop_last=True),
                            optimizer, cfg)
        history.append({"epoch": epoch, "steps": stats["steps"], "samples_all_ranks": stats["samples"],
                        "loss": stats["loss"], "world": 1, "batch_rows": batch})
    precise_statistics(model, lambda: (b for b, _ in batches_of(views, labels, batch)))
    model.eval()
    probe = list(batches_of(views, labels, batch, shuffle=True, seed=seed, drop_last=True))
    train_cfg = dict(cfg.to_dict()["train"], epochs=epochs, num_workers=1, batch_size=batch)
    extra = {"history": history, "train_files": rows, "training": health.training_report(history, rows, train_cfg),
             "bn_health": health.bn_health(model, probe, cfg.health), "note": "trained on synthetic rows (tests)"}
    gate = calibrate_gate(model, confidence_histogram(model, probe), cfg, "probe (training files)")
    if gate:  # as jobs.train does (there from the held-out files): the embeddings are the gated ones
        extra["open_set_gate"] = gate
    return checkpoint.save(path, model, cfg, ["a", "b"], extra)
