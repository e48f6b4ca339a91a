"""Dynamic symbol names of an executable, from its bytes: a small defensive reader (struct + numpy), never raises.

ELF: the .dynsym symbols (imported = SHN_UNDEF, exported = defined GLOBAL/WEAK), names from the section
its sh_link names (.dynstr), plus DT_NEEDED library names; when the section headers are missing, the same
table through PT_DYNAMIC (DT_SYMTAB, DT_STRTAB, DT_STRSZ; symbol count from DT_HASH or DT_GNU_HASH).
PE: import directory (and delay imports) as function names (by-ordinal imports as "dll#ordinal"), the DLL
names, and the export directory's names.

Every name is returned as bytes with a kind: 0 = imported, 1 = exported (defined), 2 = library (DT_NEEDED or
an imported DLL). Versions (foo@GLIBC_2.2.5) are not part of .dynstr names; PE DLL names are lowercased.
Errors (truncated tables, offsets out of range, garbage) stop the parse of that table and set `status`;
whatever was read before stays. The output is a `Symbols(names, kinds, status)`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

IMPORT, EXPORT, LIBRARY = 0, 1, 2
MAX_NAMES = 200_000  # a bound on work per file (the largest real .dynsym has ~100k entries)


@dataclass
class Symbols:
    names: list[bytes] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    status: str = "ok"  # ok | none (no dynamic table / not ELF or PE) | error: <what>
    # ELF names stay spans of the string table until asked for (hashing them needs no Python loop)
    blob: np.ndarray | None = None
    spans: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # (starts, ends, kinds)

    def add(self, name: bytes, kind: int) -> None:
        if name:
            self.names.append(name)
            self.kinds.append(kind)

    def add_spans(self, blob: np.ndarray, starts: np.ndarray, ends: np.ndarray, kind) -> None:
        self.blob = blob
        ok = ends > starts
        self.spans.append((starts[ok], ends[ok], np.broadcast_to(np.asarray(kind, np.uint8), starts.shape)[ok]))

    def materialise(self) -> "Symbols":
        """names/kinds lists with the spans' names appended (for comparisons; hashing uses hashes())."""
        for s, e, k in self.spans:
            for a, b, kk in zip(s.tolist(), e.tolist(), k.tolist()):
                self.add(self.blob[a:b].tobytes(), kk)
        self.spans = []
        return self

    def hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 hash of every name, kind) with embedlib.views.hash_runs (the idents view's hash)."""
        from embedlib.views import hash_runs  # the idents view's hash (lazy: views imports nothing of this module)

        hs, ks = [], []
        for s, e, k in self.spans:
            hs.append(hash_runs(self.blob, s.astype(np.int64), e.astype(np.int64)))
            ks.append(np.asarray(k, np.uint8))
        if self.names:
            buf = b"".join(self.names)
            lengths = np.fromiter((len(n) for n in self.names), np.int64, len(self.names))
            ends = np.cumsum(lengths)
            hs.append(hash_runs(np.frombuffer(buf, np.uint8), ends - lengths, ends))
            ks.append(np.asarray(self.kinds, np.uint8))
        if not hs:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint8)
        return np.concatenate(hs), np.concatenate(ks)


def parse(data: bytes) -> Symbols:
    """Names as bytes (materialised): for comparisons with other parsers."""
    return parse_lazy(data).materialise()


def symbol_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray, str]:
    """(hashes uint64, kinds uint8, status) of one file's dynamic names: the symbols view's input."""
    s = parse_lazy(data)
    try:
        h, k = s.hashes()
    except Exception as exc:  # noqa: BLE001
        return np.zeros(0, np.uint64), np.zeros(0, np.uint8), f"error: hash: {exc}"[:200]
    return h, k, s.status


def parse_lazy(data: bytes) -> Symbols:
    try:
        if data[:4] == b"\x7fELF":
            return _elf(data)
        if data[:2] == b"MZ":
            return _pe(data)
        return Symbols(status="none")
    except Exception as exc:  # noqa: BLE001 - a per-file status, never a failed task
        return Symbols(status=f"error: {type(exc).__name__}: {exc}"[:200])


