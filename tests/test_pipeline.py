"""The embedding job as users run it: incremental by content, exactly once, hostile names, one run at a time.

In-process (LocalExecutor) for speed; the same tasks run as Ray tasks in test_end_to_end.py. SIGKILLs hit
real `python -m jobs.embed` subprocesses.
"""

from __future__ import annotations

import glob
import hashlib
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
from embedlib.root import lease
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
    lock = lease.RootLock(store, "holder")
    lock.acquire()
    try:
        with pytest.raises(lease.RunInProgress, match="another run") as info:
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


# ---- known means the same file ------------------------------------------------------------------------------------

def _twins(first, second) -> list[str]:
    """Two files of equal size and mtime, different content (as reproducible builds make them)."""
    data = bytearray(open("/usr/bin/ls", "rb").read())
    with open(first, "wb") as fh:
        fh.write(data)
    data[len(data) // 2] ^= 0xFF
    with open(second, "wb") as fh:
        fh.write(data)
    for path in (first, second):
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (first, second)]


def test_the_same_relative_path_at_two_sites_is_two_files(model_uri, tmp_path):
    """Two manifests at different sites both list `007`: same size and mtime, other content. The second site's
    file is not 'known' because the first site's `007` was: it is embedded."""
    for site in ("site1", "site2"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "m.csv").write_text("path,family\n007,x\n")
    first, second = _twins(tmp_path / "site1" / "007", tmp_path / "site2" / "007")
    _embed(model_uri, tmp_path / "site1" / "m.csv", tmp_path / "out")
    (again,) = _embed(model_uri, tmp_path / "site2" / "m.csv", tmp_path / "out")
    assert again.counts["written"] == 1 and again.counts["skipped_known"] == 0
    emb = _table(tmp_path / "out", "embeddings")
    assert sorted(r["sha256"] for r in emb) == sorted([first, second])
    assert sorted(r["location"] for r in emb) == sorted(os.fsencode(str(tmp_path / s / "007")) for s in ("site1", "site2"))
    (third,) = _embed(model_uri, tmp_path / "site2" / "m.csv", tmp_path / "out")  # and it is known now
    assert third.counts["skipped_known"] == 1 and third.counts["bytes_read"] == 0


@pytest.mark.parametrize("first", ["raw", "backslash"])
def test_a_name_that_is_not_utf8_is_not_its_escaped_text(model_uri, tmp_path, first):
    """`tw\\xff.bin` (the byte 0xff) and a UTF-8 file literally named `tw\\\\xff.bin` show the same `path` text;
    whichever came first, the other is embedded too."""
    src = tmp_path / "in"
    src.mkdir()
    raw, backslash = os.fsencode(str(src)) + b"/tw\xff.bin", os.fsencode(str(src)) + b"/tw\\xff.bin"
    assert raw.decode("utf-8", "backslashreplace") == backslash.decode()
    stash = tmp_path / "stash"
    stash.mkdir()
    order = [raw, backslash] if first == "raw" else [backslash, raw]
    shas = _twins(order[0], os.fsencode(str(stash / "later")))
    _embed(model_uri, src, tmp_path / "out")
    os.rename(os.fsencode(str(stash / "later")), order[1])
    (again,) = _embed(model_uri, src, tmp_path / "out")
    assert again.counts["written"] == 1 and again.counts["skipped_known"] == 1
    emb = _table(tmp_path / "out", "embeddings")
    assert sorted(r["sha256"] for r in emb) == sorted(shas)
    assert {r["location"] for r in emb} == {raw, backslash}


# ---- refusals that depend on settings -------------------------------------------------------------------------------

