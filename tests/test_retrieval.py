"""embedlib.eval.retrieval: the protocol's split, query choice (both modes), scorers and per-query metrics."""

from __future__ import annotations

import numpy as np
import pytest

from embedlib.eval import metrics

from embedlib.eval import retrieval
from embedlib.train.split import FAMILY_SALT, bucket


def test_roles_follow_the_family_and_file_hashes():
    shas = [f"{i:064x}" for i in range(400)]
    families = [f"fam{i % 40}" for i in range(400)]
    role = retrieval.roles(shas, families, 0.25, 0.2)
    unseen = {f for f in set(families) if bucket(f, FAMILY_SALT) < 0.25}
    assert 0 < len(unseen) < 40
    for s, f, r in zip(shas, families, role):
        assert r == ("unseen" if f in unseen else "known" if bucket(s) < 0.2 else "train")
    assert np.array_equal(role, retrieval.roles(shas, families, 0.25, 0.2))  # stable
    assert set(retrieval.roles(shas, families, 0.0, 0.0)) == {"train"}


def test_queries_drop_lonely_files_and_namesake_only_families():
    role = np.array(["known"] * 6, dtype=object)
    families = np.array(["a", "a", "b", "c", "c", "d"])
    names = np.array(["x", "x", "y", "z", "w", "v"])
    assert retrieval.queries(role, families, "known").tolist() == [0, 1, 3, 4]  # b and d are alone
    # family a is one program twice (same name): nothing else to find in the other-programs mode
    assert retrieval.queries(role, families, "known", names, "other-programs").tolist() == [3, 4]
    with pytest.raises(ValueError):
        retrieval.queries(role, families, "known", None, "other-programs")


def test_score_with_and_without_namesakes():
    # a0 and a1 are one program (same name, nearly equal vectors); a2 is another program of family a
    vectors = np.array([[1, 0, 0], [0.99, 0.1, 0], [0.6, 0.8, 0], [0.7, 0.71, 0], [0, 0, 1]], dtype=np.float32)
    families = np.array(["a", "a", "a", "b", "b"])
    names = np.array(["p", "p", "q", "r", "s"])
    scorer = retrieval.Cosine(vectors)
    rows = np.array([0])
    all_mode = retrieval.score(scorer, rows, families, names, "all")
    assert all_mode["p_at_1"][0] == 1.0 and all_mode["r"][0] == 2
    other = retrieval.score(scorer, rows, families, names, "other-programs")
    # a1 is excluded; a2 (cos 0.6) comes after b3 (cos 0.7): P@1 = 0, R = 1, AP@R = 0
    assert other["p_at_1"][0] == 0.0 and other["r"][0] == 1 and other["ap_at_r"][0] == 0.0
    # against metrics directly: excluded items leave the P@k denominator
    d = scorer.distances(rows)
    ranking = metrics.rank(d, families[rows], families, self_index=rows,
                           exclude=retrieval.same_name_mask(names, rows))
    assert ranking.n_ranked.tolist() == [3]
    assert metrics.precision_at_k_ranked(ranking, 10)[0] == pytest.approx(1 / 3)


def test_cosine_marks_zero_vectors_missing():
    d = retrieval.Cosine(np.array([[1.0, 0], [0, 0], [1, 1]])).distances(np.array([0, 1]))
    assert np.isnan(d[0, 1]) and np.all(np.isnan(d[1])) and d[0, 2] == pytest.approx(1 - 2**-0.5)


def test_tfidf_set_vectors_weights_rare_buckets_more():
    x = retrieval.tfidf_set_vectors([np.array([0, 1]), np.array([0]), np.array([0, 2, 2])], 4)
    assert x.shape == (3, 4) and x[2, 2] > x[0, 0] > 0 and x[0, 1] == x[2, 2]  # a set: 2 counts once
    assert x[:, 3].sum() == 0


def test_evaluate_methods_gives_one_row_per_method_split_mode_and_subset():
    rng = np.random.default_rng(0)
    families = np.repeat(np.array([f"f{i}" for i in range(10)]), 6)
    names = np.array([f"n{i % 3}" for i in range(60)])
    shas = [f"{i:064x}" for i in range(60)]
    role = retrieval.roles(shas, list(families), 0.3, 0.3)
    centers = rng.standard_normal((10, 8))
    vectors = np.repeat(centers, 6, axis=0) + 0.01 * rng.standard_normal((60, 8))
    cells = retrieval.settings(role, families, names)
    rows = retrieval.evaluate_methods({"v": retrieval.Cosine(vectors)}, families, names, cells,
                                      {"half": np.arange(60) % 2 == 0})
    assert len(rows) == 2 * 2 * 2
    full = [r for r in rows if r["subset"] == "all" and r["queries"]]
    assert full and all(r["p_at_1"] == 1.0 and r["map_at_r"] == 1.0 for r in full)


def test_sparse_cosine_equals_the_dense_tfidf_of_the_same_sets():
    """Exact item sets (no buckets): the inverted-index cosine equals the dense TF-IDF cosine; empty = NaN."""
    from embedlib.eval import retrieval as R

    rng = np.random.default_rng(3)
    vocab = rng.integers(0, 2**63, 60, dtype=np.uint64)
    sets = [rng.choice(vocab, rng.integers(1, 25)) for _ in range(30)] + [np.zeros(0, np.uint64)]
    ids = [np.searchsorted(np.unique(vocab), np.unique(s)) for s in sets]
    dense = R.Cosine(R.tfidf_set_vectors(ids, len(np.unique(vocab))))
    sparse = R.SparseCosine(sets)
    rows = np.arange(len(sets))
    a, b = dense.distances(rows), sparse.distances(rows)
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(b[-1]).all() and np.isnan(b[:, -1]).all()
    assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=1e-5)
    assert sparse.missing == 1
    # idf_power 2: the dense TF-IDF with every idf squared (the words baseline weighs them as the fixed part does)
    x = R.tfidf_set_vectors(ids, len(np.unique(vocab)))
    squared = np.where(x > 0, x ** 2, 0)
    c = R.Cosine(squared).distances(rows)
    b2 = R.SparseCosine(sets, idf_power=2.0).distances(rows)
    assert np.allclose(c[~np.isnan(c)], b2[~np.isnan(b2)], atol=1e-5) and not np.allclose(b2[~np.isnan(b2)], b[~np.isnan(b)])
