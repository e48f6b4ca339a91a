"""The training job around Ray Train: the split, then training, then the steps that make BatchNorm honest —
the health report before precise BN, precise BN over a uniform sample of the training files, the report
after, held-out accuracy — and an atomic checkpoint.

The per-row work after training runs over the corpus's blocks in parallel (`BlockMap`: Ray tasks, or this
process in tests) and comes back as small results to merge: per-channel moments (merged exactly with
Moments.merge), correct counts. The driver holds the model and the probe (train.probe_samples rows), never
the corpus.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from embedlib.train import attempts

from embedlib.model import checkpoint

from embedlib.train import health

from embedlib.train import precise_bn
from embedlib.config import Config
from embedlib.train import pseudo
from embedlib.train.dataset import Block, Corpus, mostly_unlabelled, read_block, scan_corpus, steps_per_epoch
from embedlib.train.split import bucket
from embedlib.errors import UserError
from embedlib.train.labels import Labels
from embedlib.model.network import batch_norms, bn_stages
from embedlib.train.loop import batch_rows, batches_of, correct_count, new_model
from embedlib.views import document_frequency, weighted_views


class NotEnoughFamilies(UserError):
    """Training needs at least two classes."""


class NotEnoughData(UserError):
    """The training set cannot fill one batch."""


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


def stage_moments_of(corpus: Corpus, blocks: tuple[Block, ...], state: bytes, layers: list[str], select: str) -> dict:
    """Moments of the inputs of a stage of independent BN layers over the selected rows of `blocks`, in one pass
    (picklable states by layer name)."""
    torch.set_num_threads(1)
    model = _model_from(state, corpus.config, len(corpus.rule.families))
    views, labels = rows_of(corpus, blocks, select)
    if not len(labels):
        return {n: precise_bn.Moments(precise_bn.layer_by_name(model, n).num_features).to_state() for n in layers}
    batches = (b for b, _ in batches_of(views, labels, 256))
    return {n: m.to_state() for n, m in precise_bn.layer_moments(model, layers, batches).items()}


CONFIDENCE_BINS = 2000  # a histogram of cosines in [-1, 1]: quantiles of held-out confidence without holding rows
GATE_QUANTILE = 0.05  # the open-set gate opens fully at the confidence that 95% of held-out files reach


def confidence_histogram(model: torch.nn.Module, batches: Iterable[tuple[dict, torch.Tensor]]) -> np.ndarray:
    """Counts of the rows' confidence (EmbeddingNet.confidence, eval mode) in CONFIDENCE_BINS bins over [-1, 1]."""
    hist = np.zeros(CONFIDENCE_BINS, np.int64)
    was = model.training
    model.eval()
    with torch.no_grad():
        for views, _ in batches:
            conf = model.confidence(model.embed(views)).numpy()
            hist += np.histogram(conf, CONFIDENCE_BINS, (-1.0, 1.0))[0]
    model.train(was)
    return hist


def correct_of(corpus: Corpus, blocks: tuple[Block, ...], state: bytes, select: str) -> tuple[int, int, np.ndarray]:
    """Eval-mode (correct, seen, confidence histogram) over the selected rows of `blocks`."""
    torch.set_num_threads(1)
    model = _model_from(state, corpus.config, len(corpus.rule.families))
    views, labels = rows_of(corpus, blocks, select)
    if not len(labels):
        return 0, 0, np.zeros(CONFIDENCE_BINS, np.int64)
    correct, seen = correct_count(model, batches_of(views, labels, 256), train_mode=False)
    hist = confidence_histogram(model, batches_of(views, labels, 256)) if len(corpus.rule.families) else \
        np.zeros(CONFIDENCE_BINS, np.int64)
    return correct, seen, hist


def calibrate_gate(model: torch.nn.Module, hist: np.ndarray, cfg: Config, what: str) -> dict | None:
    """Open the model's open-set gate (EmbeddingNet.output) fully at the GATE_QUANTILE of `hist` (confidences of
    files of known families), closed model.gate_width below it. None for a model without a gate."""
    if not hasattr(model, "gate_range") or not hist.sum():
        return None
    edges = np.linspace(-1.0, 1.0, CONFIDENCE_BINS + 1)
    high = float(edges[np.searchsorted(np.cumsum(hist), GATE_QUANTILE * hist.sum())])
    model.calibrate_gate(high, cfg.model.gate_width)
    return {"high": high, "low": high - cfg.model.gate_width, "weight": cfg.model.gate_weight,
            "quantile": GATE_QUANTILE, "files": int(hist.sum()), "from": what}


