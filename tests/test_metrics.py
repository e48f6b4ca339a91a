"""embedlib.eval.metrics against hand-computed cases and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedlib.eval import metrics


def two_families():
    labels = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    same = labels[:, None] == labels[None, :]
    d = np.where(same, 0.1, 0.9)
    np.fill_diagonal(d, 0.0)
    return d, labels


def test_perfect_ranking_is_one_everywhere():
    d, labels = two_families()
    opts = dict(self_index=np.arange(6))
    assert np.all(metrics.precision_at_k(d, labels, labels, 1, **opts) == 1.0)
    assert np.all(metrics.precision_at_k(d, labels, labels, 2, **opts) == 1.0)  # k <= R
    assert np.all(metrics.average_precision_at_r(d, labels, labels, **opts) == 1.0)
    assert metrics.map_at_r(d, labels, labels, **opts) == 1.0
    pairs = metrics.query_pairs(6, 6, np.arange(6))
    assert metrics.pair_roc_auc(d[pairs], (labels[:, None] == labels[None, :])[pairs]) == 1.0


def test_hand_computed_adversarial_ranking():
    # one query "a"; gallery ranked b, a, b, a  -> rel = 0 1 0 1, R = 2
    d = np.array([[0.1, 0.2, 0.3, 0.4]])
    gallery = ["b", "a", "b", "a"]
    assert metrics.precision_at_k(d, ["a"], gallery, 1)[0] == 0.0
    assert metrics.precision_at_k(d, ["a"], gallery, 2)[0] == 0.5
    assert metrics.precision_at_k(d, ["a"], gallery, 10)[0] == 0.5  # denominator min(k, 4)
    # AP@R = 1/2 * (P@1*0 + P@2*1) = 1/2 * 1/2
    assert metrics.average_precision_at_r(d, ["a"], gallery)[0] == pytest.approx(0.25)
    # same pairs at positions 2 and 4, different at 1 and 3: only (2 before 3) is ordered right -> 1/4
    assert metrics.pair_roc_auc(d[0], np.array(gallery) == "a") == pytest.approx(0.25)


def test_map_at_r_musgrave_example():
    # R = 3, ranking rel = 1 0 1 1 ... : AP@R = (1/3) * (1 + 0 + 2/3)  (only the first R positions count)
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    gallery = ["a", "b", "a", "a", "b"]
    assert metrics.average_precision_at_r(d, ["a"], gallery)[0] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_self_is_excluded_and_queries_can_be_a_subset():
    gallery = np.array(["a", "a", "b", "b", "b"], dtype=object)
    d = np.array([[0.0, 0.5, 0.2, 0.7, 0.8],  # query = gallery 0: self closest, then b, a, b, b
                  [0.6, 0.9, 0.1, 0.0, 0.2]])  # query = gallery 3: self, a... -> b(2), b(4), a(0), a(1)
    q = np.array([0, 3])
    ranked = metrics.ranked_relevance(d, gallery[q], gallery, self_index=q)
    assert ranked.shape == (2, 4)
    assert ranked.tolist() == [[False, True, False, False], [True, True, False, False]]
    assert metrics.precision_at_k(d, gallery[q], gallery, 1, self_index=q).tolist() == [0.0, 1.0]
    assert metrics.average_precision_at_r(d, gallery[q], gallery, self_index=q).tolist() == [0.0, 1.0]


def test_no_relevant_item_gives_nan_and_is_left_out_of_map():
    d = np.array([[0.1, 0.2], [0.3, 0.4]])
    ap = metrics.average_precision_at_r(d, ["a", "c"], ["a", "b"])
    assert ap[0] == 1.0 and np.isnan(ap[1])
    assert metrics.map_at_r(d, ["a", "c"], ["a", "b"]) == 1.0
    with pytest.raises(ValueError):
        metrics.map_at_r(d, ["c", "c"], ["a", "b"])


def test_ties_pessimistic_optimistic_and_independent_of_gallery_order():
    # query "a": b at 0.5, a at 0.5 (tied), a at 0.9
    d = np.array([[0.5, 0.5, 0.9]])
    gallery = ["b", "a", "a"]
    pess = dict(ties="pessimistic")
    opt = dict(ties="optimistic")
    assert metrics.precision_at_k(d, ["a"], gallery, 1, **pess)[0] == 0.0
    assert metrics.average_precision_at_r(d, ["a"], gallery, **pess)[0] == pytest.approx(0.25)
    assert metrics.precision_at_k(d, ["a"], gallery, 1, **opt)[0] == 1.0
    assert metrics.average_precision_at_r(d, ["a"], gallery, **opt)[0] == pytest.approx(0.5)
    # the gallery's order never breaks a tie: reversing it changes nothing
    rev = d[:, ::-1]
    for policy in (pess, opt):
        assert metrics.precision_at_k(rev, ["a"], gallery[::-1], 1, **policy)[0] == \
            metrics.precision_at_k(d, ["a"], gallery, 1, **policy)[0]
    # AUC counts the tie 1/2: (0.5 vs 0.5 -> 1/2) + (0.9 vs 0.5 -> 0), over 2 pairs
    assert metrics.pair_roc_auc(d[0], np.array(gallery) == "a") == pytest.approx(0.25)
    # expected (random order within the tie): P@1 = 1/2; AP@R = 1/2 * (E[rel_1] + E[rel_2 * hits(1..2)] / 2)
    #   = 1/2 * (1/2 + (1/2 * 1) / 2) = 3/8   (rel_2 is "a" half the time, and then rel_1 is b: hits = 1)
    exp = dict(ties="expected")
    assert metrics.precision_at_k(d, ["a"], gallery, 1, **exp)[0] == pytest.approx(0.5)
    assert metrics.average_precision_at_r(d, ["a"], gallery, **exp)[0] == pytest.approx(3 / 8)
    with pytest.raises(ValueError):
        metrics.ranked_relevance(d, ["a"], gallery, ties="random")


def test_scores_higher_is_closer_and_missing_ranks_last():
    d = np.array([[0.1, 0.2, 0.3]])
    gallery = ["b", "a", "a"]
    ap_d = metrics.average_precision_at_r(d, ["a"], gallery)
    ap_s = metrics.average_precision_at_r(100 - d, ["a"], gallery, higher_is_closer=True)
    assert ap_d[0] == ap_s[0]
    # a missing value (NaN) is farther than anything, for distances and for scores
    nan_d = np.array([[np.nan, 0.9, 0.8]])
    assert metrics.precision_at_k(nan_d, ["a"], ["a", "b", "b"], 2)[0] == 0.0
    nan_s = np.array([[np.nan, 1.0, 2.0]])
    assert metrics.precision_at_k(nan_s, ["a"], ["a", "b", "b"], 2, higher_is_closer=True)[0] == 0.0
    assert metrics.pair_roc_auc(np.array([np.nan, 0.5]), np.array([True, False])) == 0.0


def _brute_force_auc(d: np.ndarray, same: np.ndarray) -> float:
    pos, neg = d[same], d[~same]
    wins = sum((p < n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _brute_force_ranking(d_row: np.ndarray, rel_row: np.ndarray) -> list[bool]:
    """Pessimistic ranking by sorting (distance, relevant) tuples: the definition, spelled out."""
    return [bool(r) for _, r, _ in sorted(zip(d_row, rel_row, range(len(d_row))))]


def _brute_force_ap_at_r(rel: list[bool]) -> float:
    r = sum(rel)
    if r == 0:
        return float("nan")
    return sum(sum(rel[: i + 1]) / (i + 1) for i in range(r) if rel[i]) / r


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n_q, n_g = 7, 30
    d = rng.integers(0, 6, size=(n_q, n_g)).astype(float)  # small integers: lots of ties
    gallery = rng.choice(["a", "b", "c"], size=n_g).astype(object)
    queries = rng.choice(["a", "b", "c", "d"], size=n_q).astype(object)
    rel = metrics.relevance(queries, gallery)
    assert metrics.pair_roc_auc(d, rel) == pytest.approx(_brute_force_auc(d.ravel(), rel.ravel()))
    ap = metrics.average_precision_at_r(d, queries, gallery)
    p5 = metrics.precision_at_k(d, queries, gallery, 5)
    for q in range(n_q):
        ranking = _brute_force_ranking(d[q], rel[q])
        expected = _brute_force_ap_at_r(ranking)
        assert (np.isnan(ap[q]) and np.isnan(expected)) or ap[q] == pytest.approx(expected)
        assert p5[q] == pytest.approx(sum(ranking[:5]) / 5)


def test_average_ranks():
    assert metrics.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert metrics.average_ranks(np.array([np.inf, np.inf])).tolist() == [1.5, 1.5]


def test_auc_degenerate_cases():
    assert np.isnan(metrics.pair_roc_auc(np.array([0.1, 0.2]), np.array([True, True])))
    assert metrics.pair_roc_auc(np.array([0.1, 0.2]), np.array([False, True])) == 0.0


def _expected_by_enumeration(d_row, rel_row, fn):
    groups = [rel_row[d_row == v].tolist() for v in np.unique(d_row)]
    per_group = [list(itertools.permutations(g)) for g in groups]  # all n! orders, duplicates included
    values = [fn([r for order in orders for r in order]) for orders in itertools.product(*per_group)]
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(6))
def test_expected_ties_equal_the_average_over_every_tie_order(seed):
    rng = np.random.default_rng(100 + seed)
    n_g = 9
    d = rng.integers(0, 3, size=(3, n_g)).astype(float)
    d[0, 4] = np.nan  # a missing value ties with nothing but other missing ones, at the end
    gallery = rng.choice(["a", "b"], size=n_g).astype(object)
    queries = np.array(["a", "b", "a"], dtype=object)
    rel = metrics.relevance(queries, gallery)
    ap = metrics.average_precision_at_r(d, queries, gallery, ties="expected")
    p1 = metrics.precision_at_k(d, queries, gallery, 1, ties="expected")
    p4 = metrics.precision_at_k(d, queries, gallery, 4, ties="expected")
    lo = metrics.average_precision_at_r(d, queries, gallery, ties="pessimistic")
    hi = metrics.average_precision_at_r(d, queries, gallery, ties="optimistic")
    for q in range(len(queries)):
        row = metrics.as_distances(d[q])
        assert ap[q] == pytest.approx(_expected_by_enumeration(row, rel[q], _brute_force_ap_at_r))
        assert p1[q] == pytest.approx(_expected_by_enumeration(row, rel[q], lambda r: r[0]))
        assert p4[q] == pytest.approx(_expected_by_enumeration(row, rel[q], lambda r: sum(r[:4]) / 4))
        assert lo[q] - 1e-12 <= ap[q] <= hi[q] + 1e-12


def test_policies_agree_without_ties_and_self_exclusion_works_for_expected():
    rng = np.random.default_rng(7)
    labels = rng.choice(["a", "b", "c"], size=12).astype(object)
    d = rng.random((12, 12))
    d = (d + d.T) / 2
    q = np.arange(12)
    results = [metrics.average_precision_at_r(d, labels, labels, self_index=q, ties=t) for t in metrics.TIES]
    assert np.allclose(results[0], results[1], equal_nan=True) and np.allclose(results[0], results[2], equal_nan=True)
    # self ties with everything: the expected policy must still drop it, not share its slot
    flat = np.zeros((12, 12))
    p1 = metrics.precision_at_k(flat, labels, labels, 1, self_index=q, ties="expected")
    counts = {f: int((labels == f).sum()) for f in set(labels)}
    assert p1 == pytest.approx([(counts[f] - 1) / 11 for f in labels])


def test_excluded_items_are_ranked_out():
    # query 0 (a); gallery a(self) a(excluded, closest) b a b: the excluded a neither helps nor counts
    d = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    gallery = np.array(["a", "a", "b", "a", "b"], dtype=object)
    exclude = np.array([[False, True, False, False, False]])
    for ties in metrics.TIES:
        ranking = metrics.rank(d, ["a"], gallery, self_index=[0], exclude=exclude, ties=ties)
        assert ranking.n_relevant.tolist() == [1]
        assert ranking.relevant.tolist() == [[False, True, False, False]]
        assert metrics.precision_at_k_ranked(ranking, 1)[0] == 0.0
        assert metrics.precision_at_k_ranked(ranking, 10)[0] == pytest.approx(1 / 3)  # 3 ranked items
        assert metrics.average_precision_at_r_ranked(ranking)[0] == 0.0
    with pytest.raises(ValueError):
        metrics.rank(d, ["a"], gallery, exclude=np.zeros((1, 3), bool))
