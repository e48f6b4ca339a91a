"""How mixed are training batches, and what does one epoch of data cost, for each way of shuffling?

  python bench/shuffle.py --samples runs/demo/corpus
  python bench/shuffle.py --samples /work/corpora/debian-multi/corpus --world 2 --batch-size 32

BatchNorm's batch statistics need batches of many families (ARCHITECTURE.md pitfall 11); a corpus is stored
in blocks of nearby paths, often one family each. Compared on the same samples table:
  in order          blocks as stored, no shuffle (a naive streaming reader)
  blocks only       the epoch's block permutation, batches cut from each block in turn (buffer = one batch)
  buffer N          embedlib.train.dataset: block permutation + a shuffle buffer of N rows per worker (the product)
  global            every training row permuted in memory (the reference for mixing)
  ray data          the first release's Ray Data random_shuffle + repartition (two all-to-all shuffles)
Per method: distinct families per batch (mean), share of single-family batches, seconds to produce one
epoch of batches on one worker's share, and the rows held in memory at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib.train import dataset  # noqa: E402
from embedlib.config import load  # noqa: E402


def report(name: str, batches: list[np.ndarray], seconds: float, held: int) -> None:
    distinct = [len(np.unique(b)) for b in batches]
    single = np.mean([d == 1 for d in distinct]) if distinct else float("nan")
    print(f"{name:<16} {np.mean(distinct):7.2f} families/batch  {100 * single:5.1f}% single-family  "
          f"{seconds:7.2f} s/epoch  {held:>8} rows held", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="a rasterized corpus root (jobs.rasterize)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--world", type=int, default=2, help="workers sharing an epoch")
    parser.add_argument("--buffers", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--ray-data", action="store_true", help="also time the first release's Ray Data shuffle")
    args = parser.parse_args()
    cfg = load(None, args.overrides)
    corpus = dataset.scan_corpus(args.samples, cfg)
    bs = args.batch_size
    share = dataset.epoch_shares(corpus, args.world, 0, seed=0)[0]
    steps = dataset.steps_per_epoch(corpus, args.world, 0, 0, bs)
    print(f"{corpus.train_rows} training rows of {len(corpus.rule.families)} families in {len(corpus.blocks)} blocks; "
          f"one of {args.world} workers: {len(share)} blocks, {steps} batches of {bs}\n")

    started = time.perf_counter()
    labels = [dataset.read_block(corpus, b, "train")[1] for b in corpus.blocks[: len(share)]]
    flat = np.concatenate(labels)
    in_order = [flat[i : i + bs] for i in range(0, steps * bs, bs)]
    report("in order", in_order, time.perf_counter() - started, max(len(x) for x in labels))

    for name, buffer in [("blocks only", bs)] + [(f"buffer {n}", n) for n in args.buffers]:
        started = time.perf_counter()
        batches = [y for _, y in dataset.shuffled_batches(corpus, share, bs, steps, buffer, seed=1)]
        report(name, batches, time.perf_counter() - started, max(buffer, bs))

    started = time.perf_counter()
    parts = [dataset.read_block(corpus, b, "train") for b in share]
    everything = np.concatenate([p[1] for p in parts])
    order = np.random.default_rng(0).permutation(len(everything))
    images = np.concatenate([p[0]["image"] for p in parts])[order]
    global_batches = [everything[order[i : i + bs]] for i in range(0, steps * bs, bs)]
    del images
    report("global", global_batches, time.perf_counter() - started, len(everything))

    if args.ray_data:
        import ray

        from embedlib import ray_io
        from embedlib.root.store import Store

        ray_io.init_ray()
        store = Store(args.samples)
        files = [store.path(b.path) for b in corpus.blocks]
        started = time.perf_counter()
        ds = ray.data.read_parquet(files, columns=["sha256", "family", "view_image"]).random_shuffle(seed=0) \
            .repartition(max(8, args.world * 8))
        fams = {f: i for i, f in enumerate(corpus.rule.families)}
        batches = []
        for batch in ds.iter_batches(batch_size=bs, batch_format="pyarrow"):
            batches.append(np.asarray([fams.get(f, -1) for f in batch.column("family").to_pylist()]))
        report("ray data", batches[: steps * args.world], time.perf_counter() - started, corpus.train_rows)


if __name__ == "__main__":
    main()
