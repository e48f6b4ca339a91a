"""What the network sees of a file: fixed-shape views computed from its bytes. Pure: no I/O, no parsing that can
crash, nothing executed, linear time in the input (vectorised numpy).

Views (their shapes and dtypes are `view_specs(cfg)`; every file gets every view, even an empty one):

  image     uint8 [S, S]   the byteplot (embedlib.views.raster.to_image); zeros for an empty file
  strings   uint8 [B]      printable runs (ASCII 0x20..0x7e and tab) of >= strings_min_len bytes, each DISTINCT
                           string hashed into one of B buckets; a cell counts the distinct strings in that bucket
                           (clipped at 255). The training-free baseline is this view as a set (cell > 0), TF-IDF
                           weighted, cosine.
  idents    uint8 [B]      identifier-like tokens (runs of [A-Za-z0-9_.@$-] of >= idents_min_len bytes, with a NUL
                           byte on both sides): dynamic symbol and imported function names (.dynstr, PE hint/name
                           tables), section names, sonames and DLL names, found without parsing any header.
                           Shorter than the strings' minimum names (puts, exit, .bss) live only here.
  tokens    uint8 [B]      words inside the strings and idents: runs of letters and digits split at every other
                           character (_ . - / space ...) and at camelCase boundaries (fooBar, HTTPServer),
                           lowercased, of >= tokens_min_len bytes, each DISTINCT word hashed into one of B buckets.
                           A family's project names and prefixes recur inside DIFFERENT strings of its different
                           programs (libfoo_open, FooWindow, /usr/share/foo): whole strings miss that, words do.
  token_ids uint32 [K]     the same words as a set of fine-grained ids: each distinct word's hash cut to its top
                           views.token_id_bits bits (2^20 ids by default, where `tokens` keeps 12), ascending,
                           the K = views.token_ids smallest kept (a consistent sample: two files keep the same
                           words from what they share), the rest TOKEN_ID_PAD. The embedding's fixed part weighs
                           each id by its own IDF before folding it into dimensions (embedlib.model.network
                           TokenIdFold): at 4,096 buckets a rare project word shares its bucket's IDF with
                           hundreds of common words, at 2^20 it keeps its own (studies/unseen_families).
  bytehist  float32 [512]  byte histogram (256, fractions) + byte/entropy histogram (16 entropy bins x 16 high
                           nibbles over 1 KiB-step windows of 2 KiB, fractions; EMBER's "byteentropy" feature)

Why these: strings and names do not change with the CPU architecture that a package was built for, while the
byteplot does; the byte histograms summarise packed or stripped files where strings say little.

Speed: `compute_views` computes strings, idents and tokens with the compiled kernels of embedlib.views.kernels
(numba; about one pass over the bytes, 7 to 10 times the numpy version's speed: bench/bench_views.py prints both
side by side). The numpy functions below (`runs`, `hash_runs`, `identifiers_among`, `word_runs`,
`bucket_counts`) DEFINE those views: `compute_views_reference` computes them that way, and the kernels must
match it bit for bit (tests/test_sketch_kernels.py), because the views version, and so every stored corpus and
model, assumes they do. In the numpy version, runs are found with a few SIMD passes over the bytes (see `runs`)
and each run is hashed 8 bytes at a time (see `hash_runs`); the bucket is the hash's top bits.
May import: config (the views settings). Nothing else: views are pure functions of the bytes.
"""

from __future__ import annotations

import numpy as np

from embedlib.views import raster
from embedlib.config import KNOWN_VIEWS, Config, ViewsConfig

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x20:0x7F] = True
_PRINTABLE[0x09] = True
_IDENT = np.zeros(256, dtype=bool)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@$-":
    _IDENT[_c] = True

VIEW_NAMES = ("image", "strings", "idents", "bytehist")  # the views of the first release (tokens came later)
TOKEN_ID_PAD = np.uint32(0xFFFFFFFF)  # the unused slots of a token_ids view (never an id: ids have <= 24 bits)

BYTEHIST_DIM = 512


