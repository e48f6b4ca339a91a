import numpy as np
import pytest

from embedlib.views import raster


@pytest.mark.parametrize(
    "size,width",
    [(1, 32), (10 * 1024 - 1, 32), (10 * 1024, 64), (30 * 1024 - 1, 64), (30 * 1024, 128), (60 * 1024, 256),
     (100 * 1024 - 1, 256), (100 * 1024, 384), (200 * 1024, 512), (500 * 1024 - 1, 512), (500 * 1024, 768),
     (1000 * 1024 - 1, 768), (1000 * 1024, 1024), (50 * 1024 * 1024, 1024)],
)
def test_width_table_edges(size, width):
    assert raster.width_for_size(size) == width


def test_width_table_is_monotonic_data():
    bounds = [b for b, _ in raster.NATARAJ_WIDTHS]
    widths = [w for _, w in raster.NATARAJ_WIDTHS]
    assert bounds == sorted(bounds) and widths == sorted(widths) and bounds[-1] == float("inf")


def test_byteplot_layout_and_padding():
    data = bytes(range(70))
    img = raster.byteplot(data)
    assert img.shape == (3, 32)
    assert img[0, 0] == 0 and img[1, 0] == 32 and img[2, 5] == 69
    assert img[2, 6:].sum() == 0  # padded


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        raster.byteplot(b"")


def test_area_average_exact_when_divisible():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    out = raster.fit(img, 2)
    expected = img.reshape(2, 2, 2, 2).mean(axis=(1, 3))
    assert np.array_equal(out, np.rint(expected).astype(np.uint8))


def test_upsampling_constant_stays_constant():
    img = np.full((3, 32), 77, dtype=np.uint8)
    assert np.all(raster.fit(img, 64) == 77)


def test_to_image_deterministic_shape_dtype():
    data = open("/usr/bin/ls", "rb").read()
    a, b = raster.to_image(data, 64), raster.to_image(data, 64)
    assert a.dtype == np.uint8 and a.shape == (64, 64)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, raster.to_image(data[::-1], 64))


def _dense_area_weights(n_in: int, n_out: int) -> np.ndarray:
    """The first release's implementation (dense overlap matrices), kept as the reference."""
    edges_out = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges_out[:-1, None], edges_out[1:, None]
    cells = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _dense_fit_float(image: np.ndarray, size: int) -> np.ndarray:
    rows = _dense_area_weights(image.shape[0], size)
    cols = _dense_area_weights(image.shape[1], size)
    return rows @ image.astype(np.float64) @ cols.T


@pytest.mark.parametrize("n_bytes", [1, 31, 70, 4096, 10 * 1024, 33_333, 100_000, 777_777, 2_500_000])
@pytest.mark.parametrize("size", [16, 64, 100])
def test_linear_time_fit_equals_dense_reference(n_bytes, size):
    data = np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    image = raster.byteplot(data)
    ref = _dense_fit_float(image, size)
    fast = raster._area_average(raster._area_average(image, size, 0), size, 1)
    assert np.allclose(fast, ref, rtol=0, atol=1e-6)
    # rounding agrees except on exact .5 ties (e.g. (a + 7b) / 8 when enlarging), where float error decides
    diff = raster.fit(image, size).astype(int) - np.clip(np.rint(ref), 0, 255).astype(int)
    assert np.abs(diff).max() <= 1
    assert np.all(np.abs(np.abs(ref[diff != 0] - np.floor(ref[diff != 0])) - 0.5) < 1e-6)


def test_fit_keeps_mass_of_real_file():
    data = open("/usr/bin/ls", "rb").read()
    image = raster.byteplot(data)
    out = raster._area_average(raster._area_average(image, 64, 0), 64, 1)
    assert out.mean() == pytest.approx(image.astype(np.float64).mean(), rel=1e-9)
