"""The run catalog of an output root: where each table's files go, which runs exist, who runs now.

  ROOT/<table>/<key>=<version>/run=<R>/part-NNNNNN.parquet  embeddings (key model_version) or samples (views_version)
  ROOT/errors/run=<R>/part-<stage>-NNNNNN.parquet          stage: read (listing + hashing), dup (plan), write
  ROOT/runs/<R>.parquet                                    one summary row, written when run R finishes
  ROOT/_work/<R>/run.json                                  an unfinished run: what it is, for resuming it
  ROOT/_work/<R>/{listing,known,hashed,plan}/NNNNNN.arrow  staging between stages (never *.parquet)
  ROOT/_work/<R>/{hashed,written}/NNNNNN.json              per-task completion markers with counts
  ROOT/_lock.json                                          the run in progress (one at a time per root)

A run finishes in order: listing -> match (known paths) -> hash -> plan -> write -> runs row. Every task's
output has a deterministic name, so a task redone after a kill overwrites its own files: nothing is
duplicated, and nothing is lost, because a run is only finished when its runs row exists.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from embedlib import __version__, schema
from embedlib.errors import UserError
from embedlib.pipeline.store import WORK, Store

LOCK = "_lock.json"
VERSION_KEYS = {"embeddings": "model_version", "samples": "views_version"}


class RunInProgress(UserError, RuntimeError):
    """Another run holds the root's lock."""

    exit_code = 75  # EX_TEMPFAIL: a scheduler may simply try again later


class UnfinishedRunMismatch(UserError, RuntimeError):
    """An interrupted run of another job waits in the root: finishing ours first would mix them."""


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
    return rel.rsplit("/", 1)[-1][: -len(".parquet")] if rel.startswith("runs/") else None


def table_files(store: Store, table: str, version: str | None = None, exclude_run: str | None = None) -> list[str]:
    """Relative paths of a table's Parquet files (of one version when given), without those of `exclude_run`."""
    folder = table if version is None or table == "errors" else f"{table}/{VERSION_KEYS[table]}={version}"
    files = store.find(folder, ".parquet")
    return files if exclude_run is None else [p for p in files if run_of(p) != exclude_run]


# ---- runs --------------------------------------------------------------------------------------------------

def finished_runs(store: Store) -> list[str]:
    return [name[: -len(".parquet")] for name in store.listdir("runs") if name.endswith(".parquet")]


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


def read_runs(store: Store) -> pa.Table:
    tables = [store.read_parquet(f"runs/{r}.parquet") for r in finished_runs(store)]
    return pa.concat_tables(tables) if tables else schema.RUNS.empty_table()


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


# ---- the lock ----------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RootLock:
    """One run at a time per root. Locally an flock (the kernel drops it when the process dies, even by
    SIGKILL); on object stores a JSON lease with a heartbeat, taken over when its holder is gone (same host,
    dead pid) or silent for `stale_after` seconds."""

    store: Store
    run_id: str
    stale_after: float = 600.0
    heartbeat_every: float = 30.0
    _fh: Any = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def _info(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def acquire(self) -> None:
        if self.store.local:
            import fcntl

            os.makedirs(self.store.base, exist_ok=True)
            fh = open(self.store.path(LOCK), "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise RunInProgress(f"another run is writing to {self.store.root} ({holder}); try again later")
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(self._info()))
            fh.flush()
            self._fh = fh
            return
        holder = self.store.read_json(LOCK)
        if holder and not self._stale(holder):
            raise RunInProgress(f"another run is writing to {self.store.root} (run {holder.get('run_id')} on "
                                f"{holder.get('host')}, pid {holder.get('pid')}, alive "
                                f"{time.time() - holder.get('heartbeat', 0):.0f} s ago); try again later")
        self.store.write_json(LOCK, self._info())
        time.sleep(1.0)  # two starters at once: the later write wins, the other sees it and backs off
        if (self.store.read_json(LOCK) or {}).get("run_id") != self.run_id:
            raise RunInProgress(f"another run took the lock of {self.store.root} at the same moment; try again later")
        threading.Thread(target=self._beat, daemon=True).start()

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_after

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            self.store.write_json(LOCK, self._info())

    def release(self) -> None:
        self._stop.set()
        if self._fh is not None:
            self._fh.close()  # the flock goes with the descriptor; the file stays, harmlessly
            self._fh = None
        elif (self.store.read_json(LOCK) or {}).get("run_id") == self.run_id:
            self.store.remove(LOCK)