def view_specs(cfg: Config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of every view `compute_views` returns under `cfg`."""
    size, buckets = cfg.raster.size, cfg.views.buckets
    specs = {
        "image": ((size, size), np.dtype(np.uint8)),
        "strings": ((buckets,), np.dtype(np.uint8)),
        "idents": ((buckets,), np.dtype(np.uint8)),
        "bytehist": ((BYTEHIST_DIM,), np.dtype(np.float32)),
        "tokens": ((buckets,), np.dtype(np.uint8)),
        "token_ids": ((cfg.views.token_ids,), np.dtype(np.uint32)),
    }
    return {k: specs[k] for k in cfg.views.names}


def compute_views(data: bytes, cfg: Config) -> dict[str, np.ndarray]:
    """Every view of cfg.views.names for one file's bytes (at most input.max_bytes of them are looked at)."""
    return _views(data, cfg, _sketches_compiled)


def compute_views_reference(data: bytes, cfg: Config) -> dict[str, np.ndarray]:
    """`compute_views` with the sketch views computed by the numpy functions of this module: their definition,
    which the compiled kernels must match bit for bit (tests/test_sketch_kernels.py compares them), and the
    baseline of bench/bench_views.py. About 4 to 8 times slower; nothing in the product calls it."""
    return _views(data, cfg, _sketches_numpy)


_SKETCHES = ("strings", "idents", "tokens", "token_ids")  # the views computed from the printable runs


def _kernel_names(v: ViewsConfig) -> tuple[str, ...]:
    """The kernels' views to compute for v.names (token_ids are read from the tokens' distinct words)."""
    return tuple(n for n in ("strings", "idents", "tokens") if n in v.names or (n == "tokens" and "token_ids" in v.names))


def _views(data: bytes, cfg: Config, sketches) -> dict[str, np.ndarray]:
    data = data[: cfg.input.max_bytes]
    arr = np.frombuffer(data, dtype=np.uint8)
    v = cfg.views
    sketch = sketches(arr, v) if set(_SKETCHES) & set(v.names) else {}
    out: dict[str, np.ndarray] = {}
    for name in v.names:
        if name == "image":
            out[name] = raster.to_image(data, cfg.raster.size) if data else np.zeros((cfg.raster.size,) * 2, np.uint8)
        elif name in sketch:
            out[name] = sketch[name]
        elif name == "bytehist":
            out[name] = byte_histograms(arr)
        else:
            raise ValueError(f"unknown view {name!r}; known: {KNOWN_VIEWS}")
    return out


def _sketches_compiled(arr: np.ndarray, v: ViewsConfig) -> dict[str, np.ndarray]:
    """The sketch views of v.names, by embedlib.views.kernels (imported here, on first use: numba takes about
    half a second to import, which processes that never compute a view need not pay)."""
    return compiled_sketches(arr, v)[0]


def compiled_sketches(arr: np.ndarray, v: ViewsConfig) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """(the sketch views of v.names, each kernel view's distinct items: embedlib.views.kernels.sketch_items) from one
    pass over the bytes; the evidence reads the items' text."""
    from embedlib.views import kernels as sketch_kernels

    counts, items = sketch_kernels.sketch_items(arr, _kernel_names(v), v.strings_min_len, v.idents_min_len,
                                                v.tokens_min_len, v.buckets)
    return with_token_ids(counts, items["tokens"][0] if "tokens" in items else None, v), items


def with_token_ids(counts: dict[str, np.ndarray], word_hashes: np.ndarray | None, v: ViewsConfig
                   ) -> dict[str, np.ndarray]:
    """The sketch views of v.names: `counts` (the kernels' or the reference's), plus token_ids from the tokens'
    distinct word hashes when v.names has it."""
    out = {k: c for k, c in counts.items() if k in v.names}
    if "token_ids" in v.names:
        out["token_ids"] = token_ids(word_hashes, v.token_id_bits, v.token_ids)
    return out


def token_ids(hashes: np.ndarray, bits: int, keep: int) -> np.ndarray:
    """uint32 [keep]: the distinct top-`bits` ids of `hashes` (uint64), ascending, the `keep` smallest, padded
    with TOKEN_ID_PAD. The smallest ids of a set are a consistent sample of it (MinHash's bottom-k): a word two
    files share and that one keeps, the other keeps too unless it has `keep` smaller ids of its own."""
    out = np.full(keep, TOKEN_ID_PAD, np.uint32)
    ids = (np.asarray(hashes, np.uint64) >> np.uint64(64 - bits)).astype(np.uint32)
    if len(ids) > 2 * keep:  # a large file: the smallest 2 x keep values hold its smallest distinct ids (O(n))
        head = np.unique(np.partition(ids, 2 * keep)[: 2 * keep + 1])
        ids = head if len(head) >= keep else np.unique(ids)  # (else: many words share ids; sort them all)
    else:
        ids = np.unique(ids)
    ids = ids[:keep]
    out[: len(ids)] = ids
    return out


def _sketches_numpy(arr: np.ndarray, v: ViewsConfig) -> dict[str, np.ndarray]:
    """The sketch views of v.names, by the numpy functions below (the reference)."""
    out: dict[str, np.ndarray] = {}
    # one scan of printable runs serves all three
    wanted = [v.strings_min_len if n == "strings" else v.idents_min_len for n in ("strings", "idents") if n in v.names]
    want_words = "tokens" in v.names or "token_ids" in v.names
    shortest = min(wanted + ([v.strings_min_len, v.idents_min_len] if want_words else []))
    starts, ends = runs(printable(arr), shortest)
    if "strings" in v.names:
        long = (ends - starts) >= v.strings_min_len
        out["strings"] = bucket_counts(np.unique(hash_runs(arr, starts[long], ends[long])), v.buckets)
    if "idents" in v.names:
        s, e = identifiers_among(arr, starts, ends, v.idents_min_len)
        out["idents"] = bucket_counts(np.unique(hash_runs(arr, s, e)), v.buckets)
    words = None
    if want_words:
        long = (ends - starts) >= v.strings_min_len
        si, ei = identifiers_among(arr, starts[~long], ends[~long], v.idents_min_len)
        s = np.concatenate([starts[long], si])
        e = np.concatenate([ends[long], ei])
        words = word_hashes(arr, s, e, v.tokens_min_len)
        out["tokens"] = bucket_counts(words, v.buckets)
    return with_token_ids(out, words, v)


# ---------------------------------------------------------------------------------------------------
# Runs and their hashes
# ---------------------------------------------------------------------------------------------------

def printable(arr: np.ndarray) -> np.ndarray:
    """bool mask of printable ASCII (0x20..0x7e) and tab, with two cheap SIMD passes instead of a table."""
    mask = (arr - np.uint8(0x20)) < np.uint8(0x5F)
    mask |= arr == 9
    return mask


def runs(mask: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of True in `mask` that are at least `min_len` long (ends exclusive).

    Code sections hold many short printable runs; listing them all would cost most of the time. So we first
    AND `mask` with itself shifted (doubling: windows of 2, 4, ... bytes), which leaves True exactly where a
    window of `min_len` bytes is all True, and list only the transitions of that sparse mask."""
    n = mask.size
    if n < min_len or min_len < 1:
        if min_len < 1:
            raise ValueError("min_len must be >= 1")
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    window, width = mask, 1  # window[i] = all(mask[i : i + width])
    while width * 2 <= min_len:
        window = window[:-width] & window[width:]
        width *= 2
    if width < min_len:  # all(mask[i : i + min_len]) = window[i] & window[i + min_len - width]
        rest = min_len - width
        window = window[:-rest] & window[rest:]
    edges = np.flatnonzero(window[1:] != window[:-1]) + 1
    if window[0]:
        edges = np.concatenate(([0], edges))
    if window[-1]:
        edges = np.concatenate((edges, [len(window)]))
    return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64) + (min_len - 1)


_K = np.uint64(0x9E3779B97F4A7C15)
_TAIL_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [2**64 - 1], dtype=np.uint64)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place (uint64, wrapping)."""
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output for each uint64 value (a new array): a fixed, well-mixed hash, exact on every machine
    and version (numpy integers wrap). The embedding's fold of token_ids draws its dimensions and signs from it."""
    with np.errstate(over="ignore"):
        return _mix(np.asarray(x, np.uint64) + _K)


with np.errstate(over="ignore"):  # a fixed odd key per word position, defined by arithmetic (no RNG version)
    _CHUNK_KEYS = _mix((np.arange(1, 4097, dtype=np.uint64) * _K)) | np.uint64(1)


def hash_runs(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint64 hash of every run arr[starts[i]:ends[i]] (equal byte strings, equal hashes), all at once.

    A run is read as 8-byte little-endian words (unaligned loads through an overlapping strided view, the
    tail masked); word k is mixed and multiplied by a fixed odd key for position min(k, 4095) (so every word
    from 32 KiB - 8 bytes on shares the last key), the products summed per run (mod 2**64), and the sum mixed
    with the run's length.
    Work is per 8 bytes of string, not per byte."""
    if len(starts) == 0:
        return np.zeros(0, np.uint64)
    n = len(arr)
    lengths = ends - starts
    words_per_run = (lengths + 7) >> 3
    offsets = np.cumsum(words_per_run) - words_per_run
    k = np.arange(int(words_per_run.sum()), dtype=np.int64) - np.repeat(offsets, words_per_run)
    pos = np.repeat(starts, words_per_run) + 8 * k
    remaining = np.repeat(ends, words_per_run) - pos  # 1.. bytes of this run from pos on
    padded = arr if n >= 8 else np.concatenate([arr, np.zeros(8 - n, np.uint8)])
    load_at = np.minimum(pos, len(padded) - 8)  # a load past the end reads earlier and shifts
    eight = np.lib.stride_tricks.as_strided(padded, shape=(len(padded) - 7, 8), strides=(padded.strides[0], 1))
    words = np.ascontiguousarray(eight[load_at]).view("<u8").ravel()
    with np.errstate(over="ignore"):
        words >>= (pos - load_at).astype(np.uint64) * np.uint64(8)
        words &= _TAIL_MASKS[np.minimum(remaining, 8)]
        h = _mix(words + _K) * _CHUNK_KEYS[np.minimum(k, len(_CHUNK_KEYS) - 1)]
        sums = np.add.reduceat(h, offsets)
        return _mix(sums + lengths.astype(np.uint64) * _K)


def string_hashes(arr: np.ndarray, min_len: int) -> np.ndarray:
    """Distinct hashes (sorted uint64) of the printable runs of >= min_len bytes: the file's string SET."""
    starts, ends = runs(printable(arr), min_len)
    return np.unique(hash_runs(arr, starts, ends))


def ident_runs(arr: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of identifier characters of >= min_len bytes with a NUL byte right before and right after."""
    return identifiers_among(arr, *runs(printable(arr), min_len), min_len)


def identifiers_among(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_len: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The NUL-bounded printable runs of >= min_len bytes made of identifier characters only. (A maximal run of
    identifier characters between two NULs is also a maximal printable run, so this finds exactly the
    NUL-bounded identifier runs, from the printable runs the strings view needs anyway.)"""
    ok = ((ends - starts) >= min_len) & (starts > 0) & (ends < len(arr))
    starts, ends = starts[ok], ends[ok]
    ok = (arr[starts - 1] == 0) & (arr[ends] == 0)
    starts, ends = starts[ok], ends[ok]
    if len(starts):
        lengths = ends - starts
        offsets = np.cumsum(lengths) - lengths
        idx = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
        bad = np.add.reduceat((~_IDENT[arr[idx]]).view(np.uint8), offsets, dtype=np.int64)
        starts, ends = starts[bad == 0], ends[bad == 0]
    return starts, ends


def ident_hashes(arr: np.ndarray, min_len: int) -> np.ndarray:
    """Distinct hashes of identifier-like runs with a NUL byte right before and right after them."""
    return np.unique(hash_runs(arr, *ident_runs(arr, min_len)))


_UPPER = np.zeros(256, dtype=bool)
_UPPER[ord("A") : ord("Z") + 1] = True
_LOWER = np.zeros(256, dtype=bool)
_LOWER[ord("a") : ord("z") + 1] = True
_ALNUM = _UPPER | _LOWER
_ALNUM[ord("0") : ord("9") + 1] = True


def word_runs(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_len: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The words inside the runs arr[starts[i]:ends[i]], as (buffer, word starts, word ends) over a lowercased
    copy of the runs' bytes laid end to end. A word is a maximal run of ASCII letters and digits, also cut where
    a lowercase letter is followed by an uppercase one (fooBar) and before the last capital of a capital run
    followed by a lowercase letter (HTTPServer -> http, server); words shorter than min_len are dropped."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths
    buf = arr[np.repeat(starts - offsets, lengths) + np.arange(total)]
    first = np.zeros(total, dtype=bool)
    first[offsets[lengths > 0]] = True  # a run's first byte starts a word (runs touch in buf)
    upper, lower, alnum = _UPPER[buf], _LOWER[buf], _ALNUM[buf]
    cut = np.zeros(total, dtype=bool)  # a word starts at i although buf[i - 1] is a letter or digit
    cut[1:] = upper[1:] & lower[:-1]
    cut[1:-1] |= upper[1:-1] & upper[:-2] & lower[2:]
    cut |= first
    prev_alnum = np.concatenate(([False], alnum[:-1]))
    begin = alnum & (~prev_alnum | cut)
    next_alnum = np.concatenate((alnum[1:], [False]))
    next_cut = np.concatenate((cut[1:], [True]))
    finish = alnum & (~next_alnum | next_cut)
    ws, we = np.flatnonzero(begin), np.flatnonzero(finish) + 1
    keep = (we - ws) >= min_len
    lowered = buf + (upper.view(np.uint8) << np.uint8(5))  # A-Z -> a-z
    return lowered, ws[keep], we[keep]


def word_hashes(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_len: int) -> np.ndarray:
    """Distinct hashes (sorted uint64) of the lowercased words (`word_runs`) inside the given runs."""
    buf, ws, we = word_runs(arr, starts, ends, min_len)
    return np.unique(hash_runs(buf, ws, we))


def bucket_of(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket index of each hash: its top bits (buckets must be a power of two)."""
    if buckets & (buckets - 1):
        raise ValueError(f"buckets must be a power of two, got {buckets}")
    shift = np.uint64(64 - buckets.bit_length() + 1)
    return (hashes >> shift).astype(np.int64) if buckets > 1 else np.zeros(len(hashes), np.int64)


def bucket_counts(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """uint8 [buckets]: how many of the (distinct) hashes fall in each bucket, clipped at 255."""
    counts = np.bincount(bucket_of(hashes, buckets), minlength=buckets)
    return np.minimum(counts, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Byte statistics
# ---------------------------------------------------------------------------------------------------

WINDOW, STEP = 2048, 1024


def byte_histograms(arr: np.ndarray) -> np.ndarray:
    """float32 [512]: byte histogram (fractions) + 16x16 entropy/high-nibble histogram (fractions)."""
    out = np.zeros(BYTEHIST_DIM, np.float32)
    n = len(arr)
    if n == 0:
        return out
    out[:256] = np.bincount(arr, minlength=256) / n
    nib = (arr >> 4).astype(np.int64)
    if n <= WINDOW:
        counts = np.bincount(nib, minlength=16)[None, :]
        width = n
    else:  # counts per STEP-sized block; a window is two consecutive whole blocks
        blocks = n // STEP
        per_block = np.bincount((np.arange(blocks * STEP) // STEP) * 16 + nib[: blocks * STEP],
                                minlength=blocks * 16).reshape(blocks, 16)
        counts = per_block[:-1] + per_block[1:]
        width = WINDOW
    p = counts / width
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.sum(np.where(p > 0, p * np.log2(p), 0.0), axis=1)  # 0..4 bits
    ent_bin = np.minimum((ent * 4).astype(np.int64), 15)
    joint = np.zeros((16, 16), np.float64)
    np.add.at(joint, ent_bin, counts)
    out[256:] = (joint / joint.sum()).ravel()
    return out


# ---------------------------------------------------------------------------------------------------
# Identity and storage of views (the pipeline stores each view as raw bytes: samples.view_<name>)
# ---------------------------------------------------------------------------------------------------

def views_version(cfg: Config) -> str:
    """A short id of everything that shapes the views: their settings and the bytes read per file. Two
    samples tables agree on it only if their rows are comparable."""
    import hashlib
    import json

    settings = {"raster": cfg.to_dict()["raster"], "views": cfg.to_dict()["views"], "max_bytes": cfg.input.max_bytes}
    return "v-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def sketch_views(cfg: Config) -> list[str]:
    """The views whose encoder weights buckets by IDF (their document frequencies are counted before training)."""
    return [name for name, (shape, dtype) in view_specs(cfg).items() if len(shape) == 1 and dtype == np.uint8]


def weighted_views(cfg: Config) -> list[str]:
    """The views whose items the model weighs by IDF: the sketches and the token_ids (their document frequencies
    are counted before training)."""
    return sketch_views(cfg) + (["token_ids"] if "token_ids" in cfg.views.names else [])


def document_frequency(name: str, batch: np.ndarray, cfg: Config) -> np.ndarray:
    """int64 per bucket (a sketch view) or per id (token_ids: 2^views.token_id_bits): in how many of the batch's
    files it occurs."""
    if name == "token_ids":
        ids = batch[batch != TOKEN_ID_PAD].astype(np.int64)
        return np.bincount(ids, minlength=1 << cfg.views.token_id_bits)
    return (batch > 0).sum(axis=0, dtype=np.int64)


def decode_column(blobs: list[bytes], name: str, cfg: Config) -> np.ndarray:
    """A column of stored view bytes -> array [B, *shape]."""
    shape, dtype = view_specs(cfg)[name]
    if not blobs:
        return np.zeros((0, *shape), dtype=dtype)
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), *shape)


def stack(rows: list[dict[str, np.ndarray]], cfg: Config) -> dict[str, np.ndarray]:
    """Per-file views -> batched arrays [B, *shape] per view."""
    specs = view_specs(cfg)
    if not rows:
        return {name: np.zeros((0, *shape), dtype=dtype) for name, (shape, dtype) in specs.items()}
    return {name: np.stack([r[name] for r in rows]) for name in specs}
