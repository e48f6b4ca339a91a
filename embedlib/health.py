"""BN health report: does eval mode predict what training measured, on the very files it trained on?

The seed bug: a briefly trained BN network is accurate in train mode (batch statistics) and near chance in
eval mode (running statistics that never converged). We measure that directly on a probe set of training
files, in training-sized shuffled batches, and store the result in every checkpoint.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from embedlib.config import HealthConfig
from embedlib.model import batch_norms, unwrap
from embedlib.precise_bn import precise_statistics


def _predict(net: nn.Module, batches: list[torch.Tensor], train_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and logits for `batches`; in train mode on a throwaway copy, so no buffer is touched."""
    model = copy.deepcopy(net) if train_mode else net
    model.train(train_mode)
    embs, logits = [], []
    with torch.no_grad():
        for images in batches:
            e, lg = model(images)
            embs.append(e)
            logits.append(lg)
    return torch.cat(embs), torch.cat(logits)


def bn_health(
    model: nn.Module, probe: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: HealthConfig
) -> dict:
    """Compare train-mode and eval-mode predictions on `probe` (batches of (inputs, int labels); inputs are
    uint8 images or a dict of view tensors),
    and each BN layer's running statistics with precise ones computed on the probe images.

    Returns a JSON-able report with `healthy` and the reasons when it is not.
    """
    net = unwrap(model)
    was_training = net.training
    batches = list(probe)
    images = [b[0] for b in batches]
    labels = torch.cat([b[1] for b in batches]).long()
    labels_of_first = batches[0][1] if batches else []
    emb_train, logit_train = _predict(net, images, train_mode=True)
    emb_eval, logit_eval = _predict(net, images, train_mode=False)
    net.train(was_training)

    has_classes = logit_eval.shape[1] > 0
    cosine = (emb_train * emb_eval).sum(dim=1)
    report: dict = {
        "probe_files": int(labels.numel()),
        "probe_batch_size": int(len(labels_of_first)) if images else 0,
        "mean_cosine_train_vs_eval": round(cosine.mean().item(), 6),
        "min_cosine_train_vs_eval": round(cosine.min().item(), 6),
    }
    if has_classes:
        pred_train = logit_train.argmax(1)
        pred_eval = logit_eval.argmax(1)
        labelled = labels >= 0
        report["top1_agreement_train_vs_eval"] = round((pred_train == pred_eval).float().mean().item(), 6)
        if labelled.any():  # an unlabelled probe still measures agreement, just not accuracy
            report["train_mode_accuracy"] = round((pred_train == labels)[labelled].float().mean().item(), 6)
            report["eval_mode_accuracy"] = round((pred_eval == labels)[labelled].float().mean().item(), 6)
    if batch_norms(net):
        report["bn_layers"] = precise_statistics(net, lambda: images, apply=False)

    problems = []
    if report["mean_cosine_train_vs_eval"] < cfg.min_mean_cosine:
        problems.append(f"mean cosine train-vs-eval {report['mean_cosine_train_vs_eval']:.3f} < {cfg.min_mean_cosine}")
    if has_classes and report["top1_agreement_train_vs_eval"] < cfg.min_top1_agreement:
        problems.append(
            f"top-1 agreement train-vs-eval {report['top1_agreement_train_vs_eval']:.3f} < {cfg.min_top1_agreement}"
        )
    report["healthy"] = not problems
    report["problems"] = problems
    return report


def describe(report: dict) -> str:
    """A few lines a person reads at the end of training or before embedding."""
    lines = [f"BN health: {'OK' if report.get('healthy') else 'FAILED'} on {report.get('probe_files', 0)} training files"]
    if "top1_agreement_train_vs_eval" in report:
        line = f"  top-1 agreement train/eval mode {report['top1_agreement_train_vs_eval']:.3f}"
        if "eval_mode_accuracy" in report:
            line += (f"; accuracy train mode {report['train_mode_accuracy']:.3f}, "
                     f"eval mode {report['eval_mode_accuracy']:.3f}")
        lines.append(line)
    lines.append(f"  embedding cosine train/eval mode: mean {report.get('mean_cosine_train_vs_eval', float('nan')):.3f}")
    for name, dist in report.get("bn_layers", {}).items():
        lines.append(f"  {name}: running vs precise mean shift {dist['mean_shift_in_std']:.3f} std, "
                     f"|log var ratio| {dist['abs_log_var_ratio']:.3f}")
    lines += [f"  problem: {p}" for p in report.get("problems", [])]
    return "\n".join(lines)
