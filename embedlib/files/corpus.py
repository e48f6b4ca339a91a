"""Corpora of real executables from this machine, labelled by the OS package that owns each file.

The family of a file is its Debian package, read from dpkg's own file lists (/var/lib/dpkg/info/*.list):
the same answer as `dpkg -S`, for thousands of files in one pass instead of one process per file.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.csv as pa_csv

from embedlib.files.inputs import InputFile
from embedlib.files.sources import sniff_format

DEFAULT_ROOTS = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec")


def dpkg_owners(info_dir: str = "/var/lib/dpkg/info") -> dict[str, str]:
    """path -> owning package, for every file dpkg knows. Empty when there is no dpkg database."""
    owners: dict[str, str] = {}
    for listing in glob.glob(os.path.join(info_dir, "*.list")):
        package = os.path.basename(listing)[: -len(".list")].split(":")[0]
        with open(listing, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                owners[line.rstrip("\n")] = package
    return owners


def owner_of(path: str, owners: dict[str, str]) -> str | None:
    """The package owning `path`. On merged-/usr systems dpkg may list /bin/ls for /usr/bin/ls."""
    real = os.path.realpath(path)
    for candidate in (path, real, path.removeprefix("/usr"), real.removeprefix("/usr")):
        if candidate in owners:
            return owners[candidate]
    return None


def system_executables(roots: Iterable[str] = DEFAULT_ROOTS, formats: tuple[str, ...] = ("elf",),
                       owners: dict[str, str] | None = None) -> list[InputFile]:
    """Regular (non-symlink) files under `roots` whose magic says one of `formats`, with dpkg families
    (None when no package owns the file). Reads 4 KiB per file to sniff; executes nothing."""
    owners = dpkg_owners() if owners is None else owners
    found: list[InputFile] = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root, followlinks=False):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) == 0:
                        continue
                    with open(path, "rb") as fh:
                        head = fh.read(4096)
                except OSError:
                    continue
                if sniff_format(head) in formats:
                    found.append(InputFile(path, owner_of(path, owners)))
    return sorted(found, key=lambda f: f.path)


def top_families(files: list[InputFile], min_files: int) -> list[InputFile]:
    """Only the files of families with at least `min_files` members."""
    counts = Counter(f.family for f in files if f.family)
    return [f for f in files if f.family and counts[f.family] >= min_files]


def write_manifest(files: list[InputFile], path: str) -> str:
    """A CSV manifest (path,family) that every job accepts as --input."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = pa.table({"path": [f.path for f in files], "family": [f.family or "" for f in files]})
    pa_csv.write_csv(table, path)
    return path


def read_manifest(path: str) -> list[InputFile]:
    """A manifest's rows as InputFiles (what `write_manifest` writes, read back the way every job reads it:
    cells as text, relative paths made absolute against the manifest's folder). Rows without a path are left
    out. For studies and benchmarks that take a manifest; the jobs stream theirs (inputs.listing_batches)."""
    from embedlib.files.inputs import check_input, iter_listing

    spec = check_input(path)
    if spec.kind != "manifest":
        raise ValueError(f"{path} is not a manifest (.csv or .parquet with a path column)")
    return [InputFile(os.fsdecode(row["target"]) if not row["remote"] else row["target"].decode(), row.get("family"))
            for row in iter_listing(spec) if not row.get("status")]
