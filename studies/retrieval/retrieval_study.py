"""Research harness for issue 12: baselines and model variants on cached views, trained in-process; never in CI.

  nice -n 10 python studies/retrieval/study_cache.py --manifest M.csv --cache C --ssdeep      # once per corpus
  nice -n 10 python studies/retrieval/retrieval_study.py baselines --cache C
  nice -n 10 python studies/retrieval/retrieval_study.py train --cache C --variant full --out runs/study/full

The protocol is embedlib.eval.retrieval's (family-disjoint split by family-name hash, held-out files of trained
families by sha256 hash, whole gallery, "all" and "other-programs" modes). Everything runs on 2 threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from embedlib import views

from embedlib.eval import retrieval  # noqa: E402

import study_cache  # noqa: E402


@dataclass
class Corpus:
    raw: dict
    family: np.ndarray
    name: np.ndarray
    role: np.ndarray
    arch: np.ndarray

    def __len__(self) -> int:
        return len(self.family)


def load_corpus(cache: str, unseen_fraction: float = 0.2, holdout_fraction: float = 0.2,
                manifest: str | None = None) -> Corpus:
    raw = study_cache.load(cache, manifest)
    family = np.asarray(raw["family"], dtype=str)
    role = retrieval.roles(list(raw["sha256"]), list(family), unseen_fraction, holdout_fraction)
    # identical contents are one row in the product's tables: keep the first path of each sha256
    _, first = np.unique(raw["sha256"], return_index=True)
    keep = np.sort(first)
    raw = {k: (v[keep] if isinstance(v, np.ndarray) else [v[i] for i in keep]) for k, v in raw.items()}
    return Corpus(raw, family[keep], np.asarray(raw["name"], dtype=str), role[keep], np.asarray(raw["arch"], str))


def sketch(c: Corpus, kind: str, min_len: int, buckets: int, max_len: int | None = None) -> np.ndarray:
    """uint8 [N, buckets] counts of distinct strings (kind 'str') or idents ('id') per bucket, exactly as
    embedlib.views.bucket_counts computes them (same hashes)."""
    hs, ls = c.raw[f"{kind}_h"], c.raw[f"{kind}_len"]
    out = np.zeros((len(c), buckets), np.uint8)
    for i, (h, ln) in enumerate(zip(hs, ls)):
        sel = ln >= min_len
        if max_len is not None:
            sel &= ln <= max_len
        out[i] = views.bucket_counts(h[sel], buckets)
    return out


def distinct_strings(c: Corpus, min_len: int = 6) -> np.ndarray:
    return np.array([int(np.sum(ln >= min_len)) for ln in c.raw["str_len"]])


def crc_bucket_sets(c: Corpus, buckets: int = 4096) -> list[np.ndarray]:
    return [np.unique(x.astype(np.int64) % buckets) for x in c.raw["crc"]]


def baselines(c: Corpus, methods: list[str]) -> dict[str, retrieval.Scorer]:
    out: dict[str, retrieval.Scorer] = {}
    for m in methods:
        if m == "strings-crc32":
            out[m] = retrieval.Cosine(retrieval.tfidf_set_vectors(crc_bucket_sets(c), 4096))
        elif m == "strings":
            s = sketch(c, "str", 6, 4096)
            out[m] = retrieval.Cosine(retrieval.tfidf_set_vectors([np.flatnonzero(r) for r in s], 4096))
        elif m == "tlsh":
            out[m] = retrieval.TLSH([t or None for t in c.raw["tlsh"]])
        elif m == "ssdeep":
            out[m] = retrieval.SSDeep([t or None for t in c.raw["ssdeep"]])
        else:
            raise ValueError(m)
    return out


def string_poor(c: Corpus) -> np.ndarray:
    """Bottom quartile of distinct printable strings (>= 6 bytes) per file, over the whole corpus."""
    n = distinct_strings(c)
    return n <= np.quantile(n, 0.25)


def describe(c: Corpus) -> str:
    from collections import Counter

    roles = Counter(c.role.tolist())
    fam = {r: len(set(c.family[c.role == r])) for r in roles}
    return (f"{len(c)} files, {len(set(c.family))} families, archs {dict(Counter(c.arch.tolist()).most_common(8))}, "
            f"formats {dict(Counter(np.asarray(c.raw['format'], str).tolist()))}; roles "
            + ", ".join(f"{r}: {n} files / {fam[r]} families" for r, n in roles.items()))


def run_baselines(args: argparse.Namespace) -> None:
    c = load_corpus(args.cache, manifest=args.manifest)
    print(describe(c))
    cells = retrieval.settings(c.role, c.family, c.name)
    rows = retrieval.evaluate_methods(baselines(c, args.methods.split(",")), c.family, c.name, cells,
                                      {"string-poor": string_poor(c)}, say=print)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "baselines.json"), "w") as fh:
            json.dump(rows, fh, indent=1)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One trained model: which views, which network, which loss and sampler, how long."""

    views: tuple[str, ...] = ("image", "strings", "idents", "bytehist")
    image: str = "image64"
    buckets: int = 4096
    strings_min_len: int = 6
    idents_min_len: int = 4
    norm: str = "batch"
    bn_momentum: float = 0.1
    hidden: int = 512
    sketch_skip: str = "none"
    skip_dim: int = 0
    skip_weight: float = 0.5
    sketch_dropout: float = 0.0
    skip_views: tuple[str, ...] = ()
    skip_idf_power: float = 1.0
    learned_views: tuple[str, ...] = ()
    dim: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128)
    idf: bool = True
    loss: str = "cosface"
    margin: float = 0.2
    logit_scale: float = 16.0
    supcon_temperature: float = 0.1
    supcon_weight: float = 1.0
    sampler: str = "shuffle"
    pk_families: int = 32
    pk_files: int = 4
    batch_size: int = 128
    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 1e-4
    min_family_size: int = 2
    seed: int = 0
    threads: int = 2
    precise_bn: bool = True

    def config(self):
        from embedlib.config import Config, ModelConfig, TrainConfig, ViewsConfig, RasterConfig

        size = int(self.image.removeprefix("image"))
        return Config(
            raster=RasterConfig(size=size),
            views=ViewsConfig(names=self.views, buckets=self.buckets, strings_min_len=self.strings_min_len,
                              idents_min_len=self.idents_min_len),
            model=ModelConfig(embedding_dim=self.dim, channels=self.channels, norm=self.norm,
                              bn_momentum=self.bn_momentum, logit_scale=self.logit_scale, hidden=self.hidden,
                              sketch_skip=self.sketch_skip, sketch_dropout=self.sketch_dropout,
                              skip_dim=self.skip_dim, skip_weight=self.skip_weight, skip_views=self.skip_views,
                              skip_idf_power=self.skip_idf_power, learned_views=self.learned_views),
            train=TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                              weight_decay=self.weight_decay, seed=self.seed, loss=self.loss, margin=self.margin,
                              supcon_temperature=self.supcon_temperature, supcon_weight=self.supcon_weight,
                              sampler=self.sampler, pk_families=self.pk_families, pk_files=self.pk_files,
                              unseen_family_fraction=0.2),
        )


