"""The root's lease: one writer at a time per output root (embed and rasterize runs, jobs.neighbors, jobs.compact).

Locally an flock on ROOT/_lock.json: the kernel drops it when its process dies, even by SIGKILL.

On object stores a small JSON object ROOT/_lock.json, written only by conditional writes (Store.create_exclusive,
replace_if, remove_if; S3 If-None-Match / If-Match on the ETag):
  acquire  create it only if absent: of two starters exactly one succeeds, however slow their uploads. If it
           exists, take it over (a replace conditional on the ETag read: again exactly one taker wins) only when
           its holder is provably gone: it released it; or it ran on this host and its pid is dead; or it is an
           earlier attempt of the same owner (EMBEDLIB_LEASE_OWNER, which the cluster manifests set to the
           RayJob's name: KubeRay starts a retry only after the previous attempt failed); or it has been silent
           for LEASE_SECONDS. Anything else: RunInProgress, exit 75.
  renew    every HEARTBEAT_SECONDS, a replace conditional on the ETag held. Transient errors are retried with
           backoff; when no renewal succeeds before the lease would expire (less a margin), or another writer
           replaced it, the lease is lost: `check()` raises LeaseLost (exit 75). The driver checks between tasks
           and right before its commit, so a run that lost its lease stops before committing anything.
  release  stop and join the heartbeat thread first (a late beat can never recreate the lease), then delete the
           object conditionally on the ETag held.
Backends without conditional writes (gs://, az://, ... in this release) are refused in one line.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from embedlib.config import HEARTBEAT_SECONDS, LEASE_SECONDS
from embedlib.errors import UserError
from embedlib.root.store import ConditionFailed, Store

LOCK = "_lock.json"
OWNER_ENV = "EMBEDLIB_LEASE_OWNER"  # who the writer is across retries (the cluster sets the RayJob's name)


class RunInProgress(UserError, RuntimeError):
    """Another run holds the root's lock."""

    exit_code = 75  # EX_TEMPFAIL: a scheduler may simply try again later


class LeaseLost(UserError, RuntimeError):
    """This run could not keep the root's lease: it stops before committing; rerun it later to resume."""

    exit_code = 75


