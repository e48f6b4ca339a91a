"""What the user asked to process: a local folder, file or manifest, a storage URI, or (only when asked) a glob.

Inputs are data, taken literally:
  * a local path is a path: `alias::file`, `batch[1]` and `-x` are names, never URL chains or patterns;
  * a URI is remote only when its scheme is a storage protocol (s3://, gs://, ...; sources.STORAGE_PROTOCOLS);
  * a manifest cell is text (CSV cells are never type-inferred: `007` stays `007`), used byte for byte;
    a relative manifest path is relative to the manifest's folder;
  * names that are not UTF-8 are kept as exact bytes (`path_raw`), shown with \\xNN escapes in `path`;
  * every manifest row and every entry of a folder walk ends up in a row: an empty path or a directory
    symlink (never walked) becomes an error row (status bad_input / symlink), never silently dropped.

`check_input` validates before any lock or cluster (in milliseconds; a manifest is read through once, about a
quarter of a second per million rows); `iter_listing` streams rows (memory O(batch), whatever the size of
the input).
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from embedlib import schema
from embedlib.errors import UserError
from embedlib.files.sources import split_uri, uri_protocol

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
BATCH_ROWS = 4096


class InputError(UserError, ValueError):
    """The input cannot be used at all (missing, not a manifest it claims to be, ...): one line for the user."""


@dataclass(frozen=True)
class InputFile:
    """A path with an optional family: a manifest row (embedlib.files.corpus writes lists of them)."""

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
        check_manifest(spec)  # every error the listing could meet in it, now: before any lock or cluster
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


def _is_text(t: pa.DataType) -> bool:
    """Any Arrow type that holds text or bytes, dictionary-encoded included (a pandas `category` column)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return any(check(t) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                      pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view))


def _check_types(spec: InputSpec, schema_: pa.Schema) -> None:
    """A `path` must be text (or all null: empty rows); a `family` text, an integer label or null."""
    for name, ok in (("path", lambda t: _is_text(t) or pa.types.is_null(t)),
                     ("family", lambda t: _is_text(t) or pa.types.is_integer(t) or pa.types.is_null(t))):
        index = schema_.get_field_index(name)
        if index >= 0 and not ok(schema_.field(index).type):
            raise InputError(f"manifest {spec.text}: column {name!r} holds {schema_.field(index).type}, not text")


def manifest_columns(spec: InputSpec) -> list[str]:
    """The manifest's column names (and, for Parquet, their types checked); InputError when it has no `path`
    column or cannot be parsed. Reads the CSV header or the Parquet footer only."""
    try:
        with _open_manifest(spec) as fh:
            if _is_csv(spec):
                header = fh.readline().decode("utf-8-sig", "replace")
                names = next(csv.reader([header]), [])
                arrow_schema = None
            else:
                arrow_schema = pq.ParquetFile(fh).schema_arrow
                names = arrow_schema.names
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputError(f"manifest {spec.text} cannot be read: {_first_line(exc)}") from None
    if "path" not in names:
        raise InputError(f"manifest {spec.text} has no 'path' column (columns: {', '.join(names) or 'none'})")
    if arrow_schema is not None:
        _check_types(spec, arrow_schema)
    return names


