"""Batch nearest neighbours fanned out over Ray tasks (jobs.neighbors --ray-tasks)."""

from __future__ import annotations

from embedlib.ray_io import init_ray


def knn_ray(queries, query_sha, corpus, k: int, metric: str = "cosine", backend: str = "numpy",
            block_rows: int = 2048, corpus_block: int = 16384, num_tasks: int = 2,
            address: str | None = None) -> tuple:
    """neighbors.knn_files over `num_tasks` Ray tasks: each reads a group of the version's files (about the same
    bytes each) and finds the k nearest of every query among them; the queries are put in the object store
    once (read zero-copy by every task on a node). The groups' results merge into exactly the answer of one
    scan (topk.merge). A task asks for a GPU when the backend is torch on CUDA."""
    import dataclasses

    import numpy as np
    import ray

    from embedlib.query import topk
    from embedlib.query.neighbors import knn_files
    from embedlib.root.store import Store

    init_ray(address)
    gpu = backend.startswith("torch") and backend != "torch:cpu" and ray.cluster_resources().get("GPU", 0) > 0
    store = Store(corpus.root)
    sizes = np.array([store.size(f) for f in corpus.files], np.int64)
    bounds = np.searchsorted(np.cumsum(sizes), np.linspace(0, sizes.sum(), max(1, num_tasks) + 1)[1:-1])
    groups = [g for g in np.split(np.arange(len(corpus.files)), bounds) if len(g)]

    @ray.remote(num_gpus=1 if gpu else 0)
    def one_group(q, q_sha, files):
        part = dataclasses.replace(corpus, files=tuple(corpus.files[i] for i in files))
        return knn_files(q, q_sha, part, k, metric, backend=backend if gpu or not backend.startswith("torch")
                         else "numpy", block_rows=block_rows, corpus_block=corpus_block)

    q_ref, sha_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32)), ray.put(np.asarray(query_sha))
    results = ray.get([one_group.remote(q_ref, sha_ref, g) for g in groups])
    if not results:
        return knn_files(queries, query_sha, corpus, k, metric, backend, block_rows, corpus_block)
    best, seen = topk.TopK.empty(len(queries)), 0
    for part, rows in results:
        best, seen = topk.merge(best, part, k), seen + rows
    return best, seen
