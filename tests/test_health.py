"""The BN health verdict means what the seed's bug is: running statistics far from the training data's, or
eval mode materially worse than train mode on training files. It never refuses a converged model."""

import math

import numpy as np
import pytest
import torch

from embedlib.config import Config, HealthConfig, ModelConfig, TrainConfig
from embedlib.train.health import accuracy_drop_tolerance, bn_health, verdict
from embedlib.model.network import build_model
from embedlib.train.precise_bn import precise_statistics
from embedlib.train.loop import batches_of, make_optimizer, train_epoch


def _seed_families(n_per: int, size: int = 32, seed: int = 0):
    """Three 'families' with distinct byte statistics (like code vs data vs padding)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, (lo, hi) in enumerate([(0, 90), (80, 170), (160, 256)]):
        images.append(rng.integers(lo, hi, (n_per, size, size), dtype=np.uint8))
        labels += [label] * n_per
    return np.concatenate(images), np.asarray(labels)


def _template_families(n_classes: int, per_class: int, size: int, seed: int, noise: float):
    """Many classes: a blocky random template per class plus heavy noise (accuracy well below 1)."""
    rng = np.random.default_rng(seed)
    templates = np.kron(rng.integers(0, 256, (n_classes, size // 4, size // 4)).astype(np.float32),
                        np.ones((4, 4), np.float32))
    labels = np.repeat(np.arange(n_classes), per_class)
    images = templates[labels] + rng.normal(0, noise, (len(labels), size, size))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def _train(images, labels, norm: str, momentum: float, epochs: int, seed: int, channels=(8, 16, 16, 32)):
    torch.manual_seed(seed)
    cfg = Config(model=ModelConfig(norm=norm, bn_momentum=momentum, channels=channels, embedding_dim=32),
                 train=TrainConfig(lr=3e-3))
    model = build_model(cfg.model, int(labels.max()) + 1)
    optimizer = make_optimizer(model, cfg)
    for epoch in range(epochs):
        train_epoch(model, batches_of(images, labels, 32, shuffle=True, seed=seed * 100 + epoch), optimizer)
    pick = np.random.default_rng(seed + 7).permutation(len(images))[:1024]
    probe = list(batches_of(images[pick], labels[pick], 32, shuffle=True, seed=seed))
    return model, probe


def _precise(model, images):
    precise_statistics(model, lambda: [torch.from_numpy(images[i : i + 256]) for i in range(0, len(images), 256)])


def test_seed_setup_fails_before_precise_bn_and_passes_after():
    """The seed: 3 families, ~5,000 files, BN momentum 0.01 (Keras' 0.99), one epoch of 157 steps of 32."""
    images, labels = _seed_families(1667)
    model, probe = _train(images, labels, "batch", momentum=0.01, epochs=1, seed=1)
    before = bn_health(model, probe, HealthConfig())
    assert not before["healthy"]
    assert any("running variance" in p for p in before["problems"])
    _precise(model, images)
    after = bn_health(model, probe, HealthConfig())
    assert after["healthy"], after["problems"]
    assert max(d["abs_log_var_ratio"] for d in after["bn_layers"].values()) < 0.05
    assert after["eval_mode_accuracy"] >= after["train_mode_accuracy"] - 0.02


@pytest.mark.parametrize("seed", range(5))
def test_converged_model_with_hundreds_of_classes_is_ok_for_every_seed(seed):
    """300 classes, noisy: train-mode predictions disagree with eval mode often (the old symmetric gate
    refused such models), yet the model is converged after precise BN, and the verdict says so every time."""
    images, labels = _template_families(300, 10, size=16, seed=seed, noise=110)
    model, probe = _train(images, labels, "batch", momentum=0.1, epochs=2, seed=seed, channels=(8, 8, 16, 16))
    _precise(model, images)
    report = bn_health(model, probe, HealthConfig())
    assert report["healthy"], report["problems"]
    assert report["probe_files"] == 1024 and report["labelled_probe_files"] == 1024


@pytest.mark.parametrize("norm", ["group", "none"])
def test_group_and_no_norm_are_ok_by_construction(norm):
    images, labels = _seed_families(100)
    model, probe = _train(images, labels, norm, momentum=0.01, epochs=1, seed=0)
    report = bn_health(model, probe, HealthConfig())
    assert report["healthy"] and not report["has_batch_norm"] and "bn_layers" not in report
    assert report["top1_agreement_train_vs_eval"] == 1.0 and report["mean_cosine_train_vs_eval"] > 0.9999


def test_health_check_leaves_the_model_untouched():
    images, labels = _seed_families(100)
    model, probe = _train(images, labels, "batch", momentum=0.01, epochs=1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_health(model, probe, HealthConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _report(train_acc, eval_acc, n=1024, mean_shift=0.01, log_var=0.01, agreement=0.87):
    return {"train_mode_accuracy": train_acc, "eval_mode_accuracy": eval_acc, "labelled_probe_files": n,
            "top1_agreement_train_vs_eval": agreement, "mean_cosine_train_vs_eval": 0.8,
            "bn_layers": {"features.1": {"mean_shift_in_std": mean_shift, "abs_log_var_ratio": log_var}}}


def test_verdict_is_one_sided_and_ignores_agreement():
    cfg = HealthConfig()
    # The measured false alarm: agreement 0.870, eval-mode accuracy 0.677 above train-mode 0.648.
    assert verdict(_report(0.648, 0.677, agreement=0.870), cfg) == []
    assert verdict(_report(0.87, 0.33), cfg)  # the seed's gap
    assert verdict(_report(0.9, 0.9, mean_shift=0.9), cfg)
    assert verdict(_report(0.9, 0.9, log_var=math.log(3)), cfg)


def test_tolerance_widens_with_a_small_probe():
    cfg = HealthConfig()
    assert accuracy_drop_tolerance(0.8, 0.78, 100_000, cfg) == cfg.max_accuracy_drop
    small = accuracy_drop_tolerance(0.8, 0.7, 50, cfg)
    assert small == pytest.approx(3 * math.sqrt((0.8 * 0.2 + 0.7 * 0.3) / 50))
    assert verdict(_report(0.8, 0.7, n=50), cfg) == []  # 0.1 lower on 50 files is within chance
    assert verdict(_report(0.8, 0.7, n=5000), cfg)
