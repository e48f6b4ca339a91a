"""A real two-node Ray cluster on loopback, used the way cluster/README.md tells users to use one.

`ray start --head` (own temp dir, free ports, a dashboard) and a second `ray start --address=...` node with
its own resources; `jobs.train` and `jobs.embed` go in through the Ray Jobs API with a working_dir, exactly
like `ray job submit --working-dir .`. The test shows that tasks ran on both nodes, kills every process of
the worker node (raylet, agents, workers) while an embedding job runs, and checks that after Ray's retries
and, where needed, a rerun of the same command, every input path is in embeddings or errors exactly once,
with no sha256 twice.

Only processes this module started are touched: every process of a test node carries an environment
marker (inherited by the raylet's workers and by job drivers), and kills and the final cleanup select
processes by that marker. Other Ray clusters on the machine (other users, other test sessions) are never
stopped; `ray stop` is never called.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from embedlib.files import corpus
from embedlib.files.inputs import InputFile
from conftest import pick_families, size_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
MARKER = "EMBEDLIB_TEST_RAY_NODE"  # environment variable naming the test node a process belongs to
EXCLUDES = [".venv", ".git", "runs", "out", ".pytest_cache", "*.egg-info", "__pycache__", "*.duckdb"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
TINY = ["raster.size=32", "model.channels=[8, 16, 16, 32]", "model.embedding_dim=32", "model.skip_dim=16",
        "model.hidden=16", "views.buckets=256", "train.epochs=2",
        "train.batch_size=8", "train.num_workers=2", "train.cpus_per_worker=1", "train.min_family_size=3",
        "train.holdout_fraction=0.2", "train.probe_samples=64", "input.shard_size=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_pids(match) -> list[int]:
    """Pids of live processes whose MARKER value satisfies `match` (read from /proc/<pid>/environ)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        for item in env:
            if item.startswith(MARKER.encode() + b"="):
                if match(item.split(b"=", 1)[1].decode()):
                    pids.append(int(entry))
                break
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_tagged(match, grace: float) -> None:
    """SIGTERM the matching processes, then SIGKILL whatever is left (and whatever they started meanwhile)."""
    signal_all(tagged_pids(match), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while tagged_pids(match) and time.monotonic() < deadline:
        time.sleep(0.5)
    for _ in range(5):
        left = tagged_pids(match)
        if not left:
            return
        signal_all(left, signal.SIGKILL)
        time.sleep(0.5)


@dataclass
class Node:
    name: str
    tag: str  # MARKER value of every process of this node
    popen: subprocess.Popen
    log: Path
    node_id: str = ""


@dataclass
class LocalCluster:
    """A head and worker nodes started with `ray start --block`, each in its own session."""

    temp_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    client: Any = None  # JobSubmissionClient of the head's dashboard
    head: Node | None = None
    worker: Node | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, tag: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update({
            MARKER: tag,
            "RAY_AUTH_MODE": "disabled",  # ~/.ray/auth_token would turn token auth on (loopback only here)
            "RAY_USAGE_STATS_ENABLED": "0",
            # `python -m jobs.X` in a job's entrypoint is this interpreter, as in the image
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        })
        return env

    def _start(self, name: str, args: list[str]) -> Node:
        tag = f"{self.run_id}-{name}"
        log = self.temp_dir / f"{name}.log"
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        ports = ["--node-manager-port", free_port(), "--object-manager-port", free_port(),
                 "--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                 "--runtime-env-agent-port", free_port(), "--metrics-export-port", free_port(),
                 "--min-worker-port", 0, "--max-worker-port", 0]  # 0: workers take random free ports
        cmd = [ray, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               "--object-store-memory=200000000", *args, *map(str, ports)]
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, env=self.env(tag), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.temp_dir)
        node = Node(name, tag, popen, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        head = self._start("head", ["--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}",
                                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                    f"--dashboard-port={self.dashboard_port}",
                                    f"--ray-client-server-port={free_port()}", f"--num-cpus={num_cpus}"])
        self.client = self._wait(lambda: _client(self.dashboard), head, "the head's dashboard")
        return head

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float]) -> Node:
        before = {n.node_id for n in self.alive_nodes()}
        node = self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}",
                                  f"--resources={json.dumps(resources)}"])
        node.node_id = self._wait(lambda: next(n.node_id for n in self.alive_nodes() if n.node_id not in before),
                                  node, f"node {name} to join")
        return node

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)

    def _wait(self, probe, node: Node, what: str, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while True:
            if node.popen.poll() is not None:
                pytest.fail(f"`ray start` for {node.name} exited with {node.popen.returncode}:\n{_tail(node.log)}")
            try:
                return probe()
            except Exception as exc:  # not up yet
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting for {what}: {exc!r}\n{_tail(node.log)}")
            time.sleep(1)

    def kill_node(self, node: Node) -> int:
        """Node loss: SIGKILL every process of `node` (raylet, agents, its workers), nothing else."""
        killed = 0
        for _ in range(5):
            pids = tagged_pids(lambda tag: tag == node.tag)
            if not pids:
                break
            killed += len(pids)
            signal_all(pids, signal.SIGKILL)
            time.sleep(0.5)
        node.popen.wait(timeout=30)
        assert not tagged_pids(lambda tag: tag == node.tag), f"processes of {node.name} survived SIGKILL"
        return killed

    def shutdown(self) -> None:
        stop_tagged(lambda tag: tag.startswith(self.run_id + "-"), grace=15)
        for node in self.nodes:
            try:
                node.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _client(url: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- jobs through the Jobs API ----------------------------------------------------------------------------

@dataclass
class Job:
    submission_id: str
    status: str = "PENDING"
    ray_job_id: str | None = None
    logs: str = ""


def submit(cluster: LocalCluster, module: str, args: list[str], timeout: float = 180) -> Job:
    """Submit through the Jobs API. The head's dashboard answers before its job agent registers (seen on a loaded
    2-core machine: "No available agent to submit job, please try again later"): that answer is retried."""
    entrypoint = shlex.join(["python", "-m", f"jobs.{module}", *args])
    deadline = time.monotonic() + timeout
    while True:
        try:
            sid = cluster.client.submit_job(entrypoint=entrypoint,
                                            runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES})
            return Job(sid)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def refresh(cluster: LocalCluster, job: Job) -> Job:
    info = cluster.client.get_job_info(job.submission_id)
    job.status, job.ray_job_id = str(info.status.value), info.job_id
    return job


def wait(cluster: LocalCluster, job: Job, timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while refresh(cluster, job).status not in TERMINAL:
        if time.monotonic() > deadline:
            cluster.client.stop_job(job.submission_id)
            pytest.fail(f"job {job.submission_id} still {job.status} after {timeout:.0f} s:\n"
                        f"{cluster.client.get_job_logs(job.submission_id)[-4000:]}")
        time.sleep(2)
    job.logs = cluster.client.get_job_logs(job.submission_id)
    return job


def job_tasks(cluster: LocalCluster, job: Job, node_id: str | None = None) -> list:
    """Tasks and actor tasks of the job (TaskState rows of the state API), optionally only those on a node."""
    from ray.util.state import list_tasks

    filters = [("job_id", "=", job.ray_job_id)] + ([("node_id", "=", node_id)] if node_id else [])
    return list_tasks(address=cluster.dashboard, filters=filters, limit=10_000, raise_on_missing_output=False)


def per_node(tasks: list) -> collections.Counter:
    return collections.Counter(t.node_id for t in tasks if t.node_id)


def working_on(cluster: LocalCluster, job: Job, node_id: str) -> list[str]:
    """What of the job is at work on a node: its live actors there (the actor table is current at once),
    or tasks there of which some finished and one runs (task events arrive about a second late)."""
    from ray.util.state import list_actors

    if not job.ray_job_id:
        return []
    actors = list_actors(address=cluster.dashboard, raise_on_missing_output=False,
                         filters=[("job_id", "=", job.ray_job_id), ("node_id", "=", node_id), ("state", "=", "ALIVE")])
    if actors:
        return [f"actor {a.class_name}" for a in actors]
    states = collections.Counter(t.state for t in job_tasks(cluster, job, node_id))
    return [f"tasks {dict(states)}"] if states["FINISHED"] >= 3 and states["RUNNING"] >= 1 else []


def check_succeeded(job: Job) -> None:
    assert job.status == "SUCCEEDED", f"job {job.submission_id} {job.status}:\n{job.logs[-6000:]}"


# -- output tables, read recursively (flat layout or ROOT/<table>/model_version=V/run=R/part-*.parquet) -------

def table_column(root: Path, table: str, column: str) -> list:
    values = []
    for path in sorted(glob.glob(str(root / table / "**" / "*.parquet"), recursive=True)):
        values += pq.read_table(path, columns=[column]).column(column).to_pylist()
    return values


# -- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """Head: the dashboard, job drivers and 1 CPU. Worker: 3 CPUs and a custom resource `worker_node`.

    With one CPU on the head, an embedding job (one CPU actor plus CPU tasks) must use the worker node."""
    temp = Path(tempfile.mkdtemp(prefix="embmn-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    c = LocalCluster(temp)
    try:
        c.head = c.start_head(num_cpus=1)
        c.head.node_id = c._wait(lambda: next(n.node_id for n in c.alive_nodes() if n.is_head_node), c.head,
                                 "the head node in the state API")
        c.worker = c.add_node("worker", num_cpus=3, resources={"worker_node": 3})
        yield c
    finally:
        c.shutdown()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def unique_contents(files: list[InputFile], limit: int) -> list[InputFile]:
    """At most `limit` files with pairwise different contents (so every path must end up in embeddings)."""
    seen, out = set(), []
    for f in files:
        try:
            with open(f.path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        except OSError:  # vanished since it was listed
            continue
        if digest not in seen:
            seen.add(digest)
            out.append(f)
        if len(out) == limit:
            break
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("multinode")


@pytest.fixture(scope="module")
def trained(cluster, work, system_files):
    """jobs.train through the Jobs API: 36 real ELF files of 3 dpkg families, 2 Ray Train workers."""
    files = unique_contents(pick_families(system_files, families=3, per_family=14), limit=10_000)
    manifest = corpus.write_manifest(files, str(work / "train.csv"))
    args = ["--input", manifest, "--workdir", str(work / "train"), "--output", str(work / "model"),
            "--name", "multinode"]
    for item in TINY:
        args += ["--set", item]
    job = wait(cluster, refresh(cluster, submit(cluster, "train", args)), timeout=600)
    return job, work / "model"


# -- tests ------------------------------------------------------------------------------------------------

def test_two_nodes_joined(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    worker = next(n for n in nodes if n.node_id == cluster.worker.node_id)
    assert worker.resources_total.get("worker_node") == 3 and not worker.is_head_node


def test_train_job_through_the_jobs_api_uses_both_nodes(cluster, trained):
    job, model = trained
    check_succeeded(job)
    assert (model / "meta.json").is_file() and (model / "model.pt").is_file(), sorted(os.listdir(model))
    meta = json.loads((model / "meta.json").read_text())
    assert len(meta["families"]) == 3 and len(meta["history"]) == 2
    nodes = per_node(job_tasks(cluster, job))
    print(f"train tasks per node: head {nodes[cluster.head.node_id]}, worker {nodes[cluster.worker.node_id]}")
    assert {cluster.head.node_id, cluster.worker.node_id} <= set(nodes), f"tasks per node: {dict(nodes)}"


@pytest.fixture(scope="module")
def embed_inputs() -> list[InputFile]:
    """Up to 1,200 real ELF files of distinct contents: enough work that the worker node can be killed while
    the job runs (a few seconds of embedding on this machine; the job also loads the model per actor)."""
    files = corpus.system_executables(["/usr/bin", "/usr/sbin", "/usr/lib"])
    files = unique_contents([f for f in files if (size_of(f.path) or 400_001) <= 400_000], limit=1200)
    assert len(files) >= 400, f"this machine has only {len(files)} small ELF files"
    return files


def test_embed_job_survives_the_loss_of_the_worker_node(cluster, trained, work, embed_inputs):
    """Kill the worker node while jobs.embed runs on it, bring up a replacement node (what KubeRay does with a
    lost pod), and check that Ray's retries, or a rerun of the same command, leave every input exactly once
    in embeddings + errors, and no sha256 twice."""
    check_succeeded(trained[0])
    files = embed_inputs
    manifest = corpus.write_manifest(files, str(work / "embed.csv"))
    root = work / "root"
    args = ["--model", str(trained[1]), "--input", manifest, "--output", str(root),
            "--set", "input.shard_size=2", "--set", "embed.num_actors=2", "--set", "embed.batch_size=16",
            "--set", "embed.allow_unhealthy_model=true"]

    first = submit(cluster, "embed", args)
    deadline = time.monotonic() + 300
    while True:  # kill as soon as the worker node is doing part of this job
        assert time.monotonic() < deadline, "the embedding job never ran on the worker node"
        refresh(cluster, first)
        assert first.status not in TERMINAL, (
            f"the embedding job ended ({first.status}) before the worker node took part in it:\n"
            f"{cluster.client.get_job_logs(first.submission_id)[-4000:]}")
        on_worker = working_on(cluster, first, cluster.worker.node_id)
        if on_worker:
            break
        time.sleep(0.25)
    status_at_kill = refresh(cluster, first).status
    killed = cluster.kill_node(cluster.worker)
    print(f"\nkilled {killed} processes of the worker node while the embedding job was {status_at_kill}; "
          f"working there: {on_worker}")
    assert status_at_kill == "RUNNING"
    cluster.add_node("replacement", num_cpus=3, resources={"worker_node": 3})

    wait(cluster, first, timeout=600)
    print(f"first run after losing the worker node: {first.status}; tasks per node: "
          f"{dict(per_node(job_tasks(cluster, first)))}")
    # The same command again: it resumes what is left, or finds nothing left to do.
    second = wait(cluster, submit(cluster, "embed", args), timeout=600)
    check_succeeded(second)

    embedded = table_column(root, "embeddings", "path")
    errors = table_column(root, "errors", "path")
    counts = collections.Counter(embedded + errors)
    inputs = {f.path for f in files}
    assert set(counts) == inputs, f"missing: {sorted(inputs - set(counts))[:5]}, unexpected: {sorted(set(counts) - inputs)[:5]}"
    twice = {p: n for p, n in counts.items() if n != 1}
    assert not twice, f"paths recorded more than once: {dict(list(twice.items())[:5])}"
    sha = collections.Counter(table_column(root, "embeddings", "sha256"))
    assert all(n == 1 for n in sha.values()), f"duplicate sha256: {[s for s, n in sha.items() if n > 1][:5]}"
    assert len(embedded) == len(files), f"{len(errors)} inputs of distinct contents were not embedded"
    runs = sorted(glob.glob(str(root / "runs" / "*.parquet")))
    if runs:  # the output root's run summaries (one row per finished run): the rerun saw every input
        last = pq.read_table(runs[-1]).to_pylist()[-1]
        assert last["files_seen"] == len(files), last
