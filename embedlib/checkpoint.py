"""Checkpoints: `model.pt` (state dict) + `meta.json` (config, families, metrics, BN health, version).

Written through fsspec, so a checkpoint can live on local disk, s3:// or gs://. The model version id is a
hash of the weights and the settings that change images, so two embedding tables agree on it only if
their vectors are comparable.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import torch

from embedlib import __version__, schema
from embedlib.config import Config, config_from_json
from embedlib.model import ByteplotNet, build_model, unwrap
from embedlib.views import view_specs

WEIGHTS = "model.pt"
META = "meta.json"


@dataclass
class Checkpoint:
    model: ByteplotNet
    config: Config
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    @property
    def families(self) -> list[str]:
        return self.meta["families"]


def _weights_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(unwrap(model).state_dict(), buf)
    return buf.getvalue()


def model_version(weights: bytes, cfg: Config) -> str:
    settings = cfg.to_dict()
    h = hashlib.sha256(weights)
    h.update(json.dumps({"raster": settings["raster"], "views": settings["views"], "model": settings["model"]},
                        sort_keys=True).encode())
    return "m-" + h.hexdigest()[:16]


def save(uri: str, model: torch.nn.Module, cfg: Config, families: list[str], extra: dict[str, Any]) -> dict:
    """Write weights + meta.json under directory `uri`; returns the meta written."""
    weights = _weights_bytes(model)
    meta = {
        "model_version": model_version(weights, cfg),
        "created_unix": int(time.time()),
        "embedlib_version": __version__,
        "schema_version": schema.SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "raster_size": cfg.raster.size,
        "embedding_dim": cfg.model.embedding_dim,
        "norm": cfg.model.norm,
        "families": families,
        **extra,
    }
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{WEIGHTS}", "wb") as fh:
        fh.write(weights)
    with fs.open(f"{root}/{META}", "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    return meta


def load(uri: str, map_location: str = "cpu") -> Checkpoint:
    fs, root = fsspec.core.url_to_fs(uri)
    with fs.open(f"{root}/{META}", "r") as fh:
        meta = json.load(fh)
    saved = dict(meta["config"])
    if "views" not in saved:  # checkpoints from before views existed saw the byteplot only
        saved["views"] = {"names": ["image"]}
    cfg = config_from_json(saved)
    model = build_model(cfg.model, len(meta["families"]), view_specs(cfg))
    with fs.open(f"{root}/{WEIGHTS}", "rb") as fh:
        state = torch.load(io.BytesIO(fh.read()), map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model, cfg, meta)


def update_meta(uri: str, updates: dict[str, Any]) -> dict:
    """Rewrite meta.json with `updates` merged in (e.g. after recalibration)."""
    fs, root = fsspec.core.url_to_fs(uri)
    with fs.open(f"{root}/{META}", "r") as fh:
        meta = json.load(fh)
    meta.update(updates)
    with fs.open(f"{root}/{META}", "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    return meta
