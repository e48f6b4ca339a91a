"""The pipeline's tasks: read a staging file, run a stage, write the outputs atomically under deterministic
names, then a completion marker. Plain functions of (root, run, task number, settings): the driver runs them
in-process or as Ray tasks (embedlib/ray_io/) and they behave the same. A task redone after a kill
overwrites its own files, so nothing is ever written twice.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from embedlib import schema, views
from embedlib.config import Config
from embedlib.model import checkpoint, exact
from embedlib.root import catalog, duck
from embedlib.root.catalog import chunk_name, errors_part, work, written_part
from embedlib.pipeline.stages import Counts, RunTag, embed_batch, error_row, hash_rows, read_views, written_table
from embedlib.root.store import Store
from embedlib.sql import sql_text



@dataclass(frozen=True)
class Target:
    """What a run writes: embeddings with a model, or the model's input views (samples, for training)."""

    table: str  # "embeddings" | "samples"
    version: str  # the model version, or the views version
    config: Config  # the views settings (from the checkpoint for embeddings) and the job's input settings
    model_uri: str | None = None
    dim: int = 0
    batch_size: int = 256
    # each embedding row keeps its evidence, weighed by the model's per-bucket weights of each sketch view, which
    # the worker takes from the model it loads (the driver never loads one)
    evidence: bool = False
    learned_dim: int | None = None  # embeddings: leading numbers that are the learned part (None: all)

    def schema(self) -> pa.Schema:
        if self.table == "embeddings":
            return schema.embeddings_schema(self.dim, self.version, self.learned_dim)
        return schema.samples_schema(sorted(views.view_specs(self.config)), self.version)


def _write_errors(store: Store, run_id: str, stage: str, task: int, rows: list[dict]) -> None:
    rel = errors_part(run_id, stage, task)
    if rows:
        store.write_parquet(rel, schema.rows_table(rows, schema.ERRORS))
    else:
        store.remove(rel)  # a redone task that now has none must not leave an earlier attempt's rows


# ---- match: what earlier runs knew about the listed paths ----------------------------------------------------

