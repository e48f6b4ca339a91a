"""Training, pure torch: a step, an epoch, accuracy, in-memory batches. Plus the Ray Train worker function.

The pure functions are what the BN study and the tests call directly; `ray_worker` wraps them for Ray Train
(DDP over N workers, a checkpoint every epoch, resume from the latest). The worker is written so that GPU
training cannot hang: every collective runs on the worker's device (NCCL rejects CPU tensors), every rank
runs the same number of steps (no DDP join, which does not support SyncBatchNorm's collectives), and the
per-epoch probe runs the same batches on every rank or on none.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedlib.config import Config, config_from_json
from embedlib.model import Batch, build_model, to_device, unwrap


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def cosface_loss(logits: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """Cosine-softmax with an additive margin (CosFace, Wang et al. 2018): the true family's cosine must beat
    the others by `margin`. `logits` = scale x cosines (EmbeddingNet.classify); margin 0 = normalised softmax."""
    if margin:
        logits = logits - scale * margin * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits, labels)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) over unit embeddings of one batch: every other
    file of the same family is a positive. Anchors without a positive in the batch are skipped (0 if none)."""
    sim = embeddings @ embeddings.T / temperature
    n = len(labels)
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    if not has.any():
        return embeddings.sum() * 0.0
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(dim=1)[has] / n_pos[has]
    return -mean_log_prob_pos.mean()


def retrieval_loss(embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, cfg: Config
                   ) -> torch.Tensor:
    """train.loss: 'softmax' (plain cross-entropy on the cosine logits), 'cosface' (margin train.margin),
    'supcon' (train.supcon_temperature), or 'cosface+supcon' (sum, supcon weighted by train.supcon_weight)."""
    kind = cfg.train.loss
    scale = cfg.model.logit_scale
    if kind == "softmax":
        return F.cross_entropy(logits, labels)
    if kind == "cosface":
        return cosface_loss(logits, labels, scale, cfg.train.margin)
    if kind == "supcon":
        return supcon_loss(embeddings, labels, cfg.train.supcon_temperature)
    if kind == "cosface+supcon":
        return (cosface_loss(logits, labels, scale, cfg.train.margin)
                + cfg.train.supcon_weight * supcon_loss(embeddings, labels, cfg.train.supcon_temperature))
    raise ValueError(f"unknown train.loss {kind!r}")


def train_step(model: nn.Module, views: Batch, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               cfg: Config | None = None) -> tuple[float, int]:
    """One optimizer step in train mode. Without `cfg` the loss is plain cross-entropy on the cosine logits,
    else train.loss (retrieval_loss). Returns (summed loss, correct count) for the batch."""
    model.train()
    emb, logits = model(views)
    loss = F.cross_entropy(logits, labels) if cfg is None else retrieval_loss(emb, logits, labels, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item() * len(labels), int((logits.argmax(1) == labels).sum())


def train_epoch(model: nn.Module, batches: Iterable[tuple[Batch, torch.Tensor]], optimizer: torch.optim.Optimizer,
                cfg: Config | None = None, scheduler: Any | None = None) -> dict[str, float]:
    """Train over `batches`; returns mean loss and train-mode accuracy (batch statistics, as training sees it).
    `scheduler` (if any) steps once per batch."""
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for views, labels in batches:
        loss, ok = train_step(model, views, labels, optimizer, cfg)
        if scheduler is not None:
            scheduler.step()
        total_loss += loss
        correct += ok
        seen += len(labels)
        steps += 1
    return {"loss": total_loss / max(seen, 1), "train_mode_accuracy": correct / max(seen, 1), "steps": steps,
            "samples": seen, "loss_sum": total_loss, "correct": correct}


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int):
    """train.schedule: 'onecycle' (warm-up then cosine annealing over the whole training), or None."""
    if cfg.train.schedule != "onecycle" or total_steps < 2:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr, total_steps=total_steps)


