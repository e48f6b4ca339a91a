"""Batch nearest neighbours: the k nearest of every row of a run, against the whole table of its model version,
written as ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet (schema.NEIGHBORS) under the
root's lease, and committed by ROOT/commits/W.json (embedlib.root.catalog): readers see a whole rewrite or
none of it.

`knn` is pure (arrays in, arrays out) and works in blocks, so memory stays at block_rows x corpus_block
distances whatever the corpus size: a BLAS matmul per block on the CPU (numpy), or torch on a GPU. Ties are
broken by the neighbour's sha256 (the corpus is sorted by it), as the SQL macros do. The fan-out over Ray
tasks lives in embedlib/ray_io/knn.py (knn_ray), handed in by the job, and calls the same `knn` on slices of the
queries.
"""

from __future__ import annotations

import time
from typing import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedlib import schema
from embedlib.root import catalog
from embedlib.root.lease import RootLock
from embedlib.root.store import Store
from embedlib.query import layout
from embedlib.query.errors import QueryError

METRICS = ("cosine", "l2")
MAX_K = 1000


@dataclass
class NeighborsResult:
    runs: list[str]  # the runs whose rows got neighbours
    model_version: str
    queries: int
    corpus: int
    k: int
    metric: str
    backend: str
    parts: list[str]
    seconds: float

    def describe(self) -> str:
        if not self.runs:
            return (f"neighbors: every committed run of model version {self.model_version} already has neighbours; "
                    "nothing to do")
        names = self.runs if len(self.runs) <= 4 else [*self.runs[:2], "...", self.runs[-1]]
        which = (f"run {self.runs[0]}" if len(self.runs) == 1
                 else f"{len(self.runs)} runs without neighbours ({', '.join(names)})")
        return (f"neighbors: {self.queries} rows of {which} x {self.corpus} rows of model version "
                f"{self.model_version}, k={self.k} ({self.metric}, {self.backend}) -> {len(self.parts)} part(s) "
                f"in {self.seconds:.1f} s")


# -- the computation (pure) ----------------------------------------------------------------------------------

def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0, 1, norms)
    return x


def _merge(best_d, best_i, cand_d, cand_i, k):
    d = np.concatenate([best_d, cand_d], axis=1)
    i = np.concatenate([best_i, cand_i], axis=1)
    if d.shape[1] > k:
        keep = np.argpartition(d, k - 1, axis=1)[:, :k]
        d, i = np.take_along_axis(d, keep, 1), np.take_along_axis(i, keep, 1)
    return d, i


def knn(queries: np.ndarray, corpus: np.ndarray, k: int, metric: str = "cosine",
        query_index: np.ndarray | None = None, block_rows: int = 2048, corpus_block: int = 16384,
        backend: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """(indices [Q, k'], distances [Q, k']) of the k nearest corpus rows to each query, nearest first, ties by
    index; k' = min(k, rows available). query_index[i] >= 0 is query i's own row in the corpus (excluded).
    backend: 'numpy' (BLAS), or 'torch' / 'torch:cuda' / 'torch:cpu' (a GPU when there is one)."""
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise QueryError(f"queries {queries.shape} and corpus {corpus.shape} do not have the same dimension")
    n = len(corpus)
    qidx = np.full(len(queries), -1, dtype=np.int64) if query_index is None else np.asarray(query_index, np.int64)
    k_eff = max(0, min(k, n - (1 if (qidx >= 0).any() else 0)))
    if len(queries) == 0 or k_eff == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    q, c = _prepare(queries, metric), _prepare(corpus, metric)
    if backend.startswith("torch"):
        d, i = _knn_torch(q, c, k_eff, metric, qidx, block_rows, corpus_block, backend)
    else:
        d, i = _knn_numpy(q, c, k_eff, metric, qidx, block_rows, corpus_block)
    order = np.lexsort((i, d), axis=-1)  # nearest first, ties by corpus index (= by sha256)
    return np.take_along_axis(i, order, 1), np.take_along_axis(d, order, 1)


def _block_distances(qb: np.ndarray, cb: np.ndarray, metric: str, q2=None, c2=None) -> np.ndarray:
    dots = qb @ cb.T
    if metric == "cosine":
        return 1.0 - dots
    return np.sqrt(np.maximum(q2[:, None] + c2[None, :] - 2.0 * dots, 0.0))


def _knn_numpy(q, c, k, metric, qidx, block_rows, corpus_block):
    q2 = np.einsum("ij,ij->i", q, q) if metric == "l2" else None
    c2 = np.einsum("ij,ij->i", c, c) if metric == "l2" else None
    out_d = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), block_rows):
        qb, own = q[s:s + block_rows], qidx[s:s + block_rows]
        best_d = np.full((len(qb), 0), np.inf, np.float32)
        best_i = np.zeros((len(qb), 0), np.int64)
        for cs in range(0, len(c), corpus_block):
            cb = c[cs:cs + corpus_block]
            d = _block_distances(qb, cb, metric, None if q2 is None else q2[s:s + block_rows],
                                 None if c2 is None else c2[cs:cs + corpus_block]).astype(np.float32, copy=False)
            rows = np.nonzero((own >= cs) & (own < cs + len(cb)))[0]
            d[rows, own[rows] - cs] = np.inf  # a file is not its own neighbour
            kk = min(k, len(cb))
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < len(cb) else np.broadcast_to(
                np.arange(len(cb)), d.shape)
            best_d, best_i = _merge(best_d, best_i, np.take_along_axis(d, part, 1), part + cs, k)
        out_d[s:s + len(qb)], out_i[s:s + len(qb)] = best_d, best_i
    return out_d, out_i


