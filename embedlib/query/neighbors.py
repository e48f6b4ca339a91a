"""Batch nearest neighbours: the k nearest of every row of a run, against the whole table of its model version,
written as ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet (schema.NEIGHBORS) under the
root's lease, and committed by ROOT/commits/W.json (embedlib.root.catalog): readers see a whole rewrite or
none of it.

The model version streams by, file by file, in blocks (embedlib/query/topk.py): memory holds the run's rows
(at most QUERY_CHUNK at a time), their k nearest so far, one block of the corpus and one block of distances,
whatever the size of the version (a million 640-d rows would be 2.5 GB). The cost is exact brute force: per
new row, one dot product with every row of the version (linear in the table; bench/scale.py measures it). Ties
are broken by the neighbour's sha256, as the SQL macros do. The fan-out over Ray tasks (embedlib/ray_io/knn.py,
knn_ray, handed in by the job) gives each task a group of the version's files and merges their results.
`knn` is the same computation on arrays in memory (indices into a corpus sorted by sha256).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedlib import schema
from embedlib.root import catalog
from embedlib.root.lease import RootLock
from embedlib.root.store import Store
from embedlib.query import layout, topk
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

def knn(queries: np.ndarray, corpus: np.ndarray, k: int, metric: str = "cosine",
        query_index: np.ndarray | None = None, block_rows: int = 2048, corpus_block: int = 16384,
        backend: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """(indices [Q, k'], distances [Q, k']) of the k nearest corpus rows to each query, nearest first, ties by
    index; k' = min(k, rows available). query_index[i] >= 0 is query i's own row in the corpus (excluded).
    backend: 'numpy' (BLAS), or 'torch' / 'torch:cuda' / 'torch:cpu' (a GPU when there is one). The streaming
    scan (topk.scan) over an array in memory: a row's name is its index, zero-padded (sorted as the index)."""
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise QueryError(f"queries {queries.shape} and corpus {corpus.shape} do not have the same dimension")
    n = len(corpus)
    qidx = np.full(len(queries), -1, dtype=np.int64) if query_index is None else np.asarray(query_index, np.int64)
    k_eff = max(0, min(k, n - (1 if (qidx >= 0).any() else 0)))
    if len(queries) == 0 or k_eff == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    names = np.char.zfill(np.arange(n).astype(str), 20).astype(topk.SHA)
    own = np.where(qidx >= 0, names[np.clip(qidx, 0, n - 1)], b"-")  # "-": no row of the corpus
    blocks = ((names[s:s + corpus_block], corpus[s:s + corpus_block]) for s in range(0, n, corpus_block))
    top, _ = topk.scan(queries, own, blocks, k_eff, metric, backend, block_rows)
    return top.sha[:, :k_eff].astype(np.int64), top.dist[:, :k_eff]


GPU_DEVICES = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/kfd")  # NVIDIA's driver, or ROCm's


def default_backend(devices: tuple[str, ...] = GPU_DEVICES) -> str:
    """torch on a GPU when there is one, else numpy BLAS. torch is imported only to ask where a GPU driver is
    present (importing it costs a neighbours job about 2 s of CPU and 450 MB of RSS on a machine without one)."""
    if not any(os.path.exists(d) for d in devices):
        return "numpy"
    try:
        import torch

        return "torch:cuda" if torch.cuda.is_available() else "numpy"
    except ImportError:
        return "numpy"


# -- reading a model version and writing the neighbors table (I/O) ------------------------------------------

QUERY_CHUNK = 65_536  # queries held at once (x D float32: 168 MB at D=640); each chunk scans the version once


@dataclass(frozen=True)
class VersionFiles:
    """The committed Parquet files of one model version: what a scan reads, file by file (picklable: a Ray task
    reads its share of them itself)."""

    root: str  # Store.root
    files: tuple[str, ...]


def _vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    emb = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not len(emb):
        return np.zeros((0, 0), np.float32)
    dim = emb.type.list_size if pa.types.is_fixed_size_list(emb.type) else len(emb[0])
    flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size != len(emb) * dim:
        raise QueryError(f"one model version with embeddings of different sizes (a row of {dim} and others)")
    return flat.reshape(len(emb), dim)


