"""The BatchNorm study's I/O (jobs/bn_study.py is its command line): corpus views, rasterization with the
library's own read + raster over a process pool, cached under OUTPUT/cache so reruns start training at once,
the runs, and the results tables and plots. The measurements themselves are pure functions in
embedlib/study/bn.py."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import multiprocessing
import os
import re
import sys
import time
from typing import Sequence

import numpy as np

from embedlib.config import NORM_KINDS, Config, InputConfig
from embedlib.errors import UserError
from embedlib.files.inputs import InputFile

DEFAULT_OUTPUT = "runs/bn_study"


# ---------------------------------------------------------------------------------------------------
# Rasterization: the library's own read + to_image, in a process pool, cached
# ---------------------------------------------------------------------------------------------------

def _rasterize_one(args: tuple[str, int, int]) -> tuple[str, str | None, bytes | None, str]:
    """(path, sha256, image bytes, status) for one file; never raises for a bad file. Runs in a worker:
    imports only the light modules (no torch)."""
    from embedlib.views.raster import to_image
    from embedlib.files.sources import read_file

    path, size, max_bytes = args
    read = read_file(path.encode("utf-8", "surrogateescape"), False, InputConfig(max_bytes=max_bytes))
    if not read.ok:
        return path, None, None, f"{read.status}: {read.reason}"
    try:
        return path, read.sha256, to_image(read.data, size).tobytes(), "ok"
    except ValueError as exc:
        return path, read.sha256, None, f"raster_error: {exc}"


def _cache_key(paths: Sequence[str], size: int, max_bytes: int) -> str:
    digest = hashlib.sha256(f"v1|{size}|{max_bytes}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            digest.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{p}|missing\n".encode())
    return digest.hexdigest()[:16]


def rasterize(paths: Sequence[str], size: int, max_bytes: int, workers: int, cache_dir: str | None
              ) -> dict[str, tuple[str, np.ndarray]]:
    """path -> (sha256, uint8 [size, size]) for every file that reads and rasterizes."""
    paths = sorted(set(paths))
    cache = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        cache = os.path.join(cache_dir, f"images-{size}px-{_cache_key(paths, size, max_bytes)}.npz")
        if os.path.exists(cache):
            with np.load(cache, allow_pickle=False) as z:
                print(f"rasterized images from cache {cache} ({len(z['paths'])} files)")
                return {p: (s, img) for p, s, img in zip(z["paths"].tolist(), z["sha256s"].tolist(), z["images"])}
    started = time.perf_counter()
    jobs = [(p, size, max_bytes) for p in paths]
    if workers > 1 and len(jobs) > 64:
        # spawn, not fork: the parent may already run torch's thread pools (forking those can hang).
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_rasterize_one, jobs, chunksize=16))
    else:
        results = [_rasterize_one(j) for j in jobs]
    out: dict[str, tuple[str, np.ndarray]] = {}
    failures: dict[str, int] = {}
    for path, sha, img, status in results:
        if img is None:
            kind = status.split(":")[0]
            failures[kind] = failures.get(kind, 0) + 1
            continue
        out[path] = (sha, np.frombuffer(img, dtype=np.uint8).reshape(size, size))
    print(f"rasterized {len(out)}/{len(paths)} files at {size}px in {time.perf_counter() - started:.1f}s "
          f"with {workers} process(es)" + (f"; not rasterized: {failures}" if failures else ""))
    if cache and out:
        keys = sorted(out)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, paths=np.asarray(keys), sha256s=np.asarray([out[k][0] for k in keys]),
                 images=np.stack([out[k][1] for k in keys]))
        os.replace(tmp, cache)
    return out


# ---------------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------------

def list_corpus(corpus: str, roots: Sequence[str]) -> tuple[str, list[InputFile]]:
    """(label, labelled files) for 'local' (this machine's ELF files, dpkg families) or a manifest."""
    if corpus == "local":
        from embedlib.files.corpus import system_executables

        return "local", [f for f in system_executables(roots) if f.family]
    from embedlib.files.inputs import check_input, iter_listing

    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(corpus.rstrip("/")))[0])
    if label == "manifest":  # runs/debian/manifest.csv -> debian
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.dirname(os.path.abspath(corpus))))
    rows = iter_listing(check_input(corpus))
    return label, [InputFile(os.fsdecode(r["target"]), r["family"]) for r in rows if r["family"] and not r.get("status")]


