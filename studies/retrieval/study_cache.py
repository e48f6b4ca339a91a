"""Per-file cache for the retrieval study (issue 12): views, raw string hashes, digests, metadata; never in CI.

  nice -n 10 python studies/retrieval/study_cache.py --manifest M.csv --cache runs/study/cache [--workers 2] [--ssdeep]

One record per readable manifest row (first input.max_bytes of the file, as the product reads it), written in
shards of --shard files (DIR/shard-NNNNN.npz); a rerun skips finished shards. Ragged arrays (hash sets) are
stored concatenated with offsets. What is kept:

  meta         path, family, sha256, size, name (basename), format, arch (ELF e_machine / PE machine)
  digests      tlsh (and ssdeep with --ssdeep; pure-Python ppdeep costs ~0.2 us/byte)
  views        image64, image128 (byteplots), bytehist (embedlib.views)
  hashes       string hashes (distinct printable runs >= 4 bytes) with their lengths and kinds (KIND_BITS),
               ident hashes (>= 3) with lengths, token hashes (words of >= 3 alphanumerics inside strings >= 6):
               every strings/idents sketch of any min length >= those and any bucket count is derived from them
               exactly as embedlib.views computes it
  crc          CRC32 (zlib) of every distinct printable string >= 6 bytes: the issue's baseline, literally
  timings      CPU seconds per file of: tlsh, views (image64+strings+idents+bytehist), strings sketch alone
"""

from __future__ import annotations

import argparse
import glob
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from embedlib import views

from embedlib.views import raster  # noqa: E402
from embedlib.config import Config, InputConfig, ViewsConfig  # noqa: E402
from embedlib.files.corpus import read_manifest  # noqa: E402
from embedlib.files.sources import read_file, sniff_format  # noqa: E402

ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm", 62: "amd64", 183: "arm64",
                243: "riscv64", 258: "loong64", 2: "sparc", 43: "sparc64", 50: "ia64", 15: "hppa", 4: "m68k",
                42: "sh", 9: "s370", 0: "none"}
PE_MACHINES = {0x14C: "i386", 0x8664: "amd64", 0xAA64: "arm64", 0x1C0: "arm", 0x1C4: "armnt", 0x200: "ia64",
               0xEBC: "efi"}


def arch_of(data: bytes, fmt: str) -> str:
    """CPU architecture from the header (bounds-checked; 'unknown' when unsure). ELF mips: + '64'/'el'."""
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


KIND_BITS = {"space": 1, "slash": 2, "percent": 4, "ident": 8, "digit": 16, "nul_bounded": 32}
_ALNUM = np.zeros(256, bool)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_":
    _ALNUM[_c] = True


