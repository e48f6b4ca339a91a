"""Lever (a) and (b): the fixed part alone, no training. Each row is a fixed part as the embedding would hold it
(unit vectors), scored on the protocol; the exact sparse TF-IDF it approximates is a row too.

  nice -n 10 .venv/bin/python studies/unseen_families/levers_fixed.py --feat /work/studies22/feat \
      --manifest /work/corpora/debian-multi/manifest.csv --out studies/unseen_families/results/fixed.jsonl [--only ...]

Names: <feature>/<buckets>/<tf>/idf^<p>(<df rows>) -> <projection><dim>[xS]. buckets "exact" = every distinct hash;
df rows: train (training files: today's fixed part), all (every file: transductive).
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
import fixed as FX  # noqa: E402
import harness as H  # noqa: E402

_x: dict = {}


def sketch(c: H.Corpus, feat: str, buckets) -> sp.csr_matrix:
    key = (feat, buckets)
    if key not in _x:
        if feat == "tok+sym":
            a, b = sketch(c, "tok", buckets), sketch(c, "sym", buckets)
            _x[key] = (a, b)
        else:
            _x[key] = FX.bucket_sets(c.raw[feat], None if buckets == "exact" else int(buckets))
    return _x[key]


def fixed_part(c: H.Corpus, feat: str = "tok", buckets="4096", tf: str = "log", power: float = 2.0,
               df: str = "train", proj: str | None = "gaussian", dim: int = 512, s: int = 1, sym_weight: float = 1.0):
    rows = np.flatnonzero(c.role == "train") if df == "train" else None
    x = sketch(c, feat, buckets)
    if feat == "tok+sym":
        a, b = (FX.weighted(m, rows, power, tf) for m in x)
        w = H.combine([(a, 1.0), (b, sym_weight)])
    else:
        w = FX.weighted(x, rows, power, tf)
    if proj is None:
        return w
    return FX.project(w, dim, proj, s)


def name_of(feat="tok", buckets="4096", tf="log", power=2.0, df="train", proj="gaussian", dim=512, s=1,
            sym_weight=1.0) -> str:
    f = feat if feat != "tok+sym" else f"tok+sym{sym_weight:g}"
    p = "exact sparse" if proj is None else f"{proj}{dim}" + (f"x{s}" if proj == "countsketch" and s > 1 else "")
    return f"{f}/{buckets}/{tf}/idf^{power:g}({df}) -> {p}"


GRID: list[dict] = [
    # today's fixed part and the exact vector it stands for
    dict(),
    dict(proj=None),
    dict(buckets="exact", proj=None),
    dict(buckets="exact", tf="binary", proj=None),
    # dimension
    dict(dim=1024), dict(dim=2048),
    dict(proj="orthogonal"), dict(proj="orthogonal", dim=2048),
    # resolution
    dict(buckets="65536", proj=None), dict(buckets="1048576", proj=None),
    dict(buckets="65536", proj="countsketch", dim=512), dict(buckets="65536", proj="countsketch", dim=2048),
    dict(buckets="1048576", proj="countsketch", dim=512), dict(buckets="1048576", proj="countsketch", dim=1024),
    dict(buckets="1048576", proj="countsketch", dim=2048), dict(buckets="1048576", proj="countsketch", dim=4096),
    dict(buckets="1048576", proj="countsketch", dim=2048, s=4),
    dict(buckets="65536", proj="gaussian", dim=512), dict(buckets="65536", proj="gaussian", dim=2048),
    dict(proj="countsketch", dim=512),
    # IDF
    dict(df="all"), dict(buckets="1048576", proj="countsketch", dim=2048, df="all"),
    dict(power=1.0), dict(power=3.0),
    dict(buckets="1048576", proj="countsketch", dim=2048, power=3.0),
    dict(buckets="exact", proj=None, power=3.0), dict(buckets="exact", proj=None, df="all"),
    # symbols beside the tokens
    dict(feat="tok+sym", buckets="exact", proj=None),
    dict(feat="tok+sym", buckets="1048576", proj="countsketch", dim=2048),
    dict(feat="tok+sym", buckets="1048576", proj="countsketch", dim=2048, sym_weight=0.5),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feat", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="indices into GRID, comma-separated")
    ap.add_argument("--unseen-fraction", type=float, default=0.1)
    a = ap.parse_args()
    c = bar.load_corpus(a.feat, a.manifest, unseen_fraction=a.unseen_fraction)
    print(c.describe(), flush=True)
    todo = [GRID[int(i)] for i in a.only.split(",")] if a.only else GRID
    for spec in todo:
        t = time.perf_counter()
        v = fixed_part(c, **spec)
        r = H.evaluate(c, v, name_of(**spec))
        print(r.line() + f" build {time.perf_counter() - t - r.seconds:.0f}s", flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(json.dumps({**r.to_json(), "spec": spec}) + "\n")


if __name__ == "__main__":
    main()
