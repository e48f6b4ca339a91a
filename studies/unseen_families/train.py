"""Study trainer (issue 22): the product's embedding network on cached hash sets, with the levers under study.

The network is embedlib.model.EmbeddingNet's, written with nn.EmbeddingBag so that a sketch can have 2^16+
buckets without a dense input: per view, the TF-IDF unit vector log(1 + count) x idf (bucket counts of
DISTINCT hashes, exactly embedlib.views.bucket_counts) enters a bias-free linear layer (EmbeddingBag 'sum' with
per-sample weights = that vector; identical to Linear on the dense sketch), then BatchNorm and ReLU; the views'
outputs are concatenated and projected (Linear) to the learned part (128-d), L2-normalised. The fixed part is
any precomputed unit matrix (e.g. a random projection of an exact TF-IDF); the embedding is
[sqrt(w) learned, sqrt(1 - w) fixed]. With views strings+idents+tokens at 4096 buckets, hidden 512, the
fixed part = 512-d Gaussian projection of the tokens' TF-IDF with IDF^2 from training rows and w = 0.3, this is
the product default (checked against the product's own run in the README).

Objectives (on the full embedding, as the product's classifier does; or on the learned part):
  cosface     labelled rows only (label -1 = unlabelled rows are skipped), margin 0.2, scale 16
  ssl         InfoNCE (NT-Xent, temperature tau) between two random sub-samples of each file's buckets
              (each bucket kept with probability keep, independently per view), every row of the batch
  nn          InfoNCE where the positive of a file is one of its precomputed neighbours (e.g. mutual kNN
              under a training-free TF-IDF), drawn at random each time
  Sums of these with weights. Precise BN over the training rows after training (embedlib.precise_bn).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from embedlib.train import precise_bn  # noqa: E402
from embedlib.views import bucket_of  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------

def bucket_matrix(sets: list[np.ndarray], buckets: int) -> sp.csr_matrix:
    """[N, buckets] counts of distinct hashes per bucket (embedlib.views.bucket_counts, unclipped)."""
    rows = []
    indptr = [0]
    data = []
    for h in sets:
        b, c = np.unique(bucket_of(np.asarray(h, np.uint64), buckets), return_counts=True)
        rows.append(b)
        data.append(np.minimum(c, 255))
        indptr.append(indptr[-1] + len(b))
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return sp.csr_matrix((np.concatenate(data).astype(np.float32), idx.astype(np.int32), np.array(indptr)),
                         shape=(len(sets), buckets))


def sketch_idf(x: sp.csr_matrix, rows: np.ndarray | None) -> np.ndarray:
    """embedlib.model.set_document_frequency's IDF from the document frequencies of `rows`."""
    sub = x if rows is None else x[rows]
    df = np.bincount(sub.indices, minlength=x.shape[1])
    return (np.log((1.0 + sub.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)


def tfidf_rows(x: sp.csr_matrix, idf: np.ndarray, power: float = 1.0) -> sp.csr_matrix:
    """Unit rows of log(1 + count) x idf ** power (the model's SketchWeights.weighted)."""
    y = x.copy()
    y.data = np.log1p(y.data) * (idf ** power)[y.indices]
    n = np.sqrt(np.asarray(y.multiply(y).sum(axis=1)).ravel())
    inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    return sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ y)


def gaussian_projection(x: sp.csr_matrix, dim: int, seed: int = 12, chunk: int = 4096) -> np.ndarray:
    """x @ G / sqrt(dim), G ~ N(0, 1) [in, dim] (the product's concat_projection), unit rows."""
    g = torch.Generator().manual_seed(seed)
    proj = (torch.randn(x.shape[1], dim, generator=g) / dim ** 0.5).numpy()
    out = np.asarray(x @ proj, np.float32)
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, n, out=np.zeros_like(out), where=n > 0)


# ---------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------

class BagEncoder(nn.Module):
    def __init__(self, buckets: int, hidden: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, hidden, mode="sum")
        bound = 1.0 / math.sqrt(buckets)  # nn.Linear's default init for `buckets` inputs
        nn.init.uniform_(self.bag.weight, -bound, bound)
        self.norm = nn.BatchNorm1d(hidden, momentum=0.1)

    def forward(self, idx: torch.Tensor, off: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.bag(idx, off, per_sample_weights=w)))


