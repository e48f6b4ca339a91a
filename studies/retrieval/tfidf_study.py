"""Training-free weighting of the sketches (issue 12, step after studies/retrieval/RETRIEVAL.md): which TF, IDF and per-view
weights make the fixed part of the embedding best on unseen families; never in CI.

  nice -n 10 python studies/retrieval/tfidf_study.py --cache runs/study/deb/cache-pre,runs/study/deb/cache-main \
      --manifest /work/corpora/debian-multi/manifest.csv --tokens runs/study/deb/tokens [--every 2]

Each configuration is a list of (view, weight) with a TF and an IDF rule; the vector is the concatenation of
each view's L2-normalised TF x IDF vector times sqrt(weight); cosine. IDF from the training files only.
`--every k` scores every k-th query of each cell (quick sweeps); 1 = the full protocol.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import retrieval_study as rs  # noqa: E402
from scoring import attach_tokens, evaluate, line, quick_cells, token_sketch  # noqa: E402


SKETCHES: dict[str, callable] = {
    "strings": lambda c: rs.sketch(c, "str", 6, 4096),
    "idents": lambda c: rs.sketch(c, "id", 4, 4096),
    "tokens": lambda c: token_sketch(c),
    "tokens4": lambda c: token_sketch(c, min_len=4),
    "tokens-s": lambda c: token_sketch(c, idents=False),
    "tokold": lambda c: rs.sketch(c, "tok", 3, 4096),
    "strings4": lambda c: rs.sketch(c, "str", 4, 4096),
    "idents3": lambda c: rs.sketch(c, "id", 3, 4096),
}


def tf(counts: np.ndarray, rule: str) -> np.ndarray:
    x = counts.astype(np.float32)
    if rule == "log":
        return np.log1p(x)
    if rule == "binary":
        return (x > 0).astype(np.float32)
    if rule == "sqrt":
        return np.sqrt(x)
    if rule.startswith("bm25"):  # saturating count/(count + k)
        k = float(rule[4:] or 1.0)
        return x * (1 + k) / (x + k)
    raise ValueError(rule)


def idf(df: np.ndarray, n: int, rule: str) -> np.ndarray:
    base = np.log((1.0 + n) / (1.0 + df)) + 1.0  # sklearn's smooth IDF (the model's)
    if rule == "smooth":
        return base
    if rule.startswith("pow"):
        return base ** float(rule[3:])
    if rule == "bm25":
        return np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    if rule == "prob":  # probabilistic, floored
        return np.maximum(np.log((n - df + 0.5) / (df + 0.5)), 0.0) + 1e-3
    if rule == "none":
        return np.ones_like(base)
    raise ValueError(rule)


def vectors(c: rs.Corpus, sketches: dict[str, np.ndarray], spec: list[tuple[str, float]], tf_rule: str = "log",
            idf_rule: str = "smooth") -> np.ndarray:
    train = c.role == "train"
    parts = []
    for name, w in spec:
        s = sketches[name]
        x = tf(s, tf_rule)
        x *= idf((s[train] > 0).sum(axis=0), int(train.sum()), idf_rule).astype(np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        parts.append(x * np.float32(w ** 0.5))
    return np.concatenate(parts, axis=1)


CONFIGS: dict[str, dict] = {
    "s+i": dict(spec=[("strings", 1), ("idents", 1)]),
    "s+i+t": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 1)]),
    "t": dict(spec=[("tokens", 1)]),
    "s": dict(spec=[("strings", 1)]),
    "s+i+tokold": dict(spec=[("strings", 1), ("idents", 1), ("tokold", 1)]),
    "s+i+t4": dict(spec=[("strings", 1), ("idents", 1), ("tokens4", 1)]),
    "s+i+ts": dict(spec=[("strings", 1), ("idents", 1), ("tokens-s", 1)]),
    "s+i+t binary": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 1)], tf_rule="binary"),
    "s+i+t sqrt": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 1)], tf_rule="sqrt"),
    "s+i+t idf^2": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 1)], idf_rule="pow2"),
    "s+i+t idf^1.5": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 1)], idf_rule="pow1.5"),
    "s+i+t bm25idf": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 1)], idf_rule="bm25"),
    "s+i+t2": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 2)]),
    "s+i2+t": dict(spec=[("strings", 1), ("idents", 2), ("tokens", 1)]),
    "s+i+t0.5": dict(spec=[("strings", 1), ("idents", 1), ("tokens", 0.5)]),
    "s0.5+i+t": dict(spec=[("strings", 0.5), ("idents", 1), ("tokens", 1)]),
    "t4": dict(spec=[("tokens4", 1)]),
    "ts": dict(spec=[("tokens-s", 1)]),
    "t binary": dict(spec=[("tokens", 1)], tf_rule="binary"),
    "t idf^1.5": dict(spec=[("tokens", 1)], idf_rule="pow1.5"),
    "t idf^2": dict(spec=[("tokens", 1)], idf_rule="pow2"),
    "t+i": dict(spec=[("tokens", 1), ("idents", 1)]),
    "t+i0.5": dict(spec=[("tokens", 1), ("idents", 0.5)]),
    "t+s0.3+i0.3": dict(spec=[("tokens", 1), ("strings", 0.3), ("idents", 0.3)]),
    "t bm25idf": dict(spec=[("tokens", 1)], idf_rule="bm25"),
    "t idf^3": dict(spec=[("tokens", 1)], idf_rule="pow3"),
    "t idf^4": dict(spec=[("tokens", 1)], idf_rule="pow4"),
    "t4 idf^2": dict(spec=[("tokens4", 1)], idf_rule="pow2"),
    "t+i0.3 idf^2": dict(spec=[("tokens", 1), ("idents", 0.3)], idf_rule="pow2"),
    "t sqrt idf^2": dict(spec=[("tokens", 1)], tf_rule="sqrt", idf_rule="pow2"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", default=None, help="append JSON lines here")
    a = ap.parse_args()
    c = rs.load_corpus(a.cache, manifest=a.manifest)
    attach_tokens(c, a.tokens)
    cells = quick_cells(c, a.every)
    poor = rs.string_poor(c)
    names = a.only.split("|") if a.only else list(CONFIGS)
    sketches: dict[str, np.ndarray] = {}
    for name in names:
        cfg = CONFIGS[name]
        for v, _ in cfg["spec"]:
            if v not in sketches:
                sketches[v] = SKETCHES[v](c)
        t = time.perf_counter()
        res = evaluate(c, vectors(c, sketches, **cfg), cells, poor)
        print(line(name, res) + f"  ({time.perf_counter() - t:.0f}s)", flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(json.dumps({"config": name, "every": a.every, **res}) + "\n")


if __name__ == "__main__":
    main()