def probe_and_frequencies_of(corpus: Corpus, blocks: tuple[Block, ...]) -> tuple[tuple[dict, np.ndarray], dict]:
    """One read of the blocks' statistics rows (training files and unlabelled ones: SplitRule.in_statistics) gives
    both what training needs up front: the BN health probe's rows and, per sketch view, in how many files each
    bucket occurs."""
    probe_views, probe_labels, df = [], [], {}
    weighted = weighted_views(corpus.config)
    for b in blocks:
        views, labels, shas = read_block(corpus, b, "statistics")
        for name in weighted:
            counts, n = df.get(name, (0, 0))
            df[name] = (counts + document_frequency(name, views[name], corpus.config), n + len(labels))
        keep = np.array([corpus.rule.in_probe(s) for s in shas], dtype=bool)
        if keep.any():
            probe_views.append({k: v[keep] for k, v in views.items()})
            probe_labels.append(labels[keep])
    probe = ({k: np.concatenate([p[k] for p in probe_views]) for k in probe_views[0]}, np.concatenate(probe_labels)) \
        if probe_labels else ({}, np.zeros(0, np.int64))
    return probe, df


def probe_and_frequencies(corpus: Corpus, block_map: BlockMap) -> tuple[tuple[dict, np.ndarray], dict]:
    """The probe rows (small, held in memory) and the document frequency per sketch bucket over the statistics rows
    (the IDF of the model's TF-IDF sketches, a statistic of the population like BatchNorm's), merged from
    per-group results of one pass over the corpus."""
    probes, total = [], {}
    for probe, part in block_map(probe_and_frequencies_of, corpus):
        if len(probe[1]):
            probes.append(probe)
        for name, (df, n) in part.items():
            old_df, old_n = total.get(name, (0, 0))
            total[name] = (old_df + df, old_n + n)
    if not probes:
        return ({}, np.zeros(0, np.int64)), total
    return ({k: np.concatenate([p[0][k] for p in probes]) for k in probes[0][0]},
            np.concatenate([p[1] for p in probes])), total


def fixed_vectors_of(corpus: Corpus, blocks: tuple[Block, ...], document_frequency: dict, fraction: float
                     ) -> tuple[list[str], list[str | None], np.ndarray]:
    """(sha256s, families or None, float16 fixed parts [n, skip_dim]) of the blocks' rows in the pseudo-family
    sample (a `fraction` of rows by sha256 hash): the untrained model's training-free part, which depends on the
    document frequencies alone."""
    torch.set_num_threads(1)
    model = new_model(corpus.config, 0, document_frequency).eval()
    shas, parts = [], []
    for b in blocks:
        views, _, block_shas = read_block(corpus, b, "all")
        keep = np.array([bucket(s, "pseudo") < fraction for s in block_shas], dtype=bool)
        if not keep.any():
            continue
        with torch.no_grad():
            for batch, _ in batches_of({k: v[keep] for k, v in views.items()}, np.zeros(int(keep.sum())), 256):
                parts.append(model.fixed_part(batch).to(torch.float16).numpy())
        shas += [s for s, k in zip(block_shas, keep) if k]
    vectors = np.concatenate(parts) if parts else np.zeros((0, model.concat_dim), np.float16)
    return shas, corpus.labels.lookup(shas), vectors


