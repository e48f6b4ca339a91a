"""Exact sparse re-ranking (issue 22, lever "the fixed part loses information"): the stored embedding finds the
`depth` nearest candidates; each is then re-scored with its fixed part replaced by the exact sparse TF-IDF cosine
of the two files' word ids (the vector the fold projects), optionally kept only as each file's `top` heaviest ids.

  nice -n 10 .venv/bin/python studies/unseen_families/rerank.py --feat /work/studies22/feat \\
      --manifest /work/corpora/debian-multi/manifest.csv --root /work/p23/multi-w015/root \\
      --model /work/p23/multi-w015/model [--depths 100,300,1000] [--tops 0,64,128,256,512]

Score of a candidate c of query q: L_q . L_c + |F_q| |F_c| x exact(q, c), where L and F are the stored embedding's
learned and fixed slices (their norms carry the open-set gate's share) and exact the cosine of the unit IDF **
model.skip_idf_power vectors over the file's token_ids (the model's IDF, from its training files). Candidates
beyond `depth` keep their order below every re-scored one. `top` > 0 keeps each file's `top` heaviest weights
(not renormalised: the dot product of the truncated vectors). Rows "dense" are the stored embeddings as they are.
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
from embedlib import views  # noqa: E402
from embedlib.model import checkpoint  # noqa: E402


def exact_vectors(word_hashes: list[np.ndarray], idf: np.ndarray, power: float, bits: int, keep: int,
                  top: int) -> sp.csr_matrix:
    """[N, 2^bits] unit rows: each file's token_ids (views.token_ids) weighted idf ** power, top heaviest kept."""
    indptr, indices, data = [0], [], []
    for h in word_hashes:
        ids = views.token_ids(h, bits, keep)
        ids = ids[ids != views.TOKEN_ID_PAD].astype(np.int64)
        w = idf[ids] ** power
        w = w / max(float(np.sqrt(w @ w)), 1e-12)
        if top and len(ids) > top:
            k = np.argpartition(-w, top)[:top]
            ids, w = ids[k], w[k]
        indices.append(ids)
        data.append(w.astype(np.float32))
        indptr.append(indptr[-1] + len(ids))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)),
                         shape=(len(word_hashes), 1 << bits))


def reranked(c: H.Corpus, v: np.ndarray, split: int, x: sp.csr_matrix, depth: int) -> H.Result:
    """H.evaluate with each query's `depth` nearest by `v` re-scored (see the module docstring)."""
    learned = np.ascontiguousarray(v[:, :split])
    fnorm = np.linalg.norm(v[:, split:], axis=1)
    xt = sp.csr_matrix(x.T)

    def sims(rows: np.ndarray) -> np.ndarray:
        dense = H.similarities(v, rows)
        for i, r in enumerate(rows):
            dense[i, r] = np.inf  # the query itself is not a candidate (the harness drops it anyway)
            cand = np.argpartition(-dense[i], depth)[:depth + 1]
            cand = cand[cand != r][:depth]
            exact = (x[r] @ xt[:, cand]).toarray().ravel()
            score = learned[cand] @ learned[r] + fnorm[r] * fnorm[cand] * exact
            dense[i] -= 10.0  # everything beyond depth after every re-scored candidate, in its dense order
            dense[i, cand] = score
        return dense

    return H.evaluate(c, None, "", sims=sims)


def main() -> None:
    ap = gate.product_parser(__doc__)
    ap.add_argument("--depths", default="100,300,1000")
    ap.add_argument("--tops", default="0,128,256")
    a = ap.parse_args()
    c, v = gate.corpus_and_stored(a.feat, a.manifest, a.root)
    ckpt = checkpoint.load(a.model)
    m, vc = ckpt.config.model, ckpt.config.views
    split = m.embedding_dim - m.skip_dim
    idf = ckpt.model.id_sets["token_ids"].idf.double().numpy()
    print(H.evaluate(c, v, "dense (as stored)").line(), flush=True)
    for top in [int(t) for t in a.tops.split(",")]:
        x = exact_vectors(c.raw["tok"], idf, m.skip_idf_power, vc.token_id_bits, vc.token_ids, top)
        kept = np.diff(x.indptr)
        print(f"top {top or 'all'}: ids per file mean {kept.mean():.0f}, max {kept.max()}", flush=True)
        for depth in [int(d) for d in a.depths.split(",")]:
            r = reranked(c, v, split, x, depth)
            r.name = f"re-rank depth {depth}, top {top or 'all'} ids"
            print(r.line(), flush=True)


if __name__ == "__main__":
    main()
