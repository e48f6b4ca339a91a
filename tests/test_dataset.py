"""The training corpus as blocks: one split everywhere, equal steps on every rank, every row seen, mixed
batches, and the precise-BN sample uniform over the corpus (not the first N in path order)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from embedlib import corpus, dataset, pipeline, split
from embedlib.config import Config, InputConfig, RasterConfig, TrainConfig, ViewsConfig


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
                 train=TrainConfig(min_family_size=2, probe_samples=40, precise_bn_max_samples=60))
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


def test_every_rank_gets_the_same_steps_and_rows_are_not_dropped_for_good(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    bs, world = 8, 3
    seen: Counter = Counter()
    for epoch in range(6):
        steps = dataset.steps_per_epoch(corp, world, epoch, seed=0, batch_size=bs)
        shares = dataset.epoch_shares(corp, world, epoch, seed=0)
        assert sorted(b.path for s in shares for b in s) == sorted(b.path for b in corp.blocks)
        for rank, share in enumerate(shares):
            batches = list(dataset.shuffled_batches(corp, share, bs, steps, buffer_rows=32, seed=epoch * 10 + rank))
            assert len(batches) == steps and all(len(y) == bs for _, y in batches)
            for views, _ in batches:
                seen.update(map(bytes, views["image"].reshape(len(views["image"]), -1)))
    every = {bytes(v) for b in corp.blocks for v in dataset.read_block(corp, b, "train")[0]["image"].reshape(-1, 256)}
    assert set(seen) == every  # over a few epochs, every training row was trained on


def test_shuffle_buffer_mixes_family_clustered_blocks(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    blocks = list(corp.blocks)
    in_order = [y for b in blocks for y in np.array_split(dataset.read_block(corp, b, "train")[1], 2) if len(y)]
    mixed = [y for _, y in dataset.shuffled_batches(corp, blocks, 8, corp.train_rows // 8, 10_000, seed=0)]
    assert dataset.family_mixing(mixed) > dataset.family_mixing(in_order) + 1


def test_precise_bn_sample_is_uniform_by_hash_not_path_order(samples_root):
    root, cfg = samples_root
    corp = dataset.scan_corpus(root, cfg)
    picked = [len(dataset.read_block(corp, b, "precise")[1]) for b in corp.blocks]
    assert 0.5 * 60 < sum(picked) < 1.5 * 60
    # drawn from all over the corpus: the first blocks (in path order) do not hold the whole sample
    assert sum(1 for n in picked if n) > len(corp.blocks) / 2
    capped = dataclasses.replace(corp, rule=dataclasses.replace(corp.rule, precise_fraction=1.0))
    assert sum(len(dataset.read_block(capped, b, "precise")[1]) for b in corp.blocks) == corp.train_rows


def test_no_samples_of_these_settings_is_one_clear_error(samples_root):
    root, cfg = samples_root
    other = dataclasses.replace(cfg, raster=RasterConfig(size=32))
    with pytest.raises(dataset.NoSamples, match="rasterize with the same settings"):
        dataset.scan_corpus(root, other)
