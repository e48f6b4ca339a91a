"""Retrieval metrics over a distance (or score) matrix and family labels. Pure numpy, exact, per query.

Setting: Q queries, a gallery of G items, `distances[q, g]` (lower = closer) or scores with
`higher_is_closer=True`. Gallery item g is *relevant* to query q when their labels are equal. When the
queries are gallery items themselves, `self_index[q]` is the query's own column: it is removed from its
ranking and never counts as relevant.

Definitions (Musgrave, Belongie, Lim 2020, "A Metric Learning Reality Check"):
  R_q      number of relevant gallery items for query q (itself excluded)
  P@k      (relevant items among the first k ranked) / min(k, number of ranked items)
  AP@R     (1/R_q) * sum_{i=1..R_q} P@i * rel_i   (NaN when R_q = 0: such a query has nothing to find)
  MAP@R    mean of AP@R over queries with R_q > 0
  ROC-AUC  over (query, gallery item) pairs: probability that a same-label pair is closer than a
           different-label pair, ties counting 1/2 (Mann-Whitney U with average ranks)

Missing values (NaN, e.g. a file with no TLSH digest) are treated as infinitely far: ranked last.

Ties in a ranking (equal distances; frequent for digest scores, which are small integers) are broken by
a policy, never by the order of the gallery (which may correlate with labels, e.g. files sorted by path):
  "pessimistic" (default)  irrelevant items before relevant ones: a method earns nothing from a tie
  "optimistic"             relevant items first: the upper bound
Within one policy the order is then stable (by gallery index), so results are deterministic. The gap
between the two policies is how much a method's numbers depend on ties. ROC-AUC needs no policy: ties
count 1/2 there, as usual.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TIES = ("pessimistic", "optimistic")


def as_distances(matrix: np.ndarray, higher_is_closer: bool = False) -> np.ndarray:
    """float64 distances, lower = closer; NaN (missing) becomes +inf so it ranks last."""
    d = np.asarray(matrix, dtype=np.float64)
    d = -d if higher_is_closer else d.copy()
    d[np.isnan(d)] = np.inf
    return d


def relevance(query_labels: Sequence, gallery_labels: Sequence) -> np.ndarray:
    """[Q, G] bool: gallery item g has query q's label."""
    q = np.asarray(query_labels, dtype=object)
    g = np.asarray(gallery_labels, dtype=object)
    return q[:, None] == g[None, :]


def ranked_relevance(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence, *,
                     self_index: Sequence[int] | None = None, higher_is_closer: bool = False,
                     ties: str = "pessimistic") -> np.ndarray:
    """[Q, G'] bool: row q is the relevance of the gallery in the order query q ranks it (closest first).

    G' = G - 1 when `self_index` is given (each query's own column is dropped), else G.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    d = as_distances(distances, higher_is_closer)
    rel = relevance(query_labels, gallery_labels)
    if d.shape != rel.shape:
        raise ValueError(f"distances {d.shape} do not match labels ({rel.shape[0]} queries, {rel.shape[1]} gallery)")
    n_q, n_g = d.shape
    is_self = np.zeros((n_q, n_g), dtype=bool)
    if self_index is not None:
        idx = np.asarray(self_index, dtype=np.int64)
        if idx.shape != (n_q,) or (n_q and (idx.min() < 0 or idx.max() >= n_g)):
            raise ValueError("self_index must give one valid gallery column per query")
        is_self[np.arange(n_q), idx] = True
    tie_key = rel if ties == "pessimistic" else ~rel  # False sorts first
    # np.lexsort: the last key is the primary one; it is stable, so the gallery index breaks what is left.
    order = np.lexsort((tie_key, d, is_self), axis=-1)
    ranked = np.take_along_axis(rel, order, axis=-1)
    return ranked[:, :-1] if self_index is not None else ranked


def precision_at_k_ranked(ranked: np.ndarray, k: int) -> np.ndarray:
    """[Q] P@k from a ranked relevance matrix; the denominator is min(k, items ranked)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    width = min(k, ranked.shape[1])
    if width == 0:
        return np.full(ranked.shape[0], np.nan)
    return ranked[:, :width].sum(axis=1) / width


def average_precision_at_r_ranked(ranked: np.ndarray) -> np.ndarray:
    """[Q] AP@R from a ranked relevance matrix (R = relevant items in the row; NaN where R = 0)."""
    r = ranked.sum(axis=1)
    out = np.full(ranked.shape[0], np.nan)
    if ranked.shape[0] == 0 or r.max() == 0:
        return out
    top = ranked[:, : int(r.max())]
    positions = np.arange(1, top.shape[1] + 1)
    within_r = positions[None, :] <= r[:, None]
    hits = top & within_r
    precision_at_i = np.cumsum(top, axis=1) / positions[None, :]
    total = (precision_at_i * hits).sum(axis=1)
    has = r > 0
    out[has] = total[has] / r[has]
    return out


def precision_at_k(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence, k: int,
                   **ranking) -> np.ndarray:
    """[Q] P@k per query. `ranking`: self_index, higher_is_closer, ties (see ranked_relevance)."""
    return precision_at_k_ranked(ranked_relevance(distances, query_labels, gallery_labels, **ranking), k)


def average_precision_at_r(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                           **ranking) -> np.ndarray:
    """[Q] AP@R per query (NaN for queries with no relevant item)."""
    return average_precision_at_r_ranked(ranked_relevance(distances, query_labels, gallery_labels, **ranking))


def map_at_r(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence, **ranking) -> float:
    """MAP@R: mean AP@R over the queries that have at least one relevant item."""
    ap = average_precision_at_r(distances, query_labels, gallery_labels, **ranking)
    if np.all(np.isnan(ap)):
        raise ValueError("no query has a relevant item: MAP@R is undefined")
    return float(np.nanmean(ap))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (ascending), tied values sharing the mean of their ranks."""
    x = np.asarray(values).ravel()
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_group = np.r_[True, xs[1:] != xs[:-1]] if len(xs) else np.zeros(0, bool)
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(xs)]
    mean_rank = (starts + 1 + ends) / 2.0  # ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def pair_roc_auc(distances: np.ndarray, same: np.ndarray, higher_is_closer: bool = False) -> float:
    """ROC-AUC of "same label" from pair distances: P(d_same < d_diff) + 1/2 P(d_same == d_diff).

    `distances` and `same` are matching arrays of pairs (any shape). NaN distances are +inf (farthest).
    NaN when there are no same or no different pairs.
    """
    d = as_distances(np.asarray(distances).ravel(), higher_is_closer)
    pos = np.asarray(same, dtype=bool).ravel()
    if d.shape != pos.shape:
        raise ValueError("distances and same must have the same number of pairs")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(-d)  # ascending closeness: a perfect method ranks every same pair highest
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def query_pairs(n_queries: int, n_gallery: int, self_index: Sequence[int] | None = None) -> np.ndarray:
    """[Q, G] bool mask of the (query, gallery item) pairs that count: all but each query with itself."""
    mask = np.ones((n_queries, n_gallery), dtype=bool)
    if self_index is not None:
        mask[np.arange(n_queries), np.asarray(self_index, dtype=np.int64)] = False
    return mask
