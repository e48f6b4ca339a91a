"""The run catalog of an output root: where each table's files go, which of them readers may see, who runs now.

  ROOT/<table>/<key>=<version>/run=<R>/part-NNNNNN.parquet  embeddings (key model_version) or samples (views_version)
  ROOT/errors/run=<R>/part-<stage>-NNNNNN.parquet          stage: read (listing + hashing), dup (plan), write
  ROOT/runs/<R>.parquet                                    one summary row, written when run R finishes: its commit
  ROOT/neighbors/model_version=<V>/run=<R>/commit=<W>/...  jobs.neighbors' parts, committed by commits/<W>.json
  ROOT/<table>/.../commit=<W>/part-NNNNNN.parquet          jobs.compact's rewritten parts, committed by commits/<W>.json
  ROOT/commits/<W>.json                                    a commit record: files it adds, files it supersedes
  ROOT/_work/<R>/run.json                                  an unfinished run: what it is, for resuming it
  ROOT/_work/<R>/{listing,known,hashed,plan}/NNNNNN.arrow  staging between stages (never *.parquet)
  ROOT/_work/<R>/{hashed,written}/NNNNNN.json              per-task completion markers with counts
  ROOT/_lock.json                                          the run in progress (one at a time per root)

A run finishes in order: listing -> match (known paths) -> hash -> plan -> write -> runs row. Every task's
output has a deterministic name, so a task redone after a kill overwrites its own files: nothing is
duplicated, and nothing is lost, because a run is only finished when its runs row exists.

What readers see (`snapshot`, the one definition every reader uses: the pipeline's match and plan, the query
views, jobs.neighbors, compaction): a Parquet file is visible when its owner is committed and no committed
record supersedes it. The owner is the innermost `commit=<W>` folder (committed when commits/<W>.json exists),
else the `run=<R>` folder or runs/<R>.parquet (committed when runs/<R>.parquet exists or a record lists R
among the runs whose rows it holds). A snapshot reads the records first, then runs/, then the tables: a
file written before its commit is always listed when its commit is, so a reader sees a whole commit or none.
Superseded files stay until a later job deletes them after a grace period (embedlib/root/compact.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from embedlib import __version__, schema
from embedlib.root.store import WORK, Store

COMMITS = "commits"
VERSION_KEYS = {"embeddings": "model_version", "samples": "views_version", "neighbors": "model_version"}
TABLES = ("embeddings", "samples", "errors", "runs", "neighbors")


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable by start time to the microsecond, unique: 20261125T181500.123456Z-1a2b3c. Runs of a root are
    serialized by its lock, so later runs sort after earlier ones."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond:06d}Z-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class JobIdentity:
    """What a run is: a resumed run must be the same job over the same input with the same settings."""

    job: str  # "embed" | "rasterize"
    table: str  # "embeddings" | "samples"
    version: str  # model version (embeddings) or views version (samples)
    input: str
    glob: bool
    settings: dict[str, Any]  # the input settings that change which rows are written

    def same_as(self, other: dict) -> bool:
        return {k: other.get(k) for k in asdict(self)} == json.loads(json.dumps(asdict(self)))


# ---- names ------------------------------------------------------------------------------------------------

def written_part(table: str, version: str, run_id: str, task: int) -> str:
    return f"{table}/{VERSION_KEYS[table]}={version}/run={run_id}/part-{task:06d}.parquet"


def errors_part(run_id: str, stage: str, task: int) -> str:
    return f"errors/run={run_id}/part-{stage}-{task:06d}.parquet"


def runs_part(run_id: str) -> str:
    return f"runs/{run_id}.parquet"


def work(run_id: str, *parts: str) -> str:
    return "/".join([WORK, run_id, *parts])


def chunk_name(task: int, suffix: str) -> str:
    return f"{task:06d}.{suffix}"


def run_of(rel: str) -> str | None:
    """The run id in a table file's relative path (`.../run=<R>/...` or `runs/<R>.parquet`)."""
    for part in rel.split("/"):
        if part.startswith("run="):
            return part[4:]
    parts = rel.split("/")
    return parts[1][: -len(".parquet")] if len(parts) == 2 and parts[0] == "runs" else None


