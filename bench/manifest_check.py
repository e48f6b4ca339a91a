"""How long does the pre-lock manifest check take? inputs.check_input reads a whole manifest through (the same
reader the listing uses, no cell converted to Python) so that a bad row fails before the lock and before Ray.

  nice -n 10 .venv/bin/python bench/manifest_check.py                  # 1M rows
  nice -n 10 .venv/bin/python bench/manifest_check.py --rows 200000

For each form (CSV; Parquet with a string `path`; Parquet with a dictionary-encoded `path` and `family`, as a
pandas `category` column writes it): the median of --repeats checks of a good manifest, and of one whose
last row is bad (CSV: a row with an extra field, found at the end). Wall clock on whatever else the machine
is doing: say so when quoting it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from embedlib.files import inputs


def _paths(rows: int) -> list[str]:
    return [f"/srv/corpus/{i % 997:03d}/package-{i // 997:05d}/usr/bin/file-{i:07d}" for i in range(rows)]


def write_manifests(folder: str, rows: int) -> dict[str, str]:
    paths = _paths(rows)
    families = [f"family-{i % 1000}" for i in range(rows)]
    out = {}
    out["csv"] = os.path.join(folder, "m.csv")
    with open(out["csv"], "w") as fh:
        fh.write("path,family\n")
        fh.writelines(f"{p},{f}\n" for p, f in zip(paths, families))
    out["csv, bad last row"] = os.path.join(folder, "bad.csv")
    with open(out["csv"]) as src, open(out["csv, bad last row"], "w") as dst:
        dst.write(src.read() + "/srv/extra,field,here\n")
    out["parquet"] = os.path.join(folder, "m.parquet")
    pq.write_table(pa.table({"path": paths, "family": families}), out["parquet"])
    out["parquet, dictionary"] = os.path.join(folder, "dict.parquet")
    pq.write_table(pa.table({"path": pa.array(paths).dictionary_encode(),
                             "family": pa.array(families).dictionary_encode()}), out["parquet, dictionary"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        manifests = write_manifests(tmp, args.rows)
        print(f"{args.rows:,} rows; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for name, path in manifests.items():
            times, outcome = [], ""
            for _ in range(args.repeats):
                t = time.perf_counter()
                try:
                    inputs.check_input(path)
                    outcome = "ok"
                except inputs.InputError as exc:
                    outcome = str(exc).rsplit(": ", 2)[-2] if ": " in str(exc) else str(exc)
                times.append(time.perf_counter() - t)
            size = os.path.getsize(path) / 1e6
            print(f"  {name:22s} {size:6.1f} MB  median {statistics.median(times):.3f} s  "
                  f"(min {min(times):.3f}, max {max(times):.3f})  -> {outcome}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
