"""Per-file feature cache for the unseen-families study (issue 22): exact hash sets of every candidate view,
TLSH, and the CPU cost of each view; never in CI, never in git (outputs under /work/studies22/).

  nice -n 10 .venv/bin/python studies/unseen_families/features.py --manifest M.csv --out /work/studies22/feat \
      [--workers 2] [--shard 500] [--limit N]

One record per readable manifest row (the first input.max_bytes = 16 MiB, as the product reads), in shards
(OUT/shard-<tag>-NNNNN.npz; a rerun does only the files no shard has yet). Ragged arrays are stored concatenated with counts
(<key>_n). Kept per file:

  meta    path, family, sha256, size, name (basename), format, arch
  str     distinct uint64 hashes of printable runs >= 6 bytes: the product's `strings` view as a set
  idt     distinct hashes of NUL-bounded identifier runs >= 4 bytes (`idents` view set); idt_dyn = 1 where
          (one occurrence of) the identifier lies inside the ELF .dynstr table (by file offset)
  tok     distinct hashes of the product's `tokens` words (lowercased, camelCase-split, >= 3 bytes, inside
          strings >= 6 and idents 4..5); tok_c = occurrences in the file (clipped 65535)
  sym     hashes of dynamic symbol names (symbols.py: ELF .dynsym imports/exports + DT_NEEDED, PE
          imports/exports/DLLs), sym_k = kind (0 import, 1 export, 2 library), distinct (hash, kind) pairs;
          sym_status per file
  tlsh    digest ("" where none)
  cpu_*   CPU seconds (time.process_time, this process, one thread) of: read, strings view alone, idents view
          alone, tokens view alone, the default three views together (embedlib.views.compute_views), symbols
          (parse + hash), TLSH
The bucket sketches of any size are derived from the hash sets exactly as embedlib.views.bucket_counts does.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from embedlib import views  # noqa: E402
from embedlib.config import Config, InputConfig, ViewsConfig  # noqa: E402
from embedlib.files.sources import read_path, sniff_format  # noqa: E402

import symbols  # noqa: E402

RAGGED = ("str", "idt", "idt_dyn", "tok", "tok_c", "sym", "sym_k")
SCALAR = ("path", "family", "sha256", "size", "name", "format", "arch", "tlsh", "sym_status", "cpu_read",
          "cpu_strings", "cpu_idents", "cpu_tokens", "cpu_default", "cpu_symbols", "cpu_tlsh")


def _cfg(names) -> Config:
    return Config(input=InputConfig(max_bytes=16 * 1024 * 1024), views=ViewsConfig(names=tuple(names)))


CFG = {k: _cfg(v) for k, v in {"strings": ["strings"], "idents": ["idents"], "tokens": ["tokens"],
                                 "default": ["strings", "idents", "tokens"]}.items()}


ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm", 62: "amd64", 183: "arm64",
                243: "riscv64", 2: "sparc", 43: "sparc64", 50: "ia64", 0: "none"}
PE_MACHINES = {0x14C: "i386", 0x8664: "amd64", 0xAA64: "arm64", 0x1C0: "arm", 0x1C4: "armnt", 0x200: "ia64"}


def arch_of(data: bytes, fmt: str) -> str:
    """CPU architecture from the header (as bench/study_cache.py; 'unknown' when unsure)."""
    import struct

    try:
        if fmt == "elf" and len(data) >= 20:
            little = data[5] == 1
            (machine,) = struct.unpack_from("<H" if little else ">H", data, 18)
            name = ELF_MACHINES.get(machine, f"elf{machine}")
            if data[4] == 2 and name in ("mips", "s390", "ppc", "arm"):
                name = {"mips": "mips64", "s390": "s390x", "ppc": "ppc64", "arm": "arm64"}[name]
            if name.startswith("mips") or name.startswith("ppc"):
                name += "el" if little else ""
            return name
        if fmt == "pe":
            (off,) = struct.unpack_from("<I", data, 0x3C)
            (machine,) = struct.unpack_from("<H", data, off + 4)
            return PE_MACHINES.get(machine, f"pe{machine:x}")
    except struct.error:
        pass
    return "unknown"


def dynstr_range(data: bytes) -> tuple[int, int]:
    """File offsets [a, b) of the ELF .dynstr (the string table of .dynsym), (0, 0) if none."""
    try:
        s = symbols.parse_lazy(data)
        if s.blob is not None and len(s.blob):
            base = np.frombuffer(data, np.uint8)
            a = s.blob.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            return a, a + len(s.blob)
    except Exception:  # noqa: BLE001
        pass
    return 0, 0


def record(path: str, family: str) -> dict | None:
    import tlsh

    t = time.process_time()
    read = read_path(path, CFG["default"].input)
    cpu_read = time.process_time() - t
    if not read.ok or not read.data:
        return None
    data = read.data
    arr = np.frombuffer(data, np.uint8)
    fmt = sniff_format(data[:4096])
    rec: dict = {"path": path, "family": family, "sha256": read.sha256, "size": read.size_bytes,
                 "name": os.path.basename(path), "format": fmt, "arch": arch_of(data, fmt), "cpu_read": cpu_read}
    for key in ("strings", "idents", "tokens", "default"):
        t = time.process_time()
        views.compute_views(data, CFG[key])
        rec[f"cpu_{key}"] = time.process_time() - t
    t = time.process_time()
    h, k, st = symbols.symbol_hashes(data)
    rec["cpu_symbols"] = time.process_time() - t
    pairs = np.unique(np.stack([h, k.astype(np.uint64)], axis=1), axis=0) if len(h) else np.zeros((0, 2), np.uint64)
    rec["sym"], rec["sym_k"], rec["sym_status"] = pairs[:, 0].copy(), pairs[:, 1].astype(np.uint8), st
    t = time.process_time()
    d = tlsh.hash(data) if len(data) >= 50 else ""
    rec["cpu_tlsh"] = time.process_time() - t
    rec["tlsh"] = "" if d in ("", "TNULL") else d
    v = ViewsConfig()
    starts, ends = views.runs(views.printable(arr), min(v.strings_min_len, v.idents_min_len))
    long = (ends - starts) >= v.strings_min_len
    rec["str"] = np.unique(views.hash_runs(arr, starts[long], ends[long]))
    si, ei = views.identifiers_among(arr, starts, ends, v.idents_min_len)
    ih = views.hash_runs(arr, si, ei)
    lo, hi = dynstr_range(data)
    inside = (si >= lo) & (ei <= hi) if hi > lo else np.zeros(len(si), bool)
    rec["idt"], inv = np.unique(ih, return_inverse=True)
    dyn = np.zeros(len(rec["idt"]), np.uint8)
    np.maximum.at(dyn, inv, inside.astype(np.uint8))
    rec["idt_dyn"] = dyn
    si2, ei2 = views.identifiers_among(arr, starts[~long], ends[~long], v.idents_min_len)
    buf, ws, we = views.word_runs(arr, np.concatenate([starts[long], si2]), np.concatenate([ends[long], ei2]),
                                  v.tokens_min_len)
    rec["tok"], c = np.unique(views.hash_runs(buf, ws, we), return_counts=True)
    rec["tok_c"] = np.minimum(c, 65535).astype(np.uint16)
    return rec


def _shard(job: tuple[list[tuple[str, str]], str]) -> str:
    rows, out = job
    import gc

    gc.disable()
    recs = [r for r in (record(p, f) for p, f in rows) if r is not None]
    arrays: dict[str, np.ndarray] = {}
    for k in SCALAR:
        arrays[k] = np.array([r[k] for r in recs])
    for k in RAGGED:
        arrays[k] = np.concatenate([r[k] for r in recs]) if recs else np.zeros(0)
        arrays[k + "_n"] = np.array([len(r[k]) for r in recs], dtype=np.int64)
    tmp = os.path.join(os.path.dirname(out), "tmp-" + os.path.basename(out))
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return out


def read_manifest(path: str) -> list[tuple[str, str]]:
    import pyarrow.csv as pc

    t = pc.read_csv(path, convert_options=pc.ConvertOptions(column_types={"path": "string", "family": "string"}))
    fam = t.column("family").to_pylist() if "family" in t.column_names else [None] * t.num_rows
    base = os.path.dirname(os.path.abspath(path))
    return [(p if os.path.isabs(p) else os.path.join(base, p), f or "") for p, f in zip(t.column("path").to_pylist(), fam)]


def done_paths(out: str) -> set[str]:
    got: set[str] = set()
    for p in glob.glob(os.path.join(out, "shard-*.npz")):
        got.update(np.load(p)["path"].tolist())
    return got


def build(manifest: str, out: str, workers: int, shard: int, limit: int | None) -> None:
    """Files of `manifest` not in any shard of `out` yet, in new shards (shard-<tag>-NNNNN.npz): a cache can
    grow with a corpus that is still being built, and the harness relabels rows from the final manifest."""
    os.makedirs(out, exist_ok=True)
    done = done_paths(out)
    files = [f for f in sorted(read_manifest(manifest)) if f[0] not in done][: limit or None]
    tag = time.strftime("%Y%m%d%H%M%S")
    jobs = [(files[i : i + shard], os.path.join(out, f"shard-{tag}-{i // shard:05d}.npz"))
            for i in range(0, len(files), shard)]
    print(f"{len(files)} new files, {len(jobs)} shards to do", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n, dst in enumerate(pool.map(_shard, jobs), 1):
            print(f"{n}/{len(jobs)} {dst} {time.perf_counter() - started:.0f}s", flush=True)


def load(out: str) -> dict[str, object]:
    """Every shard: scalars as arrays, ragged keys as lists of arrays (one per file), rows in path order."""
    parts = [dict(np.load(p)) for p in sorted(glob.glob(os.path.join(out, "shard-*.npz")))]
    parts = [p for p in parts if len(p["sha256"])]
    res: dict[str, object] = {k: np.concatenate([p[k] for p in parts]) for k in SCALAR}
    for k in RAGGED:
        lists: list[np.ndarray] = []
        for p in parts:
            lists += np.split(p[k], np.cumsum(p[k + "_n"])[:-1])
        res[k] = lists
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard", type=int, default=500)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    build(a.manifest, a.out, a.workers, a.shard, a.limit)


if __name__ == "__main__":
    main()
