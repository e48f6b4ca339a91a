"""The one data split: which files train, which are held out, which make the BN health probe and the
precise-BN sample. Used by training, recalibration, evaluation and the BN study alike.

Every decision is a function of a file's sha256 (and family) and a few numbers, never of file order or
machine: the same file lands on the same side everywhere, and a worker can label its own rows from the
small `SplitRule` without the driver ever holding the list of files.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from embedlib.config import Config


def bucket(key: str, salt: str = "holdout") -> float:
    """A stable pseudo-random number in [0, 1) from a key (a sha256, a family, a path)."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def is_holdout(sha256: str, fraction: float) -> bool:
    return bucket(sha256, "holdout") < fraction


FAMILY_SALT = "family-split"


def is_unseen_family(family: str | None, fraction: float) -> bool:
    """A family never trained on (train.unseen_family_fraction, for family-disjoint evaluation): a stable hash
    of its name, the same on every machine and corpus."""
    return bool(family) and fraction > 0 and bucket(family, FAMILY_SALT) < fraction


@dataclass(frozen=True)
class SplitRule:
    """Everything needed to label a row: the classes and the sampling thresholds."""

    families: tuple[str, ...]  # class index -> family (families with >= min_family_size training files)
    holdout_fraction: float
    probe_fraction: float  # of statistics rows, by bucket(sha256, "probe"): the BN health probe
    precise_fraction: float  # of statistics rows, by bucket(sha256, "precise-bn"): the precise-BN sample
    train_files: int = 0
    holdout_files: int = 0
    unseen_fraction: float = 0.0  # families kept out of training (is_unseen_family)
    statistics_files: int = 0  # rows that make the population statistics (in_statistics)
    self_supervised: bool = False  # every statistics row trains, labelled or not (train.self_supervised)
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.index.update({f: i for i, f in enumerate(self.families)})

    def label(self, family: str | None) -> int:
        """Class index, or -1 for a file of no class (unlabelled, or its family is too small)."""
        return self.index.get(family, -1) if family else -1

    def role(self, sha256: str, family: str | None) -> str:
        """'train' or 'holdout' (a file of a class), 'unlabelled' (no family), 'unseen' (of a family kept out of
        training), or 'other' (of a family too small to be a class)."""
        if not family:
            return "unlabelled"
        if is_unseen_family(family, self.unseen_fraction):
            return "unseen"
        if self.label(family) < 0:
            return "other"
        return "holdout" if is_holdout(sha256, self.holdout_fraction) else "train"

    def in_statistics(self, sha256: str, family: str | None) -> bool:
        """Whether a row counts in the population statistics (the sketches' document frequencies, BatchNorm's
        precise statistics, the health probe): every file but held-out ones and those of families kept out of
        training. Unlabelled files count: the statistics need no labels, and they are what gets embedded."""
        role = self.role(sha256, family)
        return role in ("train", "unlabelled") or (role == "other" and not is_holdout(sha256, self.holdout_fraction))

    def trains(self, sha256: str, family: str | None) -> bool:
        """Whether a row is read by the training loop: a labelled training row, and with self-supervision every
        statistics row (unlabelled files, files of families too small to be classes). Held-out files and files of
        families kept out of training never train."""
        return self.role(sha256, family) == "train" or (self.self_supervised and self.in_statistics(sha256, family))

    def in_probe(self, sha256: str) -> bool:
        return bucket(sha256, "probe") < self.probe_fraction

    def in_precise_sample(self, sha256: str) -> bool:
        return bucket(sha256, "precise-bn") < self.precise_fraction


def training_family_counts(rows: Iterable[tuple[str, str | None]], holdout_fraction: float,
                           unseen_fraction: float = 0.0) -> Counter:
    """Training files per family (not held out, not of an unseen family), from (sha256, family) pairs in any
    order."""
    return Counter(f for s, f in rows
                   if f and not is_holdout(s, holdout_fraction) and not is_unseen_family(f, unseen_fraction))


def make_rule(train_counts: Counter, cfg: Config, holdout_files: int = 0,
              classes: list[str] | None = None, statistics_files: int | None = None) -> SplitRule:
    """Classes are the families with at least train.min_family_size training files (or `classes`, fixed: a
    checkpoint's); the probe and the precise-BN sample are uniform over the statistics rows (by hash), sized by
    train.probe_samples and train.precise_bn_max_samples."""
    if classes is None:
        classes = sorted(f for f, n in train_counts.items() if n >= cfg.train.min_family_size)
    classes = tuple(classes)
    n_train = sum(train_counts[f] for f in classes) or sum(train_counts.values())
    n_stats = statistics_files if statistics_files is not None else n_train
    probe = min(1.0, cfg.train.probe_samples / n_stats) if n_stats else 0.0
    precise = min(1.0, cfg.train.precise_bn_max_samples / n_stats) if n_stats else 0.0
    return SplitRule(classes, cfg.train.holdout_fraction, probe, precise, n_train, holdout_files,
                     cfg.train.unseen_family_fraction, n_stats)


@dataclass(frozen=True)
class Split:
    """The split of an in-memory list of files (sha256 -> class index per role)."""

    rule: SplitRule
    train: dict[str, int]
    holdout: dict[str, int]
    probe: dict[str, int]

    @property
    def families(self) -> list[str]:
        return list(self.rule.families)


def make_split(sha256s: list[str], families: list[str | None], cfg: Config) -> Split:
    """The split for files in memory (the BN study, evaluation, tests): the same rule as training's."""
    counts = training_family_counts(zip(sha256s, families), cfg.train.holdout_fraction,
                                    cfg.train.unseen_family_fraction)
    rule = make_rule(counts, cfg)
    train, holdout = {}, {}
    for s, f in zip(sha256s, families):
        role = rule.role(s, f)
        if role in ("train", "holdout"):
            (train if role == "train" else holdout)[s] = rule.label(f)
    probe = {s: c for s, c in train.items() if rule.in_probe(s)}
    return Split(rule, train, holdout, probe)
