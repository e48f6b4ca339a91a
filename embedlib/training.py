"""The training job around Ray Train: the split, then training, then the steps that make BatchNorm honest —
the health report before precise BN, precise BN over a uniform sample of the training files, the report
after, held-out accuracy — and an atomic checkpoint.

The per-row work after training runs over the corpus's blocks in parallel (`BlockMap`: Ray tasks, or this
process in tests) and comes back as small results to merge: per-channel moments (merged exactly with
Moments.merge), correct counts. The driver holds the model and the probe (train.probe_samples rows), never
the corpus.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from embedlib import checkpoint, health, precise_bn
from embedlib.config import Config
from embedlib.dataset import Block, Corpus, read_block, scan_corpus
from embedlib.errors import UserError
from embedlib.model import batch_norms
from embedlib.train_loop import batches_of, correct_count, new_model
from embedlib.views import sketch_views


class NotEnoughFamilies(UserError):
    """Training needs at least two classes."""


class BlockMap(Protocol):
    """Runs fn(corpus, blocks, *args) over groups of the corpus's blocks; results in any order."""

    def __call__(self, fn: Callable, corpus: Corpus, *args) -> Iterator[Any]: ...


def local_block_map(fn: Callable, corpus: Corpus, *args) -> Iterator[Any]:
    """BlockMap in this process, one group of blocks at a time."""
    for group in block_groups(corpus.blocks, 8):
        yield fn(corpus, group, *args)


def block_groups(blocks: tuple[Block, ...], per_group: int) -> list[tuple[Block, ...]]:
    return [blocks[i : i + per_group] for i in range(0, len(blocks), per_group)]


def _model_from(state: bytes, cfg: Config, classes: int) -> torch.nn.Module:
    model = new_model(cfg, classes)
    model.load_state_dict(torch.load(io.BytesIO(state), map_location="cpu", weights_only=True))
    return model.eval()


def _state(model: torch.nn.Module) -> bytes:
    return checkpoint.weights_bytes(model)


# ---- functions that run over groups of blocks (in Ray tasks or here) -------------------------------------------