def _knn_torch(q, c, k, metric, qidx, block_rows, corpus_block, backend):
    import torch

    device = backend.split(":", 1)[1] if ":" in backend else ("cuda" if torch.cuda.is_available() else "cpu")
    ct = torch.from_numpy(c).to(device)
    c2 = (ct * ct).sum(1) if metric == "l2" else None
    out_d = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    with torch.inference_mode():
        for s in range(0, len(q), block_rows):
            qb = torch.from_numpy(q[s:s + block_rows]).to(device)
            own = torch.from_numpy(qidx[s:s + block_rows]).to(device)
            best_d = torch.full((len(qb), 0), float("inf"), device=device)
            best_i = torch.zeros((len(qb), 0), dtype=torch.int64, device=device)
            for cs in range(0, len(ct), corpus_block):
                cb = ct[cs:cs + corpus_block]
                dots = qb @ cb.T
                if metric == "cosine":
                    d = 1.0 - dots
                else:
                    d = ((qb * qb).sum(1)[:, None] + c2[cs:cs + corpus_block][None, :] - 2.0 * dots).clamp_min(0).sqrt()
                rows = torch.nonzero((own >= cs) & (own < cs + len(cb))).flatten()
                d[rows, own[rows] - cs] = float("inf")
                vals, idx = torch.topk(d, min(k, len(cb)), dim=1, largest=False)
                best_d = torch.cat([best_d, vals], 1)
                best_i = torch.cat([best_i, idx + cs], 1)
                if best_d.shape[1] > k:
                    vals, keep = torch.topk(best_d, k, dim=1, largest=False)
                    best_d, best_i = vals, torch.gather(best_i, 1, keep)
            out_d[s:s + len(qb)] = best_d.cpu().numpy()
            out_i[s:s + len(qb)] = best_i.cpu().numpy()
    return out_d, out_i


def default_backend() -> str:
    """torch on a GPU when there is one, else numpy BLAS (importing torch only to ask)."""
    try:
        import torch

        return "torch:cuda" if torch.cuda.is_available() else "numpy"
    except ImportError:
        return "numpy"


# -- reading a model version and writing the neighbors table (I/O) ------------------------------------------

@dataclass
class VersionRows:
    sha256: np.ndarray  # [N] str, sorted
    run_id: np.ndarray  # [N] str
    vectors: np.ndarray  # [N, D] float32


