"""Checkpoints: `model.pt` (state dict) + `meta.json` (config, families, metrics, BN health, version).

Written through the pipeline's Store (local disk, s3://, gs://), each file atomically, weights first: meta.json
names the sha256 of the weights it belongs to, and `load` refuses a pair that does not match (a save killed
half-way, or files copied from two checkpoints). The model version is a hash of the weights and of the settings
that shape the model's input, so two embedding tables agree on it only if their vectors are comparable.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

from typing import TYPE_CHECKING

from embedlib import __version__, schema
from embedlib.config import Config, config_from_json
from embedlib.errors import UserError

if TYPE_CHECKING:  # torch is imported where weights are touched: checking a --model stays fast
    import torch

    from embedlib.model.network import ByteplotNet

WEIGHTS = "model.pt"
META = "meta.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint folder that cannot be used: missing, incomplete, or its files do not belong together."""


@dataclass
class Checkpoint:
    model: "ByteplotNet"
    config: Config
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    @property
    def families(self) -> list[str]:
        return self.meta["families"]


def _store(uri: str):
    from embedlib.root.store import Store

    return Store(uri, temp=".tmp")


def weights_bytes(model: "torch.nn.Module") -> bytes:
    import torch

    from embedlib.model.network import unwrap

    buf = io.BytesIO()
    torch.save(unwrap(model).state_dict(), buf)
    return buf.getvalue()


def model_version(weights: bytes, cfg: Config) -> str:
    settings = cfg.to_dict()
    h = hashlib.sha256(weights)
    h.update(json.dumps({"raster": settings["raster"], "model": settings["model"]}, sort_keys=True).encode())
    return "m-" + h.hexdigest()[:16]


# the keys save() writes itself; every other key of a checkpoint's meta is its `extra`
SAVE_WRITES = ("model_version", "weights_sha256", "created_unix", "embedlib_version", "schema_version", "config",
               "raster_size", "embedding_dim", "norm", "families")


def extra_of(meta: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint re-saved from `meta` (recalibrated, re-gated) carries over: all save() does not write."""
    return {k: v for k, v in meta.items() if k not in SAVE_WRITES}


def save(uri: str, model: "torch.nn.Module", cfg: Config, families: list[str], extra: dict[str, Any]) -> dict:
    """Write weights, then meta.json, under folder `uri`; returns the meta written."""
    weights = weights_bytes(model)
    meta = {
        **extra,
        "model_version": model_version(weights, cfg),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "created_unix": int(time.time()),
        "embedlib_version": __version__,
        "schema_version": schema.SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "raster_size": cfg.raster.size,
        "embedding_dim": cfg.model.embedding_dim,
        "norm": cfg.model.norm,
        "families": families,
    }
    store = _store(uri)
    store.write_bytes(WEIGHTS, weights)
    store.write_bytes(META, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
    return meta


def load_meta(uri: str) -> dict:
    """meta.json alone (cheap: for validating a --model before anything starts)."""
    try:
        meta = _store(uri).read_json(META)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {uri}: cannot read {META}: {exc}") from None
    if meta is None:
        raise CheckpointError(f"{uri} is not a checkpoint: it has no {META} (train one with python -m jobs.train)")
    if "model_version" not in meta or "config" not in meta:
        raise CheckpointError(f"checkpoint {uri}: {META} lacks model_version or config")
    return meta


# settings added after checkpoints existed, with the value that reproduces a checkpoint saved without them (the
# defaults may differ: a default applied to an older checkpoint would silently change its embeddings)
BEFORE_THEY_EXISTED = {"model": {"skip_views": [], "skip_idf_power": 1.0, "open_set_gate": False}}


def config_of(meta: dict) -> Config:
    saved = {section: dict(values) for section, values in meta["config"].items()}
    if "views" not in saved:  # checkpoints from before views existed saw the byteplot only
        saved["views"] = {"names": ["image"]}
    for section, keys in BEFORE_THEY_EXISTED.items():
        for key, value in keys.items():
            saved.setdefault(section, {}).setdefault(key, value)
    return config_from_json(saved)


def load(uri: str, map_location: str = "cpu") -> Checkpoint:
    meta = load_meta(uri)
    try:
        weights = _store(uri).read_bytes(WEIGHTS)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {uri} has {META} but no {WEIGHTS}") from None
    expected = meta.get("weights_sha256")
    if expected and hashlib.sha256(weights).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {uri}: {WEIGHTS} does not belong to {META} (a save was interrupted, "
                              "or the files come from two checkpoints)")
    import torch

    from embedlib.model.network import build_model
    from embedlib.views import view_specs

    cfg = config_of(meta)
    model = build_model(cfg.model, len(meta["families"]), view_specs(cfg), cfg.views.token_id_bits)
    try:
        model.load_state_dict(torch.load(io.BytesIO(weights), map_location=map_location, weights_only=True))
    except RuntimeError as exc:  # weights saved from a network that its config does not describe
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {uri}: its weights do not fit the network its config describes "
                              f"(views {list(cfg.views.names)}): {detail}") from None
    model.eval()
    return Checkpoint(model, cfg, meta)


@functools.lru_cache(maxsize=2)
def cached_evidence_weights(uri: str) -> dict:
    """The checkpoint's per-bucket weight of each sketch view ({view: float64 [buckets]}), which the embedding
    job's tasks weigh each file's evidence with (EmbeddingNet.evidence_weights); empty without sketch views.
    Loaded once per process (Ray reuses workers): it builds the whole model."""
    return load(uri).model.evidence_weights()
