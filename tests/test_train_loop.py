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