def load_version(store: Store, files: list[str]) -> VersionRows:
    """Every row of one model version (sha256, run_id, embedding), sorted by sha256, one row per sha256."""
    shas, runs, vecs = [], [], []
    for rel in files:
        with store.open(rel) as fh:
            t = pq.read_table(fh, columns=["sha256", "run_id", "embedding"])
        emb = t.column("embedding").combine_chunks()
        dim = emb.type.list_size if pa.types.is_fixed_size_list(emb.type) else len(emb[0]) if len(emb) else 0
        flat = emb.flatten() if len(emb) else pa.array([], pa.float32())
        vecs.append(flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(emb), dim))
        shas.append(t.column("sha256").to_numpy(zero_copy_only=False))
        runs.append(t.column("run_id").to_numpy(zero_copy_only=False))
    sha = np.concatenate(shas) if shas else np.array([], object)
    order = np.argsort(sha, kind="stable")
    sha = sha[order]
    keep = np.ones(len(sha), bool)
    keep[1:] = sha[1:] != sha[:-1]  # the writer embeds a content once per version; be safe anyway
    order = order[keep]
    dims = {v.shape[1] for v in vecs if len(v)}
    if len(dims) > 1:
        raise QueryError(f"one model version with embeddings of different sizes {sorted(dims)}")
    matrix = np.concatenate(vecs)[order] if vecs else np.zeros((0, 0), np.float32)
    return VersionRows(sha256=sha[keep], run_id=np.concatenate(runs)[order], vectors=matrix)


def neighbors_table(query_sha: np.ndarray, idx: np.ndarray, dist: np.ndarray, corpus_sha: np.ndarray,
                    metric: str, version: str, run: str) -> pa.Table:
    q, k = idx.shape
    return pa.table({
        "sha256": pa.array(np.repeat(query_sha, k), pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), q)),
        "neighbor": pa.array(corpus_sha[idx.ravel()] if idx.size else np.array([], object), pa.string()),
        "distance": pa.array(dist.ravel().astype(np.float32)),
        "metric": pa.array([metric] * (q * k), pa.string()),
        "model_version": pa.array([version] * (q * k), pa.string()),
        "run_id": pa.array([run] * (q * k), pa.string()),
    }, schema=schema.NEIGHBORS)


def _version_of_run(listing: layout.Listing, run: str) -> str:
    """The model version run `run` embedded under: its runs row, else the folder its rows are in."""
    runs = catalog.read_runs(listing.store, listing.snapshot)
    if runs.num_rows:
        for row in runs.select(["run_id", "model_version"]).to_pylist():
            if row["run_id"] == run:
                return row["model_version"]
    having = [v for v, runs_of in listing.runs_of_version.items() if run in runs_of]
    if not having:
        raise QueryError(f"run {run!r} has no embeddings under {listing.store.given!r} and is no finished run there")
    return max(having)


def runs_without_neighbors(listing: layout.Listing, version: str) -> list[str]:
    """Committed runs of `version` that embedded rows and whose rows have no stored neighbours yet."""
    runs = catalog.read_runs(listing.store, listing.snapshot)
    if not runs.num_rows:
        return []
    snap = listing.snapshot
    covered = {r for f in snap.table_files("neighbors", version) for r in snap.runs_in(f)}
    return sorted(row["run_id"] for row in runs.select(["run_id", "model_version", "embedded"]).to_pylist()
                  if row["model_version"] == version and row["embedded"] and row["run_id"] not in covered)