def _batches(store: Store, rel: str, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    with store.open(rel) as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=rows, columns=columns)


def corpus_blocks(corpus: VersionFiles, rows: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sha256 as topk.SHA, vectors) of every row of the version, in blocks of `rows` (the last fewer)."""
    store = Store(corpus.root)

    def pieces():
        for rel in corpus.files:
            for b in _batches(store, rel, ["sha256", "embedding"], rows):
                yield np.asarray(b.column(0).to_numpy(zero_copy_only=False), topk.SHA), _vectors(b.column(1))

    return topk.rebatch(pieces(), rows)


def knn_files(queries: np.ndarray, query_sha: np.ndarray, corpus: VersionFiles, k: int, metric: str = "cosine",
              backend: str = "numpy", block_rows: int = 2048, corpus_block: int = 16384) -> tuple[topk.TopK, int]:
    """The k nearest rows of `corpus` to every query (its own row excluded), reading the corpus once, block by
    block: (result, corpus rows). What a fan-out (ray_io.knn_ray) runs on groups of files, then merges."""
    return topk.scan(queries, query_sha, corpus_blocks(corpus, corpus_block), k, metric, backend, block_rows)


def query_chunks(store: Store, snap: catalog.Snapshot, files: list[str], targets: list[str], rows: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sha256, run_id, vectors) of the rows of runs `targets`, at most `rows` at a time, each chunk sorted by
    sha256; read from the files holding those runs only (a run's own files, or compacted ones: filtered)."""
    wanted = set(targets)

    def pieces():
        for rel in files:
            if not wanted & set(snap.runs_in(rel)):
                continue
            for b in _batches(store, rel, ["sha256", "run_id", "embedding"], rows):
                run_id = b.column(1).to_numpy(zero_copy_only=False)
                keep = np.isin(run_id, targets)
                if keep.any():
                    yield (np.asarray(b.column(0).to_numpy(zero_copy_only=False), topk.SHA)[keep], run_id[keep],
                           _vectors(b.column(2))[keep])

    for sha, run_id, vectors in topk.rebatch(pieces(), rows):
        order = np.argsort(sha, kind="stable")
        yield sha[order], run_id[order], vectors[order]


def neighbors_table(query_sha: np.ndarray, neighbor_sha: np.ndarray, dist: np.ndarray, metric: str, version: str,
                    run: str) -> pa.Table:
    q, k = neighbor_sha.shape
    return pa.table({
        "sha256": pa.array(np.repeat(np.asarray(query_sha).astype(str), k), pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), q)),
        "neighbor": pa.array(neighbor_sha.ravel().astype(str), pa.string()),
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
                      fan_out: Callable[..., tuple[topk.TopK, int]] | None = None) -> NeighborsResult:
    """The k nearest rows of model version V for every row of run R (with `run`: that committed run, V its
    version unless given; without: every committed run of V, the current version unless given, that has no
    neighbours yet, resumed runs included), written under the root's lease and committed as one record:
    ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet + ROOT/commits/W.json. A recomputed run's
    earlier neighbours are superseded in the same commit: a reader sees the old ones or the new ones, never
    half. `fan_out` computes `knn_files` elsewhere, with its arguments (e.g. over Ray tasks: ray_io.knn_ray).
    Remote roots use fsspec's configuration (credentials, endpoint), as the pipeline does."""
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
        files = listing.embeddings[model_version]
        corpus = VersionFiles(store.root, tuple(files))
        writer = PartWriter(lock, commit_id, model_version, metric, rows_per_part)
        queries = seen = k_out = 0
        try:
            for sha, runs, vectors in query_chunks(store, listing.snapshot, files, targets, QUERY_CHUNK):
                top, seen = (fan_out or knn_files)(vectors, sha, corpus, k, metric, backend=backend,
                                                   block_rows=block_rows, corpus_block=corpus_block)
                k_out = max(0, min(k, seen - 1))  # every query's own row is in the corpus
                writer.add(sha, runs, top.sha[:, :k_out], top.dist[:, :k_out])
                queries += len(sha)
                lock.check()
            parts = writer.commit(listing.snapshot, targets)
        except BaseException:
            writer.abort()
            raise
    corpus_rows = seen if queries else sum(_rows(store, f) for f in files)
    return NeighborsResult(runs=targets, model_version=model_version, queries=queries, corpus=corpus_rows,
                           k=k_out, metric=metric, backend=f"{backend}{'+fan-out' if fan_out else ''}",
                           parts=[lock.store.uri(rel) for rel in parts], seconds=time.perf_counter() - t0)


