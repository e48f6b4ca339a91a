"""The driver of a files job (embed, or rasterize for training): it coordinates, workers write.

One run = listing -> match (what earlier runs knew) -> hash -> plan -> write -> runs row. The driver lists
the input into chunk files (memory O(chunk)), hands tasks to an executor (in-process, or Ray through
embedlib/ray_io/), and keeps only counts: its memory does not grow with the number of files.

Reruns: the root's lock makes runs one at a time (a second one refuses, exit 75). An interrupted run of the
same job is finished first (its tasks with completion markers are kept, the others redone under the same
names), then a new run picks up whatever the input gained meanwhile. An interrupted run of another job or input
is parked, not in the way: it resumes when its own command runs again, reconciled with what was committed
meanwhile.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Protocol

from tqdm.auto import tqdm

from embedlib.files import inputs
from embedlib.errors import UserError
from embedlib.pipeline import tasks
from embedlib.root import catalog
from embedlib.root.catalog import JobIdentity, chunk_name, work
from embedlib.root.lease import RootLock
from embedlib.root.lease import announce
from embedlib.pipeline.stages import Counts
from embedlib.root.store import WORK, Store, check_root
from embedlib.pipeline.tasks import Target


class Executor(Protocol):
    """Where tasks run. Results come back in completion order."""

    def run_one(self, fn: Callable, *args) -> dict: ...

    def map(self, fn: Callable, argsets: list[tuple]) -> Iterator[dict]: ...

    def write(self, root: str, run_id: str, todo: list[int], target: Target) -> Iterator[dict]: ...


class LocalExecutor:
    """Everything in this process, one task after another (tests, debugging, tiny inputs)."""

    def run_one(self, fn: Callable, *args) -> dict:
        return fn(*args)

    def map(self, fn: Callable, argsets: list[tuple]) -> Iterator[dict]:
        return (fn(*args) for args in argsets)

    def write(self, root: str, run_id: str, todo: list[int], target: Target) -> Iterator[dict]:
        return (tasks.write_task(root, run_id, t, target, threads=None) for t in todo)


@dataclass
class RunSummary:
    run_id: str
    root: str
    resumed: bool
    counts: dict[str, int]
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)

    def describe(self, what: str = "embedded") -> str:
        c = self.counts
        mb = c.get("bytes_read", 0) / 1e6
        rate = c.get("files_seen", 0) / self.seconds if self.seconds else 0.0
        return (f"run {self.run_id}{' (resumed)' if self.resumed else ''}: {c.get('files_seen', 0)} files seen, "
                f"{c.get('skipped_known', 0)} known from earlier runs, {c.get('written', 0)} {what}, "
                f"{c.get('duplicates', 0)} duplicates, {c.get('failed', 0)} failed; {mb:.1f} MB read in "
                f"{self.seconds:.1f} s ({rate:.0f} files/s) -> {self.root}")


class OldLayout(UserError):
    """The folder was written by embedlib 0.1 (one run per folder), which this release does not extend."""


def run_job(identity: JobIdentity, target: Target, root: str, executor: Executor | Callable[[], Executor], *,
            shard_size: int = 256, progress: bool = True, abandon_unfinished: bool = False,
            config_json: dict | None = None, command: str | None = None) -> list[RunSummary]:
    """Finish any interrupted run of this same job in `root`, then run once more over the input.

    An interrupted run of another job or input is parked: left unfinished and invisible (its own command resumes
    it later), announced in one line on stderr; with abandon_unfinished its partial output is deleted instead.
    Everything that can be refused is refused before `executor` is called (when it is a factory, e.g. one that
    starts Ray): before the lock, a missing input, a manifest that cannot be read through (inputs.check_input)
    and an output root no run could write (store.check_root); then lease.RunInProgress when another run
    holds the root. `command` is recorded in the run's run.json: what a later run names as the command that
    resumes it."""
    spec = inputs.check_input(identity.input, identity.glob)
    check_root(root)
    store = Store(root)
    if store.exists("_run.json") or store.exists("_inputs.parquet"):
        raise OldLayout(f"{store.root} was written by embedlib 0.1 (one run per folder); write to a new output root")
    lock = RootLock(store, catalog.new_run_id())
    lock.acquire()
    try:
        store.clean_temporaries()
        for run_id in set(catalog.finished_runs(store)) & set(store.listdir(WORK)):
            store.remove(work(run_id))  # killed after its runs row, before its staging was removed
        for name in store.listdir(WORK):
            if name != "tmp" and not store.exists(work(name, "run.json")):
                store.remove(work(name))  # killed while listing, before its run.json: nothing else was written
        resume = []
        for run_id, info in catalog.unfinished_runs(store):
            if identity.same_as(info["identity"]):
                resume.append(run_id)
            elif abandon_unfinished:
                abandon(store, run_id, info)
            else:
                other = info["identity"]
                resume_with = catalog.resume_command(info, store.root)
                announce(f"parked run {run_id} ({other['job']} of {other['input']}, version {other['version']}): "
                         f"it stays unfinished and invisible; resume it with: {resume_with}")
        if callable(executor) and not hasattr(executor, "write"):
            executor = executor()
        meta = {"config": config_json or {}, "command": command}
        return [_execute(store, run_id, identity, spec, target, executor, shard_size, progress, meta, lock)
                for run_id in resume + [lock.run_id]]
    finally:
        lock.release()


def abandon(store: Store, run_id: str, info: dict) -> None:
    """Delete an interrupted run's partial output: its partitions and its staging."""
    ident = info["identity"]
    store.remove(f"{ident['table']}/{catalog.VERSION_KEYS[ident['table']]}={ident['version']}/run={run_id}")
    store.remove(f"errors/run={run_id}")
    store.remove(work(run_id))


