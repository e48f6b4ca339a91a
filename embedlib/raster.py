"""Bytes -> byteplot -> fixed-size grayscale image. Pure: no I/O, no randomness, vectorised numpy.

The byteplot (Nataraj et al. 2011, "Malware images: visualization and automatic classification") lays the
bytes out row by row at a width chosen from the file size, so that structure (sections, padding, tables)
shows as texture. We then fit it to size x size by exact area averaging, which keeps every byte's
contribution (no sampling aliasing) for both shrinking and enlarging.
"""

from __future__ import annotations

import numpy as np

# (upper bound of file size in kB, exclusive; width in pixels): Nataraj et al. 2011, Table 1. kB = 1024 bytes.
NATARAJ_WIDTHS: tuple[tuple[float, int], ...] = (
    (10, 32),
    (30, 64),
    (60, 128),
    (100, 256),
    (200, 384),
    (500, 512),
    (1000, 768),
    (float("inf"), 1024),
)


def width_for_size(size_bytes: int) -> int:
    """Byteplot width for a file of `size_bytes` (the table above, as data)."""
    kb = size_bytes / 1024
    for upper_kb, width in NATARAJ_WIDTHS:
        if kb < upper_kb:
            return width
    raise AssertionError("unreachable: the last bound is infinite")


def byteplot(data: bytes) -> np.ndarray:
    """Bytes as a 2-D uint8 array of Nataraj width; the last row is zero-padded."""
    if not data:
        raise ValueError("cannot rasterize an empty file")
    width = width_for_size(len(data))
    height = -(-len(data) // width)
    flat = np.zeros(height * width, dtype=np.uint8)
    flat[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return flat.reshape(height, width)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: row i averages the input cells that output cell i covers, by overlap length."""
    edges_out = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo = edges_out[:-1, None]
    hi = edges_out[1:, None]
    cells = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _area_axis0(image: np.ndarray, n_out: int) -> np.ndarray:
    """Area average along axis 0 to n_out cells, float64. Shrinking sums whole input rows once (integer
    np.add.reduceat) and corrects the two fractional rows at each output cell's edges: one pass over the bytes,
    where a dense weight matrix would cost n_out multiply-adds per byte."""
    n_in = image.shape[0]
    if n_in < n_out:  # enlarging (small files): the weight matrix is tiny
        return area_weights(n_in, n_out) @ image.astype(np.float64)
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo = np.minimum(np.floor(edges).astype(np.int64), n_in)
    frac = edges - lo
    acc = np.int64 if np.issubdtype(image.dtype, np.integer) else np.float64  # integers sum exactly
    whole = np.add.reduceat(image, lo[:-1], axis=0, dtype=acc).astype(np.float64)  # rows [lo_i, lo_i+1)
    padded = np.concatenate([image, np.zeros((1,) + image.shape[1:], image.dtype)])  # row n_in: zero
    edge_rows = padded[lo].astype(np.float64) * frac.reshape((-1,) + (1,) * (image.ndim - 1))
    # integral over [edge_i, edge_i+1) = whole rows + the part of row lo_i+1 before the edge - row lo_i's part
    return (whole + edge_rows[1:] - edge_rows[:-1]) / (n_in / n_out)


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size by exact area averaging; rounds to uint8."""
    rows = _area_axis0(image, size)  # [size, W]
    out = _area_axis0(rows.T, size).T  # [size, size]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_image(data: bytes, size: int) -> np.ndarray:
    """The network's input for a file: its byteplot fitted to size x size uint8."""
    return fit(byteplot(data), size)
