"""The BN health report flags the seed's bug (unconverged running stats) and passes converged models."""

import numpy as np
import torch

from embedlib.config import HealthConfig, ModelConfig, TrainConfig
from embedlib.health import bn_health
from embedlib.model import build_model
from embedlib.precise_bn import precise_statistics
from embedlib.train_loop import batches_of, make_optimizer, train_epoch


def _toy_families(n_per=60, size=32, seed=0):
    """Three 'families' of images with distinct byte statistics (like code vs data vs padding)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, (lo, hi) in enumerate([(0, 90), (80, 170), (160, 256)]):
        images.append(rng.integers(lo, hi, (n_per, size, size), dtype=np.uint8))
        labels += [label] * n_per
    return np.concatenate(images), np.asarray(labels)


def _trained(norm: str, epochs: int, momentum: float = 0.01):
    torch.manual_seed(0)
    images, labels = _toy_families()
    model = build_model(ModelConfig(norm=norm, bn_momentum=momentum, channels=(8, 8, 16, 16), embedding_dim=16), 3)
    from embedlib.config import Config

    opt = make_optimizer(model, Config(train=TrainConfig(lr=3e-3)))
    for e in range(epochs):
        train_epoch(model, batches_of(images, labels, 16, shuffle=True, seed=e), opt)
    probe = list(batches_of(images, labels, 16, shuffle=True, seed=99))
    return model, probe, images


def test_unconverged_running_stats_are_flagged():
    model, probe, _ = _trained("batch", epochs=1)  # 12 steps at momentum 0.01: stats ~ their init (0, 1)
    report = bn_health(model, probe, HealthConfig())
    assert not report["healthy"] and report["problems"]
    assert report["mean_cosine_train_vs_eval"] < HealthConfig().min_mean_cosine
    assert report["bn_layers"]["encoders.image.features.1"]["abs_log_var_ratio"] > 0.5


def test_precise_bn_makes_the_same_model_healthy():
    model, probe, images = _trained("batch", epochs=1)
    precise_statistics(model, lambda: [torch.from_numpy(images[i : i + 50]) for i in range(0, len(images), 50)])
    report = bn_health(model, probe, HealthConfig())
    assert report["healthy"], report["problems"]
    assert report["top1_agreement_train_vs_eval"] >= 0.9
    assert all(d["mean_shift_in_std"] < 0.2 for d in report["bn_layers"].values())


def test_group_norm_has_no_train_eval_gap():
    model, probe, _ = _trained("group", epochs=1)
    report = bn_health(model, probe, HealthConfig())
    assert report["healthy"] and report["top1_agreement_train_vs_eval"] == 1.0
    assert "bn_layers" not in report


def test_health_check_leaves_the_model_untouched():
    model, probe, _ = _trained("batch", epochs=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_health(model, probe, HealthConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
