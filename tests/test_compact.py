"""Compaction and retention (embedlib.root.compact, python -m jobs.compact): the same answers from fewer
files, an atomic switch for readers, superseded files deleted only after the grace period, old model versions
dropped on request (never errors or runs), and a pipeline that goes on incrementally over a compacted root."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import query_fixtures as qf
from conftest import moto_s3
from embedlib import query
from embedlib.root import catalog, compact
from embedlib.root.store import Store
from embedlib.query.neighbors import compute_neighbors

from test_pipeline import REPO, _corpus, _embed, model_uri  # noqa: F401  (model_uri is a fixture)

QUESTIONS = {
    "embeddings_all": "SELECT sha256, model_version, run_id, path, embedding::FLOAT[] FROM embeddings_all ORDER BY ALL",
    "errors": "SELECT path, status, reason, run_id FROM errors ORDER BY ALL",
    "runs": "SELECT * FROM runs ORDER BY run_id",
    "neighbors": "SELECT * FROM neighbors_all ORDER BY ALL",
    "similar": f"SELECT * FROM similar('{qf.sha('alpha-03')}', 5)",
    "families": "SELECT * FROM family_counts",
    "run_counts": "SELECT * FROM run_counts",
    "attribution": "SELECT * FROM attribution ORDER BY sha256",
}


def answers(root: str, con=None) -> dict[str, list]:
    con = con or query.connect(root)
    return {name: con.execute(sql).fetchall() for name, sql in QUESTIONS.items()}


def committed_files(root: str) -> dict[str, int]:
    snap = catalog.snapshot(Store(root))
    return {t: len(snap.table_files(t)) for t in compact.GROUPS}


@pytest.fixture
def fx(tmp_path):
    out = qf.write_root(str(tmp_path / "root [1]"))
    compute_neighbors(out.root, run=qf.RUN1, k=4)
    compute_neighbors(out.root, k=4)  # the runs of the current version
    return out


def test_compaction_gives_the_same_answers_from_fewer_files(fx):
    before, files = answers(fx.root), committed_files(fx.root)
    assert files == {"embeddings": 4, "neighbors": 3, "errors": 3, "runs": 3}
    early = query.connect(fx.root)  # a reader that listed the files before the switch
    summary = compact.compact(fx.root, target_mb=1)
    assert summary.commit and summary.rewritten == 11 and summary.deleted == 0
    assert committed_files(fx.root) == {"embeddings": 2, "neighbors": 2, "errors": 1, "runs": 1}
    assert answers(fx.root) == before
    assert answers(fx.root, early) == before  # the superseded files stay through the grace period
    assert catalog.finished_runs(Store(fx.root)) == [qf.RUN1, qf.RUN2, qf.RUN3]

    again = compact.compact(fx.root, target_mb=1, grace_seconds=0)  # nothing new: only the deletions
    assert again.commit is None and again.deleted == 11
    assert not os.path.exists(os.path.join(fx.root, "runs", f"{qf.RUN1}.parquet"))
    assert catalog.finished_runs(Store(fx.root)) == [qf.RUN1, qf.RUN2, qf.RUN3]  # the record is their commit now
    assert answers(fx.root) == before
    unfinished = os.path.join(fx.root, "embeddings", f"model_version={qf.MV_B}", f"run={qf.RUN_UNFINISHED}")
    assert os.listdir(unfinished) == ["part-000000.parquet"]  # an unfinished run's parts are never touched


def test_a_compaction_killed_before_its_record_changes_nothing_readers_see(fx):
    before, files = answers(fx.root), committed_files(fx.root)
    env = dict(os.environ, EMBEDLIB_TEST_KILL_AT="compact-commit")
    killed = subprocess.run([sys.executable, "-m", "jobs.compact", "--root", fx.root, "--target-mb", "1"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    snap = catalog.snapshot(Store(fx.root))
    written = [p for p in snap.present if catalog.owner_of(p)[0] == "commit" and catalog.owner_of(p)[1] not in
               snap.records]
    assert len(written) == 4  # its new files are there, uncommitted
    assert answers(fx.root) == before and committed_files(fx.root) == files
    done = subprocess.run([sys.executable, "-m", "jobs.compact", "--root", fx.root, "--target-mb", "1",
                           "--grace-hours", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "11 files rewritten into" in done.stdout
    assert f"{len(written)} superseded or orphaned files deleted" in done.stdout
    assert not any(os.path.exists(os.path.join(fx.root, p)) for p in written)  # the orphans are gone
    assert answers(fx.root) == before


def test_retention_drops_old_model_versions_but_never_errors_or_runs(fx):
    con = query.connect(fx.root)
    errors = con.execute("SELECT count(*) FROM errors").fetchone()
    runs = con.execute("SELECT count(*) FROM runs").fetchone()
    summary = compact.compact(fx.root, target_mb=1, keep_model_versions=1)
    assert summary.dropped_versions == [qf.MV_A]
    con = query.connect(fx.root)
    assert con.execute("SELECT DISTINCT model_version FROM embeddings_all").fetchall() == [(qf.MV_B,)]
    assert con.execute("SELECT DISTINCT model_version FROM neighbors_all").fetchall() == [(qf.MV_B,)]
    assert con.execute("SELECT count(*) FROM errors").fetchone() == errors and con.execute(
        "SELECT count(*) FROM runs").fetchone() == runs
    with pytest.raises(query.QueryError, match="model version 'mv-a' has no embeddings"):
        query.connect(fx.root, model_version=qf.MV_A)


def test_bad_settings_are_one_line(tmp_path):
    for argv, message in [(["--keep-model-versions", "0"], "at least 1"), (["--target-mb", "0"], "must be positive")]:
        p = subprocess.run([sys.executable, "-m", "jobs.compact", "--root", str(tmp_path), *argv], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_the_pipeline_goes_on_over_a_compacted_root(model_uri, tmp_path):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    files = _corpus(src, 5)
    later = tmp_path / "later"
    os.rename(files[-1], later)
    _embed(model_uri, src, out)
    _embed(model_uri, src, out)
    compact.compact(str(out), target_mb=1)
    compact.compact(str(out), target_mb=1, grace_seconds=0)
    assert not [n for n in os.listdir(out / "runs") if n.endswith(".parquet")]  # only the compacted runs file
    (same,) = _embed(model_uri, src, out)
    assert same.counts["skipped_known"] == 4 and same.counts["bytes_read"] == 0
    os.rename(later, files[-1])
    (grown,) = _embed(model_uri, src, out)
    assert grown.counts["written"] == 1 and grown.counts["skipped_known"] == 4
    con = query.connect(str(out))
    assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM embeddings").fetchone() == (5, 5)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 4


def test_compaction_on_s3():
    with moto_s3("compact"):
        out = qf.write_root("s3://compact/c")
        compute_neighbors(out.root, k=3)  # under the lease, on S3
        before = answers(out.root)
        summary = compact.compact(out.root, target_mb=1)
        assert summary.rewritten == 11 and answers(out.root) == before
        assert compact.compact(out.root, target_mb=1, grace_seconds=0).deleted == 11
        assert answers(out.root) == before


def test_rewritten_files_are_near_the_target_size(tmp_path):
    """20 nightly runs (bench/compaction.py's writer) into files of equal rows, about --target-mb each."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_compaction", os.path.join(REPO, "bench", "compaction.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = str(tmp_path / "nightly")
    sha = bench.build(root, nights=20, rows=50, dim=64)
    store = Store(root)
    total = sum(store.size(f) for f in catalog.table_files(store, "embeddings"))
    con = query.connect(root)
    before = con.execute("SELECT * FROM similar($s, 10)", {"s": sha}).fetchall()
    compact.compact(root, target_mb=total / 4 / 2**20)
    files = catalog.table_files(store, "embeddings")
    rows = [store.read_parquet(f).num_rows for f in files]
    assert len(files) == 4 and max(rows) - min(rows) <= 1 and sum(rows) == 20 * 50
    assert all(0.5 < store.size(f) / (total / 4) < 1.5 for f in files)
    assert query.connect(root).execute("SELECT * FROM similar($s, 10)", {"s": sha}).fetchall() == before


def test_parts_keep_a_dictionary_only_for_flat_strings(tmp_path):
    """Store.write_parquet: dictionary encoding for the repeated flat strings (run_id); the embedding's floats are
    written plainly (a dictionary of floats never fits, and trying cost half of a part's write CPU)."""
    rng = np.random.default_rng(0)
    n, dim = 300, 64
    table = pa.table({"run_id": ["r1"] * n, "sha256": [f"{i:064x}" for i in range(n)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * dim),
                                                                              pa.float32()), dim)})
    store = Store(str(tmp_path))
    store.write_parquet("part.parquet", table)
    meta = pq.ParquetFile(store.path("part.parquet")).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["run_id"])
    assert not any("DICTIONARY" in e for e in encodings["embedding.list.element"])
    assert pq.read_table(store.path("part.parquet")).equals(table)
