"""Lever (c), (d): the learned part, trained in-process on the feature cache (train.py), alone and beside fixed
parts (levers_fixed.py), on the protocol.

  nice -n 10 .venv/bin/python studies/unseen_families/levers_learned.py --feat /work/studies22/feat \
      --manifest /work/corpora/debian-multi/manifest.csv --recipe NAME [--recipe NAME ...] \
      --out studies/unseen_families/results/learned.jsonl --vec /work/studies22/vec

A recipe names: the learned views and their buckets, the objective (CosFace on labels, sub-sample InfoNCE,
neighbour InfoNCE), which rows train (train = the training split only: inductive; every = every file
including held-out and unseen-family files, without their labels: transductive), which rows carry labels
(all training rows, 10% of them by sha256 hash, none), the fixed part it trains beside and its weight.
After training, the learned part's vectors are saved (VEC/<recipe>.npy) and scored alone, and the full
embedding [sqrt(w) learned, sqrt(1-w) fixed] for the recipe's fixed part, plus (post hoc, without
retraining) for the extra fixed parts and weights of --combine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bar  # noqa: E402
import harness as H  # noqa: E402
import levers_fixed as LF  # noqa: E402
import train as T  # noqa: E402
from embedlib.train.split import bucket  # noqa: E402

FIXED = {
    "product": dict(),  # tokens, 4096 buckets, log TF, IDF^2 (training DF), Gaussian 512
    "cs2048": dict(buckets="1048576", proj="countsketch", dim=2048),
    "cs1024": dict(buckets="1048576", proj="countsketch", dim=1024),
    "cs512": dict(buckets="1048576", proj="countsketch", dim=512),
    "g2048": dict(dim=2048),
    "ts-cs2048": dict(feat="tok+sym", buckets="1048576", proj="countsketch", dim=2048),
    "none": None,
}

BASE = dict(views=("strings", "idents", "tokens"), buckets=4096, fixed="product", rows="train", labels="all",
            neighbours=None, recipe={})
RECIPES: dict[str, dict] = {
    "default": dict(),  # the product default, replicated
    "default-learnedloss": dict(recipe=dict(ssl_on="learned")),
    "sym": dict(views=("strings", "idents", "tokens", "symbols")),
    "b65536": dict(buckets=65536, recipe=dict(hidden=256)),
    "ssl-train": dict(labels="none", recipe=dict(cosface=0.0, ssl=1.0)),
    "ssl-every": dict(labels="none", rows="every", recipe=dict(cosface=0.0, ssl=1.0)),
    "semi-train": dict(recipe=dict(ssl=1.0)),
    "semi-every": dict(rows="every", recipe=dict(ssl=1.0)),
    "nn-train": dict(labels="none", neighbours="tok-exact", recipe=dict(cosface=0.0, nn_pos=1.0)),
    "nn-every": dict(labels="none", rows="every", neighbours="tok-exact", recipe=dict(cosface=0.0, nn_pos=1.0)),
    "semi-nn-every": dict(rows="every", neighbours="tok-exact", recipe=dict(nn_pos=1.0)),
    "semi-nn-train": dict(neighbours="tok-exact", recipe=dict(nn_pos=1.0)),
    "ten-cos": dict(labels="ten"),
    "ten-semi-every": dict(labels="ten", rows="every", recipe=dict(ssl=1.0)),
    "ten-semi-nn-every": dict(labels="ten", rows="every", neighbours="tok-exact", recipe=dict(nn_pos=1.0)),
}

_inputs: dict = {}


def inputs(c: H.Corpus, views, buckets: int, idf_rows) -> dict[str, sp.csr_matrix]:
    key = (tuple(views), buckets, None if idf_rows is None else len(idf_rows))
    if key not in _inputs:
        feat = {"strings": "str", "idents": "idt", "tokens": "tok", "symbols": "sym"}
        out = {}
        for v in views:
            x = T.bucket_matrix(c.raw[feat[v]], buckets)
            out[v] = T.tfidf_rows(x, T.sketch_idf(x, idf_rows))
        _inputs[key] = out
    return _inputs[key]


def neighbours(c: H.Corpus, kind: str, rows: np.ndarray, k: int = 10, cache_dir: str | None = None) -> list[np.ndarray]:
    """Per corpus row: its k nearest rows (among `rows`) under the exact tokens TF-IDF (IDF^2, DF of `rows`)."""
    path = os.path.join(cache_dir, f"nn-{kind}-{len(rows)}-{k}.npz") if cache_dir else None
    if path and os.path.exists(path):
        z = np.load(path)
        return np.split(z["nb"], np.cumsum(z["n"])[:-1])
    x = bar.feature(c, "tok")
    v = H.tfidf(x, H.idf(x, rows, 2.0))
    sub = v[rows]
    subt = sp.csr_matrix(sub.T)
    out = [np.zeros(0, np.int64) for _ in range(len(c))]
    t = time.perf_counter()
    for s in range(0, len(rows), 512):
        q = rows[s : s + 512]
        sim = (v[q] @ subt).toarray()
        sim[np.arange(len(q)), np.searchsorted(rows, q)] = -1  # not itself
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        for i, r in enumerate(q):
            t_i = top[i][np.argsort(-sim[i, top[i]])]
            t_i = t_i[sim[i, t_i] > 0]
            out[r] = rows[t_i]
        if s % 5120 == 0:
            print(f"  neighbours {s}/{len(rows)} ({time.perf_counter() - t:.0f}s)", flush=True)
    if path:
        np.savez(path, nb=np.concatenate(out), n=np.array([len(o) for o in out]))
    return out


def labels_for(c: H.Corpus, which: str, min_size: int = 2) -> np.ndarray:
    """Class per corpus row (-1 = no label): training rows' families ('all'), only rows whose sha256 hashes below
    0.1 ('ten'), or none."""
    lab = np.full(len(c), -1, np.int64)
    if which == "none":
        return lab
    tr = c.role == "train"
    if which == "ten":
        tr &= np.array([bucket(s, "labelled") < 0.1 for s in c.sha256])
    fams, counts = np.unique(c.family[tr], return_counts=True)
    classes = {f: i for i, f in enumerate(fams[counts >= min_size])}
    for i in np.flatnonzero(tr):
        lab[i] = classes.get(c.family[i], -1)
    return lab


def run(c: H.Corpus, name: str, spec: dict, out: str | None, vec_dir: str | None, combine: list[tuple[str, float]],
        epochs: int | None) -> None:
    spec = {**BASE, **spec}
    rec = T.Recipe(views=tuple(spec["views"]), buckets=spec["buckets"], **spec["recipe"])
    if epochs:
        rec = replace(rec, epochs=epochs)
    train_rows = np.flatnonzero(c.role == "train")
    rows = train_rows if spec["rows"] == "train" else np.arange(len(c))
    idf_rows = rows  # the rows the training job sees: their document frequencies
    ins = inputs(c, rec.views, rec.buckets, idf_rows)
    fx = FIXED[spec["fixed"]]
    fixed = None if fx is None else LF.fixed_part(c, **{**fx, "df": "train" if spec["rows"] == "train" else "all"})
    labels = labels_for(c, spec["labels"])
    nb = neighbours(c, spec["neighbours"], rows, cache_dir=vec_dir) if spec["neighbours"] else None
    print(f"== {name}: {spec} rows {len(rows)} labelled {(labels >= 0).sum()} classes {labels.max() + 1}", flush=True)
    model, log = T.train(rec, ins, fixed, rows, labels, nb)
    learned = T.embed_all(model, ins, None if fixed is None else fixed, part="learned")
    if vec_dir:
        np.save(os.path.join(vec_dir, f"{name}.npy"), learned.astype(np.float32))
        with open(os.path.join(vec_dir, f"{name}.log.json"), "w") as fh:
            json.dump({**log, "spec": spec}, fh, indent=1, default=str)
    results = [H.evaluate(c, learned, f"{name}: learned part alone")]
    if fixed is not None:
        w = rec.skip_weight
        results.append(H.evaluate(c, np.hstack([w ** 0.5 * learned, (1 - w) ** 0.5 * fixed]), f"{name}: embedding"))
    for fname, w in combine:
        f = LF.fixed_part(c, **{**FIXED[fname], "df": "train" if spec["rows"] == "train" else "all"})
        results.append(H.evaluate(c, np.hstack([w ** 0.5 * learned, (1 - w) ** 0.5 * f]),
                                  f"{name}: learned (w {w:g}) + fixed {fname} (post hoc)"))
    for r in results:
        print(r.line(), flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps({**r.to_json(), "recipe": name, "spec": spec, "train_seconds": log["train_seconds"],
                                     "epochs": rec.epochs}, default=str) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feat", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--recipe", action="append", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--vec", default=None)
    ap.add_argument("--combine", default="", help="FIXED:W,FIXED:W post-hoc combinations")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--unseen-fraction", type=float, default=0.1)
    a = ap.parse_args()
    c = bar.load_corpus(a.feat, a.manifest, unseen_fraction=a.unseen_fraction)
    print(c.describe(), flush=True)
    if a.vec:
        os.makedirs(a.vec, exist_ok=True)
    combine = [(x.split(":")[0], float(x.split(":")[1])) for x in a.combine.split(",") if x]
    for name in a.recipe:
        run(c, name, RECIPES[name], a.out, a.vec, combine, a.epochs)


if __name__ == "__main__":
    main()
