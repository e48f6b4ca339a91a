"""What an output root holds for readers: exactly the committed files (embedlib.root.catalog.snapshot, the
one definition the pipeline uses too), found by listing, never by a glob, never by pasting a path into SQL.

  ROOT/embeddings/model_version=<V>/run=<R>/part-<NNNNNN>.parquet    visible once runs/<R>.parquet exists
  ROOT/errors/run=<R>/part-<stage>-<NNNNNN>.parquet                  likewise
  ROOT/runs/<R>.parquet                                              the commit of run R
  ROOT/neighbors/model_version=<V>/run=<R>/commit=<W>/part-<N>.parquet  visible once commits/<W>.json exists
  ROOT/<table>/.../commit=<W>/part-<N>.parquet                       compacted parts, likewise
  ROOT/_work/..., ROOT/_lock.json, temporary names, the parts of unfinished or parked runs: never seen

DuckDB treats [ ] * ? in read_parquet paths as glob syntax even in an explicit list of files (a file
`part-00000[1].parquet` silently matched `part-000001.parquet`). `duckdb_path` escapes each of those
characters as a one-character class (`[[]`, `[]]`, `[*]`, `[?]`), which DuckDB's local glob and fsspec's
glob both match literally. DuckDB's local glob also splits on backslashes, so a path that needs escaping and
holds a backslash cannot be expressed at all: `duckdb_safe` says so, and connect() reads such a table
through a pyarrow dataset instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from embedlib.root import catalog
from embedlib.files.sources import uri_protocol
from embedlib.root.store import Store
from embedlib.query.errors import QueryError

TABLES = ("embeddings", "errors", "runs", "neighbors")
_GLOB = re.compile(r"([\[\]*?])")


def duckdb_path(uri: str) -> str:
    """A file name DuckDB's glob matches literally (every glob character as a one-character class)."""
    return _GLOB.sub(r"[\1]", uri)


def duckdb_safe(uri: str) -> bool:
    """False when DuckDB cannot be given this exact file name (glob characters and a backslash together)."""
    return "\\" not in uri or not _GLOB.search(uri)


def open_root(root: str, storage_options: dict | None = None, must_exist: bool = True) -> Store:
    """The output root `root` through the pipeline's own filesystem layer (embedlib.root.store): a local path is
    a path, only a storage URI is remote. `storage_options` open the remote filesystem (credentials, endpoint)."""
    fs = None
    protocol = uri_protocol(root)
    try:
        if storage_options and protocol not in (None, "file"):
            import fsspec

            fs = fsspec.filesystem(protocol, **storage_options)
        store = Store(root, fs=fs)
    except (ValueError, ImportError) as exc:
        raise QueryError(f"cannot open output root {root!r}: {exc}") from exc
    if must_exist:
        try:
            isdir = store.is_folder()
        except Exception as exc:  # noqa: BLE001 - any backend failure is one line for the user
            raise QueryError(f"cannot read output root {root!r}: {exc}") from exc
        if not isdir:
            what = "is a file, not an output root" if store.exists("") else "does not exist"
            raise QueryError(f"output root {root!r} {what}")
    return store


@dataclass
class Listing:
    """Every committed Parquet file under a root (relative paths), by table (and model version where the table has
    one)."""

    store: Store
    embeddings: dict[str, list[str]] = field(default_factory=dict)  # model version -> files
    neighbors: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    runs_of_version: dict[str, set[str]] = field(default_factory=dict)  # model version -> run ids embedded
    snapshot: catalog.Snapshot | None = None  # what the lists were taken from

    @property
    def empty(self) -> bool:
        return not (self.embeddings or self.errors or self.runs or self.neighbors)


def list_root(store: Store) -> Listing:
    """The committed files of every table (catalog.snapshot)."""
    snap = catalog.snapshot(store, TABLES)
    out = Listing(store=store, snapshot=snap)
    for table in ("embeddings", "neighbors"):
        for rel in snap.table_files(table):
            version = catalog.version_of(rel)
            if version is None:
                continue  # not in the layout: not ours
            getattr(out, table).setdefault(version, []).append(rel)
            if table == "embeddings":
                out.runs_of_version.setdefault(version, set()).update(snap.runs_in(rel))
    out.errors = list(snap.table_files("errors"))
    out.runs = list(snap.table_files("runs"))
    return out


def current_model_version(listing: Listing) -> str:
    """The model version of the latest finished run; without a runs table, of the newest run embedded."""
    runs = catalog.read_runs(listing.store, listing.snapshot)
    if runs.num_rows:
        rows = runs.select(["run_id", "model_version", "finished"]).to_pylist()
        finished = [r for r in rows if r["finished"] is not None] or rows
        latest = max(finished, key=lambda r: (r["finished"] is not None, r["finished"] or 0, r["run_id"]))
        return latest["model_version"]
    if listing.embeddings:
        return max(listing.runs_of_version, key=lambda v: max(listing.runs_of_version[v]))
    raise QueryError(f"output root {listing.store.given!r} holds no finished run and no embeddings")


def file_schema(store: Store, rel: str) -> pa.Schema:
    with store.open(rel) as fh:
        return pq.read_schema(fh)


def embedding_dim(store: Store, rel: str) -> int:
    """The embedding size written in a file: its fixed-size list, or the embedlib.embedding_dim metadata."""
    schema = file_schema(store, rel)
    typ = schema.field("embedding").type
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size
    meta = schema.metadata or {}
    if b"embedlib.embedding_dim" in meta:
        return int(meta[b"embedlib.embedding_dim"])
    raise QueryError(f"{store.uri(rel)}: the embedding column has no fixed size and no embedlib.embedding_dim")


def learned_dim(store: Store, files: list[str], dim: int, newest: int = 8) -> int:
    """How many leading numbers of a version's embeddings are the learned part (embedlib.learned_dim), from the
    newest of its files that says (at most `newest` footers read); files written before schema version 5 say
    nothing: all of them, so nothing is re-scored."""
    for rel in reversed(files[-newest:]):
        meta = file_schema(store, rel).metadata or {}
        if b"embedlib.learned_dim" in meta:
            return int(meta[b"embedlib.learned_dim"])
    return dim
