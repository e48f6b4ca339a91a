"""The open-set gate (issue 22), measured on stored embeddings at query time: how a per-file share of the learned
part, set by the classifier's confidence, ranks known and unseen families, against one fixed share for all.

  nice -n 10 .venv/bin/python studies/unseen_families/gate.py --feat /work/studies22/feat \\
      --manifest /work/p22/m15.csv --root /work/p22/new/root --model /work/p22/new/model \\
      [--gates "0.39,0.59,0.6 0.3,0.5,0.4"] [--weights 0,0.1,0.2,0.3,0.4] [--bar "tokens IDF^2|strings"]

The root's embeddings were made with one share (the checkpoint's model.skip_weight, trained with it); each part is
unit-length inside them, so any other mix is recomputed exactly: learned x sqrt(w) + fixed x sqrt(1 - w), with w
either one number for every file (--weights) or, per file, wmax x clip((confidence - low) / (high - low), 0, 1)
(--gates "low,high,wmax"), where confidence = max cosine of the stored embedding to a family direction, as
EmbeddingNet.confidence computes it. Rows are scored on the harness's queries (1,500 per cell) beside the
training-free methods of bar.py named in --bar. An embedding root that is already gated is scored as it is with
--weights "" --gates "".
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bar  # noqa: E402
import harness as H  # noqa: E402
from embedlib.eval import evaluation as E  # noqa: E402
from embedlib.model import checkpoint  # noqa: E402


def corpus_and_stored(feat: str, manifest: str, root: str) -> tuple:
    """(the harness corpus of `feat`, the embeddings stored in `root` row-aligned with it, float32)."""
    c = bar.load_corpus(feat, manifest, unseen_fraction=0.1)
    print(c.describe(), flush=True)
    g = E.gallery_from(manifest, {"v": root})
    pos = {s: i for i, s in enumerate(g.sha256)}
    return c, np.ascontiguousarray(g.vectors["v"][[pos[s] for s in c.sha256]], np.float32)


def product_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a study of a product run: the harness features, its manifest, embedding root and model."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--feat", "--manifest", "--root", "--model"):
        ap.add_argument(name, required=True)
    return ap


def main() -> None:
    ap = product_parser(__doc__)
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.4")
    ap.add_argument("--gates", default="0.39,0.59,0.4 0.39,0.59,0.6")
    ap.add_argument("--bar", default="")
    a = ap.parse_args()
    c, v = corpus_and_stored(a.feat, a.manifest, a.root)
    ckpt = checkpoint.load(a.model)
    directions = torch.nn.functional.normalize(ckpt.model.class_directions.detach(), dim=1).numpy()
    conf = (v @ directions.T).max(1)
    for role in ("train", "known", "unseen"):
        print(f"confidence of {role} files, percentiles 5/25/50/75/95:",
              np.percentile(conf[c.role == role], [5, 25, 50, 75, 95]).round(3).tolist())
    print(H.evaluate(c, v, "as stored").line(), flush=True)
    m = ckpt.config.model
    split = m.embedding_dim - m.skip_dim
    learned, fixed = v[:, :split], v[:, split:]
    learned = learned / np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-12)
    fixed = fixed / np.maximum(np.linalg.norm(fixed, axis=1, keepdims=True), 1e-12)

    def mix(w: np.ndarray) -> np.ndarray:
        w = np.broadcast_to(w, (len(v),))[:, None]
        return np.concatenate([np.sqrt(w) * learned, np.sqrt(1 - w) * fixed], axis=1)

    for w in [float(x) for x in a.weights.split(",") if x]:
        print(H.evaluate(c, mix(np.array(w)), f"one share {w:g}").line(), flush=True)
    for spec in a.gates.split():
        low, high, wmax = (float(x) for x in spec.split(","))
        share = wmax * np.clip((conf - low) / (high - low), 0, 1)
        print(H.evaluate(c, mix(share), f"gate {low:g}-{high:g}, share up to {wmax:g}").line(), flush=True)
    if a.bar:
        bar.run(c, a.bar.split("|"), None)


if __name__ == "__main__":
    main()
