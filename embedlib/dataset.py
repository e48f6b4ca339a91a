"""The training corpus as blocks: the Parquet files of a samples table (jobs.rasterize), read by whoever needs
them — a Ray Train worker, a precise-BN task, a held-out-accuracy task — with labels from the split rule.

Shuffling that stays cheap at millions of files: each epoch permutes the *blocks* (files of a few hundred
rows) with a seed, deals them round-robin to the workers, and each worker streams its blocks through a
shuffle buffer of `train.shuffle_buffer` rows (a full shuffle when its share fits). Blocks hold files of
nearby paths (often one family), so the buffer is what makes batches mixed-family, which BatchNorm's batch
statistics need (ARCHITECTURE.md pitfall 11). Every worker runs the same number of steps (the smallest
share): rows past that are left out of this epoch only; the next epoch deals differently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from embedlib import views
from embedlib.config import Config
from embedlib.errors import UserError
from embedlib.pipeline import catalog
from embedlib.pipeline.store import Store
from embedlib.split import SplitRule, make_rule, training_family_counts


class NoSamples(UserError):
    """The corpus has no samples of the views version the settings ask for."""


@dataclass(frozen=True)
class Block:
    path: str  # relative to the corpus root
    rows: int
    train_rows: int


@dataclass(frozen=True)
class Corpus:
    """Where the blocks are and how to label their rows: small, picklable, sent to every worker."""

    root: str
    blocks: tuple[Block, ...]
    rule: SplitRule
    config: Config

    @property
    def train_rows(self) -> int:
        return sum(b.train_rows for b in self.blocks)


def scan_corpus(root: str, cfg: Config, families: list[str] | None = None) -> Corpus:
    """Two passes over the small (sha256, family) columns: the classes, then each block's training rows.
    Memory O(blocks + families), whatever the number of rows. `families` fixes the classes (a checkpoint's,
    when recalibrating it) instead of deriving them from the corpus."""
    store = Store(root)
    version = views.views_version(cfg)
    files = catalog.table_files(store, "samples", version)
    if not files:
        have = sorted({p.split("/")[1] for p in store.find("samples", ".parquet")})
        raise NoSamples(f"{store.root} has no samples of views version {version} (raster.size={cfg.raster.size}, "
                        f"input.max_bytes={cfg.input.max_bytes}); it has {', '.join(have) or 'none'}: rasterize "
                        "with the same settings (python -m jobs.rasterize)")

    def identities(f: str) -> list[tuple[str, str | None]]:
        t = store.read_parquet(f, columns=["sha256", "family"])
        return list(zip(t.column("sha256").to_pylist(), t.column("family").to_pylist()))

    counts = Counter()
    for f in files:
        counts += training_family_counts(identities(f), cfg.train.holdout_fraction, cfg.train.unseen_family_fraction)
    rule = make_rule(counts, cfg, classes=families)
    blocks, holdout = [], 0
    for f in files:
        roles = Counter(rule.role(s, fam) for s, fam in identities(f))
        blocks.append(Block(f, sum(roles.values()), roles["train"]))
        holdout += roles["holdout"]
    return Corpus(store.root, tuple(blocks), make_rule(counts, cfg, holdout, classes=families), cfg)


def selected(rule: SplitRule, select: str, sha256: str, family: str | None) -> bool:
    """Row selection by name: 'train', 'holdout', 'probe' / 'precise' (training rows in the probe / precise-BN
    sample), 'all', and 'any_probe' / 'any_precise' (any row, labelled or not, in the probe / sample)."""
    if select == "all":
        return True
    if select.startswith("any_"):
        return rule.in_probe(sha256) if select == "any_probe" else rule.in_precise_sample(sha256)
    role = rule.role(sha256, family)
    if select in ("train", "holdout"):
        return role == select
    if role != "train":
        return False
    return rule.in_probe(sha256) if select == "probe" else rule.in_precise_sample(sha256)


def read_block(corpus: Corpus, block: Block, select: str) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """(views [n, ...], labels [n] (-1 = no class), sha256s) of one block's rows that `select` (see selected)."""
    table = Store(corpus.root).read_parquet(block.path)
    rule = corpus.rule
    shas, fams = table.column("sha256").to_pylist(), table.column("family").to_pylist()
    keep = [i for i, (s, f) in enumerate(zip(shas, fams)) if selected(rule, select, s, f)]
    table = table.take(pa.array(keep, pa.int64()))
    batch = {name: views.decode_column(table.column(f"view_{name}").to_pylist(), name, corpus.config)
             for name in views.view_specs(corpus.config)}
    labels = np.asarray([rule.label(fams[i]) for i in keep], dtype=np.int64)
    return batch, labels, [shas[i] for i in keep]