def announce(message: str) -> None:
    """One line on stderr for what a person running the job must know (a takeover, a parked run)."""
    print(message, file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gone_reason(holder: dict, now: float, lease_seconds: float, owner: str | None, host: str) -> str | None:
    """Why the writer that wrote `holder` is provably gone, or None when it may still be writing."""
    if holder.get("released"):
        return "it released the lease"
    pid = holder.get("pid")
    same_host = holder.get("host") == host
    if same_host and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
        return f"its process {pid} on {host} is gone"
    if owner and holder.get("owner") == owner and not (same_host and isinstance(pid, int) and _pid_alive(pid)):
        return f"it was an earlier attempt of {owner}"
    silent = now - float(holder.get("heartbeat", 0))
    if silent > lease_seconds:
        return f"it has been silent for {silent:.0f} s"
    return None


@dataclass
class RootLock:
    """One writer at a time per root (see the module docstring). Use as a context manager or acquire/release."""

    store: Store
    run_id: str
    stale_after: float = field(default_factory=lambda: LEASE_SECONDS)
    heartbeat_every: float = field(default_factory=lambda: HEARTBEAT_SECONDS)
    _fh: Any = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)
    _lease_id: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)
    _seq: int = field(default=0, repr=False)
    _renewed_at: float = field(default=0.0, repr=False)  # time.monotonic() of the last renewal that landed
    _lost: str | None = field(default=None, repr=False)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def margin(self) -> float:
        """How long before expiry the holder gives up: others may take over only after `stale_after`."""
        return min(self.stale_after / 4, 2 * self.heartbeat_every)

    def _info(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
                "owner": os.environ.get(OWNER_ENV) or None, "lease_id": self._lease_id, "seq": self._seq}

    def __enter__(self) -> "RootLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- acquire -----------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        if self.store.local:
            self._acquire_flock()
            return
        body = json.dumps(self._info()).encode()
        for _ in range(5):
            try:
                self._token = self.store.create_exclusive(LOCK, body)
                self._probe_conditions(body)
                self._start()
                return
            except FileExistsError:
                pass
            current = self.store.read_versioned(LOCK)
            if current is None:
                continue  # released between our two requests: try to create it again
            data, token = current
            holder = _parse(data)
            if holder.get("lease_id") == self._lease_id:  # our create landed; its reply did not
                self._token = token
                self._start()
                return
            why = gone_reason(holder, time.time(), self.stale_after, os.environ.get(OWNER_ENV), socket.gethostname())
            if why is None:
                raise RunInProgress(
                    f"another run is writing to {self.store.root} (run {holder.get('run_id')} on {holder.get('host')}, "
                    f"pid {holder.get('pid')}, owner {holder.get('owner') or 'none'}, alive "
                    f"{time.time() - float(holder.get('heartbeat', 0)):.0f} s ago); try again later")
            try:
                self._token = self.store.replace_if(LOCK, body, token)
            except ConditionFailed:
                continue  # someone else changed it first: look again
            if not holder.get("released"):
                announce(f"took over the lease of {self.store.root} from run {holder.get('run_id')}: {why}")
            self._start()
            return
        raise RunInProgress(f"the lease of {self.store.root} kept changing hands while this run tried to take it; "
                            "try again later")

    def _probe_conditions(self, body: bytes) -> None:
        """A backend that ignores If-None-Match would let two writers in: creating again must be refused."""
        try:
            self.store.create_exclusive(LOCK, body)
        except FileExistsError:
            return
        self.store.remove(LOCK)
        from embedlib.root.store import NoConditionalWrites

        raise NoConditionalWrites(f"{self.store.root}: the object store ignored a conditional write (If-None-Match), "
                                  "which the root's lease needs; use an S3 service that supports it")

    def _acquire_flock(self) -> None:
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

    def _start(self) -> None:
        self._renewed_at = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    # -- renew -------------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            if not self._renew_until_expiry():
                return

    def _renew_until_expiry(self) -> bool:
        """Renew, retrying transient errors with backoff until the lease would expire. False once lost."""
        delay = min(1.0, self.heartbeat_every)
        while not self._stop.is_set():
            try:
                self.renew()
                return True
            except LeaseLost:
                return False
            except Exception as exc:  # noqa: BLE001 - any backend failure is transient until the lease runs out
                left = self.stale_after - self.margin - (time.monotonic() - self._renewed_at)
                if left <= delay:
                    self._mark_lost(f"could not renew it for {time.monotonic() - self._renewed_at:.0f} s "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
                    return False
                self._stop.wait(delay)
                delay = min(2 * delay, self.heartbeat_every, max(left / 2, 0.05))
        return True

    def renew(self) -> None:
        """One renewal: a conditional replace on the ETag held. LeaseLost when another writer replaced it."""
        with self._mutex:
            if self._lost:
                raise LeaseLost(self._lost_message())
            self._seq += 1
            started = time.monotonic()
            body = json.dumps(self._info()).encode()
            try:
                self._token = self.store.replace_if(LOCK, body, self._token)
            except ConditionFailed:
                current = self.store.read_versioned(LOCK)
                holder = _parse(current[0]) if current else {}
                if holder.get("lease_id") == self._lease_id:
                    self._token = current[1]  # an earlier try of ours landed, its reply did not: still ours
                else:
                    self._lost = (f"run {holder.get('run_id')} took it over" if holder
                                  else "the lease object was deleted")
                    raise LeaseLost(self._lost_message()) from None
            self._renewed_at = started

    def _mark_lost(self, why: str) -> None:
        with self._mutex:
            self._lost = self._lost or why

    def _lost_message(self) -> str:
        return (f"this run ({self.run_id}) lost the lease of {self.store.root}: {self._lost}; nothing more was "
                "committed. Run the same command again later: the run resumes")

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def check(self, commit: bool = False) -> None:
        """Raise LeaseLost unless this writer still holds the lease. Before a commit (`commit=True`) the lease
        must have at least half its time left, renewing it now if needed, so the commit lands well before
        anyone may take over."""
        if self._fh is not None or self._token is None:
            return  # the flock lives as long as this process; nothing held (released) is not checked here
        if self._lost:
            raise LeaseLost(self._lost_message())
        elapsed = time.monotonic() - self._renewed_at
        if elapsed > self.stale_after - self.margin:
            self._mark_lost(f"no renewal for {elapsed:.0f} s")
            raise LeaseLost(self._lost_message())
        if commit and elapsed > self.stale_after / 2:
            try:
                self.renew()
            except LeaseLost:
                raise
            except Exception as exc:  # noqa: BLE001
                self._mark_lost(f"could not renew it before committing ({type(exc).__name__})")
                raise LeaseLost(self._lost_message()) from None

    # -- release -----------------------------------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fh is not None:
            self._fh.close()  # the flock goes with the descriptor; the file stays, harmlessly
            self._fh = None
            return
        token, self._token = self._token, None
        if token is None or self._lost:
            return
        try:
            self.store.remove_if(LOCK, token)
        except ConditionFailed:
            pass  # someone took it over meanwhile: nothing of ours to remove
        except Exception:  # noqa: BLE001 - a backend without conditional deletes: mark it released instead
            try:
                self.store.replace_if(LOCK, json.dumps({**self._info(), "released": True}).encode(), token)
            except Exception:  # noqa: BLE001 - the next run takes it over once this process is gone
                pass


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