# ---------------------------------------------------------------------------------------------------
# ELF
# ---------------------------------------------------------------------------------------------------

SHT_DYNSYM, SHT_DYNAMIC = 11, 6
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_GNU_HASH = 0, 1, 4, 5, 6, 10, 0x6FFFFEF5


MAX_NAME = 4096  # bytes of one name that count (longer C++ names are cut)


def _cspans(blob: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the NUL-terminated strings of `blob` at each offset; out of range = empty span."""
    arr = blob
    nul = np.flatnonzero(arr == 0)
    ok = (offsets >= 0) & (offsets < len(blob))
    starts = np.where(ok, offsets, 0).astype(np.int64)
    pos = np.searchsorted(nul, starts)
    ends = np.where(pos < len(nul), nul[np.minimum(pos, max(len(nul) - 1, 0))] if len(nul) else len(blob),
                    len(blob)).astype(np.int64)
    ends = np.where(ok, np.minimum(ends, starts + MAX_NAME), starts)
    return starts, ends


def _elf(data: bytes) -> Symbols:
    if len(data) < 52:
        return Symbols(status="error: truncated header")
    cls, enc = data[4], data[5]
    if cls not in (1, 2) or enc not in (1, 2):
        return Symbols(status="error: bad ident")
    is64, e = cls == 2, "<" if enc == 1 else ">"
    if is64:
        phoff, shoff = struct.unpack_from(e + "QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", data, 54)
        sym_dt = np.dtype([("name", e + "u4"), ("info", "u1"), ("other", "u1"), ("shndx", e + "u2"),
                           ("value", e + "u8"), ("size", e + "u8")])
    else:
        phoff, shoff = struct.unpack_from(e + "II", data, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", data, 42)
        sym_dt = np.dtype([("name", e + "u4"), ("value", e + "u4"), ("size", e + "u4"), ("info", "u1"),
                           ("other", "u1"), ("shndx", e + "u2")])
    out = Symbols()
    symtab = strtab = None  # (offset, size) in the file
    # section headers
    w = e + ("u8" if is64 else "u4")
    sh_dt = np.dtype([("name", e + "u4"), ("type", e + "u4"), ("flags", w), ("addr", w), ("offset", w),
                      ("size", w), ("link", e + "u4"), ("info", e + "u4"), ("align", w), ("entsize", w)])
    if shoff and shnum and shentsize == sh_dt.itemsize and shoff + shnum * shentsize <= len(data):
        sects = np.frombuffer(data, sh_dt, count=shnum, offset=shoff)
        hit = np.flatnonzero(sects["type"] == SHT_DYNSYM)
        if len(hit):
            s = sects[hit[0]]
            link = int(s["link"])
            if link < shnum:
                strtab = (int(sects[link]["offset"]), int(sects[link]["size"]))
                symtab = (int(s["offset"]), int(s["size"]))
    # program headers: PT_DYNAMIC for DT_NEEDED (and the tables when no section headers)
    if is64:
        ph_dt = np.dtype([("type", e + "u4"), ("flags", e + "u4"), ("offset", w), ("vaddr", w), ("paddr", w),
                          ("filesz", w), ("memsz", w), ("align", w)])
    else:
        ph_dt = np.dtype([("type", e + "u4"), ("offset", w), ("vaddr", w), ("paddr", w), ("filesz", w),
                          ("memsz", w), ("flags", e + "u4"), ("align", w)])
    loads, dyn = [], None
    if phoff and phnum and phentsize == ph_dt.itemsize and phoff + phnum * phentsize <= len(data):
        ph = np.frombuffer(data, ph_dt, count=phnum, offset=phoff)
        for p in ph[ph["type"] == PT_LOAD]:
            loads.append((int(p["vaddr"]), int(p["offset"]), int(p["filesz"])))
        d = ph[ph["type"] == PT_DYNAMIC]
        if len(d):
            dyn = (int(d[0]["offset"]), int(d[0]["filesz"]))

    def v2o(addr: int) -> int | None:
        for va, off, sz in loads:
            if va <= addr < va + sz:
                return off + addr - va
        return None

    needed: list[int] = []
    if dyn and dyn[0] + dyn[1] <= len(data):
        ent = np.dtype([("tag", e + ("i8" if is64 else "i4")), ("val", e + ("u8" if is64 else "u4"))])
        n = dyn[1] // ent.itemsize
        d = np.frombuffer(data, ent, count=n, offset=dyn[0])
        tags = d["tag"].astype(np.int64)
        stop = np.flatnonzero(tags == DT_NULL)
        d = d[: stop[0]] if len(stop) else d
        tags = d["tag"].astype(np.int64)
        vals = d["val"].astype(np.uint64)
        needed = [int(v) for v in vals[tags == DT_NEEDED]]
        get = {int(t): int(v) for t, v in zip(tags.tolist(), vals.tolist())}
        if strtab is None and DT_STRTAB in get:
            so = v2o(get[DT_STRTAB])
            if so is not None:
                strtab = (so, get.get(DT_STRSZ, 0))
        if symtab is None and DT_SYMTAB in get and strtab is not None:
            so = v2o(get[DT_SYMTAB])
            count = _elf_symbol_count(data, get, v2o, e, is64)
            if so is not None and count:
                symtab = (so, count * sym_dt.itemsize)
    if strtab is None or not (0 <= strtab[0] <= len(data)):
        if symtab is None and not needed:
            out.status = "none"
        return out
    size = min(strtab[1], len(data) - strtab[0]) if strtab[1] else len(data) - strtab[0]
    strblob = np.frombuffer(data, np.uint8, count=size, offset=strtab[0])
    if needed:
        out.add_spans(strblob, *_cspans(strblob, np.array(needed, np.int64)), LIBRARY)
    if symtab is not None:
        off, size = symtab
        if off > len(data):
            out.status = "error: dynsym out of range"
            return out
        n = min(size // sym_dt.itemsize, (len(data) - off) // sym_dt.itemsize, MAX_NAMES)
        syms = np.frombuffer(data, sym_dt, count=n, offset=off)
        info = syms["info"]
        stype, bind = info & 0xF, info >> 4
        keep = (syms["name"] > 0) & np.isin(stype, (0, 1, 2, 6, 10)) & (bind != 0)  # not LOCAL, not section/file
        undef = syms["shndx"] == 0
        out.add_spans(strblob, *_cspans(strblob, syms["name"][keep].astype(np.int64)),
                      np.where(undef[keep], IMPORT, EXPORT))
        if n * sym_dt.itemsize < size:
            out.status = "error: dynsym truncated"
    elif not needed:
        out.status = "none"
    return out


def _elf_symbol_count(data: bytes, get: dict, v2o, e: str, is64: bool) -> int:
    """Number of dynamic symbols from DT_HASH's nchain, else from DT_GNU_HASH's buckets and chains."""
    if DT_HASH in get:
        o = v2o(get[DT_HASH])
        if o is not None and o + 8 <= len(data):
            return struct.unpack_from(e + "II", data, o)[1]
    if DT_GNU_HASH in get:
        o = v2o(get[DT_GNU_HASH])
        if o is None or o + 16 > len(data):
            return 0
        nbuckets, symoffset, bloom_size, _ = struct.unpack_from(e + "IIII", data, o)
        b_off = o + 16 + bloom_size * (8 if is64 else 4)
        if b_off + 4 * nbuckets > len(data):
            return 0
        buckets = np.frombuffer(data, e + "u4", count=nbuckets, offset=b_off)
        last = int(buckets.max()) if nbuckets else 0
        if last < symoffset:
            return symoffset
        c_off = b_off + 4 * nbuckets
        i = last
        while c_off + 4 * (i - symoffset + 1) <= len(data):
            (h,) = struct.unpack_from(e + "I", data, c_off + 4 * (i - symoffset))
            if h & 1:
                return i + 1
            i += 1
            if i - last > MAX_NAMES:
                break
    return 0


# ---------------------------------------------------------------------------------------------------
# PE
# ---------------------------------------------------------------------------------------------------

def _pe(data: bytes) -> Symbols:
    if len(data) < 0x40:
        return Symbols(status="error: truncated DOS header")
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if lfanew + 24 > len(data) or data[lfanew : lfanew + 4] != b"PE\0\0":
        return Symbols(status="none")
    _machine, nsect, _, _, _, opt_size, _ = struct.unpack_from("<HHIIIHH", data, lfanew + 4)
    opt = lfanew + 24
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic == 0x20B:
        pe64, dd = True, opt + 112
    elif magic == 0x10B:
        pe64, dd = False, opt + 96
    else:
        return Symbols(status="error: bad optional header magic")
    (ndirs,) = struct.unpack_from("<I", data, dd - 4)
    dirs = []
    for i in range(min(ndirs, 16)):
        if dd + 8 * i + 8 > opt + opt_size or dd + 8 * i + 8 > len(data):
            break
        dirs.append(struct.unpack_from("<II", data, dd + 8 * i))
    sec_off = opt + opt_size
    sections = []
    for i in range(min(nsect, 96)):
        o = sec_off + 40 * i
        if o + 40 > len(data):
            break
        vsize, va, rawsize, rawptr = struct.unpack_from("<IIII", data, o + 8)
        sections.append((va, max(vsize, rawsize), rawptr, rawsize))

    def r2o(rva: int) -> int | None:
        for va, size, ptr, raw in sections:
            if va <= rva < va + size and rva - va < raw:
                return ptr + rva - va
        if rva < len(data) and (not sections or rva < sections[0][0]):
            return rva  # headers
        return None

    def cstr(off: int | None, limit: int = 512) -> bytes:
        if off is None or off >= len(data):
            return b""
        end = data.find(b"\0", off, off + limit)
        return data[off : end if end >= 0 else off + limit]

    out = Symbols()
    # imports (1) and delay imports (13)
    for idx, desc_size, delay in ((1, 20, False), (13, 32, True)):
        if len(dirs) <= idx or not dirs[idx][0]:
            continue
        o = r2o(dirs[idx][0])
        seen = 0
        while o is not None and o + desc_size <= len(data) and seen < 4096:
            if delay:
                _attrs, name_rva, _hmod, _iat, int_rva = struct.unpack_from("<IIIII", data, o)
                thunk_rva = int_rva
            else:
                oft, _ts, _fwd, name_rva, ft = struct.unpack_from("<IIIII", data, o)
                thunk_rva = oft or ft
            if not name_rva and not thunk_rva:
                break
            dll = cstr(r2o(name_rva)).lower()
            out.add(dll, LIBRARY)
            t = r2o(thunk_rva) if thunk_rva else None
            width = 8 if pe64 else 4
            flag = 1 << (63 if pe64 else 31)
            count = 0
            while t is not None and t + width <= len(data) and count < 65536:
                (v,) = struct.unpack_from("<Q" if pe64 else "<I", data, t)
                if not v:
                    break
                if v & flag:
                    out.add(dll + b"#" + str(v & 0xFFFF).encode(), IMPORT)
                else:
                    out.add(cstr(r2o((v & 0x7FFFFFFF) + 2)), IMPORT)
                t += width
                count += 1
            o += desc_size
            seen += 1
    # exports (0)
    if dirs and dirs[0][0]:
        o = r2o(dirs[0][0])
        if o is not None and o + 40 <= len(data):
            n_names, _, names_rva = struct.unpack_from("<III", data, o + 24)
            no = r2o(names_rva)
            if no is not None:
                n = min(n_names, (len(data) - no) // 4, MAX_NAMES)
                for rva in np.frombuffer(data, "<u4", count=n, offset=no).tolist():
                    out.add(cstr(r2o(rva)), EXPORT)
    if not out.names:
        out.status = "none"
    return out
