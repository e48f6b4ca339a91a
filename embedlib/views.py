"""Bytes -> the model's input views: named fixed-shape arrays. Pure: no I/O, bounded work on hostile input.

Every stage that feeds the network (the embedding job, the rasterized training corpus, the query CLI's
--file) computes views here and only here, so training and inference see the same inputs. The views
version names the settings that shape them: two tables agree on it only if their inputs are comparable.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from embedlib import raster
from embedlib.config import Config


def view_specs(cfg: Config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of each view, for decoding stored bytes back into arrays."""
    size = cfg.raster.size
    return {"image": ((size, size), np.dtype(np.uint8))}


def compute_views(data: bytes, cfg: Config) -> dict[str, np.ndarray]:
    """The views of one file's (bounded) bytes. Raises ValueError for input that has none (empty)."""
    return {"image": raster.to_image(data, cfg.raster.size)}


def views_version(cfg: Config) -> str:
    """A short id of everything that changes the views: raster settings and the bytes read per file."""
    settings = {"raster": cfg.to_dict()["raster"], "max_bytes": cfg.input.max_bytes, "views": sorted(view_specs(cfg))}
    return "v-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def encode(views: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: np.ascontiguousarray(arr).tobytes() for name, arr in views.items()}


def decode_column(blobs: list[bytes], name: str, cfg: Config) -> np.ndarray:
    """A column of stored view bytes -> array [B, *shape]."""
    shape, dtype = view_specs(cfg)[name]
    if not blobs:
        return np.zeros((0, *shape), dtype=dtype)
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), *shape)


def stack(rows: list[dict[str, np.ndarray]], cfg: Config) -> dict[str, np.ndarray]:
    """Per-file views -> batched arrays [B, *shape] per view."""
    specs = view_specs(cfg)
    if not rows:
        return {name: np.zeros((0, *shape), dtype=dtype) for name, (shape, dtype) in specs.items()}
    return {name: np.stack([r[name] for r in rows]) for name in specs}