def view_arrays(c: Corpus, v: Variant, cache: dict | None = None) -> dict[str, np.ndarray]:
    """The model's inputs for every file, as embedlib.views would compute them under v.config()."""
    cache = {} if cache is None else cache
    out = {}
    for name in v.views:
        if name == "image":
            out[name] = c.raw[v.image]
        elif name == "strings":
            key = ("str", v.strings_min_len, v.buckets)
            if key not in cache:
                cache[key] = sketch(c, "str", v.strings_min_len, v.buckets)
            out[name] = cache[key]
        elif name == "idents":
            key = ("id", v.idents_min_len, v.buckets)
            if key not in cache:
                cache[key] = sketch(c, "id", v.idents_min_len, v.buckets)
            out[name] = cache[key]
        elif name == "bytehist":
            out[name] = c.raw["bytehist"]
        elif name == "byteonly":  # the 256-bin byte histogram without the entropy part
            out[name] = np.ascontiguousarray(c.raw["bytehist"][:, :256])
        elif name == "tokens":  # embedlib.views' tokens, from studies/retrieval/token_cache.py (attach_tokens)
            key = ("tokens", v.buckets)
            if key not in cache:
                from scoring import token_sketch

                cache[key] = token_sketch(c, v.buckets)
            out[name] = cache[key]
        elif name == "kinds":
            key = ("kinds", v.strings_min_len, v.buckets)
            if key not in cache:
                cache[key] = kind_sketch(c, v.strings_min_len, v.buckets)
            out[name] = cache[key]
        else:
            raise ValueError(name)
    return out


KIND_GROUPS = 4  # messages (a space), paths (a slash), identifiers (identifier characters only), other


def kind_sketch(c: Corpus, min_len: int, buckets: int) -> np.ndarray:
    """Strings sketch whose bucket range is split by the kind of string, so a model can weigh kinds."""
    part = buckets // KIND_GROUPS
    out = np.zeros((len(c), buckets), np.uint8)
    for i, (h, ln, k) in enumerate(zip(c.raw["str_h"], c.raw["str_len"], c.raw["str_kind"])):
        sel = ln >= min_len
        h, k = h[sel], k[sel]
        group = np.where(k & 1, 0, np.where(k & 2, 1, np.where(k & 8, 2, 3)))
        b = group * part + views.bucket_of(h, part)
        out[i] = np.minimum(np.bincount(b, minlength=buckets), 255)
    return out