def with_pseudo_families(corpus: Corpus, block_map: BlockMap, say: Callable[[str], None]) -> Labels | None:
    """The corpus's labels plus a pseudo-family for every unlabelled file of the sample (embedlib.train.pseudo):
    one pass for the document frequencies, one for the fixed parts, then the grouping here in the driver
    (O(sample x skip_dim) memory, brute-force nearest neighbours). None, said, when the grouping is unusable
    (pseudo.usable): training then goes on without it."""
    cfg = corpus.config.train
    t = time.perf_counter()
    _, df = probe_and_frequencies(corpus, block_map)
    total = sum(b.rows for b in corpus.blocks)
    fraction = min(1.0, cfg.pseudo_max_files / max(total, 1))
    shas, known, parts = [], [], []
    for s, k, v in block_map(fixed_vectors_of, corpus, df, fraction):
        shas.extend(s)
        known.extend(k)
        parts.append(v)
    order = np.argsort(shas, kind="stable")  # the groups do not depend on the order the blocks came back in
    shas, known = [shas[i] for i in order], [known[i] for i in order]
    vectors = torch.from_numpy(np.concatenate(parts)[order].astype(np.float32))
    idx, sim = pseudo.nearest(vectors, cfg.pseudo_neighbours)
    group = pseudo.groups(idx, sim, cfg.pseudo_min_cosine)
    names = pseudo.families(shas, group, known)
    say(pseudo.describe(names, known) + f" ({time.perf_counter() - t:.0f} s)")
    if not pseudo.usable(group):
        say(f"notice: pseudo-families not used: one group holds more than {pseudo.MAX_SHARE:.0%} of the files "
            "(the fixed part, model.skip_dim, is too narrow or train.pseudo_min_cosine too low for this corpus)")
        return None
    listed = set(shas)
    pairs = list(zip(shas, names)) + [(s.hex(), corpus.labels.families[c]) for s, c in
                                      zip(corpus.labels.sha, corpus.labels.codes) if s.hex() not in listed]
    return Labels.from_pairs(pairs, f"{corpus.labels.source}, with pseudo-families for the files without one")


def wants_pseudo_families(corpus: Corpus) -> bool:
    """train.pseudo_families, with 'auto' resolved from the corpus (dataset.mostly_unlabelled); never for a
    model without a training-free part to group files by."""
    cfg = corpus.config
    if cfg.train.pseudo_families == "false" or not new_model(cfg, 0).concat_dim:
        if cfg.train.pseudo_families == "true":
            raise UserError("train.pseudo_families=true needs a fixed part to group files by "
                            "(model.sketch_skip=concat and a sketch or token_ids view)")
        return False
    return cfg.train.pseudo_families == "true" or (corpus.unlabelled_rows > 0 and mostly_unlabelled(
        corpus.unlabelled_rows, sum(b.rows for b in corpus.blocks), corpus.rule))


# ---- the steps after training -------------------------------------------------------------------------------------

class Scans:
    """How many times the steps of a training read the whole corpus, by purpose (printed, and in meta.json)."""

    def __init__(self) -> None:
        self.by_purpose: dict[str, int] = {}

    def count(self, purpose: str, block_map: BlockMap) -> BlockMap:
        """`block_map`, counting one scan of the corpus per call."""

        def counted(fn: Callable, corpus: Corpus, *args) -> Iterator[Any]:
            self.by_purpose[purpose] = self.by_purpose.get(purpose, 0) + 1
            return block_map(fn, corpus, *args)

        return counted

    def describe(self) -> str:
        parts = ", ".join(f"{purpose} {n}" for purpose, n in self.by_purpose.items())
        return f"corpus scans besides the epochs: {sum(self.by_purpose.values())} ({parts})"


def block_measure(corpus: Corpus, block_map: BlockMap, select: str = "precise") -> precise_bn.Measure:
    """precise_bn.Measure over the corpus: per-group moments of a stage's layers from `block_map`, merged exactly."""

    def measure(model: torch.nn.Module, layers: list[str]) -> dict[str, precise_bn.Moments]:
        total = {n: precise_bn.Moments(precise_bn.layer_by_name(model, n).num_features) for n in layers}
        for part in block_map(stage_moments_of, corpus, _state(model), layers, select):
            for n in layers:
                total[n].merge(precise_bn.Moments.from_state(part[n]))
        return total

    return measure


def collect_probe(corpus: Corpus, block_map: BlockMap, select: str = "probe") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The BN health probe's rows (~train.probe_samples): small, held in memory."""
    parts = [p for p in block_map(rows_of, corpus, select) if len(p[1])]
    if not parts:
        return {}, np.zeros(0, np.int64)
    return {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}, np.concatenate([p[1] for p in parts])


def probe_batches(probe: tuple[dict[str, np.ndarray], np.ndarray], cfg: Config) -> list:
    """The probe in shuffled training-size batches (a batch of 1 never reaches BatchNorm)."""
    views, labels = probe
    return list(batches_of(views, labels, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed, drop_last=True))


