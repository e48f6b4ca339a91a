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


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size by area averaging; rounds to uint8."""
    rows = area_weights(image.shape[0], size).astype(np.float32)
    cols = area_weights(image.shape[1], size).astype(np.float32)
    out = rows @ image.astype(np.float32) @ cols.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_image(data: bytes, size: int) -> np.ndarray:
    """The network's input for a file: its byteplot fitted to size x size uint8."""
    return fit(byteplot(data), size)
