"""The common questions as Python calls: each runs one named statement of sql/ask_*.sql with bound parameters
and returns (column names, rows). Every failure is a QueryError with one line."""

from __future__ import annotations

import math
from typing import Any, Sequence

import duckdb

from embedlib.sql import sql_text, statement
from embedlib.query.errors import DUCKDB_ERRORS, QueryError, translate

Result = tuple[list[str], list[tuple]]


def explain(con: duckdb.DuckDBPyConnection, exc: BaseException) -> QueryError:
    """A QueryError for `exc`; a query that names an object the root could not provide says why."""
    err = translate(exc)
    if isinstance(exc, duckdb.CatalogException):
        try:
            missing = con.execute(statement("missing_list")).fetchall()
        except DUCKDB_ERRORS:
            missing = []
        text = str(exc)
        for name, reason in missing:
            if f"name {name} does not exist" in text:
                return QueryError(f"{name} is not available: {reason}")
    return err


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | Sequence[Any] | None = None) -> Result:
    """Any SQL (the last statement's rows); statements that return nothing give ([], [])."""
    if not sql or not sql.strip():
        raise QueryError("empty SQL statement")
    try:
        cur = con.execute(sql, params) if params is not None else con.execute(sql)
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except DUCKDB_ERRORS as exc:
        raise explain(con, exc) from exc


def ask(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> Result:
    """Run sql/ask_<name>.sql with these bound parameters."""
    return run_sql(con, sql_text(f"ask_{name}"), params)


def _finite(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"{what} must be a number (got {value!r})") from exc
    if not math.isfinite(value):
        raise QueryError(f"{what} must be a finite number (got {value})")
    return value


def similar(con, sha256: str, k: int = 10, metric: str = "cosine", from_version: str | None = None,
            cross_version: bool = False) -> Result:
    """k nearest to a file already embedded (itself excluded)."""
    return ask(con, "similar", sha256=sha256, k=k, metric=metric, from_version=from_version,
               cross_version=cross_version)


def similar_to_vector(con, vector: Sequence[float], k: int = 10, metric: str = "cosine",
                      from_version: str | None = None, cross_version: bool = False) -> Result:
    """k nearest to a vector (e.g. a file embedded on the fly with model version `from_version`)."""
    try:
        values = [float(x) for x in vector]
    except (TypeError, ValueError) as exc:
        raise QueryError(f"the query vector must be numbers: {exc}") from exc
    return ask(con, "similar_vector", vector=values, k=k, metric=metric, from_version=from_version,
               cross_version=cross_version)


def near_duplicate_groups(con, max_distance: float = 0.01, k: int = 50) -> Result:
    return ask(con, "near_dupes", max_distance=_finite(max_distance, "--max-distance"), k=k)


def stored_neighbors(con, sha256: str | None = None, run: str | None = None, k: int = 100) -> Result:
    cols, rows = ask(con, "neighbors", sha256=sha256, run=run, k=k)
    if not rows and sha256 is not None:
        raise QueryError(f"no stored neighbours for sha256 {sha256}: it is not in the current model version, "
                         "or python -m jobs.neighbors has not run over its run")
    return cols, rows


def attribution(con, run: str | None = None, min_confidence: float = 0.0, k: int = 100) -> Result:
    return ask(con, "attribution", run=run, min_confidence=_finite(min_confidence, "--min-confidence"), k=k)
