"""Training, pure torch: a step, an epoch, the losses, accuracy, in-memory batches, the network for a config.

What the BN study and the tests call directly, and what the Ray Train worker (embedlib.ray_io.train) runs on
every rank. No Ray here.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedlib.config import Config
from embedlib.model.network import Batch, build_model, unwrap


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


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two unit embeddings of the same files: row i of `a` must find row i of `b` among
    the batch (and back); the batch's other files are the negatives."""
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def is_sketch(v: torch.Tensor) -> bool:
    """Hashed item counts [B, buckets] (uint8): the views a sub-sample thins (a byteplot is [B, H, W])."""
    return v.dtype == torch.uint8 and v.ndim == 2


def subsample(views: Batch, keep: float, generator: torch.Generator | None = None) -> Batch:
    """Each sketch bucket of each row kept with probability `keep` (independently), other views unchanged: a random
    sub-sample of the file's strings, names and words, as another build of the same program might show."""
    views = views if isinstance(views, dict) else {"image": views}
    return {k: v * (torch.rand(v.shape, generator=generator, device=v.device) < keep).to(v.dtype) if is_sketch(v)
            else v for k, v in views.items()}


def self_supervised(cfg: Config | None) -> bool:
    """Whether training reads unlabelled rows with the InfoNCE term (the trainer resolves train.self_supervised's
    'auto' from the corpus before training)."""
    return cfg is not None and cfg.train.self_supervised == "true"


def self_supervised_loss(model: nn.Module, views: Batch, labels: torch.Tensor, cfg: Config
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of the first sub-sample): two random sub-samples of every file in one forward pass (so
    BatchNorm and DDP see one batch), InfoNCE between their learned parts (the embedding without its fixed,
    training-free dimensions; train.ssl_weight), plus train.loss on the labelled rows (label >= 0) of both when
    there are at least 2 classes."""
    n = len(labels)
    a, b = subsample(views, cfg.train.ssl_keep), subsample(views, cfg.train.ssl_keep)
    emb, logits = model({k: torch.cat([a[k], b[k]]) for k in a})
    learned = F.normalize(emb[:, : emb.shape[1] - getattr(unwrap(model), "concat_dim", 0)], dim=1)
    loss = cfg.train.ssl_weight * info_nce(learned[:n], learned[n:], cfg.train.ssl_temperature)
    both = torch.cat([labels, labels])
    labelled = both >= 0
    if labelled.any() and logits.shape[1] >= 2:
        loss = loss + retrieval_loss(emb[labelled], logits[labelled], both[labelled], cfg)
    else:  # no labelled row in this batch: the classifier still takes part (a zero gradient), as DDP expects
        loss = loss + 0.0 * logits.sum()
    return loss, logits[:n]


def correct_of_logits(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Rows whose top class is their label (an unlabelled row, -1, is never correct; no class: 0)."""
    return int((logits.argmax(1) == labels).sum()) if logits.shape[1] else 0


def train_step(model: nn.Module, views: Batch, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               cfg: Config | None = None) -> tuple[float, int]:
    """One optimizer step in train mode. Without `cfg` the loss is plain cross-entropy on the cosine logits,
    else train.loss (retrieval_loss), or with self-supervision self_supervised_loss. Returns (summed loss,
    correct count) for the batch."""
    model.train()
    if self_supervised(cfg):
        loss, logits = self_supervised_loss(model, views, labels, cfg)
    else:
        emb, logits = model(views)
        loss = F.cross_entropy(logits, labels) if cfg is None else retrieval_loss(emb, logits, labels, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item() * len(labels), correct_of_logits(logits, labels)


def train_epoch(model: nn.Module, batches: Iterable[tuple[Batch, torch.Tensor]], optimizer: torch.optim.Optimizer,
                cfg: Config | None = None, scheduler: Any | None = None) -> dict[str, float]:
    """Train over `batches`; returns mean loss and train-mode accuracy (batch statistics, as training sees it).
    `scheduler` (if any) steps once per batch."""
    total_loss, correct, seen, labelled, steps = 0.0, 0, 0, 0, 0
    for views, labels in batches:
        loss, ok = train_step(model, views, labels, optimizer, cfg)
        if scheduler is not None:
            scheduler.step()
        total_loss += loss
        correct += ok
        seen += len(labels)
        labelled += int((labels >= 0).sum())
        steps += 1
    return {"loss": total_loss / max(seen, 1), "train_mode_accuracy": correct / max(labelled, 1), "steps": steps,
            "samples": seen, "labelled": labelled, "loss_sum": total_loss, "correct": correct}


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int):
    """train.schedule: 'onecycle' (warm-up then cosine annealing over the whole training), or None."""
    if cfg.train.schedule != "onecycle" or total_steps < 2:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr, total_steps=total_steps)


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
            correct += correct_of_logits(logits, labels)
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


def new_model(cfg: Config, n_classes: int, document_frequency: dict | None = None) -> nn.Module:
    """The network for cfg's views, its sketches' IDF set from the training files' document frequencies
    ({view: (df per bucket, number of files)}, training.document_frequencies)."""
    from embedlib.views import view_specs

    model = build_model(cfg.model, n_classes, view_specs(cfg), cfg.views.token_id_bits)
    for view, (df, n_docs) in (document_frequency or {}).items():
        model.set_document_frequency(view, df, n_docs)
    return model


def batch_rows(cfg: Config) -> int:
    """Rows per training batch and rank: train.batch_size, or P x K with the pk sampler."""
    return cfg.train.pk_families * cfg.train.pk_files if cfg.train.sampler == "pk" else cfg.train.batch_size


def uses_logits(cfg: Config) -> bool:
    """Whether every step's loss reads the classifier (class directions): supcon alone trains the embedding only
    (self_supervised_loss reads it on every batch, with a zero gradient where no row is labelled)."""
    return cfg.train.loss != "supcon"


def describe_epoch(m: dict[str, Any], epochs: int) -> str:
    line = f"epoch {int(m['epoch']) + 1:>3}/{epochs}  loss {m['loss']:.4f}"
    if m.get("labelled_all_ranks", 1):
        line += f"  train-mode acc {m['train_mode_accuracy']:.3f}"
    if "probe_eval_mode_accuracy" in m:
        line += (f"  probe ({m['probe_files']} files): train-mode {m['probe_train_mode_accuracy']:.3f} "
                 f"eval-mode {m['probe_eval_mode_accuracy']:.3f}")
    return line + f"  ({m.get('seconds', 0):.0f} s, {m['samples_all_ranks']} samples)"
