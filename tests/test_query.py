"""Parquet -> DuckDB round trip: the view casts FLOAT[] back to FLOAT[D] and kNN answers are right."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedlib import query, schema
from jobs import query as query_cli


def _write_run(root, dim=8):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, dim))
    vecs, rows = [], []
    for i in range(12):
        fam = i % 3
        v = base[fam] + 0.05 * (i + 1) * rng.normal(size=dim)
        vecs.append(v / np.linalg.norm(v))
        rows.append({"sha256": f"{i:064x}", "path": f"/x/f{i}", "size_bytes": 100 + i, "format": "elf",
                     "family": f"fam{fam}", "truncated": False, "model_version": "m-test", "run_id": "r1"})
    vecs = np.asarray(vecs, dtype=np.float32)
    table = pa.Table.from_pylist(rows)
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim))
    (root / "embeddings").mkdir(parents=True)
    (root / "errors").mkdir()
    pq.write_table(schema.conform(table, schema.embeddings_schema(dim)), root / "embeddings" / "part-000000.parquet")
    errs = pa.Table.from_pylist([{"path": "/x/empty", "status": "empty", "reason": "0 bytes", "model_version": "m-test",
                                  "run_id": "r1"}])
    pq.write_table(schema.conform(errs, schema.ERRORS), root / "errors" / "part-000000.parquet")
    return vecs


def test_view_casts_to_fixed_size_array(tmp_path):
    _write_run(tmp_path)
    con = query.connect(str(tmp_path))
    (typ,) = con.execute("SELECT typeof(embedding) FROM embeddings LIMIT 1").fetchone()
    assert typ == "FLOAT[8]"
    (raw,) = con.execute(f"SELECT typeof(embedding) FROM read_parquet('{tmp_path}/embeddings/*.parquet') LIMIT 1").fetchone()
    assert raw == "FLOAT[]"  # what Parquet gives back without the view's cast


def test_similar_matches_numpy_brute_force(tmp_path):
    vecs = _write_run(tmp_path)
    con = query.connect(str(tmp_path))
    cols, rows = query.similar_to_sha256(con, f"{4:064x}", k=5)
    dist = 1 - vecs @ vecs[4]
    order = [i for i in np.argsort(dist, kind="stable") if i != 4][:5]
    assert [r[cols.index("sha256")] for r in rows] == [f"{i:064x}" for i in order]
    assert np.allclose([r[cols.index("distance")] for r in rows], dist[order], atol=1e-5)
    cols, rows = query.similar_to_vector(con, vecs[7].tolist(), k=1)
    assert rows[0][cols.index("sha256")] == f"{7:064x}"


def test_cli_formats_and_named_queries(tmp_path, capsys):
    _write_run(tmp_path)
    db = tmp_path / "views.duckdb"
    query_cli.main(["--run", str(tmp_path), "--database", str(db), "--format", "csv", "families"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("family,files") and len(out) == 4
    query_cli.main(["--run", str(tmp_path), "--format", "json", "errors"])
    assert '"status": "empty"' in capsys.readouterr().out
    query_cli.main(["--run", str(tmp_path), "sql", "SELECT count(*) AS n FROM embeddings"])
    assert capsys.readouterr().out.splitlines()[2].strip() == "12"
    import duckdb  # the views persist in the DuckDB file for later SQL sessions

    assert duckdb.connect(str(db)).execute("SELECT count(*) FROM embeddings").fetchone()[0] == 12
