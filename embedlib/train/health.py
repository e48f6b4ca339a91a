"""BN health report: does eval mode predict what training measured, on the very files it trained on?

The seed bug: a briefly trained BN network is accurate in train mode (batch statistics) and near chance in
eval mode (running statistics that never converged). Its signature is one-sided and large:

  1. the running statistics are far from the population statistics of the training data, and
  2. eval mode is much *worse* than train mode on training files.

The verdict checks exactly those two things. Top-1 agreement and the cosine between train- and eval-mode
embeddings are reported as information only: train-mode predictions use each batch's own statistics, so
they are noisy, and their agreement with a perfectly converged model falls as the number of classes grows
(ARCHITECTURE.md pitfall 18). A verdict built on them refuses healthy models and flips between runs.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Iterable

from embedlib.config import HealthConfig
from embedlib.errors import UserError

if TYPE_CHECKING:  # torch is imported by the measuring functions only: gating a checkpoint stays light
    import torch
    from torch import nn

log = logging.getLogger(__name__)


class UnhealthyModelError(UserError, RuntimeError):
    """The checkpoint's BN health report says eval mode betrays training."""


def check_health(meta: dict, allow_unhealthy: bool) -> str | None:
    """Refuse (or, when allowed, warn about) a checkpoint whose training did not happen as recorded or whose BN
    health check failed. Returns the warning text when there is one."""
    problems = []
    trained = meta.get("training") or training_report(meta.get("history"), meta.get("train_files"),
                                                        (meta.get("config") or {}).get("train", {}))
    if not trained["healthy"]:
        problems.append("training: " + "; ".join(trained["problems"]))
    report = meta.get("bn_health")
    if report is None:
        problems.append("checkpoint has no BN health report: its eval mode was never checked against training")
    elif not report.get("healthy"):
        problems.append(describe(report))
    if not problems:
        return None
    text = "\n".join(problems)
    if not allow_unhealthy:
        raise UnhealthyModelError(
            f"model {meta.get('model_version')} failed its health check (training record or BatchNorm); retrain it, "
            "recalibrate it (python -m jobs.recalibrate) or pass --allow-unhealthy-model to embed anyway.\n" + text)
    log.warning("embedding with an unhealthy model:\n%s", text)
    return text


def training_report(history: list[dict] | None, train_rows: int | None, train_cfg: dict) -> dict:
    """What training did, epoch by epoch, and whether that is training at all. Unhealthy when an epoch is missing,
    ran 0 steps, or trained on fewer samples than the training set holds beyond the one stated reason: each rank
    drops the rows past its last full batch, and the last `train_rows % world` rows sit out (fewer than
    world x (batch + 1) rows in all). Pure: reads the recorded numbers."""
    epochs = int(train_cfg.get("epochs", 0) or 0)
    history = list(history or [])
    problems: list[str] = []
    if not history:
        problems.append("the checkpoint records no training epoch: it was never trained (or predates training "
                        "records)")
    if train_rows is None:
        problems.append("the checkpoint does not record its training set size")
    if history and len({int(m["epoch"]) for m in history}) < epochs:
        problems.append(f"{len(history)} of {epochs} epochs recorded")
    per_epoch = []
    for m in history:
        world = int(m.get("world") or train_cfg.get("num_workers") or 1)
        batch = int(m.get("batch_rows") or train_cfg.get("batch_size") or 1)
        allowed = world * (batch + 1)  # the stated reason: rounding each rank's share to whole batches
        samples, steps = int(m.get("samples_all_ranks", 0)), int(m.get("steps", 0))
        per_epoch.append({"epoch": int(m["epoch"]), "steps": steps, "samples": samples,
                          "loss": m.get("loss"), "world": world, "batch_rows": batch})
        if steps <= 0 or samples <= 0:
            problems.append(f"epoch {int(m['epoch']) + 1} ran {steps} steps on {samples} samples")
        elif train_rows is not None and samples < train_rows - allowed:
            problems.append(f"epoch {int(m['epoch']) + 1} trained on {samples} samples of {train_rows} training rows "
                            f"(rounding to whole batches explains at most {allowed})")
        if m.get("loss") is not None and not math.isfinite(float(m["loss"])):
            problems.append(f"epoch {int(m['epoch']) + 1} has a non-finite loss")
        if m.get("steps_min_rank") is not None and int(m["steps_min_rank"]) != steps:
            problems.append(f"epoch {int(m['epoch']) + 1}: ranks ran different step counts "
                            f"({m['steps_min_rank']} to {steps})")
    return {"train_rows": train_rows, "epochs": epochs, "per_epoch": per_epoch, "problems": problems,
            "healthy": not problems}


def describe_training(report: dict) -> str:
    """One line per problem, or the totals, for the end of training and before embedding."""
    if not report["healthy"]:
        return "training record: FAILED\n" + "\n".join(f"  problem: {p}" for p in report["problems"])
    steps = sum(e["steps"] for e in report["per_epoch"])
    samples = [e["samples"] for e in report["per_epoch"]]
    return (f"training record: OK: {len(samples)} epochs, {steps} steps, {min(samples)} to {max(samples)} samples per "
            f"epoch of {report['train_rows']} training rows")


