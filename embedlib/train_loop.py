"""Training, pure torch: one epoch, evaluation, batch helpers. Plus the thin Ray Train worker function.

The pure functions are what the BN study and the tests call directly; `ray_worker` wraps them for
Ray Train (DDP over N workers, checkpoint every epoch, resume from the latest).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedlib.config import Config, config_from_json
from embedlib.model import build_model, unwrap


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


def train_step(model: nn.Module, images: Any, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               cfg: Config | None = None) -> tuple[float, int]:
    """One step in train mode on a batch (a tensor of images, or a dict of view tensors). Without `cfg` the
    loss is plain cross-entropy on the cosine logits. Returns (summed loss, correct count) for the batch."""
    model.train()
    emb, logits = model(images)
    loss = F.cross_entropy(logits, labels) if cfg is None else retrieval_loss(emb, logits, labels, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item() * len(labels), int((logits.argmax(1) == labels).sum())


def train_epoch(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]],
                optimizer: torch.optim.Optimizer, cfg: Config | None = None,
                scheduler: Any | None = None) -> dict[str, float]:
    """Train over `batches`; returns mean loss and train-mode accuracy (batch statistics, as training sees it).
    `scheduler` (if any) steps once per batch."""
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for images, labels in batches:
        loss, ok = train_step(model, images, labels, optimizer, cfg)
        if scheduler is not None:
            scheduler.step()
        total_loss += loss
        correct += ok
        seen += len(labels)
        steps += 1
    return {"loss": total_loss / max(seen, 1), "train_mode_accuracy": correct / max(seen, 1), "steps": steps,
            "samples": seen}


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


def accuracy(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], train_mode: bool) -> float:
    """Accuracy with BN in train mode (batch statistics, buffers left untouched) or eval mode (running stats)."""
    net = unwrap(model)
    was = net.training
    saved = {k: v.clone() for k, v in net.state_dict().items()} if train_mode else None
    net.train(train_mode)
    correct = seen = 0
    with torch.no_grad():
        for images, labels in batches:
            _, logits = net(images)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    if saved is not None:
        net.load_state_dict(saved)
    net.train(was)
    return correct / max(seen, 1)


def batches_of(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
               seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-memory batches (uint8 images [N, H, W], int labels [N]); shuffled so BN sees mixed families."""
    order = np.random.default_rng(seed).permutation(len(images)) if shuffle else np.arange(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]).long()


# ---------------------------------------------------------------------------------------------------
# Ray Train worker. Imported lazily by ray_io; touches ray.train only inside.
# ---------------------------------------------------------------------------------------------------

def _decode(batch: dict[str, Any], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(size, size) for b in batch["image"]])
    return torch.from_numpy(images), torch.as_tensor(batch["label"]).long()


def _sum_over_ranks(value: int) -> int:
    """Total over all workers: proves no row was dropped to even out the shards."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


def ray_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train loop: DDP (SyncBatchNorm only on GPUs), uneven shards via DDP join, checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    cfg = config_from_json(loop_config["config"])
    size = cfg.raster.size
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    set_seed(cfg.train.seed + rank)
    model = build_model(cfg.model, len(loop_config["families"]))
    if cfg.train.use_gpu and world > 1 and cfg.model.norm.startswith("batch"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # raises on CPU: GPU only
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(model, cfg)

    start_epoch = 0
    history: list[dict[str, Any]] = []  # rank 0's per-epoch metrics, kept in the checkpoint across resumes
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        history = state.get("history", [])

    shard = ray.train.get_dataset_shard("train")
    probe = ray.train.get_dataset_shard("probe") if rank == 0 else None
    for epoch in range(start_epoch, cfg.train.epochs):
        batches = (
            tuple(t.to(device) for t in _decode(b, size))
            for b in shard.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy")
        )
        join = model.join() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()
        with join:  # shards may differ by a few rows: ranks that finish early shadow the others' all-reduces
            stats = train_epoch(model, batches, optimizer)
        metrics = {"epoch": epoch, "rank": rank, **stats, "samples_all_ranks": _sum_over_ranks(stats["samples"])}
        if rank == 0 and probe is not None:
            probe_batches = [tuple(t.to(device) for t in _decode(b, size))
                             for b in probe.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy")]
            metrics["probe_train_mode_accuracy"] = accuracy(model, probe_batches, train_mode=True)
            metrics["probe_eval_mode_accuracy"] = accuracy(model, probe_batches, train_mode=False)
        if rank == 0:
            history.append(metrics)
            with tempfile.TemporaryDirectory() as d:
                buf = io.BytesIO()
                torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": epoch, "history": history}, buf)
                with open(os.path.join(d, "state.pt"), "wb") as fh:
                    fh.write(buf.getvalue())
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
