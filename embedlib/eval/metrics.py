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

Ties in a ranking (equal distances; frequent for digest scores, which are small integers, and for
missing digests) are never broken by the order of the gallery, which may correlate with labels (files
sorted by path). The policy is a parameter:
  "pessimistic" (default)  irrelevant items before relevant ones: a method earns nothing from a tie
  "optimistic"             relevant items first: the upper bound
  "expected"               the exact expectation over a uniformly random order within each tie group
                           (closed form, no sampling): the counterpart of ROC-AUC's 1/2 for ties
Every policy is deterministic. Without ties the three agree. ROC-AUC needs no policy: ties count 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

TIES = ("pessimistic", "optimistic", "expected")


@dataclass(frozen=True)
class Ranking:
    """Each query's view of the gallery, closest first (its own item removed when self_index was given)."""

    distances: np.ndarray  # [Q, G'] ascending per row (+inf for missing; NaN for excluded items, ranked last)
    relevant: np.ndarray  # [Q, G'] bool, in ranked order; within a tie group ordered by the policy
    ties: str
    n_ranked: np.ndarray | None = None  # [Q] items each query really ranks (G' minus its excluded items)

    @property
    def n_relevant(self) -> np.ndarray:
        """[Q] R: relevant items per query."""
        return self.relevant.sum(axis=1)


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


def rank(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence, *,
         self_index: Sequence[int] | None = None, higher_is_closer: bool = False,
         ties: str = "pessimistic", exclude: np.ndarray | None = None) -> Ranking:
    """Sort every query's gallery by distance; G' = G - 1 when `self_index` is given, else G.

    `exclude` ([Q, G] bool) removes items from a query's ranking (e.g. files with the query's name: the same
    program built for another architecture): they go last, count as irrelevant, are no tie group's members
    (NaN distance) and are not in the P@k denominator (Ranking.n_ranked)."""
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
    n_ranked = None
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool) & ~is_self
        if exclude.shape != d.shape:
            raise ValueError(f"exclude {exclude.shape} does not match distances {d.shape}")
        rel = rel & ~exclude
        d = np.where(exclude, np.nan, d)
        n_ranked = n_g - (self_index is not None) - exclude.sum(axis=1)
    tie_key = ~rel if ties == "optimistic" else rel  # False sorts first
    # np.lexsort: the last key is the primary one (self goes last); it is stable, so the gallery index
    # orders what is left, i.e. items of equal distance and equal relevance: no metric can tell them apart.
    # Excluded items (NaN) sort after every number, before self.
    order = np.lexsort((tie_key, d, is_self), axis=-1)
    ranked_d = np.take_along_axis(d, order, axis=-1)
    ranked = np.take_along_axis(rel, order, axis=-1)
    if self_index is not None:
        ranked_d, ranked = ranked_d[:, :-1], ranked[:, :-1]
    return Ranking(ranked_d, ranked, ties, n_ranked)


def ranked_relevance(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                     **ranking) -> np.ndarray:
    """[Q, G'] bool: row q is the relevance of the gallery in the order query q ranks it (see rank())."""
    return rank(distances, query_labels, gallery_labels, **ranking).relevant


def _tie_groups(ranking: Ranking) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per ranked position: (start of its tie group, group size, relevant in the group, relevant before it)."""
    d, rel = ranking.distances, ranking.relevant
    n_q, n = d.shape
    pos = np.broadcast_to(np.arange(n), (n_q, n))
    starts_here = np.ones((n_q, n), dtype=bool)
    starts_here[:, 1:] = d[:, 1:] != d[:, :-1]
    start = np.maximum.accumulate(np.where(starts_here, pos, 0), axis=1)
    ends_here = np.ones((n_q, n), dtype=bool)
    ends_here[:, :-1] = starts_here[:, 1:]
    end = np.minimum.accumulate(np.where(ends_here, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]  # last index of group
    cum = np.zeros((n_q, n + 1), dtype=np.int64)
    cum[:, 1:] = np.cumsum(rel, axis=1)
    before = np.take_along_axis(cum, start, axis=1)
    in_group = np.take_along_axis(cum, end + 1, axis=1) - before
    return start, end - start + 1, in_group, before


def precision_at_k_ranked(ranking: Ranking, k: int) -> np.ndarray:
    """[Q] P@k; the denominator is min(k, items ranked)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    n_q, n = ranking.relevant.shape
    width = min(k, n)
    if width == 0:
        return np.full(n_q, np.nan)
    denom = np.full(n_q, width, dtype=np.float64) if ranking.n_ranked is None else \
        np.minimum(width, ranking.n_ranked).astype(np.float64)
    denom[denom == 0] = np.nan
    if ranking.ties != "expected":
        return ranking.relevant[:, :width].sum(axis=1) / denom
    start, size, in_group, before = (a[:, width - 1] for a in _tie_groups(ranking))
    # the group holding position `width` contributes its relevant share of the slots it gets in the top k
    return (before + (width - start) * in_group / size) / denom


def average_precision_at_r_ranked(ranking: Ranking) -> np.ndarray:
    """[Q] AP@R (R = relevant items of the query; NaN where R = 0)."""
    rel = ranking.relevant
    r = rel.sum(axis=1)
    out = np.full(rel.shape[0], np.nan)
    if rel.shape[0] == 0 or r.max() == 0:
        return out
    width = int(r.max())
    positions = np.arange(1, width + 1)
    within_r = positions[None, :] <= r[:, None]
    if ranking.ties == "expected":
        start, size, in_group, before = (a[:, :width] for a in _tie_groups(ranking))
        # E[rel_i * (relevant in 1..i)] for position i at offset j (0-based) in a group of n with m relevant:
        # P(rel_i) = m/n, and given rel_i the j earlier group slots hold (m-1)/(n-1) relevant each on average.
        j = positions[None, :] - 1 - start
        share = np.divide(in_group - 1, size - 1, out=np.zeros(size.shape), where=size > 1)
        hits_times_count = (in_group / size) * (before + 1 + j * share)
        total = (hits_times_count / positions[None, :] * within_r).sum(axis=1)
    else:
        top = rel[:, :width]
        precision_at_i = np.cumsum(top, axis=1) / positions[None, :]
        total = (precision_at_i * (top & within_r)).sum(axis=1)
    has = r > 0
    out[has] = total[has] / r[has]
    return out


def precision_at_k(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence, k: int,
                   **ranking) -> np.ndarray:
    """[Q] P@k per query. `ranking`: self_index, higher_is_closer, ties (see rank)."""
    return precision_at_k_ranked(rank(distances, query_labels, gallery_labels, **ranking), k)


def average_precision_at_r(distances: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                           **ranking) -> np.ndarray:
    """[Q] AP@R per query (NaN for queries with no relevant item)."""
    return average_precision_at_r_ranked(rank(distances, query_labels, gallery_labels, **ranking))


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
