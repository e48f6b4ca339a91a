"""The only module that touches Ray: starting it, running pipeline tasks, Ray Train, and data-parallel
measurements (precise BN moments, held-out accuracy) over the training corpus.

Files jobs (embed, rasterize) run embedlib.pipeline tasks:
  * CPU cluster: every core runs whole write tasks (read -> views -> embed -> write), torch on 1 thread each:
    no data crosses processes and no stage waits for another (Ray would otherwise fuse a CPU stage into an
    actor pool and leave cores idle: ARCHITECTURE.md pitfall 13).
  * GPU cluster, or embed.num_actors > 0: CPU tasks read and compute views, and a pool of embedding actors
    (one GPU each when there are GPUs) embeds and writes. A lost actor is replaced and its chunk redone.
Tasks are idempotent (deterministic output names), so Ray retries them freely when a worker or node dies.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter, deque
from typing import Any, Callable, Iterator

from embedlib.config import Config
from embedlib.errors import UserError
from embedlib.pipeline import tasks
from embedlib.pipeline.tasks import Target

log = logging.getLogger(__name__)

ACTOR_ATTEMPTS = 3  # actors a chunk may lose (and deaths in a row per actor) before CPU tasks take over

TASK_RETRIES = 3


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS when given, else start a local Ray sized to this machine. Ray's own
    chatter (worker start-up, deprecations, per-operator progress) is kept out of the job's output."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\..*")
    # Ray announces its token-auth default at every start; the mode itself is left to Ray and the user.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")
    # WARNING for the driver and every worker of the job (Ray Train logs each report at INFO); what the job's
    # code prints still reaches the driver.
    common = {"log_to_driver": True, "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="WARNING")}
    if address:
        ray.init(address=address, **common)
    else:
        # The dashboard serves the State API that Ray Train's placement-group cleaner polls: without it, that
        # actor warns every few seconds. Bound to loopback: nothing outside this machine reaches it. The cleaner
        # finds "its" cluster through RAY_ADDRESS: with another Ray running on the machine (a test session, a
        # second job), the default lookup fails. So the GCS port is chosen here and handed to every worker.
        from ray._private.services import get_node_ip_address

        port = _free_port()
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=True, dashboard_host="127.0.0.1",
                     runtime_env={"env_vars": {"RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}}, **common)
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray._private"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def _remote(fn: Callable, num_cpus: float = 1):
    """fn as a Ray task, retried on worker loss and on errors (every task here is idempotent)."""
    import ray

    return ray.remote(fn).options(num_cpus=num_cpus, max_retries=TASK_RETRIES, retry_exceptions=True)


def map_tasks(fn: Callable, argsets: list[tuple]) -> Iterator[Any]:
    """fn over argsets as Ray tasks, at most twice the cluster's CPUs in flight; results as they complete."""
    import ray

    remote = _remote(fn)
    pending = deque(argsets)
    running: list = []
    limit = 2 * cluster_cpus()
    while pending or running:
        while pending and len(running) < limit:
            running.append(remote.remote(*pending.popleft()))
        ready, running = ray.wait(running, num_returns=1)
        yield ray.get(ready[0])


