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

SI = ("strings", "idents")
D1 = Variant(views=SI, epochs=10)

SWEEPS: dict[str, dict[str, Variant]] = {
    "deb-gen": {
        "si-3ep": R(D1, epochs=3),
        "si-concat256": R(D1, sketch_skip="concat", dim=384, skip_dim=256),
        "si-supcon-pk": R(D1, loss="supcon", sampler="pk"),
        "si-dropout0.5": R(D1, sketch_dropout=0.5),
        "si-wide-5ep": R(D1, hidden=1024, dim=256, epochs=5),
    },
    "deb-views": {
        "strings": R(D1, views=("strings",)),
        "strings+idents": D1,
        "strings+idents+bytehist": R(D1, views=SI + ("bytehist",)),
        "image64+strings+idents": R(D1, views=("image",) + SI),
        "image64": R(D1, views=("image",)),
    },
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
    ap.add_argument("--manifest", default=None, help="keep only (and relabel by) this manifest's paths")
    ap.add_argument("--export", default=None, help="also write checkpoint + embeddings table per variant here")
    a = ap.parse_args()
    variants = SWEEPS[a.sweep]
    if a.only:
        variants = {k: variants[k] for k in a.only.split(",")}
    run_variants(a.cache, variants, a.out, export_dir=a.export, manifest=a.manifest)


if __name__ == "__main__":
    main()
