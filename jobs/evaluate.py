"""Family retrieval: embedding variants beside training-free baselines, on the same queries (an ablation table).

  python -m jobs.evaluate --labels manifest.csv --variant full=runs/emb-full --variant no-image=runs/emb-noimg \\
      --output runs/eval
  python -m jobs.evaluate --labels manifest.csv --embeddings runs/emb          # one variant named "embedding"

Protocol (embedlib.eval.retrieval): families whose name hashes below --unseen-fraction were never trained on (their
files are the "unseen" queries); in the other families, files whose sha256 hashes below --holdout-fraction are
the "known" queries; the gallery is every labelled file that every variant embedded. Both fractions are the
training split of the checkpoint that made the vectors (--model, else the one each variant's embed run recorded:
train.unseen_family_fraction, train.holdout_fraction); a given fraction may only narrow it. Baselines alone: 0.2.
Modes: all, and other-programs (files with the query's file name are not candidates). Baselines (no training):
the strings sketch, the dynamic symbol names, the words (IDF^2), TLSH, ssdeep (libfuzzy), computed from the first
--max-bytes of each file. Long steps print a progress line at least every 30 seconds. Rows are added for the
string-poor files (bottom quartile of distinct strings). CPU cost per file: read + each baseline, and read +
views + model of each variant's checkpoint (from its embed run, or --model) on --timing-files files.
Writes ablation.{md,csv,parquet,json}, retrieval.png and embedding_map.png to --output.
"""

from __future__ import annotations

import argparse
import os

from embedlib.eval import evaluation

from embedlib.eval import retrieval
from embedlib.config import InputConfig

from jobs._common import setup_logging


def costs(g: evaluation.Gallery, baselines: list[str], args: argparse.Namespace) -> list[dict]:
    """CPU ms per file on the same sample of files, one process, one thread: read + each baseline, and read +
    views + model + words for each variant (whose re-embedded vectors are compared with the table's)."""
    idx = list(range(len(g)))[:: max(1, len(g) // max(args.timing_files, 1))][: args.timing_files]
    paths = [g.path[i] for i in idx]
    rows = evaluation.baseline_costs(paths, args.max_bytes, baselines) if paths else []
    for name in g.vectors:
        model = g.model.get(name) or args.model  # the checkpoint that made this variant's vectors
        if model and idx:
            c = evaluation.embedding_cost(model, paths, args.max_bytes)
            agree = float((c["vectors"] * g.vectors[name][idx]).sum(axis=1).mean())
            rows.append({"method": f"{name} (read + views + model + words)", "files": len(idx),
                         "cpu_ms_per_file": c["total_cpu_ms"], "read_cpu_ms": c["read_cpu_ms"],
                         "compute_cpu_ms": c["total_cpu_ms"] - c["read_cpu_ms"], "views_cpu_ms": c["views_cpu_ms"],
                         "model_cpu_ms": c["model_cpu_ms"], "words_cpu_ms": c["words_cpu_ms"],
                         "reembedded_cosine_to_table": agree})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True, help="manifest .csv/.parquet with path,family (joined on path)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=EMBEDDINGS_ROOT (repeat)")
    ap.add_argument("--embeddings", default=None, help="one embedding root (variant name: embedding)")
    ap.add_argument("--model", default=None, help="checkpoint: split fractions and timing (default: each run's)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--baselines", default=",".join(evaluation.BASELINES))
    ap.add_argument("--modes", default=",".join(retrieval.MODES))
    ap.add_argument("--unseen-fraction", type=float, default=None)
    ap.add_argument("--holdout-fraction", type=float, default=None)
    ap.add_argument("--max-files", type=int, default=None, help="gallery cap (hash-chosen)")
    ap.add_argument("--max-bytes", type=int, default=InputConfig().max_bytes)
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 2))
    ap.add_argument("--timing-files", type=int, default=200)
    args = ap.parse_args(argv)
    setup_logging()
    variants = dict(v.split("=", 1) for v in args.variant)
    if args.embeddings:
        variants["embedding"] = args.embeddings
    baselines = [b for b in args.baselines.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    if set(baselines) - set(evaluation.BASELINES) or set(modes) - set(retrieval.MODES) or not (variants or baselines):
        raise SystemExit(f"choose --baselines from {evaluation.BASELINES}, --modes from {retrieval.MODES}, "
                         "and at least one variant or baseline")
    g = evaluation.gallery_from(args.labels, variants, args.max_files) if variants else \
        evaluation.gallery_from_manifest(args.labels, args.max_files)
    if len(g) < 2:
        raise SystemExit("fewer than 2 labelled files are embedded by every variant: nothing to evaluate")
    checkpoints = [args.model] if args.model else [m for m in g.model.values() if m]
    try:  # the split of the checkpoint(s) that made the vectors: trained families are never "unseen"
        unseen, holdout = evaluation.split_of(checkpoints, args.unseen_fraction, args.holdout_fraction)
    except evaluation.SplitError as exc:
        raise SystemExit(f"error: {exc}") from None
    baseline_cost = evaluation.compute_baselines(g, args.max_bytes, baselines, args.workers, say=print)
    info = {"gallery": evaluation.describe_gallery(g, unseen, holdout), "variants": variants,
            "baseline_cost": baseline_cost, "max_bytes": args.max_bytes}
    print(info["gallery"])
    rows = evaluation.ablation(g, evaluation.scorers(g, baselines), unseen, holdout, modes, say=print)
    evaluation.write_report(rows, info, g, args.output)  # the metrics are safe before the (slower) timings
    info["costs"] = costs(g, baselines, args)
    written = evaluation.write_report(rows, info, g, args.output)
    print(evaluation.markdown(evaluation.wide_rows(rows)))
    print(evaluation.markdown(info["costs"]))
    print("written: " + ", ".join(os.path.basename(p) for p in written))
    return {"rows": rows, **info}


if __name__ == "__main__":
    main()
