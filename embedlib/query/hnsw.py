"""An opt-in HNSW index (DuckDB's vss extension, from the pinned duckdb-extension-vss wheel: loads offline) on a
private copy of the current embeddings, `embeddings_hnsw`.

Why a copy: DuckDB uses an HNSW index for any `ORDER BY array_*_distance(col, constant) LIMIT k` over the
indexed table, and applies WHERE filters AFTER the index's top-k, so a filtered query silently returns fewer
(or other) rows. Nobody filters `embeddings_hnsw`: `embeddings` and every macro stay exact brute force, and
approximate answers are only ever asked for by name (similar_approx here, `embedlib similar --approx`), and
say so in an `approximate` column.

Where it helps (bench/query_latency.py): one query against a materialised table (a --db file) of 100k+ rows,
asked many times. Building costs minutes per 100k rows on 2 cores, so the Parquet views, one-shot commands and
the batch neighbour job (numpy BLAS) never use it.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import duckdb

from embedlib.query import analytics
from embedlib.sql import sql_text, statement
from embedlib.query.errors import QueryError

METRICS = {"cosine": "cosine", "l2": "l2sq", "ip": "ip"}


def load_vss(con: duckdb.DuckDBPyConnection) -> None:
    """Load the vss extension shipped in the duckdb-extension-vss wheel (no download)."""
    try:
        import duckdb_extension_vss
    except ImportError as exc:
        raise QueryError("the HNSW index needs the duckdb-extension-vss package (pip install embedlib)") from exc
    base = pathlib.Path(duckdb_extension_vss.__file__).parent / "extensions"
    found = sorted(base.glob(f"v{duckdb.__version__}/*.duckdb_extension"))
    if not found:
        raise QueryError(f"duckdb-extension-vss has no build for duckdb {duckdb.__version__} under {base}")
    con.load_extension(str(found[0]))


def _dim(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute(statement("embedding_dim")).fetchone()[0])


def build(con: duckdb.DuckDBPyConnection, metric: str = "cosine", m: int = 16, ef_construction: int = 128) -> None:
    """(Re)build embeddings_hnsw and its index from `embeddings` (slow: tens of seconds per 100k rows)."""
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    load_vss(con)
    con.execute(statement("hnsw_persistence"))  # a --db file may hold it (experimental)
    con.execute(sql_text("hnsw_build", dim=_dim(con)))
    con.execute(sql_text("hnsw_index", metric=METRICS[metric], m=int(m), ef_construction=int(ef_construction)))


def top_k(con: duckdb.DuckDBPyConnection, vector: Sequence[float], k: int, ef_search: int | None = None) -> list[str]:
    """sha256 of the (approximately) k nearest rows by cosine distance, through the index. ef_search: the
    candidates a probe looks at (None: leave the session's setting; similar_approx uses 128)."""
    if ef_search is not None:
        con.execute(statement("hnsw_ef_search", ef=max(int(ef_search), int(k))))
    return [r[0] for r in con.execute(sql_text("hnsw_probe", dim=_dim(con)),
                                      {"v": [float(x) for x in vector], "k": k}).fetchall()]


def has_index(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        return bool(con.execute(statement("hnsw_indexes")).fetchone()[0])
    except duckdb.Error:
        return False


def similar_approx(con: duckdb.DuckDBPyConnection, sha256: str, k: int = 10) -> analytics.Result:
    """similar(sha256, k) through the HNSW index (cosine): the candidates' distances are exact, the set may
    miss closer rows. Bad input gets the exact macro's one-line errors."""
    if not has_index(con):
        raise QueryError("no HNSW index in this database: build one with `embedlib index --root ROOT --db FILE`")
    _, rows = analytics.ask(con, "vector_of", sha256=sha256)
    if not rows or not isinstance(k, int) or not 1 <= k <= 10_000:
        analytics.similar(con, sha256, k)  # raises the exact macro's error for this input
    vector = list(rows[0][0])
    candidates = top_k(con, vector, k + 1, ef_search=128)  # the file itself comes back first
    return analytics.run_sql(con, sql_text("ask_approx_rows", dim=_dim(con)),
                             {"v": vector, "candidates": candidates, "exclude": sha256, "k": k})
