"""Checkpoints are written atomically and load refuses weights and meta.json that do not belong together."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from embedlib.model import checkpoint
from embedlib.config import Config, ModelConfig, ViewsConfig
from embedlib.model.network import build_model

CFG = Config(views=ViewsConfig(names=("image",)), model=ModelConfig(channels=(4, 8, 8, 8), embedding_dim=8))


def _save(path, seed=0):
    torch.manual_seed(seed)
    return checkpoint.save(str(path), build_model(CFG.model, 3), CFG, ["a", "b", "c"], {"note": seed})


def test_round_trip_and_version(tmp_path):
    meta = _save(tmp_path / "m")
    ckpt = checkpoint.load(str(tmp_path / "m"))
    assert ckpt.version == meta["model_version"] and ckpt.families == ["a", "b", "c"] and ckpt.meta["note"] == 0
    assert sorted(os.listdir(tmp_path / "m")) == [".tmp", "meta.json", "model.pt"]
    assert os.listdir(tmp_path / "m" / ".tmp") == []  # nothing half-written left behind


def test_a_resaved_checkpoint_carries_its_extra_and_nothing_save_writes(tmp_path):
    """extra_of (what recalibration carries over) is exactly what save() did not write itself."""
    meta = _save(tmp_path / "m")
    assert checkpoint.extra_of(meta) == {"note": 0}
    assert set(meta) == set(checkpoint.SAVE_WRITES) | {"note"}


def test_weights_from_another_checkpoint_are_refused(tmp_path):
    _save(tmp_path / "a", seed=0)
    _save(tmp_path / "b", seed=1)
    shutil.copyfile(tmp_path / "b" / "model.pt", tmp_path / "a" / "model.pt")
    with pytest.raises(checkpoint.CheckpointError, match="does not belong"):
        checkpoint.load(str(tmp_path / "a"))


def test_missing_or_broken_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.load_meta(str(tmp_path))
    _save(tmp_path / "m")
    os.remove(tmp_path / "m" / "model.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no model.pt"):
        checkpoint.load(str(tmp_path / "m"))
    (tmp_path / "m" / "meta.json").write_text(json.dumps({"families": []}))
    with pytest.raises(checkpoint.CheckpointError, match="lacks model_version"):
        checkpoint.load_meta(str(tmp_path / "m"))
    # weights of another network than the config describes (an image-only model saved with sketch views)
    sketches = Config(views=ViewsConfig(names=("strings",), buckets=256), model=ModelConfig(channels=(4, 8, 8, 8),
                      embedding_dim=8, skip_dim=4))
    checkpoint.save(str(tmp_path / "x"), build_model(CFG.model, 3), sketches, ["a", "b", "c"], {})
    with pytest.raises(checkpoint.CheckpointError, match="do not fit the network"):
        checkpoint.load(str(tmp_path / "x"))


def test_checkpoints_of_the_first_release_still_load(tmp_path):
    meta = _save(tmp_path / "m")
    meta["config"]["health"] = {"min_top1_agreement": 0.9, "min_mean_cosine": 0.9}  # retired settings
    del meta["weights_sha256"]
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    assert checkpoint.load(str(tmp_path / "m")).config.health == Config().health


def test_a_checkpoint_saved_before_a_setting_existed_keeps_its_embeddings(tmp_path):
    """The fixed part's skip_views / skip_idf_power came after checkpoints with a fixed part existed: such a
    checkpoint must load with the behaviour it was saved with, not today's defaults (IDF squared)."""
    import numpy as np

    from embedlib.views import compute_views, view_specs

    cfg = Config(views=ViewsConfig(names=("strings", "idents"), buckets=256),
                 model=ModelConfig(hidden=16, embedding_dim=24, skip_dim=16, skip_views=(), skip_idf_power=1.0))
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, view_specs(cfg))
    model.set_document_frequency("strings", np.arange(256) % 7, 10)
    meta = checkpoint.save(str(tmp_path / "old"), model, cfg, ["a", "b", "c"], {})
    for key in ("skip_views", "skip_idf_power"):
        del meta["config"]["model"][key]
    (tmp_path / "old" / "meta.json").write_text(json.dumps(meta))
    loaded = checkpoint.load(str(tmp_path / "old"))
    assert loaded.config.model.skip_idf_power == 1.0 and loaded.config.model.skip_views == ()
    views = compute_views(open("/usr/bin/ls", "rb").read(), cfg)
    batch = {k: torch.from_numpy(v[None]) for k, v in views.items()}
    model.eval()
    loaded.model.eval()
    with torch.no_grad():
        assert torch.allclose(model.embed(batch), loaded.model.embed(batch), atol=1e-6)
