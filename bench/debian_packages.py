"""Choose Debian binary packages for a multi-family corpus from apt's own Packages indices. Pure except
`read_index`, which decompresses apt's list files.

Family = Debian SOURCE package: the same program built for several architectures, and several binary
packages of one source, belong together. Choices are stable: sources are ordered by a salted hash of their
name, so reruns against the same indices pick the same packages, and no alphabetical bias creeps in.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Pkg:
    name: str
    source: str
    arch: str  # the deb's Architecture: 'all' or a CPU architecture
    section: str
    size: int  # bytes of the .deb
    installed_kb: int
    depends: str


def parse_packages(text: str) -> dict[str, Pkg]:
    """A Packages index (RFC 822 stanzas) -> package name -> Pkg. Continuation lines are skipped."""
    out: dict[str, Pkg] = {}
    for stanza in text.split("\n\n"):
        rec: dict[str, str] = {}
        for line in stanza.split("\n"):
            if line and line[0] not in " \t":
                key, _, value = line.partition(":")
                rec[key] = value.strip()
        if "Package" not in rec:
            continue
        name = rec["Package"]
        out[name] = Pkg(name=name, source=(rec.get("Source") or name).split()[0], arch=rec.get("Architecture", ""),
                        section=rec.get("Section", "").split("/")[-1], size=int(rec.get("Size") or 0),
                        installed_kb=int(rec.get("Installed-Size") or 0),
                        depends=rec.get("Depends", "") + ", " + rec.get("Pre-Depends", ""))
    return out


def read_index(lists_dir: str, arch: str) -> dict[str, Pkg]:
    """Every package apt knows for `arch` in the main and -updates suites of the private lists (updates win,
    as apt's candidate does). Security lists are left out: apt falls back to main when they failed."""
    merged: dict[str, Pkg] = {}
    paths = sorted(glob.glob(os.path.join(lists_dir, f"*_dists_*_main_binary-{arch}_Packages*")))
    paths = [p for p in paths if "-security" not in os.path.basename(p)]
    for path in sorted(paths, key=lambda p: "-updates_" in os.path.basename(p)):
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], capture_output=True, text=True,
                              check=True).stdout
        merged.update(parse_packages(text))
    return merged


def stable_key(text: str, salt: str) -> str:
    return hashlib.sha1(f"{salt}\0{text}".encode()).hexdigest()


# Packages whose files include PE images (Windows DLLs/EXEs, EFI applications). .NET assemblies are found
# by rule (pe_candidates) on top of these. Names absent from an architecture's index are simply skipped.
PE_SEEDS = (
    "libwine",  # wine: x86_64-, i386-, aarch64- and arm-windows DLLs and EXEs
    "gcc-mingw-w64-i686-posix-runtime", "gcc-mingw-w64-i686-win32-runtime",
    "gcc-mingw-w64-x86-64-posix-runtime", "gcc-mingw-w64-x86-64-win32-runtime",
    "mingw-w64-i686-dev", "mingw-w64-x86-64-dev", "libz-mingw-w64", "libassuan-mingw-w64-dev",
    "libgcrypt-mingw-w64-dev", "libgpg-error-mingw-w64-dev", "libksba-mingw-w64-dev", "libnpth-mingw-w64-dev",
    "gdb-mingw-w64-target", "libstd-rust-dev-windows",
    "cpio-win32", "gzip-win32", "gpgv-win32", "win32-loader", "nsis-common", "clamav-testfiles",
    "python3-distlib", "golang-1.19-src",  # the last also brings Go's ELF/PE/Mach-O test binaries
    "systemd-boot-efi", "refind", "efitools", "memtest86+", "shim-unsigned", "shim-signed",
    "shim-helpers-amd64-signed", "shim-helpers-arm64-signed", "shim-helpers-i386-signed",
    "grub-efi-amd64-signed", "grub-efi-arm64-signed", "grub-efi-ia32-signed", "grub-efi-amd64-bin",
    "grub-efi-arm64-bin", "grub-efi-ia32-bin", "efibootguard", "syslinux-efi", "ipxe",
    "grub-efi-arm-bin", "fwupd-unsigned", "fwupd-amd64-signed", "fwupd-arm64-signed", "fwupd-armhf-signed",
    "fwupd-i386-signed",
)

