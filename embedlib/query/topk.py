"""Exact k nearest neighbours over a corpus that streams by: the whole of a model version never sits in memory.

The corpus comes as blocks of (sha256, vectors) read file by file (a million 640-d rows are 2.5 GB; a block is
tens of MB). Each query keeps its k nearest so far (`TopK`: distances and the neighbours' sha256 themselves, so
no corpus-wide index is needed), merged block after block. Ties are broken by sha256, as the SQL macros break
them, exactly: a block whose k-th distance is tied beyond the cut picks among the tied rows by sha256 (rare:
identical vectors). A query's own row (same sha256) is never its neighbour. Partial results of disjoint parts of
the corpus (Ray tasks over groups of files) merge into exactly the answer of one scan (`merge`).
Pure: arrays and iterables in, arrays out; the reading is embedlib/query/neighbors.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

SHA = "S64"  # sha256 hex as fixed-width bytes: compact, and sorted as the text sorts


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """float32, contiguous; unit rows for cosine (a zero row stays zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0, 1, norms)
    return x


@dataclass
class TopK:
    """The nearest rows found so far of each query: distances [Q, m] and neighbour sha256 [Q, m] (SHA bytes),
    nearest first, ties by sha256; m <= k (fewer while fewer rows were seen; empty slots are +inf)."""

    dist: np.ndarray
    sha: np.ndarray

    @staticmethod
    def empty(queries: int) -> "TopK":
        return TopK(np.zeros((queries, 0), np.float32), np.zeros((queries, 0), SHA))

    def rows(self, s: slice) -> "TopK":
        return TopK(self.dist[s], self.sha[s])


def _ordered(dist: np.ndarray, sha: np.ndarray, k: int) -> TopK:
    order = np.lexsort((sha, dist), axis=-1)[:, :k]
    return TopK(np.take_along_axis(dist, order, 1), np.take_along_axis(sha, order, 1))


def merge(a: TopK, b: TopK, k: int) -> TopK:
    """The k nearest of two results over disjoint corpus rows (ties by sha256)."""
    return _ordered(np.concatenate([a.dist, b.dist], 1), np.concatenate([a.sha, b.sha], 1), k)


def block_topk(d: np.ndarray, sha: np.ndarray, k: int) -> TopK:
    """The exact k nearest of one block: distances d [Q, B] to rows with sha256 `sha` [B]."""
    if d.shape[1] <= k:
        return _ordered(d, np.broadcast_to(sha, d.shape), k)
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(d, part, 1).max(1)
    tied_in = (np.take_along_axis(d, part, 1) == kth[:, None]).sum(1)
    tied_all = (d == kth[:, None]).sum(1)
    for r in np.nonzero(tied_all > tied_in)[0]:  # rows tied at the k-th distance left out: choose by sha256
        cand = np.nonzero(d[r] <= kth[r])[0]
        part[r] = cand[np.lexsort((sha[cand], d[r, cand]))[:k]]
    return _ordered(np.take_along_axis(d, part, 1), sha[part], k)


def _distances_numpy(qb: np.ndarray, cb: np.ndarray, metric: str) -> np.ndarray:
    dots = qb @ cb.T
    if metric == "cosine":
        return 1.0 - dots
    q2 = np.einsum("ij,ij->i", qb, qb)
    c2 = np.einsum("ij,ij->i", cb, cb)
    return np.sqrt(np.maximum(q2[:, None] + c2[None, :] - 2.0 * dots, 0.0)).astype(np.float32, copy=False)


