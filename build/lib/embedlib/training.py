"""What the training job does around Ray Train: the split, the labels, precise BN, the health report.

Pure where it can be (the split and the label maps are functions of sha256 and family only).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import fsspec
import torch

from embedlib.config import Config


def bucket(sha256: str, salt: str = "holdout") -> float:
    """A stable pseudo-random number in [0, 1) from a file's identity: the same split on every machine."""
    return int(hashlib.sha256(f"{salt}:{sha256}".encode()).hexdigest()[:12], 16) / 16**12


@dataclass(frozen=True)
class Split:
    families: list[str]  # class index -> family name
    train: dict[str, int]  # sha256 -> class index
    holdout: dict[str, int]
    probe: dict[str, int]  # a subset of train, for per-epoch eval-mode accuracy and the BN health report


def make_split(sha256s: list[str], families: list[str | None], cfg: Config) -> Split:
    """Held-out files by hash; classes are families with at least train.min_family_size training files."""
    is_holdout = {s: bucket(s) < cfg.train.holdout_fraction for s in sha256s}
    train_counts = Counter(f for s, f in zip(sha256s, families) if f and not is_holdout[s])
    classes = sorted(f for f, n in train_counts.items() if n >= cfg.train.min_family_size)
    index = {f: i for i, f in enumerate(classes)}
    train, holdout = {}, {}
    for s, f in zip(sha256s, families):
        if f in index:
            (holdout if is_holdout[s] else train)[s] = index[f]
    probe_keys = sorted(train, key=lambda s: bucket(s, "probe"))[: cfg.train.probe_samples]
    return Split(classes, train, holdout, {s: train[s] for s in probe_keys})


def load_images(samples_root: str, wanted: dict[str, int] | None, size: int,
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels and sha256s of the samples whose sha256 is in `wanted` (all when None), in memory."""
    images, labels, shas = [], [], []
    for sha, img, label in _scan(samples_root, wanted):
        images.append(np.frombuffer(img, dtype=np.uint8).reshape(size, size))
        labels.append(label)
        shas.append(sha)
        if limit and len(images) >= limit:
            break
    if not images:
        return np.zeros((0, size, size), np.uint8), np.zeros(0, np.int64), []
    return np.stack(images), np.asarray(labels, dtype=np.int64), shas


def _scan(samples_root: str, wanted: dict[str, int] | None) -> Iterator[tuple[str, bytes, int]]:
    fs, path = fsspec.core.url_to_fs(samples_root.rstrip("/") + "/samples")
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    for batch in dataset.to_batches(columns=["sha256", "image"], batch_size=1024):
        for sha, img in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if wanted is None or sha in wanted:
                yield sha, img, (wanted or {}).get(sha, -1)


def image_batches(samples_root: str, size: int, batch_size: int, max_samples: int,
                  wanted: dict[str, int] | None = None) -> Callable[[], Iterator[torch.Tensor]]:
    """A re-iterable stream of uint8 image batches over the samples table (for precise BN: no labels)."""

    def make() -> Iterator[torch.Tensor]:
        buf: list[np.ndarray] = []
        n = 0
        for _sha, img, _ in _scan(samples_root, wanted):
            buf.append(np.frombuffer(img, dtype=np.uint8).reshape(size, size))
            n += 1
            if len(buf) == batch_size:
                yield torch.from_numpy(np.stack(buf))
                buf = []
            if n >= max_samples:
                break
        if buf:
            yield torch.from_numpy(np.stack(buf))

    return make


def family_table(samples_root: str) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(samples_root.rstrip("/") + "/samples")
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["sha256", "family"])


def calibrate_and_check(model: torch.nn.Module, cfg: Config, samples_root: str, split: Split) -> dict:
    """Health before, precise BN over the corpus, health after, held-out accuracy: the checkpoint's metrics.

    The health report that gates embedding is the one *after* recalibration; the one before is kept so the
    gap that precise BN closed stays visible.
    """
    from embedlib import health, precise_bn
    from embedlib.model import batch_norms
    from embedlib.train_loop import accuracy, batches_of

    size, bs = cfg.raster.size, cfg.train.batch_size
    probe_images, probe_labels, _ = load_images(samples_root, split.probe, size)
    probe = list(batches_of(probe_images, probe_labels, bs, shuffle=True, seed=cfg.train.seed))
    out: dict = {"bn_health_before_precise_bn": health.bn_health(model, probe, cfg.health)}
    if cfg.train.precise_bn and batch_norms(model):
        # Training files only: held-out accuracy must not use statistics computed on held-out images.
        stream = image_batches(samples_root, size, max(bs, 256), cfg.train.precise_bn_max_samples, split.train)
        out["precise_bn"] = {"layers": precise_bn.precise_statistics(model, stream),
                             "max_samples": cfg.train.precise_bn_max_samples}
    out["bn_health"] = health.bn_health(model, probe, cfg.health)
    hold_images, hold_labels, _ = load_images(samples_root, split.holdout, size)
    out["holdout_files"] = int(len(hold_labels))
    if len(hold_labels):
        out["holdout_eval_mode_accuracy"] = accuracy(model, batches_of(hold_images, hold_labels, bs), train_mode=False)
    return out
