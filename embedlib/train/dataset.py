"""The training corpus as blocks: the Parquet files of a samples table (jobs.rasterize), read by whoever needs
them — a Ray Train worker, a precise-BN task, a held-out-accuracy task — with labels from the split rule.

Shuffling that stays cheap at millions of files: each epoch permutes the *blocks* (files of a few hundred
rows) with a seed, lays their training rows end to end and cuts them into one equal run of rows per worker
(a block may be split between two workers, so a corpus of one block trains on any number of them); each
worker streams its share through a shuffle buffer of `train.shuffle_buffer` rows (a full shuffle when its
share fits). Blocks hold files of nearby paths (often one family), so the buffer is what makes batches
mixed-family, which BatchNorm's batch statistics need (ARCHITECTURE.md pitfall 11). Every worker runs the
same number of steps, and no row sits out an epoch beyond the rounding to whole batches (fewer than one
batch per worker, different rows each epoch).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import pyarrow as pa

from embedlib import views
from embedlib.config import Config
from embedlib.errors import UserError
from embedlib.train.labels import Labels
from embedlib.root import catalog
from embedlib.root.store import Store
from embedlib.train.split import SplitRule, make_rule, training_family_counts


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
    labels: Labels
    unlabelled_rows: int = 0  # rows of the corpus without a family (counted by scan_corpus)

    @property
    def train_rows(self) -> int:
        return sum(b.train_rows for b in self.blocks)

    def fingerprint(self) -> str:
        """What the training input is: the blocks (paths and row counts), the classes and the labels."""
        h = hashlib.sha256()
        for b in self.blocks:
            h.update(f"{b.path}\t{b.rows}\t{b.train_rows}\n".encode())
        h.update(json.dumps([self.rule.families, self.labels.digest]).encode())
        return h.hexdigest()[:16]


def sample_files(root: str, cfg: Config) -> list[str]:
    """The samples table's files of the views version `cfg` makes (NoSamples when there are none)."""
    store = Store(root)
    version = views.views_version(cfg)
    files = catalog.table_files(store, "samples", version)
    if not files:
        have = sorted({p.split("/")[1] for p in store.find("samples", ".parquet")})
        raise NoSamples(f"{store.root} has no samples of views version {version} (raster.size={cfg.raster.size}, "
                        f"input.max_bytes={cfg.input.max_bytes}); it has {', '.join(have) or 'none'}: rasterize "
                        "with the same settings (python -m jobs.rasterize)")
    return files


def recorded_labels(root: str, cfg: Config) -> Labels:
    """The families written into the samples table when each content was rasterized (they do not follow later
    corrections of the manifest: pass the manifest to training for that)."""
    store = Store(root)
    pairs = []
    for f in sample_files(root, cfg):
        t = store.read_parquet(f, columns=["sha256", "family"])
        pairs += zip(t.column("sha256").to_pylist(), t.column("family").to_pylist())
    return Labels.from_pairs(pairs, f"the families recorded in {store.root} when it was rasterized")


def mostly_unlabelled(unlabelled: int, total: int, rule: SplitRule) -> bool:
    """What train.self_supervised=auto and train.pseudo_families=auto look for: most rows without a family, or
    fewer than 2 families to tell apart."""
    return 2 * unlabelled > total or len(rule.families) < 2


def scan_corpus(root: str, cfg: Config, labels: Labels | None = None, families: list[str] | None = None) -> Corpus:
    """Two passes over the small sha256 column: the classes, then each block's training rows. Memory
    O(blocks + labels), whatever the number of rows. `labels` (default: the families recorded at rasterization)
    say each content's family; `families` fixes the classes (a checkpoint's, when recalibrating it) instead of
    deriving them from the corpus."""
    store = Store(root)
    files = sample_files(root, cfg)
    labels = labels if labels is not None else recorded_labels(root, cfg)

    def identities(f: str) -> list[tuple[str, str | None]]:
        shas = store.read_parquet(f, columns=["sha256"]).column("sha256").to_pylist()
        return list(zip(shas, labels.lookup(shas)))

    counts = Counter()
    unlabelled = total = 0
    for f in files:
        rows = identities(f)
        counts += training_family_counts(rows, cfg.train.holdout_fraction, cfg.train.unseen_family_fraction)
        unlabelled += sum(not fam for _, fam in rows)
        total += len(rows)
    rule = make_rule(counts, cfg, classes=families)
    # auto: without labels for most of the corpus (or without 2 families) the unlabelled rows train too
    ssl = cfg.train.self_supervised == "true" or (
        cfg.train.self_supervised == "auto" and families is None and mostly_unlabelled(unlabelled, total, rule))
    rule = replace(rule, self_supervised=ssl)
    blocks, holdout, stats = [], 0, 0
    for f in files:
        rows = identities(f)
        roles = Counter(rule.role(s, fam) for s, fam in rows)
        blocks.append(Block(f, len(rows), sum(rule.trains(s, fam) for s, fam in rows)))
        holdout += roles["holdout"]
        stats += sum(rule.in_statistics(s, fam) for s, fam in rows)
    rule = replace(make_rule(counts, cfg, holdout, classes=families, statistics_files=stats), self_supervised=ssl)
    return Corpus(store.root, tuple(blocks), rule, cfg, labels, unlabelled)


