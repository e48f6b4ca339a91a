"""DuckDB over the Parquet output: the one place that opens connections and runs the SQL in sql/.

Views cast the embedding to FLOAT[D] (Parquet hands back FLOAT[]), so array_cosine_distance works.
Remote folders (s3://, gs://) are read through fsspec, registered with DuckDB.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Sequence

import duckdb
import fsspec
import pyarrow.parquet as pq

SQL_PACKAGE = "embedlib.sql"


def sql_text(name: str, **fill: Any) -> str:
    """The text of sql/<name>.sql with {placeholders} filled (folder paths and sizes only; values are bound)."""
    text = resources.files(SQL_PACKAGE).joinpath(f"{name}.sql").read_text()
    return text.format(**fill) if fill else text


def embedding_dim(root: str) -> int:
    """The embedding size of a run, from its Parquet schema metadata."""
    fs, path = fsspec.core.url_to_fs(root.rstrip("/") + "/embeddings")
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"no embeddings under {root}/embeddings")
    with fs.open(files[0], "rb") as fh:
        schema = pq.read_schema(fh)
    return schema.field("embedding").type.list_size


def connect(root: str, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory, or a .duckdb file) with views over the run folder `root`."""
    con = duckdb.connect(database)
    fs, _ = fsspec.core.url_to_fs(root)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    if protocol not in ("file", "local"):
        con.register_filesystem(fs)
    root = root.rstrip("/").replace("'", "''")
    con.execute(sql_text("views", root=root, dim=embedding_dim(root)))
    return con


def run(con: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any] | None = None, **fill: Any):
    """Run a named query from sql/ with bound parameters; returns (column names, rows)."""
    cur = con.execute(sql_text(name, **fill), params or {})
    return [d[0] for d in cur.description], cur.fetchall()


def run_sql(con: duckdb.DuckDBPyConnection, sql: str):
    cur = con.execute(sql)
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


def similar_to_sha256(con, sha256: str, k: int):
    return run(con, "similar_sha256", {"sha256": sha256, "k": k})


def similar_to_vector(con, vector: Sequence[float], k: int):
    return run(con, "similar_vector", {"vector": list(map(float, vector)), "k": k}, dim=len(vector))


def format_rows(columns: list[str], rows: list[tuple], fmt: str = "table") -> str:
    """An aligned table for people, or csv / json for machines."""
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=1)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