def _rows(store: Store, rel: str) -> int:
    with store.open(rel) as fh:
        return pq.ParquetFile(fh).metadata.num_rows


class PartWriter:
    """Writes neighbours as ROOT/neighbors/model_version=V/run=R/commit=W/part-NNNNNN.parquet (invisible until
    committed), `rows_per_part` rows a part, as chunks of queries arrive; then one commit record. Deletes only
    what it wrote, and only when the job fails before committing (abort)."""

    def __init__(self, lock: RootLock, commit_id: str, version: str, metric: str, rows_per_part: int) -> None:
        self.lock, self.commit_id, self.version, self.metric = lock, commit_id, version, metric
        self.rows_per_part = rows_per_part
        self.pending: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.parts: dict[str, int] = {}
        self.added: dict[str, dict] = {}

    def add(self, query_sha: np.ndarray, runs: np.ndarray, neighbor_sha: np.ndarray, dist: np.ndarray) -> None:
        per = max(1, self.rows_per_part // max(1, neighbor_sha.shape[1]))  # queries per part
        for run in sorted(set(runs.tolist())):
            sel = np.nonzero(runs == run)[0]
            self.pending.setdefault(run, []).append((query_sha[sel], neighbor_sha[sel], dist[sel]))
            while sum(len(p[0]) for p in self.pending.get(run, [])) >= per:
                self._flush(run, per)

    def _flush(self, run: str, per: int | None) -> None:
        held = self.pending.pop(run, [])
        if not held:
            return
        q, nb, d = (np.concatenate([h[i] for h in held]) for i in range(3))
        cut = len(q) if per is None else per
        if len(q) > cut:
            self.pending[run] = [(q[cut:], nb[cut:], d[cut:])]
        n = self.parts.get(run, 0)
        self.parts[run] = n + 1
        rel = f"neighbors/model_version={self.version}/run={run}/commit={self.commit_id}/part-{n:06d}.parquet"
        self.lock.store.write_parquet(rel, neighbors_table(q[:cut], nb[:cut], d[:cut], self.metric, self.version, run))
        self.added[rel] = {"rows": int(cut * nb.shape[1]), "runs": [run]}

    def commit(self, snap: catalog.Snapshot, targets: list[str]) -> list[str]:
        """Write what is pending, carry over the other runs' rows of any earlier file that also held a target's
        rows, then publish commits/W.json superseding the targets' earlier files. Returns the new parts of
        `targets`."""
        for run in list(self.pending):
            self._flush(run, None)
        parts = list(self.added)
        store, version = self.lock.store, self.version
        removed = []
        for n, rel in enumerate(f for f in snap.table_files("neighbors", version)
                                if set(snap.runs_in(f)) & set(targets)):
            removed.append(rel)
            others = sorted(set(snap.runs_in(rel)) - set(targets))
            if others:  # a compacted file holding other runs' neighbours too: they stay visible
                old = store.read_parquet(rel)
                kept = old.filter(pc.invert(pc.is_in(old.column("run_id"), value_set=pa.array(targets, pa.string()))))
                carried = f"neighbors/model_version={version}/commit={self.commit_id}/part-kept-{n:06d}.parquet"
                store.write_parquet(carried, kept)
                self.added[carried] = {"rows": kept.num_rows, "runs": others}
        if self.added or removed:
            self.lock.check(commit=True)
            catalog.kill_point("neighbors-commit")
            catalog.write_commit(store, self.commit_id, "neighbors", self.added, removed)
        return parts

    def abort(self) -> None:
        for rel in self.added:
            self.lock.store.remove(rel)