def selected(rule: SplitRule, select: str, sha256: str, family: str | None) -> bool:
    """Row selection by name: 'train' (the rows the training loop reads: SplitRule.trains), 'holdout'; 'statistics' (rows of the population statistics: training,
    unlabelled and small-family rows, SplitRule.in_statistics), 'probe' / 'precise' (statistics rows in the probe
    / the precise-BN sample); 'all', and 'any_probe' / 'any_precise' (any row in the probe / sample)."""
    if select == "all":
        return True
    if select.startswith("any_"):
        return rule.in_probe(sha256) if select == "any_probe" else rule.in_precise_sample(sha256)
    if select == "train":
        return rule.trains(sha256, family)
    if select == "holdout":
        return rule.role(sha256, family) == select
    if not rule.in_statistics(sha256, family):
        return False
    if select == "statistics":
        return True
    return rule.in_probe(sha256) if select == "probe" else rule.in_precise_sample(sha256)


def read_block(corpus: Corpus, block: Block, select: str) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """(views [n, ...], labels [n] (-1 = no class), sha256s) of one block's rows that `select` (see selected)."""
    table = Store(corpus.root).read_parquet(block.path)
    rule = corpus.rule
    shas = table.column("sha256").to_pylist()
    fams = corpus.labels.lookup(shas)
    keep = [i for i, (s, f) in enumerate(zip(shas, fams)) if selected(rule, select, s, f)]
    table = table.take(pa.array(keep, pa.int64()))
    batch = {name: views.decode_column(table.column(f"view_{name}").to_pylist(), name, corpus.config)
             for name in views.view_specs(corpus.config)}
    labels = np.asarray([rule.label(fams[i]) for i in keep], dtype=np.int64)
    return batch, labels, [shas[i] for i in keep]