def _batch(arrays: dict[str, np.ndarray], idx: np.ndarray):
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(a[idx])) for k, a in arrays.items()}


def embed_all(model, arrays: dict[str, np.ndarray], batch: int = 512) -> np.ndarray:
    import torch

    n = len(next(iter(arrays.values())))
    out = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, n, batch):
            out.append(model.embed(_batch(arrays, np.arange(s, min(n, s + batch)))).numpy())
    return np.concatenate(out)


def train_variant(c: Corpus, v: Variant, arrays: dict[str, np.ndarray], say=print) -> tuple[object, dict]:
    """Train on the 'train' role files; precise BN over shuffled training files; returns (model, log)."""
    import torch

    from embedlib.train import health

    from embedlib.train import precise_bn
    from embedlib.config import HealthConfig
    from embedlib.model.network import batch_norms, build_model
    from embedlib.train.dataset import pk_batches
    from embedlib.train.loop import make_optimizer, set_seed, train_epoch

    torch.set_num_threads(v.threads)
    cfg = v.config()
    set_seed(v.seed)
    train_rows = np.flatnonzero(c.role == "train")
    fams, counts = np.unique(c.family[train_rows], return_counts=True)
    classes = fams[counts >= v.min_family_size]
    train_rows = train_rows[np.isin(c.family[train_rows], classes)]
    index = {f: i for i, f in enumerate(classes)}
    labels = np.array([index[f] for f in c.family[train_rows]], dtype=np.int64)
    specs = {name: (a.shape[1:], a.dtype) for name, a in arrays.items()}  # also views only the harness has
    model = build_model(cfg.model, len(classes), specs)
    if v.idf:
        for name in v.views:
            if arrays[name].dtype == np.uint8 and arrays[name].ndim == 2:
                df = (arrays[name][train_rows] > 0).sum(axis=0)
                model.set_document_frequency(name, df, len(train_rows))
    opt = make_optimizer(model, cfg)
    steps_per_epoch = len(train_rows) // v.batch_size + 1 if v.sampler == "shuffle" else \
        len(pk_batches(labels, v.pk_families, v.pk_files, 0))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=v.lr, total_steps=steps_per_epoch * v.epochs + 10,
                                                pct_start=0.15)
    log: dict = {"variant": dataclasses.asdict(v), "classes": len(classes), "train_files": len(train_rows),
                 "epochs": [], "families": [str(f) for f in classes]}
    started = time.perf_counter()
    rng = np.random.default_rng(v.seed)
    for epoch in range(v.epochs):
        if v.sampler == "pk":
            batches_idx = pk_batches(labels, v.pk_families, v.pk_files, v.seed * 1000 + epoch)
        else:
            order = rng.permutation(len(train_rows))
            batches_idx = [order[s : s + v.batch_size] for s in range(0, len(order), v.batch_size)]
        batches = ((_batch(arrays, train_rows[b]), torch.from_numpy(labels[b])) for b in batches_idx if len(b) > 1)
        stats = train_epoch(model, batches, opt, cfg, sched)
        stats.update(epoch=epoch + 1, seconds=time.perf_counter() - started)
        log["epochs"].append(stats)
        say(f"  epoch {epoch + 1}/{v.epochs} loss {stats['loss']:.3f} train-mode acc "
            f"{stats['train_mode_accuracy']:.3f} ({stats['seconds']:.0f}s)")
    log["train_seconds"] = time.perf_counter() - started
    probe_rows = np.random.default_rng(1).permutation(len(train_rows))[:1024]
    probe = [(_batch(arrays, train_rows[probe_rows[s : s + 128]]), torch.from_numpy(labels[probe_rows[s : s + 128]]))
             for s in range(0, len(probe_rows), 128)]
    log["health_before"] = health.bn_health(model, probe, HealthConfig())
    if v.precise_bn and batch_norms(model):
        shuffled = np.random.default_rng(2).permutation(train_rows)
        stream = lambda: (_batch(arrays, shuffled[s : s + 512]) for s in range(0, len(shuffled), 512))  # noqa: E731
        t = time.perf_counter()
        precise_bn.precise_statistics(model, stream)
        log["precise_bn_seconds"] = time.perf_counter() - t
    log["health_after"] = health.bn_health(model, probe, HealthConfig())
    say("  " + health.describe(log["health_after"]).replace("\n", "\n  "))
    return model, log


