"""Symbol-name parsers side by side: this study's numpy reader (symbols.py), pyelftools, pefile, LIEF.

  nice -n 10 .venv/bin/python studies/unseen_families/compare_parsers.py --files LIST.txt [--limit 600]

For each file (first 16 MiB, as the product reads it): CPU ms per file of each parser (one thread,
time.process_time), its status (ok / none / error), and the agreement of its name set with the reference
(pyelftools for ELF, pefile for PE): Jaccard of the (kind, name) sets. Prints a table.
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import symbols  # noqa: E402


def ours(data: bytes):
    s = symbols.parse(data)
    st = "error" if s.status.startswith("error") else s.status
    return {(k, n) for n, k in zip(s.names, s.kinds)}, st


def elftools(data: bytes):
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    out = set()
    f = ELFFile(io.BytesIO(data))
    for sec in f.iter_sections():
        if isinstance(sec, SymbolTableSection) and sec["sh_type"] == "SHT_DYNSYM":
            for sym in sec.iter_symbols():
                if not sym.name or sym["st_info"]["bind"] == "STB_LOCAL":
                    continue
                if sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                    continue
                out.add((symbols.IMPORT if sym["st_shndx"] == "SHN_UNDEF" else symbols.EXPORT,
                         sym.name.encode("utf-8", "surrogateescape")))
        elif isinstance(sec, DynamicSection):
            for tag in sec.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    out.add((symbols.LIBRARY, tag.needed.encode("utf-8", "surrogateescape")))
    return out, "ok" if out else "none"


def pefile_names(data: bytes):
    import pefile

    pe = pefile.PE(data=data, fast_load=True)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY[k] for k in (
        "IMAGE_DIRECTORY_ENTRY_IMPORT", "IMAGE_DIRECTORY_ENTRY_EXPORT", "IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT")])
    out = set()
    for attr in ("DIRECTORY_ENTRY_IMPORT", "DIRECTORY_ENTRY_DELAY_IMPORT"):
        for entry in getattr(pe, attr, []):
            dll = (entry.dll or b"").lower()
            if dll:
                out.add((symbols.LIBRARY, dll))
            for imp in entry.imports:
                if imp.name:
                    out.add((symbols.IMPORT, imp.name))
                elif imp.ordinal is not None:
                    out.add((symbols.IMPORT, dll + b"#" + str(imp.ordinal).encode()))
    exp = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    if exp is not None:
        for s in exp.symbols:
            if s.name:
                out.add((symbols.EXPORT, s.name))
    return out, "ok" if out else "none"  # no pe.close(): it runs gc.collect() (ARCHITECTURE.md pitfall 20)


def lief_names(data: bytes):
    import lief

    lief.logging.disable()
    b = lief.parse(list(data) if False else io.BytesIO(data))
    out = set()
    if b is None:
        return out, "error"
    if isinstance(b, lief.ELF.Binary):
        for s in b.dynamic_symbols:
            if not s.name or s.binding == lief.ELF.Symbol.BINDING.LOCAL:
                continue
            if s.type in (lief.ELF.Symbol.TYPE.SECTION, lief.ELF.Symbol.TYPE.FILE):
                continue
            out.add((symbols.IMPORT if s.shndx == 0 else symbols.EXPORT, s.name.encode("utf-8", "surrogateescape")))
        for lib in b.libraries:
            out.add((symbols.LIBRARY, lib.encode("utf-8", "surrogateescape")))
    elif isinstance(b, lief.PE.Binary):
        for imp in b.imports:
            dll = imp.name.lower().encode("utf-8", "surrogateescape")
            out.add((symbols.LIBRARY, dll))
            for e in imp.entries:
                out.add((symbols.IMPORT, e.name.encode("utf-8", "surrogateescape")) if not e.is_ordinal
                        else (symbols.IMPORT, dll + b"#" + str(e.ordinal).encode()))
        for d in b.delay_imports:
            dll = d.name.lower().encode("utf-8", "surrogateescape")
            out.add((symbols.LIBRARY, dll))
            for e in d.entries:
                out.add((symbols.IMPORT, e.name.encode("utf-8", "surrogateescape")) if not e.is_ordinal
                        else (symbols.IMPORT, dll + b"#" + str(e.ordinal).encode()))
        exp = b.get_export()
        if exp is not None:
            for e in exp.entries:
                if e.name:
                    out.add((symbols.EXPORT, e.name.encode("utf-8", "surrogateescape")))
    return out, "ok" if out else "none"


PARSERS = {"numpy reader (this study)": ours, "pyelftools / pefile": None, "LIEF": lief_names}


def reference(data: bytes):
    return elftools(data) if data[:4] == b"\x7fELF" else pefile_names(data)


def run(paths: list[str]) -> None:
    gc.disable()  # keep collection out of the per-file timings (all parsers alike)
    res: dict[str, dict[str, list]] = {}
    for p in paths:
        with open(p, "rb") as fh:
            data = fh.read(16 * 1024 * 1024)
        fmt = "elf" if data[:4] == b"\x7fELF" else "pe"
        got = {}
        for name, fn in (("reference", reference), ("ours", ours), ("lief", lief_names)):
            t = time.process_time()
            try:
                names, st = fn(data)
            except Exception:  # noqa: BLE001
                names, st = set(), "error"
            got[name] = (names, st, time.process_time() - t)
        ref = got["reference"][0]
        for name, (names, st, cpu) in got.items():
            r = res.setdefault(f"{fmt}/{name}", {"cpu": [], "status": [], "jaccard": []})
            r["cpu"].append(cpu)
            r["status"].append(st)
            union = ref | names
            r["jaccard"].append(len(ref & names) / len(union) if union else 1.0)
        gc.collect()
    print("| format / parser | files | CPU ms/file (mean) | median | ok | none | error | Jaccard vs reference (mean) | exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, r in sorted(res.items()):
        st = np.array(r["status"])
        j = np.array(r["jaccard"])
        print(f"| {k} | {len(st)} | {1000 * np.mean(r['cpu']):.2f} | {1000 * np.median(r['cpu']):.2f} | "
              f"{(st == 'ok').sum()} | {(st == 'none').sum()} | {(st == 'error').sum()} | {j.mean():.4f} | "
              f"{(j == 1).mean():.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", required=True, help="a text file of paths, one per line")
    ap.add_argument("--limit", type=int, default=600)
    a = ap.parse_args()
    paths = [line.rstrip("\n") for line in open(a.files) if line.strip()]
    step = max(1, len(paths) // a.limit)
    run(paths[::step][: a.limit])


if __name__ == "__main__":
    main()
