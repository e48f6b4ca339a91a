"""The learned part (saved by levers_learned.py --vec) beside fixed parts that need no training, post hoc: the
embedding's cosine is w x learned cosine + (1 - w) x fixed cosine (unit blocks scaled by sqrt(w), sqrt(1 - w)),
with the fixed part either the product's (4,096 buckets, log TF, IDF^2 of the training rows, Gaussian 512) or the
exact sparse TF-IDF (every distinct hash its own term: the "exact/sparse fixed part" lever), so what each learned
recipe adds to the best training-free vector is measured on the same queries.

  nice -n 10 .venv/bin/python studies/unseen_families/combos.py --feat /work/studies22/feat \
      --manifest /work/corpora/debian-multi/manifest.csv --vec /work/studies22/vec \
      --recipe default --recipe ssl-every --recipe ten-semi-every --weights 0.1,0.2,0.3 \
      --out studies/unseen_families/results/combos.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bar  # noqa: E402
import harness as H  # noqa: E402
import levers_fixed as LF  # noqa: E402

FIXED = {
    # the best training-free vector of results/bar.jsonl (DF over every file: it needs no labels)
    "exact tokens+strings IDF^2": lambda c: bar.vectors(c, [("tok", 1), ("str", 1)], power=2, df="all"),
    "exact tokens IDF^2 log-TF": lambda c: bar.vectors(c, [("tokc", 1)], power=2, tf="log", df="all"),
    "product fixed part (tokens 4096, Gaussian 512)": lambda c: LF.fixed_part(c),
    # a fixed-size part the embedding could hold: tokens in 2^20 buckets, log TF, IDF^2 (every file), count sketch
    "tokens 2^20 buckets IDF^2 count-sketch 2048": lambda c: LF.fixed_part(c, buckets="1048576", proj="countsketch",
                                                                          dim=2048, df="all"),
    # the product's fixed part since this study (views token_ids + model TokenIdFold), by the product's own code
    "product token_ids fold 2048": lambda c: product_fold(c),
}


def product_fold(c, dim: int = 2048, chunk: int = 4096) -> np.ndarray:
    """The fixed part the product's default model computes (embedlib.views.token_ids, the model's TokenIdFold with
    IDF ** model.skip_idf_power from the training rows' document frequencies), by the product's own functions."""
    import torch

    from embedlib import views
    from embedlib.config import Config
    from embedlib.model.network import TokenIdFold

    cfg = Config()
    ids = np.stack([views.token_ids(h, cfg.views.token_id_bits, cfg.views.token_ids) for h in c.raw["tok"]])
    train = ids[c.role == "train"]
    fold = TokenIdFold(cfg.views.token_id_bits, dim, cfg.model.skip_fold_copies)
    df = views.document_frequency("token_ids", train, cfg)
    fold.idf.copy_(torch.as_tensor(np.log((1.0 + len(train)) / (1.0 + df)) + 1.0, dtype=torch.float32))
    with torch.no_grad():
        return np.concatenate([fold(torch.from_numpy(ids[s:s + chunk]), cfg.model.skip_idf_power).numpy()
                               for s in range(0, len(ids), chunk)])


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


class Joined:
    """[sqrt(w) learned, sqrt(1 - w) fixed] without building it: its cosine is w x learned + (1 - w) x fixed,
    computed block by block (a dense block inside a sparse matrix makes scipy's product crawl)."""

    def __init__(self, learned: np.ndarray, fixed, w: float) -> None:
        self.learned, self.w = unit(learned.astype(np.float32)), w
        self.fixed = fixed if sp.issparse(fixed) else unit(np.asarray(fixed, np.float32))
        self.fixed_t = sp.csr_matrix(fixed.T) if sp.issparse(fixed) else None
        # a row is missing only when both parts are
        self.missing = ~self.learned.any(axis=1) & (np.diff(fixed.indptr) == 0 if sp.issparse(fixed)
                                                     else ~self.fixed.any(axis=1))

    def similarities(self, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
        out = np.empty((len(rows), len(self.learned)), np.float32)
        for s in range(0, len(rows), chunk):
            r = rows[s : s + chunk]
            f = (self.fixed[r] @ self.fixed_t).toarray() if self.fixed_t is not None else self.fixed[r] @ self.fixed.T
            out[s : s + chunk] = self.w * (self.learned[r] @ self.learned.T) + (1 - self.w) * f
        return out


def evaluate(c: H.Corpus, j: Joined, name: str) -> H.Result:
    """harness.evaluate, scoring the Joined block by block."""
    t = time.perf_counter()
    missing = j.missing if j.missing.any() else None
    res = {}
    for split in ("known", "unseen"):
        wanted = [k for k in H.CELLS if k[0] == split]
        allrows = np.unique(np.concatenate([c.cells[k] for k in wanted]))
        sim = j.similarities(allrows)
        pos = {int(r): i for i, r in enumerate(allrows)}
        for k in wanted:
            rows = c.cells[k]
            p1, ap = H.ap_at_r(sim[[pos[int(r)] for r in rows]], rows, c, k[1], missing)
            res[k] = {"p_at_1": float(np.nanmean(p1)), "map_at_r": float(np.nanmean(ap)),
                      "queries": int((~np.isnan(ap)).sum()), "ap": ap}
        del sim
    return H.Result(name, res, time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feat", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--vec", required=True)
    ap.add_argument("--recipe", action="append", required=True)
    ap.add_argument("--fixed", action="append", default=None, help=f"from {list(FIXED)}")
    ap.add_argument("--weights", default="0.2,0.3")
    ap.add_argument("--out", default=None)
    ap.add_argument("--unseen-fraction", type=float, default=0.1)
    a = ap.parse_args()
    c = bar.load_corpus(a.feat, a.manifest, unseen_fraction=a.unseen_fraction)
    print(c.describe(), flush=True)
    for fname in a.fixed or ["exact tokens+strings IDF^2"]:
        fixed = FIXED[fname](c)
        for recipe in a.recipe:
            learned = np.load(os.path.join(a.vec, f"{recipe}.npy"))
            for w in (float(x) for x in a.weights.split(",")):
                r = evaluate(c, Joined(learned, fixed, w), f"{recipe}: learned (w {w:g}) + {fname}")
                print(r.line(), flush=True)
                if a.out:
                    with open(a.out, "a") as fh:
                        fh.write(json.dumps({**r.to_json(), "recipe": recipe, "fixed": fname, "w": w}) + "\n")


if __name__ == "__main__":
    main()
