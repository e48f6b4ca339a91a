"""connect(root): a DuckDB connection with the views and macros of embedlib.query.sql over an output root.

Two ways to hold the data:
  views (default, in memory)  every query reads the Parquet files; opening is cheap.
  materialised (database=FILE or materialize=True)  the tables are copied into DuckDB once (a FILE keeps them
                              for later sessions: open_database(FILE) needs no root); repeated queries are faster.
Objects: embeddings (current model version, FLOAT[D]), embeddings_all, errors, runs, neighbors_all,
neighbors, labels (when a manifest is given), labelled_files, attribution, counts, and the macros of sql/.
An object whose data the root lacks (e.g. no neighbors yet) is not created; embedlib_missing says why, and
queries that name it fail with that reason.
The views' file lists are session variables of this connection: a con.cursor() does not carry them (use the
connection itself, or a materialised one, from other threads).
"""

from __future__ import annotations

import os
import re

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

import embedlib
from embedlib import schema
from embedlib.model import exact
from embedlib.sql import create_statement, requires, sql_text, statement
from embedlib.query import layout
from embedlib.root.store import Store
from embedlib.query.errors import DUCKDB_ERRORS, QueryError, translate

_CREATES = re.compile(r"CREATE OR REPLACE (?:VIEW|MACRO|TABLE) \"?(\w+)", re.I)

# Objects built from the sources, in order: (name, SQL file of its SELECT, sources it reads).
BASES = (
    ("embeddings_all", "base_embeddings_all", ("embedlib_src_embeddings_all",)),
    ("embeddings", "base_embeddings", ("embedlib_src_embeddings",)),
    ("errors", "base_errors", ("embedlib_src_errors",)),
    ("runs", "base_runs", ("embedlib_src_runs",)),
    ("neighbors_all", "base_neighbors_all", ("embedlib_src_neighbors",)),
    ("labels", "base_labels", ("embedlib_src_labels",)),
)
# Views and macros over the bases, in order. Each file says what it needs in a `-- requires:` line.
DERIVED = ("helpers", "labelled_files", "evidence", "neighbors", "attribution", "counts", "error_counts",
           "run_counts", "duplicates", "similar", "near_duplicates", "drift", "drift_versions", "explain",
           "family_neighbors")


def _register_source(con: duckdb.DuckDBPyConnection, store: Store, name: str, files: list[str],
                     embedding_as_list: bool = False) -> None:
    """A view `name` over exactly these files (relative to the root): read_parquet over a bound list of escaped
    names, or (a name DuckDB's glob cannot express) a pyarrow dataset."""
    uris = [store.uri(f) for f in files]
    if all(layout.duckdb_safe(u) for u in uris):
        con.execute(statement("set_files", variable=name), {"files": [layout.duckdb_path(u) for u in uris]})
        con.execute(sql_text("source_files", name=name, variable=name))
        return
    schemas = [layout.file_schema(store, f) for f in files]
    unified = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    if embedding_as_list and "embedding" in unified.names:  # versions may differ in size: a plain list
        i = unified.get_field_index("embedding")
        unified = unified.set(i, pa.field("embedding", pa.list_(pa.float32())))
    con.register(name, ds.dataset([store.path(f) for f in files], schema=unified,
                                  filesystem=store.arrow_filesystem(), format="parquet"))


def _register_labels(con: duckdb.DuckDBPyConnection, labels: str, storage_options: dict | None) -> None:
    folder, _, name = labels.rstrip("/").rpartition("/")
    where = layout.open_root(folder or ".", storage_options, must_exist=False)  # a local path is a path
    if not where.exists(name) or where.is_folder(name):
        raise QueryError(f"labels manifest {labels!r} does not exist")
    uri = where.uri(name)
    if not where.local:
        try:
            con.register_filesystem(where.fs)
        except DUCKDB_ERRORS:
            pass  # the root's own filesystem, already registered
    if not layout.duckdb_safe(uri):
        raise QueryError(f"labels manifest {labels!r}: a name with both a backslash and [ ] * ? is not supported")
    kind = "parquet" if uri.lower().endswith(".parquet") else "csv"
    con.execute(statement("set_files", variable="embedlib_labels_file"), {"files": [layout.duckdb_path(uri)]})
    con.execute(sql_text(f"source_labels_{kind}", variable="embedlib_labels_file"))
    columns = [r[0] for r in con.execute(statement("labels_columns")).fetchall()]
    missing = {"path", "family"} - set(columns)
    if missing:
        raise QueryError(f"labels manifest {labels!r} has no {' and no '.join(sorted(missing))} column "
                         f"(columns: {', '.join(columns)})")


