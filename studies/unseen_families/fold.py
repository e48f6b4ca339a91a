"""The fixed part as the product computes it since this study (views token_ids + model TokenIdFold), alone, no
training: how much of the exact sparse TF-IDF of the 2^20 word ids survives a fold into d dimensions, by the kept
ids per file (bottom-K), the dimension and the copies per id (Kane-Nelson sparse JL); and today's fixed part
(4,096 buckets, Gaussian 512) beside it. IDF ** 2 from the training rows, as the product.

  nice -n 10 .venv/bin/python studies/unseen_families/fold.py --feat /work/studies22/feat \\
      --manifest /work/corpora/debian-multi/manifest.csv --out studies/unseen_families/results/fold.jsonl

Rows: "K <kept> / d <dims> x<copies>" (K 0: every id; d 0: the exact sparse vector).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bar  # noqa: E402
import fixed as FX  # noqa: E402
import harness as H  # noqa: E402

GRID = [  # (kept ids per file, dimensions, copies)
    (0, 2048, 1), (4096, 2048, 1), (2048, 2048, 1), (1024, 2048, 1),
    (2048, 0, 1), (2048, 1024, 1), (2048, 4096, 1), (2048, 8192, 1),
    (2048, 2048, 2), (2048, 2048, 4), (2048, 2048, 8), (2048, 2048, 16),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feat", required=True)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    c = bar.load_corpus(a.feat, a.manifest, unseen_fraction=0.1)
    print(c.describe(), flush=True)
    n = np.array([len(t) for t in c.raw["tok"]])
    print("distinct words per file, percentiles 50/90/95/99:", np.percentile(n, [50, 90, 95, 99]).round().tolist(),
          "max", int(n.max()), f"; files with at most 2,048: {(n <= 2048).mean():.1%}", flush=True)
    train = np.flatnonzero(c.role == "train")
    results = [H.evaluate(c, FX.project(FX.weighted(FX.bucket_sets(c.raw["tok"], 4096), train, 2.0), 512),
                          "today: 4,096 buckets, Gaussian 512")]
    print(results[-1].line(), flush=True)
    cache: dict = {}
    for kept, dim, copies in GRID:
        if kept not in cache:  # the bottom-K of a file's word hashes = the K smallest 20-bit ids (top bits)
            sets = [np.sort(np.asarray(t, np.uint64))[:kept] if kept else t for t in c.raw["tok"]]
            cache[kept] = FX.weighted(FX.bucket_sets(sets, 1 << 20), train, 2.0)
        w = cache[kept]
        v = FX.project(w, dim, "countsketch", copies) if dim else w
        results.append(H.evaluate(c, v, f"2^20 ids, K {kept} / d {dim} x{copies}"))
        print(results[-1].line(), flush=True)
    if a.out:
        with open(a.out, "a") as fh:
            fh.writelines(json.dumps(r.to_json()) + "\n" for r in results)


if __name__ == "__main__":
    main()
