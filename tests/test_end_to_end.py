"""A real local Ray run on real executables: rasterize -> 2-worker Ray Train -> embed -> resume -> query."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pyarrow.parquet as pq
import pytest

from embedlib import checkpoint, config, corpus, query, schema, shards
from embedlib.embedder import UnhealthyModelError
from embedlib.sources import InputFile

pytestmark = pytest.mark.slow

SETTINGS = ["raster.size=32", "input.shard_size=16", "train.epochs=3", "train.batch_size=16", "train.num_workers=2",
            "train.min_family_size=3", "train.holdout_fraction=0.2", "model.channels=[8, 16, 16, 32]",
            "model.embedding_dim=32"]


@pytest.fixture(scope="module")
def trained(ray_local, small_corpus, tmp_path_factory):
    from jobs.rasterize import rasterize
    from jobs.train import train

    work = tmp_path_factory.mktemp("e2e")
    cfg = config.load(None, SETTINGS)
    manifest = corpus.write_manifest(small_corpus, str(work / "train.csv"))
    summary = rasterize(manifest, str(work / "corpus"), cfg)
    meta = train(str(work / "corpus"), str(work / "model"), cfg, str(work / "ray"), "e2e")
    return work, cfg, meta, summary


def test_rasterize_writes_one_sample_per_unique_file(trained, small_corpus):
    work, _, _, summary = trained
    samples = pq.read_table(work / "corpus" / "samples")
    errors = pq.read_table(work / "corpus" / "errors")
    assert samples.num_rows + errors.num_rows == len(small_corpus)
    assert len(set(samples.column("sha256").to_pylist())) == samples.num_rows
    assert set(errors.column("status").to_pylist()) <= {schema.STATUS_DUPLICATE}
    assert all(len(b) == 32 * 32 for b in samples.column("image").to_pylist())
    assert summary.written == samples.num_rows


def test_two_worker_training_uses_every_row_and_records_health(trained):
    _, cfg, meta, _ = trained
    history = meta["history"]
    assert [int(m["epoch"]) for m in history] == list(range(cfg.train.epochs))
    # both workers trained, and together saw every training file every epoch (no equal-split drops)
    assert all(int(m["samples_all_ranks"]) == meta["train_files"] for m in history)
    assert all(0 < int(m["samples"]) < meta["train_files"] for m in history)
    for key in ("bn_health", "bn_health_before_precise_bn", "precise_bn"):
        assert key in meta
    assert set(meta["precise_bn"]["layers"]) == {f"encoders.image.features.{i}" for i in (1, 5, 9, 13)}
    assert meta["bn_health"]["top1_agreement_train_vs_eval"] >= meta["bn_health_before_precise_bn"][
        "top1_agreement_train_vs_eval"]
    ckpt = checkpoint.load(str(trained[0] / "model"))
    assert ckpt.version == meta["model_version"] and len(ckpt.families) == 3


@pytest.fixture(scope="module")
def embedded(trained, bad_inputs_module):
    from jobs.embed import embed

    work, cfg, _, _ = trained
    folder, bad = bad_inputs_module
    files = corpus.system_executables(["/usr/bin"])[:40] + [InputFile(p) for p in bad.values()]
    files.append(InputFile("/proc/self/mem"))
    manifest = corpus.write_manifest(files, str(work / "embed.csv"))
    cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, max_bytes=64 * 1024,
                                                             max_hash_bytes=200_000, shard_size=8))
    summary = embed(str(work / "model"), manifest, str(work / "emb"), cfg, allow_unhealthy=True)
    return work, cfg, files, manifest, summary, bad


@pytest.fixture(scope="module")
def bad_inputs_module(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    paths = {}
    for name, data in [("empty", b""), ("one_byte", b"\x01"), ("huge", os.urandom(300_000)),
                       ("big", os.urandom(100_000))]:
        paths[name] = str(d / name)
        open(paths[name], "wb").write(data)
    paths["directory"] = str(d / "dir")
    os.mkdir(paths["directory"])
    paths["symlink"] = str(d / "link")
    os.symlink("/usr/bin/ls", paths["symlink"])
    paths["fifo"] = str(d / "fifo")
    os.mkfifo(paths["fifo"])
    return d, paths


def _tables(out):
    return pq.read_table(out / "embeddings"), pq.read_table(out / "errors")


def test_embedding_accounts_for_every_input(embedded):
    work, _, files, _, summary, bad = embedded
    emb, err = _tables(work / "emb")
    paths = emb.column("path").to_pylist() + err.column("path").to_pylist()
    assert sorted(paths) == sorted(f.path for f in files)  # every input exactly once
    assert len(set(emb.column("sha256").to_pylist())) == emb.num_rows
    status = dict(zip(err.column("path").to_pylist(), err.column("status").to_pylist()))
    assert status[bad["empty"]] == "empty" and status[bad["directory"]] == "not_a_file"
    assert status[bad["symlink"]] == "symlink" and status[bad["fifo"]] == "not_a_file"
    assert status[bad["huge"]] == "too_large" and status["/proc/self/mem"] == "unreadable"
    rows = {r["path"]: r for r in emb.to_pylist()}
    assert rows[bad["big"]]["truncated"] and rows[bad["one_byte"]]["format"] == "other"
    assert emb.schema.field("embedding").type.list_size == 32
    assert summary.errors == err.num_rows


def test_rerun_resumes_without_duplicates(embedded):
    from jobs.embed import embed

    work, cfg, files, manifest, _, _ = embedded
    out = work / "emb"
    before_emb, before_err = _tables(out)
    again = embed(str(work / "model"), manifest, str(out), cfg, allow_unhealthy=True)
    assert again.shards_skipped == again.shards_total and again.written == 0
    # a killed run: two shards never finished
    for name in ("part-000001.parquet", "part-000003.parquet"):
        os.remove(out / "embeddings" / name)
    resumed = embed(str(work / "model"), manifest, str(out), cfg, allow_unhealthy=True)
    assert resumed.shards_total - resumed.shards_skipped == 2
    after_emb, after_err = _tables(out)
    assert sorted(after_emb.column("sha256").to_pylist()) == sorted(before_emb.column("sha256").to_pylist())
    assert sorted(after_err.column("path").to_pylist()) == sorted(before_err.column("path").to_pylist())


def test_rerun_with_another_model_is_refused(embedded):
    from jobs.embed import embed

    work, cfg, _, manifest, _, _ = embedded
    other = work / "model-copy"
    shutil.copytree(work / "model", other)
    checkpoint.update_meta(str(other), {"model_version": "m-different"})
    with pytest.raises(shards.OutputMismatchError):
        embed(str(other), manifest, str(work / "emb"), cfg, allow_unhealthy=True)


def test_unhealthy_checkpoint_is_refused_unless_allowed(embedded, tmp_path):
    from jobs.embed import embed

    work, cfg, _, manifest, _, _ = embedded
    sick = tmp_path / "sick"
    shutil.copytree(work / "model", sick)
    checkpoint.update_meta(str(sick), {"bn_health": {"healthy": False, "problems": ["top-1 agreement 0.3 < 0.9"]}})
    with pytest.raises(UnhealthyModelError, match="Refusing"):
        embed(str(sick), manifest, str(tmp_path / "out"), cfg)
    assert embed(str(sick), manifest, str(tmp_path / "out"), cfg, allow_unhealthy=True).written > 0


def test_query_similar_by_sha256_and_by_file(embedded, capsys):
    from jobs import query as query_cli

    work, *_ = embedded
    con = query.connect(str(work / "emb"))
    (sha,) = con.execute("SELECT sha256 FROM embeddings WHERE path = '/usr/bin/[' OR path LIKE '/usr/bin/%' "
                         "ORDER BY path LIMIT 1").fetchone()
    cols, rows = query.similar_to_sha256(con, sha, 5)
    assert len(rows) == 5 and sha not in [r[0] for r in rows]
    dists = [r[cols.index("distance")] for r in rows]
    assert dists == sorted(dists)
    (path,) = con.execute(f"SELECT path FROM embeddings WHERE sha256 = '{sha}'").fetchone()
    query_cli.main(["--run", str(work / "emb"), "--format", "csv", "similar", "--file", path, "-k", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(sha) and lines[1].endswith(",0.0")  # the file itself, at distance 0


def test_recalibrate_job_writes_a_new_healthy_version(trained, tmp_path):
    from jobs.recalibrate import recalibrate

    work, _, meta, _ = trained
    new = recalibrate(str(work / "model"), str(work / "corpus"), str(tmp_path / "recal"))
    assert new["recalibrated_from"] == meta["model_version"]
    assert new["bn_health"]["mean_cosine_train_vs_eval"] >= 0.9
