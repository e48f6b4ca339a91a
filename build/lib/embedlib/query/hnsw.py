"""An HNSW index (DuckDB's vss extension, from the pinned duckdb-extension-vss wheel: loads offline) on a
private copy of the current embeddings, `embeddings_hnsw`.

Why a copy: DuckDB uses an HNSW index for any `ORDER BY array_*_distance(col, constant) LIMIT k` over the
indexed table, and applies WHERE filters AFTER the index's top-k, so a filtered query silently returns fewer
(or other) rows. Nobody filters `embeddings_hnsw`: `embeddings` and every macro stay exact brute force, and
approximate answers are only ever asked for by name (top_k here).
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import duckdb

from embedlib.query.connect import sql_text
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
    return int(con.execute("SELECT embedding_dim FROM embedlib_settings").fetchone()[0])


def build(con: duckdb.DuckDBPyConnection, metric: str = "cosine", m: int = 16, ef_construction: int = 128) -> None:
    """(Re)build embeddings_hnsw and its index from `embeddings` (slow: tens of seconds per 100k rows)."""
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    load_vss(con)
    con.execute("SET hnsw_enable_experimental_persistence = true")  # a --db file may hold it (experimental)
    con.execute(sql_text("hnsw_build", dim=_dim(con)))
    con.execute(sql_text("hnsw_index", metric=METRICS[metric], m=int(m), ef_construction=int(ef_construction)))


def top_k(con: duckdb.DuckDBPyConnection, vector: Sequence[float], k: int) -> list[str]:
    """sha256 of the (approximately) k nearest rows by cosine distance, through the index."""
    return [r[0] for r in con.execute(sql_text("hnsw_probe", dim=_dim(con)),
                                      {"v": [float(x) for x in vector], "k": k}).fetchall()]