def _bar(progress: bool, desc: str, total: int | None) -> tqdm:
    """A progress bar on a terminal; nothing in logs (the run's summary line says what happened)."""
    return tqdm(total=total, desc=desc, unit="file", disable=not progress or not sys.stderr.isatty(),
                file=sys.stderr, mininterval=1.0, dynamic_ncols=True, leave=False)


def _list(store: Store, run_id: str, spec: inputs.InputSpec, shard_size: int, progress: bool,
          lock: RootLock) -> dict:
    """List the input into _work/<run>/listing/ chunk files (from scratch: a partial listing of a killed run is
    discarded). When the listing fails (the manifest changed since it was checked, a store stopped answering),
    the run's staging is removed, so nothing it leaves blocks the root: nothing else was written yet."""
    store.remove(work(run_id, "listing"))
    chunks = files = 0
    try:
        with _bar(progress, "listing", None) as bar:
            for table in inputs.listing_batches(spec, shard_size):
                lock.check()
                store.write_ipc(work(run_id, "listing", chunk_name(chunks, "arrow")), table)
                chunks, files = chunks + 1, files + table.num_rows
                bar.update(table.num_rows)
    except BaseException as exc:
        store.remove(work(run_id))
        if isinstance(exc, OSError):
            raise inputs.InputError(f"input {spec.text} could not be listed: {exc}") from None
        raise
    listing = {"chunks": chunks, "files": files, "shard_size": shard_size}
    store.write_json(work(run_id, "listing", "_done.json"), listing)
    return listing


