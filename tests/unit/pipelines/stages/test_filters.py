"""OpenCV window kernels against straightforward scipy.ndimage / scikit-image references.

Tiny arrays with NaN holes, edges and sizes that reach past the array, so a wrong border mode
or NaN rule fails here.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk, remove_small_objects

from pipelines.stages import filters as F


def _field(seed: int = 0, shape: tuple[int, ...] = (2, 23, 19), nan: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype("float32")
    x[rng.random(shape) < nan] = np.nan
    x[0, :4, :5] = np.nan  # a NaN block wider than a 3 px window at the corner
    return x


def _mask(seed: int = 1, shape: tuple[int, ...] = (2, 23, 19), p: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < p


def _ref_box_mean(x: np.ndarray, size: int, w: np.ndarray | None = None) -> np.ndarray:
    fp = (1,) * (x.ndim - 2) + (size, size)
    valid = ~np.isnan(x)
    ww = valid.astype("float64") if w is None else np.where(valid, w, 0.0)
    num = ndi.uniform_filter(np.where(valid, x, 0.0) * ww, fp, mode="reflect")
    den = ndi.uniform_filter(ww, fp, mode="reflect")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, num / den, np.nan)


@pytest.mark.parametrize("size", [1, 3, 7, 41])
def test_min_max_filters_match_scipy_nearest_with_nan_ignored(size: int) -> None:
    x = _field()
    fp = (1, size, size)
    ref_min = ndi.minimum_filter(np.where(np.isnan(x), np.inf, x), fp, mode="nearest")
    ref_max = ndi.maximum_filter(np.where(np.isnan(x), -np.inf, x), fp, mode="nearest")
    got_min = F._min_filter_np(x, size)
    got_max = F._max_filter_np(x, size)
    np.testing.assert_array_equal(got_min, np.where(np.isinf(ref_min), np.nan, ref_min))
    np.testing.assert_array_equal(got_max, np.where(np.isinf(ref_max), np.nan, ref_max))
    assert got_min.dtype == np.float32


def test_min_filter_keeps_the_input_and_is_chunk_independent() -> None:
    x = _field(shape=(2, 40, 37))
    before = x.copy()
    whole = F._min_filter_np(x, 9)
    np.testing.assert_array_equal(x, before)
    lazy = F.min_filter(da.from_array(x, chunks=(1, 13, 11)), 9).compute()
    np.testing.assert_array_equal(lazy, whole)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_median_filter_matches_scipy(size: int) -> None:
    x = _field(2)
    ref = ndi.median_filter(np.where(np.isnan(x), 40.0, x), (1, size, size), mode="nearest")
    ref = np.where(np.isnan(x), np.nan, ref)
    np.testing.assert_array_equal(F._median_filter_np(x, size, 40.0), ref)


@pytest.mark.parametrize("size", [3, 31, 45])
def test_boolean_max_filter_counts_nothing_outside(size: int) -> None:
    m = _mask(p=0.02, shape=(2, 60, 50))
    ref = ndi.maximum_filter(m, (1, size, size), mode="constant", cval=0)
    np.testing.assert_array_equal(F._max_filter_np(m, size), ref)


@pytest.mark.parametrize("size", [3, 9, 61])
def test_box_mean_matches_reflected_nan_aware_mean(size: int) -> None:
    x = _field(3)
    w = np.random.default_rng(4).random(x.shape).astype("float32")
    np.testing.assert_allclose(F._box_mean_np(x, size), _ref_box_mean(x, size), atol=2e-6)
    np.testing.assert_allclose(F._box_mean_np(x, size, w), _ref_box_mean(x, size, w), atol=2e-6)
    full = np.nan_to_num(x)
    np.testing.assert_allclose(F._box_mean_np(full, size), _ref_box_mean(full, size), atol=2e-6)
    # A window with no weight at all is NaN.
    empty = np.full((1, 5, 5), np.nan, dtype="float32")
    assert np.isnan(F._box_mean_np(empty, 3)).all()


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_dilation_and_opening_match_scipy(radius: int) -> None:
    m = _mask(5, p=0.15)
    m[1, :3, :] = True  # a band along the edge: erosion reads 0 outside
    if radius:
        st = disk(radius).astype(bool)[None]
        ref_d = ndi.binary_dilation(m, structure=st)
        ref_o = ndi.binary_opening(
            m, structure=np.ones((1, 2 * radius + 1, 2 * radius + 1), dtype=bool)
        )
    else:
        ref_d, ref_o = m, m
    np.testing.assert_array_equal(F._dilate_np(m, radius), ref_d)
    np.testing.assert_array_equal(F._open_np(m, radius), ref_o)


def _ref_guided(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    size = 2 * radius + 1
    g, p = guide.astype("float64"), src.astype("float64")
    nan = np.isnan(g) | np.isnan(p)
    g, p = np.where(nan, np.nan, g), np.where(nan, np.nan, p)
    mg, mp = _ref_box_mean(g, size), _ref_box_mean(p, size)
    a = (_ref_box_mean(g * p, size) - mg * mp) / (_ref_box_mean(g * g, size) - mg * mg + eps)
    b = mp - a * mg
    q = _ref_box_mean(a, size) * guide + _ref_box_mean(b, size)
    return np.where(np.isnan(q), mp, q)


@pytest.mark.parametrize("with_nan", [False, True])
def test_guided_filter_matches_he_et_al(with_nan: bool) -> None:
    rng = np.random.default_rng(6)
    guide = (0.05 + 0.2 * rng.random((1, 30, 26))).astype("float32")
    src = np.clip(guide * 3 + 0.1 * rng.random(guide.shape), 0, 1).astype("float32")
    if with_nan:
        guide[0, 5:12, 3:9] = np.nan
        src[0, 20:, 20:] = np.nan
    got = F._guided_np(guide, src, 4, 1e-3)
    np.testing.assert_allclose(got, _ref_guided(guide, src, 4, 1e-3), atol=2e-5)
    lazy = F.guided_filter(da.from_array(guide, chunks=(1, 15, 13)), da.from_array(src), 2, 1e-3)
    np.testing.assert_allclose(lazy.compute(), F._guided_np(guide, src, 2, 1e-3), atol=1e-5)


def test_lee_filter_matches_the_float64_formula() -> None:
    rng = np.random.default_rng(7)
    db = (10 * np.log10(rng.gamma(4.0, 0.05 / 4.0, size=(2, 21, 17)))).astype("float32")
    db[1, 3:6, 4:9] = np.nan
    lin = np.where(np.isnan(db), np.nan, 10.0 ** (db.astype("float64") / 10.0))
    mean, mean_sq = _ref_box_mean(lin, 5), _ref_box_mean(lin * lin, 5)
    var = np.maximum(mean_sq - mean * mean, 0.0)
    var_x = np.maximum((var - mean * mean / 4.0) / 1.25, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(var > 0, var_x / var, 0.0)
        ref = 10.0 * np.log10(np.maximum(mean + k * (lin - mean), 1e-10))
    got = F._lee_np(db, 5, 4.0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(db))
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("min_px", [2, 5])
def test_remove_small_matches_scikit_image(min_px: int) -> None:
    m = _mask(8, p=0.35)
    ref = np.stack([remove_small_objects(p, max_size=min_px - 1, connectivity=2) for p in m])
    np.testing.assert_array_equal(F._remove_small_np(m, min_px), ref)
    full = np.ones((1, 4, 4), dtype=bool)
    np.testing.assert_array_equal(F._remove_small_np(full, 5), full)


def test_histogram_matches_numpy_on_edges_and_outside() -> None:
    bins = np.linspace(0.0, 255.0, 1021)
    rng = np.random.default_rng(9)
    v = np.concatenate([rng.uniform(-5, 260, 5000), bins, bins[:-1] + 1e-9]).astype("float32")
    w = rng.random(v.size)
    np.testing.assert_array_equal(F._histogram(v, bins), np.histogram(v, bins)[0])
    np.testing.assert_allclose(F._histogram(v, bins, w), np.histogram(v, bins, weights=w)[0])
    uneven = np.array([0.0, 1.0, 5.0, 6.0])
    np.testing.assert_array_equal(F._histogram(v, uneven), np.histogram(v, uneven)[0])


def test_bin_index_and_masked_sum() -> None:
    bins = np.linspace(0.0, 255.0, 1021)
    v = np.array([[np.nan, -1.0, 0.0, 0.25, 254.9, 255.0, 300.0]], dtype="float32")
    expected = [1020, 1020, 0, 1, 1019, 1019, 1020]
    np.testing.assert_array_equal(F.bin_index(v, bins)[0], expected)
    x = np.array([[1.0, np.nan], [2.5, 4.0]], dtype="float32")
    m = np.array([[True, False], [True, False]])
    assert F.masked_sum(x, m) == pytest.approx(3.5)
    assert F.masked_sum(x, np.zeros_like(m)) == 0.0
