"""The fixed (training-free) part of the embedding (issue 22, lever b): what a dense d-dim vector keeps of an
exact sparse TF-IDF. Computed from the feature cache, no training.

A fixed part = TF-IDF of a hashed sketch (B buckets from the hash's top bits, exactly embedlib.views.bucket_of;
B = 2^64 means exact) -> a linear map to d dims -> unit rows:
  gaussian      dense N(0, 1/d) matrix [B, d] (the product's concat_projection; B <= 2^16 here)
  orthogonal    the same with orthonormal columns (QR of the Gaussian)
  countsketch   sparse JL straight from the bucket index: each bucket adds +-w/sqrt(s) to s dims chosen by a
                hash of the bucket (Kane-Nelson); no [B, d] matrix, O(nnz * s) per file
IDF from the rows named by `df` (train / all / the train rows plus unlabelled rows ...), to a power.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness as H  # noqa: E402
from embedlib.views import _mix, bucket_of  # noqa: E402


def bucket_sets(sets: list[np.ndarray], buckets: int | None) -> sp.csr_matrix:
    """[N, B] counts of distinct hashes per bucket (B = None: exact, one column per distinct hash)."""
    if buckets is None:
        x, _ = H.csr(sets)
        return x
    rows, ptr, data = [], [0], []
    for h in sets:
        b, cnt = np.unique(bucket_of(np.asarray(h, np.uint64), buckets), return_counts=True)
        rows.append(b)
        data.append(cnt)
        ptr.append(ptr[-1] + len(b))
    return sp.csr_matrix((np.concatenate(data).astype(np.float32), np.concatenate(rows).astype(np.int64),
                          np.array(ptr, np.int64)), shape=(len(sets), buckets))


def weighted(x: sp.csr_matrix, idf_rows, power: float, tf: str = "log") -> sp.csr_matrix:
    """Unit rows of tf(count) x idf ** power (log = the product's log(1 + count); binary = sets)."""
    w = H.idf(x, idf_rows, power)
    y = x.copy()
    y.data = np.log1p(y.data) if tf == "log" else np.ones_like(y.data)
    return H.l2rows(sp.csr_matrix(y @ sp.diags(w)))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0).astype(np.float32)


def project(x: sp.csr_matrix, dim: int, kind: str = "gaussian", s: int = 1, seed: int = 12) -> np.ndarray:
    b = x.shape[1]
    if kind in ("gaussian", "orthogonal"):
        import torch

        g = torch.Generator().manual_seed(seed)
        m = torch.randn(b, dim, generator=g)
        if kind == "orthogonal":
            m = torch.linalg.qr(m)[0] * (b / dim) ** 0.5 if b >= dim else m
        m = (m / dim ** 0.5).numpy()
        return _unit(np.asarray(x @ m))
    if kind == "countsketch":
        cols = np.arange(b, dtype=np.uint64)
        out = None
        for j in range(s):
            with np.errstate(over="ignore"):
                h = _mix(cols * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed * 1000 + j + 1))
            dims = (h % np.uint64(dim)).astype(np.int64)
            sign = np.where((h >> np.uint64(63)) & np.uint64(1), -1.0, 1.0).astype(np.float32)
            m = sp.csr_matrix((sign / np.sqrt(s), dims, np.arange(b + 1)), shape=(b, dim))
            part = np.asarray((x @ m).todense())
            out = part if out is None else out + part
        return _unit(out)
    raise ValueError(kind)
