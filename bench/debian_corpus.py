"""Build a corpus of real executables from Debian's registry, installing nothing.

  python bench/debian_corpus.py --output runs/debian                 # the seed's 3-package BN-study corpus
  python -m jobs.bn_study --corpus runs/debian/manifest.csv --views top --epochs 5

  nice -n 10 python bench/debian_corpus.py --output /work/corpora/debian-multi \\
      --archs amd64,arm64,armhf,i386,mips64el,ppc64el,s390x --target-files 30000 --families 450
      # a retrieval corpus (issue 12): ELF and PE, hundreds of source-package families, 7 architectures

For every package x architecture: `apt-get download PKG:ARCH` into OUTPUT/debs, `dpkg -x` into
OUTPUT/tree/ARCH/PKG (ARCH = 'all' for architecture-independent packages), then everything but regular ELF,
PE and Mach-O files (by magic, embedlib.files.sources.sniff_format) is deleted from the tree and the survivors are
listed in TREE/.index.json (size, sha256, format, machine). Explicit --packages / --extra-packages /
--packages-file give families = binary package by default (the seed's setting: libc6, libc6-dbg,
postgresql-15 on bookworm's nine architectures, about 5,000 files in 3 families).

--target-files switches on selection from apt's Packages indices, family = SOURCE package:
  1. PE families: the seeds in debian_packages.PE_SEEDS (wine, mingw-w64 runtimes and libraries, EFI
     applications, NSIS stubs, ...) on every arch they exist for, plus every .NET package once.
  2. ELF families: sources in a salted-hash order; per source up to --max-packages-per-source arch-specific
     program packages. Each is probed on the first arch and kept when it yields >= --min-programs distinct
     executable names; kept sources are then fetched for every arch. This stops once the expected file
     count reaches --target-files and --families families are in.
  3. Files: unique by sha256 corpus-wide (first by family, arch, package, path), at most --max-per-family
     per family (salted-hash choice), families below --min-family-files dropped.

Outputs: OUTPUT/manifest.csv (path,family: what every embedlib job takes), OUTPUT/corpus.parquet and
corpus.csv (path, family, package, arch, format, machine, size_bytes, sha256), OUTPUT/summary.json.

apt runs with a private state (OUTPUT/apt: package lists, cache, lock) and foreign architectures given by
`-o APT::Architectures=...`: the machine's own apt lists, dpkg architectures and dpkg database are left
alone. `apt-get update` runs once (again only with --refresh). Trees, then .debs, are reused on reruns; a
package that apt refuses for one arch is reported in summary.json and skipped. Too heavy for CI: never
called by the tests.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import debian_packages as dp  # noqa: E402

from embedlib.files.corpus import write_manifest  # noqa: E402
from embedlib.files.inputs import InputFile  # noqa: E402
from embedlib.files.sources import SNIFF_BYTES, sniff_format  # noqa: E402

BOOKWORM_ARCHS = ("amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el", "s390x")
DEFAULT_PACKAGES = ("libc6", "libc6-dbg", "postgresql-15")
INDEX = ".index.json"


def apt_options(root: str, archs: list[str]) -> list[str]:
    lists, cache = os.path.join(root, "lists"), os.path.join(root, "cache")
    for d in (os.path.join(lists, "partial"), os.path.join(cache, "archives", "partial")):
        os.makedirs(d, exist_ok=True)
    return ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}",
            "-o", f"APT::Architectures={','.join(archs)}",
            "-o", "APT::Sandbox::User=root",  # downloads land in our own folder, which _apt cannot write
            "-q"]


def apt_update(opts: list[str], root: str, archs: list[str], refresh: bool) -> list[str]:
    """Run `apt-get update` once; returns apt's error lines. An index that fails (measured here: the security
    suite's Packages for armhf, i386 and ppc64el, "File has unexpected size ... Mirror sync in progress?")
    is not fatal as long as every architecture has its main Packages list: apt then downloads the main
    suite's version of a package instead of the security update."""
    lists = os.path.join(root, "lists")

    def missing() -> list[str]:
        return [a for a in archs if not glob.glob(os.path.join(lists, f"*_dists_*_main_binary-{a}_Packages*"))]

    if not refresh and not missing():
        print(f"apt lists already in {lists} (use --refresh to update)")
        return []
    started = time.perf_counter()
    proc = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True)
    errors = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("E:")]
    print(f"apt-get update: exit {proc.returncode} in {time.perf_counter() - started:.1f}s", flush=True)
    for line in errors:
        print(f"  {line}")
    if missing():
        raise SystemExit(f"apt-get update left no Packages list for {missing()}:\n{proc.stdout}\n{proc.stderr}")
    return errors


