"""The only place that defines table columns. Every Parquet file we write is cast to one of these.

Tables (each a folder of Parquet shards):
  samples/     one row per unique sha256: the rasterized corpus that training streams from
  embeddings/  one row per unique sha256: the embedding and what analysts filter on
  errors/      one row per input path that produced no embedding, with a status and a reason
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# Per-file statuses recorded in errors/. Every input path ends up in exactly one of embeddings/ or errors/.
STATUS_EMPTY = "empty"
STATUS_UNREADABLE = "unreadable"
STATUS_NOT_A_FILE = "not_a_file"
STATUS_SYMLINK = "symlink"
STATUS_TOO_LARGE = "too_large"
STATUS_DUPLICATE = "duplicate"  # same sha256 as a file already embedded: nothing lost, the row says which
STATUS_RASTER_ERROR = "raster_error"
STATUS_EMBED_ERROR = "embed_error"
ERROR_STATUSES = (
    STATUS_EMPTY, STATUS_UNREADABLE, STATUS_NOT_A_FILE, STATUS_SYMLINK, STATUS_TOO_LARGE,
    STATUS_DUPLICATE, STATUS_RASTER_ERROR, STATUS_EMBED_ERROR,
)
FORMATS = ("elf", "pe", "macho", "other")

_FILE_FIELDS = [
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("family", pa.string()),
    pa.field("truncated", pa.bool_(), nullable=False),  # only the first input.max_bytes went into the image
    pa.field("tlsh", pa.string()),  # similarity digests, so SQL can combine them with the embedding
    pa.field("ssdeep", pa.string()),
]

SAMPLES = pa.schema(
    _FILE_FIELDS
    + [
        pa.field("image", pa.binary(), nullable=False),  # raster.size**2 bytes, row-major uint8
        pa.field("image_size", pa.int32(), nullable=False),
    ],
    metadata={"embedlib.table": "samples", "embedlib.schema_version": str(SCHEMA_VERSION)},
)

ERRORS = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("family", pa.string()),
    ],
    metadata={"embedlib.table": "errors", "embedlib.schema_version": str(SCHEMA_VERSION)},
)


def embeddings_schema(dim: int) -> pa.Schema:
    """EMBEDDINGS for a model of embedding size `dim` (a fixed-size list, so DuckDB can cast to FLOAT[dim])."""
    return pa.schema(
        _FILE_FIELDS
        + [
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={
            "embedlib.table": "embeddings",
            "embedlib.schema_version": str(SCHEMA_VERSION),
            "embedlib.embedding_dim": str(dim),
        },
    )


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table`'s columns to `schema` (missing nullable columns become nulls)."""
    columns = []
    for fld in schema:
        if fld.name in table.column_names:
            columns.append(table.column(fld.name).cast(fld.type))
        elif fld.nullable:
            columns.append(pa.nulls(table.num_rows, fld.type))
        else:
            raise ValueError(f"column {fld.name!r} is required by table {schema.metadata[b'embedlib.table'].decode()}")
    return pa.Table.from_arrays(columns, schema=schema)


# -- neighbors (issue 9): written by jobs.neighbors, read by embedlib.query -------------------------------------
NEIGHBORS = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),  # a row of run `run_id`
        pa.field("rank", pa.int32(), nullable=False),  # 1 = nearest
        pa.field("neighbor", pa.string(), nullable=False),  # its sha256
        pa.field("distance", pa.float32(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),  # 'cosine' (1 - cosine similarity) or 'l2'
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata={"embedlib.table": "neighbors", "embedlib.schema_version": str(SCHEMA_VERSION)},
)
