"""Where files come from: fsspec listing, manifests, bounded reads, sha256 and format sniffing.

Files are untrusted. We never execute them, never open anything but regular files (a FIFO would block,
a device could be endless), hash them in fixed-size chunks and keep at most `max_bytes` in memory.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from embedlib import schema
from embedlib.config import InputConfig

CHUNK = 1024 * 1024
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    path: str  # a full URI for remote filesystems, a plain path for local ones
    family: str | None = None


@dataclass(frozen=True)
class FileRead:
    """The outcome of reading one file: either `data` (bounded) with its identity, or a status and a reason."""

    path: str
    status: str | None  # None when the read succeeded; else one of schema.ERROR_STATUSES
    reason: str = ""
    sha256: str | None = None
    size_bytes: int | None = None
    format: str | None = None
    data: bytes = b""  # the first max_bytes of the file
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status is None


def sniff_format(head: bytes) -> str:
    """Executable format from magic bytes: 'elf', 'pe', 'macho' or 'other'. Pure and bounds-checked."""
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[:2] == b"MZ" and len(head) >= 0x40:
        (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
        if pe_offset + 4 <= len(head) and head[pe_offset : pe_offset + 4] == b"PE\0\0":
            return "pe"
        return "other"
    magic = head[:4]
    if magic in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe"):
        return "macho"
    if magic in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf") and len(head) >= 8:
        # Universal (fat) Mach-O shares its magic with Java class files; a fat header's next word is a small
        # architecture count, a class file's is its version (>= 45): the heuristic `file` uses too.
        (count,) = struct.unpack_from(">I", head, 4)
        return "macho" if 0 < count < 45 else "other"
    return "other"


# How much of the head sniff_format may look at (PE header offsets are usually below 1 KiB).
SNIFF_BYTES = 4096


def _local_kind(path: str, follow_symlinks: bool) -> tuple[str | None, str, int]:
    """(status or None, reason, size) for a local path, without opening it."""
    try:
        st_link = os.lstat(path)
    except OSError as exc:
        return schema.STATUS_UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}", 0
    if stat.S_ISLNK(st_link.st_mode):
        if not follow_symlinks:
            return schema.STATUS_SYMLINK, f"symlink to {os.readlink(path)!r} (not followed)", 0
        try:
            st = os.stat(path)
        except OSError as exc:
            return schema.STATUS_UNREADABLE, f"dangling symlink: {exc.strerror or exc}", 0
    else:
        st = st_link
    if stat.S_ISDIR(st.st_mode):
        return schema.STATUS_NOT_A_FILE, "directory", 0
    if not stat.S_ISREG(st.st_mode):
        return schema.STATUS_NOT_A_FILE, "not a regular file (fifo, socket or device)", 0
    return None, "", st.st_size


def _remote_kind(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str | None, str, int]:
    try:
        info = fs.info(path)
    except (OSError, FileNotFoundError) as exc:
        return schema.STATUS_UNREADABLE, f"{type(exc).__name__}: {exc}", 0
    if info.get("type") == "directory":
        return schema.STATUS_NOT_A_FILE, "directory", 0
    return None, "", int(info.get("size") or 0)


def read_file(path: str, cfg: InputConfig) -> FileRead:
    """Read one file, bounded. Never raises for a bad file: the outcome carries a status instead."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    is_local = "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"
    status, reason, size = _local_kind(fs_path, cfg.follow_symlinks) if is_local else _remote_kind(fs, fs_path)
    if status:
        return FileRead(path, status, reason)
    if size > cfg.max_hash_bytes:
        return FileRead(path, schema.STATUS_TOO_LARGE, f"{size} bytes > input.max_hash_bytes={cfg.max_hash_bytes}",
                        size_bytes=size)
    digest = hashlib.sha256()
    head = bytearray()
    total = 0
    try:
        with fs.open(fs_path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                total += len(chunk)
                if total > cfg.max_hash_bytes:  # the file grew, or stat lied (/proc)
                    return FileRead(path, schema.STATUS_TOO_LARGE, f"more than {cfg.max_hash_bytes} bytes",
                                    size_bytes=total)
                digest.update(chunk)
                if len(head) < cfg.max_bytes:
                    head += chunk[: cfg.max_bytes - len(head)]
    except OSError as exc:
        return FileRead(path, schema.STATUS_UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}")
    if total == 0:
        return FileRead(path, schema.STATUS_EMPTY, "0 bytes", size_bytes=0)
    data = bytes(head)
    return FileRead(path, None, "", digest.hexdigest(), total, sniff_format(data[:SNIFF_BYTES]), data,
                    truncated=total > len(data))


def _is_manifest(path: str) -> bool:
    return path.lower().endswith((".csv", ".parquet", ".pq"))


def read_manifest(uri: str) -> list[InputFile]:
    """A CSV or Parquet manifest with a `path` column and an optional `family` column."""
    with fsspec.open(uri, "rb") as fh:
        table = pq.read_table(fh) if not uri.lower().endswith(".csv") else pa_csv.read_csv(fh)
    if "path" not in table.column_names:
        raise ValueError(f"manifest {uri} has no 'path' column (columns: {table.column_names})")
    paths = table.column("path").cast(pa.string()).to_pylist()
    families = (table.column("family").cast(pa.string()).to_pylist() if "family" in table.column_names
                else [None] * len(paths))
    return [InputFile(p, f or None) for p, f in zip(paths, families) if p]


def list_inputs(uri: str) -> list[InputFile]:
    """Expand a directory, glob, single file or manifest (.csv/.parquet) into input files, sorted by path.

    Directory walks do not descend into symlinked directories; symlinked files are listed (and later
    recorded with status 'symlink' unless input.follow_symlinks).
    """
    if _is_manifest(uri):
        return read_manifest(uri)
    fs, fs_path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol

    def full(p: str) -> str:
        return p if protocol == "file" else f"{protocol}://{p}"

    if _GLOB_CHARS & set(fs_path):
        paths = [p for p in fs.glob(fs_path) if not fs.isdir(p)]
    elif fs.isdir(fs_path):
        paths = _walk_local(fs_path) if protocol == "file" else fs.find(fs_path, withdirs=False)
    elif fs.exists(fs_path) or os.path.islink(fs_path):
        paths = [fs_path]
    else:
        raise FileNotFoundError(f"input {uri!r} does not exist")
    return [InputFile(full(p)) for p in sorted(paths)]


def _walk_local(root: str) -> list[str]:
    """Every non-directory entry below root (files, symlinks, fifos...), not following directory links."""
    out: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        out.extend(os.path.join(dirpath, name) for name in filenames)
    return out


def iter_shards(files: list[InputFile], shard_size: int) -> Iterator[tuple[int, list[InputFile]]]:
    """Contiguous shards of the (sorted) input: shard ids are stable as long as the input list is."""
    for start in range(0, len(files), shard_size):
        yield start // shard_size, files[start : start + shard_size]
