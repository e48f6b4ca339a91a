"""What the learned part adds to the words (issue 22, label-free models): re-scored MAP@R of an *ungated* root
at one fixed learned share w for every file, and of the words alone (w = 0) at other hash widths.

  .venv/bin/python studies/unseen_families/regate.py MODEL UNGATED_MODEL --weight 0 --width 0
  .venv/bin/python -m jobs.embed --model UNGATED_MODEL --input /work/p22/m15.csv --output UNGATED_ROOT
  nice -n 10 .venv/bin/python studies/unseen_families/shares.py --feat /work/studies22/feat \\
      --manifest /work/p22/m15.csv --root UNGATED_ROOT --model UNGATED_MODEL \\
      [--weights 0,0.05,0.1,0.15] [--depth 1000] [--keep 2048] [--bits 20,24]

Score of candidate c of query q (as rerank.py): w x (L_q . L_c) + (1 - w) x exact(q, c), with L the unit learned
slice and exact the cosine of the IDF ** model.skip_idf_power word vectors (the model's IDF, the file's `keep`
smallest ids). --bits: the words alone (w = 0), every word hashed to that many bits, IDF from the files of the
known families (what a label-free training on them sees), to tell whether hash collisions cost anything.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gate  # noqa: E402
import harness as H  # noqa: E402
import rerank  # noqa: E402
from embedlib import views  # noqa: E402
from embedlib.model import checkpoint  # noqa: E402

EVERY_WORD = 1 << 18  # more distinct words than any file of the study corpora has


def unit_rows(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.where(n > 0, a / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def hashed_words(c: H.Corpus, bits: int) -> sp.csr_matrix:
    """[N, 2^bits] unit IDF^2 rows of every word of each file, DF from the files outside the unseen families."""
    rows = [views.token_ids(h, bits, EVERY_WORD) for h in c.raw["tok"]]
    rows = [r[r != views.TOKEN_ID_PAD].astype(np.int64) for r in rows]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    x = sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows), indptr), shape=(len(rows), 1 << bits))
    idf = H.idf(x, np.flatnonzero(c.role != "unseen"), 2.0)
    print(f"{bits} bits: {len(np.unique(x.indices))} distinct ids", flush=True)
    return H.l2rows(sp.csr_matrix(x @ sp.diags(idf)))


def main() -> None:
    ap = gate.product_parser(__doc__)
    ap.add_argument("--weights", default="0,0.05,0.1,0.15")
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--keep", type=int, default=0, help="ids kept per file (default: the model's views.token_ids)")
    ap.add_argument("--bits", default="")
    a = ap.parse_args()
    c, v = gate.corpus_and_stored(a.feat, a.manifest, a.root)
    ckpt = checkpoint.load(a.model)
    m, vc = ckpt.config.model, ckpt.config.views
    split = m.embedding_dim - m.skip_dim
    learned, fixed = unit_rows(v[:, :split]), unit_rows(v[:, split:])
    idf = ckpt.model.id_sets["token_ids"].idf.double().numpy()
    x = rerank.exact_vectors(c.raw["tok"], idf, m.skip_idf_power, vc.token_id_bits, a.keep or vc.token_ids, 0)
    for w in [float(t) for t in a.weights.split(",") if t]:
        mix = np.ascontiguousarray(np.hstack([learned * np.sqrt(w), fixed * np.sqrt(1 - w)]))
        r = rerank.reranked(c, mix, split, x, a.depth)
        r.name = f"share {w}, depth {a.depth}"
        print(r.line(), flush=True)
    words_only = np.ascontiguousarray(np.hstack([np.zeros_like(learned), fixed]))
    for bits in [int(t) for t in a.bits.split(",") if t]:
        r = rerank.reranked(c, words_only, split, hashed_words(c, bits), a.depth)
        r.name = f"words alone, {bits} bits, depth {a.depth}"
        print(r.line(), flush=True)


if __name__ == "__main__":
    main()