def _deb_path(package: str, arch: str, debs: str) -> str | None:
    found = glob.glob(os.path.join(debs, f"{glob.escape(package)}_*_{arch}.deb"))
    return max(found, key=os.path.getmtime) if found else None


def _apt_download(opts: list[str], specs: list[str], debs: str) -> tuple[int, str]:
    proc = subprocess.run(["apt-get", *opts, "download", *specs], cwd=debs, capture_output=True, text=True)
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith(("E:", "W:"))]
    return proc.returncode, " ".join(lines) or f"apt-get exited {proc.returncode}"


def download_many(opts: list[str], items: list[tuple[str, str]], debs: str,
                  chunk: int = 40) -> dict[tuple[str, str], str]:
    """Fetch (package, arch) pairs whose .deb is not in `debs` yet, `chunk` per apt call (apt's start-up,
    about 4 s here, dominates small downloads); a chunk that fails is retried one package at a time, so one
    refusal costs only itself. Returns {(package, arch): apt's message} for the refused ones."""
    todo = [(p, a) for p, a in items if _deb_path(p, a, debs) is None]
    refused: dict[tuple[str, str], str] = {}
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        spec = {item: item[0] if item[1] == "all" else f"{item[0]}:{item[1]}" for item in part}
        rc, _msg = _apt_download(opts, list(spec.values()), debs)
        for item in part:
            if _deb_path(*item, debs) is not None:
                continue
            rc, msg = _apt_download(opts, [spec[item]], debs) if rc else (1, "missing after download")
            if _deb_path(*item, debs) is None:
                refused[item] = msg
    return refused


_ELF_MACHINES = {2: "sparc", 3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm", 43: "sparc64",
                 62: "x86-64", 183: "aarch64", 243: "riscv", 258: "loongarch"}
_PE_MACHINES = {0x14C: "i386", 0x8664: "x86-64", 0xAA64: "aarch64", 0x1C0: "arm", 0x1C2: "arm", 0x1C4: "arm",
                0x200: "ia64", 0xEBC: "efi-bytecode"}
# The CPU a Debian architecture's own code is for; a file of another known CPU in that arch's package was
# cross-built (mingw-w64 runtime DLLs on every host, grub-efi-ia32-bin on amd64): the same build for the
# same CPU also comes from another host, so it would be a near-copy (not byte-identical: timestamps).
HOST_MACHINE = {"amd64": "x86-64", "i386": "i386", "arm64": "aarch64", "armhf": "arm", "armel": "arm",
                "mips64el": "mips", "mipsel": "mips", "ppc64el": "ppc64", "s390x": "s390", "riscv64": "riscv"}
_MACHO_MACHINES = {7: "i386", 0x01000007: "x86-64", 12: "arm", 0x0100000C: "aarch64", 18: "ppc", 0x01000012: "ppc64"}


