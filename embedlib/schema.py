"""The only place that defines table columns. Every Parquet file we write is cast to one of these.

An output root accumulates runs (see embedlib/root/catalog.py for the folders):
  embeddings/  one row per (model_version, sha256): the embedding and what analysts filter on
  samples/     one row per (views_version, sha256): the model's input views, what training streams from
  errors/      one row per input path of a run that was not embedded (or sampled), with a status and a reason
  runs/        one summary row per finished run
  neighbors/   k nearest rows per embedded row (jobs.neighbors)
Staging rows between pipeline stages (listing, hashed, plan) are defined here too.
"""

from __future__ import annotations

import pyarrow as pa

# 3: `location` (the exact identity of each input, what change detection keys on) and `judged_under`
# (errors: the setting a refusal depended on). Rows of older versions have neither: see README.
# 4: `evidence` (embeddings: the file's most distinctive items, EVIDENCE below). Rows of older versions have
# none (NULL when read beside newer ones): every query copes, see README.
# 5: `words` (embeddings: the fixed part before its fold, WORDS below) and the metadata embedlib.learned_dim.
# Rows of older versions have none: their neighbours are ranked by the stored embedding alone.
SCHEMA_VERSION = 5

# Per-path statuses recorded in errors/. Every input path of a run ends up in exactly one of the written
# table (as its `path`) or errors/.
STATUS_EMPTY = "empty"
STATUS_UNREADABLE = "unreadable"
STATUS_NOT_A_FILE = "not_a_file"
STATUS_SYMLINK = "symlink"
STATUS_TOO_LARGE = "too_large"
STATUS_DUPLICATE = "duplicate"  # same sha256 as a file embedded in this or an earlier run: the row says which
STATUS_RASTER_ERROR = "raster_error"
STATUS_EMBED_ERROR = "embed_error"
STATUS_BAD_INPUT = "bad_input"  # the input itself is wrong (a manifest row without a path, ...)
ERROR_STATUSES = (
    STATUS_EMPTY, STATUS_UNREADABLE, STATUS_NOT_A_FILE, STATUS_SYMLINK, STATUS_TOO_LARGE,
    STATUS_DUPLICATE, STATUS_RASTER_ERROR, STATUS_EMBED_ERROR, STATUS_BAD_INPUT,
)
# Outcomes that the same bytes would repeat: an unchanged path that ended so is not tried again.
FINAL_ERRORS = (STATUS_EMPTY, STATUS_NOT_A_FILE, STATUS_SYMLINK, STATUS_TOO_LARGE, STATUS_RASTER_ERROR)
# Outcomes that depend on an input setting (the key of config.InputConfig), not only on the bytes: the row
# records the value it was judged under (`judged_under`), and a later run under another value judges again.
SETTING_DEPENDENT = {STATUS_TOO_LARGE: "max_hash_bytes", STATUS_SYMLINK: "follow_symlinks"}
FORMATS = ("elf", "pe", "macho", "other")

# How one input path is identified and was found: text for people and SQL, exact bytes when the name is not
# valid UTF-8, the exact identity of what was opened, and what tells an unchanged file without reading it
# (size + mtime locally, ETag remotely).
_PATH_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("path_raw", pa.binary()),  # the exact name when `path` (UTF-8 with \xNN escapes) cannot hold it
    # What was opened, exactly: the absolute local path bytes (a manifest's relative path made absolute against
    # the manifest's folder) or the object URI's UTF-8 bytes. Change detection keys on this, never on `path`:
    # two files can show the same text. Null for a row that names nothing (an empty manifest cell).
    pa.field("location", pa.binary()),
    pa.field("size_bytes", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("etag", pa.string()),
    pa.field("family", pa.string()),
]

_CONTENT_FIELDS = [
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("truncated", pa.bool_(), nullable=False),  # only the first input.max_bytes went into the views
    pa.field("tlsh", pa.string()),  # similarity digests, so SQL can combine them with the embedding
    pa.field("ssdeep", pa.string()),
]

_RUN_FIELDS = [
    pa.field("model_version", pa.string(), nullable=False),  # samples: the views version
    pa.field("run_id", pa.string(), nullable=False),
]


def _meta(table: str, **extra: str) -> dict[str, str]:
    return {"embedlib.table": table, "embedlib.schema_version": str(SCHEMA_VERSION), **extra}


# The evidence kept with each embedding (embedlib.views.evidence): the file's most distinctive items, heaviest
# first, at most embed.evidence_items of them. `item` is the text (a string or name as found, a word
# lowercased; printable ASCII, cut at embed.evidence_chars), `kind` string | name | word, `weight` the item's
# share of its view's TF-IDF unit vector under the model's IDF. NULL for rows written before the column existed
# and for models without sketch views; every query copes (embedlib/sql/explain.sql).
EVIDENCE_ITEM = pa.struct([
    pa.field("item", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("weight", pa.float32()),
])
EVIDENCE = pa.list_(EVIDENCE_ITEM)


# The fixed part of an embedding before its fold (embedlib.model.exact): the file's word ids (views.token_ids) and
# their weights as they sit in the stored embedding's fixed part, at most embed.exact_words of the heaviest, by id.
# A query re-scores its nearest candidates with them: the learned slice (the first embedlib.learned_dim numbers of
# `embedding`) dot product plus the exact dot product of the words. NULL for rows written before the column and
# for models whose fixed part is not the token_ids alone.
WORD_ITEM = pa.struct([pa.field("id", pa.uint32()), pa.field("weight", pa.float32())])
WORDS = pa.list_(WORD_ITEM)


def embeddings_schema(dim: int, model_version: str = "", learned_dim: int | None = None) -> pa.Schema:
    """One embedding per content, as a fixed-size list, so DuckDB can cast it to FLOAT[dim]; its evidence and
    words. learned_dim: how many leading numbers of the embedding are the learned slice (None: all of them)."""
    return pa.schema(
        _CONTENT_FIELDS + _PATH_FIELDS + _RUN_FIELDS
        + [pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False), pa.field("evidence", EVIDENCE),
           pa.field("words", WORDS)],
        metadata=_meta("embeddings", **{"embedlib.embedding_dim": str(dim), "embedlib.model_version": model_version,
                                        "embedlib.learned_dim": str(dim if learned_dim is None else learned_dim)}),
    )