def match_task(root: str, run_id: str, table: str, chunks: int) -> dict:
    """Join the listing with the latest known state of each file in earlier runs (table + errors), by its exact
    identity (`location`), and write one known/NNNNNN.arrow per listing chunk (schema.LISTING + schema.KNOWN),
    in listing order."""
    store = Store(root)
    prior = [f for f in catalog.table_files(store, table, exclude_run=run_id)]
    prior_errors = catalog.table_files(store, "errors", exclude_run=run_id)
    listing = [work(run_id, "listing", chunk_name(i, "arrow")) for i in range(chunks)]
    cols = ["location", "size_bytes", "mtime_ns", "etag", "sha256", "model_version", "run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        con = duck.connect(tmp)
        duck.register(con, store, "listing", listing, "ipc", schema.LISTING)
        duck.register(con, store, "prior_written", prior, "parquet", schema.embeddings_schema(1), cols)
        duck.register(con, store, "prior_errors", prior_errors, "parquet", schema.ERRORS,
                  cols + ["status", "judged_under"])
        reader = con.execute(sql_text("pipeline_match"), {"shard_size": _shard_size(store, run_id)}) \
            .to_arrow_reader(65536)
        _write_by_chunk(store, run_id, "known", reader, chunks)
        con.close()
    return {"prior_files": len(prior) + len(prior_errors)}


def _shard_size(store: Store, run_id: str) -> int:
    return int(store.read_json(work(run_id, "listing", "_done.json"))["shard_size"])


def _write_by_chunk(store: Store, run_id: str, folder: str, reader: pa.RecordBatchReader, chunks: int) -> None:
    """Split a stream ordered by `chunk` into one Arrow file per chunk (empty chunks too)."""
    pending: list[pa.RecordBatch] = []
    current = 0

    def flush(upto: int) -> None:
        nonlocal pending, current
        while current < upto:
            table = pa.Table.from_batches(pending) if pending else None
            out = schema.conform(table.drop_columns(["chunk"]), _KNOWN_LISTING) if table else _KNOWN_LISTING.empty_table()
            store.write_ipc(work(run_id, folder, chunk_name(current, "arrow")), out)
            pending, current = [], current + 1

    for batch in reader:
        chunk_ids = batch.column(batch.schema.get_field_index("chunk")).to_numpy()
        for cid in np.unique(chunk_ids):
            part = batch.filter(pa.array(chunk_ids == cid))
            if cid != current:
                flush(int(cid))
            pending.append(part)
    flush(chunks)


_KNOWN_LISTING = pa.schema(list(schema.LISTING) + list(schema.KNOWN))


# ---- hash ------------------------------------------------------------------------------------------------------

def hash_task(root: str, run_id: str, task: int, cfg: Config, matched: bool, version: str) -> dict:
    """Identify every path of listing chunk `task`: errors -> errors/run=R/part-read-N.parquet, contents ->
    _work/R/hashed/N.arrow, then the marker hashed/N.json with the counts."""
    store = Store(root)
    source = work(run_id, "known" if matched else "listing", chunk_name(task, "arrow"))
    rows = store.read_ipc(source).to_pylist()
    result = hash_rows(rows, cfg.input, RunTag(version, run_id))
    _write_errors(store, run_id, "read", task, result.errors)
    store.write_ipc(work(run_id, "hashed", chunk_name(task, "arrow")), schema.rows_table(result.hashed, schema.HASHED))
    counts = result.counts.as_dict()
    store.write_json(work(run_id, "hashed", chunk_name(task, "json")), counts)
    return counts


# ---- plan ------------------------------------------------------------------------------------------------------

def plan_task(root: str, run_id: str, target_table: str, version: str, hashed_chunks: int, shard_size: int) -> dict:
    """Decide, for every hashed path of the run, deterministically: skip (unchanged, content already written
    under `version`), duplicate (content written before, or another path of this run with the same content
    comes first by path), or write (the representative: smallest path, then listing order). Writes the
    duplicates' error rows and plan/N.arrow files of `shard_size` contents, then plan/_done.json."""
    store = Store(root)
    for old in store.listdir(work(run_id, "plan")):
        store.remove(work(run_id, "plan", old))
    for old in store.find(f"errors/run={run_id}", ".parquet"):
        if "/part-dup-" in old:
            store.remove(old)
    done_files = catalog.table_files(store, target_table, version, exclude_run=run_id)
    hashed = [work(run_id, "hashed", chunk_name(i, "arrow")) for i in range(hashed_chunks)]
    counts = Counts()
    tag = RunTag(version, run_id)
    planned, dups, n_plan, n_dup, n_planned = [], [], 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        con = duck.connect(tmp)
        duck.register(con, store, "hashed", hashed, "ipc", schema.HASHED)
        duck.register(con, store, "done", done_files, "parquet", schema.embeddings_schema(1), ["sha256", "path"])
        reader = con.execute(sql_text("pipeline_plan"), {"version": version}).to_arrow_reader(65536)
        for batch in reader:
            for row in batch.to_pylist():
                action = row.pop("action")
                if action == "skip":
                    counts.skipped_known += 1
                elif action == "write":
                    planned.append(row)
                    n_planned += 1
                    if len(planned) == shard_size:
                        store.write_ipc(work(run_id, "plan", chunk_name(n_plan, "arrow")),
                                        schema.rows_table(planned, schema.PLANNED))
                        planned, n_plan = [], n_plan + 1
                else:
                    dups.append(error_row(row, schema.STATUS_DUPLICATE, f"same content as {row['same_as']}"
                                          + (" (written by an earlier run)" if action == "known" else ""), tag))
                    counts.duplicates += 1
                    if len(dups) == 100_000:
                        _write_errors(store, run_id, "dup", n_dup, dups)
                        dups, n_dup = [], n_dup + 1
        con.close()
    if planned:
        store.write_ipc(work(run_id, "plan", chunk_name(n_plan, "arrow")), schema.rows_table(planned, schema.PLANNED))
        n_plan += 1
    if dups:
        _write_errors(store, run_id, "dup", n_dup, dups)
    result = {**counts.as_dict(), "chunks": n_plan, "planned": n_planned}
    store.write_json(work(run_id, "plan", "_done.json"), result)
    return result


# ---- reconcile: a resumed run against what others committed meanwhile -----------------------------------------

def reconcile_task(root: str, run_id: str, table: str, version: str) -> dict:
    """A resumed run's rows whose content another run committed under `version` while this one was unfinished
    (parked, killed): dropped from its parts and recorded as `duplicate` error rows, so no sha256 appears twice
    in a version. The rows to drop are decided once (reconcile/drop.arrow) before any part is rewritten, so a
    kill anywhere in here redoes exactly the same work. Returns {"dropped": n}, also written as the marker."""
    store = Store(root)
    own = store.find(f"{table}/{catalog.VERSION_KEYS[table]}={version}/run={run_id}", ".parquet")
    decided = work(run_id, "reconcile", "drop.arrow")
    if store.exists(decided):
        drop = store.read_ipc(decided)
    else:
        done = catalog.table_files(store, table, version, exclude_run=run_id)
        drop = pa.table({"sha256": pa.array([], pa.string())})
        if own and done:
            head = pads.dataset([store.path(own[0])], format="parquet", filesystem=store.arrow_filesystem()).schema
            columns = [c for c in head.names if c != "embedding" and not c.startswith("view_")]
            with tempfile.TemporaryDirectory() as tmp:
                con = duck.connect(tmp)
                duck.register(con, store, "own", own, "parquet", head, columns)
                duck.register(con, store, "done", done, "parquet", schema.embeddings_schema(1),
                          ["sha256", "path", "run_id"])
                drop = con.execute(sql_text("pipeline_reconcile")).to_arrow_table()
                con.close()
        store.write_ipc(decided, drop)
    rows = drop.to_pylist()
    tag = RunTag(version, run_id)
    _write_errors(store, run_id, "reconcile", 0, [
        error_row(r, schema.STATUS_DUPLICATE, f"same content as {r['same_as']} (committed by run {r['by_run']} "
                  "while this run was unfinished)", tag) for r in rows])
    if rows:
        shas = pa.array(sorted({r["sha256"] for r in rows}), pa.string())
        for rel in own:
            part = store.read_parquet(rel)
            kept = part.filter(pc.invert(pc.is_in(part.column("sha256"), value_set=shas)))
            if kept.num_rows != part.num_rows:
                store.write_parquet(rel, kept)
    result = {"dropped": len(rows)}
    store.write_json(work(run_id, "reconcile", "_done.json"), result)
    return result


# ---- write -----------------------------------------------------------------------------------------------------

def load_views(root: str, run_id: str, task: int, target: Target,
               evidence: Mapping[str, np.ndarray] | None = None) -> tuple[list[dict], dict[str, np.ndarray], list[dict], int]:
    """The CPU half of writing plan chunk `task`: (rows, batched views, error rows, bytes read). With
    target.evidence, the rows' evidence is weighed by `evidence` (the caller's model's weights) or, when not given
    (a CPU task beside GPU actors), by the checkpoint's, loaded once per process."""
    store = Store(root)
    rows = store.read_ipc(work(run_id, "plan", chunk_name(task, "arrow"))).to_pylist()
    if target.evidence and evidence is None:
        evidence = checkpoint.cached_evidence_weights(target.model_uri)
    result = read_views(rows, target.config, RunTag(target.version, run_id), evidence if target.evidence else None)
    return result.rows, views.stack(result.views, target.config), result.errors, result.bytes_read


def store_written(root: str, run_id: str, task: int, target: Target, rows: list[dict], batch: dict[str, np.ndarray],
                  errors: list[dict], bytes_read: int, embed=None, words=None) -> dict:
    """The second half: embed (embeddings; with `words`, the embedder's exact words of each row too) or encode
    (samples) the views, write errors, then the table part, then the marker written/N.json. Returns the marker's
    counts and, beside them (`cpu`, never in the marker: a redone task measures again), this thread's CPU seconds
    embedding and writing."""
    started = time.thread_time()
    store = Store(root)
    tag = RunTag(target.version, run_id)
    if target.table == "embeddings":
        vectors, failed = embed_batch(batch, embed, target.batch_size)
        errors = errors + [error_row(rows[i], schema.STATUS_EMBED_ERROR, reason, tag) for i, reason in sorted(failed.items())]
        kept = [i for i in range(len(rows)) if i not in failed]
        rows = [rows[i] for i in kept]
        flat = pa.array(vectors.reshape(-1).astype(np.float32), pa.float32())
        columns = {"embedding": pa.FixedSizeListArray.from_arrays(flat, target.dim)}
        exact_words = words({k: v[kept] for k, v in batch.items()}, vectors, target.config.embed.exact_words) \
            if words is not None and rows else None
        if exact_words is not None:
            columns["words"] = exact.to_arrow(exact_words, schema.WORDS)
    else:
        columns = {f"view_{name}": pa.array([np.ascontiguousarray(a).tobytes() for a in arrays], pa.binary())
                   for name, arrays in batch.items()}
    embedded = time.thread_time()
    _write_errors(store, run_id, "write", task, errors)
    store.write_parquet(written_part(target.table, target.version, run_id, task),
                        written_table(rows, tag, columns, target.schema()))
    counts = {"written": len(rows), "failed": len(errors), "bytes_read": bytes_read}
    store.write_json(work(run_id, "written", chunk_name(task, "json")), counts)
    return {**counts, "cpu": {"embed": embedded - started, "write": time.thread_time() - embedded}}


def write_task(root: str, run_id: str, task: int, target: Target, threads: int = 1) -> dict:
    """Both halves in one process (the CPU path: every core reads, computes views and embeds its own chunks)."""
    embed = words = evidence = None
    if target.table == "embeddings":
        from embedlib.model.embedder import cached_embedder

        embedder = cached_embedder(target.model_uri, threads, device="cpu")  # the CPU path, even beside a GPU
        embed, words, evidence = embedder.embed_views, embedder.words, embedder.evidence_weights
    started = time.thread_time()
    loaded = load_views(root, run_id, task, target, evidence)
    views_cpu = time.thread_time() - started
    out = store_written(root, run_id, task, target, *loaded, embed=embed, words=words)
    return {**out, "cpu": {"views": views_cpu, **out["cpu"]}}


def read_marker(root: str, run_id: str, folder: str, task: int) -> dict | None:
    return Store(root).read_json(work(run_id, folder, chunk_name(task, "json")))


def marker_counts(store: Store, run_id: str, folder: str) -> list[dict]:
    return [json.loads(store.read_bytes(work(run_id, folder, n))) for n in store.listdir(work(run_id, folder))
            if n.endswith(".json") and not n.startswith("_")]
