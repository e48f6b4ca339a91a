"""An output root on a real S3 API (moto's server on loopback, through s3fs): the views, the macros and the
neighbours job work there as on a local disk, under a key prefix with a quote, brackets and spaces."""

from __future__ import annotations

import numpy as np
import pytest

import query_fixtures as qf
from embedlib import query
from embedlib.query.neighbors import compute_neighbors

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3():
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="embedlib")
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    yield options
    server.stop()


def test_views_macros_and_neighbors_on_s3(s3, tmp_path):
    root = "s3://embedlib/nightly/o'brien [1] a b"
    fx = qf.write_root(root, storage_options=s3)
    decoy = qf.write_root("s3://embedlib/nightly/o'brien 1 a b", storage_options=s3)  # what a glob would match
    assert decoy.root != fx.root
    result = compute_neighbors(root, run=qf.RUN3, k=4, storage_options=s3)
    assert result.queries == 9 and result.parts[0].endswith("run=20261103T010000Z-cccccc/part-000000.parquet")

    con = query.connect(root, storage_options=s3)
    assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 45
    assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == 6
    sha = qf.sha("gamma-late-1.exe")
    cols, rows = query.similar(con, sha, 5)
    shas, x = fx.matrix(qf.MV_B)
    d = 1 - x @ fx.vectors[qf.MV_B][sha]
    want = [shas[i] for i in np.lexsort((shas, d.round(6))) if shas[i] != sha][:5]
    assert [r[cols.index("sha256")] for r in rows] == want
    n = con.execute("SELECT count(*) FROM neighbors WHERE run_id = $r", {"r": qf.RUN3}).fetchone()[0]
    assert n == 9 * 4
    assert con.execute("SELECT count(*) FROM attribution").fetchone()[0] == 9
    con.close()

    db = tmp_path / "from-s3.duckdb"
    query.connect(root, database=str(db), storage_options=s3).close()
    again = query.open_database(str(db))  # no S3 needed any more
    assert again.execute("SELECT count(*) FROM embeddings_all").fetchone()[0] == 75


def test_a_missing_s3_root_is_one_line(s3):
    with pytest.raises(query.QueryError, match="does not exist"):
        query.connect("s3://embedlib/none/here", storage_options=s3)
