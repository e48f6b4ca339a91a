import hashlib
import os
import struct

import pytest

from embedlib import schema

from embedlib.files import sources
from embedlib.config import InputConfig

SMALL = InputConfig(max_bytes=64 * 1024, max_hash_bytes=200_000)


def test_sniff_real_elf():
    assert sources.sniff_format(open("/usr/bin/ls", "rb").read(4096)) == "elf"


def test_sniff_pe():
    head = bytearray(512)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x80)
    head[0x80:0x84] = b"PE\0\0"
    assert sources.sniff_format(bytes(head)) == "pe"
    head[0x80:0x84] = b"XX\0\0"
    assert sources.sniff_format(bytes(head)) == "other"  # a DOS stub with no PE header
    assert sources.sniff_format(b"MZ") == "other"  # truncated: no out-of-bounds read


def test_sniff_macho_and_java_class():
    assert sources.sniff_format(b"\xcf\xfa\xed\xfe" + b"\0" * 28) == "macho"
    assert sources.sniff_format(b"\xfe\xed\xfa\xce" + b"\0" * 28) == "macho"
    assert sources.sniff_format(b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + b"\0" * 24) == "macho"  # fat, 2 archs
    assert sources.sniff_format(b"\xca\xfe\xba\xbe\x00\x00\x00\x34") == "other"  # Java class, version 52
    assert sources.sniff_format(b"#!/bin/sh\n") == "other"
    assert sources.sniff_format(b"") == "other"


def _read(path, cfg=SMALL, **kw):
    return sources.read_file(path.encode() if isinstance(path, str) else path, False, cfg, **kw)


def test_read_good_file_identity():
    read = _read("/usr/bin/ls", InputConfig())
    data = open("/usr/bin/ls", "rb").read()
    assert read.ok and read.format == "elf" and not read.truncated
    assert read.sha256 == hashlib.sha256(data).hexdigest() and read.size_bytes == len(data) and read.data == data
    assert read.mtime_ns == os.stat("/usr/bin/ls").st_mtime_ns


def test_head_only_read_is_bounded_and_has_no_hash(bad_inputs):
    _, p = bad_inputs
    head = _read(p["big"], hash_all=False)
    assert head.ok and head.sha256 is None and len(head.data) == SMALL.max_bytes and head.truncated
    assert head.data == open(p["big"], "rb").read()[: SMALL.max_bytes]


def test_bad_inputs_get_statuses(bad_inputs):
    _, p = bad_inputs
    status = {name: _read(path) for name, path in p.items()}
    assert status["empty"].status == schema.STATUS_EMPTY
    assert status["one_byte"].ok and status["one_byte"].data == b"\x7f" and status["one_byte"].format == "other"
    assert status["directory"].status == schema.STATUS_NOT_A_FILE
    assert status["symlink"].status == schema.STATUS_SYMLINK
    assert status["dangling"].status == schema.STATUS_SYMLINK
    assert status["fifo"].status == schema.STATUS_NOT_A_FILE  # never opened: it would block
    assert status["huge"].status == schema.STATUS_TOO_LARGE
    big = status["big"]
    assert big.ok and big.truncated and len(big.data) == SMALL.max_bytes and big.size_bytes == 100_000
    assert big.sha256 == hashlib.sha256(open(p["big"], "rb").read()).hexdigest()  # identity of the whole file


def test_follow_symlinks_option(bad_inputs):
    _, p = bad_inputs
    cfg = InputConfig(follow_symlinks=True)
    assert _read(p["symlink"], cfg).ok
    assert _read(p["dangling"], cfg).status == schema.STATUS_UNREADABLE


def test_unreadable_files():
    assert _read("/nonexistent/file").status == schema.STATUS_UNREADABLE
    # /proc/self/mem is a regular file whose read fails (EIO) even for root
    assert _read("/proc/self/mem").status == schema.STATUS_UNREADABLE


@pytest.mark.parametrize("text,protocol", [("s3://b/k", "s3"), ("gs://b/k", "gs"), ("memory://x", "memory"),
                                           ("alias::file", None), ("colon::bar", None), ("simplecache::s3://b/k", None),
                                           ("a:b", None), ("batch[1]/x", None), ("-rf", None), ("C:\\x", None),
                                           ("file:///tmp/x", "file")])
def test_only_storage_schemes_are_uris(text, protocol):
    assert sources.uri_protocol(text) == protocol
