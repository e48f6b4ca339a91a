"""A real local Ray run on real executables: rasterize -> 2-worker Ray Train -> precise BN -> embed (Ray tasks,
and the actor path) -> rerun -> recalibrate -> query."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as pads
import pytest

from embedlib import config, pipeline, query, ray_io, schema

from embedlib.model import checkpoint

from embedlib.files import corpus

from embedlib.train import trainer
from embedlib.train.health import UnhealthyModelError
from embedlib.files.inputs import InputFile
from embedlib.model.network import batch_norms

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ["raster.size=32", "input.shard_size=16", "train.epochs=3", "train.batch_size=16", "train.num_workers=2",
            "train.min_family_size=3", "train.holdout_fraction=0.2", "model.channels=[8, 16, 16, 32]",
            'views.names=["image", "strings", "idents"]', "views.buckets=256", "model.hidden=32",
            "model.embedding_dim=48", "model.skip_dim=16"]


def _table(root, name):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
        return schema.ERRORS.empty_table()
    return pads.dataset(folder, format="parquet", partitioning=None).to_table()


@pytest.fixture(scope="module")
def trained(ray_local, small_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    cfg = config.load(None, SETTINGS)
    manifest = corpus.write_manifest(small_corpus, str(work / "train.csv"))
    executor = ray_io.RayExecutor(cfg)
    (summary,) = pipeline.rasterize_files(manifest, str(work / "corpus"), cfg, executor=executor, progress=False)
    meta = trainer.train(str(work / "corpus"), str(work / "model"), cfg, fit=ray_io.train_with_ray,
                          block_map=ray_io.ray_block_map, storage=str(work / "ray"), name="e2e")
    return work, cfg, meta, summary


def test_rasterize_writes_one_sample_per_unique_file(trained, small_corpus):
    work, cfg, _, summary = trained
    samples, errors = _table(work / "corpus", "samples"), _table(work / "corpus", "errors")
    assert samples.num_rows + errors.num_rows == len(small_corpus)
    assert len(set(samples.column("sha256").to_pylist())) == samples.num_rows
    assert set(errors.column("status").to_pylist()) <= {schema.STATUS_DUPLICATE}
    assert all(len(b) == 32 * 32 for b in samples.column("view_image").to_pylist())
    assert all(len(b) == 256 for b in samples.column("view_strings").to_pylist())
    assert summary.counts["written"] == samples.num_rows


def test_two_worker_training_is_even_and_records_health(trained):
    _, cfg, meta, _ = trained
    history = meta["history"]
    assert [int(m["epoch"]) for m in history] == list(range(cfg.train.epochs))
    # every rank ran the same steps: the epoch's samples are a whole number of global batches
    assert all(m["samples_all_ranks"] == m["steps"] * cfg.train.batch_size * cfg.train.num_workers > 0
               for m in history)
    assert all(m["samples_all_ranks"] > meta["train_files"] - 2 * cfg.train.batch_size * 2 for m in history)
    for key in ("bn_health", "bn_health_before_precise_bn", "precise_bn"):
        assert key in meta
    ckpt = checkpoint.load(str(trained[0] / "model"))
    layers = {name for name, _ in batch_norms(ckpt.model)}
    assert set(meta["precise_bn"]["layers"]) == layers and "encoders.image.features.1" in layers
    assert "encoders.strings.norm" in layers and "encoders.idents.norm" in layers
    idf = ckpt.model.encoders["strings"].idf
    assert idf.min() >= 1.0 and idf.max() > idf.min()  # set from the training files' document frequencies
    assert meta["bn_health"]["healthy"]
    ckpt = checkpoint.load(str(trained[0] / "model"))
    assert ckpt.version == meta["model_version"] and len(ckpt.families) == 3


@pytest.fixture(scope="module")
def embedded(trained, tmp_path_factory):
    work, cfg, _, _ = trained
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty").write_bytes(b"")
    (bad / "big").write_bytes(os.urandom(100_000))
    os.mkfifo(bad / "fifo")
    os.symlink("/usr/bin/ls", bad / "link")
    files = corpus.system_executables(["/usr/bin"])[:40] + [InputFile(str(p)) for p in sorted(bad.iterdir())]
    files.append(InputFile("/proc/self/mem"))
    manifest = corpus.write_manifest(files, str(work / "embed.csv"))
    cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, max_bytes=64 * 1024, shard_size=8))
    (summary,) = pipeline.embed_files(str(work / "model"), manifest, str(work / "emb"), cfg,
                                      executor=ray_io.RayExecutor(cfg), progress=False)
    return work, cfg, files, manifest, summary


def test_embedding_accounts_for_every_input(embedded):
    work, _, files, _, summary = embedded
    emb, err = _table(work / "emb", "embeddings"), _table(work / "emb", "errors")
    assert sorted(emb.column("path").to_pylist() + err.column("path").to_pylist()) == sorted(f.path for f in files)
    assert len(set(emb.column("sha256").to_pylist())) == emb.num_rows
    status = dict(zip(err.column("path").to_pylist(), err.column("status").to_pylist()))
    assert status["/proc/self/mem"] == "unreadable"
    assert {s for p, s in status.items() if "/bad" in p} == {"empty", "not_a_file", "symlink"}
    rows = {r["path"]: r for r in emb.to_pylist()}
    assert next(r for p, r in rows.items() if p.endswith("/big"))["truncated"]
    assert emb.schema.field("embedding").type.list_size == 48
    assert summary.counts["failed"] + summary.counts["duplicates"] == err.num_rows


def test_rerun_adds_nothing_and_the_actor_path_embeds_identically(embedded, tmp_path):
    work, cfg, _, manifest, _ = embedded
    (again,) = pipeline.embed_files(str(work / "model"), manifest, str(work / "emb"), cfg,
                                    executor=ray_io.RayExecutor(cfg), progress=False)
    # nothing new; only the unreadable file is tried again (permissions can change without changing mtime)
    assert again.counts["written"] == 0 and again.counts["failed"] == 1
    assert again.counts["skipped_known"] == again.counts["files_seen"] - 1
    actors = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, num_actors=1))
    pipeline.embed_files(str(work / "model"), manifest, str(tmp_path / "emb"), actors,
                         executor=ray_io.RayExecutor(actors), progress=False)
    a = _table(work / "emb", "embeddings").sort_by("sha256")
    b = _table(tmp_path / "emb", "embeddings").sort_by("sha256")
    assert a.column("sha256").to_pylist() == b.column("sha256").to_pylist()
    assert np.allclose(np.asarray(a.column("embedding").to_pylist()), np.asarray(b.column("embedding").to_pylist()),
                       atol=1e-5)
    # the evidence too: the actors' CPU tasks weigh it with the checkpoint's weights, loaded in the worker
    assert any(a.column("evidence").to_pylist())
    assert [[x["item"] for x in e or []] for e in a.column("evidence").to_pylist()] == \
        [[x["item"] for x in e or []] for e in b.column("evidence").to_pylist()]


def test_embedding_actors_that_cannot_start_never_make_the_job_spin(ray_local, tmp_path, caplog):
    """Actors whose constructor fails are dead for good (Ray does not restart them). The writer replaces each
    one a bounded number of times, then hands the chunks to plain CPU tasks, whose error ends the job; before,
    it resubmitted to the dead actor forever (seen when a node's working dir vanished under its new actor)."""
    import threading

    from embedlib.pipeline.tasks import Target

    cfg = config.load(None, ["embed.num_actors=2"])
    target = Target(table="embeddings", version="m-missing", config=cfg, model_uri=str(tmp_path / "no-model"),
                    dim=8)
    outcome: dict = {}

    def write() -> None:
        try:
            outcome["results"] = list(ray_io.RayExecutor(cfg)._write_with_actors(
                str(tmp_path / "root"), "r", [0, 1, 2], target, 2, False))
        except Exception as exc:  # noqa: BLE001 - the assertion below says what was expected
            outcome["error"] = exc

    worker = threading.Thread(target=write, daemon=True)
    with caplog.at_level("WARNING", logger="embedlib.ray_io"):
        worker.start()
        worker.join(timeout=240)
    assert not worker.is_alive(), "the writer kept resubmitting to dead actors"
    assert "error" in outcome and "results" not in outcome
    assert any("CPU tasks write" in r.getMessage() for r in caplog.records)


def test_unhealthy_checkpoint_is_refused_unless_allowed(embedded, tmp_path):
    work, cfg, _, manifest, _ = embedded
    ckpt = checkpoint.load(str(work / "model"))
    sick = dict(ckpt.meta, bn_health={"healthy": False, "problems": ["eval-mode accuracy 0.33 is 0.54 below ..."]})
    extra = {k: v for k, v in sick.items() if k not in ("config", "families")}
    checkpoint.save(str(tmp_path / "sick"), ckpt.model, ckpt.config, ckpt.families, extra)
    with pytest.raises(UnhealthyModelError, match="failed its health check"):
        pipeline.embed_files(str(tmp_path / "sick"), manifest, str(tmp_path / "out"), cfg, progress=False)
    (summary,) = pipeline.embed_files(str(tmp_path / "sick"), manifest, str(tmp_path / "out"), cfg, progress=False,
                                      allow_unhealthy=True)
    assert summary.counts["written"] > 0


def test_query_over_the_real_output_root(embedded):
    """embedlib.query over what jobs.embed wrote: views, similar() against numpy, jobs.neighbors, --file. The
    command's output is read from its own process: this one's stdout also carries Ray's output."""
    import numpy as np

    from embedlib.query.neighbors import compute_neighbors

    work, _, files, _, summary = embedded
    root = str(work / "emb")
    con = query.connect(root)
    emb = _table(work / "emb", "embeddings")
    assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM embeddings").fetchone() == (emb.num_rows,) * 2
    (typ,) = con.execute("SELECT typeof(embedding) FROM embeddings LIMIT 1").fetchone()
    assert typ == f"FLOAT[{emb.schema.field('embedding').type.list_size}]"
    assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == _table(work / "emb", "errors").num_rows
    runs = con.execute("SELECT run_id, embedded_rows FROM run_counts ORDER BY run_id").fetchall()
    assert sum(n for _, n in runs) == emb.num_rows  # (a later test of this module may add an empty rerun)
    shas = emb.column("sha256").to_pylist()
    x = np.asarray(emb.column("embedding").to_pylist(), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = 0
    d = 1 - x @ x[q]
    want = [shas[i] for i in sorted(range(len(shas)), key=lambda i: (round(float(d[i]), 5), shas[i])) if i != q][:5]
    cols, rows = query.similar(con, shas[q], 5)
    assert [r[cols.index("sha256")] for r in rows] == want
    assert sum(compute_neighbors(root, run=run_id, k=3).queries for run_id, _ in runs) == emb.num_rows
    con = query.connect(root)
    assert con.execute("SELECT count(*) FROM neighbors").fetchone()[0] == 3 * emb.num_rows
    assert con.execute("SELECT count(*) FROM attribution").fetchone()[0] == emb.num_rows
    path = emb.column("path").to_pylist()[q]
    proc = subprocess.run([sys.executable, "-m", "jobs.query", "similar", "--file", path, "-k", "3", "--root", root,
                           "--format", "csv"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[1].split(",")[2] == shas[q] and float(lines[1].split(",")[1]) < 1e-5  # the file itself


def test_recalibrate_writes_a_new_healthy_version(trained, tmp_path):
    work, _, meta, _ = trained
    new = trainer.recalibrate(str(work / "model"), str(work / "corpus"), str(tmp_path / "recal"),
                               ray_io.ray_block_map)
    assert new["recalibrated_from"] == meta["model_version"] and new["bn_health"]["healthy"]
    assert checkpoint.load(str(tmp_path / "recal")).version == new["model_version"]


def test_sigkill_of_a_ray_job_then_rerun(trained, tmp_path):
    work, *_ = trained
    src = tmp_path / "in"
    src.mkdir()
    picked = [f.path for f in corpus.system_executables(["/usr/bin"])[:60]]
    for i, p in enumerate(picked):
        os.symlink(p, src / f"{i:03d}")
    cmd = [sys.executable, "-m", "jobs.embed", "--model", str(work / "model"), "--input", str(src), "--output",
           str(tmp_path / "out"), "--no-progress", "--set", "input.shard_size=4", "--set", "input.follow_symlinks=true"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 180
    written = tmp_path / "out" / "embeddings"
    while time.time() < deadline and proc.poll() is None and not (written.exists() and any(written.rglob("*.parquet"))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    emb, err = _table(tmp_path / "out", "embeddings"), _table(tmp_path / "out", "errors")
    paths = emb.column("path").to_pylist() + err.column("path").to_pylist()
    assert sorted(paths) == sorted(str(src / f"{i:03d}") for i in range(len(picked)))
    assert len(set(emb.column("sha256").to_pylist())) == emb.num_rows
