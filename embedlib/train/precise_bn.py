"""Precise BatchNorm: replace moving-average running statistics by exact population statistics.

After training, each BN layer's running mean/var should be the mean/var of that layer's input over the
corpus *as the eval-mode network computes it*. We compute them layer by layer in eval mode: layer k is
measured with layers < k already recalibrated, so every layer's input is a per-sample function and the
result does not depend on how the data is split into batches (unlike one train-mode pass, where layer
k's input depends on the batch statistics of earlier layers). Layers that do not feed each other (the
k-th BN layer of each view's encoder: model.bn_stages) are measured in the same pass, so the default model's
three sketch encoders cost one pass over the data, not three. A forward pass stops once the layers being
measured have seen the batch.

Each batch is reduced on its own device in float32 (per-channel mean and M2, no copy of the activations);
batches and workers are merged with Chan et al.'s parallel update in float64, so partial results from many
Ray tasks (or uneven batches) combine exactly: `Moments.merge`. `recalibrate` takes the measuring function
as an argument: `local_measure` streams batches in this process, ray_io measures data blocks in Ray tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from embedlib.model.network import Batch, batch_norms, to_device, unwrap


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
        """Add a BN input [N, C, *spatial]: every element of channel c is one observation of c. Reduced where
        x lives, in float32; only the per-channel results are moved and widened."""
        dims = [0, *range(2, x.dim())]
        n = x.numel() // max(x.shape[1], 1)
        if n == 0:
            return
        var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=0)
        self.merge(Moments(self.channels, n, mean.double().cpu(), (var.double() * n).cpu()))

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

    def to_state(self) -> dict:
        """Plain tensors, for shipping between processes."""
        return {"channels": self.channels, "count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state: dict) -> "Moments":
        return cls(state["channels"], state["count"], state["mean"], state["m2"])


class _StopForward(Exception):
    """Raised by the measuring hook: nothing after the measured layer needs computing."""


def layer_by_name(model: nn.Module, name: str) -> nn.modules.batchnorm._BatchNorm:
    return dict(batch_norms(model))[name]


def layer_moments(model: nn.Module, layer_names: str | list[str], batches: Iterable[Batch],
                  device: torch.device | str = "cpu") -> dict[str, Moments]:
    """Moments of the input of each BN layer in `layer_names` over `batches`, running `model` in eval mode, in
    one pass. The layers must be independent (none feeds another: e.g. the k-th BN layer of each view's
    encoder, model.bn_stages); a forward pass stops as soon as every one of them has seen the batch."""
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    net = unwrap(model)
    moments = {n: Moments(layer_by_name(net, n).num_features) for n in names}
    seen: set[str] = set()

    def hook_for(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            moments[name].add(inputs[0])
            seen.add(name)
            if len(seen) == len(names):
                raise _StopForward

        return hook

    was_training = net.training
    net.eval()
    handles = [layer_by_name(net, n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        with torch.inference_mode():
            for batch in batches:
                seen.clear()
                try:
                    net(to_device(batch, device))
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return moments


def stat_distance(old_mean: torch.Tensor, old_var: torch.Tensor, new_mean: torch.Tensor,
                  new_var: torch.Tensor) -> dict[str, float]:
    """How far running statistics are from precise ones, in units that mean the same in every layer:
    mean shift in precise standard deviations, and the mean absolute log ratio of variances."""
    std = new_var.clamp_min(1e-12).sqrt()
    mean_shift = ((old_mean - new_mean).abs() / std).mean().item()
    log_var_ratio = (old_var.clamp_min(1e-12).log() - new_var.clamp_min(1e-12).log()).abs().mean().item()
    return {"mean_shift_in_std": round(mean_shift, 6), "abs_log_var_ratio": round(log_var_ratio, 6)}


# measure(model, layer names) -> {name: Moments of that layer's input over the whole data}, model in eval mode;
# the layers of one call are independent of each other (one stage of model.bn_stages)
Measure = Callable[[nn.Module, list[str]], dict[str, Moments]]


def local_measure(make_batches: Callable[[], Iterable[Batch]], device: torch.device | str = "cpu") -> Measure:
    """Measure by streaming `make_batches()` through the model in this process (called once per stage)."""
    return lambda model, names: layer_moments(model, names, make_batches(), device)


def recalibrate(model: nn.Module, measure: Measure, apply: bool = True,
                on_layer: Callable[[str, dict], None] | None = None) -> dict[str, dict[str, float]]:
    """Recompute every BN layer's running mean/var, stage by stage (model.bn_stages: layers that do not feed
    each other are measured in the same pass over the data), with `measure`. With apply=False the model is
    left unchanged and only the report (per layer: distance of running stats from precise ones, values seen
    per channel) is returned. Labels are never needed: any unlabelled corpus will do."""
    from embedlib.model.network import bn_stages

    net = unwrap(model)
    report: dict[str, dict[str, float]] = {}
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    layers = dict(batch_norms(net))
    try:
        for stage in bn_stages(net):
            measured = measure(net, stage)
            for name in stage:  # applied after the whole stage is measured: its layers do not see each other
                moments, bn = measured[name], layers[name]
                if moments.count == 0:
                    raise ValueError("precise BN saw no data: the batch iterator was empty")
                report[name] = {
                    **stat_distance(bn.running_mean.cpu().double(), bn.running_var.cpu().double(),
                                    moments.mean, moments.variance()),
                    "values_per_channel": moments.count,
                }
                if on_layer:
                    on_layer(name, report[name])
                saved[name] = (bn.running_mean.clone(), bn.running_var.clone())
                # Later stages must be measured with this one already precise (eval mode uses running stats).
                bn.running_mean.copy_(moments.mean.to(bn.running_mean.device, bn.running_mean.dtype))
                bn.running_var.copy_(moments.variance().to(bn.running_var.device, bn.running_var.dtype))
    finally:
        if not apply:
            for name, bn in batch_norms(net):
                if name in saved:
                    bn.running_mean.copy_(saved[name][0])
                    bn.running_var.copy_(saved[name][1])
    return {name: report[name] for name in layers if name in report}


def precise_statistics(model: nn.Module, make_batches: Callable[[], Iterable[Batch]],
                       device: torch.device | str = "cpu", apply: bool = True) -> dict[str, dict[str, float]]:
    """`recalibrate` over batches streamed in this process. `make_batches()` is called once per BN layer and
    must yield the same samples each time, in any batch split."""
    return recalibrate(model, local_measure(make_batches, device), apply=apply)
