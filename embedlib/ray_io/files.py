"""Files jobs on Ray: every core reads, computes views and embeds its own chunks (CPU), or CPU tasks compute views
and embedding actors (one GPU each) embed and write. Tasks are embedlib.pipeline.tasks functions."""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any, Callable, Iterator

from embedlib.config import ACTOR_ATTEMPTS, Config
from embedlib.errors import UserError
from embedlib.pipeline import tasks
from embedlib.pipeline.tasks import Target
from embedlib.ray_io import _remote, cluster_gpus, init_ray, map_tasks

log = logging.getLogger(__name__)



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
        from embedlib.model.embedder import Embedder

        self.embedder = Embedder(model_uri, device="cuda" if use_gpu else "cpu", threads=None if use_gpu else 1)

    def ready(self) -> bool:
        """Answers once the actor is placed and its model loaded."""
        return True

    def write(self, root: str, run_id: str, task: int, target: Target, loaded: tuple) -> dict:
        return tasks.store_written(root, run_id, task, target, *loaded, embed=self.embedder.embed_views,
                                   words=self.embedder.words)


def executor_factory(cfg: Config, address: str | None = None, dashboard: bool = False) -> Callable[[], RayExecutor]:
    """What the jobs hand to the pipeline: Ray starts only once every input has been checked (a local one
    without its dashboard unless `dashboard`: a process that trains on the same Ray later needs it)."""

    def start() -> RayExecutor:
        init_ray(address, dashboard=dashboard)
        return RayExecutor(cfg)

    return start
