"""Reading one input file: bounded reads, sha256, format sniffing. Local paths and object-store URIs.

Files are untrusted. We never execute them, never open anything but regular files (a FIFO would block,
a device could be endless), hash them in fixed-size chunks and keep at most `max_bytes` in memory.
A local path is opened as the exact bytes it is (names need not be UTF-8); only a URI whose scheme is a
storage protocol (s3://, gs://, ...) goes through fsspec. Nothing is ever parsed as an fsspec URL chain
or a glob here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass

from embedlib import schema
from embedlib.config import InputConfig

CHUNK = 1024 * 1024
# What sniff_format may look at (PE header offsets are usually below 1 KiB).
SNIFF_BYTES = 4096
# URI schemes taken as object stores or remote file systems; anything else is a local path, literally.
STORAGE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "hdfs", "webhdfs",
                               "http", "https", "memory", "file"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class FileRead:
    """The outcome of reading one file: `data` (its first max_bytes) with its identity, or a status."""

    status: str | None  # None when the read succeeded; else one of schema.ERROR_STATUSES
    reason: str = ""
    sha256: str | None = None  # of the whole file (None when only the head was read)
    size_bytes: int | None = None
    mtime_ns: int | None = None
    etag: str | None = None
    format: str | None = None
    data: bytes = b""
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status is None


def uri_protocol(text: str) -> str | None:
    """'s3' for 's3://b/k'; None for a local path (including 'alias::file', 'a:b' and 'C:\\x')."""
    m = _SCHEME.match(text)
    return m.group(1).lower() if m and m.group(1).lower() in STORAGE_PROTOCOLS else None


@functools.lru_cache(maxsize=16)
def filesystem(protocol: str):
    """One fsspec filesystem per protocol and process (credentials come from the environment)."""
    import fsspec

    return fsspec.filesystem(protocol)


def split_uri(uri: str):
    """(filesystem, path inside it) for a storage URI; file:// URIs are local paths."""
    protocol = uri_protocol(uri)
    if protocol is None:
        raise ValueError(f"{uri!r} is not a storage URI")
    fs = filesystem(protocol)
    return fs, fs._strip_protocol(uri)


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


@dataclass(frozen=True)
class Stat:
    """What a file is, without opening it: a status when it must not be read, else its size and version."""

    status: str | None
    reason: str = ""
    size_bytes: int | None = None
    mtime_ns: int | None = None
    etag: str | None = None


def _os_error(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def stat_local(path: bytes, follow_symlinks: bool) -> Stat:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return Stat(schema.STATUS_UNREADABLE, _os_error(exc))
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path).decode("utf-8", "backslashreplace")
        if not follow_symlinks:
            kind = "a directory" if os.path.isdir(path) else repr(target)
            return Stat(schema.STATUS_SYMLINK, f"symlink to {kind} (not followed)", st.st_size, st.st_mtime_ns)
        try:
            st = os.stat(path)
        except OSError as exc:
            return Stat(schema.STATUS_UNREADABLE, f"dangling symlink to {target!r}: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        return Stat(schema.STATUS_NOT_A_FILE, "directory", None, st.st_mtime_ns)
    if not stat.S_ISREG(st.st_mode):
        return Stat(schema.STATUS_NOT_A_FILE, "not a regular file (fifo, socket or device)", None, st.st_mtime_ns)
    return Stat(None, "", st.st_size, st.st_mtime_ns)


def stat_remote(uri: str) -> Stat:
    try:
        fs, path = split_uri(uri)
        info = fs.info(path)
    except (OSError, ValueError) as exc:
        return Stat(schema.STATUS_UNREADABLE, f"{type(exc).__name__}: {exc}")
    if info.get("type") == "directory":
        return Stat(schema.STATUS_NOT_A_FILE, "directory")
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
    return Stat(None, "", int(info.get("size") or 0), None, str(etag).strip('"') if etag else None)


def stat_target(target: bytes, remote: bool, cfg: InputConfig) -> Stat:
    return stat_remote(target.decode()) if remote else stat_local(target, cfg.follow_symlinks)


def _open(target: bytes, remote: bool, follow_symlinks: bool):
    if remote:
        fs, path = split_uri(target.decode())
        return fs.open(path, "rb")
    # O_NONBLOCK: if the path was swapped for a FIFO since stat, open() must not hang (reads of a regular file
    # ignore it); O_NOFOLLOW: nor for a symlink, unless symlinks are followed.
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    return os.fdopen(os.open(target, flags), "rb")


def read_file(target: bytes, remote: bool, cfg: InputConfig, hash_all: bool = True,
              known: Stat | None = None) -> FileRead:
    """Read one file, bounded; never raises for a bad file (the outcome carries a status instead).

    hash_all=True reads the whole file (up to max_hash_bytes) for its sha256 and keeps the first max_bytes;
    hash_all=False reads only the first max_bytes (sha256 None). `known` is a Stat already taken (skips one)."""
    st = known or stat_target(target, remote, cfg)
    if st.status:
        return FileRead(st.status, st.reason, size_bytes=st.size_bytes, mtime_ns=st.mtime_ns, etag=st.etag)
    ident = {"size_bytes": st.size_bytes, "mtime_ns": st.mtime_ns, "etag": st.etag}
    if (st.size_bytes or 0) > cfg.max_hash_bytes:
        return FileRead(schema.STATUS_TOO_LARGE, f"{st.size_bytes} bytes > input.max_hash_bytes={cfg.max_hash_bytes}",
                        **ident)
    digest = hashlib.sha256()
    head = bytearray()
    total = 0
    try:
        with _open(target, remote, cfg.follow_symlinks) as fh:
            if not hash_all:
                head += fh.read(cfg.max_bytes)
                total = len(head)
            while hash_all and (chunk := fh.read(CHUNK)):
                total += len(chunk)
                if total > cfg.max_hash_bytes:  # the file grew, or stat lied (/proc)
                    return FileRead(schema.STATUS_TOO_LARGE, f"more than {cfg.max_hash_bytes} bytes", **ident)
                digest.update(chunk)
                if len(head) < cfg.max_bytes:
                    head += chunk[: cfg.max_bytes - len(head)]
    except OSError as exc:
        return FileRead(schema.STATUS_UNREADABLE, _os_error(exc), **ident)
    if total == 0:
        return FileRead(schema.STATUS_EMPTY, "0 bytes", **{**ident, "size_bytes": 0})
    data = bytes(head)
    size = total if hash_all else max(st.size_bytes or 0, total)
    return FileRead(None, "", digest.hexdigest() if hash_all else None, size, st.mtime_ns, st.etag,
                    sniff_format(data[:SNIFF_BYTES]), data, truncated=size > len(data))


def read_path(path: str, cfg: InputConfig, hash_all: bool = True) -> FileRead:
    """read_file for a path or URI given as text (a local path taken literally; a storage URI remote)."""
    protocol = uri_protocol(path)
    if protocol not in (None, "file"):
        return read_file(path.encode(), True, cfg, hash_all)
    local = path[len("file://"):] if protocol == "file" else path
    return read_file(local.encode("utf-8", "surrogateescape"), False, cfg, hash_all)
