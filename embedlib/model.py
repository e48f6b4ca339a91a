"""The byteplot CNN: conv blocks with a configurable norm, an L2-normalised embedding, a cosine classifier.

The classifier scores families by cosine between the embedding and one learned direction per family, so
training shapes exactly the geometry that similarity search later uses.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from embedlib.config import ModelConfig

# What the network eats: a dict of named views (tensors with a leading batch dimension), e.g.
# {"image": uint8 [B, H, W]}; a bare tensor is taken as the "image" view.
Batch = Union[torch.Tensor, dict[str, torch.Tensor]]


def as_views(batch: Batch) -> dict[str, torch.Tensor]:
    return batch if isinstance(batch, dict) else {"image": batch}


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def make_norm(kind: str, channels: int, cfg: ModelConfig) -> nn.Module:
    """The norm layer for one conv block. 'batch-cumulative' is PyTorch's momentum=None: an equal-weight
    average of every batch seen, which converges where a 0.01 moving average has barely moved."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=cfg.bn_momentum)
    if kind == "batch-cumulative":
        return nn.BatchNorm2d(channels, momentum=None)
    if kind == "group":
        return nn.GroupNorm(min(cfg.group_norm_groups, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ByteplotNet(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in cfg.channels:
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=cfg.norm == "none"),
                make_norm(cfg.norm, out_ch, cfg),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.project = nn.Linear(in_ch, cfg.embedding_dim)
        self.class_directions = nn.Parameter(torch.randn(num_classes, cfg.embedding_dim) * 0.01)
        self.logit_scale = cfg.logit_scale

    def embed(self, views: Batch) -> torch.Tensor:
        """Views ({"image": uint8 or float [B, H, W] or [B, 1, H, W], 0..255}) -> unit-norm embeddings [B, D]."""
        x = as_views(views)["image"].float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x / 127.5 - 1.0
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.normalize(self.project(x), dim=1)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * embeddings @ F.normalize(self.class_directions, dim=1).T

    def forward(self, views: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(views)
        return emb, self.classify(emb)


def build_model(cfg: ModelConfig, num_classes: int) -> ByteplotNet:
    return ByteplotNet(cfg, num_classes)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (or any wrapper with .module)."""
    return getattr(model, "module", model)


def batch_norms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
