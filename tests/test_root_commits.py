"""The output root as a table: a run is visible only once committed (its runs row), whatever its parts.

Real `python -m jobs.embed` processes, SIGKILLed at an exact point by the driver's test hook
(EMBEDLIB_TEST_KILL_AT=commit: every part written, no runs row), then every view of `embedlib.query.connect`
is compared with what the committed runs say they wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys

from embedlib import query
from embedlib.root import catalog, lease
from embedlib.root.store import Store

from test_pipeline import REPO, _corpus, model_uri  # noqa: F401  (model_uri is a fixture)


def embed_job(model: str, src, out, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("EMBEDLIB_TEST_KILL_AT", None)
    if kill_at:
        env["EMBEDLIB_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "jobs.embed", "--model", model, "--input", str(src), "--output",
                           str(out), "--executor", "local", "--no-progress", "--set", "input.shard_size=2", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def neighbors_job(out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.neighbors", "--root", str(out), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def check_views_equal_committed(root: str) -> dict[str, int]:
    """Every view counts exactly the rows of the committed runs (by the runs rows' own counts)."""
    con = query.connect(root)
    runs = {r[0]: r[1:] for r in con.execute(
        "SELECT run_id, model_version, embedded, duplicates, failed FROM runs").fetchall()}
    assert set(runs) == set(catalog.finished_runs(Store(root)))
    version = con.execute("SELECT model_version FROM embedlib_settings").fetchone()[0]
    embedded = sum(e for v, e, _, _ in runs.values() if v == version)
    errors = sum(d + f for _, _, d, f in runs.values())
    for table in ("embeddings_all", "errors"):
        by_run = dict(con.execute(f"SELECT run_id, count(*) FROM {table} GROUP BY ALL").fetchall())
        assert set(by_run) <= set(runs), (table, by_run)
    assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM embeddings").fetchone() == (embedded, embedded)
    assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == errors
    for run_id, _, e, d, f, rows, error_rows in con.execute(
            "SELECT run_id, model_version, embedded, duplicates, failed, embedded_rows, error_rows FROM run_counts"
    ).fetchall():
        assert (rows, error_rows) == (e, d + f), run_id
    for view in ("family_counts", "format_counts", "size_distribution"):
        assert con.execute(f"SELECT sum(files) FROM {view}").fetchone()[0] == embedded, view
    assert (con.execute("SELECT coalesce(sum(files), 0) FROM error_counts").fetchone()[0]) == errors
    assert con.execute("SELECT count(*) FROM embedding_duplicates").fetchone()[0] == 0
    missing = dict(con.execute("SELECT name, reason FROM embedlib_missing").fetchall())
    if "neighbors_all" not in missing:
        covered = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM neighbors_all").fetchall()}
        assert covered <= set(runs)
        # the attribution view lists exactly the files with stored neighbours, all of committed runs
        assert con.execute("SELECT count(*) FROM attribution WHERE run_id NOT IN (SELECT run_id FROM runs)"
                           ).fetchone()[0] == 0
    con.close()
    return {"runs": len(runs), "embedded": embedded, "errors": errors}


def test_a_run_killed_before_its_runs_row_is_invisible_until_finished(model_uri, tmp_path):  # noqa: F811
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _corpus(a, 3)
    _corpus(b, 7)  # the same 3 contents (known: duplicates) and 4 new ones
    first = embed_job(model_uri, a, out)
    assert first.returncode == 0, first.stderr
    killed = embed_job(model_uri, b, out, kill_at="commit")
    assert killed.returncode == -9, killed.stderr
    (run_b,) = [r for r, _ in catalog.unfinished_runs(Store(str(out)))]
    written = list((out / "embeddings").rglob(f"run={run_b}/*.parquet"))
    assert written and list((out / "errors").rglob(f"run={run_b}/*.parquet"))  # its parts are all there
    assert check_views_equal_committed(str(out)) == {"runs": 1, "embedded": 3, "errors": 0}
    nb = neighbors_job(out, "-k", "2")  # only committed runs get (and are) neighbours
    assert nb.returncode == 0, nb.stderr
    con = query.connect(str(out))
    assert con.execute("SELECT count(*), count(DISTINCT neighbor) FROM neighbors").fetchone() == (3 * 2, 3)
    con.close()
    check_views_equal_committed(str(out))

    again = embed_job(model_uri, b, out)  # finishes the killed run, then a new run finds nothing new
    assert again.returncode == 0, again.stderr
    assert f"run {run_b} (resumed)" in again.stdout
    counts = check_views_equal_committed(str(out))
    assert counts == {"runs": 3, "embedded": 7, "errors": 3}

    # jobs.neighbors without --run covers every committed run of the version that has none: the resumed one
    # (the latest run, which found nothing new, needs none)
    nb = neighbors_job(out, "-k", "2")
    assert nb.returncode == 0, nb.stderr
    assert nb.stdout.startswith(f"neighbors: 4 rows of run {run_b} x 7 rows of model version"), nb.stdout
    con = query.connect(str(out))
    assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM neighbors").fetchone() == (7 * 2, 7)
    con.close()
    assert "nothing to do" in neighbors_job(out).stdout


def test_an_unfinished_run_of_another_input_is_parked_then_reconciled(model_uri, tmp_path):  # noqa: F811
    """Run B is killed before its commit; run C of another input proceeds (B parked, said in one line) and
    commits contents B had written; B's own command resumes it and drops what C committed meanwhile."""
    b, c, out = tmp_path / "b", tmp_path / "c", tmp_path / "out"
    files_b = _corpus(b, 5)
    files_c = _corpus(c, 7)[2:]  # contents 2..6: 2, 3 and 4 are B's too
    for name in sorted(os.listdir(c)):
        if str(c / name) not in files_c:
            os.remove(c / name)
    killed = embed_job(model_uri, b, out, kill_at="commit")
    assert killed.returncode == -9
    (run_b,) = [r for r, _ in catalog.unfinished_runs(Store(str(out)))]

    other = embed_job(model_uri, c, out)
    assert other.returncode == 0, other.stderr
    (line,) = [ln for ln in other.stderr.splitlines() if ln.startswith("parked run")]
    assert run_b in line and f"embed of {b}" in line
    command = line.split("resume it with: ", 1)[1]
    assert command.startswith(f"python -m jobs.embed --model {model_uri} --input {b} --output {out}")
    assert check_views_equal_committed(str(out)) == {"runs": 1, "embedded": 5, "errors": 0}

    resumed = subprocess.run(command.replace("python", sys.executable, 1), shell=True, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"run {run_b} (resumed): 5 files seen, 0 known from earlier runs, 2 embedded, 3 duplicates" in resumed.stdout
    assert check_views_equal_committed(str(out)) == {"runs": 3, "embedded": 7, "errors": 3}
    con = query.connect(str(out))
    shas = [r[0] for r in con.execute("SELECT sha256 FROM embeddings_all").fetchall()]
    assert len(shas) == len(set(shas)) == 7  # no content twice in the version
    dups = con.execute("SELECT path, reason FROM errors WHERE run_id = $r ORDER BY path", {"r": run_b}).fetchall()
    assert [p for p, _ in dups] == sorted(files_b[2:5])
    assert all("while this run was unfinished" in reason for _, reason in dups)
    by_path = dict(con.execute("SELECT path, run_id FROM embeddings").fetchall())
    assert {by_path[f] for f in files_b[:2]} == {run_b} and set(files_c) <= set(by_path)
    con.close()


def test_neighbors_take_the_lease_and_commit_a_rewrite_whole(model_uri, tmp_path):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "out"
    _corpus(src, 4)
    assert embed_job(model_uri, src, out, "--neighbors", "3").returncode == 0
    (run,) = catalog.finished_runs(Store(str(out)))
    with lease.RootLock(Store(str(out)), "holder"):
        busy = neighbors_job(out, "--run", run)
    assert busy.returncode == 75 and len(busy.stderr.strip().splitlines()) == 1 and "another run" in busy.stderr
    env = dict(os.environ, EMBEDLIB_TEST_KILL_AT="neighbors-commit")
    killed = subprocess.run([sys.executable, "-m", "jobs.neighbors", "--root", str(out), "--run", run, "-k", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -9
    assert len(list((out / "neighbors").rglob("*.parquet"))) == 2  # the new parts are there, uncommitted
    con = query.connect(str(out))
    assert con.execute("SELECT count(*), max(rank) FROM neighbors").fetchone() == (4 * 3, 3)  # the old ones, whole
    con.close()
    again = neighbors_job(out, "--run", run, "-k", "1")
    assert again.returncode == 0, again.stderr
    con = query.connect(str(out))
    assert con.execute("SELECT count(*), max(rank) FROM neighbors").fetchone() == (4, 1)  # the new ones, whole
    con.close()


def test_a_reconcile_redone_after_a_kill_drops_the_same_rows(model_uri, tmp_path, monkeypatch):  # noqa: F811
    """The rows to drop are decided once: a reconcile redone after its parts were rewritten (killed before its
    marker) records the same duplicates instead of finding nothing left to drop and losing them."""
    from embedlib.model import checkpoint
    from embedlib.pipeline import tasks

    from test_pipeline import _embed

    b, c, out = tmp_path / "b", tmp_path / "c", tmp_path / "out"
    _corpus(b, 3)
    _corpus(c, 3)  # the same contents under other paths

    def die(point):
        if point == "commit":
            raise KeyboardInterrupt

    monkeypatch.setattr(catalog, "kill_point", die)
    try:
        _embed(model_uri, b, out)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    (run_b,) = [r for r, _ in catalog.unfinished_runs(Store(str(out)))]
    _embed(model_uri, c, out)
    version = checkpoint.load_meta(model_uri)["model_version"]
    first = tasks.reconcile_task(str(out), run_b, "embeddings", version)
    again = tasks.reconcile_task(str(out), run_b, "embeddings", version)
    assert first == again == {"dropped": 3}
    store = Store(str(out))
    (errors,) = store.find(f"errors/run={run_b}", ".parquet")
    assert store.read_parquet(errors).column("status").to_pylist() == ["duplicate"] * 3
    parts = store.find(f"embeddings/model_version={version}/run={run_b}", ".parquet")
    assert sum(store.read_parquet(p).num_rows for p in parts) == 0
