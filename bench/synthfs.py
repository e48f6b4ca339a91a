"""A synthetic object store of N distinct executables that needs no disk: `synth://n<N>-p<P>-s<seed>/`.

File i is a real executable from a small pool (P files of the Debian corpus, or /usr/bin) with a deterministic
mutation: 8 bytes overwritten at an offset of its own and a short printable tag appended ("synthetic file i,
version v"), so every sha256 is distinct and the views stay those of a real executable with one string more.
Files live in folders of 1,000 (`d00012/f000012345.bin`), listed with sizes, mtimes and ETags as an object
store lists them, so the product's listing (fsspec walk), change detection (ETag) and reads run unchanged.

The corpus changes by night, like a nightly input: the night is the environment variable SYNTHFS_NIGHT (0 when
unset; every process of a job inherits it). Night t holds N + t * N * grow / 1000 files; on each night t >= 1
the files whose hash picks them (change / 1000 of them, by hash) are changed in place: a new version, a new
ETag, a new mtime, new bytes. `plan(...)` gives the expected counts without listing anything.

Registered for the jobs by name (never a catch-all): EMBEDLIB_EXTRA_PROTOCOLS=synth=bench.synthfs.SynthFileSystem
in the environment of every process (with the repository on PYTHONPATH), or register() in this one.
SYNTHFS_POOL names the pool's source: a manifest (.csv with a path column) or a folder (default: the Debian
corpus when it exists, else /usr/bin). Bench only: nothing in embedlib imports this.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass

import numpy as np
from fsspec import AbstractFileSystem

PROTOCOL = "synth"
IMPLEMENTATION = "bench.synthfs.SynthFileSystem"
DEBIAN = "/work/corpora/debian-multi/manifest.csv"
PER_FOLDER = 1000
MAX_POOL_BYTES = 4 << 20  # pool files above this are left out: hashing cost stays that of typical executables
TAG_LEN = 48
_NAME = re.compile(r"^n(\d+)(?:-p(\d+))?(?:-s(\d+))?(?:-g(\d+))?(?:-c(\d+))?$")
_MASK = (1 << 64) - 1


def register() -> None:
    """Register synth:// in this process (and name it for child processes and local Ray workers)."""
    from embedlib.config import EXTRA_PROTOCOLS_ENV
    from embedlib.files import sources

    sources.register_protocol(PROTOCOL, IMPLEMENTATION)
    os.environ[EXTRA_PROTOCOLS_ENV] = f"{PROTOCOL}={IMPLEMENTATION}"


def mix(*values) -> np.ndarray:
    """splitmix64 of the values chained (ints or arrays of them, broadcast): a cheap deterministic hash, the
    same for one file (info, open) as for a folder of them at once (ls) or a whole corpus (the bench's counts)."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x9E3779B97F4A7C15)
        for v in values:
            z = (h ^ np.asarray(v).astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = z ^ (z >> np.uint64(31))
    return h


@dataclass(frozen=True)
class Corpus:
    """What `synth://<name>/` holds: `files` at night 0, growing by `grow` per mille of it each night, with
    `change` per mille of the files changed in place each night."""

    files: int
    pool: int = 300
    seed: int = 0
    grow: int = 10
    change: int = 1

    @property
    def name(self) -> str:
        return f"n{self.files}-p{self.pool}-s{self.seed}-g{self.grow}-c{self.change}"

    def count(self, night: int) -> int:
        return self.files + night * (self.files * self.grow // 1000)

    def changed_on(self, i: np.ndarray, night: int) -> np.ndarray:
        """Whether files `i` (an array) are changed in place on `night`."""
        if night < 1:
            return np.zeros(np.shape(i), bool)
        return (i < self.count(night - 1)) & (mix(self.seed, 7919, night, i) % np.uint64(1000) < self.change)

    def version(self, i: np.ndarray, night: int) -> np.ndarray:
        """How many times files `i` were changed in place by `night` (their content version)."""
        return sum((self.changed_on(i, t).astype(np.int64) for t in range(1, night + 1)), np.zeros(np.shape(i), np.int64))


def parse(name: str) -> Corpus:
    m = _NAME.match(name)
    if not m:
        raise FileNotFoundError(f"{PROTOCOL}://{name}: not a synthetic corpus name (n<files>[-p<pool>][-s<seed>]"
                                "[-g<grow per mille>][-c<change per mille>])")
    files, pool, seed, grow, change = (int(g) if g is not None else None for g in m.groups())
    return Corpus(files, pool or 300, seed or 0, 10 if grow is None else grow, 1 if change is None else change)


def changed_files(corpus: Corpus, night: int) -> np.ndarray:
    """Indices of the files changed in place on `night`."""
    i = np.arange(corpus.count(max(0, night - 1)), dtype=np.int64)
    return i[corpus.changed_on(i, night)]


@functools.lru_cache(maxsize=4)
def pool_files(source: str, size: int) -> tuple[tuple[str, int], ...]:
    """(path, size) of `size` real executables of `source` (a manifest or a folder), chosen by the hash of their
    path: the same pool in every process, stat-ed once per process."""
    if source.endswith(".csv"):
        with open(source, newline="") as fh:
            paths = [row["path"] for row in csv.DictReader(fh)]
    else:
        paths = [os.path.join(source, n) for n in os.listdir(source)]
    ranked = sorted(paths, key=lambda p: hashlib.sha256(p.encode("utf-8", "surrogateescape")).digest())
    out = []
    for path in ranked:
        try:
            if os.path.isfile(path) and not os.path.islink(path) and 0 < os.path.getsize(path) <= MAX_POOL_BYTES:
                out.append((path, os.path.getsize(path)))
        except OSError:
            continue
        if len(out) == size:
            break
    if not out:
        raise FileNotFoundError(f"no pool files in {source}")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def pool_bytes(path: str) -> bytes:
    """A pool file's bytes, read once per process (a few hundred files: tens of MB)."""
    with open(path, "rb") as fh:
        return fh.read()


