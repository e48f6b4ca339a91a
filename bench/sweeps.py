"""Named sweeps of bench/retrieval_study.py variants (the exploration log of issue 12); never in CI.

  nice -n 10 python bench/sweeps.py SWEEP --cache C --out runs/study/X
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from retrieval_study import Variant, run_variants  # noqa: E402

NOIMG = ("strings", "idents", "bytehist")
R = dataclasses.replace
BASE = Variant(views=NOIMG, epochs=8)

SWEEPS: dict[str, dict[str, Variant]] = {
    "first": {
        "base": BASE,
        "skip-fixed": R(BASE, sketch_skip="fixed"),
        "skip-learned": R(BASE, sketch_skip="learned"),
        "dropout0.3": R(BASE, sketch_dropout=0.3),
        "supcon-pk": R(BASE, loss="supcon", sampler="pk"),
        "strings-only": R(BASE, views=("strings",)),
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--export", default=None, help="also write checkpoint + embeddings table per variant here")
    a = ap.parse_args()
    variants = SWEEPS[a.sweep]
    if a.only:
        variants = {k: variants[k] for k in a.only.split(",")}
    run_variants(a.cache, variants, a.out, export_dir=a.export)


if __name__ == "__main__":
    main()
