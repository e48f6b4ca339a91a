"""One input file -> one work row (a sample with its image, or an error with its status).

Work rows are what flows between pipeline stages; `split_rows` turns a batch of them into table rows.
Everything that can go wrong with one file is caught here and becomes a status: one bad file never
fails a batch.
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np
import pyarrow as pa

from embedlib import raster, schema
from embedlib.config import Config
from embedlib.sources import InputFile, read_file

OK = ""  # status of a row that produced an image

WORK_COLUMNS = ("shard", "path", "family", "status", "reason", "sha256", "size_bytes", "format", "truncated",
                "tlsh", "ssdeep", "image", "image_size")


def process_file(item: InputFile, shard: int, cfg: Config) -> dict[str, Any]:
    """Read, hash, sniff and rasterize one file; never raises for a bad file."""
    row: dict[str, Any] = {"shard": shard, "path": item.path, "family": item.family, "status": OK, "reason": "",
                           "sha256": None, "size_bytes": None, "format": None, "truncated": False,
                           "tlsh": None, "ssdeep": None, "image": b"", "image_size": cfg.raster.size}
    read = read_file(item.path, cfg.input)
    row.update(sha256=read.sha256, size_bytes=read.size_bytes, format=read.format, truncated=read.truncated)
    if not read.ok:
        row.update(status=read.status, reason=read.reason)
        return row
    try:
        row["image"] = raster.to_image(read.data, cfg.raster.size).tobytes()
    except Exception as exc:  # a raster bug must cost one file, not the job
        row.update(status=schema.STATUS_RASTER_ERROR, reason=f"{type(exc).__name__}: {exc}")
        return row
    if cfg.input.digests:
        from embedlib import digests  # optional dependency (the eval extra)

        row.update(digests.compute(read.data))
    return row


def process_batch(batch: dict[str, np.ndarray], cfg: Config) -> dict[str, list]:
    """Ray Data stage: a batch of (shard, path, family) -> a batch of work rows."""
    out: dict[str, list] = {c: [] for c in WORK_COLUMNS}
    for shard, path, family in zip(batch["shard"], batch["path"], batch["family"]):
        try:
            row = process_file(InputFile(str(path), family if isinstance(family, str) else None), int(shard), cfg)
        except Exception as exc:  # last line of defence: record, never raise
            row = {"shard": int(shard), "path": str(path), "family": family, "status": schema.STATUS_UNREADABLE,
                   "reason": f"unexpected {type(exc).__name__}: {exc}; {traceback.format_exc(limit=2)}",
                   "image": b"", "image_size": cfg.raster.size, "truncated": False}
        for c in WORK_COLUMNS:
            out[c].append(row.get(c))
    return out


def split_rows(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows with an image, rows with an error status) of a work-row table."""
    ok_mask = pa.compute.equal(table.column("status"), OK)
    return table.filter(ok_mask), table.filter(pa.compute.invert(ok_mask))
