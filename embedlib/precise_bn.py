"""Precise BatchNorm: replace moving-average running statistics by exact population statistics.

After training, each BN layer's running mean/var should be the mean/var of that layer's input over the
corpus *as the eval-mode network computes it*. We compute them layer by layer in eval mode: layer k is
measured with layers < k already recalibrated, so every layer's input is a per-sample function and the
result does not depend on how the data is split into batches (unlike one train-mode pass, where layer
k's input depends on the batch statistics of earlier layers). A forward pass stops at the layer being
measured, so the L passes cost about one full forward per layer's prefix.

Statistics are merged with Chan et al.'s parallel update in float64, so partial results from many
workers (or uneven batches) combine exactly: `Moments.merge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from embedlib.model import batch_norms, unwrap


@dataclass
class Moments:
    """Per-channel count, mean and sum of squared deviations (M2), in float64."""

    channels: int
    count: int = 0
    mean: torch.Tensor = field(default=None)  # type: ignore[assignment]
    m2: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = torch.zeros(self.channels, dtype=torch.float64)
            self.m2 = torch.zeros(self.channels, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Add a BN input [N, C, *spatial]: every element of channel c is one observation of c."""
        flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64).cpu()
        n = flat.shape[1]
        if n == 0:
            return
        mean = flat.mean(dim=1)
        m2 = ((flat - mean[:, None]) ** 2).sum(dim=1)
        self.merge(Moments(self.channels, n, mean, m2))

    def merge(self, other: "Moments") -> None:
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total

    def variance(self, unbiased: bool = True) -> torch.Tensor:
        """Unbiased by default: PyTorch's running_var convention."""
        denom = self.count - 1 if unbiased else self.count
        return self.m2 / max(denom, 1)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """A batch of model inputs (a tensor, or a dict of view tensors) on `device`."""
    if isinstance(batch, Mapping):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


class _StopForward(Exception):
    """Raised by the measuring hook: nothing after the measured layer needs computing."""


def layer_moments(
    model: nn.Module, layer: nn.Module, batches: Iterable[Any], device: torch.device | str = "cpu"
) -> tuple[Moments, int]:
    """Moments of `layer`'s input over `batches`, running `model` in eval mode. Returns (moments, batches)."""
    moments = Moments(layer.num_features)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        moments.add(inputs[0])
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    n_batches = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                n_batches += 1
                try:
                    model(to_device(batch, device))
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return moments, n_batches


def stat_distance(old_mean: torch.Tensor, old_var: torch.Tensor, new_mean: torch.Tensor,
                  new_var: torch.Tensor) -> dict[str, float]:
    """How far running statistics are from precise ones, in units that mean the same in every layer:
    mean shift in precise standard deviations, and the mean absolute log ratio of variances."""
    std = new_var.clamp_min(1e-12).sqrt()
    mean_shift = ((old_mean - new_mean).abs() / std).mean().item()
    log_var_ratio = (old_var.clamp_min(1e-12).log() - new_var.clamp_min(1e-12).log()).abs().mean().item()
    return {"mean_shift_in_std": round(mean_shift, 6), "abs_log_var_ratio": round(log_var_ratio, 6)}


def precise_statistics(
    model: nn.Module, make_batches: Callable[[], Iterable[Any]], device: torch.device | str = "cpu",
    apply: bool = True,
) -> dict[str, dict[str, float]]:
    """Recompute every BN layer's running mean/var over `make_batches()` (called once per BN layer; must
    yield the same inputs each time, in any batch split; an input is an image tensor or a dict of views). With apply=False the model is left unchanged and
    only the report (per layer: distance of running stats from precise ones, samples seen) is returned.

    Labels are never needed: this can run over the whole unlabelled corpus.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    report: dict[str, dict[str, float]] = {}
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        for name, bn in batch_norms(net):
            moments, n_batches = layer_moments(net, bn, make_batches(), device)
            if moments.count == 0:
                raise ValueError("precise BN saw no data: the batch iterator was empty")
            new_mean = moments.mean.to(bn.running_mean.dtype)
            new_var = moments.variance().to(bn.running_var.dtype)
            report[name] = {
                **stat_distance(bn.running_mean.cpu().double(), bn.running_var.cpu().double(),
                                moments.mean, moments.variance()),
                "values_per_channel": moments.count,
                "batches": n_batches,
            }
            saved[name] = (bn.running_mean.clone(), bn.running_var.clone())
            # Later layers must be measured with this one already precise (eval mode uses running stats).
            bn.running_mean.copy_(new_mean.to(bn.running_mean.device))
            bn.running_var.copy_(new_var.to(bn.running_var.device))
    finally:
        if not apply:
            for name, bn in batch_norms(net):
                if name in saved:
                    bn.running_mean.copy_(saved[name][0])
                    bn.running_var.copy_(saved[name][1])
        net.train(was_training)
    return report
