"""The root's lease on a real S3 API (moto server on loopback, through s3fs): conditional create and renewal,
a heartbeat that survives transient errors and stops the run on persistent ones, a release that joins the
heartbeat first, and at-once takeover of a holder that is provably gone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import moto_s3
from embedlib import pipeline
from embedlib.pipeline import tasks
from embedlib.root import lease
from embedlib.root.lease import LeaseLost, RootLock, RunInProgress
from embedlib.root.store import NoConditionalWrites, Store

from test_pipeline import REPO, _cfg, _corpus, model_uri  # noqa: F401  (model_uri is a fixture)


@pytest.fixture(scope="module")
def s3():
    with moto_s3("lease") as fs:
        yield fs


@pytest.fixture(autouse=True)
def no_owner(monkeypatch):
    monkeypatch.delenv(lease.OWNER_ENV, raising=False)


def holder(root: str) -> dict | None:
    got = Store(root).read_versioned(lease.LOCK)
    return json.loads(got[0]) if got else None


def slow_uploads(store: Store, seconds: float) -> None:
    """Every write of the lease object through `store` reaches the server `seconds` late (a slow upload)."""
    for name in ("create_exclusive", "replace_if", "write_bytes"):
        real = getattr(store, name)

        def delayed(rel, *args, _real=real, **kwargs):
            if rel == lease.LOCK:
                time.sleep(seconds)
            return _real(rel, *args, **kwargs)

        setattr(store, name, delayed)


def test_two_runs_racing_for_the_lease_exactly_one_wins(s3):
    root = "s3://lease/race"
    slow, fast = Store(root), Store(root)
    slow_uploads(slow, 1.5)  # the old write-sleep(1)-read-back protocol let both win here
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def contend(name: str, store: Store) -> None:
        lock = RootLock(store, f"run-{name}")
        start.wait()
        try:
            lock.acquire()
            results[name] = lock
        except RunInProgress as exc:
            results[name] = exc

    threads = [threading.Thread(target=contend, args=(n, s)) for n, s in (("slow", slow), ("fast", fast))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [n for n, r in results.items() if isinstance(r, RootLock)]
    assert won == ["fast"], results
    assert isinstance(results["slow"], RunInProgress) and results["slow"].exit_code == 75
    time.sleep(0.5)
    assert holder(root)["run_id"] == "run-fast"
    results["fast"].release()
    assert holder(root) is None


def test_heartbeat_survives_transient_errors(s3, monkeypatch):
    store = Store("s3://lease/transient")
    lock = RootLock(store, "steady", stale_after=3.0, heartbeat_every=0.2)
    lock.acquire()
    real = Store.replace_if
    failures = {"left": 6}

    def flaky(self, rel, data, token):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("injected: connection reset")
        return real(self, rel, data, token)

    monkeypatch.setattr(Store, "replace_if", flaky)
    time.sleep(3.5)  # longer than the lease: only renewals that got through after the errors keep it
    assert failures["left"] == 0 and not lock.lost
    lock.check(commit=True)
    beat = holder(store.root)["heartbeat"]
    assert time.time() - beat < 1.0 and holder(store.root)["run_id"] == "steady"
    lock.release()
    assert holder(store.root) is None


def test_a_late_heartbeat_never_recreates_a_released_lease(s3, monkeypatch):
    store = Store("s3://lease/late")
    lock = RootLock(store, "late", stale_after=5.0, heartbeat_every=0.05)
    lock.acquire()
    real = Store.replace_if
    in_flight = threading.Event()

    def slow(self, rel, data, token):
        in_flight.set()
        time.sleep(0.5)
        return real(self, rel, data, token)

    monkeypatch.setattr(Store, "replace_if", slow)
    assert in_flight.wait(5)
    lock.release()  # joins the beat in flight first, then deletes on the ETag that beat returned
    time.sleep(0.6)
    assert holder(store.root) is None


def test_persistent_errors_stop_the_run_before_it_commits(s3, model_uri, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(lease, "LEASE_SECONDS", 2.0)
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.2)
    src = tmp_path / "in"
    _corpus(src, 6)
    root = "s3://lease/persistent"
    real_replace, real_hash = Store.replace_if, tasks.hash_task

    def down(self, rel, data, token):
        raise ConnectionError("injected: the object store is unreachable")

    def slow_hash(*args):
        time.sleep(0.5)
        return real_hash(*args)

    monkeypatch.setattr(Store, "replace_if", down)
    monkeypatch.setattr(tasks, "hash_task", slow_hash)
    with pytest.raises(LeaseLost, match="lost the lease of .*could not renew it") as info:
        pipeline.embed_files(model_uri, str(src), root, _cfg(), progress=False)
    assert info.value.exit_code == 75 and len(str(info.value).splitlines()) == 1
    store = Store(root)
    assert pipeline.catalog.finished_runs(store) == [] and len(pipeline.catalog.unfinished_runs(store)) == 1
    monkeypatch.setattr(Store, "replace_if", real_replace)
    monkeypatch.setattr(tasks, "hash_task", real_hash)
    time.sleep(2.1)  # the lost lease's object stays (its writer may still be alive) until it is silent
    first, second = pipeline.embed_files(model_uri, str(src), root, _cfg(), progress=False)
    assert first.resumed and first.counts["written"] == 6 and second.counts["written"] == 0
    assert holder(root) is None


def test_a_dead_holder_is_taken_over_at_once(s3, tmp_path, capfd):
    root = "s3://lease/dead"
    env = dict(os.environ, FSSPEC_S3=json.dumps(s3_config()))
    script = ("import time; from embedlib.root.lease import RootLock; from embedlib.root.store import Store;"
              f"RootLock(Store({root!r}), 'killed').acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert holder(root)["run_id"] == "killed"
    started = time.monotonic()
    lock = RootLock(Store(root), "next")
    lock.acquire()
    assert time.monotonic() - started < 5
    assert f"took over the lease of s3://lease/dead from run killed: its process {proc.pid}" in capfd.readouterr().err
    lock.release()


def test_an_earlier_attempt_of_the_same_owner_is_taken_over(s3, monkeypatch):
    root = "s3://lease/owner"
    body = {"run_id": "attempt-1", "host": "raycluster-head-gone", "pid": 7, "heartbeat": time.time(),
            "owner": "nightly-embed-2026-11-24", "lease_id": "x", "seq": 3}
    Store(root).create_exclusive(lease.LOCK, json.dumps(body).encode())
    with pytest.raises(RunInProgress, match="run attempt-1 on raycluster-head-gone"):
        RootLock(Store(root), "someone-else").acquire()  # a live holder elsewhere: 75, not 10 minutes of waiting
    monkeypatch.setenv(lease.OWNER_ENV, "nightly-embed-2026-11-24")
    lock = RootLock(Store(root), "attempt-2")
    lock.acquire()
    assert holder(root)["run_id"] == "attempt-2" and holder(root)["owner"] == "nightly-embed-2026-11-24"
    lock.release()


def test_a_silent_holder_is_taken_over_after_the_lease(s3):
    root = "s3://lease/silent"
    body = {"run_id": "silent", "host": "elsewhere", "pid": 7, "heartbeat": time.time() - 601, "lease_id": "y"}
    Store(root).create_exclusive(lease.LOCK, json.dumps(body).encode())
    with RootLock(Store(root), "next"):
        assert holder(root)["run_id"] == "next"
    assert holder(root) is None


def test_backends_without_conditional_writes_are_refused_in_one_line():
    with pytest.raises(NoConditionalWrites, match="the memory:// backend has no conditional writes") as info:
        RootLock(Store("memory://root"), "r").acquire()
    assert info.value.exit_code == 2 and len(str(info.value).splitlines()) == 1


def s3_config() -> dict:
    import fsspec

    return dict(fsspec.config.conf["s3"])


def test_this_host_is_what_the_lease_records():
    assert lease.gone_reason({"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()},
                             time.time(), 600, None, socket.gethostname()) is None
