"""Compaction and retention of an output root: a year of nightly runs read as a few large files.

  compact(root, target_mb, keep_model_versions, grace_seconds) -> CompactSummary   (python -m jobs.compact)

Under the root's lease, as one commit (catalog.write_commit, kind "compact"):
  - each group of committed files (embeddings and neighbours per model version, errors, runs) holding two or
    more files under half the target size has those files rewritten, row for row, into files of about the
    target size under <table>[/model_version=V]/commit=W/. The record supersedes the files it replaces and
    lists, for each new file, the runs whose rows it holds; for the runs table it lists the runs whose rows
    its file now holds, so that file stays their commit once runs/<R>.parquet is gone;
  - with keep_model_versions=N, the embeddings and neighbours of every model version but the N newest (by
    their latest committed run) are superseded too. Errors and runs are never dropped.
Readers switch from the old files to the new ones with that one record: never both, never neither.
Superseded files are deleted by a later compaction once their record is older than the grace period, so a
query that listed them just before the switch can still read them; so are the files of commits that never
happened (a writer killed before its record) once older than the grace period; records whose files are all
gone go last. Parts of unfinished or parked runs are never touched.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from embedlib.config import COMPACT_GRACE_SECONDS as GRACE_SECONDS
from embedlib.config import COMPACT_ROW_GROUP_MB as ROW_GROUP_MB
from embedlib.config import COMPACT_TARGET_MB as TARGET_MB
from embedlib.errors import UserError
from embedlib.root import catalog
from embedlib.root.catalog import Snapshot, owner_of, version_of
from embedlib.root.lease import RootLock
from embedlib.root.store import Store

GROUPS = ("embeddings", "neighbors", "errors", "runs")  # samples (training corpora) are left as they are


class CompactError(UserError, ValueError):
    """Bad compaction settings or a root that is not an output root."""


@dataclass
class CompactSummary:
    root: str
    commit: str | None  # the record written, None when there was nothing to do
    files_before: dict[str, int]  # table -> committed files before
    files_after: dict[str, int]
    rewritten: int  # files superseded by rewritten ones
    written: int  # files written
    dropped_versions: list[str]
    deleted: int  # superseded or orphaned files deleted (grace period over)
    seconds: float
    groups: list[str] = field(default_factory=list)

    def describe(self) -> str:
        before, after = sum(self.files_before.values()), sum(self.files_after.values())
        what = (f"{self.rewritten} files rewritten into {self.written} ({', '.join(self.groups)})" if self.rewritten
                else "nothing to rewrite")
        drop = f"; model versions dropped: {', '.join(self.dropped_versions)}" if self.dropped_versions else ""
        commit = f" (commit {self.commit})" if self.commit else ""
        return (f"compact: {what}{drop}; committed files {before} -> {after}{commit}; {self.deleted} superseded or "
                f"orphaned files deleted after the grace period; {self.seconds:.1f} s -> {self.root}")


def compact(root: str, target_mb: float = TARGET_MB, keep_model_versions: int | None = None,
            grace_seconds: float = GRACE_SECONDS) -> CompactSummary:
    """Compact `root` (see the module docstring); returns what was done."""
    if not target_mb > 0:
        raise CompactError(f"--target-mb must be positive (got {target_mb})")
    if keep_model_versions is not None and keep_model_versions < 1:
        raise CompactError(f"--keep-model-versions must be at least 1 (got {keep_model_versions})")
    if not grace_seconds >= 0:
        raise CompactError(f"the grace period must be >= 0 (got {grace_seconds})")
    started = time.perf_counter()
    store = Store(root)
    if not store.exists("runs"):
        raise CompactError(f"{store.root} holds no committed run (no runs/): nothing to compact")
    commit_id = catalog.new_run_id()
    with RootLock(store, commit_id) as lock:
        deleted = vacuum(store, catalog.snapshot(store), grace_seconds, holder=commit_id)
        snap = catalog.snapshot(store)
        before = {t: len(snap.table_files(t)) for t in GROUPS}
        removed, dropped = retention(store, snap, keep_model_versions)
        added: dict[str, dict] = {}
        groups = []
        for table, version, files in _groups(snap, dropped):
            small = [f for f in files if store.size(f) < target_mb * 2**20 / 2]
            if len(small) < 2:
                continue
            folder = f"{table}/{catalog.VERSION_KEYS[table]}={version}" if version else table
            added.update(rewrite(store, snap, small, f"{folder}/commit={commit_id}", int(target_mb * 2**20)))
            removed += small
            groups.append(f"{table} {version}" if version else table)
            lock.check()
        if not removed:
            after = before
            commit = None
        else:
            lock.check(commit=True)
            catalog.kill_point("compact-commit")
            runs = sorted({r for rel, info in added.items() if rel.startswith("runs/") for r in info["runs"]})
            catalog.write_commit(store, commit_id, "compact", added, removed, runs)
            commit = commit_id
            after = {t: len(v) for t, v in catalog.snapshot(store, GROUPS).files.items()}
    rewritten = len([f for f in removed if version_of(f) not in dropped])
    return CompactSummary(root=store.root, commit=commit, files_before=before, files_after=after,
                          rewritten=rewritten, written=len(added), dropped_versions=dropped, deleted=deleted,
                          seconds=time.perf_counter() - started, groups=groups)


def _groups(snap: Snapshot, dropped: list[str]) -> list[tuple[str, str | None, list[str]]]:
    """(table, version or None, committed files) for every group compaction may rewrite."""
    out = []
    for table in GROUPS:
        files = snap.table_files(table)
        if table in catalog.VERSION_KEYS:
            for version in sorted({version_of(f) for f in files} - {None} - set(dropped)):
                out.append((table, version, [f for f in files if version_of(f) == version]))
        else:
            out.append((table, None, files))
    return out


def retention(store: Store, snap: Snapshot, keep: int | None) -> tuple[list[str], list[str]]:
    """(files to supersede, model versions dropped): the embeddings and neighbours of every version but the
    `keep` newest, newest by their latest committed run (versions without a runs row count as oldest)."""
    if keep is None:
        return [], []
    versions = {version_of(f) for f in snap.table_files("embeddings")} - {None}
    latest: dict[str, dt.datetime] = {}
    runs = catalog.read_runs(store, snap)
    for row in runs.select(["job", "model_version", "finished"]).to_pylist():
        if row["job"] == "embed" and row["model_version"] in versions:
            latest[row["model_version"]] = max(latest.get(row["model_version"], row["finished"]), row["finished"])
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    ranked = sorted(versions, key=lambda v: (latest.get(v, oldest), v), reverse=True)
    dropped = sorted(ranked[keep:])
    files = [f for t in ("embeddings", "neighbors") for f in snap.table_files(t) if version_of(f) in dropped]
    return files, dropped


def rewrite(store: Store, snap: Snapshot, files: list[str], folder: str, target_bytes: int) -> dict[str, dict]:
    """Copy the rows of `files` (in file order) into folder/part-NNNNNN.parquet of about target_bytes each;
    returns the record's `added` entries. Streams batches: memory stays at about one output file."""
    fs = store.arrow_filesystem()
    schemas = [pads.dataset([store.path(f)], format="parquet", filesystem=fs).schema for f in files]
    unified = pa.unify_schemas(schemas, promote_options="permissive").with_metadata(schemas[-1].metadata)
    data = pads.dataset([store.path(f) for f in files], format="parquet", filesystem=fs, schema=unified)
    total_bytes, total_rows = sum(store.size(f) for f in files), max(1, data.count_rows())
    n_files = max(1, round(total_bytes / target_bytes))  # files of equal rows, each near the target size
    rows_per_file = -(-total_rows // n_files)
    rows_per_group = max(1024, rows_per_file * ROW_GROUP_MB * 2**20 // max(1, total_bytes // n_files))
    added: dict[str, dict] = {}
    pending: list[pa.RecordBatch] = []
    count = 0

    def flush(n_rows: int) -> None:
        nonlocal pending, count
        table = pa.Table.from_batches(pending, schema=unified)
        out, rest = table.slice(0, n_rows), table.slice(n_rows)
        rel = f"{folder}/part-{len(added):06d}.parquet"
        store.write_parquet(rel, out, row_group_size=rows_per_group)
        runs = sorted(pc.unique(out.column("run_id")).to_pylist()) if "run_id" in out.column_names else []
        added[rel] = {"rows": out.num_rows, "runs": runs}
        pending, count = rest.to_batches(), rest.num_rows

    for batch in data.to_batches(batch_size=65536):
        pending.append(batch)
        count += batch.num_rows
        while count >= rows_per_file:
            flush(rows_per_file)
    if count:
        flush(count)
    return added


def vacuum(store: Store, snap: Snapshot, grace_seconds: float, holder: str) -> int:
    """Delete what no reader can see any more and whose grace period is over: the files superseded by records
    older than it, and the files of commits that never happened (older than it, not the lease holder's);
    then the records whose files are all gone. Returns the number of Parquet files deleted."""
    now = time.time()
    present = set(snap.present)
    gone: list[str] = []
    for record in snap.records.values():
        if now - _created(record) >= grace_seconds:
            gone += [rel for rel in record.get("removed", []) if rel in present]
    for rel in sorted(present):
        kind, name = owner_of(rel) or ("", "")
        orphan = kind == "commit" and name not in snap.records and name != holder
        if orphan and now - store.modified(rel) >= grace_seconds:
            gone.append(rel)
    for rel in gone:
        store.remove(rel)
        present.discard(rel)
    own_runs = {catalog.run_of(f) for f in present
                if f.startswith("runs/") and owner_of(f) == ("run", catalog.run_of(f))}
    records = dict(snap.records)
    for commit_id, record in sorted(snap.records.items()):
        files = list(record.get("added", {})) + list(record.get("removed", []))
        others = own_runs | {r for c, rec in records.items() if c != commit_id for r in rec.get("runs", [])}
        if not any(rel in present for rel in files) and set(record.get("runs", [])) <= others:
            store.remove(catalog.commit_record(commit_id))
            del records[commit_id]
    return len(gone)


def _created(record: dict) -> float:
    try:
        return dt.datetime.fromisoformat(record["created"]).timestamp()
    except (KeyError, ValueError):
        return time.time()  # unreadable: never old enough
