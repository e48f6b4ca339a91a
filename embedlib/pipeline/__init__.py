"""Files -> an output root that accumulates runs: the embedding job and the rasterize job (training corpus).

  embed_files(model, input, root, cfg)    embeddings/model_version=V/run=R/ + errors/run=R/ + runs/R.parquet
  rasterize_files(input, root, cfg)       samples/views_version=W/run=R/ + errors/ + runs/

Both are incremental by content: a content already written under the same version is not read, rasterized
or embedded again, and an unchanged file (same size and mtime, or ETag) is not even re-read.
May import: errors, config, schema, sql, files, views, root, model, train (the health gate). Never Ray:
embedlib.ray_io supplies the executors.
"""

from __future__ import annotations

import json
from typing import Callable

from embedlib import views

from embedlib.model import checkpoint
from embedlib.train.health import check_health
from embedlib.config import Config
from embedlib.errors import UserError
from embedlib.root import catalog
from embedlib.root.catalog import JobIdentity
from embedlib.pipeline.run import Executor, LocalExecutor, RunSummary, run_job
from embedlib.root.store import Store
from embedlib.pipeline.tasks import Target

__all__ = ["embed_files", "rasterize_files", "RunSummary", "LocalExecutor", "Executor", "Store"]

IDENTITY_SETTINGS = ("max_bytes", "max_hash_bytes", "follow_symlinks", "digests")


class SettingsMismatch(UserError, RuntimeError):
    """The root already holds rows of this version made with other read settings: they would not compare."""


def _identity(job: str, table: str, version: str, input_uri: str, glob: bool, cfg: Config) -> JobIdentity:
    settings = {k: getattr(cfg.input, k) for k in IDENTITY_SETTINGS}
    return JobIdentity(job, table, version, input_uri, glob, settings)


def _check_max_bytes(root: str, version: str, max_bytes: int) -> None:
    runs = catalog.read_runs(Store(root))
    for row in runs.to_pylist():
        used = json.loads(row["config"]).get("input", {}).get("max_bytes")
        if row["model_version"] == version and used is not None and used != max_bytes:
            raise SettingsMismatch(f"{root} holds embeddings of model {version} made with input.max_bytes={used}; "
                                   f"this run asks for {max_bytes}: use the same setting or another output root")


def embed_files(model_uri: str, input_uri: str, root: str, cfg: Config, *, glob: bool = False,
                executor: Executor | Callable[[], Executor] | None = None, progress: bool = True,
                abandon_unfinished: bool = False, allow_unhealthy: bool = False,
                command: str | None = None) -> list[RunSummary]:
    """Embed every new content of `input_uri` with the checkpoint into `root`. `cfg` gives the input and embed
    settings; the views settings come from the checkpoint, whose BN health report must be OK unless
    allow_unhealthy. Everything is checked before `executor` (or the factory that starts Ray) is called.
    `command`: the command line that resumes this run, announced if a later run of another input parks it."""
    ckpt = checkpoint.load_meta(model_uri)
    check_health(ckpt, allow_unhealthy or cfg.embed.allow_unhealthy_model)
    model_cfg = checkpoint.config_of(ckpt)
    run_cfg = Config(input=cfg.input, raster=model_cfg.raster, views=model_cfg.views, model=model_cfg.model,
                     embed=cfg.embed)
    _check_max_bytes(root, ckpt["model_version"], cfg.input.max_bytes)
    m = model_cfg.model
    target = Target("embeddings", ckpt["model_version"], run_cfg, model_uri, m.embedding_dim, cfg.embed.batch_size,
                    cfg.embed.evidence_items > 0, m.embedding_dim - m.skip_dim if m.sketch_skip == "concat" else m.embedding_dim)
    identity = _identity("embed", "embeddings", ckpt["model_version"], input_uri, glob, cfg)
    config_json = {"input": run_cfg.to_dict()["input"], "embed": run_cfg.to_dict()["embed"], "model": model_uri}
    return run_job(identity, target, root, executor or LocalExecutor(), shard_size=cfg.input.shard_size,
                   progress=progress, abandon_unfinished=abandon_unfinished, config_json=config_json,
                   command=command)


def rasterize_files(input_uri: str, root: str, cfg: Config, *, glob: bool = False,
                    executor: Executor | Callable[[], Executor] | None = None, progress: bool = True,
                    abandon_unfinished: bool = False, command: str | None = None) -> list[RunSummary]:
    """Compute the model's input views of every new content of `input_uri` into `root` (a training corpus)."""
    version = views.views_version(cfg)
    target = Target("samples", version, cfg)
    identity = _identity("rasterize", "samples", version, input_uri, glob, cfg)
    config_json = {"input": cfg.to_dict()["input"], "raster": cfg.to_dict()["raster"]}
    return run_job(identity, target, root, executor or LocalExecutor(), shard_size=cfg.input.shard_size,
                   progress=progress, abandon_unfinished=abandon_unfinished, config_json=config_json,
                   command=command)
