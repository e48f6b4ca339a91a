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


def _edges(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Output cell k spans input [x_k, x_{k+1}), x_k = k * n_in / n_out: (floor(x_k), frac(x_k)) for k=0..n_out."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    floors = np.minimum(np.floor(edges).astype(np.int64), n_in)
    return floors, edges - floors


def _area_average(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Exact area average of 2-D `a` along `axis` into n_out cells (float64), in time linear in a.size.

    Output cell k spans input [x_k, x_{k+1}); with S(x) the integral of the cells from 0 to x,
    cell k = (S(x_{k+1}) - S(x_k)) * n_out / n_in
           = (sum of the whole cells floor(x_k) .. floor(x_{k+1}) - 1
              + frac(x_{k+1}) * a[floor(x_{k+1})] - frac(x_k) * a[floor(x_k)]) * n_out / n_in.
    Each block holds q or q + 1 whole cells (q = n_in // n_out): one gather of q cells per block and one
    sum, plus the blocks' extra cell. Every input value is read once or twice: no dense weight matrix, a
    handful of vectorised calls whatever the size."""
    a = a if axis == 0 else np.ascontiguousarray(a.T)
    n_in = a.shape[0]
    floors, frac = _edges(n_in, n_out)
    starts, lengths = floors[:-1], np.diff(floors)
    q = n_in // n_out
    acc = np.uint32 if a.dtype == np.uint8 and n_in < (1 << 24) else np.float64  # exact: 255 * 2**24 < 2**32
    if q:
        whole = a[starts[:, None] + np.arange(q)].sum(axis=1, dtype=acc).astype(np.float64)
    else:
        whole = np.zeros((n_out, *a.shape[1:]), np.float64)
    extra = lengths > q
    whole[extra] += a[starts[extra] + q]
    at_floor = np.zeros((n_out + 1, *a.shape[1:]), np.float64)
    inside = floors < n_in
    at_floor[inside] = a[floors[inside]]
    partial = frac[:, None] * at_floor
    out = (whole + partial[1:] - partial[:-1]) * (n_out / n_in)
    return out if axis == 0 else out.T


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size by exact area averaging; rounds to uint8. Linear time."""
    rows = _area_average(image, size, axis=0)
    out = _area_average(rows, size, axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_image(data: bytes, size: int) -> np.ndarray:
    """The network's input for a file: its byteplot fitted to size x size uint8."""
    return fit(byteplot(data), size)
