"""DuckDB over exact files of an output root, for the steps of a job (match, plan, reconcile, training labels):
never a glob (roots may be named `run[1]`), bounded memory.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from embedlib.config import DUCKDB_MEMORY
from embedlib.root.store import Store


def connect(temp_dir: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for one step of a job: bounded memory (it spills to `temp_dir` beyond DUCKDB_MEMORY),
    no insertion order kept (nothing here needs it, and it costs memory)."""
    con = duckdb.connect()
    con.execute("SET memory_limit = $m", {"m": DUCKDB_MEMORY})
    con.execute("SET temp_directory = $t", {"t": temp_dir})
    con.execute("SET preserve_insertion_order = false")
    return con


def register(con, store: Store, name: str, files: list[str], fmt: str, empty: pa.Schema,
              columns: list[str] | None = None) -> None:
    """Expose exact files (never a glob: roots may be named `run[1]`) to DuckDB as a view `name`. With
    `columns`, their types come from `empty`, and a file written before a column existed (an older schema
    version) gives nulls for it."""
    wanted = pa.schema([empty.field(c) for c in columns]) if columns else None
    if files:
        ds = pads.dataset([store.path(f) for f in files], schema=wanted, format=fmt,
                          filesystem=store.arrow_filesystem())
        con.register(name, ds.scanner(columns=columns) if columns else ds)
    else:
        con.register(name, wanted.empty_table() if wanted else empty.empty_table())
