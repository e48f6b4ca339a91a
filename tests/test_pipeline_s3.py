"""Object stores for real: manifest, inputs and output root on s3://, against a real S3 API server on loopback
(moto in server mode) through s3fs. The rerun skips everything by ETag, reading nothing."""

from __future__ import annotations


import pytest
from conftest import moto_s3, trained_checkpoint
import torch

from embedlib import pipeline
from embedlib.config import Config, InputConfig, ModelConfig, ViewsConfig
from embedlib.root import catalog
from embedlib.root.store import Store


@pytest.fixture(scope="module")
def s3():
    with moto_s3("bucket") as fs:
        yield fs


def test_manifest_inputs_and_output_on_s3_with_a_rerun_that_skips_everything(s3, tmp_path):
    torch.manual_seed(0)
    cfg = Config(views=ViewsConfig(buckets=256), model=ModelConfig(embedding_dim=24, skip_dim=16, hidden=16))
    trained_checkpoint("s3://bucket/model", cfg, seed=0)
    names = ["ls", "cat", "cp", "mv"]
    for name in names:
        s3.put(f"/usr/bin/{name}", f"bucket/in/{name}")
    s3.pipe("bucket/in/copy-of-ls", open("/usr/bin/ls", "rb").read())
    s3.pipe("bucket/in/empty", b"")
    manifest = "path,family\n" + "".join(f"s3://bucket/in/{n},fam\n" for n in [*names, "copy-of-ls", "empty"])
    manifest += "in/cat,relative-to-the-manifest\n"
    s3.pipe("bucket/manifest.csv", manifest.encode())
    run_cfg = Config(input=InputConfig(shard_size=2))
    (first,) = pipeline.embed_files("s3://bucket/model", "s3://bucket/manifest.csv", "s3://bucket/out", run_cfg,
                                    progress=False)
    c = first.counts
    assert (c["files_seen"], c["written"], c["duplicates"], c["failed"]) == (7, 4, 2, 1)
    store = Store("s3://bucket/out")
    emb = [r for f in catalog.table_files(store, "embeddings") for r in store.read_parquet(f).to_pylist()]
    # the relative cell keeps its text, read relative to the manifest; as the smallest path it represents cat
    assert sorted(r["path"] for r in emb) == ["in/cat"] + [f"s3://bucket/in/{n}" for n in ["copy-of-ls", "cp", "mv"]]
    assert all(r["etag"] for r in emb)
    # known by the exact URI it was read from (the relative cell's too), never by its text
    assert {r["path"]: r["location"] for r in emb}["in/cat"] == b"s3://bucket/in/cat"
    errors = [r for f in catalog.table_files(store, "errors") for r in store.read_parquet(f).to_pylist()]
    assert sorted((r["path"], r["status"]) for r in errors) == [
        ("s3://bucket/in/cat", "duplicate"), ("s3://bucket/in/empty", "empty"), ("s3://bucket/in/ls", "duplicate")]
    (again,) = pipeline.embed_files("s3://bucket/model", "s3://bucket/manifest.csv", "s3://bucket/out", run_cfg,
                                    progress=False)
    assert again.counts["skipped_known"] == 7 and again.counts["bytes_read"] == 0 and again.counts["written"] == 0
    assert len(catalog.finished_runs(store)) == 2
    assert not s3.exists("bucket/out/_work") or not s3.ls("bucket/out/_work")
    assert not s3.exists("bucket/out/_lock.json")  # released


def test_remote_names_with_glob_characters_are_names(s3):
    store = Store("s3://bucket/run[1]")
    decoy = Store("s3://bucket/run1")
    store.write_bytes("_work/r/a.json", b"{}")
    decoy.write_bytes("_work/r/a.json", b"{}")
    store.remove("_work/r")
    assert not store.exists("_work/r/a.json") and decoy.exists("_work/r/a.json")


def test_a_missing_bucket_or_an_object_as_the_root_is_one_line_before_the_lock(s3, tmp_path):
    """As users run it: a subprocess, pointed at the same S3 server through fsspec's environment settings."""
    import os
    import subprocess
    import sys

    import fsspec

    cfg = Config(views=ViewsConfig(buckets=256), model=ModelConfig(embedding_dim=24, skip_dim=16, hidden=16))
    trained_checkpoint(str(tmp_path / "model"), cfg, seed=0)
    s3.pipe("bucket/an-object", b"not a folder")
    env = {**os.environ, "FSSPEC_S3_ENDPOINT_URL": fsspec.config.conf["s3"]["endpoint_url"]}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root, message in [("s3://no-such-bucket/out", "bucket no-such-bucket does not exist"),
                          ("s3://bucket/an-object", "is a file")]:
        proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--model", str(tmp_path / "model"), "--input",
                               "/usr/bin/ls", "--output", root, "--executor", "local", "--no-progress"],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert not s3.exists("no-such-bucket")
