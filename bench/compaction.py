"""Does compaction pay? Query latency over a year of small nightly runs, before and after python -m jobs.compact.

  nice -n 10 .venv/bin/python bench/compaction.py                       # 365 nights x 100 rows, D = 640
  nice -n 10 .venv/bin/python bench/compaction.py --nights 30 --rows 50 --neighbors 5

Builds an output root of --nights committed runs (synthetic unit vectors of 50 families, a few error rows per
night), each written through the product's writers as a nightly jobs.embed run writes it: one embeddings part,
one errors part and its runs row (the commit); with --neighbors K, jobs.neighbors' parts for every run. Then,
before compaction, after it, and after the superseded files are deleted (a second compaction with a zero grace
period): the Parquet files on disk and committed, the time to open the root (connect: listing + views), and
the medians of --repeat runs of
  similar('<sha256>', 10)    brute-force top-10 of one file over the current model version
  family count               SELECT * FROM family_counts (files per family: every row's family)
Timings are wall clock on whatever else the machine is doing: say so when quoting them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import statistics
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib import schema  # noqa: E402
from embedlib.root import catalog, compact  # noqa: E402
from embedlib.root.store import Store  # noqa: E402
from embedlib.query import connect  # noqa: E402
from embedlib.query.neighbors import compute_neighbors  # noqa: E402

VERSION, FAMILIES = "m-bench-nightly", 50


def build(root: str, nights: int, rows: int, dim: int, seed: int = 0) -> str:
    """`nights` committed runs, one per night of 2026, through Store and the schemas. Returns one sha256."""
    rng = np.random.default_rng(seed)
    store = Store(root)
    centers = rng.normal(size=(FAMILIES, dim)).astype(np.float32)
    first = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.timezone.utc)
    some_sha = ""
    for night in range(nights):
        started = first + dt.timedelta(days=night)
        run = catalog.new_run_id(started)
        fam = rng.integers(0, FAMILIES, rows)
        x = centers[fam] + 0.4 * rng.normal(size=(rows, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        shas = [hashlib.sha256(f"{night}/{i}".encode()).hexdigest() for i in range(rows)]
        some_sha = some_sha or shas[0]
        emb = {"sha256": shas, "format": ["elf"] * rows, "truncated": [False] * rows,
               "path": [f"/srv/corpus/{night:03d}/{i:05d}" for i in range(rows)],
               "size_bytes": rng.integers(1_000, 5_000_000, rows).tolist(), "family": [f"fam-{f:02d}" for f in fam],
               "model_version": [VERSION] * rows, "run_id": [run] * rows,
               "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)}
        store.write_parquet(catalog.written_part("embeddings", VERSION, run, 0),
                            schema.conform(pa.table(emb), schema.embeddings_schema(dim, VERSION)))
        errors = [{"path": f"/srv/corpus/{night:03d}/empty-{j}", "status": schema.STATUS_EMPTY, "reason": "0 bytes",
                   "size_bytes": 0, "model_version": VERSION, "run_id": run} for j in range(3)]
        store.write_parquet(catalog.errors_part(run, "read", 0), schema.rows_table(errors, schema.ERRORS))
        info = {"identity": {"job": "embed", "version": VERSION, "input": "/srv/corpus/manifest.parquet"},
                "started": started.isoformat(), "config": {"model": "s3://models/release-1"}}
        counts = {"files_seen": rows + 3, "written": rows, "failed": 3, "bytes_read": rows * 100_000}
        store.write_parquet(catalog.runs_part(run), catalog.runs_row(run, info, counts,
                                                                     started + dt.timedelta(minutes=20)))
    return some_sha


def parquet_files(root: str) -> int:
    return sum(1 for _, _, names in os.walk(root) for n in names if n.endswith(".parquet"))


def committed(root: str) -> int:
    snap = catalog.snapshot(Store(root))
    return sum(len(files) for files in snap.files.values())


def measure(root: str, sha: str, repeat: int) -> dict[str, float]:
    t = time.perf_counter()
    con = connect(root)
    opened = time.perf_counter() - t
    times: dict[str, list[float]] = {"similar": [], "families": []}
    for _ in range(repeat):  # interleaved, so that both see the same load
        t = time.perf_counter()
        rows = con.execute("SELECT * FROM similar($s, 10)", {"s": sha}).fetchall()
        times["similar"].append(time.perf_counter() - t)
        assert len(rows) == 10
        t = time.perf_counter()
        fams = con.execute("SELECT * FROM family_counts").fetchall()
        times["families"].append(time.perf_counter() - t)
        assert len(fams) == FAMILIES
    con.close()
    return {"connect": opened, **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/bench-compaction")
    p.add_argument("--nights", type=int, default=365)
    p.add_argument("--rows", type=int, default=100, help="rows embedded per night")
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--neighbors", type=int, default=0, metavar="K", help="also store K neighbours of every run")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    t = time.perf_counter()
    sha = build(args.root, args.nights, args.rows, args.dim)
    print(f"built {args.nights} nightly runs x {args.rows} rows (D={args.dim}) in {time.perf_counter() - t:.1f} s "
          f"-> {args.root}")
    if args.neighbors:
        print(compute_neighbors(args.root, k=args.neighbors).describe())
    stages = []
    stages.append(("before compaction", parquet_files(args.root), committed(args.root),
                   measure(args.root, sha, args.repeat)))
    t = time.perf_counter()
    print(compact.compact(args.root).describe())
    print(f"  (jobs.compact took {time.perf_counter() - t:.1f} s)")
    stages.append(("after compaction", parquet_files(args.root), committed(args.root),
                   measure(args.root, sha, args.repeat)))
    print(compact.compact(args.root, grace_seconds=0).describe())
    stages.append(("after deleting superseded", parquet_files(args.root), committed(args.root),
                   measure(args.root, sha, args.repeat)))
    print(f"\n{'':28s} {'files on disk':>13s} {'committed':>9s} {'connect':>9s} {'similar()':>10s} "
          f"{'family count':>12s}")
    for name, on_disk, visible, m in stages:
        print(f"{name:28s} {on_disk:13d} {visible:9d} {m['connect'] * 1000:7.0f} ms {m['similar'] * 1000:7.1f} ms "
              f"{m['families'] * 1000:9.1f} ms")
    print(f"(medians of {args.repeat}; load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