def check_manifest(spec: InputSpec) -> int:
    """Read the whole manifest as the listing will, without converting a cell to Python: every error the
    listing could meet (a CSV row with extra fields, a damaged Parquet page) is raised here, as one line.
    Returns the number of rows. About a quarter of a second per million rows (bench/manifest_check.py)."""
    return sum(batch.num_rows for batch in _manifest_batches(spec, batch_rows=65536))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _native_file(spec: InputSpec) -> Iterator[pa.NativeFile]:
    """The manifest as a file pyarrow reads itself (pa.OSFile: C++ I/O, this exact local name). pyarrow's CSV
    reader reads ahead on a background thread; given a Python file object (a local name that is not UTF-8, any
    fsspec remote file), that thread needs the GIL, and one still reading when the interpreter exits aborts
    the process ("terminate called without an active exception", exit 134, seen after a parse error). Such
    manifests are copied to a temporary file first, streamed in 1 MiB pieces."""
    with contextlib.ExitStack() as stack:
        try:
            local = _local(spec.text) if not spec.remote else None
            if local is None or not _utf8(local):
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="embedlib-manifest-"))
                copy = os.path.join(tmp, "manifest" + os.path.splitext(spec.text)[1].lower())
                with _open_manifest(spec) as src, open(copy, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                local = copy
            source = stack.enter_context(pa.OSFile(local))
        except OSError as exc:
            raise InputError(f"manifest {spec.text} cannot be read: {_first_line(exc)}") from None
        yield source


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_error(spec: InputSpec, exc: pa.ArrowException, invalid: list) -> str:
    if invalid and invalid[0].number is not None:  # number counts the header as row 1; rows count from 1 here
        row = invalid[0]
        text = row.text if len(row.text) <= 120 else row.text[:120] + "..."
        hint = " (an unquoted comma?)" if row.actual_columns > row.expected_columns else ""
        return (f"manifest {spec.text}: row {row.number - 1} has {row.actual_columns} fields, the header has "
                f"{row.expected_columns}{hint}: {text!r}")
    return f"manifest {spec.text} cannot be parsed: {_first_line(exc)}"


def _manifest_batches(spec: InputSpec, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of the manifest's `path` (and `family`) columns; CSV cells as bytes (never type-inferred),
    Parquet as stored. A parse error is an InputError naming the row."""
    names = manifest_columns(spec)
    wanted = [c for c in ("path", "family") if c in names]
    with _native_file(spec) as source:
        if _is_csv(spec):
            invalid: list = []

            def on_invalid(row) -> str:
                invalid.append(row)
                return "error"

            try:  # one thread: the invalid row's number is known (it is None with parallel parsing)
                reader = pa_csv.open_csv(
                    source,
                    read_options=pa_csv.ReadOptions(block_size=1 << 20, encoding="utf8", use_threads=False),
                    parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
                    convert_options=pa_csv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                                          include_columns=wanted, strings_can_be_null=False,
                                                          quoted_strings_can_be_null=False),
                )
                with reader:
                    yield from reader
            except pa.ArrowException as exc:
                raise InputError(_csv_error(spec, exc, invalid)) from None
        else:
            try:
                parquet = pq.ParquetFile(source)
                _check_types(spec, parquet.schema_arrow)
                yield from parquet.iter_batches(batch_size=batch_rows, columns=wanted)
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"manifest {spec.text} cannot be read: {_first_line(exc)}") from None


def _manifest_cells(spec: InputSpec) -> Iterator[tuple[list, list]]:
    """(path cells, family cells) per batch."""
    for batch in _manifest_batches(spec):
        paths = batch.column(batch.schema.get_field_index("path"))
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
    for paths, families in _manifest_cells(spec):
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
    yield from _glob_local(os.fsencode(_local(spec.text)))


_MAGIC = re.compile(rb"[*?[]")


def _glob_local(pattern: bytes) -> Iterator[dict]:
    """Local glob rows as a streaming walk that stays in the tree: the pattern's fixed leading folders are
    followed as given (the user named them), below them no directory symlink is ever entered (loops, escapes):
    one that matches the pattern, or that the pattern would go on into, is listed as a row (the hash stage
    records it as `symlink`), as the folder walk does. Real folders are walked, never listed. Python's glob
    rules otherwise: `**` is any number of folders, wildcards skip names starting with `.` unless the pattern
    part does. Order: depth first, the names of each folder sorted by bytes (a folder's entries come where
    its name sorts). Memory: the sorted names of the folders on the current path, never the whole list."""
    parts = [p for p in pattern.split(b"/") if p]
    fixed = 0
    while fixed < len(parts) and not _MAGIC.search(parts[fixed]):
        fixed += 1
    base = os.path.abspath((b"/" if pattern.startswith(b"/") else b"") + b"/".join(parts[:fixed]) or b".")
    rest = parts[fixed:]
    if not rest:  # no wildcard: the path itself, when it exists (a real folder is no file to embed)
        if os.path.lexists(base) and (os.path.islink(base) or not os.path.isdir(base)):
            yield _local_row(base)
        return
    final = len(rest)
    stack: list[tuple[bytes, frozenset[int], Iterator[tuple[bytes, bool, bool]] | None]] = [
        (base, _glob_closure(rest, {0}), None)]
    while stack:
        folder, states, entries = stack.pop()
        if entries is None:
            try:
                with os.scandir(folder) as it:
                    entries = iter(sorted((e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it))
            except OSError as exc:
                if folder != base or not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                    yield _local_row(folder, status=schema.STATUS_UNREADABLE,
                                     reason=f"directory not listed: {exc.strerror or exc}")
                continue
        for name, is_dir, is_link in entries:
            after = _glob_step(rest, states, name)
            deeper = any(k < final for k in after)
            path = os.path.join(folder, name)
            if is_dir:  # a real folder: walked when the pattern goes on, never listed
                if deeper:
                    stack += [(folder, states, entries), (path, after, None)]
                    break
            elif final in after or (deeper and is_link and os.path.isdir(path)):
                yield _local_row(path)


def _glob_closure(parts: list[bytes], states: set[int]) -> frozenset[int]:
    """`states` (how many pattern parts are matched) plus those a `**` reaches by matching no folder."""
    out, todo = set(states), list(states)
    while todo:
        k = todo.pop()
        if k < len(parts) and parts[k] == b"**" and k + 1 not in out:
            out.add(k + 1)
            todo.append(k + 1)
    return frozenset(out)


def _glob_step(parts: list[bytes], states: frozenset[int], name: bytes) -> frozenset[int]:
    """The pattern states after one more path component `name`."""
    after: set[int] = set()
    hidden = name.startswith(b".")
    for k in states:
        if k == len(parts):
            continue
        if parts[k] == b"**":
            if not hidden:
                after.add(k)
        elif (not hidden or parts[k].startswith(b".")) and fnmatch.fnmatchcase(name, parts[k]):
            after.add(k + 1)
    return _glob_closure(parts, after)


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
