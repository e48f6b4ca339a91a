"""What the user asked to process: a local folder, file or manifest, a storage URI, or (only when asked) a glob.

Inputs are data, taken literally:
  * a local path is a path: `alias::file`, `batch[1]` and `-x` are names, never URL chains or patterns;
  * a URI is remote only when its scheme is a storage protocol (s3://, gs://, ...; sources.STORAGE_PROTOCOLS);
  * a manifest cell is text (CSV cells are never type-inferred: `007` stays `007`), used byte for byte;
    a relative manifest path is relative to the manifest's folder;
  * names that are not UTF-8 are kept as exact bytes (`path_raw`), shown with \\xNN escapes in `path`;
  * every manifest row and every entry of a folder walk ends up in a row: an empty path or a directory
    symlink (never walked) becomes an error row (status bad_input / symlink), never silently dropped.

`check_input` validates in milliseconds, before any cluster starts; `iter_listing` streams rows (memory
O(batch), whatever the size of the input).
"""

from __future__ import annotations

import csv
import glob as globlib
import os
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from embedlib import schema
from embedlib.errors import UserError
from embedlib.sources import split_uri, uri_protocol

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
BATCH_ROWS = 4096


class InputError(UserError, ValueError):
    """The input cannot be used at all (missing, not a manifest it claims to be, ...): one line for the user."""


@dataclass(frozen=True)
class InputFile:
    """A path with an optional family: a manifest row (embedlib.corpus writes lists of them)."""

    path: str
    family: str | None = None


@dataclass(frozen=True)
class InputSpec:
    text: str  # as the user gave it
    kind: str  # "dir" | "file" | "manifest" | "glob" | "prefix"
    remote: bool


def path_text(raw: bytes) -> tuple[str, bytes | None]:
    """(text for the `path` column, exact bytes when the text cannot hold them)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def _local(text: str) -> str:
    return text[len("file://"):] if text.startswith("file://") else text


def check_input(text: str, glob: bool = False) -> InputSpec:
    """Classify and validate an --input, cheaply; raises InputError with a one-line message."""
    if not text:
        raise InputError("--input is empty")
    protocol = uri_protocol(text)
    remote = protocol not in (None, "file")
    if glob:
        return InputSpec(text, "glob", remote)
    if remote:
        fs, path = split_uri(text)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise InputError(f"input {text} does not exist") from None
        except OSError as exc:
            raise InputError(f"input {text} cannot be read: {exc}") from None
        if info.get("type") == "directory":
            return InputSpec(text, "prefix", True)
        kind = "manifest" if text.lower().endswith(MANIFEST_SUFFIXES) else "file"
    else:
        path = _local(text)
        if not os.path.lexists(path):
            raise InputError(f"input {path} does not exist")
        if os.path.isdir(path):  # a symlink given as the input itself is followed: the user named it
            return InputSpec(text, "dir", False)
        kind = "manifest" if path.lower().endswith(MANIFEST_SUFFIXES) and os.path.isfile(path) else "file"
    spec = InputSpec(text, kind, remote)
    if kind == "manifest":
        manifest_columns(spec)  # fails fast on a manifest without `path`
    return spec


# ---------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------

def _open_manifest(spec: InputSpec):
    if spec.remote:
        fs, path = split_uri(spec.text)
        return fs.open(path, "rb")
    return open(_local(spec.text), "rb")


def _is_csv(spec: InputSpec) -> bool:
    return spec.text.lower().endswith(".csv")


def manifest_columns(spec: InputSpec) -> list[str]:
    """The manifest's column names; InputError when it has no `path` column or cannot be parsed."""
    try:
        with _open_manifest(spec) as fh:
            if _is_csv(spec):
                header = fh.readline().decode("utf-8-sig", "replace")
                names = next(csv.reader([header]), [])
            else:
                names = pq.ParquetFile(fh).schema_arrow.names
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputError(f"manifest {spec.text} cannot be read: {exc}") from None
    if "path" not in names:
        raise InputError(f"manifest {spec.text} has no 'path' column (columns: {', '.join(names) or 'none'})")
    return names


def _manifest_batches(spec: InputSpec) -> Iterator[tuple[list, list]]:
    """(path cells, family cells) per batch; CSV cells as bytes (never type-inferred), Parquet as stored."""
    names = manifest_columns(spec)
    wanted = [c for c in ("path", "family") if c in names]
    with _open_manifest(spec) as fh:
        if _is_csv(spec):
            reader = pa_csv.open_csv(
                fh,
                read_options=pa_csv.ReadOptions(block_size=1 << 20, encoding="utf8"),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                                      include_columns=wanted, strings_can_be_null=False,
                                                      quoted_strings_can_be_null=False),
            )
            batches: Iterator[pa.RecordBatch] = iter(reader)
        else:
            batches = pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS, columns=wanted)
        for batch in batches:
            paths = batch.column(batch.schema.get_field_index("path"))
            if not (pa.types.is_string(paths.type) or pa.types.is_large_string(paths.type)
                    or pa.types.is_binary(paths.type) or pa.types.is_large_binary(paths.type)):
                raise InputError(f"manifest {spec.text}: column 'path' holds {paths.type}, not text")
            fam_idx = batch.schema.get_field_index("family")
            families = batch.column(fam_idx).to_pylist() if fam_idx >= 0 else [None] * batch.num_rows
            yield paths.to_pylist(), families


def _as_text(cell) -> str | None:
    if cell is None:
        return None
    if isinstance(cell, bytes):
        return cell.decode("utf-8", "backslashreplace")
    return str(cell)