def build_views(label: str, files: list[InputFile], args) -> list[tuple[str, list[InputFile]]]:
    from embedlib.study import bn

    views = []
    for view in args.views:
        if view == "top":
            views.append((f"{label}-top{args.families}", bn.top_view(files, args.families, args.files_per_family)))
        elif view == "multi":
            views.append((f"{label}-multi{args.min_family_files}",
                          bn.multi_view(files, args.min_family_files, args.files_per_family)))
        else:
            raise UserError(f"unknown view {view!r}: use top and/or multi")
    return views


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------

def write_csv(rows: list[dict], path: str) -> None:
    from embedlib.study.bn import COLUMNS

    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def read_csv(path: str) -> list[dict]:
    """results.csv back into rows (numbers as numbers), for --replot."""
    ints = {"seed", "epoch", "steps", "families", "train_files", "eval_files", "heldout_files"}
    text = {"corpus", "norm", "precise_bn", "note", "bn_momentum"}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k in ints:
                r[k] = int(v)
            elif k not in text:
                r[k] = float(v) if v != "" else float("nan")
        r["bn_momentum"] = float(r["bn_momentum"]) if r["bn_momentum"] else ""
    return rows


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)



def _save(fig, path: str) -> str:
    """Write a figure as PNG and free it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def plot(rows: list[dict], corpus: str, output: str, bn_momentum: float) -> list[str]:
    """gap_<corpus>.png (per norm: train-mode vs eval-mode accuracy on training files, with and without
    precise BN) and heldout_<corpus>.png (held-out accuracy per epoch, per norm). Means over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    mine = [r for r in rows if r["corpus"] == corpus]
    norms = [n for n in NORM_KINDS if any(r["norm"] == n for r in mine)]
    if not norms:
        return []

    def curve(norm: str, precise: str, metric: str) -> tuple[list[int], list[float]]:
        by_epoch: dict[int, list[float]] = {}
        for r in mine:
            if r["norm"] == norm and r["precise_bn"] == precise and r[metric] == r[metric]:
                by_epoch.setdefault(int(r["epoch"]), []).append(float(r[metric]))
        epochs = sorted(by_epoch)
        return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]

    def label_of(norm: str) -> str:
        return f"batch (momentum {bn_momentum})" if norm == "batch" else norm

    written = []
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.8), sharey=True, squeeze=False)
    for ax, norm in zip(axes[0], norms):
        ax.plot(*curve(norm, "no", "train_mode_acc"), "k-o", ms=3, label="train mode (batch stats)")
        ax.plot(*curve(norm, "no", "eval_mode_acc_on_train"), "r-o", ms=3, label="eval mode, as trained")
        has_bn = norm.startswith("batch")
        if has_bn:
            ax.plot(*curve(norm, "yes", "eval_mode_acc_on_train"), "b--s", ms=3, label="eval mode, precise BN")
        ax.set_title(label_of(norm) + ("" if has_bn else "\n(no BN: precise BN n/a)"), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy on training files")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{corpus}: train mode vs eval mode on the same training files", fontsize=10)
    written.append(_save(fig, os.path.join(output, f"gap_{_safe(corpus)}.png")))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"batch": "tab:blue", "batch-cumulative": "tab:purple", "group": "tab:green", "none": "tab:red"}
    precise_drawn: dict[tuple, str] = {}

    def precise_key(norm: str) -> tuple:
        xs, ys = curve(norm, "yes", "heldout_acc")
        return tuple(xs), tuple(round(y, 6) for y in ys)

    for norm in norms:
        ax.plot(*curve(norm, "no", "heldout_acc"), "-o", ms=3, color=colors.get(norm), label=label_of(norm))
        if norm.startswith("batch"):
            xs, ys = curve(norm, "yes", "heldout_acc")
            key = precise_key(norm)
            if key in precise_drawn:  # batch and batch-cumulative train the same weights: one precise curve
                continue
            others = [n for n in norms if n != norm and n.startswith("batch") and precise_key(n) == key]
            name = " / ".join([norm] + others) + " + precise BN" + (" (same weights)" if others else "")
            precise_drawn[key] = name
            ax.plot(xs, ys, "--s", ms=3, color=colors.get(norm), label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("held-out accuracy (eval mode)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{corpus}: held-out accuracy, BatchNorm vs not", fontsize=10)
    written.append(_save(fig, os.path.join(output, f"heldout_{_safe(corpus)}.png")))
    return written


def write_outputs(rows: list[dict], corpora: list[str], output: str, bn_momentum: float,
                  plots: bool = True) -> str:
    from embedlib.study import bn

    os.makedirs(output, exist_ok=True)
    write_csv(rows, os.path.join(output, "results.csv"))
    with open(os.path.join(output, "results.md"), "w") as fh:
        fh.write("# BatchNorm study: every measurement\n\n" + bn.results_markdown(rows) + "\n")
    summary = bn.summary_markdown(rows, corpora, bn_momentum)
    with open(os.path.join(output, "summary.md"), "w") as fh:
        fh.write(summary)
    if plots:
        for corpus in corpora:
            plot(rows, corpus, output, bn_momentum)
    return summary


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------

def run(args, cfg: Config) -> list[dict]:
    """The whole study for parsed options `args` (see jobs/bn_study.py) and base settings `cfg`."""
    if args.replot:
        rows = read_csv(os.path.join(args.output, "results.csv"))
        corpora = list(dict.fromkeys(r["corpus"] for r in rows))
        momentum = next((r["bn_momentum"] for r in rows if r["norm"] == "batch"), args.bn_momentum)
        print(write_outputs(rows, corpora, args.output, momentum, plots=not args.no_plots))
        return rows
    import torch

    from embedlib.study import bn

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    label, files = list_corpus(args.corpus, args.roots)
    views = build_views(label, files, args)
    cache = None if args.cache == "none" else (args.cache or os.path.join(args.output, "cache"))
    images = rasterize([f.path for _, vf in views for f in vf], cfg.raster.size, cfg.input.max_bytes,
                       args.workers, cache)

    rows: list[dict] = []
    corpora: list[str] = []
    for name, view_files in views:
        kept = [f for f in view_files if f.path in images]
        data = bn.make_study_data(
            name, [images[f.path][0] for f in kept], [f.family for f in kept],
            np.stack([images[f.path][1] for f in kept]) if kept else np.zeros((0, cfg.raster.size, cfg.raster.size),
                                                                               np.uint8),
            cfg.train.holdout_fraction, cfg.train.min_family_size, args.eval_files, args.probe_files)
        print(data.describe(), flush=True)
        if len(data.families) < 2:
            print(f"  skipped {name}: fewer than 2 families with >= {cfg.train.min_family_size} training files")
            continue
        corpora.append(name)
        epochs = args.epochs if name.startswith(f"{label}-top") else args.multi_epochs
        for norm in args.norms:
            run_cfg = bn.study_config(cfg, norm, args.bn_momentum)
            for seed in args.seeds:
                def progress(r: dict, epochs: int = epochs) -> None:
                    print(f"[{r['corpus']}] {r['norm']:<16} seed {r['seed']} epoch {r['epoch']:>2}/{epochs} "
                          f"precise_bn={r['precise_bn']:<3} train-mode {r['train_mode_acc']:.3f} "
                          f"eval-mode {r['eval_mode_acc_on_train']:.3f} gap {r['gap']:+.3f} "
                          f"held-out {r['heldout_acc']:.3f} agree {r['top1_agreement']:.3f} "
                          f"loss {r['train_loss']:.3f} ({r['seconds']:.1f}s)", flush=True)

                rows += bn.run_norm(data, run_cfg, epochs, seed, progress)
                write_outputs(rows, corpora, args.output, args.bn_momentum, plots=False)  # partial results
    summary = write_outputs(rows, corpora, args.output, args.bn_momentum, plots=not args.no_plots)
    print()
    print(summary)
    print(f"wrote {args.output}/results.csv, results.md, summary.md"
          + ("" if args.no_plots else ", gap_*.png, heldout_*.png")
          + f" in {time.perf_counter() - started:.0f}s")
    sys.stdout.flush()
    return rows

