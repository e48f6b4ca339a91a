"""The only package that touches Ray: starting it, running pipeline tasks, Ray Train, and data-parallel
measurements (precise BN moments, held-out accuracy) over the training corpus.

Files jobs (embed, rasterize) run embedlib.pipeline tasks:
  * CPU cluster: every core runs whole write tasks (read -> views -> embed -> write), torch on 1 thread each:
    no data crosses processes and no stage waits for another (Ray would otherwise fuse a CPU stage into an
    actor pool and leave cores idle: ARCHITECTURE.md pitfall 13).
  * GPU cluster, or embed.num_actors > 0: CPU tasks read and compute views, and a pool of embedding actors
    (one GPU each when there are GPUs) embeds and writes. A lost actor is replaced and its chunk redone.
Tasks are idempotent (deterministic output names), so Ray retries them freely when a worker or node dies.
Imported by the jobs and the demo only; may import every other package.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import deque
from typing import Any, Callable, Iterator

from embedlib.config import TASK_RETRIES

log = logging.getLogger(__name__)



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


from embedlib.ray_io.files import ACTOR_ATTEMPTS, EmbedActor, GpuUnavailable, RayExecutor, executor_factory  # noqa: E402
from embedlib.ray_io.knn import knn_ray  # noqa: E402
from embedlib.ray_io.train import block_map, ray_block_map, train_with_ray  # noqa: E402

__all__ = ["ACTOR_ATTEMPTS", "EmbedActor", "GpuUnavailable", "RayExecutor", "TASK_RETRIES", "block_map",
           "cluster_cpus", "cluster_gpus", "executor_factory", "init_ray", "knn_ray", "map_tasks",
           "ray_block_map", "train_with_ray"]