class StudyNet(nn.Module):
    def __init__(self, views: dict[str, int], hidden: int, dim: int, n_classes: int, fixed_dim: int,
                 skip_weight: float, logit_scale: float = 16.0) -> None:
        super().__init__()
        self.views = list(views)
        self.enc = nn.ModuleDict({v: BagEncoder(b, hidden) for v, b in views.items()})
        self.project = nn.Linear(hidden * len(views), dim)
        self.fixed_dim, self.w = fixed_dim, skip_weight
        self.class_directions = nn.Parameter(torch.randn(max(n_classes, 1), dim + fixed_dim) * 0.01)
        self.logit_scale = logit_scale

    def learned(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [self.enc[v](batch[f"{v}_idx"], batch[f"{v}_off"], batch[f"{v}_w"]) for v in self.views]
        return F.normalize(self.project(torch.cat(feats, dim=1)), dim=1)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        learned = self.learned(batch)
        if not self.fixed_dim:
            return learned
        return torch.cat([self.w ** 0.5 * learned, (1 - self.w) ** 0.5 * batch["fixed"]], dim=1)

    def forward(self, batch: dict[str, torch.Tensor]):
        emb = self.embed(batch)
        return emb, self.logit_scale * emb @ F.normalize(self.class_directions, dim=1).T


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------

def make_batch(inputs: dict[str, sp.csr_matrix], fixed: np.ndarray | None, rows: np.ndarray,
               keep: float = 1.0, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Views of `rows` as EmbeddingBag inputs (unit TF-IDF weights); keep < 1 drops buckets at random and
    re-normalises (the self-supervised sub-sample)."""
    out: dict[str, torch.Tensor] = {}
    for v, x in inputs.items():
        sub = x[rows]
        idx, ptr, w = sub.indices, sub.indptr, sub.data
        if keep < 1.0:
            m = rng.random(len(idx)) < keep
            counts = np.add.reduceat(m, ptr[:-1]) if len(idx) else np.zeros(len(rows), np.int64)
            counts = np.where(np.diff(ptr) > 0, counts, 0)
            idx, w = idx[m], w[m]
            ptr = np.concatenate([[0], np.cumsum(counts)])
            seg = np.repeat(np.arange(len(rows)), counts)
            n = np.sqrt(np.bincount(seg, w * w, minlength=len(rows)))
            w = w / np.maximum(n[seg], 1e-12)
        out[f"{v}_idx"] = torch.from_numpy(idx.astype(np.int64))
        out[f"{v}_off"] = torch.from_numpy(ptr[:-1].astype(np.int64))
        out[f"{v}_w"] = torch.from_numpy(w.astype(np.float32))
    if fixed is not None:
        out["fixed"] = torch.from_numpy(np.ascontiguousarray(fixed[rows]))
    return out


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------

def cosface(logits: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    ok = labels >= 0
    if not ok.any():
        return logits.sum() * 0.0
    lg, lb = logits[ok], labels[ok]
    lg = lg - scale * margin * F.one_hot(lb, lg.shape[1]).to(lg.dtype)
    return F.cross_entropy(lg, lb)


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent over 2B unit vectors: a[i] and b[i] are positives, every other vector a negative."""
    z = torch.cat([a, b])
    sim = z @ z.T / tau
    n = len(a)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

@dataclass
class Recipe:
    views: tuple[str, ...] = ("strings", "idents", "tokens")
    buckets: int = 4096
    hidden: int = 512
    dim: int = 128
    skip_weight: float = 0.3
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    margin: float = 0.2
    logit_scale: float = 16.0
    cosface: float = 1.0  # weight of the CosFace term (labelled rows)
    ssl: float = 0.0  # weight of the sub-sample InfoNCE term (every training row)
    nn_pos: float = 0.0  # weight of the neighbour InfoNCE term
    tau: float = 0.1
    keep: float = 0.5  # bucket keep probability of a sub-sample
    ssl_on: str = "learned"  # learned | full: which vector the InfoNCE terms compare
    min_family_size: int = 2
    seed: int = 0
    threads: int = 1  # one thread: 2 threads on this loaded 2-core machine ran 3-10x slower per step
    bn_rows: int = 50_000


def train(rec: Recipe, inputs: dict[str, sp.csr_matrix], fixed: np.ndarray | None, train_rows: np.ndarray,
          labels: np.ndarray, neighbours: list[np.ndarray] | None = None, say=print) -> tuple[StudyNet, dict]:
    """Train on `train_rows` (labels[i] = class or -1 per ROW of the corpus); returns (model, log)."""
    torch.set_num_threads(rec.threads)
    torch.manual_seed(rec.seed)
    rng = np.random.default_rng(rec.seed)
    lab = labels[train_rows]
    classes = int(labels.max()) + 1 if (labels >= 0).any() else 0
    model = StudyNet({v: inputs[v].shape[1] for v in rec.views}, rec.hidden, rec.dim, classes,
                     0 if fixed is None else fixed.shape[1], rec.skip_weight if fixed is not None else 1.0,
                     rec.logit_scale)
    opt = torch.optim.AdamW(model.parameters(), lr=rec.lr, weight_decay=rec.weight_decay, fused=True)
    steps = len(train_rows) // rec.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=rec.lr, total_steps=steps * rec.epochs + 10)
    ins = {v: inputs[v] for v in rec.views}
    log: dict = {"recipe": asdict(rec), "train_rows": int(len(train_rows)), "labelled_rows": int((lab >= 0).sum()),
                 "classes": classes, "epochs": []}
    started = time.perf_counter()
    for epoch in range(rec.epochs):
        order = rng.permutation(len(train_rows))
        tot = {"loss": 0.0, "cos": 0.0, "ssl": 0.0, "nn": 0.0}
        model.train()
        for s in range(steps):
            b = train_rows[order[s * rec.batch_size : (s + 1) * rec.batch_size]]
            y = torch.from_numpy(labels[b])
            loss = torch.zeros(())
            if rec.cosface and classes:
                emb, logits = model(make_batch(ins, fixed, b))
                lc = cosface(logits, y, rec.logit_scale, rec.margin)
                loss = loss + rec.cosface * lc
                tot["cos"] += float(lc.detach())
            if rec.ssl:
                a = make_batch(ins, fixed, b, rec.keep, rng)
                c = make_batch(ins, fixed, b, rec.keep, rng)
                za, zc = (model.learned(a), model.learned(c)) if rec.ssl_on == "learned" else (model.embed(a), model.embed(c))
                ls = info_nce(za, zc, rec.tau)
                loss = loss + rec.ssl * ls
                tot["ssl"] += float(ls.detach())
            if rec.nn_pos and neighbours is not None:
                pos = np.array([nb[rng.integers(len(nb))] if len(nb) else r for r, nb in
                                ((r, neighbours[r]) for r in b)])
                a, c = make_batch(ins, fixed, b), make_batch(ins, fixed, pos)
                za, zc = (model.learned(a), model.learned(c)) if rec.ssl_on == "learned" else (model.embed(a), model.embed(c))
                ln = info_nce(za, zc, rec.tau)
                loss = loss + rec.nn_pos * ln
                tot["nn"] += float(ln.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot["loss"] += float(loss.detach())
        ep = {k: v / max(steps, 1) for k, v in tot.items()}
        ep.update(epoch=epoch + 1, seconds=time.perf_counter() - started)
        log["epochs"].append(ep)
        say(f"  epoch {epoch + 1}/{rec.epochs} " + " ".join(f"{k} {v:.3f}" for k, v in ep.items()
                                                            if k not in ("epoch", "seconds") and v)
            + f" ({ep['seconds']:.0f}s)")
    log["train_seconds"] = time.perf_counter() - started
    sample = rng.permutation(train_rows)[: rec.bn_rows]
    t = time.perf_counter()
    precise_bn.precise_statistics(model, lambda: (make_batch(ins, fixed, sample[s : s + 1024])
                                                  for s in range(0, len(sample), 1024)))
    log["precise_bn_seconds"] = time.perf_counter() - t
    model.eval()
    return model, log


def embed_all(model: StudyNet, inputs: dict[str, sp.csr_matrix], fixed: np.ndarray | None, part: str = "full",
              batch: int = 2048) -> np.ndarray:
    ins = {v: inputs[v] for v in model.views}
    n = next(iter(ins.values())).shape[0]
    out = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, n, batch):
            b = make_batch(ins, fixed, np.arange(s, min(n, s + batch)))
            out.append((model.embed(b) if part == "full" else model.learned(b)).numpy())
    return np.concatenate(out)