def pool_source() -> str:
    return os.environ.get("SYNTHFS_POOL") or (DEBIAN if os.path.exists(DEBIAN) else "/usr/bin")


def night() -> int:
    return int(os.environ.get("SYNTHFS_NIGHT") or 0)


class SynthFileSystem(AbstractFileSystem):
    """fsspec filesystem of synthetic corpora (module docstring). Read-only; contents made on open."""

    protocol = PROTOCOL
    root_marker = ""
    cachable = False  # the night is read from the environment at every call

    def _pool(self, corpus: Corpus) -> tuple[tuple[str, int], ...]:
        return pool_files(pool_source(), corpus.pool)

    def _split(self, path: str) -> tuple[Corpus, str, list[str]]:
        """(the corpus, its name as given, the path below it)."""
        parts = [p for p in self._strip_protocol(path).split("/") if p]
        if not parts:
            raise FileNotFoundError(f"{PROTOCOL}://: name a corpus, e.g. {PROTOCOL}://n10000/")
        return parse(parts[0]), parts[0], parts[1:]

    def _index(self, corpus: Corpus, rest: list[str], t: int) -> int | None:
        """The file index `rest` names (None for a folder), FileNotFoundError when it does not exist at night t."""
        n = corpus.count(t)
        if not rest:
            return None
        m = re.fullmatch(r"d(\d{5})", rest[0])
        if not m or int(m.group(1)) * PER_FOLDER >= n:
            raise FileNotFoundError(f"{PROTOCOL}://{'/'.join(rest)} does not exist at night {t}")
        if len(rest) == 1:
            return None
        f = re.fullmatch(r"f(\d{9})\.bin", rest[1])
        if len(rest) > 2 or not f or int(f.group(1)) >= n or int(f.group(1)) // PER_FOLDER != int(m.group(1)):
            raise FileNotFoundError(f"{PROTOCOL}://{'/'.join(rest)} does not exist at night {t}")
        return int(f.group(1))

    def _infos(self, corpus: Corpus, i: np.ndarray, t: int, base: str) -> list[dict]:
        """The listing entries of files `i` (an array) at night t: name, size, ETag, mtime."""
        v = corpus.version(i, t)
        pool = self._pool(corpus)
        sizes = np.array([size for _, size in pool], np.int64)[mix(corpus.seed, i) % np.uint64(len(pool))]
        etags = mix(corpus.seed, 31, i, v)
        return [{"name": f"{base}/d{j // PER_FOLDER:05d}/f{j:09d}.bin", "type": "file", "size": int(size) + TAG_LEN,
                 "ETag": f'"{int(etag):016x}"', "mtime": 1.7e9 + 86400 * int(ver) + j % 86400}
                for j, size, etag, ver in zip(i.tolist(), sizes, etags, v)]

    def ls(self, path, detail=True, **kwargs):
        corpus, base, rest = self._split(path)
        t = night()
        i = self._index(corpus, rest, t)
        n = corpus.count(t)
        if i is not None:
            out = self._infos(corpus, np.array([i]), t, base)
        elif not rest:
            out = [{"name": f"{base}/d{d:05d}", "type": "directory", "size": 0}
                   for d in range((n + PER_FOLDER - 1) // PER_FOLDER)]
        else:
            d = int(rest[0][1:])
            out = self._infos(corpus, np.arange(d * PER_FOLDER, min(n, (d + 1) * PER_FOLDER)), t, base)
        return out if detail else [e["name"] for e in out]

    def info(self, path, **kwargs):
        corpus, base, rest = self._split(path)
        t = night()
        i = self._index(corpus, rest, t)
        if i is None:
            return {"name": "/".join([base, *rest]), "type": "directory", "size": 0}
        return self._infos(corpus, np.array([i]), t, base)[0]

    def content(self, path: str) -> bytes:
        """The bytes of file `path` tonight: its pool file, 8 bytes changed, its tag appended."""
        corpus, _, rest = self._split(path)
        t = night()
        i = self._index(corpus, rest, t)
        if i is None:
            raise IsADirectoryError(path)
        v = int(corpus.version(np.array([i]), t)[0])
        pool = self._pool(corpus)
        data = memoryview(pool_bytes(pool[int(mix(corpus.seed, i)) % len(pool)][0]))
        h = int(mix(corpus.seed, 17, i, v))
        at = h % max(1, len(data) - 8)
        patch = h.to_bytes(8, "little")[: len(data) - at]
        tag = f"synthetic file {i:09d} version {v:03d}".encode().ljust(TAG_LEN - 2, b"_")
        return b"".join([data[:at], patch, data[at + len(patch):], b"\0", tag, b"\0"])  # one copy

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "r" not in mode:
            raise PermissionError(f"{PROTOCOL}:// is read-only")
        return io.BytesIO(self.content(path))

    def cat_file(self, path, start=None, end=None, **kwargs):
        return self.content(path)[start:end]
