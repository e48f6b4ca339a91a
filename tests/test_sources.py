import hashlib
import struct

import pytest

from embedlib import schema, sources
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


def test_read_good_file_identity():
    read = sources.read_file("/usr/bin/ls", InputConfig())
    data = open("/usr/bin/ls", "rb").read()
    assert read.ok and read.format == "elf" and not read.truncated
    assert read.sha256 == hashlib.sha256(data).hexdigest() and read.size_bytes == len(data) and read.data == data


def test_bad_inputs_get_statuses(bad_inputs):
    _, p = bad_inputs
    status = {name: sources.read_file(path, SMALL) for name, path in p.items()}
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
    assert sources.read_file(p["symlink"], cfg).ok
    assert sources.read_file(p["dangling"], cfg).status == schema.STATUS_UNREADABLE


def test_unreadable_files():
    assert sources.read_file("/nonexistent/file", SMALL).status == schema.STATUS_UNREADABLE
    # /proc/self/mem is a regular file whose read fails (EIO) even for root
    assert sources.read_file("/proc/self/mem", SMALL).status == schema.STATUS_UNREADABLE


def test_list_inputs_directory_glob_manifest(bad_inputs, tmp_path):
    d, p = bad_inputs
    listed = [f.path for f in sources.list_inputs(str(d))]
    assert p["good"] in listed and p["symlink"] in listed and p["fifo"] in listed
    assert p["directory"] not in listed and listed == sorted(listed)
    assert [f.path for f in sources.list_inputs(str(d / "*.bin"))] == sorted(
        [p["empty"], p["one_byte"], p["huge"], p["big"]])
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,family\n{p['good']},coreutils\n{p['empty']},\n")
    items = sources.list_inputs(str(csv))
    assert [(f.path, f.family) for f in items] == [(p["good"], "coreutils"), (p["empty"], None)]
    with pytest.raises(FileNotFoundError):
        sources.list_inputs(str(tmp_path / "missing"))
