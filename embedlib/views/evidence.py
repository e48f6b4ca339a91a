"""Evidence: the few most distinctive strings, names and words of a file, with the weight the model gives each,
kept beside its embedding so that a person can read why two files are near (embedlib/sql/explain.sql).

What an item's weight is. A sketch view is a set of distinct items (strings, identifier names, words) hashed
into buckets; the model reads it as a TF-IDF unit vector x[b] = log(1 + count[b]) * w[b] / norm, with w the
checkpoint's per-bucket IDF (raised to model.skip_idf_power for the views of the embedding's fixed part:
embedlib.model.network.EmbeddingNet.evidence_weights). An item's weight is its share of its bucket's
coordinate: x[b] / (distinct items in bucket b). So within a view, the sum over the items two files share of
weight_a * weight_b is their TF-IDF cosine in that view (exactly, when every shared bucket holds the same
items in both): the products rank the shared evidence by what it contributes to the files' similarity.
Weights of different views are coordinates of different unit vectors: a file with few names gives each name
more weight than a file with thousands of strings gives each string.

Cost: the kernels return every distinct item's hash and one position with the views (one pass over the
bytes, embedlib.views.kernels.sketch_items); here, one compiled call (kernels.evidence_top: each view's norm,
each item's weight and a view's 2 x `top` heaviest, their order, which of those are readable and new) and Python
for the text of the `top` kept only, cut at `max_chars`: 0.22-0.28 ms a file (1,500 files of this machine's
/usr, one thread; README, *Why are two files near?*). Pure: bytes and weights in, rows out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from embedlib.config import Config
from embedlib.views import bucket_of

# the kind of item each sketch view holds, as stored (schema.EVIDENCE_ITEM's `kind`)
KINDS = {"strings": "string", "idents": "name", "tokens": "word"}


_LOG1P = np.log1p(np.arange(256, dtype=np.float64))  # log(1 + count) for each uint8 count
_LOG1P_SHARE = _LOG1P / np.maximum(np.arange(256), 1)  # ... shared by the count items of the bucket


def item_weights(counts: np.ndarray, hashes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float64 weight of each distinct item (`hashes`) of a view whose bucket counts are `counts` (uint8, as the
    model reads them) and per-bucket weights `weights`: log(1 + count[b]) * w[b] / norm / count[b]. (A bucket
    of more than 255 items, clipped at 255 in the view, gives each a little more than its share.)"""
    norm = view_norm(counts, weights)
    if not len(hashes) or norm == 0.0:
        return np.zeros(len(hashes), np.float64)
    return (_LOG1P_SHARE[counts] * (weights / norm))[bucket_of(hashes, len(counts))]


def view_norm(counts: np.ndarray, weights: np.ndarray) -> float:
    """The norm of a view's TF-IDF vector log(1 + count[b]) * w[b], which its items' weights are divided by."""
    from embedlib.views import kernels

    return float(kernels.view_norm(np.ascontiguousarray(counts, np.uint8), np.ascontiguousarray(weights, np.float64),
                                   _LOG1P))


_HEX_RUN = re.compile(rb"[0-9a-fA-F]{12,}")
_REPEAT = re.compile(rb"([0-9A-Za-z])\1{3}")
_NOT_LETTERS = bytes(c for c in range(256) if not (65 <= c <= 90 or 97 <= c <= 122))
_NOT_DIGITS = bytes(c for c in range(256) if not 48 <= c <= 57)


def readable(text: str | bytes) -> bool:
    """Whether an item can tell a person something: at least 3 letters, no run of 12+ hex digits with a digit in
    it (build ids, checksums: unique to one file, so of the highest IDF and never shared), no letter or digit 4
    times in a row (bytes of code and tables that happen to be printable: `uuuuuuu`, `AAAA`). The rarest items
    of a file are mostly such noise; kept, they would crowd out the names and words that explain neighbours."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if len(raw.translate(None, _NOT_LETTERS)) < 3 or _REPEAT.search(raw):
        return False
    return not any(m.group().translate(None, _NOT_DIGITS) for m in _HEX_RUN.finditer(raw))


def top_items(data: bytes, counts: Mapping[str, np.ndarray], items: Mapping[str, tuple[np.ndarray, ...]],
              weights: Mapping[str, np.ndarray], top: int, max_chars: int) -> list[dict]:
    """The `top` heaviest `readable` items over the sketch views that have weights, heaviest first, as rows
    {item, kind, weight}. An item found by two views (a name is also a string) is kept once, under its
    heavier kind. Ties are broken by view and hash, so the same bytes and weights give the same rows. The
    selection is one compiled call (kernels.evidence_top: each view's 2 x `top` heaviest, then the readable and
    unlike the items kept before); Python builds the rows of the kept only."""
    names = [v for v in sorted(weights) if v in items and v in counts]
    if not names or top < 1:
        return []
    from embedlib.views import kernels

    lower = [v == "tokens" for v in names]  # words are stored lowercased
    shift = np.uint64(65 - len(counts[names[0]]).bit_length())  # buckets: a power of two >= 2 (the config's check)
    code, starts, ends, kept_w = kernels.evidence_top(
        np.frombuffer(data, np.uint8), np.stack([counts[v] for v in names]).astype(np.uint8, copy=False),
        np.stack([weights[v] for v in names]).astype(np.float64, copy=False),
        *(np.concatenate([items[v][j] for v in names]).astype(dtype, copy=False)
          for j, dtype in ((0, np.uint64), (1, np.int64), (2, np.int64))),
        np.cumsum([0] + [len(items[v][0]) for v in names]), np.array(lower, np.uint8),
        _LOG1P, _LOG1P_SHARE, shift, 2 * top, top, max_chars)
    out: list[dict] = []
    for c, start, end, weight in zip(code.tolist(), starts.tolist(), ends.tolist(), kept_w.tolist()):
        raw = data[start:min(end, start + max_chars)]
        text = (raw.lower() if lower[c] else raw).decode("ascii") + ("..." if end - start > max_chars else "")
        out.append({"item": text, "kind": KINDS[names[c]], "weight": weight})  # printable ASCII and tabs
    return out


def views_and_items(data: bytes, cfg: Config) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, ...]]]:
    """(the views of `compute_views(data, cfg)`, the sketch views' distinct items) from one pass over the bytes."""
    from embedlib import views

    found: dict[str, tuple] = {}

    def sketches(arr: np.ndarray, v) -> dict[str, np.ndarray]:
        counts, items = views.compiled_sketches(arr, v)
        found.update(items)
        return counts

    return views._views(data, cfg, sketches), found


def views_with_evidence(data: bytes, cfg: Config, weights: Mapping[str, np.ndarray], top: int,
                        max_chars: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """(the views of `compute_views(data, cfg)`, the file's top evidence items) from one pass over the bytes."""
    out, found = views_and_items(data, cfg)
    kept = data[: cfg.input.max_bytes]
    return out, top_items(kept, out, found, weights, top, max_chars) if top > 0 else []
