"""Pictures for the evaluation report: byteplots per family, a 2-D PCA map, the retrieval bar chart.

Headless (Agg backend): every function takes plain arrays and writes one PNG, returning its path.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

OTHER_COLOR = "#c8c8c8"


def family_colors(n: int) -> list:
    """n distinct colours, none of them grey (grey is "other"): tab20's dark half, black, then its light half."""
    tab20 = list(plt.get_cmap("tab20").colors)
    greys = {14, 15}
    ordered = [tab20[i] for i in range(0, 20, 2) if i not in greys] + [(0.0, 0.0, 0.0)]
    ordered += [tab20[i] for i in range(1, 20, 2) if i not in greys]
    return [ordered[i % len(ordered)] for i in range(n)]


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N x 2 coordinates on the top two principal components, their explained-variance ratios)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2)), np.zeros(2)
    centred = x - x.mean(axis=0)
    _u, s, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    if components.shape[0] < 2:  # 1-D data
        components = np.vstack([components, np.zeros_like(components)])
        s = np.r_[s, 0.0]
    variance = s**2
    ratio = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return centred @ components.T, ratio


def byteplot_gallery(images: Mapping[str, Sequence[tuple[str, np.ndarray]]], path: str,
                     title: str = "Byteplots per family") -> str:
    """One row per family, one cell per (file name, uint8 image)."""
    families = list(images)
    cols = max((len(v) for v in images.values()), default=1)
    fig, axes = plt.subplots(max(len(families), 1), cols, figsize=(1.9 * cols + 1.2, 2.0 * max(len(families), 1)),
                             squeeze=False)
    for r, family in enumerate(families):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images[family]):
                name, img = images[family][c]
                ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_title(name[:22], fontsize=7)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(family[:20], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / max(len(families), 1)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pca_map(coords: np.ndarray, labels: Sequence[str], path: str, top: int = 10,
            explained: np.ndarray | None = None, title: str = "Embeddings, first two principal components") -> str:
    """Scatter of 2-D coordinates: the `top` most frequent labels in colour, the rest grey."""
    labels = list(labels)
    coloured = [f for f, _ in Counter(labels).most_common(top)]
    colors = family_colors(len(coloured))
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    rest = np.array([lab not in coloured for lab in labels], dtype=bool)
    if rest.any():
        ax.scatter(coords[rest, 0], coords[rest, 1], s=6, c=OTHER_COLOR, label=f"other ({int(rest.sum())})",
                   linewidths=0)
    for i, family in enumerate(coloured):
        sel = np.array([lab == family for lab in labels], dtype=bool)
        ax.scatter(coords[sel, 0], coords[sel, 1], s=12, color=colors[i], label=f"{family} ({int(sel.sum())})",
                   linewidths=0)
    if explained is not None:
        ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_bars(values: Mapping[str, Mapping[str, float]], path: str,
                title: str = "Family retrieval: embedding vs digests") -> str:
    """Grouped bars: `values[method][metric]`, metrics on the x axis, one bar per method."""
    methods = list(values)
    metrics = list(dict.fromkeys(m for v in values.values() for m in v))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(1.9 * len(metrics) + 2, 4.5))
    for i, method in enumerate(methods):
        heights = [values[method].get(m, np.nan) for m in metrics]
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, np.nan_to_num(heights), width, label=method)
        for bar, h in zip(bars, heights):
            ax.annotate("n/a" if np.isnan(h) else f"{h:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(metrics)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score (1 = perfect)")
    ax.set_title(title)
    # below the axes: a legend inside would hide the tallest bars
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(methods), 2), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
