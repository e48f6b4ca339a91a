"""What the evidence column (issue 20) costs per row: Parquet bytes and CPU.

  python bench/evidence_cost.py --root ROOT --model CKPT --input MANIFEST [--files 1000]

Bytes: the root's committed embeddings, written as the pipeline writes a part (zstd, one file) with and
without the `evidence` column; the difference per row. CPU: for `--files` files of the manifest (read once into
memory first, page cache warm), the process CPU per file of the views alone (`views.compute_views`, what the
embedding job computed before) and of the views with the evidence (`views_with_evidence`, the model's weights),
one thread, best of 3 passes. Prints one line per figure; the figures in README were measured with it.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from embedlib import views
from embedlib.config import Config
from embedlib.model import checkpoint
from embedlib.root import catalog
from embedlib.root.store import Store
from embedlib.views.evidence import top_items, views_and_items, views_with_evidence


def parquet_bytes(table: pa.Table) -> int:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.tell()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="manifest (path column) of files to time")
    p.add_argument("--files", type=int, default=1000)
    args = p.parse_args()

    store = Store(args.root)
    table = pa.concat_tables([store.read_parquet(f) for f in catalog.table_files(store, "embeddings")],
                             promote_options="permissive")
    with_ev, without = parquet_bytes(table), parquet_bytes(table.drop_columns(["evidence"]))
    items = [len(x) for x in table.column("evidence").to_pylist() if x]
    text = [len(i["item"]) for x in table.column("evidence").to_pylist() if x for i in x]
    n = table.num_rows
    print(f"rows {n}, items per row {sum(items) / len(items):.1f}, characters per item {sum(text) / len(text):.1f}")
    print(f"parquet (zstd) with evidence {with_ev / n:.0f} B/row, without {without / n:.0f} B/row: "
          f"evidence {(with_ev - without) / n:.0f} B/row (+{100 * (with_ev - without) / without:.0f}%)")
    print(f"in memory (Arrow) evidence {table.column('evidence').nbytes / n:.0f} B/row")

    ckpt = checkpoint.load(args.model)
    cfg = Config(views=ckpt.config.views, raster=ckpt.config.raster)
    weights = ckpt.model.evidence_weights()
    with open(args.input, newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)][: args.files]
    data = [open(path, "rb").read()[: cfg.input.max_bytes] for path in paths if os.path.isfile(path)]
    found = [views_and_items(d, cfg) for d in data]  # the views' counts and items, for the selection alone
    best: dict[str, float] = {}
    for _ in range(3):
        for name, fn in (("views", lambda i: views.compute_views(data[i], cfg)),
                         ("views + evidence", lambda i: views_with_evidence(data[i], cfg, weights, 64, 64)),
                         ("selection", lambda i: top_items(data[i], *found[i], weights, 64, 64))):
            t0 = time.process_time()
            for i in range(len(data)):
                fn(i)
            best[name] = min(best.get(name, float("inf")), (time.process_time() - t0) / len(data) * 1e3)
    mb = sum(len(d) for d in data) / len(data) / 1e6
    print(f"CPU per file ({len(data)} files, {mb:.2f} MB each on average, one thread, best of 3): views "
          f"{best['views']:.3f} ms, views + evidence {best['views + evidence']:.3f} ms: evidence "
          f"{best['views + evidence'] - best['views']:.3f} ms/file; the selection alone (top_items, from the "
          f"items the views' pass returned) {best['selection']:.3f} ms/file")


if __name__ == "__main__":
    main()