def _execute(store: Store, run_id: str, identity: JobIdentity, spec: inputs.InputSpec, target: Target,
             executor: Executor, shard_size: int, progress: bool, meta: dict, lock: RootLock) -> RunSummary:
    """One run from wherever it stopped to its runs row. The lease is checked between tasks and phases and right
    before the commit: a run that lost it stops (LeaseLost) and commits nothing. A resumed run is reconciled
    with what other runs committed meanwhile before it commits (tasks.reconcile_task)."""
    started = time.perf_counter()
    info = store.read_json(work(run_id, "run.json"))
    resumed = info is not None
    phases: dict[str, float] = {}
    root = store.root
    shard_size = max(1, shard_size)

    t = time.perf_counter()
    listing = store.read_json(work(run_id, "listing", "_done.json"))
    if listing is None:
        listing = _list(store, run_id, spec, shard_size, progress, lock)
    if not resumed:  # only a listed run is a run: one that failed or was killed while listing blocks nothing
        info = {"identity": asdict(identity), "started": dt.datetime.now(dt.timezone.utc).isoformat(),
                "raster": target.config.to_dict()["raster"], "config": meta["config"], "command": meta["command"]}
        store.write_json(work(run_id, "run.json"), info)
    shard_size = listing["shard_size"]  # a resumed run keeps the chunking it started with
    phases["list"] = time.perf_counter() - t

    lock.check()
    t = time.perf_counter()
    matched = bool(catalog.table_files(store, target.table, exclude_run=run_id)
                   or catalog.table_files(store, "errors", exclude_run=run_id))
    if matched and not store.exists(work(run_id, "known", "_done.json")) and listing["chunks"]:
        executor.run_one(tasks.match_task, root, run_id, target.table, listing["chunks"])
        store.write_json(work(run_id, "known", "_done.json"), {"chunks": listing["chunks"]})
    phases["match"] = time.perf_counter() - t

    t = time.perf_counter()
    done = set(store.listdir(work(run_id, "hashed")))
    todo = [i for i in range(listing["chunks"]) if chunk_name(i, "json") not in done]
    with _bar(progress, "hashing", listing["files"]) as bar:
        bar.update(listing["files"] - sum(min(shard_size, listing["files"] - i * shard_size) for i in todo))
        for counts in executor.map(tasks.hash_task, [(root, run_id, i, target.config, matched, target.version)
                                                    for i in todo]):
            lock.check()
            bar.update(counts["files_seen"])
    phases["hash"] = time.perf_counter() - t

    t = time.perf_counter()
    lock.check()
    plan = store.read_json(work(run_id, "plan", "_done.json"))
    if plan is None:
        plan = executor.run_one(tasks.plan_task, root, run_id, target.table, target.version, listing["chunks"],
                                shard_size)
    phases["plan"] = time.perf_counter() - t

    t = time.perf_counter()
    done = set(store.listdir(work(run_id, "written")))
    todo = [j for j in range(plan["chunks"]) if chunk_name(j, "json") not in done]
    with _bar(progress, "embedding" if target.table == "embeddings" else "views", plan.get("planned")) as bar:
        for counts in executor.write(root, run_id, todo, target):
            lock.check()
            bar.update(counts["written"] + counts["failed"])
    phases["write"] = time.perf_counter() - t

    dropped = 0
    if resumed:
        lock.check()
        reconciled = store.read_json(work(run_id, "reconcile", "_done.json"))
        if reconciled is None:
            reconciled = executor.run_one(tasks.reconcile_task, root, run_id, target.table, target.version)
        dropped = reconciled["dropped"]

    totals = Counts(files_seen=listing["files"])
    for marker in tasks.marker_counts(store, run_id, "hashed"):
        totals.add({k: v for k, v in marker.items() if k != "files_seen"})
    totals.add({k: plan[k] for k in ("skipped_known", "duplicates")})
    for marker in tasks.marker_counts(store, run_id, "written"):
        totals.add(marker)
    totals.add({"written": -dropped, "duplicates": dropped})
    finished = dt.datetime.now(dt.timezone.utc)
    catalog.kill_point("commit")
    lock.check(commit=True)
    store.write_parquet(catalog.runs_part(run_id), catalog.runs_row(run_id, info, totals.as_dict(), finished))
    store.remove(work(run_id))
    return RunSummary(run_id, store.root, resumed, totals.as_dict(), time.perf_counter() - started, phases)
