"""What a deeper re-scoring costs a query: `similar(sha, 10)` latency at several re-scoring depths on a real root.

  nice -n 10 .venv/bin/python bench/rerank_depth.py --root ROOT [--depths 1000,3000] [--queries 11] [--parquet]

The depth (embedlib.model.exact.RERANK_DEPTH, in embedlib_settings) is how many nearest files by the stored
embedding `similar()` re-scores by their words. Each depth gets its own connection (materialised in memory unless
--parquet), one warm-up query, then the median wall time of --queries queries of files sampled from the root
(the same files at every depth). Depths are run twice, interleaved, since timings move with the machine's load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from embedlib.model import exact  # noqa: E402
from embedlib.query import connect as open_root  # noqa: E402


def median_ms(root: str, depth: int, shas: list[str], materialize: bool) -> float:
    exact.RERANK_DEPTH = depth  # read by connect() into embedlib_settings
    con = open_root(root, materialize=materialize)
    con.execute("SELECT * FROM similar(?, 10)", [shas[0]]).fetchall()
    times = []
    for sha in shas[1:]:
        t = time.perf_counter()
        con.execute("SELECT * FROM similar(?, 10)", [sha]).fetchall()
        times.append(time.perf_counter() - t)
    con.close()
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--depths", default="1000,3000")
    ap.add_argument("--queries", type=int, default=11)
    ap.add_argument("--parquet", action="store_true", help="query the Parquet views, not a materialised table")
    a = ap.parse_args()
    con = open_root(a.root)
    rows = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    shas = [r[0] for r in con.execute(
        f"SELECT sha256 FROM embeddings USING SAMPLE {a.queries + 1} ROWS (reservoir, 7)").fetchall()]
    con.close()
    depths = [int(d) for d in a.depths.split(",")]
    print(f"{rows} rows, {'Parquet' if a.parquet else 'materialised'}; median of {a.queries} similar(sha, 10)")
    for round_ in (1, 2):
        for depth in depths:
            print(f"  round {round_}, depth {depth}: {median_ms(a.root, depth, shas, not a.parquet):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