_CLI_DEPENDS = re.compile(r"(^|[\s,|])(mono-runtime|libmono-corlib4\.5-cil|cli-common|libmono-system4\.0-cil)\b")
_NOT_BINARIES = re.compile(
    r"(-dbg|-dbgsym|-dev|-doc|-docs|-data|-common|-headers|-source|-src|-prof|-examples|-locales?|-l10n|-i18n"
    r"|-static|-tests?)$"
    r"|^(linux-|firmware-|libghc-|ghc|gcc-|g\+\+-|gfortran-|gnat-|gobjc|gccgo|gdc-|gm2-|cpp-|lib.*-ocaml)")
_SKIP_SECTIONS = frozenset({"kernel", "debug", "doc", "libdevel", "fonts", "localization", "metapackages",
                            "translations", "cli-mono", "haskell", "ocaml", "java", "oldlibs"})


def where(indices: dict[str, dict[str, Pkg]], name: str, archs: list[str]) -> list[str]:
    """The architectures to fetch `name` for: ['all'] for an architecture-independent package, else every
    arch of `archs` whose index has it."""
    present = [a for a in archs if name in indices[a]]
    if not present:
        return []
    return ["all"] if indices[present[0]][name].arch == "all" else present


def pe_candidates(indices: dict[str, dict[str, Pkg]], archs: list[str],
                  seeds: tuple[str, ...] = PE_SEEDS) -> dict[str, list[tuple[str, str]]]:
    """source -> [(package, arch)] for the PE seeds (every arch they exist for) and every .NET package
    (section cli-mono, or depending on the Mono runtime), the latter once: an assembly is the same bytes
    on every architecture."""
    first = indices[archs[0]]
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in seeds:
        fetch = where(indices, name, archs)
        if fetch:
            source = next(indices[a][name].source for a in archs if name in indices[a])
            out[source] += [(name, arch) for arch in fetch]
    for name, pkg in sorted(first.items()):
        if name in seeds or re.search(r"-(dbg|doc|docs)$", name) or pkg.section in ("doc", "debug"):
            continue
        if pkg.section == "cli-mono" or _CLI_DEPENDS.search(pkg.depends):
            out[pkg.source].append((name, "all" if pkg.arch == "all" else archs[0]))
    return dict(out)


def is_program_package(pkg: Pkg, max_deb_bytes: int) -> bool:
    """An architecture-specific package likely to ship executables: not debug/dev/doc/data, not a
    toolchain or kernel, a sane size."""
    return (pkg.arch != "all" and not _NOT_BINARIES.search(pkg.name) and pkg.section not in _SKIP_SECTIONS
            and 40 <= pkg.installed_kb <= 30_000 and pkg.size <= max_deb_bytes)


def elf_candidates(indices: dict[str, dict[str, Pkg]], archs: list[str], *, min_archs: int, max_packages: int,
                   max_deb_bytes: int, salt: str) -> list[tuple[str, list[str]]]:
    """[(source, [binary package names])] in stable random order: packages that pass is_program_package on
    the first arch and exist for >= min_archs of `archs`; per source at most max_packages, programs (names
    not starting with lib) before libraries, then by hash."""
    first = indices[archs[0]]
    by_source: dict[str, list[str]] = defaultdict(list)
    for name, pkg in first.items():
        if is_program_package(pkg, max_deb_bytes) and sum(name in indices[a] for a in archs) >= min_archs:
            by_source[pkg.source].append(name)
    out = []
    for source in sorted(by_source, key=lambda s: stable_key(s, salt)):
        names = sorted(by_source[source], key=lambda n: (n.startswith("lib"), stable_key(n, salt)))
        out.append((source, names[:max_packages]))
    return out


def cap_family(keys: list[str], cap: int, salt: str) -> set[str]:
    """The keys kept when a family holds more than `cap` files: the `cap` smallest salted hashes."""
    if cap <= 0 or len(keys) <= cap:
        return set(keys)
    return set(sorted(keys, key=lambda k: stable_key(k, salt))[:cap])
