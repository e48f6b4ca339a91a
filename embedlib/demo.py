"""The main job on the embedded default: this machine's executables -> trained model -> embeddings -> DuckDB.

Every step is the product's own library call, the same ones the jobs make; a newcomer sees what each step
did, and the run ends with what they came for: nearest neighbours, the family table, the error table, and
where the tables and pictures are. Expected failures (no executables, no labels, too few families, an
unhealthy model) are UserErrors: one line and a non-zero exit, from jobs/demo.py.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib import pipeline, ray_io

from embedlib.files import corpus

from embedlib.train import health

from embedlib.train import labels

from embedlib.train import trainer
from embedlib.config import Config
from embedlib.errors import UserError
from embedlib.root import catalog
from embedlib.root.store import Store

DEFAULT_EXAMPLES = ("/usr/bin/ls", "/usr/bin/python3.11", "/usr/bin/gcc-12")


class DemoError(UserError):
    pass


class DemoPaths:
    """Where the demo puts everything, under one work folder."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.manifest = os.path.join(work, "manifest.csv")
        self.corpus = os.path.join(work, "corpus")
        self.model = os.path.join(work, "model")
        self.ray = os.path.join(work, "ray")
        self.embeddings = os.path.join(work, "embeddings")
        self.database = os.path.join(work, "embedlib.duckdb")
        self.pictures = os.path.join(work, "pictures")


def run_demo(work: str, cfg: Config, limit: int = 0, examples=DEFAULT_EXAMPLES,
             say: Callable[[str], None] = print) -> dict:
    paths = DemoPaths(os.path.abspath(work))
    started = time.perf_counter()

    files = corpus.system_executables()
    if limit:
        files = files[:limit]
    if not files:
        raise DemoError("no ELF executables found under /usr/bin, /usr/sbin, /usr/lib or /usr/libexec")
    labelled = sum(1 for f in files if f.family)
    if not labelled:
        raise DemoError("none of this machine's executables is owned by a dpkg package: the demo needs labels "
                        "(train with your own manifest: python -m jobs.train --input labels.csv ...)")
    corpus.write_manifest(files, paths.manifest)
    say(f"[1/6] corpus: {len(files)} ELF files, {labelled} owned by a dpkg package "
        f"({len({f.family for f in files if f.family})} families) -> {paths.manifest}")

    executor = ray_io.executor_factory(cfg)
    for s in pipeline.rasterize_files(paths.manifest, paths.corpus, cfg, executor=executor):
        say("[2/6] rasterize: " + s.describe("rasterized"))

    say("[3/6] train (Ray Train, then precise BN and the BN health check)")
    for stale in (paths.model, paths.ray):  # a fresh model each run: the demo shows training every time
        shutil.rmtree(stale, ignore_errors=True)
    meta = trainer.train(paths.corpus, paths.model, cfg, fit=ray_io.train_with_ray, block_map=ray_io.block_map(),
                          storage=paths.ray, name="demo", labels=labels.for_training(paths.manifest, paths.corpus, cfg),
                          say=lambda line: say("      " + line))
    if not meta["training"]["healthy"]:
        raise DemoError("the model's training record says it did not really train:\n"
                        + health.describe_training(meta["training"]))
    if not meta["bn_health"]["healthy"]:
        raise DemoError("the trained model failed its BatchNorm health check even after precise BN:\n"
                        + health.describe(meta["bn_health"]))

    for s in pipeline.embed_files(paths.model, paths.manifest, paths.embeddings, cfg, executor=executor):
        say("[4/6] embed: " + s.describe("embedded"))

    say(f"[5/6] DuckDB: {paths.database}")
    report = query_report(paths, meta["model_version"], examples, say)
    pictures = make_pictures(paths, cfg, meta["model_version"])
    say(f"[6/6] pictures: {', '.join(pictures)}")
    say(f"\ndone in {time.perf_counter() - started:.0f} s. Tables (Parquet, every run accumulates):\n"
        f"  {paths.embeddings}/embeddings/  one row per content and model version\n"
        f"  {paths.embeddings}/errors/      every input path that was not embedded, with its reason\n"
        f"  {paths.embeddings}/runs/        one summary row per run\n"
        f"  {paths.corpus}/samples/         the rasterized training corpus\n"
        f"  model: {paths.model} ({meta['model_version']}); DuckDB tables: {paths.database} "
        f"(embedlib sql --db {paths.database})")
    return {"meta": meta, **report, "pictures": pictures}


def query_report(paths: DemoPaths, version: str, examples, say: Callable[[str], None]) -> dict:
    from embedlib import query

    con = query.connect(paths.embeddings, model_version=version, database=paths.database)
    out = {}
    try:
        for example in examples:
            _, rows = query.ask(con, "sha256_of_path", path=example)
            if rows:
                cols, hits = query.similar(con, rows[0][0], 5)
                say(f"\nnearest to {example}:\n{query.format_rows(cols, hits)}")
                out[example] = hits
        cols, rows = query.ask(con, "families", k=15)
        say(f"\nfamilies (largest 15):\n{query.format_rows(cols, rows)}")
        cols, errors = query.ask(con, "errors", run=None)
        say(f"\nnot embedded, by reason:\n{query.format_rows(cols, errors)}")
        out["errors"] = errors
    finally:
        con.close()
    return out


def make_pictures(paths: DemoPaths, cfg: Config, version: str, families: int = 6, per_family: int = 6) -> list[str]:
    """A byteplot gallery of the largest families (the files' raw layout, the byteplot view) and a PCA map of the
    embeddings."""
    from embedlib.eval import plots
    from embedlib.views import raster
    from embedlib.files.sources import read_path

    os.makedirs(paths.pictures, exist_ok=True)
    emb = Store(paths.embeddings)
    parts = [emb.read_parquet(f, columns=["path", "family", "embedding"])
             for f in catalog.table_files(emb, "embeddings", version)]
    table = pa.concat_tables(parts)
    top = [fam for fam, _ in Counter(f for f in table.column("family").to_pylist() if f).most_common(families)]
    size = cfg.raster.size
    gallery = {}
    for fam in top:
        rows = table.filter(pc.equal(table.column("family"), fam)).slice(0, per_family).column("path").to_pylist()
        reads = [(p, read_path(p, cfg.input, hash_all=False)) for p in rows]
        gallery[fam] = [(os.path.basename(p), raster.to_image(r.data, size)) for p, r in reads if r.ok]
    written = [plots.byteplot_gallery(gallery, os.path.join(paths.pictures, "byteplots.png"),
                                      f"Byteplots ({size}x{size}) of the {len(top)} largest families")]
    vectors = np.asarray(table.column("embedding").to_pylist(), np.float32)
    labels = [f or "(none)" for f in table.column("family").to_pylist()]
    coords, explained = plots.pca_2d(vectors)
    written.append(plots.pca_map(coords, labels, os.path.join(paths.pictures, "embedding_map.png"), top=10,
                                 explained=explained))
    return written
