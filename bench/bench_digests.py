"""What do the baselines cost? TLSH and ssdeep (ppdeep) per file, and their pairwise matrices, on real ELF files.

  .venv/bin/python bench/bench_digests.py --files 300 --max-bytes 16777216

Per-file times are CPU seconds (time.process_time) of one digest from bytes already in memory, so other
load on the machine inflates them less than wall time. The pairwise part compares embedlib.eval.digests'
exact ssdeep matrix with ppdeep.compare on a sample of pairs, extrapolated to all pairs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib.eval import digests  # noqa: E402
from embedlib.views import digests as file_digests  # noqa: E402
from embedlib.files.corpus import system_executables, top_families  # noqa: E402


def describe(name: str, seconds: list[float], total_mb: float) -> str:
    ms = 1000 * np.asarray(seconds)
    return (f"{name:<7} per file: mean {ms.mean():8.2f} ms  median {np.median(ms):8.2f} ms  p95 {np.percentile(ms, 95):8.2f} ms"
            f"  max {ms.max():8.1f} ms   {total_mb / max(sum(seconds), 1e-9):7.2f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--min-family", type=int, default=5)
    parser.add_argument("--pairs-sample", type=int, default=2000, help="ppdeep.compare calls to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = top_families(system_executables(), args.min_family)
    random.Random(args.seed).shuffle(files)
    files = files[: args.files]
    datas = []
    for f in files:
        with open(f.path, "rb") as fh:
            datas.append(fh.read(args.max_bytes))
    mb = sum(map(len, datas)) / 1e6
    print(f"{len(datas)} files, {mb:.1f} MB (first {args.max_bytes} bytes of each), "
          f"median {np.median([len(d) for d in datas]) / 1e3:.0f} kB")

    hashes: dict[str, list] = {"tlsh": [], "ssdeep": []}
    times: dict[str, list[float]] = {"tlsh": [], "ssdeep": []}
    for data in datas:
        r = file_digests.timed_compute(data)
        for name in hashes:
            hashes[name].append(r[name])
            times[name].append(r[f"{name}_cpu_s"])
    for name in hashes:
        print(describe(name, times[name], mb) + f"   missing {sum(h is None for h in hashes[name])}")

    n = len(datas)
    started = time.perf_counter()
    digests.tlsh_distance_matrix(hashes["tlsh"])
    tlsh_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = digests.ssdeep_score_matrix(hashes["ssdeep"])
    ssdeep_s = time.perf_counter() - started
    pairs = n * (n - 1) // 2
    print(f"pairwise over {n} files ({pairs} pairs): TLSH matrix {tlsh_s:.2f} s "
          f"({1e6 * tlsh_s / max(pairs, 1):.2f} us/pair); ssdeep matrix {ssdeep_s:.2f} s "
          f"({int((np.triu(np.nan_to_num(scores), 1) > 0).sum())} pairs non-zero)")

    import ppdeep

    valid = [h for h in hashes["ssdeep"] if h]
    rng = random.Random(args.seed)
    sample = [(rng.choice(valid), rng.choice(valid)) for _ in range(args.pairs_sample)]
    started = time.perf_counter()
    for a, b in sample:
        ppdeep.compare(a, b)
    per_pair = (time.perf_counter() - started) / len(sample)
    print(f"ppdeep.compare: {1e6 * per_pair:.1f} us/pair -> {per_pair * pairs:.1f} s for all pairs "
          f"(the exact matrix above: {ssdeep_s:.2f} s)")


if __name__ == "__main__":
    main()
