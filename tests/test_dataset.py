"""The training corpus as blocks: one split everywhere, equal steps on every rank, every row seen, mixed
batches, and the precise-BN sample uniform over the corpus (not the first N in path order)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from embedlib import pipeline

from embedlib.files import corpus

from embedlib.train import dataset

from embedlib.train import split
from embedlib.config import Config, InputConfig, RasterConfig, TrainConfig, ViewsConfig
from embedlib.train.labels import Labels


@pytest.fixture(scope="module")
def samples_root(system_files, tmp_path_factory) -> tuple[str, Config]:
    """~160 real executables of the 8 largest dpkg families, rasterized in small blocks (paths sorted: blocks
    are family-clustered, as they are in a real corpus)."""
    by_family = Counter(f.family for f in system_files if f.family)
    families = [f for f, _ in by_family.most_common(8)]
    files = [f for f in system_files if f.family in families][:160]
    root = tmp_path_factory.mktemp("samples")
    manifest = corpus.write_manifest(files, str(root / "m.csv"))
    cfg = Config(input=InputConfig(shard_size=8), raster=RasterConfig(size=16), views=ViewsConfig(names=("image",)),
                 train=TrainConfig(min_family_size=2, probe_samples=40, precise_bn_max_samples=60,
                                   self_supervised="auto"))  # labelled rows train, as the split functions say
    pipeline.rasterize_files(manifest, str(root / "corpus"), cfg, progress=False)
    return str(root / "corpus"), cfg


def test_scan_labels_with_the_one_split_rule(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    rows = [dataset.read_block(corp, b, "all") for b in corp.blocks]
    shas = [s for _, _, ss in rows for s in ss]
    fams = []
    for b in corp.blocks:
        t = dataset.Store(root).read_parquet(b.path, columns=["family"])
        fams += t.column("family").to_pylist()
    expected = split.make_split(shas, fams, cfg)  # the in-memory split that study and evaluation use
    assert list(corp.rule.families) == expected.families
    assert corp.train_rows == len(expected.train) and corp.rule.holdout_files == len(expected.holdout)
    train = {s for b in corp.blocks for s in dataset.read_block(corp, b, "train")[2]}
    assert train == set(expected.train)


def test_unlabelled_rows_train_when_most_of_the_corpus_has_no_family(samples_root):
    """train.self_supervised=auto: a labelled corpus trains its labelled training rows only; one whose rows mostly
    have no family trains every statistics row (never held-out files or families kept out of training)."""
    root, cfg = samples_root
    every = dataset.scan_corpus(root, cfg)
    assert not every.rule.self_supervised
    shas = [s for b in every.blocks for s in dataset.read_block(every, b, "all")[2]]
    fams = dict(zip(shas, every.labels.lookup(shas)))
    few = Labels.from_pairs([(s, fams[s]) for s in shas if split.bucket(s, "test-few") < 0.3], "a third labelled")
    corp = dataset.scan_corpus(root, cfg, few)
    assert corp.rule.self_supervised
    trained = {s for b in corp.blocks for s in dataset.read_block(corp, b, "train")[2]}
    statistics = {s for b in corp.blocks for s in dataset.read_block(corp, b, "statistics")[2]}
    holdout = {s for b in corp.blocks for s in dataset.read_block(corp, b, "holdout")[2]}
    assert trained == statistics and corp.train_rows == len(trained) > 2 * corp.rule.train_files > 0
    assert holdout and not holdout & trained
    labels = np.concatenate([dataset.read_block(corp, b, "train")[1] for b in corp.blocks])
    assert (labels >= 0).sum() == corp.rule.train_files and (labels == -1).sum() > 0
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, self_supervised="false"))
    assert dataset.scan_corpus(root, off, few).train_rows == corp.rule.train_files
    on = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, self_supervised="true"))
    assert dataset.scan_corpus(root, on).rule.self_supervised


def _share_rows(corp, share) -> list[str]:
    return [s for piece in share for s in dataset.read_block(corp, piece.block, "train")[2][piece.start:piece.stop]]


def test_every_rank_gets_the_same_steps_and_every_row_is_trained_each_epoch(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    every = {s for b in corp.blocks for s in dataset.read_block(corp, b, "train")[2]}
    for world, bs in ((3, 8), (2, 16), (4, 5)):
        steps = dataset.steps_per_epoch(corp, world, bs)
        for epoch in range(3):
            shares = dataset.epoch_shares(corp, world, epoch, seed=0)
            rows = [_share_rows(corp, share) for share in shares]
            assert {len(r) for r in rows} == {corp.train_rows // world}  # equal shares of rows, not of blocks
            flat = [s for r in rows for s in r]
            assert len(flat) == len(set(flat)) and len(every - set(flat)) == corp.train_rows % world
            seen = set()
            for rank, share in enumerate(shares):
                batches = list(dataset.shuffled_batches(corp, share, bs, steps, buffer_rows=32, seed=epoch * 10 + rank))
                assert len(batches) == steps and all(len(y) == bs for _, y in batches)
                seen |= {bytes(v) for views, _ in batches for v in views["image"].reshape(bs, -1)}
            # no row sits out beyond the rounding to whole batches: fewer than one batch per rank
            assert len(seen) >= corp.train_rows - world * bs


def test_a_corpus_of_one_block_trains_on_every_worker(samples_root):
    """The defect: shares were whole blocks, so with one block (256 files, the default shard) the second worker got
    nothing and every rank ran min(...) = 0 steps, yet the model was saved as healthy."""
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    one = dataclasses.replace(corp, blocks=corp.blocks[:1])
    assert one.blocks[0].train_rows >= 4
    shares = dataset.epoch_shares(one, 2, 0, seed=0)
    assert all(sum(p.rows for p in share) == one.train_rows // 2 for share in shares)
    assert dataset.steps_per_epoch(one, 2, 2) == one.train_rows // 2 // 2 > 0


def test_pk_batches_give_every_rank_the_agreed_steps_even_with_single_family_shares(samples_root):
    """The defect: 3 single-family blocks on 2 ranks with P=2 x K=4 gave [8, 0] batches: a hang on NCCL."""
    root, cfg = samples_root
    first = dataset.scan_corpus(root, cfg).blocks[:3]
    store = dataset.Store(root)
    pairs = [(sha, f"family-{i}") for i, b in enumerate(first)
             for sha in store.read_parquet(b.path, columns=["sha256"]).column("sha256").to_pylist()]
    corp = dataset.scan_corpus(root, cfg, labels=Labels.from_pairs(pairs, "one family per block"))
    corp3 = dataclasses.replace(corp, blocks=tuple(b for b in corp.blocks if b.path in {f.path for f in first}))
    assert all(len(set(dataset.read_block(corp3, b, "train")[1].tolist())) == 1 for b in corp3.blocks)
    steps = dataset.steps_per_epoch(corp3, 2, 8)
    assert steps > 0
    for epoch in range(4):
        for rank, share in enumerate(dataset.epoch_shares(corp3, 2, epoch, seed=0)):
            batches = list(dataset.shuffled_batches(corp3, share, 8, steps, buffer_rows=8, seed=rank, pk=(2, 4)))
            assert len(batches) == steps, (epoch, rank)
            assert all(len(y) >= 4 for _, y in batches)


def test_shuffle_buffer_mixes_family_clustered_blocks(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    blocks = list(corp.blocks)
    in_order = [y for b in blocks for y in np.array_split(dataset.read_block(corp, b, "train")[1], 2) if len(y)]
    whole = [dataset.Slice(b, 0, b.train_rows) for b in blocks]
    mixed = [y for _, y in dataset.shuffled_batches(corp, whole, 8, corp.train_rows // 8, 10_000, seed=0)]
    assert dataset.family_mixing(mixed) > dataset.family_mixing(in_order) + 1


def test_precise_bn_sample_is_uniform_by_hash_not_path_order(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    picked = [len(dataset.read_block(corp, b, "precise")[1]) for b in corp.blocks]
    assert 0.5 * 60 < sum(picked) < 1.5 * 60
    # drawn from all over the corpus: the first blocks (in path order) do not hold the whole sample
    assert sum(1 for n in picked if n) > len(corp.blocks) / 2
    capped = dataclasses.replace(corp, rule=dataclasses.replace(corp.rule, precise_fraction=1.0))
    assert sum(len(dataset.read_block(capped, b, "precise")[1]) for b in corp.blocks) == corp.rule.statistics_files


def test_no_samples_of_these_settings_is_one_clear_error(samples_root):
    root, cfg = samples_root
    other = dataclasses.replace(cfg, raster=RasterConfig(size=32))
    with pytest.raises(dataset.NoSamples, match="rasterize with the same settings"):
        dataset.scan_corpus(root, other)
