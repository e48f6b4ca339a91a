"""What the retrieval studies share: the product's tokens view from the token cache, and quick scoring of vectors
on the retrieval protocol's cells (embedlib.eval.retrieval)."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import token_cache  # noqa: E402

from embedlib import views  # noqa: E402
from embedlib.eval import retrieval  # noqa: E402


def attach_tokens(c, tokens_dir: str) -> None:
    t = token_cache.load(tokens_dir)
    for k in ("tks_h", "tks_len", "tki_h", "tki_len"):
        c.raw[k] = [t[p][k] for p in c.raw["path"].tolist()]
    c.raw["tokens_cpu_s"] = np.array([t[p]["tokens_cpu_s"] for p in c.raw["path"].tolist()])
    c.raw["sit_cpu_s"] = np.array([t[p]["sit_cpu_s"] for p in c.raw["path"].tolist()])


def token_sketch(c, buckets: int = 4096, min_len: int = 3, idents: bool = True) -> np.ndarray:
    """The product's `tokens` view (embedlib.views) from the cached word hashes."""
    out = np.zeros((len(c), buckets), np.uint8)
    for i in range(len(c)):
        h = c.raw["tks_h"][i][c.raw["tks_len"][i] >= min_len]
        if idents:
            h = np.union1d(h, c.raw["tki_h"][i][c.raw["tki_len"][i] >= min_len])
        out[i] = views.bucket_counts(h, buckets)
    return out


class Cached:
    """Cosine distances of a fixed set of query rows against the gallery, computed once (float32)."""

    def __init__(self, vec: np.ndarray, rows: np.ndarray) -> None:
        unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        unit[np.linalg.norm(vec, axis=1) == 0] = 0
        self.pos = {int(r): i for i, r in enumerate(rows)}
        self.sim = np.concatenate([unit[rows[s : s + 1024]] @ unit.T for s in range(0, len(rows), 1024)])
        self.zero = ~unit.any(axis=1)

    def distances(self, rows: np.ndarray) -> np.ndarray:
        d = 1.0 - self.sim[[self.pos[int(r)] for r in rows]].astype(np.float64)
        d[:, self.zero] = np.nan
        d[self.zero[rows]] = np.nan
        return d


def quick_cells(c, every: int) -> list[retrieval.Setting]:
    cells = retrieval.settings(c.role, c.family, c.name)
    return [retrieval.Setting(s.split, s.mode, s.rows[::every]) for s in cells]


def evaluate(c, vec: np.ndarray, cells: list[retrieval.Setting], poor: np.ndarray | None = None
             ) -> dict[str, dict]:
    rows = np.unique(np.concatenate([s.rows for s in cells]))
    scorer = Cached(vec, rows)
    out = {}
    for s in cells:
        pq = retrieval.score(scorer, s.rows, c.family, c.name, s.mode)
        out[f"{s.split}/{s.mode}"] = retrieval.summarize(pq)
        if poor is not None:
            out[f"{s.split}/{s.mode}/string-poor"] = retrieval.summarize(pq, poor[s.rows])
    return out


def line(name: str, res: dict) -> str:
    cells = [("known/all", "K"), ("unseen/all", "U"), ("known/other-programs", "Ko"), ("unseen/other-programs", "Uo")]
    return f"{name:>46} " + "  ".join(f"{t} {res[k]['p_at_1']:.3f}/{res[k]['map_at_r']:.3f}" for k, t in cells)
