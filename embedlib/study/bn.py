"""The BatchNorm study, as pure functions: corpus views, the held-out split, per-epoch measurements, tables.

No file I/O here (jobs/bn_study.py reads files, caches images, writes tables and plots). What is measured,
per corpus x norm x seed x epoch, on a model trained with shuffled batches (pitfall 11):

  train_mode_acc          accuracy with batch statistics (what training sees), on the training files
  eval_mode_acc_on_train  accuracy with running statistics (what inference sees), on the same files
  heldout_acc             eval-mode accuracy on held-out files (training.bucket split)
  top1_agreement          health.bn_health's train-vs-eval top-1 agreement on a probe of training files

each twice: as trained (precise_bn=no), and on a *copy* of the model whose BN running statistics were
recomputed exactly over the training files (precise_bn=yes). Training itself never sees the copy.
Group norm and no norm have no BN layers: their precise_bn=yes rows are the precise_bn=no values, marked so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from embedlib.config import Config, TrainConfig
from embedlib.train.health import bn_health
from embedlib.model.network import batch_norms, build_model
from embedlib.train.precise_bn import precise_statistics
from embedlib.files.inputs import InputFile
from embedlib.train.loop import accuracy, batches_of, make_optimizer, set_seed, train_epoch
from embedlib.train.split import bucket, make_split

NO_BN_NOTE = "no BN layers: precise BN does not apply; same values as precise_bn=no (not recomputed)"

# Columns of results.csv, in order.
COLUMNS = (
    "corpus", "norm", "bn_momentum", "seed", "epoch", "steps", "precise_bn", "train_loss", "train_loop_acc",
    "train_mode_acc", "eval_mode_acc_on_train", "gap", "heldout_acc", "top1_agreement", "mean_cosine",
    "families", "train_files", "eval_files", "heldout_files", "seconds", "note",
)


# ---------------------------------------------------------------------------------------------------
# Choosing files
# ---------------------------------------------------------------------------------------------------

def family_counts(files: Iterable[InputFile]) -> Counter:
    return Counter(f.family for f in files if f.family)


def cap_per_family(files: Sequence[InputFile], per_family: int | None) -> list[InputFile]:
    """At most `per_family` files of each family, chosen by a stable hash of the path (not by path order,
    which would favour one directory)."""
    if not per_family:
        return list(files)
    by_family: dict[str, list[InputFile]] = defaultdict(list)
    for f in files:
        if f.family:
            by_family[f.family].append(f)
    kept: list[InputFile] = []
    for members in by_family.values():
        kept += sorted(members, key=lambda f: bucket(f.path, "study-select"))[:per_family]
    return sorted(kept, key=lambda f: f.path)


def top_view(files: Sequence[InputFile], n_families: int, per_family: int | None = None) -> list[InputFile]:
    """The `n_families` families with the most files (ties broken by name), capped per family."""
    counts = family_counts(files)
    chosen = {fam for fam, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_families]}
    return cap_per_family([f for f in files if f.family in chosen], per_family)


def multi_view(files: Sequence[InputFile], min_files: int, per_family: int | None = None) -> list[InputFile]:
    """Every family with at least `min_files` files, capped per family."""
    counts = family_counts(files)
    return cap_per_family([f for f in files if f.family and counts[f.family] >= min_files], per_family)


# ---------------------------------------------------------------------------------------------------
# The data of one corpus view, in memory
# ---------------------------------------------------------------------------------------------------

@dataclass
class StudyData:
    name: str
    families: list[str]  # class index -> family
    train_images: np.ndarray  # uint8 [N, H, W]
    train_labels: np.ndarray  # int64 [N]
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    eval_index: np.ndarray  # indices into train_*: the training files evaluated each epoch
    probe_index: np.ndarray  # indices into train_*: the BN health probe
    dropped: dict[str, int]  # why files were left out: {"duplicate": n, "conflicting_family": n, ...}

    def describe(self) -> str:
        return (f"{self.name}: {len(self.families)} families, {len(self.train_labels)} training files "
                f"({len(self.eval_index)} evaluated per epoch, probe {len(self.probe_index)}), "
                f"{len(self.heldout_labels)} held out; left out {dict(self.dropped) or 'none'}")


def make_study_data(name: str, sha256s: Sequence[str], families: Sequence[str], images: np.ndarray,
                    holdout_fraction: float, min_train_files: int = 2, eval_files: int | None = None,
                    probe_files: int = 512) -> StudyData:
    """Deduplicate by sha256, then the product's own split (embedlib.train.split.make_split: held out by hash,
    classes = families with >= min_train_files training files, the probe by hash). A sha256 seen under two
    families is ambiguous and dropped entirely."""
    fams_of: dict[str, set[str]] = defaultdict(set)
    for s, f in zip(sha256s, families):
        fams_of[s].add(f)
    dropped: Counter = Counter()
    first: dict[str, int] = {}
    for i, s in enumerate(sha256s):
        if len(fams_of[s]) > 1:
            dropped["conflicting_family"] += 1
        elif s in first:
            dropped["duplicate"] += 1
        else:
            first[s] = i
    keep = sorted(first.values())
    cfg = Config(train=TrainConfig(holdout_fraction=holdout_fraction, min_family_size=min_train_files,
                                   probe_samples=probe_files))
    split = make_split([sha256s[i] for i in keep], [families[i] for i in keep], cfg)
    small = sum(1 for i in keep if sha256s[i] not in split.train and sha256s[i] not in split.holdout)
    if small:
        dropped["family_too_small"] = small
    tr = [i for i in keep if sha256s[i] in split.train]
    ho = [i for i in keep if sha256s[i] in split.holdout]
    size = images.shape[1:] if images.ndim == 3 else (0, 0)

    def take(idx: list[int], labels: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        if not idx:
            return np.zeros((0, *size), np.uint8), np.zeros(0, np.int64)
        return images[idx], np.asarray([labels[sha256s[i]] for i in idx], dtype=np.int64)

    train_images, train_labels = take(tr, split.train)
    heldout_images, heldout_labels = take(ho, split.holdout)
    order = np.asarray(sorted(range(len(tr)), key=lambda k: bucket(sha256s[tr[k]], "probe")), dtype=np.int64)
    eval_index = np.sort(order[:eval_files]) if eval_files else np.arange(len(tr))
    probe_index = np.asarray([k for k in range(len(tr)) if sha256s[tr[k]] in split.probe], dtype=np.int64)
    return StudyData(name, split.families, train_images, train_labels, heldout_images, heldout_labels, eval_index,
                     probe_index, dict(dropped))


# ---------------------------------------------------------------------------------------------------
# Training and measuring
# ---------------------------------------------------------------------------------------------------

def _image_stream(images: np.ndarray, batch_size: int) -> Callable[[], Iterator[torch.Tensor]]:
    def make() -> Iterator[torch.Tensor]:
        for start in range(0, len(images), batch_size):
            yield torch.from_numpy(images[start : start + batch_size])
    return make


def measure(model: torch.nn.Module, data: StudyData, cfg: Config, seed: int) -> dict[str, float]:
    """The four numbers of one row, for `model` as it is (nothing in it is changed)."""
    bs = cfg.train.batch_size
    ev_images, ev_labels = data.train_images[data.eval_index], data.train_labels[data.eval_index]
    # Same shuffled, mixed batches for train mode and eval mode: only the statistics differ.
    train_batches = list(batches_of(ev_images, ev_labels, bs, shuffle=True, seed=seed + 7919))
    out = {
        "train_mode_acc": accuracy(model, train_batches, train_mode=True),
        "eval_mode_acc_on_train": accuracy(model, train_batches, train_mode=False),
        "heldout_acc": (accuracy(model, batches_of(data.heldout_images, data.heldout_labels, bs), train_mode=False)
                        if len(data.heldout_labels) else float("nan")),
    }
    pr_images, pr_labels = data.train_images[data.probe_index], data.train_labels[data.probe_index]
    probe = list(batches_of(pr_images, pr_labels, bs, shuffle=True, seed=seed + 104729))
    report = bn_health(model, probe, cfg.health)
    out["top1_agreement"] = report.get("top1_agreement_train_vs_eval", float("nan"))
    out["mean_cosine"] = report.get("mean_cosine_train_vs_eval", float("nan"))
    out["gap"] = out["train_mode_acc"] - out["eval_mode_acc_on_train"]
    return out


def precise_copy(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256,
                 max_samples: int | None = None) -> torch.nn.Module:
    """A copy of `model` with exact BN statistics over `images` (the model itself is untouched)."""
    twin = copy.deepcopy(model)
    if max_samples and len(images) > max_samples:  # a uniform subset: images are in path (family) order
        images = images[np.sort(np.random.default_rng(0).choice(len(images), max_samples, replace=False))]
    if batch_norms(twin):
        precise_statistics(twin, _image_stream(images, batch_size))
    return twin


def run_norm(data: StudyData, cfg: Config, epochs: int, seed: int,
             progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Train one model (cfg.model.norm) for `epochs` epochs; two rows per epoch (precise_bn no / yes)."""
    set_seed(seed)
    model = build_model(cfg.model, len(data.families))
    optimizer = make_optimizer(model, cfg)
    has_bn = bool(batch_norms(model))
    rows: list[dict] = []
    steps = 0
    base = {"corpus": data.name, "norm": cfg.model.norm,
            "bn_momentum": cfg.model.bn_momentum if cfg.model.norm == "batch" else "",
            "seed": seed, "families": len(data.families), "train_files": len(data.train_labels),
            "eval_files": len(data.eval_index), "heldout_files": len(data.heldout_labels)}
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        # A fresh shuffle every epoch, so no batch is ever one family (pitfall 11).
        batches = batches_of(data.train_images, data.train_labels, cfg.train.batch_size, shuffle=True,
                             seed=seed * 100_003 + epoch)
        stats = train_epoch(model, batches, optimizer)
        steps += int(stats["steps"])
        common = {**base, "epoch": epoch, "steps": steps, "train_loss": stats["loss"],
                  "train_loop_acc": stats["train_mode_accuracy"]}
        plain = measure(model, data, cfg, seed)
        rows.append({**common, "precise_bn": "no", **plain, "note": ""})
        if has_bn:
            twin = precise_copy(model, data.train_images, max_samples=cfg.train.precise_bn_max_samples)
            rows.append({**common, "precise_bn": "yes", **measure(twin, data, cfg, seed), "note": ""})
        else:
            rows.append({**common, "precise_bn": "yes", **plain, "note": NO_BN_NOTE})
        elapsed = time.perf_counter() - started
        rows[-2]["seconds"] = rows[-1]["seconds"] = round(elapsed, 2)
        if progress:
            progress(rows[-2])
            progress(rows[-1])
    return rows