def machine_of(head: bytes, fmt: str) -> str:
    """CPU from the header: ELF e_machine, PE Machine ('cil' for a .NET assembly, whose Machine is nominal),
    '' when unknown. Pure and bounds-checked."""
    try:
        if fmt == "elf":
            endian = "<" if head[5] == 1 else ">"
            (code,) = struct.unpack_from(endian + "H", head, 18)
            return _ELF_MACHINES.get(code, f"elf-{code}")
        if fmt == "pe":
            (off,) = struct.unpack_from("<I", head, 0x3C)
            (code,) = struct.unpack_from("<H", head, off + 4)
            opt = off + 24
            (magic,) = struct.unpack_from("<H", head, opt)
            clr_dir = opt + (96 if magic == 0x10B else 112) + 14 * 8
            (clr_rva,) = struct.unpack_from("<I", head, clr_dir)
            return "cil" if clr_rva else _PE_MACHINES.get(code, f"pe-{code:#x}")
        if fmt == "macho":
            magic = head[:4]
            if magic in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
                return "fat"
            endian = "<" if magic in (b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe") else ">"
            (code,) = struct.unpack_from(endian + "i", head, 4)
            return _MACHO_MACHINES.get(code, f"macho-{code:#x}")
    except (struct.error, IndexError):
        return ""
    return ""


def unpack_and_index(deb: str, dest: str, formats: frozenset[str], max_bytes: int) -> list[dict]:
    """`dpkg -x` into dest, delete everything that is not a regular file of `formats` under max_bytes, and
    record the survivors in dest/.index.json. A dest that has an index is reused as it is."""
    index = os.path.join(dest, INDEX)
    if os.path.exists(index):
        with open(index) as fh:
            return json.load(fh)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    subprocess.run(["dpkg", "-x", deb, dest], check=True, capture_output=True)
    kept = []
    for dirpath, dirs, names in os.walk(dest, topdown=False):
        for name in dirs:  # links to directories are listed here, not in names
            if os.path.islink(os.path.join(dirpath, name)):
                os.unlink(os.path.join(dirpath, name))
        for name in names:
            path = os.path.join(dirpath, name)
            keep = None
            if (not os.path.islink(path) and os.path.isfile(path) and 0 < os.path.getsize(path) <= max_bytes
                    and path.isprintable() and _utf8(path)):
                with open(path, "rb") as fh:
                    head = fh.read(SNIFF_BYTES)
                    fmt = sniff_format(head)
                    machine = machine_of(head, fmt)
                    # EM_NONE: an ELF container of something other than machine code (Guile's .go objects)
                    if fmt in formats and not (fmt == "elf" and machine == "elf-0"):
                        digest = hashlib.sha256(head)
                        for block in iter(lambda: fh.read(1 << 20), b""):
                            digest.update(block)
                        keep = {"rel": os.path.relpath(path, dest), "format": fmt, "machine": machine,
                                "size": os.path.getsize(path), "sha256": digest.hexdigest()}
            if keep:
                kept.append(keep)
            else:
                os.unlink(path)
        if dirpath != dest and not os.listdir(dirpath):
            os.rmdir(dirpath)
    kept.sort(key=lambda r: r["rel"])
    with open(index + ".tmp", "w") as fh:
        json.dump(kept, fh)
    os.replace(index + ".tmp", index)
    return kept


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a name that is not UTF-8: manifests and Parquet hold text
        return False


class Fetcher:
    """Download + unpack + index of (package, arch) pairs, reusing what an earlier run left."""

    def __init__(self, opts: list[str], output: str, formats: frozenset[str], max_bytes: int, jobs: int,
                 delete_debs: bool):
        self.opts, self.formats, self.max_bytes, self.jobs = opts, formats, max_bytes, jobs
        self.debs, self.tree = os.path.join(output, "debs"), os.path.join(output, "tree")
        self.delete_debs = delete_debs
        os.makedirs(self.debs, exist_ok=True)
        self.indexed: dict[tuple[str, str], list[dict]] = {}
        self.refused: dict[str, str] = {}
        self.deb_bytes = 0

    def dest(self, package: str, arch: str) -> str:
        return os.path.join(self.tree, arch, package)

    def fetch(self, items: list[tuple[str, str]]) -> None:
        items = [i for i in dict.fromkeys(items) if i not in self.indexed and f"{i[0]}:{i[1]}" not in self.refused]
        fresh = [i for i in items if not os.path.exists(os.path.join(self.dest(*i), INDEX))]
        for (package, arch), why in download_many(self.opts, fresh, self.debs).items():
            self.refused[f"{package}:{arch}"] = why
            print(f"  {package}:{arch}: refused: {why}", flush=True)

        def one(item: tuple[str, str]) -> tuple[tuple[str, str], list[dict] | None, int, str]:
            """(item, index rows or None, bytes of the .deb unpacked now, why it failed)"""
            dest = self.dest(*item)
            deb = None if os.path.exists(os.path.join(dest, INDEX)) else _deb_path(*item, self.debs)
            if deb is None and not os.path.exists(os.path.join(dest, INDEX)):
                return item, None, 0, ""
            size = os.path.getsize(deb) if deb else 0
            try:
                rows = unpack_and_index(deb or "", dest, self.formats, self.max_bytes)
            except (subprocess.CalledProcessError, OSError) as exc:
                shutil.rmtree(dest, ignore_errors=True)
                err = exc.stderr.decode(errors="replace") if isinstance(exc, subprocess.CalledProcessError) else exc
                return item, None, 0, f"unpack failed: {str(err).strip()[:200]}"
            if deb and self.delete_debs:
                os.unlink(deb)
            return item, rows, size, ""

        with ThreadPoolExecutor(max(1, self.jobs)) as pool:
            for item, rows, size, why in pool.map(one, items):
                self.deb_bytes += size
                if rows is not None:
                    self.indexed[item] = rows
                elif why:
                    self.refused[f"{item[0]}:{item[1]}"] = why
                    print(f"  {item[0]}:{item[1]}: {why}", flush=True)


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def read_packages_file(path: str, archs: list[str]) -> list[tuple[str, list[str]]]:
    """Lines 'PACKAGE [ARCH,ARCH...]' ('#' starts a comment); no archs = every --archs."""
    out = []
    with open(path) as fh:
        for line in fh:
            words = line.split("#", 1)[0].split()
            if words:
                out.append((words[0], _csv(words[1]) if len(words) > 1 else list(archs)))
    return out


def select_auto(args, fetcher: Fetcher, indices: dict[str, dict[str, dp.Pkg]],
                families: dict[str, set[tuple[str, str]]]) -> dict:
    """Add PE then ELF source families to `families` (source -> {(package, arch)}), fetching as it goes.
    Returns selection figures for the summary."""
    archs, cap = args.archs, args.max_per_family  # both resolved by main
    expected: dict[str, int] = {}

    def count(source: str) -> int:
        return min(cap or 10**9, sum(len(fetcher.indexed.get(i, [])) for i in families[source]))

    if not args.no_pe:
        for source, items in dp.pe_candidates(indices, archs).items():
            families[source].update(items)
        fetcher.fetch([i for s in list(families) for i in families[s]])
        for source in list(families):
            files = [r for i in families[source] for r in fetcher.indexed.get(i, [])]
            if not any(r["format"] == "pe" for r in files):
                del families[source]
            elif count(source) >= args.min_family_files:  # smaller ones stay in, but will be dropped
                expected[source] = count(source)
        print(f"PE families: {len(expected)}, files (capped) {sum(expected.values())}", flush=True)

    candidates = dp.elf_candidates(indices, archs, min_archs=args.min_archs,
                                   max_packages=args.max_packages_per_source,
                                   max_deb_bytes=int(args.max_deb_mb * 1e6), salt=args.salt)
    probe_arch, probed, rejected = archs[0], 0, Counter()
    position = 0
    while position < len(candidates) and (sum(expected.values()) < args.target_files or len(expected) < args.families):
        batch = [c for c in candidates[position:position + args.probe_batch] if c[0] not in expected]
        position += args.probe_batch
        fetcher.fetch([(p, probe_arch) for _s, names in batch for p in names])
        for source, names in batch:
            if sum(expected.values()) >= args.target_files and len(expected) >= args.families:
                break
            probed += 1
            rows = [r for p in names for r in fetcher.indexed.get((p, probe_arch), [])]
            programs = {os.path.basename(r["rel"]) for r in rows}
            if len(programs) < args.min_programs:
                rejected["too few programs" if (names[0], probe_arch) in fetcher.indexed else "probe failed"] += 1
                continue
            items = {(p, a) for p in names for a in archs if p in indices[a]}
            families[source].update(items)
            probe_files = {p: len(fetcher.indexed.get((p, probe_arch), [])) for p in names}
            expected[source] = min(cap or 10**9, sum(probe_files[p] for p, _a in items))
        print(f"  probed {probed} sources: {len(expected)} families, ~{sum(expected.values())} files expected",
              flush=True)
    order = {a: n for n, a in enumerate(archs + ["all"])}
    wanted = sorted({i for s in families for i in families[s]}, key=lambda i: (order.get(i[1], 99), i))
    fetcher.fetch(wanted)
    return {"sources_probed": probed, "rejected": dict(rejected), "candidate_sources": len(candidates),
            "expected_files": sum(expected.values())}


def collect(fetcher: Fetcher, families: dict[str, set[tuple[str, str]]], archs: list[str], cap: int,
            min_files: int, salt: str) -> tuple[list[dict], dict]:
    """One row per unique file, capped per family; and the counts of what was left out. Files built for a
    known CPU other than their package's architecture are left out (see HOST_MACHINE)."""
    order = {a: n for n, a in enumerate(archs + ["all"])}
    known = set(HOST_MACHINE.values())
    rows, seen, dropped = [], set(), Counter()
    for family in sorted(families):
        for package, arch in sorted(families[family], key=lambda i: (order.get(i[1], 99), i[0])):
            for r in fetcher.indexed.get((package, arch), []):
                if arch in HOST_MACHINE and r["machine"] in known and r["machine"] != HOST_MACHINE[arch]:
                    dropped["foreign_machine"] += 1
                    continue
                if r["sha256"] in seen:
                    dropped["duplicate_content"] += 1
                    continue
                seen.add(r["sha256"])
                rows.append({"path": os.path.join(fetcher.dest(package, arch), r["rel"]), "family": family,
                             "package": package, "arch": arch, "format": r["format"], "machine": r["machine"],
                             "size_bytes": r["size"], "sha256": r["sha256"],
                             "key": f"{arch}/{package}/{r['rel']}"})
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)
    out = []
    for family, members in by_family.items():
        keep = dp.cap_family([m["key"] for m in members], cap, salt)
        dropped["over_family_cap"] += len(members) - len(keep)
        if len(keep) < min_files:
            dropped["small_family_files"] += len(keep)
            dropped["small_families"] += 1
            continue
        out += [m for m in members if m["key"] in keep]
    for r in out:
        del r["key"]
    return out, dict(dropped)


