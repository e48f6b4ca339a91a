"""The pipeline's stages as functions over batches of rows. They read input files, never write anything and
never know where they run (in-process, a Ray task or a Ray actor): embedlib/pipeline/tasks.py wraps them.

  hash_rows      listing rows (+ what earlier runs knew) -> rows with sha256, error rows
  read_views     planned rows (one per content) -> views per file, error rows
  embed_batch    views -> embeddings, retrying a failing batch row by row (embed_error costs one row)

Everything that can go wrong with one file becomes a status on that file's row: one bad file never fails a
batch, and a batch never fails a job.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from embedlib import schema, views
from embedlib.config import Config, InputConfig
from embedlib.files.sources import Stat, read_file, stat_target


@dataclass(frozen=True)
class RunTag:
    """What every written row carries: the version of what is written and the run writing it."""

    version: str
    run_id: str


@dataclass
class Counts:
    files_seen: int = 0
    skipped_known: int = 0
    failed: int = 0
    duplicates: int = 0
    written: int = 0
    bytes_read: int = 0

    def add(self, other: dict) -> None:
        for key, value in other.items():
            setattr(self, key, getattr(self, key) + int(value))

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def location(row: dict) -> bytes | None:
    """The exact identity a row's file is known by in the written tables: what a staging row opens (`target`),
    or the `location` of a row already written (a resumed run's rows that reconcile turns into duplicates)."""
    return row.get("target") or row.get("location") or None


def judged_under(status: str | None, cfg: InputConfig) -> str | None:
    """The setting a setting-dependent outcome was judged under ("input.max_hash_bytes=N"), else None."""
    key = schema.SETTING_DEPENDENT.get(status or "")
    if key is None:
        return None
    value = getattr(cfg, key)
    return f"input.{key}={str(value).lower() if isinstance(value, bool) else value}"


def error_row(row: dict, status: str, reason: str, tag: RunTag, **extra) -> dict:
    """An errors-table row for a listing/hashed/planned row."""
    keep = ("path", "path_raw", "size_bytes", "mtime_ns", "etag", "family", "sha256")
    out = {k: row.get(k) for k in keep}
    out["location"] = location(row)
    out.update(extra)
    out.update(status=status, reason=reason, model_version=tag.version, run_id=tag.run_id)
    return out


def _unchanged(row: dict, st: Stat) -> bool:
    if row.get("known_status") is None or st.size_bytes != row.get("known_size"):
        return False
    if st.etag is not None:
        return st.etag == row.get("known_etag")
    return st.mtime_ns is not None and st.mtime_ns == row.get("known_mtime_ns")


@dataclass
class HashResult:
    hashed: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)


def hash_rows(rows: list[dict], cfg: InputConfig, tag: RunTag) -> HashResult:
    """Identify each listed path's content: from an earlier run when the file is unchanged (same size and
    mtime, or ETag), else by reading and hashing it (bounded). An unchanged path whose last outcome under this
    version the same bytes would repeat (empty, too large, ...) is skipped, unless that outcome depended on a
    setting that differs now (a raised input.max_hash_bytes); listing errors pass through as error rows."""
    out = HashResult()
    for row in rows:
        out.counts.files_seen += 1
        try:
            _hash_one(row, cfg, tag, out)
        except Exception as exc:  # last line of defence: record, never raise
            out.errors.append(error_row(row, schema.STATUS_UNREADABLE, f"unexpected {type(exc).__name__}: {exc}; "
                                        f"{traceback.format_exc(limit=2)}", tag))
    out.counts.failed = len(out.errors)
    return out


def _hash_one(row: dict, cfg: InputConfig, tag: RunTag, out: HashResult) -> None:
    if row.get("status"):
        out.errors.append(error_row(row, row["status"], row.get("reason") or "", tag))
        return
    listed = Stat(None, "", row.get("size_bytes"), None, row.get("etag")) if row.get("etag") else None
    st = listed or stat_target(row["target"], row["remote"], cfg)
    if _unchanged(row, st):
        if (row["known_status"] in schema.FINAL_ERRORS and row.get("known_version") == tag.version
                and row.get("known_judged_under") == judged_under(row["known_status"], cfg)):
            out.counts.skipped_known += 1
            return
        if row.get("known_sha256"):
            out.hashed.append({**row, "size_bytes": st.size_bytes, "mtime_ns": st.mtime_ns, "etag": st.etag,
                               "sha256": row["known_sha256"], "format": None, "unchanged": True})
            return
    read = read_file(row["target"], row["remote"], cfg, hash_all=True, known=st)
    ident = {"size_bytes": read.size_bytes, "mtime_ns": read.mtime_ns, "etag": read.etag}
    if not read.ok:
        out.errors.append(error_row({**row, **ident}, read.status, read.reason, tag,
                                    judged_under=judged_under(read.status, cfg)))
        return
    out.counts.bytes_read += read.size_bytes or 0
    out.hashed.append({**row, **ident, "sha256": read.sha256, "format": read.format, "unchanged": False})