def test_a_raised_limit_embeds_what_the_lower_one_refused(model_uri, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile("/usr/bin/ls", src / "big")
    size = os.path.getsize(src / "big")
    (first,) = _embed(model_uri, src, tmp_path / "out", cfg=_cfg(max_hash_bytes=size - 1))
    assert first.counts["failed"] == 1
    (same,) = _embed(model_uri, src, tmp_path / "out", cfg=_cfg(max_hash_bytes=size - 1))
    assert same.counts["skipped_known"] == 1  # the same limit: the refusal stands, nothing new is written
    (raised,) = _embed(model_uri, src, tmp_path / "out", cfg=_cfg(max_hash_bytes=size))
    assert raised.counts["written"] == 1
    err = _table(tmp_path / "out", "errors")
    assert [(r["status"], r["judged_under"]) for r in err] == [("too_large", f"input.max_hash_bytes={size - 1}")]


def test_a_root_of_schema_version_2_is_read_once_more_then_known(model_uri, tmp_path):
    """Rows written before `location` existed never match: their files are read once more (their contents are
    already embedded: duplicate rows, nothing written twice), and are known from then on."""
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    _corpus(src, 3)
    (src / "empty").write_bytes(b"")
    out = tmp_path / "out"
    _embed(model_uri, src, out)
    for part in glob.glob(f"{out}/embeddings/**/*.parquet", recursive=True) + glob.glob(f"{out}/errors/**/*.parquet",
                                                                                        recursive=True):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns([c for c in ("location", "judged_under") if c in table.column_names]), part)
    (again,) = _embed(model_uri, src, out)
    c = again.counts
    assert (c["written"], c["duplicates"], c["failed"]) == (0, 3, 1) and c["bytes_read"] > 0
    (third,) = _embed(model_uri, src, out)
    assert third.counts["skipped_known"] == 4 and third.counts["bytes_read"] == 0
    assert len(_table(out, "embeddings")) == 3


