"""Build a corpus of real executables from Debian's registry, installing nothing.

  python bench/debian_corpus.py --output runs/debian
  python -m jobs.bn_study --corpus runs/debian/manifest.csv --views top --epochs 5

For every package x architecture: `apt-get download PKG:ARCH` into OUTPUT/debs, `dpkg -x` into
OUTPUT/tree/ARCH/PKG, then every regular (non-symlink) ELF file below is one manifest row, family = PKG.
The default (libc6, libc6-dbg, postgresql-15 on all of bookworm's nine architectures) gives about 5,000
files in 3 families, the seed's setting; --extra-packages adds families for a multi-family view.

apt runs with a private state (OUTPUT/apt: package lists, cache, lock) and foreign architectures given by
`-o APT::Architectures=...`: the machine's own apt lists, dpkg architectures and dpkg database are left
alone. `apt-get update` runs once (again only with --refresh). Downloads and unpacked trees are reused on
reruns. Too heavy for CI: never called by the tests.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

from embedlib.corpus import write_manifest
from embedlib.inputs import InputFile
from embedlib.sources import sniff_format

BOOKWORM_ARCHS = ("amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el", "s390x")
DEFAULT_PACKAGES = ("libc6", "libc6-dbg", "postgresql-15")


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


def download(opts: list[str], package: str, arch: str, debs: str) -> tuple[str | None, str]:
    """(path of PKG_VERSION_ARCH.deb or None, apt's message when it refused)."""
    found = glob.glob(os.path.join(debs, f"{package}_*_{arch}.deb"))
    if found:
        return found[0], ""
    proc = subprocess.run(["apt-get", *opts, "download", f"{package}:{arch}"], cwd=debs, capture_output=True,
                          text=True)
    found = glob.glob(os.path.join(debs, f"{package}_*_{arch}.deb"))
    if proc.returncode or not found:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith(("E:", "W:"))]
        return None, " ".join(lines) or f"apt-get exited {proc.returncode}"
    return found[0], ""


def unpack(deb: str, dest: str) -> None:
    if os.path.isdir(dest) and os.path.exists(os.path.join(dest, ".unpacked")):
        return
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    subprocess.run(["dpkg", "-x", deb, dest], check=True)
    open(os.path.join(dest, ".unpacked"), "w").close()


def elf_files(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) == 0:
                continue
            with open(path, "rb") as fh:
                if sniff_format(fh.read(4096)) == "elf":
                    out.append(path)
    return sorted(out)


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/debian")
    p.add_argument("--packages", type=_csv, default=list(DEFAULT_PACKAGES))
    p.add_argument("--archs", type=_csv, default=list(BOOKWORM_ARCHS))
    p.add_argument("--extra-packages", type=_csv, default=[],
                   help="more families (for the study's multi view), downloaded for --extra-archs")
    p.add_argument("--extra-archs", type=_csv, default=None, help="default: --archs")
    p.add_argument("--refresh", action="store_true", help="run apt-get update even if lists exist")
    args = p.parse_args(argv)

    output = os.path.abspath(args.output)
    debs, tree = os.path.join(output, "debs"), os.path.join(output, "tree")
    os.makedirs(debs, exist_ok=True)
    extra_archs = args.extra_archs or args.archs
    all_archs = sorted(set(args.archs) | set(extra_archs))
    opts = apt_options(os.path.join(output, "apt"), all_archs)
    update_errors = apt_update(opts, os.path.join(output, "apt"), all_archs, args.refresh)

    wanted = [(pkg, arch) for pkg in args.packages for arch in args.archs]
    wanted += [(pkg, arch) for pkg in args.extra_packages for arch in extra_archs if (pkg, arch) not in wanted]
    files: list[InputFile] = []
    refused: dict[str, str] = {}
    per: dict[str, int] = {}
    deb_bytes = 0
    started = time.perf_counter()
    for pkg, arch in wanted:
        deb, why = download(opts, pkg, arch, debs)
        if deb is None:
            refused[f"{pkg}:{arch}"] = why
            print(f"  {pkg}:{arch}: refused: {why}")
            continue
        deb_bytes += os.path.getsize(deb)
        dest = os.path.join(tree, arch, pkg)
        unpack(deb, dest)
        found = elf_files(dest)
        per[f"{pkg}:{arch}"] = len(found)
        files += [InputFile(path, pkg) for path in found]
        print(f"  {pkg}:{arch}: {os.path.basename(deb)} {os.path.getsize(deb) / 1e6:.1f} MB, {len(found)} ELF files",
              flush=True)
    manifest = write_manifest(files, os.path.join(output, "manifest.csv"))
    summary = {"manifest": manifest, "files": len(files), "families": dict(Counter(f.family for f in files)),
               "per_package_arch": per, "refused": refused,
               "apt_update_errors": update_errors, "deb_megabytes": round(deb_bytes / 1e6, 1),
               "seconds": round(time.perf_counter() - started, 1)}
    with open(os.path.join(output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_package_arch"}, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
