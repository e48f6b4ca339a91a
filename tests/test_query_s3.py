"""An output root on a real S3 API (moto's server on loopback, through s3fs): the views, the macros, the
neighbours job and the command work there as on a local disk, under a key prefix with a quote, brackets and
spaces. Credentials and endpoint come from the environment and fsspec's configuration, as for the pipeline."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import moto_s3

import query_fixtures as qf
from embedlib import query
from embedlib.query.cli import main as embedlib_main
from embedlib.query.neighbors import compute_neighbors


@pytest.fixture(scope="module")
def s3():
    with moto_s3("embedlib") as fs:
        yield fs


def test_views_macros_neighbors_and_the_command_on_s3(s3, tmp_path, capsys):
    root = "s3://embedlib/nightly/o'brien [1] a b"
    fx = qf.write_root(root)
    qf.write_root("s3://embedlib/nightly/o'brien 1 a b")  # what a glob would match: never read
    result = compute_neighbors(root, run=qf.RUN3, k=4)
    assert result.queries == 9 and result.parts[0].endswith("/part-000000.parquet")
    assert "/neighbors/model_version=mv-b/run=20261103T010000Z-cccccc/commit=" in result.parts[0]  # under the lease

    con = query.connect(root)
    assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 45
    assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == 7
    sha = qf.sha("gamma-late-1.exe")
    cols, rows = query.similar(con, sha, 5)
    shas, x = fx.matrix(qf.MV_B)
    d = 1 - x @ fx.vectors[qf.MV_B][sha]
    want = [shas[i] for i in np.lexsort((shas, d.round(6))) if shas[i] != sha][:5]
    assert [r[cols.index("sha256")] for r in rows] == want
    assert con.execute("SELECT count(*) FROM neighbors WHERE run_id = $r", {"r": qf.RUN3}).fetchone()[0] == 9 * 4
    assert con.execute("SELECT count(*) FROM attribution").fetchone()[0] == 9
    con.close()

    db = tmp_path / "from-s3.duckdb"
    assert embedlib_main(["runs", "--root", root, "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 4  # header + 3 runs
    again = query.open_database(str(db))  # no S3 needed any more
    assert again.execute("SELECT count(*) FROM embeddings_all").fetchone()[0] == 75


def test_a_missing_s3_root_is_one_line(s3, capsys):
    with pytest.raises(query.QueryError, match="does not exist"):
        query.connect("s3://embedlib/none/here")
    assert embedlib_main(["runs", "--root", "s3://embedlib/none/here"]) == 1
    assert "does not exist" in capsys.readouterr().err