class RayExecutor:
    """pipeline.run.Executor on a Ray cluster."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def run_one(self, fn: Callable, *args) -> dict:
        import ray

        return ray.get(_remote(fn).remote(*args))

    def map(self, fn: Callable, argsets: list[tuple]) -> Iterator[dict]:
        return map_tasks(fn, argsets)

    def write(self, root: str, run_id: str, todo: list[int], target: Target) -> Iterator[dict]:
        gpus = cluster_gpus()
        use_gpu = self.cfg.embed.use_gpu == "true" or (self.cfg.embed.use_gpu == "auto" and gpus > 0)
        # use_gpu=true asks for GPU actors even when the cluster has no GPU yet (an autoscaler may add some)
        actors = self.cfg.embed.num_actors or (max(1, gpus) if use_gpu else 0)
        if target.table != "embeddings" or not actors:
            yield from self.map(_write_task_one_thread, [(root, run_id, t, target) for t in todo])
            return
        yield from self._write_with_actors(root, run_id, todo, target, actors, use_gpu)

    def _write_with_actors(self, root: str, run_id: str, todo: list[int], target: Target, n_actors: int,
                           use_gpu: bool) -> Iterator[dict]:
        """CPU tasks compute views; embedding actors (GPU or CPU) embed and write. Views of at most two chunks
        per actor wait in the object store (backpressure). A chunk whose actor died is redone on a new actor;
        a chunk that lost ACTOR_ATTEMPTS actors, and every chunk left once actors die more than ACTOR_ATTEMPTS
        times per actor in a row (e.g. an actor that cannot start on a node), is written by a plain CPU task,
        so a dead actor can never make the job spin."""
        import ray
        from ray.exceptions import RayActorError

        actor_cls = ray.remote(EmbedActor).options(num_gpus=1 if use_gpu else 0, num_cpus=1, max_restarts=0,
                                                  max_task_retries=0)
        actors = [actor_cls.remote(target.model_uri, use_gpu) for _ in range(n_actors)]
        if use_gpu:
            actors = self._placed(actors, n_actors)
            n_actors = len(actors)
        load = _remote(tasks.load_views)
        pending = deque(todo)
        running: dict[Any, tuple[int, int, Any]] = {}  # ObjectRef of the write call -> (task, slot, actor)
        busy = {i: 0 for i in range(n_actors)}
        deaths: Counter[int] = Counter()  # chunk -> actors lost while writing it
        deaths_in_a_row = 0

        def by_task(chunks: list[int]) -> Iterator[dict]:
            return self.map(_write_task_one_thread, [(root, run_id, t, target) for t in chunks])

        while pending or running:
            while pending and min(busy.values()) < 2:
                task = pending.popleft()
                if deaths[task] >= ACTOR_ATTEMPTS:
                    yield from by_task([task])
                    continue
                idx = min(busy, key=busy.get)
                loaded = load.remote(root, run_id, task, target)
                ref = actors[idx].write.remote(root, run_id, task, target, loaded)
                running[ref] = (task, idx, actors[idx])
                busy[idx] += 1
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1)
            task, idx, actor = running.pop(ready[0])
            busy[idx] -= 1
            try:
                result = ray.get(ready[0])
            except RayActorError as exc:
                deaths[task] += 1
                deaths_in_a_row += 1
                pending.appendleft(task)
                if actors[idx] is actor:  # replace it once (its other calls in flight fail the same way)
                    ray.kill(actor, no_restart=True)
                    actors[idx] = actor_cls.remote(target.model_uri, use_gpu)
                if deaths_in_a_row > ACTOR_ATTEMPTS * n_actors:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    log.warning("embedding actors died %d times in a row (last: %s): CPU tasks write the %d chunks "
                                "left", deaths_in_a_row, reason[:200], len(pending) + len(running))
                    yield from self._drain(running, pending)
                    for a in actors:
                        ray.kill(a, no_restart=True)
                    yield from by_task(list(pending))
                    return
                log.warning("embedding actor %d died while writing chunk %d: redoing the chunk", idx, task)
                continue
            deaths_in_a_row = 0
            yield result

    def _placed(self, actors: list, wanted: int) -> list:
        """The GPU actors that the cluster placed within embed.gpu_wait_seconds (an autoscaler may be adding GPU
        nodes meanwhile); GpuUnavailable when none was, instead of waiting forever for actors that never start."""
        import ray

        wait = self.cfg.embed.gpu_wait_seconds
        pings = {a.ready.remote(): a for a in actors}
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=wait)
        placed = [pings[r] for r in ready]
        for a in actors:
            if a not in placed:
                ray.kill(a, no_restart=True)
        if not placed:
            raise GpuUnavailable(
                f"embed.use_gpu={self.cfg.embed.use_gpu}: no embedding actor with a GPU could be placed within "
                f"{wait:g} s (the cluster has {cluster_gpus()} GPUs now); add GPU nodes, set embed.use_gpu=auto "
                "(CPU tasks when the cluster has no GPU) or raise embed.gpu_wait_seconds")
        if len(placed) < wanted:
            log.warning("%d of %d GPU embedding actors were placed within %g s: embedding with %d", len(placed),
                        wanted, wait, len(placed))
        return placed

    @staticmethod
    def _drain(running: dict, pending: deque) -> Iterator[dict]:
        """The results of the write calls still in flight; a chunk whose actor died goes back to pending."""
        import ray
        from ray.exceptions import RayActorError

        for ref, (task, _, _) in list(running.items()):
            try:
                yield ray.get(ref)
            except RayActorError:
                pending.append(task)
        running.clear()


def _write_task_one_thread(root: str, run_id: str, task: int, target: Target) -> dict:
    return tasks.write_task(root, run_id, task, target, threads=1)


class GpuUnavailable(UserError, RuntimeError):
    """GPU embedding actors were asked for and none could be placed in time."""


class EmbedActor:
    """Holds the model on its device; embeds the views CPU tasks computed and writes the chunk's files."""

    def __init__(self, model_uri: str, use_gpu: bool) -> None:
        from embedlib.embedder import Embedder

        self.embedder = Embedder(model_uri, device="cuda" if use_gpu else "cpu", threads=None if use_gpu else 1)

    def ready(self) -> bool:
        """Answers once the actor is placed and its model loaded."""
        return True

    def write(self, root: str, run_id: str, task: int, target: Target, loaded: tuple) -> dict:
        return tasks.store_written(root, run_id, task, target, *loaded, embed=self.embedder.embed_views)