def _self_pairs(query_sha: np.ndarray, sha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, block columns) where a query meets its own row (the same sha256) in the block."""
    hits = np.nonzero(np.isin(sha, query_sha))[0]
    rows: list[int] = []
    cols: list[int] = []
    if len(hits):
        where = {s: i for i, s in enumerate(query_sha.tolist())}
        for c in hits:
            q = where.get(sha[c])
            if q is not None:
                rows.append(q)
                cols.append(int(c))
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


def _exclude_self(d: np.ndarray, query_sha: np.ndarray, sha: np.ndarray) -> None:
    """+inf where a query meets its own row (the same sha256) in the block."""
    rows, cols = _self_pairs(query_sha, sha)
    d[rows, cols] = np.inf


TIE_MARGIN = 8  # columns beyond k copied back from the device, so ties at the k-th distance resolve by sha256


class _Torch:
    """Distances and each query's nearest columns on a torch device (a GPU when there is one): only [Q, k + a
    margin] crosses back to the host, not the [Q, B] distance block."""

    def __init__(self, backend: str) -> None:
        import torch

        self.torch = torch
        self.device = backend.split(":", 1)[1] if ":" in backend else ("cuda" if torch.cuda.is_available() else "cpu")

    def block(self, c: np.ndarray):
        return self.torch.from_numpy(c).to(self.device)

    def nearest(self, qb: np.ndarray, cb, metric: str, query_sha: np.ndarray, sha: np.ndarray, k: int) -> TopK:
        """block_topk's answer, computed on the device. Exact: a query whose tie at the k-th distance may reach
        past the copied columns gets its whole row copied and resolved on the host."""
        torch = self.torch
        with torch.inference_mode():
            q = torch.from_numpy(qb).to(self.device)
            dots = q @ cb.T
            if metric == "cosine":
                d = 1.0 - dots
            else:
                d = ((q * q).sum(1)[:, None] + (cb * cb).sum(1)[None, :] - 2.0 * dots).clamp_min(0).sqrt()
            rows, cols = _self_pairs(query_sha, sha)
            if len(rows):
                d[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = float("inf")
            width = min(d.shape[1], k + TIE_MARGIN)
            vals, idx = torch.topk(d, width, dim=1, largest=False, sorted=True)
            vals, idx = vals.cpu().numpy(), idx.cpu().numpy()
            kth = min(k, width) - 1
            spill = np.nonzero(vals[:, -1] == vals[:, kth])[0] if width < d.shape[1] else np.zeros(0, np.int64)
            full = d[torch.from_numpy(spill).to(self.device)].cpu().numpy() if len(spill) else None
        best = _ordered(vals, sha[idx], k)
        if full is not None:
            exact = block_topk(full, sha, k)
            best.dist[spill], best.sha[spill] = exact.dist, exact.sha
        return best


def scan(queries: np.ndarray, query_sha: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int,
         metric: str = "cosine", backend: str = "numpy", block_rows: int = 2048) -> tuple[TopK, int]:
    """The k nearest rows of every query over all `blocks` ((sha256 [B] as SHA, vectors [B, D]) each), with
    the query's own row (same sha256) excluded. Returns (the result, corpus rows seen). Memory: the queries,
    their TopK, one block and block_rows x block distances."""
    q = prepare(queries, metric)
    query_sha = np.asarray(query_sha, SHA)
    best = [TopK.empty(len(q[s:s + block_rows])) for s in range(0, len(q), block_rows)]
    gpu = _Torch(backend) if backend.startswith("torch") else None
    seen = 0
    for sha, vectors in blocks:
        if not len(sha):
            continue
        seen += len(sha)
        c = prepare(vectors, metric)
        cb = gpu.block(c) if gpu else c
        for n, s in enumerate(range(0, len(q), block_rows)):
            qb = q[s:s + block_rows]
            if gpu:
                found = gpu.nearest(qb, cb, metric, query_sha[s:s + block_rows], sha, k)
            else:
                d = _distances_numpy(qb, cb, metric)
                _exclude_self(d, query_sha[s:s + block_rows], sha)
                found = block_topk(d, sha, k)
            best[n] = merge(best[n], found, k)
    if not best:
        return TopK.empty(0), seen
    return TopK(np.concatenate([b.dist for b in best]), np.concatenate([b.sha for b in best])), seen


def rebatch(parts: Iterable[tuple], rows: int) -> Iterator[tuple]:
    """Blocks of exactly `rows` rows (the last one fewer) out of smaller or larger pieces, each piece a tuple of
    arrays of the same length (a root holds many small Parquet files, read in batches)."""
    held: list[tuple] = []
    count = 0
    for piece in parts:
        at = 0
        while at < len(piece[0]):
            take = min(rows - count, len(piece[0]) - at)
            held.append(tuple(a[at:at + take] for a in piece))
            count, at = count + take, at + take
            if count == rows:
                yield tuple(np.concatenate(cols) for cols in zip(*held))
                held, count = [], 0
    if count:
        yield tuple(np.concatenate(cols) for cols in zip(*held))
