"""The symbols reader (embedlib.views.symbols): the dynamic names pyelftools reads, and never an exception."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from embedlib.views import symbols

elftools = pytest.importorskip("elftools.elf.elffile")


def elf_files(n: int) -> list[str]:
    paths = sorted(p for p in glob.glob("/usr/bin/*") + glob.glob("/usr/lib/x86_64-linux-gnu/*.so*")
                   if os.path.isfile(p) and not os.path.islink(p) and 2_000 < os.path.getsize(p) < 3_000_000)
    paths = [p for p in paths if open(p, "rb").read(4) == b"\x7fELF"]
    return paths[:: max(1, len(paths) // n)][:n]


def pyelftools_names(path: str) -> tuple[set[bytes], set[bytes], set[bytes]]:
    """(imported, exported, needed) dynamic names as pyelftools reads them."""
    from elftools.elf.dynamic import DynamicSection

    with open(path, "rb") as fh:
        elf = elftools.ELFFile(fh)
        imported, exported, needed = set(), set(), set()
        dynsym = elf.get_section_by_name(".dynsym")
        for s in dynsym.iter_symbols() if dynsym else ():
            if not s.name or s["st_info"]["bind"] == "STB_LOCAL" or \
                    s["st_info"]["type"] not in ("STT_NOTYPE", "STT_OBJECT", "STT_FUNC", "STT_TLS", "STT_GNU_IFUNC"):
                continue
            (imported if s["st_shndx"] == "SHN_UNDEF" else exported).add(s.name.encode()[: symbols.MAX_NAME])
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                needed |= {t.needed.encode() for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"}
    return imported, exported, needed


def test_the_names_pyelftools_reads_on_real_executables():
    files = elf_files(25)
    assert len(files) >= 10
    for path in files:
        s = symbols.parse(open(path, "rb").read())
        got = {k: {n for n, kk in zip(s.names, s.kinds) if kk == k}
               for k in (symbols.IMPORT, symbols.EXPORT, symbols.LIBRARY)}
        imported, exported, needed = pyelftools_names(path)
        assert (got[symbols.IMPORT], got[symbols.EXPORT], got[symbols.LIBRARY]) == (imported, exported, needed), path
        assert s.status in ("ok", "none")
        h, k, status = symbols.symbol_hashes(open(path, "rb").read())
        assert len(h) == len(k) == len(s.names) and h.dtype == np.uint64 and status == s.status


def test_broken_input_is_a_status_never_an_exception():
    data = open(elf_files(1)[0], "rb").read()
    rng = np.random.default_rng(0)
    statuses = set()
    for cut in (0, 3, 40, 64, 200, len(data) // 3, len(data) - 1):
        statuses.add(symbols.symbol_hashes(data[:cut])[2].split(":")[0])
    for _ in range(30):  # random byte flips in the headers and tables
        b = np.frombuffer(data, np.uint8).copy()
        b[rng.integers(0, min(len(b), 4096), 40)] = rng.integers(0, 256, 40)
        h, k, status = symbols.symbol_hashes(b.tobytes())
        assert len(h) == len(k) and isinstance(status, str)
        statuses.add(status.split(":")[0])
    assert "error" in statuses
    assert symbols.symbol_hashes(b"MZ" + b"\xff" * 100)[2] != "ok"
    assert symbols.symbol_hashes(b"plain text, no executable")[2] == "none"