def owner_of(rel: str) -> tuple[str, str] | None:
    """Who commits a table file: ("commit", W) for the innermost `commit=<W>` folder, else ("run", R)."""
    folders = rel.split("/")[:-1]
    for part in reversed(folders):
        if part.startswith("commit="):
            return "commit", part[len("commit="):]
    run = run_of(rel)
    return ("run", run) if run else None


def version_of(rel: str) -> str | None:
    """The `<key>=<version>` folder value of a versioned table's file (None for errors and runs)."""
    table, _, rest = rel.partition("/")
    key = VERSION_KEYS.get(table)
    head = rest.split("/", 1)[0]
    return head[len(key) + 1:] if key and head.startswith(key + "=") else None


def commit_record(commit_id: str) -> str:
    return f"{COMMITS}/{commit_id}.json"


def _is_data_file(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return base.endswith(".parquet") and not base.startswith((".", "_"))


@dataclass(frozen=True)
class Snapshot:
    """The committed state of a root at one moment (see the module docstring). Paths are relative to the root."""

    records: dict[str, dict]  # commit id -> its record
    runs: frozenset[str]  # committed run ids
    files: dict[str, tuple[str, ...]]  # table -> visible Parquet files, sorted
    present: frozenset[str]  # every Parquet file listed, visible or not (superseded, uncommitted)

    def table_files(self, table: str, version: str | None = None, exclude_run: str | None = None) -> list[str]:
        """Visible files of `table` (of one version when given; errors and runs have none), without the files
        of run `exclude_run` (a run never sees its own, uncommitted, parts as known)."""
        files = self.files.get(table, ())
        if version is not None and table in VERSION_KEYS:
            files = tuple(f for f in files if version_of(f) == version)
        return [f for f in files if exclude_run is None or owner_of(f) != ("run", exclude_run)]

    def runs_in(self, rel: str) -> list[str]:
        """The run ids whose rows a visible file holds (a run's own file: that run; a commit's: its record)."""
        kind, name = owner_of(rel) or ("", "")
        if kind == "run":
            return [name]
        return list(self.records.get(name, {}).get("added", {}).get(rel, {}).get("runs", []))


def read_records(store: Store) -> dict[str, dict]:
    """Every commit record of the root, by commit id."""
    out = {}
    for name in store.listdir(COMMITS):
        if name.endswith(".json") and not name.startswith((".", "_")):
            record = store.read_json(f"{COMMITS}/{name}")
            if record is not None:
                out[name[: -len(".json")]] = record
    return out


def snapshot(store: Store, tables: tuple[str, ...] = TABLES) -> Snapshot:
    """What readers may see now: records first, then runs/, then the tables (the order makes it consistent)."""
    records = read_records(store)
    run_files = [f for f in store.find("runs", ".parquet") if _is_data_file(f)]
    runs = {run_of(f) for f in run_files if owner_of(f) == ("run", run_of(f))}
    runs |= {r for rec in records.values() for r in rec.get("runs", [])}
    superseded = {rel for rec in records.values() for rel in rec.get("removed", [])}
    listed = {"runs": run_files}
    for table in tables:
        if table != "runs":
            listed[table] = [f for f in store.find(table, ".parquet") if _is_data_file(f)]

    def visible(rel: str) -> bool:
        owner = owner_of(rel)
        if owner is None or rel in superseded:
            return False
        kind, name = owner
        return name in records if kind == "commit" else name in runs

    files = {t: tuple(sorted(f for f in listed[t] if visible(f))) for t in tables if t in listed}
    present = frozenset(f for fs in listed.values() for f in fs)
    return Snapshot(records=records, runs=frozenset(r for r in runs if r), files=files, present=present)


def kill_point(point: str) -> None:
    """Tests kill a real job at an exact moment: EMBEDLIB_TEST_KILL_AT=<point> SIGKILLs this process there
    (`commit`: a run right before its runs row; `neighbors-commit`, `compact-commit`: right before a record)."""
    if os.environ.get("EMBEDLIB_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def write_commit(store: Store, commit_id: str, kind: str, added: dict[str, dict], removed: list[str],
                 runs: list[str] | tuple[str, ...] = ()) -> dict:
    """Publish a commit: one record, written after every file it adds (so a reader sees all of them or none).
    added: relative path -> {"rows": n, "runs": [run ids whose rows it holds]}; removed: the files it supersedes
    (deleted later, after a grace period); runs: the run ids whose runs rows its added runs files hold."""
    record = {"commit": commit_id, "kind": kind, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
              "added": added, "removed": sorted(removed), "runs": sorted(runs)}
    store.write_json(commit_record(commit_id), record)
    return record


def table_files(store: Store, table: str, version: str | None = None, exclude_run: str | None = None) -> list[str]:
    """Relative paths of a table's committed Parquet files (of one version when given), without those of
    `exclude_run`: the files of an unfinished, killed or parked run are never counted."""
    return snapshot(store, (table,)).table_files(table, version, exclude_run)


# ---- runs --------------------------------------------------------------------------------------------------

def finished_runs(store: Store) -> list[str]:
    """The committed runs of the root, sorted."""
    return sorted(snapshot(store, ("runs",)).runs)


def unfinished_runs(store: Store) -> list[tuple[str, dict]]:
    """(run id, its run.json) of every run started in this root and not finished, oldest first."""
    done = set(finished_runs(store))
    out = []
    for name in store.listdir(WORK):
        if name == "tmp" or name in done:
            continue
        info = store.read_json(work(name, "run.json"))
        if info is not None:
            out.append((name, info))
    return sorted(out)


def read_runs(store: Store, snap: Snapshot | None = None) -> pa.Table:
    """The runs table: one row per committed run, sorted by run id."""
    snap = snap or snapshot(store, ("runs",))
    tables = [store.read_parquet(f) for f in snap.table_files("runs")]
    if not tables:
        return schema.RUNS.empty_table()
    return pa.concat_tables(tables, promote_options="permissive").sort_by("run_id")


def resume_command(info: dict, root: str) -> str:
    """The command that resumes the run described by `info` (its run.json): the one recorded when it started,
    else one rebuilt from its identity (job, input, settings; the model for embed runs)."""
    if info.get("command"):
        return info["command"]
    ident = info["identity"]
    args = ["python", "-m", f"jobs.{ident['job']}"]
    if ident["job"] == "embed":
        args += ["--model", str(info.get("config", {}).get("model", "MODEL"))]
    args += ["--input", ident["input"], *(["--glob"] if ident.get("glob") else []), "--output", root]
    from embedlib.config import InputConfig

    default = InputConfig()
    for key, value in sorted(ident.get("settings", {}).items()):
        if getattr(default, key, value) != value:
            args += ["--set", f"input.{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return shlex.join(args)


def runs_row(run_id: str, info: dict, counts: dict[str, int], finished: dt.datetime) -> pa.Table:
    started = dt.datetime.fromisoformat(info["started"])
    row = {
        "run_id": run_id, "job": info["identity"]["job"], "model_version": info["identity"]["version"],
        "raster": json.dumps(info.get("raster", {}), sort_keys=True), "input": info["identity"]["input"],
        "started": started, "finished": finished,
        "files_seen": counts.get("files_seen", 0), "skipped_known": counts.get("skipped_known", 0),
        "embedded": counts.get("written", 0), "duplicates": counts.get("duplicates", 0),
        "failed": counts.get("failed", 0), "bytes_read": counts.get("bytes_read", 0),
        "seconds": (finished - started).total_seconds(), "embedlib_version": __version__,
        "config": json.dumps(info.get("config", {}), sort_keys=True),
    }
    return schema.rows_table([row], schema.RUNS)