def run_kinds(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint8 bit set per run (KIND_BITS): what sort of string it is."""
    kinds = np.zeros(len(starts), np.uint8)
    if not len(starts):
        return kinds
    lengths = ends - starts
    idx = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    b = arr[idx]
    offsets = np.cumsum(lengths) - lengths
    for name, m in (("space", b == 0x20), ("slash", b == 0x2F), ("percent", b == 0x25),
                    ("digit", (b >= 0x30) & (b <= 0x39))):
        kinds |= np.where(np.add.reduceat(m.astype(np.int64), offsets) > 0, KIND_BITS[name], 0).astype(np.uint8)
    all_ident = np.add.reduceat((~views._IDENT[b]).astype(np.int64), offsets) == 0
    kinds |= np.where(all_ident, KIND_BITS["ident"], 0).astype(np.uint8)
    nul = (starts > 0) & (ends < len(arr))
    nul[nul] = (arr[starts[nul] - 1] == 0) & (arr[ends[nul]] == 0)
    kinds |= np.where(nul, KIND_BITS["nul_bounded"], 0).astype(np.uint8)
    return kinds


def distinct(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, with_kinds: bool = False):
    """Distinct run hashes (as embedlib.views hashes them), each run's length (and kind bits)."""
    h = views.hash_runs(arr, starts, ends)
    h, first = np.unique(h, return_index=True)
    out = (h, (ends - starts)[first].astype(np.int32))
    return out + (run_kinds(arr, starts[first], ends[first]),) if with_kinds else out


def token_runs(arr: np.ndarray, min_len: int, string_min_len: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Alphanumeric/underscore words of >= min_len bytes inside printable strings of >= string_min_len."""
    s, e = views.runs(views.printable(arr), string_min_len)
    inside = np.zeros(len(arr) + 1, np.int8)
    np.add.at(inside, s, 1)
    np.add.at(inside, e, -1)
    inside = np.cumsum(inside[:-1], dtype=np.int8).astype(bool)
    return views.runs(_ALNUM[arr] & inside, min_len)


def record(path: str, family: str, cfg: Config, with_ssdeep: bool) -> dict | None:
    import tlsh

    read = read_file(path, cfg.input)
    if not read.ok or not read.data:
        return None
    data = read.data
    arr = np.frombuffer(data, dtype=np.uint8)
    fmt = sniff_format(data[:4096])
    rec: dict = {"path": path, "family": family, "sha256": read.sha256, "size": read.size_bytes,
                 "name": os.path.basename(path), "format": fmt, "arch": arch_of(data, fmt)}
    t = time.process_time()
    digest = tlsh.hash(data) if len(data) >= 50 else ""
    rec["tlsh_cpu_s"] = time.process_time() - t
    rec["tlsh"] = "" if digest in ("", "TNULL") else digest
    if with_ssdeep:
        import ppdeep

        t = time.process_time()
        rec["ssdeep"] = ppdeep.hash(data)
        rec["ssdeep_cpu_s"] = time.process_time() - t
    t = time.process_time()
    v = views.compute_views(data, cfg)
    rec["views_cpu_s"] = time.process_time() - t
    t = time.process_time()
    views.bucket_counts(views.string_hashes(arr, 6), cfg.views.buckets)
    rec["strings_cpu_s"] = time.process_time() - t
    rec["image64"] = v["image"]
    rec["image128"] = raster.to_image(data, 128)
    rec["bytehist"] = v["bytehist"]
    rec["str_h"], rec["str_len"], rec["str_kind"] = distinct(arr, *views.runs(views.printable(arr), 4), True)
    rec["id_h"], rec["id_len"] = distinct(arr, *views.ident_runs(arr, 3))
    rec["tok_h"], rec["tok_len"] = distinct(arr, *token_runs(arr, 3))
    starts, ends = views.runs(views.printable(arr), 6)
    t = time.process_time()
    crcs = {zlib.crc32(data[s:e]) for s, e in zip(starts.tolist(), ends.tolist())}
    rec["crc_cpu_s"] = time.process_time() - t
    rec["crc"] = np.array(sorted(crcs), dtype=np.uint32)
    return rec


RAGGED = ("str_h", "str_len", "str_kind", "id_h", "id_len", "tok_h", "tok_len", "crc")
DENSE = ("image64", "image128", "bytehist")
SCALAR = ("path", "family", "sha256", "size", "name", "format", "arch", "tlsh", "tlsh_cpu_s", "views_cpu_s",
          "strings_cpu_s", "crc_cpu_s", "ssdeep", "ssdeep_cpu_s")


def _shard(args: tuple[list[tuple[str, str]], str, bool]) -> str:
    rows, out, with_ssdeep = args
    cfg = Config(input=InputConfig(max_bytes=16 * 1024 * 1024), views=ViewsConfig(names=views.VIEW_NAMES))
    recs = [r for r in (record(p, f, cfg, with_ssdeep) for p, f in rows) if r is not None]
    arrays: dict[str, np.ndarray] = {}
    for k in SCALAR:
        if recs and k in recs[0]:
            arrays[k] = np.array([r[k] for r in recs])
    for k in DENSE:
        arrays[k] = np.stack([r[k] for r in recs]) if recs else np.zeros(0)
    for k in RAGGED:
        arrays[k] = np.concatenate([r[k] for r in recs]) if recs else np.zeros(0)
        arrays[k + "_n"] = np.array([len(r[k]) for r in recs], dtype=np.int64)
    tmp = os.path.join(os.path.dirname(out), "tmp-" + os.path.basename(out))
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return out


def cached_paths(caches: list[str]) -> set[str]:
    out: set[str] = set()
    for cache in caches:
        for p in glob.glob(os.path.join(cache, "shard-*.npz")):
            out.update(np.load(p)["path"].tolist())
    return out


def build(manifest: str, cache: str, workers: int, shard: int, with_ssdeep: bool, limit: int | None,
          skip_caches: list[str] | None = None) -> None:
    files = [f for f in read_manifest(manifest) if f.family]
    files = sorted(files, key=lambda f: f.path)[: limit or None]
    if skip_caches:  # paths another cache holds already (e.g. cached before the manifest was final)
        done = cached_paths(skip_caches)
        files = [f for f in files if f.path not in done]
    os.makedirs(cache, exist_ok=True)
    jobs = []
    for i in range(0, len(files), shard):
        out = os.path.join(cache, f"shard-{i // shard:05d}.npz")
        if not os.path.exists(out):
            jobs.append(([(f.path, f.family) for f in files[i : i + shard]], out, with_ssdeep))
    print(f"{len(files)} files, {len(jobs)} shards to do", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n, out in enumerate(pool.map(_shard, jobs), 1):
            print(f"{n}/{len(jobs)} {out} {time.perf_counter() - started:.0f}s", flush=True)


def load(cache: str, manifest: str | None = None) -> dict[str, object]:
    """All shards as one dict: scalars and dense arrays stacked; ragged ones as lists of arrays. `cache` may be
    several folders joined by commas; with `manifest`, only its paths are kept, with its families."""
    files = [p for c in cache.split(",") for p in sorted(glob.glob(os.path.join(c, "shard-*.npz")))]
    parts = [dict(np.load(p, allow_pickle=False)) for p in files]
    parts = [p for p in parts if len(p["sha256"])]
    if manifest:
        family = {f.path: f.family for f in read_manifest(manifest) if f.family}
        for p in parts:
            keep = np.array([x in family for x in p["path"].tolist()], dtype=bool)
            for k in RAGGED:
                if k in p:
                    pieces = np.split(p[k], np.cumsum(p[k + "_n"])[:-1])
                    p[k] = np.concatenate([x for x, ok in zip(pieces, keep) if ok] or [p[k][:0]])
                    p[k + "_n"] = p[k + "_n"][keep]
            for k in SCALAR + DENSE:
                if k in p:
                    p[k] = p[k][keep]
            if len(p["path"]):
                p["family"] = np.array([family[x] for x in p["path"].tolist()])
        parts = [p for p in parts if len(p["sha256"])]
    out: dict[str, object] = {}
    for k in SCALAR + DENSE:
        if all(k in p for p in parts):
            out[k] = np.concatenate([p[k] for p in parts])
    for k in RAGGED:
        if not all(k in p for p in parts):
            continue
        lists: list[np.ndarray] = []
        for p in parts:
            lists += np.split(p[k], np.cumsum(p[k + "_n"])[:-1])
        out[k] = lists
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard", type=int, default=500)
    ap.add_argument("--ssdeep", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--skip-caches", default=None, help="comma-separated caches whose paths are done")
    a = ap.parse_args()
    build(a.manifest, a.cache, a.workers, a.shard, a.ssdeep, a.limit,
          a.skip_caches.split(",") if a.skip_caches else None)


if __name__ == "__main__":
    main()
