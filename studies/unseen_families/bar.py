"""The bar (issue 22, question 1): every training-free method on the hidden benchmark's protocol.

  nice -n 10 .venv/bin/python studies/unseen_families/bar.py --feat /work/studies22/feat \
      --manifest /work/corpora/debian-multi/manifest.csv [--only NAME|NAME] [--out results/bar.jsonl]

Each method is a list of (feature, weight) blocks; a block is an exact sparse matrix of one feature type (every
distinct hash its own column), TF (binary = the set, or a count rule), times IDF ** power, L2-normalised; the
blocks are concatenated with sqrt(weight) and the rows normalised again; cosine. Document frequencies over
`df` rows: "all" (every gallery file: what a training-free method run on a corpus has) or "train" (the
training files only, as the model's fixed part has them today).

Features: str (printable strings >= 6), idt (NUL-bounded identifiers >= 4), tok (the tokens view's words),
sym (dynamic symbol names: imports, exports, libraries, one vocabulary), symk (the same, kind-tagged: an
imported and an exported `foo` are different columns), symx (exports + libraries only), dyn (identifiers inside
the ELF .dynstr: the symbol names without parsing .dynsym), str4096/idt4096/tok4096 (the product's 4096-bucket
sketches as sets), tok65536 etc.
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

import harness as H  # noqa: E402
from embedlib.views import bucket_of  # noqa: E402

_cache: dict = {}


def feature(c: H.Corpus, name: str) -> sp.csr_matrix:
    """[N, V] counts (1 for sets) of one feature type."""
    if name in _cache:
        return _cache[name]
    raw = c.raw
    if name in ("str", "idt", "tok", "sym"):
        x, _ = H.csr(raw[name])
    elif name == "tokc":
        x, _ = H.csr(raw["tok"], [v.astype(np.float32) for v in raw["tok_c"]])
    elif name == "symk":
        x, _ = H.csr([h ^ (k.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) for h, k in zip(raw["sym"], raw["sym_k"])])
    elif name == "symx":
        x, _ = H.csr([h[k != 0] for h, k in zip(raw["sym"], raw["sym_k"])])
    elif name == "symi":
        x, _ = H.csr([h[k == 0] for h, k in zip(raw["sym"], raw["sym_k"])])
    elif name == "dyn":
        x, _ = H.csr([h[d > 0] for h, d in zip(raw["idt"], raw["idt_dyn"])])
    elif name[:3] in ("str", "idt", "tok", "sym") and name[3:].isdigit():
        b = int(name[3:])
        x, _ = H.csr([np.unique(bucket_of(h, b)).astype(np.uint64) for h in raw[name[:3]]])
    else:
        raise ValueError(name)
    # a file may have the same hash twice only in symk/sym across kinds: sets are sets
    if name not in ("tokc",):
        x.data[:] = 1.0
    _cache[name] = x
    return x


def vectors(c: H.Corpus, blocks: list[tuple[str, float]], power: float = 1.0, df: str = "all", tf: str = "binary",
            idf_kind: str = "smooth", powers: dict | None = None) -> sp.csr_matrix:
    rows = None if df == "all" else np.flatnonzero(c.role == "train") if df == "train" else df
    parts = []
    for name, w in blocks:
        x = feature(c, name)
        p = (powers or {}).get(name, power)
        parts.append((H.tfidf(x, H.idf(x, rows, p, idf_kind), tf), w))
    return parts[0][0] if len(parts) == 1 else H.combine(parts)


METHODS: dict[str, dict] = {
    # the bar
    "strings": dict(blocks=[("str", 1)]),
    "strings (4096-bucket set, the evaluate job's baseline)": dict(blocks=[("str4096", 1)]),
    "idents": dict(blocks=[("idt", 1)]),
    "tokens IDF^1": dict(blocks=[("tok", 1)]),
    "tokens IDF^2": dict(blocks=[("tok", 1)], power=2),
    "tokens IDF^3": dict(blocks=[("tok", 1)], power=3),
    "tokens IDF^4": dict(blocks=[("tok", 1)], power=4),
    "tokens IDF^2, log count TF": dict(blocks=[("tokc", 1)], power=2, tf="log"),
    "tokens IDF^2 (4096-bucket set)": dict(blocks=[("tok4096", 1)], power=2),
    "tokens IDF^2 (65536-bucket set)": dict(blocks=[("tok65536", 1)], power=2),
    "symbols": dict(blocks=[("sym", 1)]),
    "symbols IDF^2": dict(blocks=[("sym", 1)], power=2),
    "symbols, kind-tagged": dict(blocks=[("symk", 1)]),
    "symbols, kind-tagged IDF^2": dict(blocks=[("symk", 1)], power=2),
    "exports + libraries IDF^2": dict(blocks=[("symx", 1)], power=2),
    ".dynstr identifiers IDF^2": dict(blocks=[("dyn", 1)], power=2),
    "strings IDF^2": dict(blocks=[("str", 1)], power=2),
    "idents IDF^2": dict(blocks=[("idt", 1)], power=2),
    # combinations
    "tokens + symbols, IDF^2": dict(blocks=[("tok", 1), ("sym", 1)], power=2),
    "tokens + symbols, IDF^3": dict(blocks=[("tok", 1), ("sym", 1)], power=3),
    "tokens + symbols 0.5, IDF^2": dict(blocks=[("tok", 1), ("sym", 0.5)], power=2),
    "tokens + symbols 2, IDF^2": dict(blocks=[("tok", 1), ("sym", 2)], power=2),
    "tokens + strings, IDF^2": dict(blocks=[("tok", 1), ("str", 1)], power=2),
    "tokens + strings + symbols, IDF^2": dict(blocks=[("tok", 1), ("str", 1), ("sym", 1)], power=2),
    "tokens + idents + symbols, IDF^2": dict(blocks=[("tok", 1), ("idt", 1), ("sym", 1)], power=2),
    "tokens + strings + idents + symbols, IDF^2": dict(blocks=[("tok", 1), ("str", 1), ("idt", 1), ("sym", 1)], power=2),
    "strings + symbols, IDF^2": dict(blocks=[("str", 1), ("sym", 1)], power=2),
    "tokens + .dynstr identifiers, IDF^2": dict(blocks=[("tok", 1), ("dyn", 1)], power=2),
    "tokens IDF^2, DF of training files": dict(blocks=[("tok", 1)], power=2, df="train"),
    "tokens + symbols, IDF^2, DF of training files": dict(blocks=[("tok", 1), ("sym", 1)], power=2, df="train"),
}


def run(c: H.Corpus, names: list[str], out: str | None) -> list[H.Result]:
    res = []
    for name in names:
        spec = dict(METHODS[name])
        t = time.perf_counter()
        x = vectors(c, **spec)
        build = time.perf_counter() - t
        r = H.evaluate(c, x, name)
        print(r.line() + f" build {build:.0f}s nnz/row {x.nnz / x.shape[0]:.0f}", flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps({**r.to_json(), "spec": spec}) + "\n")
        res.append(r)
    return res


def load_corpus(feat: str, manifest: str | None, **kw) -> H.Corpus:
    fam = None
    if manifest:
        fam = {p: f for p, f in H.features.read_manifest(manifest) if f}
    return H.load(feat, families=fam, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feat", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--unseen-fraction", type=float, default=0.1)
    ap.add_argument("--queries", type=int, default=1500)
    a = ap.parse_args()
    c = load_corpus(a.feat, a.manifest, unseen_fraction=a.unseen_fraction, queries=a.queries)
    print(c.describe(), flush=True)
    run(c, a.only.split("|") if a.only else list(METHODS), a.out)


if __name__ == "__main__":
    main()
