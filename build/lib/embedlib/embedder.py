"""Embedder: loads a checkpoint once per worker and turns batches of images into embeddings.

Used by the Ray embedding actors (ray_io.EmbedStage) and directly by the query CLI, so both embed identically.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from embedlib import checkpoint, health
from embedlib.config import InputConfig

log = logging.getLogger(__name__)


class UnhealthyModelError(RuntimeError):
    """The checkpoint's BN health report says eval mode disagrees with training."""


def check_health(meta: dict, allow_unhealthy: bool) -> str | None:
    """Refuse (or, when allowed, warn about) a checkpoint whose eval mode disagrees with training.
    Returns the warning text when there is one."""
    report = meta.get("bn_health")
    if report is None:
        text = "checkpoint has no BN health report: its eval-mode agreement with training was never measured"
    elif report.get("healthy"):
        return None
    else:
        text = health.describe(report)
    if not allow_unhealthy:
        raise UnhealthyModelError(
            f"{text}\nRefusing to embed with model {meta.get('model_version')}. Recalibrate it "
            "(python -m jobs.recalibrate) or pass --allow-unhealthy-model to embed anyway."
        )
    banner = "!" * 78
    log.warning("\n%s\nWARNING: embedding with an unhealthy model\n%s\n%s", banner, text, banner)
    return text


class Embedder:
    """A checkpoint's model in eval mode on one device, with the raster size and version it embeds with."""

    def __init__(self, model_uri: str, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        ckpt = checkpoint.load(model_uri, map_location=self.device)
        self.model = ckpt.model.to(self.device).eval()
        self.config = ckpt.config
        self.size = ckpt.config.raster.size
        self.version = ckpt.version
        self.dim = ckpt.config.model.embedding_dim

    def embed_path(self, path: str, input_cfg: InputConfig | None = None) -> np.ndarray:
        """One file, read and rasterized as an embedding run did (pass that run's input settings: its read
        bound decides truncation). Raises ValueError if unreadable."""
        from embedlib import raster, sources

        read = sources.read_file(path, input_cfg or self.config.input)
        if not read.ok:
            raise ValueError(f"cannot embed {path}: {read.status} ({read.reason})")
        return self.embed_images(raster.to_image(read.data, self.size)[None])[0]

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, size, size] -> float32 [B, D] unit vectors."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            return self.model.embed(x).float().cpu().numpy()


def decode_images(column: np.ndarray | list, size: int) -> np.ndarray:
    """A column of raw image bytes -> uint8 [B, size, size]."""
    if len(column) == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    return np.stack([np.frombuffer(b, dtype=np.uint8).reshape(size, size) for b in column])