def rows_of(corpus: Corpus, blocks: tuple[Block, ...], select: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    parts = [read_block(corpus, b, select)[:2] for b in blocks]
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return {}, np.zeros(0, np.int64)
    return {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}, np.concatenate([p[1] for p in parts])


def layer_moments_of(corpus: Corpus, blocks: tuple[Block, ...], state: bytes, layer: str, select: str) -> dict:
    """Moments of one BN layer's input over the selected rows of `blocks` (a picklable state dict)."""
    torch.set_num_threads(1)
    model = _model_from(state, corpus.config, len(corpus.rule.families))
    views, labels = rows_of(corpus, blocks, select)
    if not len(labels):
        return precise_bn.Moments(precise_bn.layer_by_name(model, layer).num_features).to_state()
    batches = (b for b, _ in batches_of(views, labels, 256))
    return precise_bn.layer_moments(model, layer, batches).to_state()


def correct_of(corpus: Corpus, blocks: tuple[Block, ...], state: bytes, select: str) -> tuple[int, int]:
    """Eval-mode (correct, seen) over the selected rows of `blocks`."""
    torch.set_num_threads(1)
    model = _model_from(state, corpus.config, len(corpus.rule.families))
    views, labels = rows_of(corpus, blocks, select)
    return correct_count(model, batches_of(views, labels, 256), train_mode=False) if len(labels) else (0, 0)


def document_frequency_of(corpus: Corpus, blocks: tuple[Block, ...]) -> dict[str, tuple[np.ndarray, int]]:
    """Per sketch view: in how many of the blocks' training files each bucket occurs, and how many files."""
    out: dict[str, tuple[np.ndarray, int]] = {}
    for b in blocks:
        views, labels, _ = read_block(corpus, b, "train")
        for name in sketch_views(corpus.config):
            df, n = out.get(name, (0, 0))
            out[name] = (df + (views[name] > 0).sum(axis=0, dtype=np.int64), n + len(labels))
    return out


def document_frequencies(corpus: Corpus, block_map: BlockMap) -> dict[str, tuple[np.ndarray, int]]:
    """The training files' document frequency per sketch bucket: the IDF of the model's TF-IDF sketches, a
    statistic of the training population like BatchNorm's, merged from per-block counts."""
    total: dict[str, tuple[np.ndarray, int]] = {}
    for part in block_map(document_frequency_of, corpus):
        for name, (df, n) in part.items():
            old_df, old_n = total.get(name, (0, 0))
            total[name] = (old_df + df, old_n + n)
    return total


# ---- the steps after training -------------------------------------------------------------------------------------

def block_measure(corpus: Corpus, block_map: BlockMap, select: str = "precise") -> precise_bn.Measure:
    """precise_bn.Measure over the corpus: per-group moments from `block_map`, merged exactly."""

    def measure(model: torch.nn.Module, layer: str) -> precise_bn.Moments:
        total = precise_bn.Moments(precise_bn.layer_by_name(model, layer).num_features)
        for part in block_map(layer_moments_of, corpus, _state(model), layer, select):
            total.merge(precise_bn.Moments.from_state(part))
        return total

    return measure


def collect_probe(corpus: Corpus, block_map: BlockMap, select: str = "probe") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The BN health probe's rows (training files in the probe, ~train.probe_samples): small, held in memory."""
    parts = [p for p in block_map(rows_of, corpus, select) if len(p[1])]
    if not parts:
        return {}, np.zeros(0, np.int64)
    return {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}, np.concatenate([p[1] for p in parts])


def probe_batches(probe: tuple[dict[str, np.ndarray], np.ndarray], cfg: Config) -> list:
    """The probe in shuffled training-size batches (a batch of 1 never reaches BatchNorm)."""
    views, labels = probe
    return list(batches_of(views, labels, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed, drop_last=True))


def calibrate_and_check(model: torch.nn.Module, corpus: Corpus, block_map: BlockMap, cfg: Config,
                        say: Callable[[str], None] = print, whole_corpus: bool = False, probe=None) -> dict:
    """Health before, precise BN over the training files' uniform sample, health after, held-out accuracy:
    the checkpoint's metrics. The report that gates embedding is the one *after* recalibration; the one
    before stays in meta.json, so the gap that precise BN closed stays visible. whole_corpus: the probe and
    the precise-BN sample come from every file, labelled or not (recalibrating over a new corpus). `probe`:
    rows already collected (collect_probe)."""
    t = time.perf_counter()
    probe = probe_batches(probe or collect_probe(corpus, block_map, "any_probe" if whole_corpus else "probe"), cfg)
    out: dict[str, Any] = {"bn_health_before_precise_bn": health.bn_health(model, probe, cfg.health)}
    say(f"BN health before precise BN: {'OK' if out['bn_health_before_precise_bn']['healthy'] else 'FAILED'} "
        f"({time.perf_counter() - t:.0f} s)")
    if cfg.train.precise_bn and batch_norms(model):
        t = time.perf_counter()
        measure = block_measure(corpus, block_map, "any_precise" if whole_corpus else "precise")
        layers = precise_bn.recalibrate(model, measure,
                                        on_layer=lambda name, r: say(f"  precise BN {name}: "
                                                                     f"{r['values_per_channel']} values per channel"))
        out["precise_bn"] = {"layers": layers, "max_samples": cfg.train.precise_bn_max_samples,
                             "sample_fraction_of_training_files": corpus.rule.precise_fraction}
        say(f"precise BN over {len(layers)} layers ({time.perf_counter() - t:.0f} s)")
    out["bn_health"] = health.bn_health(model, probe, cfg.health)
    if whole_corpus:
        return out
    t = time.perf_counter()
    correct = seen = 0
    for c, n in block_map(correct_of, corpus, _state(model), "holdout"):
        correct, seen = correct + c, seen + n
    out["holdout_files"] = seen
    if seen:
        out["holdout_eval_mode_accuracy"] = correct / seen
        say(f"held-out accuracy (eval mode): {correct / seen:.3f} on {seen} files ({time.perf_counter() - t:.0f} s)")
    return out


def train(samples_root: str, output: str, cfg: Config, fit: Callable[..., tuple[dict, list]],
          block_map: BlockMap, say: Callable[[str], None] = print) -> dict:
    """Train on the corpus at `samples_root` (jobs.rasterize output) and write the checkpoint to `output`.
    `fit(cfg, corpus, probe, document_frequency)` runs the training (ray_io.train_with_ray) and returns (state
    dict, history); the probe rows and the sketches' document frequencies are collected once, beforehand."""
    corpus = scan_corpus(samples_root, cfg)
    rule = corpus.rule
    if len(rule.families) < 2:
        raise NotEnoughFamilies(f"training needs at least 2 families with >= {cfg.train.min_family_size} training "
                                f"files; {samples_root} has {len(rule.families)}: add labelled files (a manifest "
                                "with a family column) or lower train.min_family_size")
    if rule.train_files < cfg.train.batch_size * cfg.train.num_workers:
        raise NotEnoughFamilies(f"only {rule.train_files} training files: fewer than one batch per worker "
                                f"({cfg.train.num_workers} x {cfg.train.batch_size})")
    say(f"training on {rule.train_files} files of {len(rule.families)} families ({rule.holdout_files} held out) "
        f"in {len(corpus.blocks)} blocks; {cfg.train.num_workers} workers, norm={cfg.model.norm}, "
        f"{cfg.train.epochs} epochs")
    probe = collect_probe(corpus, block_map)
    df = document_frequencies(corpus, block_map)
    state, history = fit(cfg, corpus, probe, df)
    model = new_model(cfg, len(rule.families))
    model.load_state_dict(state)
    extra = calibrate_and_check(model, corpus, block_map, cfg, say, probe=probe)
    extra.update(history=history, train_files=rule.train_files, samples_root=samples_root)
    say("before precise BN -> " + health.describe(extra["bn_health_before_precise_bn"]))
    say("saved checkpoint  -> " + health.describe(extra["bn_health"]))
    meta = checkpoint.save(output, model, cfg, list(rule.families), extra)
    say(f"checkpoint {meta['model_version']} written to {output}")
    return meta


def recalibrate(model_uri: str, samples_root: str, output: str, block_map: BlockMap, max_samples: int | None = None,
                say: Callable[[str], None] = print) -> dict:
    """Precise BN of an existing checkpoint over a corpus (labels optional: a bigger unlabelled corpus is fine),
    health before and after, written as a new checkpoint."""
    import dataclasses

    ckpt = checkpoint.load(model_uri)
    cfg = ckpt.config
    if max_samples:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precise_bn_max_samples=max_samples))
    if not batch_norms(ckpt.model):
        raise NotEnoughFamilies(f"model {ckpt.version} has no BatchNorm layers (norm={cfg.model.norm}): nothing to "
                                "recalibrate")
    corpus = scan_corpus(samples_root, cfg, families=ckpt.families)
    rows = sum(b.rows for b in corpus.blocks)
    rule = dataclasses.replace(corpus.rule, probe_fraction=min(1.0, cfg.train.probe_samples / rows),
                               precise_fraction=min(1.0, cfg.train.precise_bn_max_samples / rows))
    corpus = dataclasses.replace(corpus, rule=rule)
    say(f"recalibrating {ckpt.version} over about {min(rows, cfg.train.precise_bn_max_samples)} of {rows} files")
    out = calibrate_and_check(ckpt.model, corpus, block_map, cfg, say, whole_corpus=True)
    extra = {k: v for k, v in ckpt.meta.items() if k not in ("model_version", "weights_sha256", "created_unix",
                                                             "config", "families")}
    extra.update(out, recalibrated_from=ckpt.version, recalibration_corpus=samples_root)
    say("before -> " + health.describe(out["bn_health_before_precise_bn"]))
    say("after  -> " + health.describe(out["bn_health"]))
    meta = checkpoint.save(output, ckpt.model, cfg, ckpt.families, extra)
    say(f"checkpoint {meta['model_version']} (recalibrated from {ckpt.version}) written to {output}")
    return meta