def connect(root: str | None = None, *, model_version: str | None = None, labels: str | None = None,
            database: str | None = None, materialize: bool | None = None,
            storage_options: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A ready DuckDB connection over the output root `root` (local path or fsspec URI).

    model_version: the version `embeddings` shows (default: that of the latest finished run).
    labels: a manifest (CSV or Parquet, columns path and family) whose families override the recorded ones.
    database: a DuckDB file to materialise the tables into (an earlier embedlib database there is replaced, any
      other file is refused); without a root, open that file as it was built.
    Raises QueryError (one line) for every bad input."""
    if root is None:
        if database is None:
            raise QueryError("give an output root (--root) or a database built from one (--db)")
        return open_database(database)
    if database is not None:
        _check_database_path(database, must_exist=False)
    materialize = database is not None if materialize is None else materialize
    store = layout.open_root(root, storage_options)
    listing = layout.list_root(store)
    if listing.empty:
        raise QueryError(f"output root {root!r} is empty: no embeddings/, errors/ or runs/ files "
                         "(has a jobs.embed run finished into it?)")
    version = model_version or layout.current_model_version(listing)
    if model_version is not None and model_version not in listing.embeddings:
        known = ", ".join(sorted(listing.embeddings)) or "none"
        raise QueryError(f"model version {model_version!r} has no embeddings under {root!r} (versions: {known})")
    files = listing.embeddings.get(version, [])
    dim = layout.embedding_dim(store, files[0]) if files else 0
    learned_dim = layout.learned_dim(store, files, dim) if files else 0
    if database is not None and os.path.exists(database):
        open_database(database, read_only=True).close()  # refuse to replace a file that is not ours
    # A database file is built under a temporary name and renamed: a reader never sees half of it.
    building = f"{database}.building-{os.getpid()}" if database is not None else ":memory:"
    try:
        con = duckdb.connect(building)
    except DUCKDB_ERRORS as exc:
        raise QueryError(f"cannot create database {database!r}: {translate(exc)}") from exc
    try:
        _build(con, store, listing, version, dim, learned_dim, labels, materialize, storage_options)
    except DUCKDB_ERRORS as exc:
        con.close()
        _remove(building)
        raise translate(exc) from exc
    except BaseException:
        con.close()
        _remove(building)
        raise
    if database is None:
        return con
    con.execute(statement("checkpoint"))
    con.close()
    os.replace(building, database)
    return open_database(database)


def _remove(path: str) -> None:
    for p in (path, path + ".wal"):
        if p != ":memory:" and os.path.exists(p):
            os.remove(p)


def _build(con: duckdb.DuckDBPyConnection, store: Store, listing: layout.Listing, version: str, dim: int,
           learned_dim: int, labels: str | None, materialize: bool, storage_options: dict | None) -> None:
    con.execute(statement("no_python_replacements"))
    if not store.local:
        con.register_filesystem(store.fs)
    con.execute(sql_text("settings"), {"root": store.given, "model_version": version, "dim": dim,
                                       "learned_dim": learned_dim, "rerank_depth": exact.RERANK_DEPTH, "labels": labels,
                                       "materialized": materialize, "embedlib_version": embedlib.__version__})
    missing: dict[str, str] = {}
    sources = {
        "embedlib_src_embeddings_all": [f for fs in listing.embeddings.values() for f in fs],
        "embedlib_src_embeddings": listing.embeddings.get(version, []),
        "embedlib_src_errors": listing.errors,
        "embedlib_src_runs": listing.runs,
        "embedlib_src_neighbors": [f for fs in listing.neighbors.values() for f in fs],
    }
    present = set()
    for name, files in sources.items():
        if files:
            _register_source(con, store, name, files, embedding_as_list=name == "embedlib_src_embeddings_all")
            present.add(name)
        elif name == "embedlib_src_errors":  # no error in any run: an empty table, not a missing one
            con.register(name, schema.ERRORS.empty_table())
            present.add(name)
    if labels is not None:
        _register_labels(con, labels, storage_options)
        present.add("embedlib_src_labels")
    why = {
        "embeddings": f"no embeddings under model version {version} in {store.given}",
        "embeddings_all": f"no embeddings in {store.given}",
        "runs": f"no finished run (runs/) in {store.given}",
        "neighbors_all": f"no stored neighbours in {store.given}: run python -m jobs.neighbors --root ROOT first",
        "labels": "no labels manifest was given (--labels)",
    }
    built = set()
    for name, select, needs in BASES:
        if not set(needs) <= present:
            missing[name] = why[name]
            continue
        kind = "create_table" if materialize else "create_view"
        if name == "embeddings" and not _has_column(con, "embedlib_src_embeddings", "words"):
            select = "base_embeddings_nowords"  # every file predates the words column
        con.execute(create_statement(kind, name, sql_text(select, dim=dim)))
        built.add(name)
    if "neighbors_all" in built and version not in listing.neighbors:
        missing["neighbors"] = (f"no stored neighbours for model version {version}: "
                                "run python -m jobs.neighbors --root ROOT first")
    for name in DERIVED:
        if name == "labelled_files" and "labels" in built:
            name = "labelled_files_manifest"
        if name == "evidence" and "embeddings" in built and not _has_column(con, "embeddings", "evidence"):
            name = "evidence_absent"  # every file predates the evidence column
        # a table's rowid fetches the k winners' other columns directly; a view has only the sha256 to join on
        text = sql_text(name, dim=dim, key="rowid" if materialize else "sha256")
        need = [n for n in requires(name) if n not in built]
        created = _CREATES.findall(text)
        if need:
            for obj in created:
                missing.setdefault(obj, missing.get(need[0], f"needs {need[0]}, which is missing"))
            continue
        try:
            con.execute(text)
        except DUCKDB_ERRORS as exc:
            raise QueryError(f"sql/{name}.sql: {translate(exc)}") from exc
        built.update(created)
    if materialize:
        for name in sources | {"embedlib_src_labels": None}:
            if name in present:
                _drop_source(con, name)
    for name, reason in missing.items():
        con.execute(statement("missing_insert"), {"name": name, "reason": reason})


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    return column in {r[0] for r in con.execute(statement("columns_of", name=table)).fetchall()}


def _drop_source(con: duckdb.DuckDBPyConnection, name: str) -> None:
    (kind,) = con.execute(statement("is_view"), {"name": name}).fetchone()
    try:
        con.unregister(name)
    except DUCKDB_ERRORS:
        pass
    if kind:
        con.execute(statement("drop_view", name=name))


def _check_database_path(path: str, must_exist: bool) -> None:
    if os.path.isdir(path):
        raise QueryError(f"database {path!r} is a directory: give a file name, e.g. {os.path.join(path, 'embedlib.duckdb')}")
    if must_exist and not os.path.isfile(path):
        raise QueryError(f"no database {path!r}: build it first with --root ROOT --db {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise QueryError(f"cannot create database {path!r}: folder {parent!r} does not exist")


def open_database(path: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB file built by connect(root, database=path): its tables, views and macros, no root needed."""
    _check_database_path(path, must_exist=True)
    try:
        con = duckdb.connect(path, read_only=read_only)
    except DUCKDB_ERRORS as exc:
        raise QueryError(f"cannot open database {path!r}: {translate(exc)}") from exc
    con.execute(statement("no_python_replacements"))
    found = con.execute(statement("is_embedlib_database")).fetchone()[0]
    if found:
        from embedlib.query import hnsw

        try:
            hnsw.load_vss(con)  # an HNSW index built into the file is only used with the extension loaded
        except QueryError:
            pass
    if not found:
        con.close()
        raise QueryError(f"{path!r} is not an embedlib database (no embedlib_settings table): "
                         f"build it with --root ROOT --db {path}")
    return con
