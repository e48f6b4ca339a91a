"""The `embedlib` command and jobs.neighbors from the shell: answers, the interactive mode over piped stdin,
and one clear line with a non-zero exit for every bad input (never a traceback)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import query_fixtures as qf
from embedlib.query import cli, connect
from embedlib.query.neighbors import compute_neighbors
from jobs import neighbors as neighbors_job
from jobs import query as query_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    fx = qf.write_root(str(tmp_path_factory.mktemp("cli") / "out [1] o'b"))
    for run in (qf.RUN1, qf.RUN2, qf.RUN3):
        compute_neighbors(fx.root, run=run, k=5)
    return fx


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_sql_and_formats(root, capsys):
    code, out, err = run_cli(capsys, "sql", "SELECT count(*) AS n FROM embeddings", "--root", root.root, "--format", "csv")
    assert code == 0 and csv_rows(out) == [{"n": "45"}]
    code, out, _ = run_cli(capsys, "--root", root.root, "--format", "json", "sql",
                           "SELECT format, count(*) AS n FROM embeddings GROUP BY ALL ORDER BY format")
    assert json.loads(out) == [{"format": "elf", "n": 33}, {"format": "pe", "n": 12}]
    code, out, err = run_cli(capsys, "sql", "SELECT 1 AS one", "--root", root.root)
    assert out.splitlines() == ["one", "---", "1"] and err.strip() == "(1 row)"


def test_every_subcommand_answers(root, capsys):
    sha = qf.sha("alpha-03")
    checks = {
        ("similar", "--sha256", sha, "-k", "3"): lambda r: [x["rank"] for x in r] == ["1", "2", "3"],
        ("similar", "--sha256", sha, "-k", "2", "--metric", "l2"): lambda r: len(r) == 2,
        ("families", "-k", "2"): lambda r: [x["family"] for x in r] == ["alpha", "beta"],
        ("formats",): lambda r: {x["format"] for x in r} == {"elf", "pe"},
        ("sizes",): lambda r: sum(int(x["files"]) for x in r) == 45,
        ("errors",): lambda r: sum(int(x["files"]) for x in r) == 7,
        ("errors", "--run", qf.RUN3): lambda r: {x["status"] for x in r} == {"too_large", "duplicate", "embed_error"},
        ("runs",): lambda r: [x["run_id"] for x in r] == [qf.RUN1, qf.RUN2, qf.RUN3],
        ("near-dupes", "--max-distance", "0.001"): lambda r: len(r) == 1 and r[0]["size"] == "4",
        ("neighbors", "--sha256", sha): lambda r: [x["rank"] for x in r] == ["1", "2", "3", "4", "5"],
        ("neighbors", "--run", qf.RUN3, "-k", "1000"): lambda r: len(r) == 9 * 5,
        ("attribution", "--run", qf.RUN3): lambda r: len(r) == 9,
        ("attribution", "--min-confidence", "0.99", "-k", "1000"): lambda r: all(float(x["confidence"]) >= 0.99 for x in r),
        ("drift", "--runs", qf.RUN2, qf.RUN3): lambda r: {x["family"] for x in r} == {"alpha", "beta", "gamma"},
        ("drift", "--versions", qf.MV_A, qf.MV_B): lambda r: len(r) == 3,
        ("drift", "--versions", qf.MV_A, qf.MV_B, "--files"): lambda r: [x["path"] for x in r] == ["/corpus/beta-07"],
    }
    for argv, ok in checks.items():
        code, out, err = run_cli(capsys, *argv, "--root", root.root, "--format", "csv")
        assert code == 0, (argv, err)
        assert ok(csv_rows(out)), (argv, out)


def test_materialised_db_then_queries_without_the_root(root, tmp_path, capsys):
    db = tmp_path / "e.duckdb"
    code, _, err = run_cli(capsys, "runs", "--root", root.root, "--db", db)
    assert code == 0 and db.is_file()
    code, out, _ = run_cli(capsys, "--db", db, "--format", "csv", "sql", "SELECT count(*) AS n FROM neighbors")
    assert code == 0 and csv_rows(out) == [{"n": str(45 * 5)}]
    assert duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM embeddings").fetchone()[0] == 45


BAD = [
    (("similar", "--sha256", "xyz"), "malformed sha256 'xyz'"),
    (("similar", "--sha256", "0" * 64), "unknown sha256"),
    (("similar", "--sha256", qf.sha("alpha-01"), "-k", "0"), "k must be a whole number"),
    (("similar", "--sha256", qf.sha("alpha-01"), "-k", "99999999"), "k must be a whole number"),
    (("similar", "--sha256", qf.sha("alpha-01"), "--metric", "dot"), "unknown metric 'dot'"),
    (("near-dupes", "--max-distance", "nan"), "finite number"),
    (("near-dupes", "--max-distance", "-0.5"), "finite number >= 0"),
    (("families", "-k", "-1"), "k must be a whole number"),
    (("neighbors", "--sha256", "f" * 64), "no stored neighbours for sha256"),
    (("sql", "SELEC 1"), "Parser Error"),
    (("sql", "SELECT * FROM nope"), "Table with name nope does not exist"),
    (("sql", ""), "empty SQL statement"),
    (("drift", "--runs", qf.RUN2, "nope"), "run nope has no embeddings"),
    (("similar", "--file", "/nonexistent/file"), "is not a file"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_is_one_line_and_a_non_zero_exit(root, capsys, argv, message):
    code, out, err = run_cli(capsys, *argv, "--root", root.root)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("embedlib: error:"), err


def test_usage_errors_are_one_line_too(root, capsys):
    for argv in (["near-dupes", "--max-distance", "abc"], ["similar", "-k", "x", "--sha256", "0" * 64], ["nope"], []):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv + ["--root", root.root])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err, err


def test_bad_roots_and_databases(tmp_path, capsys, root):
    (tmp_path / "empty").mkdir()
    for argv, message in [
        (("runs", "--root", tmp_path / "missing"), "does not exist"),
        (("runs", "--root", tmp_path / "empty"), "is empty"),
        (("runs", "--root", root.root, "--db", tmp_path), "is a directory"),
        (("runs", "--db", tmp_path / "none.duckdb"), "no database"),
        (("runs",), "give an output root"),
        (("runs", "--root", root.root, "--labels", tmp_path / "none.csv"), "does not exist"),
        (("runs", "--root", root.root, "--model-version", "v9"), "model version 'v9' has no embeddings"),
    ]:
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, (argv, err)


def test_repl_reads_piped_statements(root, monkeypatch, capsys):
    stdin = io.StringIO("SELECT 1 AS a;\nSELECT 'x;y' AS b; -- a comment; with a semicolon\n"
                        "SELECT nope FROM embeddings;\n.tables\nSELECT\n  count(*) AS n\nFROM runs")
    con = connect(root.root)
    code = cli.repl(con, "csv", stdin=stdin, interactive=False)
    out, err = capsys.readouterr()
    assert code == 1  # one statement failed, the others still ran
    assert "a\n1\n" in out and "b\nx;y\n" in out and out.rstrip().endswith("n\n3")
    assert "similar,macro" in out and "attribution,view" in out
    assert err.count("embedlib: error:") == 1 and "nope" in err


def test_split_statements_keeps_quotes_and_comments():
    done, rest = cli.split_statements("SELECT ';' AS a; SELECT \"x;\" FROM t -- c;\n; SELECT 2")
    assert done == ["SELECT ';' AS a;", "SELECT \"x;\" FROM t -- c;\n;"] and rest == " SELECT 2"


def test_console_script_and_interactive_mode_over_a_pipe(root):
    """The installed `embedlib` command, its stdin mode, and jobs.query's old spelling."""
    exe = Path(sys.executable).parent / "embedlib"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "jobs.query"]
    p = subprocess.run(cmd + ["sql", "--root", root.root, "--format", "csv"], input="SELECT 40 + 2 AS x;\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.splitlines() == ["x", "42"], p.stderr
    p = subprocess.run(cmd + ["similar", "--sha256", "bad", "--root", root.root], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_jobs_query_keeps_the_old_spelling(root, capsys):
    assert query_job.main(["--run", root.root, "--format", "csv", "families", "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("alpha,")
    assert query_job.main(["--run", root.root, "errors", "--run", qf.RUN1, "--format", "csv"]) == 0
    assert {r["status"] for r in csv_rows(capsys.readouterr().out)} == {"empty", "duplicate"}


def test_neighbors_job_cli(tmp_path, capsys):
    fx = qf.write_root(str(tmp_path / "n"))
    assert neighbors_job.main(["--root", fx.root, "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"neighbors: 45 rows of 2 runs without neighbours ({qf.RUN2}, {qf.RUN3}) x 45 rows of "
                          "model version mv-b, k=3")
    for argv, message in [(["--root", fx.root, "-k", "0"], "k must be"), (["--root", str(tmp_path / "x")], "does not exist"),
                          (["--root", fx.root, "--run", "r0"], "run 'r0' has no embeddings")]:
        assert neighbors_job.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err


def test_similar_file_embeds_with_the_model_of_the_run(tmp_path, capsys):
    """--file: a real checkpoint embeds a real executable; the run's own row for it comes back at distance 0.
    Another model (another version) is refused unless --cross-version."""
    model = qf.tiny_checkpoint(str(tmp_path / "model"))
    files = [p for p in ("/usr/bin/ls", "/usr/bin/cat", "/usr/bin/env", "/usr/bin/true", "/usr/bin/cp") if os.path.isfile(p)]
    vectors = qf.write_embedded_root(str(tmp_path / "root"), model, files)
    target = next(iter(vectors))
    code, out, err = run_cli(capsys, "similar", "--file", files[0], "-k", "2", "--root", tmp_path / "root",
                             "--format", "csv")
    assert code == 0, err
    rows = csv_rows(out)
    assert rows[0]["sha256"] == target and float(rows[0]["distance"]) < 1e-5
    other = qf.tiny_checkpoint(str(tmp_path / "other"), seed=1)
    code, out, err = run_cli(capsys, "similar", "--file", files[0], "--model", other, "--root", tmp_path / "root")
    assert code == 1 and "comparing an embedding of model version m-" in err and "cross_version" in err
    code, out, err = run_cli(capsys, "similar", "--file", files[0], "--model", other, "--cross-version", "-k", "2",
                             "--root", tmp_path / "root")
    assert code == 0 and out.count("/usr/bin/") == 2


def test_hnsw_index_is_opt_in_and_says_approximate(root, tmp_path, capsys):
    sha = qf.sha("beta-02")
    db = tmp_path / "h.duckdb"
    code, _, err = run_cli(capsys, "similar", "--sha256", sha, "--approx", "--root", root.root, "--db", db)
    assert code == 1 and "no HNSW index in this database" in err
    code, out, err = run_cli(capsys, "index", "--root", root.root, "--db", db, "--format", "csv")
    assert code == 0 and csv_rows(out)[0]["rows"] == "45", err
    code, out, _ = run_cli(capsys, "similar", "--sha256", sha, "--approx", "-k", "5", "--db", db, "--format", "csv")
    approx = csv_rows(out)
    code, out, _ = run_cli(capsys, "similar", "--sha256", sha, "-k", "5", "--db", db, "--format", "csv")
    exact = csv_rows(out)
    assert [r["sha256"] for r in approx] == [r["sha256"] for r in exact]  # 45 rows: the graph finds them all
    assert all(r["approximate"] == "True" for r in approx) and "approximate" not in exact[0]
    for argv, message in [(("--sha256", "zz"), "malformed sha256"), (("--sha256", sha, "-k", "0"), "k must be")]:
        code, _, err = run_cli(capsys, "similar", "--approx", *argv, "--db", db)
        assert code == 1 and message in err
    code, _, err = run_cli(capsys, "index", "--root", root.root)
    assert code == 1 and "needs --db FILE" in err