def executor_factory(cfg: Config, address: str | None = None) -> Callable[[], RayExecutor]:
    """What the jobs hand to the pipeline: Ray starts only once every input has been checked."""

    def start() -> RayExecutor:
        init_ray(address)
        return RayExecutor(cfg)

    return start


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def block_map(address: str | None = None) -> Callable[..., Iterator[Any]]:
    """ray_block_map on the cluster at `address` (or RAY_ADDRESS, or a local one), started at its first use: a
    training that is refused before it reads the corpus never starts Ray."""

    def mapped(fn: Callable, corpus, *args) -> Iterator[Any]:
        init_ray(address)
        return ray_block_map(fn, corpus, *args)

    return mapped


def ray_block_map(fn: Callable, corpus, *args) -> Iterator[Any]:
    """training.BlockMap over Ray tasks: groups of blocks, results as they complete (driver memory: one
    result at a time)."""
    from embedlib.training import block_groups

    import ray

    groups = block_groups(corpus.blocks, max(1, len(corpus.blocks) // (4 * cluster_cpus())))
    corpus_ref = ray.put(corpus)
    args_refs = [ray.put(a) if isinstance(a, (bytes, bytearray)) else a for a in args]
    yield from map_tasks(fn, [(corpus_ref, g, *args_refs) for g in groups])


COORDINATOR_START_S = 300.0  # how long Ray's autoscaling coordinator may take to start (it took 30 s under load)


def _warm_autoscaling_coordinator(timeout_s: float = COORDINATOR_START_S) -> None:
    """Start Ray's AutoscalingCoordinator actor and wait until it answers, before Ray Train needs it.

    Ray Train v2 (ray 2.60) registers its workers' resources with this detached actor from the controller, with
    a fixed 5 s timeout (train/v2/_internal/execution/scaling_policy/autoscaling_coordinator_client.py,
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S) and no setting that turns it off, even on a fixed-size local cluster.
    Its first call creates the actor: a new worker process importing ray.data. That took 1.8 s on the idle
    2-core machine and 30 s under load, so Train logged "Failed to send resource request ..." with a traceback
    while training went on and the job exited 0. Started here, the calls Train makes take milliseconds."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # a Ray without it: nothing to start
        return
    try:
        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - Train works without it; say why its own warning may follow
        log.warning("Ray's autoscaling coordinator did not start within %.0f s (%s); Ray Train may warn that it "
                    "cannot send resource requests", timeout_s, type(exc).__name__)


def train_with_ray(cfg: Config, corpus, probe, document_frequency, storage: str,
                   name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run Ray Train over the corpus's blocks; returns (final model state dict, per-epoch metrics of rank 0).
    `probe` (rows from training.probe_and_frequencies) is measured every epoch. Ray Train resumes `name` under
    `storage` when a previous run of that name left checkpoints: embedlib.attempts names runs so that only an
    interrupted attempt of the same training is resumed."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from embedlib.train_loop import ray_worker

    init_ray()  # a no-op when the job's block map already started or joined Ray

    trainer = TorchTrainer(
        train_loop_per_worker=ray_worker,
        train_loop_config={"config": cfg.to_dict(), "corpus": corpus, "probe": probe,
                           "document_frequency": document_frequency},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                              resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    _warm_autoscaling_coordinator()
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
    return state["model"], state["history"]


# ---------------------------------------------------------------------------------------------------
# Batch nearest neighbours (jobs.neighbors)
# ---------------------------------------------------------------------------------------------------

def knn_ray(queries, corpus, k: int, metric: str, query_index,
            block_rows: int, corpus_block: int, num_tasks: int, backend: str = "numpy",
            address: str | None = None) -> tuple:
    """neighbors.knn over `num_tasks` Ray tasks, each taking a contiguous slice of the queries against the whole
    corpus (put once in the object store, read zero-copy by every task on a node). A task asks for a GPU when
    the backend is torch on CUDA. Results come back in query order, identical to one knn call."""
    import numpy as np
    import ray

    from embedlib.query.neighbors import knn

    init_ray(address)
    gpu = backend.startswith("torch") and backend != "torch:cpu" and ray.cluster_resources().get("GPU", 0) > 0

    @ray.remote(num_gpus=1 if gpu else 0)
    def one_slice(corpus_ref, q, own):
        return knn(q, corpus_ref, k, metric, own, block_rows=block_rows, corpus_block=corpus_block,
                   backend=backend if gpu or not backend.startswith("torch") else "numpy")

    corpus_ref = ray.put(np.ascontiguousarray(corpus, dtype=np.float32))
    slices = [s for s in np.array_split(np.arange(len(queries)), max(1, num_tasks)) if len(s)]
    refs = [one_slice.remote(corpus_ref, queries[s], query_index[s]) for s in slices]
    results = ray.get(refs)
    if not results:
        return knn(queries, corpus, k, metric, query_index)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