def _distribution(sizes: list[int]) -> dict:
    if not sizes:
        return {}
    q = statistics.quantiles(sizes, n=4, method="inclusive") if len(sizes) > 1 else [sizes[0]] * 3
    return {"min": min(sizes), "p25": q[0], "median": q[1], "p75": q[2], "max": max(sizes),
            "families_ge_5": sum(s >= 5 for s in sizes), "families_ge_10": sum(s >= 10 for s in sizes),
            "families_ge_50": sum(s >= 50 for s in sizes)}


def summarize(rows: list[dict], extra: dict) -> dict:
    fam = Counter(r["family"] for r in rows)
    pe_fams = Counter(r["family"] for r in rows if r["format"] == "pe")
    return {"files": len(rows), "families": len(fam), "bytes": sum(r["size_bytes"] for r in rows),
            "per_arch": dict(Counter(r["arch"] for r in rows).most_common()),
            "per_format": dict(Counter(r["format"] for r in rows).most_common()),
            "per_machine": dict(Counter(r["machine"] for r in rows).most_common()),
            "families_with_pe": len(pe_fams), "pe_files_per_family": dict(pe_fams.most_common()),
            "family_size": _distribution(sorted(fam.values())),
            "largest_families": dict(fam.most_common(15)), **extra}


def write_outputs(rows: list[dict], output: str) -> str:
    manifest = write_manifest([InputFile(r["path"], r["family"]) for r in rows], os.path.join(output, "manifest.csv"))
    cols = ["path", "family", "package", "arch", "format", "machine", "size_bytes", "sha256"]
    table = pa.table({c: [r[c] for r in rows] for c in cols})
    pq.write_table(table, os.path.join(output, "corpus.parquet"))
    pa_csv.write_csv(table, os.path.join(output, "corpus.csv"))
    return manifest


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/debian")
    p.add_argument("--packages", type=_csv, default=None, help=f"default: {','.join(DEFAULT_PACKAGES)} "
                   "(none when --target-files or --packages-file is given)")
    p.add_argument("--archs", type=_csv, default=list(BOOKWORM_ARCHS), help="the first one is the probe arch")
    p.add_argument("--extra-packages", type=_csv, default=[],
                   help="more families (for the study's multi view), downloaded for --extra-archs")
    p.add_argument("--extra-archs", type=_csv, default=None, help="default: --archs")
    p.add_argument("--packages-file", help="lines 'PACKAGE [ARCH,...]'; no arch list = every --archs")
    p.add_argument("--refresh", action="store_true", help="run apt-get update even if lists exist")
    p.add_argument("--target-files", type=int, default=0, help="select packages from the indices (0: off)")
    p.add_argument("--families", type=int, default=450, help="with --target-files: at least this many")
    p.add_argument("--family-by", choices=("source", "package"), default=None,
                   help="default: source with --target-files, else package")
    p.add_argument("--max-per-family", type=int, default=None, help="default: 300 with --target-files, else 0 "
                   "(no cap)")
    p.add_argument("--min-family-files", type=int, default=None, help="default: 5 with --target-files, else 1")
    p.add_argument("--min-programs", type=int, default=3, help="distinct file names a probed ELF source needs")
    p.add_argument("--max-packages-per-source", type=int, default=4)
    p.add_argument("--min-archs", type=int, default=4, help="archs (of --archs) an ELF package must exist for")
    p.add_argument("--max-deb-mb", type=float, default=15.0, help="larger ELF candidate .debs are not probed")
    p.add_argument("--max-file-mb", type=float, default=64.0, help="larger files are dropped")
    p.add_argument("--formats", type=_csv, default=["elf", "pe", "macho"])
    p.add_argument("--no-pe", action="store_true", help="with --target-files: no PE seed/.NET families")
    p.add_argument("--probe-batch", type=int, default=40, help="sources probed per apt call")
    p.add_argument("--salt", default="embedlib", help="for the stable hash orders (sources, family caps)")
    p.add_argument("--jobs", type=int, default=2, help="parallel dpkg -x")
    p.add_argument("--delete-debs", action="store_true", help="remove each .deb once unpacked (saves disk)")
    args = p.parse_args(argv)
    auto = args.target_files > 0
    family_by = args.family_by or ("source" if auto else "package")
    cap = args.max_per_family if args.max_per_family is not None else (300 if auto else 0)
    args.max_per_family = cap
    min_files = args.min_family_files if args.min_family_files is not None else (5 if auto else 1)
    args.min_family_files = min_files
    if args.packages is None:
        args.packages = [] if (auto or args.packages_file) else list(DEFAULT_PACKAGES)

    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    extra_archs = args.extra_archs or args.archs
    explicit = [(pkg, list(args.archs)) for pkg in args.packages]
    explicit += [(pkg, list(extra_archs)) for pkg in args.extra_packages]
    if args.packages_file:
        explicit += read_packages_file(args.packages_file, args.archs)
    all_archs = sorted(set(args.archs) | {a for _p, archs in explicit for a in archs})
    apt_root = os.path.join(output, "apt")
    opts = apt_options(apt_root, all_archs)
    update_errors = apt_update(opts, apt_root, all_archs, args.refresh)
    started = time.perf_counter()
    indices = {a: dp.read_index(os.path.join(apt_root, "lists"), a) for a in all_archs}
    fetcher = Fetcher(opts, output, frozenset(args.formats), int(args.max_file_mb * 2**20), args.jobs,
                      args.delete_debs)

    families: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for pkg, archs in explicit:
        for arch in dp.where(indices, pkg, archs) or archs:  # unknown names go to apt, which says why
            known = next((indices[a][pkg] for a in archs if pkg in indices[a]), None)
            families[known.source if (known and family_by == "source") else pkg].add((pkg, arch))
    fetcher.fetch([i for f in list(families) for i in families[f]])
    selection = select_auto(args, fetcher, indices, families) if auto else {}

    rows, dropped = collect(fetcher, families, args.archs, cap, min_files, args.salt)
    manifest = write_outputs(rows, output)
    summary = summarize(rows, {
        "manifest": manifest, "corpus": os.path.join(output, "corpus.parquet"), "dropped": dropped,
        "selection": selection, "refused": fetcher.refused, "apt_update_errors": update_errors,
        "deb_megabytes_unpacked_this_run": round(fetcher.deb_bytes / 1e6, 1),
        "settings": {"family_by": family_by, "max_per_family": cap, "min_family_files": min_files,
                     "archs": args.archs, "formats": args.formats, "salt": args.salt},
        "seconds": round(time.perf_counter() - started, 1),
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv])})
    with open(os.path.join(output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("pe_files_per_family", "refused")}, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["files"] else 1)