def calibrate_and_check(model: torch.nn.Module, corpus: Corpus, block_map: BlockMap, cfg: Config,
                        say: Callable[[str], None] = print, whole_corpus: bool = False, probe=None,
                        scans: Scans | None = None) -> dict:
    """Health before, precise BN over the training files' uniform sample, health after, held-out accuracy:
    the checkpoint's metrics. The report that gates embedding is the one *after* recalibration; the one
    before stays in meta.json, so the gap that precise BN closed stays visible. whole_corpus: the probe and
    the precise-BN sample come from every file, labelled or not (recalibrating over a new corpus). `probe`:
    rows already collected (probe_and_frequencies)."""
    scans = scans or Scans()
    t = time.perf_counter()
    if probe is None:
        probe = collect_probe(corpus, scans.count("probe", block_map), "any_probe" if whole_corpus else "probe")
    probe = probe_batches(probe, cfg)
    out: dict[str, Any] = {"bn_health_before_precise_bn": health.bn_health(model, probe, cfg.health)}
    say(f"BN health before precise BN: {'OK' if out['bn_health_before_precise_bn']['healthy'] else 'FAILED'} "
        f"({time.perf_counter() - t:.0f} s)")
    if cfg.train.precise_bn and batch_norms(model):
        t = time.perf_counter()
        measure = block_measure(corpus, scans.count("precise BN", block_map),
                                "any_precise" if whole_corpus else "precise")
        layers = precise_bn.recalibrate(model, measure,
                                        on_layer=lambda name, r: say(f"  precise BN {name}: "
                                                                     f"{r['values_per_channel']} values per channel"))
        out["precise_bn"] = {"layers": layers, "max_samples": cfg.train.precise_bn_max_samples,
                             "sample_fraction_of_training_files": corpus.rule.precise_fraction,
                             "passes": len(bn_stages(model))}
        say(f"precise BN over {len(layers)} layers in {len(bn_stages(model))} pass(es) over the sample "
            f"({time.perf_counter() - t:.0f} s)")
    out["bn_health"] = health.bn_health(model, probe, cfg.health)
    if whole_corpus:
        return out
    t = time.perf_counter()
    correct = seen = 0
    hist = np.zeros(CONFIDENCE_BINS, np.int64)
    for c, n, h in scans.count("held-out accuracy", block_map)(correct_of, corpus, _state(model), "holdout"):
        correct, seen, hist = correct + c, seen + n, hist + h
    out["holdout_files"] = seen
    if seen:
        out["holdout_eval_mode_accuracy"] = correct / seen
        say(f"held-out accuracy (eval mode): {correct / seen:.3f} on {seen} files ({time.perf_counter() - t:.0f} s)")
    gate = calibrate_gate(model, hist, cfg, "held-out files")
    if gate is None and hasattr(model, "gate_range"):  # no held-out file: the probe's labelled training files
        labelled = [({k: v[y >= 0] for k, v in views.items()}, y[y >= 0]) for views, y in probe]
        gate = calibrate_gate(model, confidence_histogram(model, labelled), cfg, "probe (training files)")
    if gate:
        out["open_set_gate"] = gate
        say(f"open-set gate: learned share {gate['weight']:g} from confidence {gate['high']:.3f} ({gate['quantile']:.0%} "
            f"of {gate['files']} {gate['from']} are below), none below {gate['low']:.3f}")
    return out


def objective_of(rule) -> str:
    """supervised (every training row labelled), semi-supervised (labels on some rows, InfoNCE on all) or
    self-supervised (no two families to tell apart: InfoNCE alone)."""
    if not rule.self_supervised:
        return "supervised"
    return "semi-supervised" if len(rule.families) >= 2 else "self-supervised"


# fit(cfg, corpus, probe, document_frequency, storage, run name) -> (final state dict, per-epoch history):
# ray_io.train_with_ray, or an in-process loop in tests
Fit = Callable[[Config, Corpus, Any, dict, str, str], tuple[dict, list]]


