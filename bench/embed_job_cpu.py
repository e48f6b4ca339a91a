"""The embedding job's CPU, two source trees side by side: what a change to the job costs or saves per file.

  git worktree add /tmp/before <commit>
  python bench/embed_job_cpu.py --before /tmp/before --input M.csv --model CKPT --small SMALL.csv --rounds 2

Runs `python -m jobs.embed` of each tree (PYTHONPATH and working folder set to it: the driver and the local Ray's
workers import that tree's embedlib; numba caches are per tree, so a first round may pay a compile: run --rounds
2 or more and read the later ones) on --input and on --small, into fresh roots, trees alternating within a
round so that a change of load hits both alike. bench/proctree.py reads the CPU of every process of the job
(driver, Ray's daemons, workers; embed_throughput.embed_job_tree, shards of 512 files). Per tree and round it prints the whole tree's CPU, the workers' and the
driver's, the driver's peak RSS, wall time and what the run embedded; then, from the medians, the fixed cost
(the --small run: start-up, imports, model loads) and the cost per file beyond it:
(CPU(input) - CPU(small)) / (files(input) - files(small)). Never in CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.embed_throughput import embed_job_tree  # noqa: E402
from embedlib.files.corpus import read_manifest  # noqa: E402


def run_job(tree: str, manifest: str, model: str, out: str) -> dict:
    wall, procs, stdout = embed_job_tree(manifest, model, out, cwd=tree, env=dict(os.environ, PYTHONPATH=tree))
    cpu = procs.cpu_by_role()
    summary = next((line for line in reversed(stdout.splitlines()) if line.startswith("run ")), "")
    return {"cpu": sum(cpu.values()), "workers": cpu.get("workers", 0.0), "driver": cpu.get("driver", 0.0),
            "rss": procs.peak_rss.get("driver", 0), "wall": wall, "summary": summary.split(": ", 1)[-1].split(";")[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a checkout of the code to compare with (a git worktree)")
    ap.add_argument("--after", default=REPO, help="default: this checkout")
    ap.add_argument("--input", required=True, help="manifest of the files to embed")
    ap.add_argument("--small", required=True, help="manifest of a few files: the fixed cost")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    trees = {"before": os.path.abspath(a.before), "after": os.path.abspath(a.after)}
    sizes = {"input": len(read_manifest(a.input)), "small": len(read_manifest(a.small))}
    work = tempfile.mkdtemp(prefix="embed-job-cpu-")
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for r in range(a.rounds):
            for which, manifest in (("small", a.small), ("input", a.input)):
                for name, tree in trees.items():
                    got = run_job(tree, manifest, a.model, os.path.join(work, f"{name}-{which}"))
                    runs.setdefault((name, which), []).append(got)
                    print(f"round {r} {name:6s} {which:5s} ({sizes[which]} files): tree {got['cpu']:6.1f} CPU s, "
                          f"workers {got['workers']:6.1f}, driver {got['driver']:5.1f}, driver peak RSS "
                          f"{got['rss'] / 1e6:5.0f} MB, wall {got['wall']:5.1f} s; {got['summary']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedians of {a.rounds} rounds, load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    extra = sizes["input"] - sizes["small"]
    for name in trees:
        def median(which: str, key: str) -> float:
            return float(np.median([g[key] for g in runs[(name, which)]]))

        small, full = median("small", "cpu"), median("input", "cpu")
        workers = median("input", "workers") - median("small", "workers")
        print(f"{name:6s}: fixed {small:5.1f} CPU s; {sizes['input']} files {full:6.1f} CPU s = "
              f"{1000 * full / sizes['input']:.2f} ms a file; beyond the fixed cost "
              f"{1000 * (full - small) / extra:.2f} ms a file (workers {1000 * workers / extra:.2f})")

if __name__ == "__main__":
    main()