def pk_batches(labels: np.ndarray, families_per_batch: int, files_per_family: int, seed: int) -> list[np.ndarray]:
    """P x K batches for one epoch (indices into `labels`): P families per batch, K files of each.

    Every file is used about once per epoch: each family's files are shuffled and cut into groups of K (a
    family with fewer than K files repeats some, a last short group is topped up from the family's start);
    the groups are then shuffled and dealt P per batch, never two groups of one family in a batch. Such
    batches are deliberately not i.i.d.: they are what contrastive losses need, and what bends BatchNorm's
    running statistics (precise BN recomputes them over shuffled data afterwards)."""
    rng = np.random.default_rng(seed)
    groups: list[tuple[int, np.ndarray]] = []
    for fam in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == fam))
        if len(idx) < files_per_family:
            idx = np.concatenate([idx, rng.choice(idx, files_per_family - len(idx))])
        n_groups = -(-len(idx) // files_per_family)
        padded = np.concatenate([idx, idx[: n_groups * files_per_family - len(idx)]])
        groups += [(int(fam), g) for g in padded.reshape(n_groups, files_per_family)]
    order = rng.permutation(len(groups))
    batches: list[np.ndarray] = []
    pending: list[tuple[int, np.ndarray]] = [groups[i] for i in order]
    while pending:
        batch, used, rest = [], set(), []
        for fam, g in pending:
            if len(batch) < families_per_batch and fam not in used:
                batch.append(g)
                used.add(fam)
            else:
                rest.append((fam, g))
        if len(batch) < 2:  # only one family left: no negatives in such a batch
            break
        batches.append(np.concatenate(batch))
        pending = rest
    return batches


def correct_count(model: nn.Module, batches: Iterable[tuple[Batch, torch.Tensor]], train_mode: bool) -> tuple[int, int]:
    """(correct, seen) with BN in train mode (batch statistics; buffers restored after) or eval mode."""
    net = unwrap(model)
    was = net.training
    saved = {k: v.clone() for k, v in net.state_dict().items()} if train_mode else None
    net.train(train_mode)
    correct = seen = 0
    with torch.no_grad():
        for views, labels in batches:
            _, logits = net(views)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    if saved is not None:
        net.load_state_dict(saved)
    net.train(was)
    return correct, seen


def accuracy(model: nn.Module, batches: Iterable[tuple[Batch, torch.Tensor]], train_mode: bool) -> float:
    correct, seen = correct_count(model, batches, train_mode)
    return correct / max(seen, 1)


def batches_of(views: np.ndarray | dict[str, np.ndarray], labels: np.ndarray, batch_size: int, shuffle: bool = False,
               seed: int = 0, drop_last: bool = False) -> Iterator[tuple[Batch, torch.Tensor]]:
    """In-memory batches of views (a dict of arrays [N, ...], or one image array [N, H, W]) and int labels;
    shuffled so BN sees mixed families. drop_last keeps a batch of 1 away from BatchNorm."""
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        batch = ({k: torch.from_numpy(v[idx]) for k, v in views.items()} if isinstance(views, dict)
                 else torch.from_numpy(views[idx]))
        yield batch, torch.from_numpy(labels[idx]).long()


# ---------------------------------------------------------------------------------------------------
# Ray Train worker. Imported by ray_io inside the worker; touches ray.train only here.
# ---------------------------------------------------------------------------------------------------

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


def new_model(cfg: Config, n_classes: int, document_frequency: dict | None = None) -> nn.Module:
    """The network for cfg's views, its sketches' IDF set from the training files' document frequencies
    ({view: (df per bucket, number of files)}, training.document_frequencies)."""
    from embedlib.views import view_specs

    model = build_model(cfg.model, n_classes, view_specs(cfg))
    for view, (df, n_docs) in (document_frequency or {}).items():
        model.set_document_frequency(view, df, n_docs)
    return model


def batch_rows(cfg: Config) -> int:
    """Rows per training batch and rank: train.batch_size, or P x K with the pk sampler."""
    return cfg.train.pk_families * cfg.train.pk_files if cfg.train.sampler == "pk" else cfg.train.batch_size


def uses_logits(cfg: Config) -> bool:
    """Whether train.loss reads the classifier (class directions): supcon alone trains the embedding only."""
    return cfg.train.loss != "supcon"


def ray_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train loop: DDP (SyncBatchNorm only on GPUs), equal steps on every rank, a checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    from embedlib.dataset import epoch_shares, rows_per_rank, shuffled_batches, steps_per_epoch

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
        loss_sum, correct, samples, steps_min, steps_max = _all_reduce(
            [stats["loss_sum"], stats["correct"], stats["samples"]], device) + _steps_range(stats["steps"], device)
        metrics = {"epoch": epoch, "steps": int(steps_max), "steps_min_rank": int(steps_min), "world": world,
                   "rows_per_rank": rows_per_rank(corpus, world), "batch_rows": bs,
                   "samples_all_ranks": int(samples), "loss": loss_sum / max(samples, 1),
                   "train_mode_accuracy": correct / max(samples, 1)}
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


def describe_epoch(m: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {int(m['epoch']) + 1:>3}/{epochs}  loss {m['loss']:.4f}  train-mode acc "
            f"{m['train_mode_accuracy']:.3f}")
    if "probe_eval_mode_accuracy" in m:
        line += (f"  probe ({m['probe_files']} files): train-mode {m['probe_train_mode_accuracy']:.3f} "
                 f"eval-mode {m['probe_eval_mode_accuracy']:.3f}")
    return line + f"  ({m.get('seconds', 0):.0f} s, {m['samples_all_ranks']} samples)"