def test_a_symlink_refused_unfollowed_is_embedded_once_symlinks_are_followed(model_uri, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    os.symlink("/usr/bin/ls", src / "link")
    (first,) = _embed(model_uri, src, tmp_path / "out")
    assert first.counts["failed"] == 1
    (followed,) = _embed(model_uri, src, tmp_path / "out", cfg=_cfg(follow_symlinks=True))
    assert followed.counts["written"] == 1
    err = _table(tmp_path / "out", "errors")
    assert [(r["status"], r["judged_under"]) for r in err] == [("symlink", "input.follow_symlinks=false")]


# ---- every input check that can fail happens before the lock and before Ray ------------------------------------

def _bad_csv(path, good_rows=0):
    with open(path, "w") as fh:
        fh.write("path,family\n")
        fh.writelines(f"/data/corpus/file{i:07d}.bin,fam{i % 50}\n" for i in range(good_rows))
        fh.write("/usr/bin/cat,b,extra\n")
        fh.writelines(f"/data/corpus/more{i:07d}.bin,fam{i % 50}\n" for i in range(good_rows))
    return path


@pytest.mark.parametrize("kind", ["csv_extra_field", "parquet_int_path"])
def test_a_bad_manifest_is_refused_before_the_lock_and_ray_and_blocks_nothing(model_uri, tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedlib.files.inputs import InputError

    if kind == "csv_extra_field":
        bad, message = _bad_csv(tmp_path / "bad.csv"), "row 1 has 3 fields"
    else:
        bad, message = tmp_path / "bad.parquet", "column 'path' holds int64"
        pq.write_table(pa.table({"path": [1, 2]}), bad)
    out = tmp_path / "out"
    started = []

    def start_ray():  # an executor factory, as the jobs pass one: it must never be called
        started.append(True)
        return pipeline.LocalExecutor()

    lock = lease.RootLock(pipeline.Store(str(out)), "holder")
    lock.acquire()
    try:  # another run holds the root: the manifest is refused first, by its own fault
        with pytest.raises(InputError, match=message):
            _embed(model_uri, bad, out, executor=start_ray)
    finally:
        lock.release()
    with pytest.raises(InputError, match=message):
        _embed(model_uri, bad, out, executor=start_ray)
    assert not started
    assert not (out / "_work").exists() or [d for d in os.listdir(out / "_work") if d != "tmp"] == []
    src = tmp_path / "in"
    _corpus(src, 2)
    (ok,) = _embed(model_uri, src, out)  # another input into the same root is not blocked
    assert ok.counts["written"] == 2


def test_a_manifest_that_breaks_while_listing_leaves_nothing_that_blocks_the_root(model_uri, tmp_path):
    """The manifest passed the check, then changed before the listing read it (as a file being rewritten can):
    the run fails with one line and removes its staging, so the next run of another input proceeds."""
    from embedlib.files.inputs import InputError

    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n/usr/bin/ls\n/usr/bin/cp\n")

    def start_then_break():  # called after the lock, before the listing
        _bad_csv(manifest, good_rows=100_000)  # the bad row comes after some listing chunks were written
        return pipeline.LocalExecutor()

    out = tmp_path / "out"
    with pytest.raises(InputError, match="row 100001 has 3 fields"):
        _embed(model_uri, manifest, out, executor=start_then_break, cfg=Config(input=InputConfig(shard_size=8192)))
    assert [d for d in os.listdir(out / "_work") if d != "tmp"] == []
    src = tmp_path / "in"
    _corpus(src, 2)
    (ok,) = _embed(model_uri, src, out)
    assert ok.counts["written"] == 2


def _without_root_privileges(cmd: list[str]) -> list[str]:
    """cmd as an unprivileged process: root (as in containers) writes through any mode bits."""
    if os.geteuid() != 0:
        return cmd
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("running as root without capsh: no folder can be made unwritable")
    import shlex

    return [capsh, "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c", shlex.join(cmd)]


def test_bad_manifests_and_roots_are_one_line_before_anything_starts(model_uri, tmp_path):
    big_bad = _bad_csv(tmp_path / "big-bad.csv", good_rows=200_000)  # the error comes mid-stream
    (tmp_path / "a-file").write_bytes(b"not a folder")
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    base = [sys.executable, "-m", "jobs.embed", "--model", model_uri, "--no-progress"]
    cases = [
        (base + ["--input", str(big_bad), "--output", str(tmp_path / "o")], "row 200001 has 3 fields"),
        (base + ["--input", "/usr/bin/ls", "--output", str(tmp_path / "a-file")], "is a file"),
        (base + ["--input", "/usr/bin/ls", "--output", str(tmp_path / "a-file" / "below")], "is a file"),
        (_without_root_privileges(base + ["--input", "/usr/bin/ls", "--output", str(locked / "out")]),
         "cannot be written"),
    ]
    for cmd, message in cases:
        for _ in range(3 if "big-bad" in " ".join(cmd) else 1):  # a streaming reader once crashed at exit
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2 and message in proc.stderr, (cmd, proc.stderr[-2000:])
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "o" / "_work") or os.listdir(tmp_path / "o" / "_work") in ([], ["tmp"])
    assert os.listdir(locked) == []


@pytest.mark.timeout(120)
def test_a_glob_job_over_symlink_loops_ends_and_embeds_nothing_outside_the_tree(model_uri, tmp_path):
    tree = tmp_path / "tree"
    files = _corpus(tree / "a" / "b", 2)
    os.symlink("..", tree / "a" / "up")
    os.symlink("../..", tree / "a" / "b" / "upup")
    _corpus(tmp_path / "outside", 1)
    os.symlink(tmp_path / "outside", tree / "a" / "out")
    (summary,) = _embed(model_uri, f"{tree}/**", tmp_path / "out", glob=True)
    emb, err = _accounted(tmp_path / "out")
    assert sorted(emb) == sorted(files)
    status = {r["path"]: r["status"] for r in _table(tmp_path / "out", "errors")}
    assert status == {str(tree / "a" / "up"): "symlink", str(tree / "a" / "b" / "upup"): "symlink",
                      str(tree / "a" / "out"): "symlink"}
    assert summary.counts["files_seen"] == 5