def study_config(base: Config, norm: str, bn_momentum: float) -> Config:
    return dataclasses.replace(base, model=dataclasses.replace(base.model, norm=norm, bn_momentum=bn_momentum))


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------

METRICS = ("train_mode_acc", "eval_mode_acc_on_train", "gap", "heldout_acc", "top1_agreement")


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return sum(vals) / len(vals) if vals else float("nan")


def _std(values: list[float]) -> float:
    vals = [v for v in values if v == v]
    if len(vals) < 2:
        return float("nan")
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def aggregate(rows: list[dict], epoch: int | None = None) -> list[dict]:
    """Mean (and std over seeds) of METRICS per corpus x norm x precise_bn, at `epoch` (None: each run's
    last epoch)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    last: dict[tuple, int] = {}
    for r in rows:
        key = (r["corpus"], r["norm"], r["seed"])
        last[key] = max(last.get(key, 0), int(r["epoch"]))
    for r in rows:
        want = epoch if epoch is not None else last[(r["corpus"], r["norm"], r["seed"])]
        if int(r["epoch"]) == want:
            groups[(r["corpus"], r["norm"], r["precise_bn"])].append(r)
    out = []
    for (corpus, norm, precise), members in groups.items():
        agg = {"corpus": corpus, "norm": norm, "precise_bn": precise, "seeds": len(members),
               "epoch": int(members[0]["epoch"]), "steps": int(members[0]["steps"]),
               "note": members[0].get("note", "")}
        for m in METRICS:
            agg[m] = _mean([float(x[m]) for x in members])
            agg[m + "_std"] = _std([float(x[m]) for x in members])
        out.append(agg)
    norm_order = {"batch": 0, "batch-cumulative": 1, "group": 2, "none": 3}
    out.sort(key=lambda a: (a["corpus"], norm_order.get(a["norm"], 9), a["norm"], a["precise_bn"]))
    return out


def _fmt(value: float, std: float = float("nan")) -> str:
    if value != value:
        return "n/a"
    return f"{value:.3f}" if std != std else f"{value:.3f}±{std:.3f}"


def markdown_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def results_markdown(rows: list[dict]) -> str:
    """Every row of results.csv as a Markdown table."""
    headers = ["corpus", "norm", "seed", "epoch", "steps", "precise BN", "train-mode acc", "eval-mode acc (train files)",
               "gap", "held-out acc", "top-1 agreement", "note"]
    body = [[r["corpus"], r["norm"] + (f" (m={r['bn_momentum']})" if r["bn_momentum"] != "" else ""), r["seed"],
             r["epoch"], r["steps"], r["precise_bn"], _fmt(r["train_mode_acc"]), _fmt(r["eval_mode_acc_on_train"]),
             _fmt(r["gap"]), _fmt(r["heldout_acc"]), _fmt(r["top1_agreement"]),
             "same as precise_bn=no (no BN layers)" if r["note"] else ""] for r in rows]
    return markdown_table(headers, body)


def summary_markdown(rows: list[dict], corpora: list[str], bn_momentum: float) -> str:
    """The headline: final-epoch numbers per norm with/without precise BN, the seed condition (epoch 1),
    and the verdicts a reader checks first."""
    parts = ["# BatchNorm study: train mode vs eval mode", "",
             f"`batch` uses BN momentum {bn_momentum} (PyTorch convention; Keras momentum {1 - bn_momentum:g}); "
             "`batch-cumulative` averages every batch equally (momentum=None). gap = train-mode accuracy minus "
             "eval-mode accuracy, both on the same training files in the same shuffled batches. Precise BN is "
             "applied to a copy of the model at each epoch end (training is unchanged). For `group` and `none` "
             "there are no BN layers, so precise BN does not apply: those rows repeat the values without it. "
             "`batch` and `batch-cumulative` differ only in their running statistics, which training (train mode) "
             "never uses: with the same seed they train the very same weights, so their train-mode accuracy and "
             "their precise-BN rows coincide; only eval mode as trained tells them apart.", ""]
    headers = ["norm", "precise BN", "steps", "train-mode acc", "eval-mode acc (train files)", "gap",
               "held-out acc", "top-1 agreement"]
    for title, epoch in (("final epoch", None), ("after epoch 1 (the seed's short training)", 1)):
        for corpus in corpora:
            aggs = [a for a in aggregate(rows, epoch) if a["corpus"] == corpus]
            if not aggs or (epoch == 1 and all(a["epoch"] == 1 for a in aggregate(rows, None)
                                               if a["corpus"] == corpus)):
                continue  # nothing, or the final epoch was epoch 1 (already shown)
            seeds = aggs[0]["seeds"]
            parts += [f"## {corpus}: {title} (epoch {aggs[0]['epoch']}"
                      + (f", mean±std over {seeds} seeds" if seeds > 1 else "") + ")", ""]
            body = []
            for a in aggs:
                precise = a["precise_bn"] + (" (n/a: no BN)" if a["note"] else "")
                body.append([a["norm"], precise, a["steps"]] + [_fmt(a[m], a[m + "_std"]) for m in
                            ("train_mode_acc", "eval_mode_acc_on_train", "gap", "heldout_acc", "top1_agreement")])
            parts += [markdown_table(headers, body), ""]
    parts += ["## Verdicts", ""] + [f"- {v}" for v in verdicts(rows, corpora)] + [""]
    return "\n".join(parts)


def verdicts(rows: list[dict], corpora: list[str]) -> list[str]:
    """Plain sentences: does the seed's gap show for plain BN after epoch 1, does precise BN close it, and
    held-out accuracy with vs without BN at the last epoch."""
    out = []
    for corpus in corpora:
        first = {(a["norm"], a["precise_bn"]): a for a in aggregate(rows, 1) if a["corpus"] == corpus}
        last = {(a["norm"], a["precise_bn"]): a for a in aggregate(rows, None) if a["corpus"] == corpus}
        if ("batch", "no") in first and ("batch", "yes") in first:
            no, yes = first[("batch", "no")], first[("batch", "yes")]
            shows = no["gap"] >= 0.1
            closes = abs(yes["gap"]) < 0.05 or yes["gap"] < no["gap"] / 4
            out.append(
                f"{corpus}: after epoch 1 ({no['steps']} steps), plain `batch` has train-mode accuracy "
                f"{no['train_mode_acc']:.3f} but eval-mode {no['eval_mode_acc_on_train']:.3f} on the same files "
                f"(gap {no['gap']:.3f}: {'the seed gap shows' if shows else 'no large gap'}); with precise BN "
                f"eval-mode is {yes['eval_mode_acc_on_train']:.3f} (gap {yes['gap']:.3f}: "
                f"{'closed' if closes else 'not closed'}).")
        if ("batch", "no") in last:
            e = last[("batch", "no")]["epoch"]
            bits = []
            for norm in ("batch", "batch-cumulative", "group", "none"):
                for precise in ("no", "yes"):
                    a = last.get((norm, precise))
                    if a and not (precise == "yes" and a["note"]):
                        bits.append(f"{norm}{' + precise BN' if precise == 'yes' else ''} {a['heldout_acc']:.3f}")
            out.append(f"{corpus}: held-out accuracy at epoch {e}: " + ", ".join(bits) + ".")
    return out
