"""Similarity digests (TLSH and ssdeep) as baselines for the embedding: their pairwise matrices (the digests of one
file's bytes are computed by embedlib.views.digests, which the pipeline also calls).

TLSH (py-tlsh): a distance, 0 = identical, lower = closer; no digest ("TNULL") below 50 bytes or for
input with too little variety. ssdeep (ppdeep, pure Python): a similarity 0..100, higher = closer.
A missing digest is None here and NaN in a matrix, which embedlib.eval.metrics ranks last.

ppdeep.compare is quadratic Python per pair; `ssdeep_score_matrix` returns exactly its values for all
pairs, but only scores the pairs that can be non-zero: ssdeep scores two strings only when they share a
7-character substring (its common-substring test) or when the block sizes and first strings are equal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import tlsh

from embedlib.views.digests import timed_compute

SSDEEP_WINDOW = 7  # ppdeep's ROLL_WINDOW: the common substring length that makes a pair comparable
_BLOCKSIZE_MIN = 3
_SPAMSUM_LENGTH = 64


# ---------------------------------------------------------------------------------------------------
# TLSH
# ---------------------------------------------------------------------------------------------------

def tlsh_distance(a: str | None, b: str | None) -> float:
    """tlsh.diff, or NaN when either digest is missing or malformed."""
    if not a or not b:
        return float("nan")
    try:
        return float(tlsh.diff(a, b))
    except ValueError:
        return float("nan")


def tlsh_distance_matrix(digests: Sequence[str | None]) -> np.ndarray:
    """[N, N] symmetric TLSH distances (tlsh.diff is symmetric); NaN where a digest is missing."""
    n = len(digests)
    valid = [i for i, d in enumerate(digests) if d and _tlsh_ok(d)]
    out = np.full((n, n), np.nan)
    for pos, i in enumerate(valid):
        a = digests[i]
        out[i, i] = 0.0
        for j in valid[pos + 1:]:
            out[i, j] = out[j, i] = tlsh.diff(a, digests[j])
    return out


def _tlsh_ok(digest: str) -> bool:
    try:
        tlsh.diff(digest, digest)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------
# ssdeep
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spamsum:
    """A parsed ssdeep digest with ppdeep's run-stripping applied, and the 7-grams of both strings."""

    block_size: int
    s1: str
    s2: str
    grams1: frozenset[str]
    grams2: frozenset[str]


def _strip_sequences(s: str) -> str:
    """ppdeep._strip_sequences: runs of more than 3 equal characters are cut to 3."""
    out = list(s[:3])
    for i in range(3, len(s)):
        if s[i] != s[i - 1] or s[i] != s[i - 2] or s[i] != s[i - 3]:
            out.append(s[i])
    return "".join(out)


def _grams(s: str) -> frozenset[str]:
    return frozenset(s[i : i + SSDEEP_WINDOW] for i in range(len(s) - SSDEEP_WINDOW + 1))


def _parse(digest: str | None) -> _Spamsum | None:
    if not digest:
        return None
    try:
        bs, s1, s2 = digest.split(":")
        block_size = int(bs)
    except ValueError:
        return None
    s1, s2 = _strip_sequences(s1), _strip_sequences(s2)
    return _Spamsum(block_size, s1, s2, _grams(s1), _grams(s2))


def _levenshtein(s: str, t: str) -> int:
    if s == t:
        return 0
    if not s or not t:
        return len(s) or len(t)
    previous = list(range(len(t) + 1))
    for i, cs in enumerate(s, 1):
        current = [i]
        for j, ct in enumerate(t, 1):
            current.append(min(current[j - 1] + 1, previous[j] + 1, previous[j - 1] + (cs != ct)))
        previous = current
    return previous[-1]


def _score_strings(s1: str, g1: frozenset[str], s2: str, g2: frozenset[str], block_size: int) -> int:
    """ppdeep._score_strings; its common-substring test is "the 7-gram sets intersect" (the same thing)."""
    if g1.isdisjoint(g2):
        return 0
    score = _levenshtein(s1, s2)
    score = (score * _SPAMSUM_LENGTH) // (len(s1) + len(s2))
    score = (100 * score) // _SPAMSUM_LENGTH
    score = 100 - score
    cap = block_size // _BLOCKSIZE_MIN * min(len(s1), len(s2))
    return min(score, cap)