def fit_workers(train_rows: int, cfg: Config, say: Callable[[str], None]) -> Config:
    """cfg with as many workers as the training set can give a full batch to, saying so when that is fewer than
    asked; NotEnoughData when it cannot fill one batch."""
    bs = batch_rows(cfg)
    if train_rows < bs:
        raise NotEnoughData(f"only {train_rows} training rows: fewer than one batch of {bs} "
                            f"(train.{'pk_families x train.pk_files' if cfg.train.sampler == 'pk' else 'batch_size'}): "
                            "add labelled files or lower the batch size")
    workers = min(cfg.train.num_workers, train_rows // bs)
    if workers < cfg.train.num_workers:
        say(f"notice: {train_rows} training rows fill a batch of {bs} on {workers} worker(s), not "
            f"{cfg.train.num_workers}: training on {workers}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_workers=workers))
    return cfg


def train(samples_root: str, output: str, cfg: Config, fit: Fit, block_map: BlockMap, storage: str,
          name: str = "embedlib-train", labels: Labels | None = None, say: Callable[[str], None] = print) -> dict:
    """Train on the corpus at `samples_root` (jobs.rasterize output) with `labels` (default: the families
    recorded at rasterization) and write the checkpoint to `output`. The Ray Train run is `name` plus what it
    trains on (embedlib.train.attempts): it resumes only its own interrupted attempt, and says which in its first
    line. The probe rows and the sketches' document frequencies are collected in one pass, beforehand."""
    corpus = scan_corpus(samples_root, cfg, labels)
    notices: list[str] = []
    scans = Scans()
    grouped = wants_pseudo_families(corpus) and with_pseudo_families(
        corpus, scans.count("pseudo-families", block_map), notices.append)
    if grouped:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, gate_weight=min(cfg.model.gate_weight, cfg.train.pseudo_gate_weight)))
        corpus = scan_corpus(samples_root, cfg, grouped)
    rule = corpus.rule
    if len(rule.families) < 2 and not rule.self_supervised:
        raise NotEnoughFamilies(f"training needs at least 2 families with >= {cfg.train.min_family_size} training "
                                f"files; {samples_root} has {len(rule.families)} ({corpus.labels.describe()}): add "
                                "labelled files (a manifest with a family column), lower train.min_family_size or "
                                "train without labels (train.self_supervised=true)")
    # the mode this corpus trains in, resolved from 'auto' and recorded in the checkpoint's config
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, self_supervised="true" if rule.self_supervised else "false"))
    corpus = dataclasses.replace(corpus, config=cfg)
    objective = objective_of(rule)
    cfg = fit_workers(corpus.train_rows, cfg, notices.append)
    attempt = attempts.choose(storage, name, attempts.fingerprint(cfg.to_dict(), corpus.fingerprint()))
    say(attempt.describe())
    for line in [corpus.labels.describe(), *notices]:
        say(line)
    say(f"training ({objective}) on {corpus.train_rows} files, {rule.train_files} of them labelled in "
        f"{len(rule.families)} families ({rule.holdout_files} held out) "
        f"in {len(corpus.blocks)} blocks; {cfg.train.num_workers} workers x {steps_per_epoch(corpus, cfg.train.num_workers, batch_rows(cfg))} "
        f"steps of {batch_rows(cfg)} rows per epoch, norm={cfg.model.norm}, {cfg.train.epochs} epochs")
    probe, df = probe_and_frequencies(corpus, scans.count("probe + document frequencies", block_map))
    attempts.record(storage, attempt, finished=False)
    state, history = fit(cfg, corpus, probe, df, storage, attempt.name)
    attempts.record(storage, attempt, finished=True)
    model = new_model(cfg, len(rule.families))
    model.load_state_dict(state)
    extra = calibrate_and_check(model, corpus, block_map, cfg, say, probe=probe, scans=scans)
    trained = health.training_report(history, corpus.train_rows, cfg.to_dict()["train"])
    extra.update(history=history, train_files=corpus.train_rows, labelled_train_files=rule.train_files,
                 objective=objective, samples_root=samples_root, training=trained,
                 training_run=attempt.name, labels_source=corpus.labels.source, corpus_scans=scans.by_purpose)
    say(scans.describe())
    say(health.describe_training(trained))
    say("before precise BN -> " + health.describe(extra["bn_health_before_precise_bn"]))
    say("saved checkpoint  -> " + health.describe(extra["bn_health"]))
    meta = checkpoint.save(output, model, cfg, list(rule.families), extra)
    say(f"checkpoint {meta['model_version']} written to {output}")
    return meta


def recalibrate(model_uri: str, samples_root: str, output: str, block_map: BlockMap, max_samples: int | None = None,
                say: Callable[[str], None] = print) -> dict:
    """Precise BN of an existing checkpoint over a corpus (labels optional: a bigger unlabelled corpus is fine),
    health before and after, written as a new checkpoint."""
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
    extra = checkpoint.extra_of(ckpt.meta)
    extra.update(out, recalibrated_from=ckpt.version, recalibration_corpus=samples_root)
    say("before -> " + health.describe(out["bn_health_before_precise_bn"]))
    say("after  -> " + health.describe(out["bn_health"]))
    meta = checkpoint.save(output, ckpt.model, cfg, ckpt.families, extra)
    say(f"checkpoint {meta['model_version']} (recalibrated from {ckpt.version}) written to {output}")
    return meta
