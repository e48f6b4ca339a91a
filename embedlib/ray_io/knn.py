"""Batch nearest neighbours fanned out over Ray tasks (jobs.neighbors --ray-tasks)."""

from __future__ import annotations

from embedlib.ray_io import init_ray


def knn_ray(queries, corpus, k: int, metric: str, query_index,
            block_rows: int, corpus_block: int, num_tasks: int, backend: str = "numpy",
            address: str | None = None) -> tuple:
    """neighbors.knn over `num_tasks` Ray tasks, each taking a contiguous slice of the queries against the whole
    corpus (put once in the object store, read zero-copy by every task on a node). A task asks for a GPU when
    the backend is torch on CUDA. Results come back in query order, identical to one knn call."""
    import numpy as np
    import ray

    from embedlib.query.neighbors import knn

    init_ray(address)
    gpu = backend.startswith("torch") and backend != "torch:cpu" and ray.cluster_resources().get("GPU", 0) > 0

    @ray.remote(num_gpus=1 if gpu else 0)
    def one_slice(corpus_ref, q, own):
        return knn(q, corpus_ref, k, metric, own, block_rows=block_rows, corpus_block=corpus_block,
                   backend=backend if gpu or not backend.startswith("torch") else "numpy")

    corpus_ref = ray.put(np.ascontiguousarray(corpus, dtype=np.float32))
    slices = [s for s in np.array_split(np.arange(len(queries)), max(1, num_tasks)) if len(s)]
    refs = [one_slice.remote(corpus_ref, queries[s], query_index[s]) for s in slices]
    results = ray.get(refs)
    if not results:
        return knn(queries, corpus, k, metric, query_index)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
