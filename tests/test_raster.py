import numpy as np
import pytest

from embedlib import raster


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


def test_area_weights_rows_sum_to_one_and_keep_mass():
    for n_in, n_out in [(100, 64), (7, 64), (64, 64), (1000, 3)]:
        w = raster.area_weights(n_in, n_out)
        assert np.allclose(w.sum(axis=1), 1.0)
        # every input cell contributes in total n_out/n_in of an output cell's weight: nothing dropped
        assert np.allclose(w.sum(axis=0), n_out / n_in)


def test_upsampling_constant_stays_constant():
    img = np.full((3, 32), 77, dtype=np.uint8)
    assert np.all(raster.fit(img, 64) == 77)


def test_to_image_deterministic_shape_dtype():
    data = open("/usr/bin/ls", "rb").read()
    a, b = raster.to_image(data, 64), raster.to_image(data, 64)
    assert a.dtype == np.uint8 and a.shape == (64, 64)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, raster.to_image(data[::-1], 64))


@pytest.mark.parametrize("shape,size", [((1000, 512), 64), ((64, 64), 64), ((65, 1024), 64), ((3, 32), 64),
                                        ((7919, 384), 128), ((100, 768), 16)])
def test_fast_area_average_equals_the_weight_matrix(shape, size):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    dense = raster.area_weights(shape[0], size) @ img.astype(np.float64) @ raster.area_weights(shape[1], size).T
    fast = raster._area_axis0(raster._area_axis0(img, size).T, size).T
    assert np.allclose(fast, dense, atol=1e-9)
    assert np.array_equal(raster.fit(img, size), np.clip(np.rint(dense), 0, 255).astype(np.uint8)) or \
        np.abs(raster.fit(img, size).astype(int) - np.rint(dense)).max() <= 1  # .5 ties may round either way
