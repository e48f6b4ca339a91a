"""Training on Ray: Ray Train over the corpus's blocks (DDP, a checkpoint per epoch, equal steps on every rank), and
data-parallel passes over the blocks (probe, document frequencies, precise BN moments, held-out accuracy).

The worker is written so that GPU training cannot hang: every collective runs on the worker's device (NCCL rejects
CPU tensors), every rank runs the same number of steps (no DDP join, which does not support SyncBatchNorm's
collectives), and the per-epoch probe runs the same batches on every rank or on none.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from embedlib.config import COORDINATOR_START_S, Config, config_from_json
from embedlib.model.network import to_device, unwrap
from embedlib.ray_io import cluster_cpus, init_ray, map_tasks
from embedlib.train.dataset import epoch_shares, rows_per_rank, shuffled_batches, steps_per_epoch
from embedlib.train.loop import (batch_rows, batches_of, correct_count, describe_epoch, make_optimizer,
                                 make_scheduler, new_model, set_seed, train_epoch, uses_logits)

log = logging.getLogger(__name__)


def block_map(address: str | None = None) -> Callable[..., Iterator[Any]]:
    """ray_block_map on the cluster at `address` (or RAY_ADDRESS, or a local one), started at its first use: a
    training that is refused before it reads the corpus never starts Ray."""

    def mapped(fn: Callable, corpus, *args) -> Iterator[Any]:
        init_ray(address, dashboard=True)  # Ray Train's placement-group cleaner polls the dashboard
        return ray_block_map(fn, corpus, *args)

    return mapped


def ray_block_map(fn: Callable, corpus, *args) -> Iterator[Any]:
    """training.BlockMap over Ray tasks: groups of blocks, results as they complete (driver memory: one
    result at a time)."""
    from embedlib.train.trainer import block_groups

    import ray

    groups = block_groups(corpus.blocks, max(1, len(corpus.blocks) // (4 * cluster_cpus())))
    corpus_ref = ray.put(corpus)
    args_refs = [ray.put(a) if isinstance(a, (bytes, bytearray)) else a for a in args]
    yield from map_tasks(fn, [(corpus_ref, g, *args_refs) for g in groups])




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
    `storage` when a previous run of that name left checkpoints: embedlib.train.attempts names runs so that only an
    interrupted attempt of the same training is resumed."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer


    init_ray(dashboard=True)  # a no-op when the job's block map already started or joined Ray

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


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Reduce numbers over all ranks, on the rank's own device (NCCL rejects CPU tensors)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return t.cpu().tolist()


def _probe_share(probe: tuple[dict, np.ndarray], rank: int, world: int, batch_size: int,
                 device: torch.device) -> list:
    """This rank's share of the probe, the same number of batches on every rank, so that train-mode passes
    through SyncBatchNorm meet on every rank (or on none, when the probe is smaller than a batch per rank)."""
    views, labels = probe
    labelled = labels >= 0  # accuracy needs a class; unlabelled probe rows serve the BN statistics only
    views, labels = {k: v[labelled] for k, v in views.items()}, labels[labelled]
    per_rank = (len(labels) // world) // batch_size * batch_size
    if not per_rank:
        return []
    take = slice(rank * per_rank, (rank + 1) * per_rank)
    share = ({k: v[take] for k, v in views.items()}, labels[take])
    return [(to_device(v, device), y.to(device)) for v, y in batches_of(*share, batch_size)]


def _quiet_ray_train() -> None:
    """Ray Train logs every report at INFO, from a logger named after its source file: keep it to warnings."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray release: its logs stay, nothing else changes
        pass


def ray_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train loop: DDP (SyncBatchNorm only on GPUs), equal steps on every rank, a checkpoint per epoch."""
    import ray.train
    import ray.train.torch


    _quiet_ray_train()
    cfg = config_from_json(loop_config["config"])
    corpus = loop_config["corpus"]
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    if not cfg.train.use_gpu:
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    set_seed(cfg.train.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = new_model(cfg, len(corpus.rule.families), loop_config.get("document_frequency"))
    if cfg.train.use_gpu and world > 1 and cfg.model.norm.startswith("batch"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # raises on CPU: GPU only
    # a loss that never reads the classifier leaves the class directions without a gradient: DDP must know
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": not uses_logits(cfg)})
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(model, cfg)
    bs = batch_rows(cfg)
    steps = steps_per_epoch(corpus, world, bs)  # every rank computes the same number, without asking
    if steps < 1:
        raise ValueError(f"{corpus.train_rows} training rows on {world} workers make no batch of {bs}")
    scheduler = make_scheduler(optimizer, cfg, steps * cfg.train.epochs)

    start_epoch, history = 0, []  # rank 0's per-epoch metrics, kept in the checkpoint across resumes
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state.get("history", [])

    probe = _probe_share(loop_config["probe"], rank, world, cfg.train.batch_size, device)
    pk = (cfg.train.pk_families, cfg.train.pk_files) if cfg.train.sampler == "pk" else None
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        share = epoch_shares(corpus, world, epoch, cfg.train.seed)[rank]
        batches = ((to_device({k: torch.from_numpy(v) for k, v in views.items()}, device),
                    torch.from_numpy(labels).to(device))
                   for views, labels in shuffled_batches(corpus, share, bs, steps, cfg.train.shuffle_buffer,
                                                         seed=cfg.train.seed * 1_000_003 + epoch * 1009 + rank, pk=pk))
        stats = train_epoch(model, batches, optimizer, cfg, scheduler)
        loss_sum, correct, samples, labelled, steps_min, steps_max = _all_reduce(
            [stats["loss_sum"], stats["correct"], stats["samples"], stats["labelled"]], device) + \
            _steps_range(stats["steps"], device)
        metrics = {"epoch": epoch, "steps": int(steps_max), "steps_min_rank": int(steps_min), "world": world,
                   "rows_per_rank": rows_per_rank(corpus, world), "batch_rows": bs,
                   "samples_all_ranks": int(samples), "labelled_all_ranks": int(labelled),
                   "loss": loss_sum / max(samples, 1), "train_mode_accuracy": correct / max(labelled, 1)}
        if probe:
            tm = correct_count(model, probe, train_mode=True)
            em = correct_count(model, probe, train_mode=False)
            tc, ec, n = _all_reduce([tm[0], em[0], tm[1]], device)
            metrics.update(probe_files=int(n), probe_train_mode_accuracy=tc / n, probe_eval_mode_accuracy=ec / n)
        metrics["seconds"] = time.perf_counter() - started
        if rank == 0:
            history.append(metrics)
            sys.stdout.write(describe_epoch(metrics, cfg.train.epochs) + "\n")  # not print: Ray Train tees print
            sys.stdout.flush()
            with tempfile.TemporaryDirectory() as d:
                buf = io.BytesIO()
                torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                            "epoch": epoch, "history": history}, buf)
                with open(os.path.join(d, "state.pt"), "wb") as fh:
                    fh.write(buf.getvalue())
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def _steps_range(steps: int, device: torch.device) -> list[float]:
    """(fewest, most) steps any rank ran this epoch: equal by construction, recorded so a checkpoint proves it."""
    low = _all_reduce([float(steps)], device, op="min")
    high = _all_reduce([-float(steps)], device, op="min")
    return [low[0], -high[0]]
