"""The embedding job as users run it: incremental by content, exactly once, hostile names, one run at a time.

In-process (LocalExecutor) for speed; the same tasks run as Ray tasks in test_end_to_end.py. SIGKILLs hit
real `python -m jobs.embed` subprocesses.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from conftest import trained_checkpoint

from embedlib import pipeline, schema
from embedlib.config import Config, InputConfig, ModelConfig, ViewsConfig
from embedlib.pipeline import catalog
from embedlib.pipeline.stages import embed_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_VIEWS = ViewsConfig(buckets=256)  # the default views (strings, idents), smaller sketches
SMALL_MODEL = ModelConfig(embedding_dim=24, skip_dim=16, hidden=16)


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory) -> str:
    """A tiny checkpoint trained on synthetic rows (these tests are about the pipeline, not the model)."""
    path = str(tmp_path_factory.mktemp("model") / "model")
    torch.manual_seed(0)
    cfg = Config(views=SMALL_VIEWS, model=SMALL_MODEL)
    trained_checkpoint(path, cfg, seed=0)
    return path


def _cfg(**input_settings) -> Config:
    return Config(input=InputConfig(shard_size=4, **input_settings))


def _table(root, name) -> list[dict]:
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
        return []
    return pads.dataset(folder, format="parquet", partitioning=None).to_table().to_pylist()


def _embed(model_uri, src, root, **kw):
    return pipeline.embed_files(model_uri, str(src), str(root), kw.pop("cfg", _cfg()), progress=False, **kw)


def _corpus(folder, n=10):
    """n real executables (distinct contents) copied under hostile names."""
    os.makedirs(folder, exist_ok=True)
    sources = sorted(p for p in os.listdir("/usr/bin") if os.path.isfile(f"/usr/bin/{p}")
                     and not os.path.islink(f"/usr/bin/{p}") and 1000 < os.path.getsize(f"/usr/bin/{p}") < 300_000)
    names = ["plain", "alias", "alias::file", "colon::bar", "br[1]", "new\nline", 'q"uote\'s', "-dash", "sp ace",
             "ünï"]
    seen, out = set(), []
    for src in sources:
        data = open(f"/usr/bin/{src}", "rb").read()
        if data in seen:
            continue
        seen.add(data)
        name = names[len(out)] if len(out) < len(names) else f"f{len(out)}"
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
        out.append(os.path.join(folder, name))
        if len(out) == n:
            return out
    raise AssertionError("not enough distinct executables under /usr/bin")


def _accounted(root) -> tuple[list[str], list[str]]:
    emb, err = _table(root, "embeddings"), _table(root, "errors")
    return [r["path"] for r in emb], [r["path"] for r in err]


def test_every_input_once_with_hostile_names_and_own_content(model_uri, tmp_path):
    src = tmp_path / "in[1]"
    files = _corpus(src)
    raw = os.fsencode(str(src)) + b"/latin-\xe9"
    shutil.copyfile("/usr/bin/ls", raw)
    os.symlink("..", src / "up")
    (src / "empty").write_bytes(b"")
    shutil.copyfile(files[0], src / "zz-copy-of-plain")
    (summary,) = _embed(model_uri, src, tmp_path / "out")
    emb, err = _table(tmp_path / "out", "embeddings"), _table(tmp_path / "out", "errors")
    listed = sorted([*files, raw.decode("utf-8", "backslashreplace"), str(src / "up"), str(src / "empty"),
                     str(src / "zz-copy-of-plain")])
    assert sorted(r["path"] for r in emb + err) == listed  # every input exactly once
    assert len({r["sha256"] for r in emb}) == len(emb)
    by_path = {r["path"]: r for r in emb}
    for path in files:  # each file embedded with its own content (alias::file is not alias)
        assert by_path[path]["sha256"] == __import__("hashlib").sha256(open(path, "rb").read()).hexdigest()
    latin = next(r for r in emb if r["path_raw"])
    assert latin["path_raw"] == raw
    status = {r["path"]: (r["status"], r["reason"]) for r in err}
    assert status[str(src / "up")][0] == schema.STATUS_SYMLINK and "directory" in status[str(src / "up")][1]
    assert status[str(src / "empty")][0] == schema.STATUS_EMPTY
    assert status[str(src / "zz-copy-of-plain")] == (schema.STATUS_DUPLICATE, f"same content as {files[0]}")
    c = summary.counts
    assert c["files_seen"] == len(listed) == c["written"] + c["duplicates"] + c["failed"] + c["skipped_known"]


def test_rerun_adds_nothing_and_reads_nothing(model_uri, tmp_path):
    src = tmp_path / "in"
    _corpus(src, 6)
    (src / "empty").write_bytes(b"")
    _embed(model_uri, src, tmp_path / "out")
    before = _accounted(tmp_path / "out")
    (again,) = _embed(model_uri, src, tmp_path / "out")
    assert _accounted(tmp_path / "out") == before
    assert again.counts["skipped_known"] == again.counts["files_seen"] == 7
    assert again.counts["bytes_read"] == 0  # unchanged files are not even re-read
    runs = _table(tmp_path / "out", "runs")
    assert [r["embedded"] for r in sorted(runs, key=lambda r: r["run_id"])] == [6, 0]


def test_grown_corpus_adds_exactly_the_new_contents(model_uri, tmp_path):
    src = tmp_path / "in"
    files = _corpus(src, 8)
    moved = files[-3:]
    stash = tmp_path / "later"
    stash.mkdir()
    for f in moved:
        shutil.move(f, stash / os.path.basename(f))
    _embed(model_uri, src, tmp_path / "out")
    for f in moved:  # the corpus grows: 3 new contents, one copy of a known one, one changed file
        shutil.move(stash / os.path.basename(f), f)
    shutil.copyfile(files[0], src / "copy-of-first")
    with open(files[1], "ab") as fh:
        fh.write(b"changed")
    (second,) = _embed(model_uri, src, tmp_path / "out")
    c = second.counts
    assert (c["written"], c["duplicates"], c["skipped_known"]) == (4, 1, 4)
    emb = _table(tmp_path / "out", "embeddings")
    assert len(emb) == 5 + 4 and len({r["sha256"] for r in emb}) == len(emb)
    dup = [r for r in _table(tmp_path / "out", "errors") if r["status"] == schema.STATUS_DUPLICATE]
    assert [(r["path"], r["reason"]) for r in dup] == [
        (str(src / "copy-of-first"), f"same content as {files[0]} (written by an earlier run)")]


def test_duplicates_keep_the_smallest_path_on_every_run(model_uri, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("b", "a", "c"):
        shutil.copyfile("/usr/bin/ls", src / name)
    for out in ("out1", "out2"):
        _embed(model_uri, src, tmp_path / out)
        assert [r["path"] for r in _table(tmp_path / out, "embeddings")] == [str(src / "a")]


def test_a_second_model_version_gets_its_own_rows(model_uri, tmp_path):
    other = str(tmp_path / "model2")
    torch.manual_seed(1)
    cfg = Config(views=SMALL_VIEWS, model=SMALL_MODEL)
    trained_checkpoint(other, cfg, seed=1)
    src = tmp_path / "in"
    _corpus(src, 4)
    _embed(model_uri, src, tmp_path / "out")
    (second,) = _embed(other, src, tmp_path / "out")
    assert second.counts["written"] == 4 and second.counts["bytes_read"] > 0
    versions = sorted({r["model_version"] for r in _table(tmp_path / "out", "embeddings")})
    assert len(versions) == 2


def test_embedding_failures_cost_only_their_rows():
    batch = {"image": np.arange(10, dtype=np.uint8).reshape(10, 1)}

    def embed(views):
        if 3 in views["image"][:, 0]:
            raise RuntimeError("bad row")
        out = np.ones((len(views["image"]), 2), np.float32)
        out[views["image"][:, 0] == 7] = np.nan
        return out

    vectors, failed = embed_batch(batch, embed, batch_size=4)
    assert sorted(failed) == [3, 7] and "bad row" in failed[3] and "non-finite" in failed[7]
    assert vectors.shape == (8, 2)


def test_another_run_in_progress_is_refused(model_uri, tmp_path):
    src = tmp_path / "in"
    _corpus(src, 2)
    store = pipeline.Store(str(tmp_path / "out"))
    lock = catalog.RootLock(store, "holder")
    lock.acquire()
    try:
        with pytest.raises(catalog.RunInProgress, match="another run") as info:
            _embed(model_uri, src, tmp_path / "out")
        assert info.value.exit_code == 75
    finally:
        lock.release()
    _embed(model_uri, src, tmp_path / "out")


# ---- SIGKILL of a real job, at several points -------------------------------------------------------------------

def _job(model_uri, src, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.embed", "--model", model_uri, "--input", str(src),
                             "--output", str(out), "--executor", "local", "--no-progress",
                             "--set", "input.shard_size=2", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=60.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def _staged(out, folder, n):
    def check():
        work = os.path.join(out, "_work")
        runs = [d for d in os.listdir(work) if d != "tmp"] if os.path.isdir(work) else []
        return any(len([f for f in os.listdir(os.path.join(work, r, folder))
                        if f.endswith(".json") and not f.startswith("_")]) >= n
                   for r in runs if os.path.isdir(os.path.join(work, r, folder)))
    return check


@pytest.mark.parametrize("point", ["hashed:2", "hashed:6", "written:1", "written:4", "runs"])
def test_sigkill_at_any_point_then_rerun_gives_every_input_once(model_uri, tmp_path, point):
    src = tmp_path / "in"
    files = _corpus(src, 10)
    shutil.copyfile(files[0], src / "zz-dup")
    out = tmp_path / "out"
    proc = _job(model_uri, src, out)
    folder, _, n = point.partition(":")
    predicate = (lambda: os.path.isdir(out / "runs")) if folder == "runs" else _staged(out, folder, int(n))
    hit = _wait_for(predicate, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hit, f"the job ended before {point}: {proc.stderr.read()}"
    # what a reader sees right after the kill: whole Parquet files only
    if glob.glob(f"{out}/**/*.parquet", recursive=True):
        duckdb.connect().execute("SELECT count(*) FROM read_parquet($g)", {"g": f"{out}/**/*.parquet"}).fetchall()
    rerun = _job(model_uri, src, out)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    emb, err = _accounted(out)
    assert sorted(emb + err) == sorted([*files, str(src / "zz-dup")])
    assert len(set(emb)) == len(emb) == 10
    assert not os.path.exists(out / "_work") or os.listdir(out / "_work") in ([], ["tmp"])
    runs = _table(out, "runs")
    assert sum(r["embedded"] for r in runs) == 10 and sum(r["duplicates"] for r in runs) == 1


def test_expected_failures_are_one_line_and_fast(model_uri, tmp_path):
    cases = [
        (["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")], "does not exist"),
        (["--input", "/usr/bin/ls", "--output", str(tmp_path / "o"), "--set", "input.nope=1"], "unknown setting"),
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("name\n/usr/bin/ls\n")
    cases.append((["--input", str(manifest), "--output", str(tmp_path / "o")], "no 'path' column"))
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--model", model_uri, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "o" / "runs")
    proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--model", str(tmp_path), "--input", "/usr/bin/ls",
                           "--output", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_embed_job_can_store_the_new_rows_neighbours(model_uri, tmp_path):
    src = tmp_path / "in"
    _corpus(src, 5)
    proc = subprocess.run([sys.executable, "-m", "jobs.embed", "--model", model_uri, "--input", str(src), "--output",
                           str(tmp_path / "out"), "--executor", "local", "--no-progress", "--neighbors", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = _table(tmp_path / "out", "neighbors")
    assert len(rows) == 5 * 3 and {r["rank"] for r in rows} == {1, 2, 3}
    assert all(r["neighbor"] != r["sha256"] for r in rows)