def _predict(net: "nn.Module", batches: list, train_mode: bool) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Embeddings and logits for `batches`; in train mode on a throwaway copy, so no buffer is touched."""
    import torch

    model = copy.deepcopy(net) if train_mode else net
    model.train(train_mode)
    embs, logits = [], []
    with torch.no_grad():
        for views in batches:
            e, lg = model(views)
            embs.append(e.float().cpu())
            logits.append(lg.float().cpu())
    return torch.cat(embs), torch.cat(logits)


def accuracy_drop_tolerance(train_acc: float, eval_acc: float, n: int, cfg: HealthConfig) -> float:
    """How much lower eval-mode accuracy may be before it counts: a fixed floor, widened by the probe's
    sampling error (cfg.accuracy_drop_z standard errors of the difference of two proportions on n files),
    so that a small probe cannot fail a healthy model by chance."""
    se = math.sqrt((train_acc * (1 - train_acc) + eval_acc * (1 - eval_acc)) / max(n, 1))
    return max(cfg.max_accuracy_drop, cfg.accuracy_drop_z * se)


def verdict(report: dict, cfg: HealthConfig) -> list[str]:
    """The problems that make a report unhealthy (empty list = healthy). Pure: reads the measured numbers."""
    problems = []
    for name, dist in report.get("bn_layers", {}).items():
        if dist["mean_shift_in_std"] > cfg.max_mean_shift_std:
            problems.append(f"{name}: running mean is {dist['mean_shift_in_std']:.2f} std from the training data's "
                            f"(> {cfg.max_mean_shift_std})")
        if dist["abs_log_var_ratio"] > cfg.max_abs_log_var_ratio:
            problems.append(f"{name}: running variance is off by a factor {math.exp(dist['abs_log_var_ratio']):.2f} "
                            f"(|log ratio| {dist['abs_log_var_ratio']:.2f} > {cfg.max_abs_log_var_ratio})")
    if "eval_mode_accuracy" in report:
        train_acc, eval_acc = report["train_mode_accuracy"], report["eval_mode_accuracy"]
        tolerance = accuracy_drop_tolerance(train_acc, eval_acc, report["labelled_probe_files"], cfg)
        report["accuracy_drop_tolerance"] = round(tolerance, 6)
        if train_acc - eval_acc > tolerance:
            problems.append(f"eval-mode accuracy {eval_acc:.3f} is {train_acc - eval_acc:.3f} below train-mode "
                            f"accuracy {train_acc:.3f} on the same training files (tolerance {tolerance:.3f})")
    return problems


def bn_health(model: "nn.Module", probe: Iterable[tuple], cfg: HealthConfig) -> dict:
    """Measure train mode against eval mode on `probe` (batches of (views, int labels; -1 = unlabelled)), and
    each BN layer's running statistics against precise ones computed on the probe. Returns a JSON-able report
    with `healthy` and, when it is not, the `problems`. A model without BN layers is healthy by construction:
    train and eval mode compute the same function."""
    import torch

    from embedlib.model.network import batch_norms, to_device, unwrap
    from embedlib.train.precise_bn import precise_statistics

    net = unwrap(model)
    was_training = net.training
    device = next(net.parameters()).device
    batches = [(to_device(v, device), y) for v, y in probe]
    views = [b[0] for b in batches]
    labels = torch.cat([b[1] for b in batches]).long() if batches else torch.zeros(0, dtype=torch.long)
    report: dict = {"probe_files": int(labels.numel()), "has_batch_norm": bool(batch_norms(net))}
    if not batches:
        report.update(healthy=True, problems=[], note="empty probe: nothing measured")
        return report
    emb_train, logit_train = _predict(net, views, train_mode=True)
    emb_eval, logit_eval = _predict(net, views, train_mode=False)
    net.train(was_training)

    cosine = (emb_train * emb_eval).sum(dim=1)
    report.update(probe_batch_size=int(labels.numel() // len(batches)),
                  mean_cosine_train_vs_eval=round(cosine.mean().item(), 6),
                  min_cosine_train_vs_eval=round(cosine.min().item(), 6))
    if logit_eval.shape[1] > 0:
        pred_train, pred_eval = logit_train.argmax(1), logit_eval.argmax(1)
        report["top1_agreement_train_vs_eval"] = round((pred_train == pred_eval).float().mean().item(), 6)
        labelled = labels >= 0
        if labelled.any():  # an unlabelled probe still measures the statistics, just not accuracy
            report["labelled_probe_files"] = int(labelled.sum())
            report["train_mode_accuracy"] = round((pred_train == labels)[labelled].float().mean().item(), 6)
            report["eval_mode_accuracy"] = round((pred_eval == labels)[labelled].float().mean().item(), 6)
    if report["has_batch_norm"]:
        report["bn_layers"] = precise_statistics(net, lambda: views, device=device, apply=False)
    report["problems"] = verdict(report, cfg)
    report["healthy"] = not report["problems"]
    return report


def describe(report: dict) -> str:
    """A few lines a person reads at the end of training or before embedding."""
    verdict_word = "OK" if report.get("healthy") else "FAILED"
    lines = [f"BN health: {verdict_word} on {report.get('probe_files', 0)} training files"]
    if not report.get("has_batch_norm", True):
        lines[0] += " (no BatchNorm layers: train and eval mode are the same function)"
    if "eval_mode_accuracy" in report:
        lines.append(f"  accuracy on training files: train mode {report['train_mode_accuracy']:.3f}, "
                     f"eval mode {report['eval_mode_accuracy']:.3f}")
    if "top1_agreement_train_vs_eval" in report:
        lines.append(f"  (information) top-1 agreement train/eval {report['top1_agreement_train_vs_eval']:.3f}, "
                     f"embedding cosine {report.get('mean_cosine_train_vs_eval', float('nan')):.3f}")
    layers = report.get("bn_layers", {})
    if layers:
        worst_mean = max(d["mean_shift_in_std"] for d in layers.values())
        worst_var = max(d["abs_log_var_ratio"] for d in layers.values())
        lines.append(f"  running vs training-data statistics over {len(layers)} BN layers: mean shift <= "
                     f"{worst_mean:.3f} std, |log var ratio| <= {worst_var:.3f}")
    lines += [f"  problem: {p}" for p in report.get("problems", [])]
    return "\n".join(lines)
