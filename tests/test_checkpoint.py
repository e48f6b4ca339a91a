"""Checkpoints are written atomically and load refuses weights and meta.json that do not belong together."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from embedlib import checkpoint
from embedlib.config import Config, ModelConfig, ViewsConfig
from embedlib.model import build_model

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


def test_checkpoints_of_the_first_release_still_load(tmp_path):
    meta = _save(tmp_path / "m")
    meta["config"]["health"] = {"min_top1_agreement": 0.9, "min_mean_cosine": 0.9}  # retired settings
    del meta["weights_sha256"]
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    assert checkpoint.load(str(tmp_path / "m")).config.health == Config().health