def epoch_shares(corpus: Corpus, world: int, epoch: int, seed: int) -> list[list[Block]]:
    """The blocks each of `world` workers reads in `epoch`: a seeded permutation dealt round-robin."""
    order = np.random.default_rng([seed, epoch]).permutation(len(corpus.blocks))
    return [[corpus.blocks[i] for i in order[r::world]] for r in range(world)]


def steps_per_epoch(corpus: Corpus, world: int, epoch: int, seed: int, batch_size: int) -> int:
    """The same for every worker: the smallest share's full batches (every rank knows it without asking)."""
    shares = epoch_shares(corpus, world, epoch, seed)
    return min(sum(b.train_rows for b in share) for share in shares) // batch_size


def shuffled_batches(corpus: Corpus, blocks: list[Block], batch_size: int, steps: int, buffer_rows: int,
                     seed: int, pk: tuple[int, int] | None = None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Exactly `steps` batches of training rows from `blocks` through a shuffle buffer of `buffer_rows`.
    pk=(P, K): batches of P families x K files each, drawn from the buffer (train_loop.pk_batches) instead of
    uniformly; they hold P x K rows whatever batch_size says."""
    if pk:
        yield from _pk_batches(corpus, blocks, steps, buffer_rows, seed, pk)
        return
    rng = np.random.default_rng(seed)
    pool_views: list[dict[str, np.ndarray]] = []
    pool_labels: list[np.ndarray] = []
    produced = 0
    pending = list(blocks)

    def pooled() -> int:
        return sum(len(x) for x in pool_labels)

    while produced < steps:
        while pending and pooled() < max(buffer_rows, batch_size):
            batch, labels, _ = read_block(corpus, pending.pop(0), "train")
            pool_views.append(batch)
            pool_labels.append(labels)
        merged = {k: np.concatenate([p[k] for p in pool_views]) for k in pool_views[0]} if pool_views else {}
        labels = np.concatenate(pool_labels) if pool_labels else np.zeros(0, np.int64)
        if len(labels) < batch_size:
            return  # fewer rows than promised: cannot happen when `steps` came from steps_per_epoch
        order = rng.permutation(len(labels))
        # Emit batches while the buffer stays at least half full (or nothing is left to read).
        emit = len(labels) // batch_size if not pending else max(1, (len(labels) - buffer_rows // 2) // batch_size)
        emit = min(emit, steps - produced)
        for b in range(emit):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield {k: v[idx] for k, v in merged.items()}, labels[idx]
        produced += emit
        rest = order[emit * batch_size :]
        pool_views, pool_labels = [{k: v[rest] for k, v in merged.items()}], [labels[rest]]


def family_mixing(labels_per_batch: list[np.ndarray]) -> float:
    """Mean number of distinct classes per batch: how mixed batches are (for the shuffle benchmark)."""
    return float(np.mean([len(np.unique(b)) for b in labels_per_batch])) if labels_per_batch else 0.0


def _pk_batches(corpus: Corpus, blocks: list[Block], steps: int, buffer_rows: int, seed: int,
                pk: tuple[int, int]) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """P x K batches from buffer-sized windows of `blocks`, cycling through them until `steps` are out."""
    from embedlib.train_loop import pk_batches

    produced, attempt = 0, 0
    pending = list(blocks)
    while produced < steps:
        views, labels = [], []
        while pending and sum(len(y) for y in labels) < buffer_rows:
            v, y, _ = read_block(corpus, pending.pop(0), "train")
            views.append(v)
            labels.append(y)
        if not labels:  # every block used: go round again with another draw
            pending, attempt = list(blocks), attempt + 1
            if attempt > steps:
                return
            continue
        merged = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
        all_labels = np.concatenate(labels)
        for idx in pk_batches(all_labels, pk[0], pk[1], seed + 7919 * attempt + produced):
            if produced == steps:
                return
            yield {k: v[idx] for k, v in merged.items()}, all_labels[idx]
            produced += 1
