"""Pseudo-families (embedlib.train.pseudo) against brute force and hand-built graphs, and the fixed part they
group by is the one the embedding stores."""

from __future__ import annotations

import numpy as np
import torch

from embedlib import config
from embedlib.train import pseudo
from embedlib.train.loop import new_model
from embedlib.views import view_specs


def _unit(rows) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_nearest_is_brute_force_top_k_without_self_in_any_chunking():
    v = torch.nn.functional.normalize(torch.randn(37, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    sim = (v @ v.T).numpy()
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1)[:, :4]
    for chunk in (1, 5, 37, 1000):
        idx, cos = pseudo.nearest(v, 4, chunk=chunk)
        assert (idx == want).all()
        assert np.allclose(cos, np.take_along_axis(sim, want, 1), atol=1e-6)
    idx, cos = pseudo.nearest(v[:1], 4)
    assert idx.shape == (1, 0) and cos.shape == (1, 0)  # a single file has no neighbour


def test_groups_join_mutual_neighbours_above_the_threshold_and_chains_link():
    # rows 0-1-2 a chain (0~1 and 1~2 near, 0 and 2 not), rows 3-4 a pair, row 5 far from everyone
    v = _unit([[1, 0, 0, 0], [0.8, 0.6, 0, 0], [0.28, 0.96, 0, 0], [0, 0, 1, 0], [0, 0, 0.9, 0.44], [0, 0, -1, 1]])
    idx, cos = pseudo.nearest(v, 2)
    g = pseudo.groups(idx, cos, 0.75)
    assert g[0] == g[1] == g[2] and g[3] == g[4] and len({g[0], g[3], g[5]}) == 3
    assert (pseudo.groups(idx, cos, 1.01) == np.arange(6)).all()  # nothing passes: every file alone
    assert len(set(pseudo.groups(idx, cos, -1.0).tolist())) < 6


def test_a_hub_that_is_everyones_nearest_does_not_chain_them():
    # four unrelated files, each nearest to a fifth that holds a bit of all of them (common boilerplate)
    v = _unit([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    idx, cos = pseudo.nearest(v, 1)
    assert (idx[:4, 0] == 4).all()  # one-way edges to the hub
    g = pseudo.groups(idx, cos, 0.4)
    assert len(set(g.tolist())) == 4  # the hub joins the one file it picks back, the others stay apart
    assert pseudo.mutual_edges(idx, cos, 0.4) == [(int(idx[4, 0]), 4)]


def test_a_group_takes_its_labelled_files_family_and_unlabelled_groups_are_named_by_content():
    shas = ["c" * 64, "a" * 64, "b" * 64, "d" * 64, "e" * 64, "f" * 64]
    group = np.array([0, 0, 0, 1, 1, 2])
    known = [None, "zlib", None, None, None, "zlib"]
    names = pseudo.families(shas, group, known)
    assert names[:3] == ["zlib"] * 3  # propagated to the unlabelled files of its group
    assert names[3] == names[4] == pseudo.PREFIX + "d" * 12  # the group's smallest sha256
    assert names[5] == "zlib"
    tie = pseudo.families(shas[:3], np.zeros(3, np.int64), ["b-fam", "a-fam", None])
    assert tie == ["b-fam", "a-fam", "a-fam"]  # a tie goes to the smallest name; labels themselves never change
    order = [4, 2, 0, 5, 1, 3]  # the same rows in another order: the same names
    again = pseudo.families([shas[i] for i in order], group[order], [known[i] for i in order])
    assert again == [names[i] for i in order]
    assert pseudo.usable(group) and pseudo.usable(np.array([0, 0, 1, 1])) and not pseudo.usable(np.array([0, 0, 1]))
    assert not pseudo.usable(np.zeros(0, np.int64))
    line = pseudo.describe(names, known)
    assert line.endswith("2 labelled, 2 took their group's label, 2 in 1 unlabelled groups (1 of 2 files or more); "
                         "the largest family 4 files")


def test_the_fixed_part_is_the_stored_embeddings_training_free_slice():
    cfg = config.load(None, ["views.buckets=256", "model.hidden=32", "model.embedding_dim=48", "model.skip_dim=16"])
    model = new_model(cfg, 3).eval()
    rng = np.random.default_rng(0)
    batch = {}
    for name, (shape, dtype) in view_specs(cfg).items():
        if np.dtype(dtype) == np.uint32:
            batch[name] = torch.from_numpy(np.sort(rng.integers(0, 1 << 20, (4,) + shape), axis=1).astype(np.uint32))
        else:
            batch[name] = torch.from_numpy(rng.integers(0, 3, (4,) + shape).astype(dtype))
    with torch.no_grad():
        emb, fixed = model.embed(batch), model.fixed_part(batch)
    assert fixed.shape == (4, 16) and torch.allclose(fixed.norm(dim=1), torch.ones(4))
    assert torch.allclose(emb[:, 32:], (1 - cfg.model.skip_weight) ** 0.5 * fixed, atol=1e-6)
