"""CPU per file of the views and of the model forward of two (or more) checkpoints, side by side on the same
files: jobs.evaluate's own measure (embedlib.eval.evaluation.embedding_cost: one torch thread, the kernels warmed
up) taken for each checkpoint in turn, --rounds times, interleaved so that a change of load hits them alike; the
median round is printed.

  nice -n 10 .venv/bin/python bench/embed_cost.py --model new=/work/p22/new/model --model old=/work/p22/old/model \
      --manifest /work/p22/m15.csv --files 200
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib.eval.evaluation import embedding_cost  # noqa: E402
from embedlib.files.corpus import read_manifest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeat)")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024)
    a = ap.parse_args()
    paths = [f.path for f in read_manifest(a.manifest)]
    paths = paths[:: max(1, len(paths) // a.files)][: a.files]
    models = dict(m.split("=", 1) for m in a.model)
    rounds: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(a.rounds):
        for name, uri in models.items():
            rounds[name].append(embedding_cost(uri, paths, a.max_bytes))
    print(f"{len(paths)} files, {a.rounds} rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, costs in rounds.items():
        views_ms, model_ms, words_ms = (float(np.median([c[k] for c in costs]))
                                        for k in ("views_cpu_ms", "model_cpu_ms", "words_cpu_ms"))
        print(f"{name:>12}: views {views_ms:.3f} ms/file  model {model_ms:.3f} ms/file  words {words_ms:.3f} ms/file  "
              f"(D={costs[0]['vectors'].shape[1]})")


if __name__ == "__main__":
    main()