def _compare_parsed(a: _Spamsum, b: _Spamsum) -> int:
    """ppdeep.compare on parsed digests (same branches, same arithmetic)."""
    if a.block_size != b.block_size and a.block_size != 2 * b.block_size and b.block_size != 2 * a.block_size:
        return 0
    if a.block_size == b.block_size and a.s1 == b.s1:
        return 100
    if a.block_size == b.block_size:
        return max(_score_strings(a.s1, a.grams1, b.s1, b.grams1, a.block_size),
                   _score_strings(a.s2, a.grams2, b.s2, b.grams2, 2 * b.block_size))
    if a.block_size == 2 * b.block_size:
        return _score_strings(a.s1, a.grams1, b.s2, b.grams2, a.block_size)
    return _score_strings(a.s2, a.grams2, b.s1, b.grams1, b.block_size)


def ssdeep_similarity(a: str | None, b: str | None) -> float:
    """ppdeep.compare(a, b) (0..100), or NaN when either digest is missing or malformed."""
    pa, pb = _parse(a), _parse(b)
    return float("nan") if pa is None or pb is None else float(_compare_parsed(pa, pb))


def ssdeep_candidate_pairs(parsed: Sequence[_Spamsum | None]) -> set[tuple[int, int]]:
    """Pairs (i < j) whose ssdeep score can be non-zero: a shared 7-gram between two strings that ssdeep
    compares (same effective block size: s1 at block_size, s2 at 2 * block_size), or equal first strings."""
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(parsed):
        if p is None:
            continue
        by_key[("eq", p.block_size, p.s1)].append(i)
        for gram in p.grams1:
            by_key[(p.block_size, gram)].append(i)
        for gram in p.grams2:
            by_key[(2 * p.block_size, gram)].append(i)
    pairs: set[tuple[int, int]] = set()
    for members in by_key.values():
        if len(members) > 1:
            pairs.update(combinations(sorted(set(members)), 2))
    return pairs


def ssdeep_score_matrix(digests: Sequence[str | None]) -> np.ndarray:
    """[N, N] symmetric ppdeep.compare scores (exact); NaN where a digest is missing or malformed."""
    parsed = [_parse(d) for d in digests]
    n = len(parsed)
    ok = np.array([p is not None for p in parsed], dtype=bool)
    out = np.full((n, n), np.nan)
    out[np.ix_(ok, ok)] = 0.0
    out[np.flatnonzero(ok), np.flatnonzero(ok)] = 100.0  # a digest against itself
    for i, j in ssdeep_candidate_pairs(parsed):
        out[i, j] = out[j, i] = _compare_parsed(parsed[i], parsed[j])
    return out


# ---------------------------------------------------------------------------------------------------
# Reading files for digests (when the embedding table has none)
# ---------------------------------------------------------------------------------------------------

def digest_file(path: str, max_bytes: int, expected_sha256: str | None = None) -> dict:
    """Read the first `max_bytes` of `path` (as the embed job did) and digest them, with timings.

    When `expected_sha256` is given and the file's content changed, the digests are None and `reason` says so.
    """
    from embedlib.config import InputConfig
    from embedlib.files.sources import read_path

    read = read_path(path, InputConfig(max_bytes=max_bytes, max_hash_bytes=max(max_bytes, 2 * 1024**3)))
    if not read.ok:
        return {"path": path, "tlsh": None, "ssdeep": None, "bytes": 0, "reason": f"{read.status}: {read.reason}"}
    if expected_sha256 and read.sha256 != expected_sha256:
        return {"path": path, "tlsh": None, "ssdeep": None, "bytes": 0, "reason": "content changed since embedding"}
    return {"path": path, "bytes": len(read.data), "reason": "", **timed_compute(read.data)}


def _digest_file_args(args: tuple[str, int, str | None]) -> dict:
    return digest_file(*args)


def digest_files(paths: Sequence[str], max_bytes: int, sha256s: Sequence[str | None] | None = None,
                 workers: int = 1) -> list[dict]:
    """digest_file for many files, in `workers` processes (ppdeep is CPU-bound pure Python)."""
    jobs = [(p, max_bytes, s) for p, s in zip(paths, sha256s or [None] * len(paths))]
    if workers <= 1 or len(jobs) < 2:
        return [_digest_file_args(j) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: workers start from a clean process, not a fork of a parent that may hold torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return list(pool.map(_digest_file_args, jobs, chunksize=4))