def compute_neighbors(root: str, run: str | None = None, model_version: str | None = None, k: int = 10,
                      metric: str = "cosine", backend: str | None = None, block_rows: int = 2048,
                      corpus_block: int = 16384, rows_per_part: int = 100_000,
                      fan_out: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None) -> NeighborsResult:
    """The k nearest rows of model version V for every row of run R (with `run`: that committed run, V its
    version unless given; without: every committed run of V, the current version unless given, that has no
    neighbours yet, resumed runs included), written under the root's lease and committed as one record:
    ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet + ROOT/commits/W.json. A recomputed run's
    earlier neighbours are superseded in the same commit: a reader sees the old ones or the new ones, never
    half. `fan_out` computes `knn` elsewhere, with its arguments (e.g. over Ray tasks: ray_io.knn_ray). Remote
    roots use fsspec's configuration (credentials, endpoint), as the pipeline does."""
    t0 = time.perf_counter()
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QueryError(f"k must be a whole number between 1 and {MAX_K} (got {k!r})")
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    store = layout.open_root(root)
    commit_id = catalog.new_run_id()
    with RootLock(store, commit_id) as lock:
        listing = layout.list_root(store)
        if listing.empty:
            raise QueryError(f"output root {root!r} is empty: nothing to compute neighbours for")
        if run is not None:
            model_version = model_version or _version_of_run(listing, run)
            targets = [run]
        else:
            model_version = model_version or layout.current_model_version(listing)
            targets = runs_without_neighbors(listing, model_version)
        if model_version not in listing.embeddings:
            known = ", ".join(sorted(listing.embeddings)) or "none"
            raise QueryError(f"model version {model_version!r} has no embeddings under {root!r} (versions: {known})")
        backend = backend or default_backend()
        if not targets:
            return NeighborsResult(runs=[], model_version=model_version, queries=0, corpus=0, k=0, metric=metric,
                                   backend=backend, parts=[], seconds=time.perf_counter() - t0)
        corpus = load_version(store, listing.embeddings[model_version])
        mine = np.nonzero(np.isin(corpus.run_id, targets))[0]
        idx, dist = (fan_out or knn)(corpus.vectors[mine], corpus.vectors, k, metric, mine, block_rows=block_rows,
                                     corpus_block=corpus_block, backend=backend)
        parts = write_parts(lock, listing.snapshot, commit_id, corpus, mine, idx, dist, metric, model_version,
                            targets, rows_per_part)
    return NeighborsResult(runs=targets, model_version=model_version, queries=len(mine), corpus=len(corpus.sha256),
                           k=idx.shape[1], metric=metric, backend=f"{backend}{'+fan-out' if fan_out else ''}",
                           parts=[lock.store.uri(rel) for rel in parts], seconds=time.perf_counter() - t0)


def write_parts(lock: RootLock, snap: catalog.Snapshot, commit_id: str, corpus: VersionRows, mine: np.ndarray,
                idx: np.ndarray, dist: np.ndarray, metric: str, version: str, targets: list[str],
                rows_per_part: int) -> list[str]:
    """Write the neighbours of `targets` as ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet
    (invisible until committed), carry over the other runs' rows of any earlier file that also held a target's
    rows, then publish commits/W.json superseding the targets' earlier files. Deletes only what it wrote, and
    only when it fails before committing. Returns the relative paths of the new parts of `targets`."""
    store = lock.store
    per = max(1, rows_per_part // max(1, idx.shape[1]))  # queries per part
    added: dict[str, dict] = {}
    try:
        for run in targets:
            rows = np.nonzero(corpus.run_id[mine] == run)[0]
            folder = f"neighbors/model_version={version}/run={run}/commit={commit_id}"
            for n, s in enumerate(range(0, len(rows), per)):
                sel = rows[s:s + per]
                rel = f"{folder}/part-{n:06d}.parquet"
                store.write_parquet(rel, neighbors_table(corpus.sha256[mine][sel], idx[sel], dist[sel],
                                                         corpus.sha256, metric, version, run))
                added[rel] = {"rows": int(len(sel) * idx.shape[1]), "runs": [run]}
            lock.check()
        parts = list(added)
        removed = []
        for n, rel in enumerate(f for f in snap.table_files("neighbors", version)
                                if set(snap.runs_in(f)) & set(targets)):
            removed.append(rel)
            others = sorted(set(snap.runs_in(rel)) - set(targets))
            if others:  # a compacted file holding other runs' neighbours too: they stay visible
                old = store.read_parquet(rel)
                kept = old.filter(pc.invert(pc.is_in(old.column("run_id"), value_set=pa.array(targets, pa.string()))))
                carried = f"neighbors/model_version={version}/commit={commit_id}/part-kept-{n:06d}.parquet"
                store.write_parquet(carried, kept)
                added[carried] = {"rows": kept.num_rows, "runs": others}
        if added or removed:
            lock.check(commit=True)
            catalog.kill_point("neighbors-commit")
            catalog.write_commit(store, commit_id, "neighbors", added, removed)
    except BaseException:
        for rel in added:
            store.remove(rel)
        raise
    return parts