def samples_schema(view_names: list[str], views_version: str = "") -> pa.Schema:
    """The model's input views per content, each as raw bytes of a fixed-shape array (embedlib.views)."""
    return pa.schema(
        _CONTENT_FIELDS + _PATH_FIELDS + _RUN_FIELDS
        + [pa.field(f"view_{name}", pa.binary(), nullable=False) for name in view_names],
        metadata=_meta("samples", **{"embedlib.model_version": views_version}),
    )


ERRORS = pa.schema(
    _PATH_FIELDS
    + [
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        # for a SETTING_DEPENDENT status, the setting it was judged under, e.g. "input.max_hash_bytes=2147483648"
        pa.field("judged_under", pa.string()),
    ]
    + _RUN_FIELDS,
    metadata=_meta("errors"),
)

RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("job", pa.string(), nullable=False),  # embed | rasterize
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("raster", pa.string(), nullable=False),  # JSON: the settings that make the model's input
        pa.field("input", pa.string(), nullable=False),
        pa.field("started", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("finished", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("files_seen", pa.int64(), nullable=False),
        pa.field("skipped_known", pa.int64(), nullable=False),
        pa.field("embedded", pa.int64(), nullable=False),  # rows written (embeddings, or samples)
        pa.field("duplicates", pa.int64(), nullable=False),
        pa.field("failed", pa.int64(), nullable=False),
        pa.field("bytes_read", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("embedlib_version", pa.string(), nullable=False),
        pa.field("config", pa.string(), nullable=False),  # JSON: the job's input and embed settings
    ],
    metadata=_meta("runs"),
)

NEIGHBORS = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1 = nearest
        pa.field("neighbor", pa.string(), nullable=False),
        pa.field("distance", pa.float32(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
    ]
    + _RUN_FIELDS,
    metadata=_meta("neighbors"),
)

# ---- staging between stages (Arrow IPC files under _work/, never Parquet) --------------------------------

# Staging rows carry `target` (what to open); it becomes `location` when a row is written.
_STAGED_PATH_FIELDS = [f for f in _PATH_FIELDS if f.name != "location"]

# What the listing found: one row per input path, in listing order. `target` is what to open: the exact
# local path bytes, or a URI's UTF-8 bytes. A row with a status is already an error (e.g. a manifest row
# with an empty path): it goes to errors/ as it is.
LISTING = pa.schema(
    _STAGED_PATH_FIELDS
    + [
        pa.field("ordinal", pa.int64(), nullable=False),  # position in the listing: the last tie-breaker
        pa.field("target", pa.binary(), nullable=False),
        pa.field("remote", pa.bool_(), nullable=False),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

# The known state of listed paths from earlier runs (the match step, by `location`): a path whose size and
# mtime/etag are unchanged is not read again.
KNOWN = pa.schema(
    [
        pa.field("known_size", pa.int64()),
        pa.field("known_mtime_ns", pa.int64()),
        pa.field("known_etag", pa.string()),
        pa.field("known_sha256", pa.string()),
        pa.field("known_status", pa.string()),  # "ok" for a path that was written, else its error status
        pa.field("known_version", pa.string()),  # the model (or views) version of that outcome
        pa.field("known_judged_under", pa.string()),  # the setting a setting-dependent outcome was judged under
    ]
)

# After hashing: every listed path whose content is known (read now, or unchanged since an earlier run).
HASHED = pa.schema(
    _STAGED_PATH_FIELDS
    + [
        pa.field("ordinal", pa.int64(), nullable=False),
        pa.field("target", pa.binary(), nullable=False),
        pa.field("remote", pa.bool_(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("format", pa.string()),
        pa.field("unchanged", pa.bool_(), nullable=False),  # content known from an earlier run, not read now
        pa.field("known_version", pa.string()),
    ]
)

# One content to write (the plan): its representative path (the smallest) and how to open it.
PLANNED = pa.schema(
    _STAGED_PATH_FIELDS
    + [
        pa.field("target", pa.binary(), nullable=False),
        pa.field("remote", pa.bool_(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table`'s columns to `schema` (missing nullable columns become nulls)."""
    columns = []
    for fld in schema:
        if fld.name in table.column_names:
            columns.append(table.column(fld.name).cast(fld.type))
        elif fld.nullable:
            columns.append(pa.nulls(table.num_rows, fld.type))
        else:
            name = (schema.metadata or {}).get(b"embedlib.table", b"staging").decode()
            raise ValueError(f"column {fld.name!r} is required by table {name}")
    return pa.Table.from_arrays(columns, schema=schema)


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """A table of `schema` from row dicts (missing keys are nulls)."""
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