def _manifest_rows(spec: InputSpec) -> Iterator[dict]:
    base_remote = spec.text.rsplit("/", 1)[0] if spec.remote else None
    base_local = os.path.dirname(os.path.abspath(os.fsencode(_local(spec.text)))) if not spec.remote else b""
    row_number = 0
    for paths, families in _manifest_batches(spec):
        for cell, fam in zip(paths, families):
            row_number += 1
            family = _as_text(fam) or None
            if cell is None or cell in (b"", ""):
                yield {"path": "", "family": family, "target": b"", "remote": False, "status": schema.STATUS_BAD_INPUT,
                       "reason": f"manifest row {row_number} has an empty path"}
                continue
            raw = cell if isinstance(cell, bytes) else cell.encode("utf-8", "surrogateescape")
            text, exact = path_text(raw)
            protocol = uri_protocol(text) if exact is None else None
            if protocol and protocol != "file":
                yield {"path": text, "family": family, "target": raw, "remote": True}
            elif protocol == "file":
                yield {"path": text, "family": family, "target": os.fsencode(_local(text)), "remote": False}
            elif spec.remote and not raw.startswith(b"/"):
                yield {"path": text, "family": family, "target": f"{base_remote}/{text}".encode(), "remote": True}
            else:
                target = raw if os.path.isabs(raw) or spec.remote else os.path.join(base_local, raw)
                yield {"path": text, "path_raw": exact, "family": family, "target": target, "remote": False}


# ---------------------------------------------------------------------------------------------------------
# Folders, prefixes, single files, globs
# ---------------------------------------------------------------------------------------------------------

def _local_row(raw: bytes, **extra) -> dict:
    text, exact = path_text(raw)
    return {"path": text, "path_raw": exact, "target": raw, "remote": False, **extra}


def _walk_rows(root: bytes) -> Iterator[dict]:
    """Every entry below `root` in a stable order; directory symlinks are listed as rows, not walked."""
    failures: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=failures.append):
        while failures:
            exc = failures.pop()
            raw = os.fsencode(exc.filename) if exc.filename is not None else dirpath
            yield _local_row(raw, status=schema.STATUS_UNREADABLE,
                             reason=f"directory not listed: {exc.strerror or exc}")
        dirnames.sort()
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):  # not walked (loops, escapes): listed, and the hash stage records it
                dirnames.remove(name)
                yield _local_row(full)
        for name in sorted(filenames):
            yield _local_row(os.path.join(dirpath, name))
    while failures:  # the root itself could not be listed
        exc = failures.pop()
        yield _local_row(root, status=schema.STATUS_UNREADABLE, reason=f"directory not listed: {exc.strerror or exc}")


def _prefix_rows(spec: InputSpec) -> Iterator[dict]:
    fs, root = split_uri(spec.text)
    protocol = uri_protocol(spec.text)
    for _dirpath, _dirs, files in fs.walk(root, detail=True):
        for path in sorted(files):
            info = files[path]
            uri = f"{protocol}://{info.get('name', path)}"
            etag = info.get("ETag") or info.get("etag")
            yield {"path": uri, "target": uri.encode(), "remote": True, "size_bytes": info.get("size"),
                   "etag": str(etag).strip('"') if etag else None}


def _glob_rows(spec: InputSpec) -> Iterator[dict]:
    if spec.remote:
        fs, pattern = split_uri(spec.text)
        protocol = uri_protocol(spec.text)
        for path in sorted(fs.glob(pattern)):
            uri = f"{protocol}://{path}"
            yield {"path": uri, "target": uri.encode(), "remote": True}
        return
    for raw in sorted(globlib.glob(os.fsencode(_local(spec.text)), recursive=True)):
        if not os.path.isdir(raw) or os.path.islink(raw):
            yield _local_row(os.path.abspath(raw))


def iter_listing(spec: InputSpec) -> Iterator[dict]:
    """One row per input path (schema.LISTING columns but `ordinal`), in a deterministic order."""
    if spec.kind == "manifest":
        yield from _manifest_rows(spec)
    elif spec.kind == "dir":
        yield from _walk_rows(os.path.abspath(os.fsencode(_local(spec.text))))
    elif spec.kind == "prefix":
        yield from _prefix_rows(spec)
    elif spec.kind == "glob":
        yield from _glob_rows(spec)
    elif spec.remote:
        yield {"path": spec.text, "target": spec.text.encode(), "remote": True}
    else:
        yield _local_row(os.path.abspath(os.fsencode(_local(spec.text))))


def listing_batches(spec: InputSpec, rows_per_batch: int) -> Iterator[pa.Table]:
    """iter_listing in tables of schema.LISTING, `ordinal` numbered from 0."""
    buffer: list[dict] = []
    ordinal = 0
    for row in iter_listing(spec):
        row["ordinal"] = ordinal
        ordinal += 1
        buffer.append(row)
        if len(buffer) == rows_per_batch:
            yield schema.rows_table(buffer, schema.LISTING)
            buffer = []
    if buffer:
        yield schema.rows_table(buffer, schema.LISTING)


def read_labels(manifest: str) -> pa.Table:
    """(path, family) of a manifest, all text: for joining labels onto tables that were written without them."""
    spec = check_input(manifest)
    if spec.kind != "manifest":
        raise InputError(f"{manifest} is not a manifest (.csv or .parquet with a path column)")
    rows = [(r["path"], r["family"]) for r in _manifest_rows(spec) if r["path"]]
    return pa.table({"path": pa.array([p for p, _ in rows], pa.string()),
                     "family": pa.array([f for _, f in rows], pa.string())})
