"""The fixed part before its fold (embedlib.model.exact) and the evaluation's re-scoring (retrieval.Reranked), on
small arrays whose answers are written out by hand or by dense numpy."""

from __future__ import annotations

import numpy as np
import pytest

from embedlib import schema
from embedlib.eval import retrieval
from embedlib.model import exact
from embedlib.views import TOKEN_ID_PAD

PAD = TOKEN_ID_PAD


def test_words_of_is_the_scaled_unit_vector_and_its_heaviest_ids():
    weights = np.arange(1, 21, dtype=np.float64)  # weight of id i: i + 1
    ids = np.array([[1, 5, 9, PAD], [2, PAD, PAD, PAD], [PAD, PAD, PAD, PAD]], np.uint32)
    rows = exact.words_of(ids, weights, np.array([0.5, 1.0, 1.0]), top=2)
    norm = np.sqrt(2**2 + 6**2 + 10**2)
    assert rows[0][0].tolist() == [5, 9]  # the two heaviest, by id
    np.testing.assert_allclose(rows[0][1], [0.5 * 6 / norm, 0.5 * 10 / norm], rtol=1e-6)
    assert rows[1][0].tolist() == [2] and rows[1][1].tolist() == [1.0]
    assert len(rows[2][0]) == 0  # a file without words keeps an empty list, not NULL
    every = exact.words_of(ids[:1], weights, np.array([0.5]), top=0)[0]
    assert every[0].tolist() == [1, 5, 9] and np.isclose(every[1] @ every[1], 0.25)


def test_the_column_round_trips_with_nulls_and_dots_are_dense_dots():
    rng = np.random.default_rng(3)
    rows: list = []
    dense = np.zeros((6, 50))
    for r in range(6):
        ids = np.sort(rng.choice(50, size=rng.integers(0, 12), replace=False)).astype(np.uint32)
        w = rng.random(len(ids)).astype(np.float32)
        dense[r, ids] = w
        rows.append((ids, w))
    rows[4] = None
    dense[4] = 0
    col = exact.to_arrow(rows, schema.WORDS)
    assert col.type == schema.WORDS and col.null_count == 1
    got = exact.WordRows.from_arrow(col)
    assert got.present.tolist() == [True, True, True, True, False, True]
    for q in range(6):
        np.testing.assert_allclose(got.dots(q, np.arange(6)), dense @ dense[q], rtol=1e-6, atol=1e-9)
    part = got.take(np.array([5, 0]))
    np.testing.assert_allclose(part.dots(0, np.array([0, 1])), dense[[5, 0]] @ dense[5], rtol=1e-6)


def _case():
    """Four rows: 2 learned + 2 fixed numbers each, and words whose exact dots disagree with the fixed slices."""
    v = np.array([[0.8, 0.0, 0.6, 0.0], [0.0, 0.8, 0.6, 0.0], [0.8, 0.0, 0.0, 0.6], [0.0, 0.0, 0.6, 0.8]],
                 np.float32)
    w = [(np.array([1, 2], np.uint32), np.array([0.6, 0.0], np.float32)),
         (np.array([2], np.uint32), np.array([0.6], np.float32)),
         (np.array([1], np.uint32), np.array([0.6], np.float32)),
         None]
    return v, exact.WordRows.from_arrow(exact.to_arrow(w, schema.WORDS))


def test_reranked_rescores_the_depth_nearest_and_keeps_the_rest_after():
    v, words = _case()
    every = retrieval.Reranked(v, 2, words, depth=10).distances(np.array([0]))[0]
    # row 1: learned 0, words share nothing -> 1; row 2: learned 0.64 + 0.36 -> 0; row 3 has no words: stored
    assert every[1:] == pytest.approx([1.0, 0.0, 1.0 - 0.36], abs=1e-6)
    stored = retrieval.Cosine(v).distances(np.array([0]))[0]
    assert stored[1:] == pytest.approx([1 - 0.36, 1 - 0.64, 1 - 0.36], abs=1e-6)
    one = retrieval.Reranked(v, 2, words, depth=1).distances(np.array([0]))[0]
    assert one[2] == pytest.approx(0.0, abs=1e-6)  # the nearest by the stored embedding, re-scored
    assert one[1] == pytest.approx(stored[1] + 4) and one[3] == pytest.approx(stored[3] + 4)  # after it, in order
    none = retrieval.Reranked(v, 2, words, depth=10).distances(np.array([3]))[0]
    np.testing.assert_allclose(none, retrieval.Cosine(v).distances(np.array([3]))[0])  # a query without words
