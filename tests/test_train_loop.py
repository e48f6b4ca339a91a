"""Losses and the P x K sampler of embedlib.train.loop (pure functions)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedlib.config import Config, TrainConfig
from embedlib.train.dataset import pk_batches
from embedlib.train.loop import cosface_loss, retrieval_loss, supcon_loss


def test_cosface_is_cross_entropy_with_the_true_cosine_lowered():
    logits = torch.tensor([[8.0, 2.0, -1.0], [0.5, 0.4, 3.0]])
    labels = torch.tensor([0, 2])
    assert cosface_loss(logits, labels, 16.0, 0.0) == pytest.approx(F.cross_entropy(logits, labels).item())
    shifted = logits.clone()
    shifted[0, 0] -= 16.0 * 0.25
    shifted[1, 2] -= 16.0 * 0.25
    assert cosface_loss(logits, labels, 16.0, 0.25) == pytest.approx(F.cross_entropy(shifted, labels).item())


def test_supcon_matches_a_hand_computed_case():
    emb = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    t = 0.5
    sim = (emb @ emb.T / t).tolist()
    # anchors 0 and 1 have one positive each; anchor 2 has none and is skipped
    l0 = -(sim[0][1] - math.log(math.exp(sim[0][1]) + math.exp(sim[0][2])))
    l1 = -(sim[1][0] - math.log(math.exp(sim[1][0]) + math.exp(sim[1][2])))
    assert supcon_loss(emb, labels, t).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert supcon_loss(emb, torch.tensor([0, 1, 2]), t).item() == 0.0  # no positives at all


def test_retrieval_loss_kinds():
    emb = F.normalize(torch.randn(8, 4), dim=1)
    logits = emb @ F.normalize(torch.randn(3, 4), dim=1).T * 16
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    for kind in ("softmax", "cosface", "supcon", "cosface+supcon"):
        cfg = Config(train=TrainConfig(loss=kind, margin=0.2))
        assert torch.isfinite(retrieval_loss(emb, logits, labels, cfg))
    with pytest.raises(ValueError):
        retrieval_loss(emb, logits, labels, Config(train=TrainConfig(loss="nope")))


def test_pk_batches_have_p_families_of_k_files_and_cover_every_file():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, 700)
    labels[:3] = 99  # a family smaller than K
    batches = pk_batches(labels, 8, 4, seed=1)
    used = np.concatenate(batches)
    assert set(used.tolist()) == set(range(len(labels)))  # every file at least once
    assert len(used) < 1.2 * len(labels)  # and about once
    for b in batches:
        fams = Counter(labels[b].tolist())
        assert all(n == 4 for n in fams.values())  # K files of each family in the batch
        assert 2 <= len(fams) <= 8
    assert sum(len(b) == 32 for b in batches) >= len(batches) - 3  # full batches but for the tail
    assert [b.tolist() for b in pk_batches(labels, 8, 4, seed=1)] == [b.tolist() for b in batches]


def test_self_supervised_steps_learn_to_match_two_subsamples_of_one_file_without_labels():
    """No label at all: InfoNCE between two random sub-samples of each file's sketch buckets lowers its loss, and
    the sub-samples thin the sketches only (a byteplot passes unchanged)."""
    import dataclasses

    from embedlib.config import from_dict
    from embedlib.train.loop import info_nce, make_optimizer, new_model, subsample, train_step
    from embedlib.views import view_specs

    torch.manual_seed(0)
    cfg = from_dict({"views": {"names": ["strings", "tokens"], "buckets": 128},
                     "model": {"hidden": 32, "embedding_dim": 32, "skip_dim": 8},
                     "train": {"self_supervised": "true", "lr": 3e-3}}, Config())
    rng = np.random.default_rng(0)
    rows = 64
    files = {v: torch.from_numpy((rng.random((rows, 128)) < 0.15).astype(np.uint8) * rng.integers(1, 4, (rows, 128))
                                 .astype(np.uint8)) for v in ("strings", "tokens")}
    image = torch.zeros(rows, 4, 4, dtype=torch.uint8) + 7
    sub = subsample({**files, "image": image}, 0.5)
    kept = (sub["strings"] > 0).sum() / (files["strings"] > 0).sum()
    assert 0.4 < float(kept) < 0.6 and torch.equal(sub["image"], image)
    assert ((sub["strings"] > 0) <= (files["strings"] > 0)).all()  # only removes items
    same = F.normalize(torch.randn(8, 16), dim=1)
    assert info_nce(same, same, 0.1) < info_nce(same, same.roll(1, 0), 0.1)

    model = new_model(cfg, 0)  # no classes: a label-free checkpoint has none
    assert set(view_specs(cfg)) == {"strings", "tokens"}
    opt = make_optimizer(model, cfg)
    unlabelled = torch.full((rows,), -1)
    losses = [train_step(model, files, unlabelled, opt, cfg)[0] / rows for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert train_step(model, files, unlabelled, opt, cfg)[1] == 0  # no class, nothing "correct"
    # semi-supervised: two classes on a few rows add the CosFace term; the unlabelled rows still train
    labels = torch.full((rows,), -1)
    labels[:8], labels[8:16] = 0, 1
    semi = new_model(cfg, 2)
    loss, correct = train_step(semi, files, labels, make_optimizer(semi, cfg), cfg)
    assert loss > 0 and 0 <= correct <= 16
    assert dataclasses.replace(cfg.train, self_supervised="false").self_supervised == "false"


def test_the_open_set_gate_opens_at_the_held_out_confidence_quantile():
    """calibrate_gate: high = the GATE_QUANTILE of the confidences in the histogram (to one bin), low = high -
    model.gate_width; confidence_histogram counts every row once, at its EmbeddingNet.confidence."""
    from embedlib import views
    from embedlib.model.network import build_model
    from embedlib.train import trainer
    from embedlib.train.loop import batches_of

    cfg = Config()
    model = build_model(cfg.model, 3, views.view_specs(cfg), cfg.views.token_id_bits).eval()
    conf = np.random.default_rng(0).uniform(0.2, 0.9, 10_000)
    hist = np.histogram(conf, trainer.CONFIDENCE_BINS, (-1.0, 1.0))[0]
    gate = trainer.calibrate_gate(model, hist, cfg, "held-out files")
    bin_width = 2.0 / trainer.CONFIDENCE_BINS
    assert abs(gate["high"] - np.quantile(conf, trainer.GATE_QUANTILE)) <= bin_width
    assert gate["low"] == pytest.approx(gate["high"] - cfg.model.gate_width) and gate["files"] == 10_000
    assert model.gated and model.gate_range.tolist() == pytest.approx([gate["low"], gate["high"]])
    assert trainer.calibrate_gate(model, np.zeros_like(hist), cfg, "none") is None  # no file: left as it is
    ungated = build_model(cfg.model, 1, views.view_specs(cfg), cfg.views.token_id_bits)
    assert trainer.calibrate_gate(ungated, hist, cfg, "held-out files") is None
    data = [b"\0libfoo_openWindow\0", b"\0gtk_widget_show\0/etc/passwd\0", b"", b"\0zlib deflate\0"]
    stacked = views.stack([views.compute_views(d, cfg) for d in data], cfg)
    counted = trainer.confidence_histogram(model, batches_of(stacked, np.zeros(4, np.int64), 3))
    with torch.no_grad():
        expected = model.confidence(model.embed({k: torch.from_numpy(v) for k, v in stacked.items()})).numpy()
    assert counted.sum() == 4
    assert np.array_equal(counted, np.histogram(expected, trainer.CONFIDENCE_BINS, (-1.0, 1.0))[0])