def export(c: Corpus, v: Variant, model, log: dict, vectors: np.ndarray, out: str) -> str:
    """The trained variant as the product stores it: OUT/model (checkpoint with its BN health report) and OUT/emb
    (an embeddings table, one row per file, with _run.json naming the model), for jobs.evaluate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedlib import schema

    from embedlib.model import checkpoint

    cfg = v.config()
    model_dir = os.path.abspath(os.path.join(out, "model"))
    extra = {"bn_health": log["health_after"], "bn_health_before_precise_bn": log["health_before"],
             "history": log["epochs"], "train_files": log["train_files"], "train_seconds": log["train_seconds"],
             "trained_by": "studies/retrieval/retrieval_study.py", "variant": log["variant"]}
    meta = checkpoint.save(model_dir, model, cfg, log["families"], extra)
    emb_dir = os.path.join(out, "emb")
    os.makedirs(os.path.join(emb_dir, "embeddings"), exist_ok=True)
    size = np.asarray(c.raw["size"], dtype=np.int64)
    rows = {"sha256": list(c.raw["sha256"]), "path": list(c.raw["path"]), "size_bytes": size,
            "format": list(c.raw["format"]), "family": list(c.family), "truncated": size > cfg.input.max_bytes,
            "tlsh": [t or None for t in c.raw["tlsh"]],
            "ssdeep": [t or None for t in c.raw["ssdeep"]] if "ssdeep" in c.raw else [None] * len(c),
            "model_version": [meta["model_version"]] * len(c),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()),
                                                           vectors.shape[1])}
    table = schema.conform(pa.table(rows), schema.embeddings_schema(vectors.shape[1]))
    pq.write_table(table, os.path.join(emb_dir, "embeddings", "part-000000.parquet"))
    with open(os.path.join(emb_dir, "_run.json"), "w") as fh:
        json.dump({"job": "studies/retrieval/retrieval_study.py", "model": model_dir, "model_version": meta["model_version"]}, fh)
    return emb_dir


def run_variants(cache: str, variants: dict[str, Variant], out: str, modes=retrieval.MODES, say=print,
                 export_dir: str | None = None, manifest: str | None = None, evaluate: bool = True,
                 tokens: str | None = None, every: int = 1) -> list[dict]:
    """Train and score each variant on the same queries; appends rows to OUT/results.jsonl, saves vectors.
    tokens: studies/retrieval/token_cache.py's folder (for the tokens view); every: score every k-th query (quick looks)."""
    c = load_corpus(cache, manifest=manifest)
    if tokens:
        from scoring import attach_tokens

        attach_tokens(c, tokens)
    cells = [retrieval.Setting(s.split, s.mode, s.rows[::every])
             for s in retrieval.settings(c.role, c.family, c.name, modes=modes)]
    poor = string_poor(c)
    os.makedirs(out, exist_ok=True)
    arrays_cache: dict = {}
    rows = []
    for name, v in variants.items():
        say(f"== {name}: {v}")
        arrays = view_arrays(c, v, arrays_cache)
        model, log = train_variant(c, v, arrays, say)
        t = time.perf_counter()
        vec = embed_all(model, arrays)
        log["embed_seconds"] = time.perf_counter() - t
        np.save(os.path.join(out, f"{name}.npy"), vec.astype(np.float32))
        if export_dir:
            export(c, v, model, log, vec, os.path.join(export_dir, name))
        if evaluate:
            from scoring import evaluate as quick_evaluate, line

            t = time.perf_counter()
            got = quick_evaluate(c, vec, cells, poor)
            say(line(name, got) + f"  ({time.perf_counter() - t:.0f}s)")
            res = [{"method": name, "split": k.split("/")[0], "mode": k.split("/")[1],
                    "subset": k.split("/")[2] if k.count("/") == 2 else "all", "every": every, **r}
                   for k, r in got.items()]
        else:
            res = [{"method": name, "split": "-", "mode": "-", "subset": "-"}]
        for r in res:
            r.update(train_seconds=log["train_seconds"], epochs=v.epochs,
                     healthy=log["health_after"]["healthy"],
                     agreement_before=log["health_before"].get("top1_agreement_train_vs_eval"),
                     agreement_after=log["health_after"].get("top1_agreement_train_vs_eval"))
        with open(os.path.join(out, "results.jsonl"), "a") as fh:
            for r in res:
                fh.write(json.dumps(r) + "\n")
        with open(os.path.join(out, f"{name}.log.json"), "w") as fh:
            json.dump(log, fh, indent=1, default=str)
        rows += res
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("baselines")
    b.add_argument("--cache", required=True)
    b.add_argument("--methods", default="strings-crc32,strings,tlsh,ssdeep")
    b.add_argument("--manifest", default=None, help="keep only (and relabel by) this manifest's paths")
    b.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cmd == "baselines":
        run_baselines(args)


if __name__ == "__main__":
    main()