@dataclass
class ViewsResult:
    rows: list[dict] = field(default_factory=list)  # planned row + format/truncated/digests, one per view set
    views: list[dict[str, np.ndarray]] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    bytes_read: int = 0


def read_views(rows: list[dict], cfg: Config, tag: RunTag) -> ViewsResult:
    """Read each planned file's first max_bytes and compute its views. A file that changed since it was hashed
    in this run is not embedded under a sha256 that is no longer its own: it is an error row, and the next
    run reads it again."""
    out = ViewsResult()
    for row in rows:
        try:
            st = stat_target(row["target"], row["remote"], cfg.input)
            if st.status or st.size_bytes != row["size_bytes"] or (
                    (st.etag or row.get("etag")) and st.etag != row.get("etag")) or (
                    st.mtime_ns is not None and row.get("mtime_ns") is not None and st.mtime_ns != row["mtime_ns"]):
                out.errors.append(error_row(row, schema.STATUS_UNREADABLE, st.reason or "changed while the run was "
                                            "reading it; the next run reads it again", tag))
                continue
            read = read_file(row["target"], row["remote"], cfg.input, hash_all=False, known=st)
            if not read.ok:
                out.errors.append(error_row(row, read.status, read.reason, tag,
                                            judged_under=judged_under(read.status, cfg.input)))
                continue
            out.bytes_read += len(read.data)
            try:
                file_views = views.compute_views(read.data, cfg)
            except Exception as exc:  # a views bug must cost one file, not the job
                out.errors.append(error_row(row, schema.STATUS_RASTER_ERROR, f"{type(exc).__name__}: {exc}", tag))
                continue
            extra = {"format": read.format, "truncated": read.truncated}
            if cfg.input.digests:
                from embedlib.views import digests  # optional dependency (the eval extra)

                extra.update(digests.compute(read.data))
            out.rows.append({**row, **extra})
            out.views.append(file_views)
        except Exception as exc:  # last line of defence
            out.errors.append(error_row(row, schema.STATUS_UNREADABLE, f"unexpected {type(exc).__name__}: {exc}", tag))
    return out


def embed_batch(batch: dict[str, np.ndarray], embed: Callable[[dict[str, np.ndarray]], np.ndarray],
                batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
    """Embed `batch` in chunks; a chunk that raises is retried one row at a time, so an embedding failure
    costs only the rows that fail alone. Returns (vectors [B, D], {row index: reason} of failed rows)."""
    n = len(next(iter(batch.values()))) if batch else 0
    vectors: list[np.ndarray | None] = [None] * n
    failed: dict[int, str] = {}
    for start in range(0, n, batch_size):
        part = {k: v[start : start + batch_size] for k, v in batch.items()}
        try:
            for i, vec in enumerate(embed(part)):
                vectors[start + i] = vec
        except Exception:
            for i in range(start, min(start + batch_size, n)):
                try:
                    vectors[i] = embed({k: v[i : i + 1] for k, v in batch.items()})[0]
                except Exception as exc:
                    failed[i] = f"{type(exc).__name__}: {exc}"
    for i, vec in enumerate(vectors):
        if vec is not None and not np.all(np.isfinite(vec)):
            failed[i] = "the model returned a non-finite embedding"
    good = [v for i, v in enumerate(vectors) if i not in failed and v is not None]
    dim = good[0].shape[0] if good else 0
    return (np.stack(good) if good else np.zeros((0, dim), np.float32)), failed


def written_table(rows: list[dict], tag: RunTag, columns: dict[str, pa.Array], target_schema: pa.Schema) -> pa.Table:
    """Rows of the written table (embeddings or samples): the planned rows' metadata plus `columns`."""
    if not rows:
        return target_schema.empty_table()
    base = pa.Table.from_pylist([{**r, "location": location(r), "model_version": tag.version,
                                  "run_id": tag.run_id} for r in rows])
    for name, array in columns.items():
        base = base.append_column(name, array)
    return schema.conform(base, target_schema)
