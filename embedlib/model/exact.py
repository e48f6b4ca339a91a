"""The fixed part before its fold: each file's word ids with their exact weights, kept beside its embedding so that
a query re-scores its nearest candidates exactly.

The fixed part of an embedding (model.sketch_skip concat, skip_views token_ids) is the unit vector of the file's
word ids weighted IDF ** model.skip_idf_power, folded into model.skip_dim dimensions (TokenIdFold): its inner
products survive the fold only approximately, and a family never trained on is ranked by that part alone (the
open-set gate). `words_of` keeps the vector itself, scaled as it sits in the stored embedding (times the fixed
slice's norm, which carries the gate's share), its `top` heaviest ids. A candidate c of query q then scores

    L_q . L_c + sum over the ids both keep of w_q x w_c        (L: the stored embedding's learned slice)

which is the stored cosine with the fold's error taken out. Only the `depth` nearest by the stored embedding are
re-scored (a first stage any index can serve); the rest keep their order below them.
Measured (studies/unseen_families/rerank.py, 45,191 Debian files, 86 families never trained on, 1,500 queries a
cell): unseen MAP@R 0.837 -> 0.871 at depth 1000 (0.846 at 100), their other programs 0.822 -> 0.859, known
families unchanged (0.988). Keeping only a file's heaviest ids costs: the 256 heaviest 0.004 there, and on 14,087
files with an ungated or a label-free model they rank worse than no re-scoring (unseen 0.809 and 0.740 vs 0.813
and 0.748; every id: 0.820 and 0.752), so embed.exact_words keeps every id by default.
Pure: arrays in, arrays out. The SQL form of `rescore` is in embedlib/sql/similar.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.views import TOKEN_ID_PAD

# how many nearest candidates by the stored embedding a query re-scores. Unseen MAP@R 0.846 at 100, 0.871 at 1000
# (labelled, 45,191 files); label-free on 14,087 files 0.898 at 1,000, 0.905 at 3,000; similar() latency the same
# at both on 45,191 rows (bench/rerank_depth.py: the scan of the stored embeddings dominates)
RERANK_DEPTH = 3000

Words = tuple[np.ndarray, np.ndarray]  # (uint32 ids, float32 weights) of one file; empty arrays: no word


def words_of(token_ids: np.ndarray, weights: np.ndarray, fixed_norms: np.ndarray, top: int) -> list[Words]:
    """Per row of a token_ids batch [B, K] (padding TOKEN_ID_PAD): its ids and weights, weights[id] / norm x
    fixed_norms[row] (weights: the model's per-id IDF ** power), the `top` heaviest, ordered by id."""
    out: list[Words] = []
    for ids, norm in zip(np.asarray(token_ids), np.asarray(fixed_norms, np.float64)):
        ids = ids[ids != TOKEN_ID_PAD]
        w = weights[ids]
        w = w * (norm / max(float(np.sqrt(w @ w)), 1e-30))
        if 0 < top < len(ids):
            keep = np.sort(np.argpartition(-w, top)[:top])
            ids, w = ids[keep], w[keep]
        out.append((ids.astype(np.uint32), w.astype(np.float32)))
    return out


def to_arrow(words: Sequence[Words | None], typ: pa.DataType) -> pa.Array:
    """The `words` column (schema.WORDS): a list of {id, weight} per row, NULL for None."""
    lengths = [0 if w is None else len(w[0]) for w in words]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    ids = np.concatenate([w[0] for w in words if w is not None] or [np.zeros(0, np.uint32)])
    vals = np.concatenate([w[1] for w in words if w is not None] or [np.zeros(0, np.float32)])
    items = pa.StructArray.from_arrays([pa.array(ids, pa.uint32()), pa.array(vals, pa.float32())],
                                       fields=list(typ.value_type))
    mask = pa.array([w is None for w in words])
    return pa.ListArray.from_arrays(offsets, items, type=typ, mask=mask)


@dataclass(frozen=True)
class WordRows:
    """The `words` of many rows, flat (CSR): row r's ids are ids[indptr[r]:indptr[r + 1]], ascending."""

    indptr: np.ndarray  # int64 [rows + 1]
    ids: np.ndarray  # uint32
    weights: np.ndarray  # float64
    present: np.ndarray  # bool [rows]: the row has a words value (NULL: written before the column or without one)

    @staticmethod
    def from_arrow(column: pa.ChunkedArray | pa.Array) -> "WordRows":
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        present = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
        if arr.null_count:
            arr = pc.if_else(arr.is_valid(), arr, pa.scalar([], arr.type))
        offsets = np.asarray(arr.offsets.to_numpy(), np.int64)
        flat = arr.flatten()
        return WordRows(offsets - offsets[0], np.asarray(flat.field("id").to_numpy(zero_copy_only=False), np.uint32),
                        np.asarray(flat.field("weight").to_numpy(zero_copy_only=False), np.float64), present)

    def take(self, rows: np.ndarray) -> "WordRows":
        starts, counts = self.indptr[rows], np.diff(self.indptr)[rows]
        idx = gather_slices(starts, counts)
        return WordRows(np.concatenate([[0], np.cumsum(counts)]), self.ids[idx], self.weights[idx], self.present[rows])

    def dots(self, query: int, candidates: np.ndarray) -> np.ndarray:
        """float64 [len(candidates)]: the exact dot product of each candidate's words with row `query`'s."""
        a, b = self.indptr[query], self.indptr[query + 1]
        qi, qw = self.ids[a:b], self.weights[a:b]
        counts = np.diff(self.indptr)[candidates]
        if a == b or not counts.sum():
            return np.zeros(len(candidates))
        idx = gather_slices(self.indptr[candidates], counts)
        ci = self.ids[idx]
        pos = np.minimum(np.searchsorted(qi, ci), len(qi) - 1)
        contrib = np.where(qi[pos] == ci, self.weights[idx] * qw[pos], 0.0)
        return np.bincount(np.repeat(np.arange(len(candidates)), counts), weights=contrib, minlength=len(candidates))


def gather_slices(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The flat indices of the slices [start, start + count) one after another (CSR rows, postings)."""
    if not len(counts):
        return np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))


def rescore(learned: np.ndarray, words: WordRows, query: int, candidates: np.ndarray) -> np.ndarray:
    """Scores of `candidates` (row indices) for row `query`: learned-slice dot products plus the exact dot product
    of their words. Where either row has no words the caller keeps the stored cosine."""
    return learned[candidates] @ learned[query] + words.dots(query, candidates)
