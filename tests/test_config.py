import pytest

from embedlib import config


def test_overrides_are_typed():
    cfg = config.load(None, ["train.lr=1e-3", "train.epochs=3", "model.norm=group", "train.use_gpu=true",
                             "model.channels=[8, 16, 32, 64]"])
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 3 and cfg.model.norm == "group"
    assert cfg.train.use_gpu is True and cfg.model.channels == (8, 16, 32, 64)


@pytest.mark.parametrize("bad", ["train.lrr=1", "nosection.x=1", "train=1", "model.norm=layer",
                                 "train.epochs=many", "raster.size=30", "embed.exact_words=-1"])
def test_bad_settings_are_errors(bad):
    with pytest.raises(config.ConfigError):
        config.load(None, [bad])


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 5\nbatch_size = 64\n[model]\nnorm = "batch-cumulative"\n')
    cfg = config.load(str(f), ["train.epochs=2"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.norm) == (2, 64, "batch-cumulative")


def test_round_trip_through_dict():
    cfg = config.load(None, ["model.norm=none", "raster.size=32"])
    assert config.config_from_json(cfg.to_dict()) == cfg