@dataclass(frozen=True)
class Slice:
    """Rows [start, stop) of a block's training rows (in the order read_block returns them)."""

    block: Block
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def epoch_shares(corpus: Corpus, world: int, epoch: int, seed: int) -> list[list[Slice]]:
    """The training rows each of `world` workers reads in `epoch`: the blocks in a seeded permutation, laid end to
    end and cut into `world` equal runs of rows (a block may be split between two workers). Every rank gets
    exactly the same number of rows, so a corpus of one block trains on any number of workers; the last
    `train_rows % world` rows of the permutation (fewer than `world`) sit out this epoch only."""
    order = np.random.default_rng([seed, epoch]).permutation(len(corpus.blocks))
    per_rank = corpus.train_rows // world
    shares: list[list[Slice]] = [[] for _ in range(world)]
    rank, room = 0, per_rank
    for i in order:
        block = corpus.blocks[i]
        start = 0
        while start < block.train_rows and rank < world:
            take = min(room, block.train_rows - start)
            if take:
                shares[rank].append(Slice(block, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                rank, room = rank + 1, per_rank
        if rank == world:
            break
    return shares


def rows_per_rank(corpus: Corpus, world: int) -> int:
    """Training rows every rank reads per epoch (the same for every epoch and rank)."""
    return corpus.train_rows // world


def steps_per_epoch(corpus: Corpus, world: int, batch_size: int) -> int:
    """Full batches per rank and epoch, the same on every rank (every rank knows it without asking): rows past the
    last full batch of a share (fewer than `batch_size` per rank) sit out this epoch only."""
    return rows_per_rank(corpus, world) // batch_size


def read_slice(corpus: Corpus, piece: Slice) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(views, labels) of one slice of a block's training rows."""
    views, labels, _ = read_block(corpus, piece.block, "train")
    cut = slice(piece.start, piece.stop)
    return {k: v[cut] for k, v in views.items()}, labels[cut]


def shuffled_batches(corpus: Corpus, share: list[Slice], batch_size: int, steps: int, buffer_rows: int,
                     seed: int, pk: tuple[int, int] | None = None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Exactly `steps` batches of training rows from `share` through a shuffle buffer of `buffer_rows`.
    pk=(P, K): batches of P families x K files each, drawn from the buffer (train_loop.pk_batches) instead of
    uniformly; they hold P x K rows (pass batch_size = P x K). Raises ValueError when the share holds fewer rows
    than `steps` batches need: a rank that yields fewer batches than the others would hang the collectives."""
    if pk:
        yield from _pk_batches(corpus, share, steps, buffer_rows, seed, pk)
        return
    rng = np.random.default_rng(seed)
    pool_views: list[dict[str, np.ndarray]] = []
    pool_labels: list[np.ndarray] = []
    produced = 0
    pending = list(share)

    def pooled() -> int:
        return sum(len(x) for x in pool_labels)

    while produced < steps:
        while pending and pooled() < max(buffer_rows, batch_size):
            batch, labels = read_slice(corpus, pending.pop(0))
            pool_views.append(batch)
            pool_labels.append(labels)
        merged = {k: np.concatenate([p[k] for p in pool_views]) for k in pool_views[0]} if pool_views else {}
        labels = np.concatenate(pool_labels) if pool_labels else np.zeros(0, np.int64)
        if len(labels) < batch_size:
            raise ValueError(f"a training share ran out of rows after {produced} of {steps} batches")
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


def _pk_batches(corpus: Corpus, share: list[Slice], steps: int, buffer_rows: int, seed: int,
                pk: tuple[int, int]) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Exactly `steps` P x K batches from buffer-sized windows of `share`, cycling through it until they are out.
    A window with a single family (a share of one family's blocks) cannot make P x K batches: it gives batches of
    P x K of its rows drawn with replacement instead, so every rank runs the agreed number of steps."""
    size = pk[0] * pk[1]
    produced, attempt = 0, 0
    pending = list(share)
    if steps and not share:
        raise ValueError("a training share holds no rows")
    while produced < steps:
        views, labels = [], []
        while pending and sum(len(y) for y in labels) < buffer_rows:
            v, y = read_slice(corpus, pending.pop(0))
            views.append(v)
            labels.append(y)
        if not labels:  # every slice used: go round again with another draw
            pending, attempt = list(share), attempt + 1
            continue
        merged = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
        all_labels = np.concatenate(labels)
        window_seed = seed + 7919 * attempt + produced
        batches = pk_batches(all_labels, pk[0], pk[1], window_seed)
        if not batches:
            rng = np.random.default_rng(window_seed)
            batches = [rng.choice(len(all_labels), size, replace=len(all_labels) < size)
                       for _ in range(max(1, len(all_labels) // size))]
        for idx in batches:
            if produced == steps:
                return
            yield {k: v[idx] for k, v in merged.items()}, all_labels[idx]
            produced += 1


def pk_batches(labels: np.ndarray, families_per_batch: int, files_per_family: int, seed: int) -> list[np.ndarray]:
    """P x K batches for one epoch (indices into `labels`): P families per batch, K files of each.

    Every file is used about once per epoch: each family's files are shuffled and cut into groups of K (a
    family with fewer than K files repeats some, a last short group is topped up from the family's start);
    the groups are then shuffled and dealt P per batch, never two groups of one family in a batch. Such
    batches are deliberately not i.i.d.: they are what contrastive losses need, and what bends BatchNorm's
    running statistics (precise BN recomputes them over shuffled data afterwards)."""
    rng = np.random.default_rng(seed)
    groups: list[tuple[int, np.ndarray]] = []
    for fam in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == fam))
        if len(idx) < files_per_family:
            idx = np.concatenate([idx, rng.choice(idx, files_per_family - len(idx))])
        n_groups = -(-len(idx) // files_per_family)
        padded = np.concatenate([idx, idx[: n_groups * files_per_family - len(idx)]])
        groups += [(int(fam), g) for g in padded.reshape(n_groups, files_per_family)]
    order = rng.permutation(len(groups))
    batches: list[np.ndarray] = []
    pending: list[tuple[int, np.ndarray]] = [groups[i] for i in order]
    while pending:
        batch, used, rest = [], set(), []
        for fam, g in pending:
            if len(batch) < families_per_batch and fam not in used:
                batch.append(g)
                used.add(fam)
            else:
                rest.append((fam, g))
        if len(batch) < 2:  # only one family left: no negatives in such a batch
            break
        batches.append(np.concatenate(batch))
        pending = rest
    return batches
