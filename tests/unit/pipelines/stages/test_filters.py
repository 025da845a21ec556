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

from pipelines.errors import BadInputError
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
    chunks = da.from_array(x, chunks=(1, 13, 11))
    lazy = F.overlap(F._min_filter_np, chunks, depth=4, dtype=x.dtype, size=9).compute()
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


def test_min_filter_into_equals_min_filter_and_marks_nan_as_inf() -> None:
    x = _field(shape=(2, 31, 27))
    expected = F._min_filter_np(x, 7)
    work = x.copy()
    out = np.full_like(x, 123.0)
    assert F.min_filter_into(work, 7, out) is out
    np.testing.assert_array_equal(out, expected)
    # The input's NaN became +inf (as documented), nothing else changed.
    np.testing.assert_array_equal(work, np.where(np.isnan(x), np.inf, x))
    clean = np.nan_to_num(x, nan=0.5)
    np.testing.assert_array_equal(
        F.min_filter_into(clean.copy(), 7, out), F._min_filter_np(clean, 7)
    )


@pytest.mark.parametrize("with_nan", [False, True])
def test_guided_filter_into_out_and_work_buffers_independent(with_nan: bool) -> None:
    """The result lands in ``out``, the inputs are untouched, and a second call on other
    inputs of the same shape (same work buffers) does not change the first result."""
    rng = np.random.default_rng(9)
    guide = (0.05 + 0.2 * rng.random((1, 40, 33))).astype("float32")
    src = rng.random(guide.shape).astype("float32")
    if with_nan:
        guide[0, 3:9, 4:30] = np.nan
        src[0, 30:, :12] = np.nan
    g0, s0 = guide.copy(), src.copy()
    out = np.empty_like(guide)
    assert F.guided_np(guide, src, 3, 1e-3, out=out) is out
    first = out.copy()
    np.testing.assert_array_equal(guide, g0)
    np.testing.assert_array_equal(src, s0)
    np.testing.assert_allclose(first, _ref_guided(guide, src, 3, 1e-3), atol=2e-5)
    other = F.guided_np(src[:, ::-1].copy(), guide[:, ::-1].copy(), 3, 1e-3)
    assert not np.allclose(other, first, equal_nan=True)
    np.testing.assert_array_equal(F.guided_np(guide, src, 3, 1e-3), first)


def _min_and_max(x: np.ndarray, size: int) -> np.ndarray:
    return np.stack([F._min_filter_np(x, size), F._max_filter_np(x, size)], axis=1)


@pytest.mark.parametrize("chunks", [(1, 9, 8), (2, 13, 40), (1, 40, 37)])
def test_overlap_with_a_band_axis_is_chunk_independent(chunks: tuple[int, int, int]) -> None:
    """A block function returning (time, bands, y, x) with a halo: chunks smaller than the
    halo (merged first), one chunk along an axis, and the whole plane give the same result."""
    x = _field(shape=(2, 40, 37))
    got = F.overlap(
        _min_and_max, da.from_array(x, chunks=chunks), depth=5, dtype=x.dtype, bands=2, size=11
    )
    assert got.shape == (2, 2, 40, 37)
    np.testing.assert_array_equal(got.compute(), _min_and_max(x, 11))


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


def _lee_two_box_means(db: np.ndarray, size: int, enl: float) -> np.ndarray:
    """The Lee filter as two independent NaN-aware box means (the code the shared-weights
    kernel replaces), same float32 operations."""
    lin = np.exp(np.multiply(db, np.float32(np.log(10.0) / 10.0), dtype=np.float32))
    mean = F._box_mean_np(lin, size)
    var = F._box_mean_np(lin * lin, size)
    tmp = mean * mean
    var -= tmp
    np.maximum(var, 0.0, out=var)
    cu2 = np.float32(1.0 / enl)
    tmp = (var - tmp * cu2) / (1.0 + cu2)
    np.maximum(tmp, 0.0, out=tmp)
    with np.errstate(invalid="ignore", divide="ignore"):
        tmp /= var
    tmp[~(var > 0)] = 0.0
    out = (lin - mean) * tmp + mean
    return np.float32(10.0) * np.log10(np.maximum(out, np.float32(1e-10)))


@pytest.mark.parametrize("size", [3, 5, 7])
def test_lee_filter_equals_two_box_means_to_the_bit(size: int) -> None:
    rng = np.random.default_rng(size)
    db = (10 * np.log10(rng.gamma(4.4, 0.05 / 4.4, size=(3, 57, 49)))).astype("float32")
    db[1][rng.random((57, 49)) < 0.05] = np.nan
    db[1, :9, :9] = np.nan  # windows with no valid pixel
    db[2, 5, 5], db[2, 9, 9] = -np.inf, 70.0
    np.testing.assert_array_equal(F._lee_np(db, size, 4.4), _lee_two_box_means(db, size, 4.4))


@pytest.mark.parametrize("min_px", [2, 5])
def test_remove_small_matches_scikit_image(min_px: int) -> None:
    m = _mask(8, p=0.35)
    ref = np.stack([remove_small_objects(p, max_size=min_px - 1, connectivity=2) for p in m])
    np.testing.assert_array_equal(F._remove_small_np(m, min_px), ref)
    full = np.ones((1, 4, 4), dtype=bool)
    np.testing.assert_array_equal(F._remove_small_np(full, 5), full)
    # A plane without a set pixel next to one with components: skipped, still all False.
    mixed = np.stack([np.zeros_like(m[0]), m[0]])
    np.testing.assert_array_equal(F._remove_small_np(mixed, min_px), np.stack([mixed[0], ref[0]]))


def test_histogram_matches_numpy_on_edges_and_outside() -> None:
    bins = np.linspace(0.0, 255.0, 1021)
    rng = np.random.default_rng(9)
    v = np.concatenate([rng.uniform(-5, 260, 5000), bins, bins[:-1] + 1e-9]).astype("float32")
    w = rng.random(v.size)
    np.testing.assert_array_equal(F._histogram(v, bins), np.histogram(v, bins)[0])
    np.testing.assert_allclose(F._histogram(v, bins, w), np.histogram(v, bins, weights=w)[0])
    uneven = np.array([0.0, 1.0, 5.0, 6.0])
    np.testing.assert_array_equal(F._histogram(v, uneven), np.histogram(v, uneven)[0])


def test_bin_index() -> None:
    bins = np.linspace(0.0, 255.0, 1021)
    v = np.array([[np.nan, -1.0, 0.0, 0.25, 254.9, 255.0, 300.0]], dtype="float32")
    expected = [1020, 1020, 0, 1, 1019, 1019, 1020]
    np.testing.assert_array_equal(F.bin_index(v, bins)[0], expected)


@pytest.mark.parametrize(
    "bins", [np.arange(-40.0, 10.0 + 1e-9, 0.05), np.linspace(0.0, 255.0, 1021)]
)
def test_square_bin_counts_are_bin_index_counts_at_every_edge(bins: np.ndarray) -> None:
    """The float32 fast paths (bin_index, the sub-tile counts) bin as the corrected arithmetic
    does: on each edge, one float32 step either side of it, NaN, infinities and values outside
    the edges."""
    rng = np.random.default_rng(5)
    edges = bins.astype("float32")
    v = np.concatenate(
        [
            edges,
            np.nextafter(edges, np.float32(-np.inf)),
            np.nextafter(edges, np.float32(np.inf)),
            rng.uniform(bins[0] - 5, bins[-1] + 5, 20_000).astype("float32"),
            np.array([np.nan, np.inf, -np.inf, 1e30, -1e30], dtype="float32"),
        ]
    )
    v = v[rng.permutation(v.size)][: 120 * (v.size // 120)].reshape(120, -1)
    square = (np.arange(v.shape[0]) // 32)[:, None] * 3 + (np.arange(v.shape[1]) // 64)
    n = int(square.max()) + 1
    counts, nonfinite = F._square_bin_counts(v, square, n, bins)
    nb = len(bins) - 1
    idx = F._bin_index_exact(v, bins)
    np.testing.assert_array_equal(F.bin_index(v, bins), idx)
    for k in range(n):
        sel = square == k
        expected = np.bincount(idx[sel], minlength=nb + 1)[:nb]
        np.testing.assert_array_equal(counts[k], expected)
        assert nonfinite[k] == np.count_nonzero(~np.isfinite(v[sel]))
    # float64 values take bin_index itself
    v64 = v.astype("float64")
    counts64, _ = F._square_bin_counts(v64, square, n, bins)
    idx64 = F.bin_index(v64, bins)
    expected64 = [np.bincount(idx64[square == k], minlength=nb + 1)[:nb] for k in range(n)]
    np.testing.assert_array_equal(counts64, np.array(expected64))


def _loop_block_histograms(
    v: np.ndarray, bins: np.ndarray, block_px: int, min_valid: float, d: float, low: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The straightforward definition: one sub-tile at a time, numpy histograms, skimage Otsu."""
    nb = len(bins) - 1
    centers = 0.5 * (bins[:-1] + bins[1:])
    pool, count, whole = (
        np.zeros((v.shape[0], nb)),
        np.zeros(v.shape[0]),
        np.zeros((v.shape[0], nb)),
    )
    for i in range(v.shape[0]):
        whole[i] = np.histogram(v[i][np.isfinite(v[i])], bins)[0]
        for y0 in range(0, v.shape[1], block_px):
            for x0 in range(0, v.shape[2], block_px):
                sub = v[i, y0 : y0 + block_px, x0 : x0 + block_px]
                vals = sub[np.isfinite(sub)]
                if vals.size < max(16, min_valid * block_px * block_px):
                    continue
                hist = np.histogram(vals, bins)[0].astype("float64")
                if F._bimodal(hist, centers, d, low):
                    pool[i] += hist
                    count[i] += 1
    return pool, count, whole


@pytest.mark.parametrize("chunk", [40, 64, 150])
def test_block_histograms_match_the_loop_over_sub_tiles(chunk: int) -> None:
    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[0:150, 0:170]
    water = ((yy - 50) ** 2 + (xx - 60) ** 2 < 40**2) | (np.abs(yy - xx + 20) < 6)
    v = np.stack([np.where(water, -27.0, -16.0 + 4.0 * (t + 1) * (xx > 120)) for t in range(3)])
    v = (v + rng.normal(0.0, 1.5, v.shape)).astype("float32")
    v[0, 100:, :90] = np.nan  # sub-tiles under half valid
    v[1, :, 160:] = 50.0  # outside the bins: valid, but in no bin
    v[2] = -16.0  # one occupied bin: never bimodal
    bins = np.arange(-40.0, 10.0 + 1e-9, 0.05)
    for d, low in ((2.9, -25.0), (2.0, np.inf), (0.5, np.inf)):
        pool, count, whole = F.block_histograms(
            da.from_array(v, chunks=(1, chunk, chunk)), bins, 32, 0.5, d, low
        )
        ref = _loop_block_histograms(v, bins, 32, 0.5, d, low)
        np.testing.assert_array_equal(pool.compute(), ref[0])
        np.testing.assert_array_equal(count.compute(), ref[1])
        np.testing.assert_array_equal(whole.compute(), ref[2])
    assert ref[1][0] > 0 and ref[1][2] == 0


def test_bimodal_rows_decide_as_the_scalar_test() -> None:
    """Two-mode histograms over a range of separations (Ashman's D across the limits), single
    modes, sparse rows and empty rows: the vectorised decision equals the scalar one."""
    rng = np.random.default_rng(3)
    bins = np.arange(-40.0, 10.0 + 1e-9, 0.05)
    centers = 0.5 * (bins[:-1] + bins[1:])
    rows = []
    for sep in np.linspace(0.0, 12.0, 300):
        share = rng.uniform(0.05, 0.6)
        n = int(rng.integers(50, 4096))
        low = rng.normal(-27.0, rng.uniform(0.5, 2.5), int(share * n))
        high = rng.normal(-27.0 + sep, rng.uniform(0.5, 2.5), n - low.size)
        rows.append(np.histogram(np.concatenate([low, high]), bins)[0])
    rows += [np.zeros(len(centers)), np.eye(1, len(centers), 400)[0] * 90]
    # Lower sides of one bin (a stray count in the next bin moves Otsu's split past it) whose
    # bin lies a few bins either side of a limit on a bin centre: the rows set aside by their
    # lowest centre, and the one whose lower mean is the limit itself.
    limit = int(np.searchsorted(centers, -25.0))
    for start in range(limit - 3, limit + 4):
        row = np.zeros(len(centers))
        row[start], row[start + 1] = 300, 1
        row[start + 200 : start + 240] = 10
        rows.append(row)
    hist = np.array(rows, dtype="float64")
    for d, low_mean in ((2.9, -25.0), (2.0, np.inf), (4.0, -26.0), (2.9, centers[limit])):
        got = F._bimodal_rows(hist, centers, d, low_mean)
        expected = [F._bimodal(row, centers, d, low_mean) for row in hist]
        np.testing.assert_array_equal(got, expected)
        assert 0 < got.sum() < len(rows)


def test_small_components_are_those_scikit_image_removes() -> None:
    rng = np.random.default_rng(8)
    mask = ndi.binary_opening(rng.random((2, 90, 110)) > 0.45, np.ones((1, 2, 2)))
    for min_px in (1, 5, 20):
        kept = np.stack(
            [remove_small_objects(m, max_size=min_px - 1, connectivity=2) for m in mask]
        )
        np.testing.assert_array_equal(F.small_components_np(mask, min_px), mask & ~kept)
    empty = np.zeros((2, 9, 7), dtype=bool)
    empty[1, 2, 3] = True  # one single-pixel component in the second plane
    np.testing.assert_array_equal(F.small_components_np(empty, 2), empty)
    assert not F.small_components_np(empty.view(np.uint8), 1).any()


def test_otsu_rows_match_scikit_image() -> None:
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    centers = np.linspace(-39.975, 9.975, 1000)
    hist = np.zeros((40, 1000))
    for row in hist:
        lo, hi = sorted(rng.integers(0, 1000, 2))
        row[lo : hi + 1] = rng.integers(0, 50, hi - lo + 1) * (rng.random(hi - lo + 1) < 0.5)
        row[lo], row[hi] = 1, 1  # at least two occupied bins, zeros at either end
    got = F._otsu_rows(hist, centers)
    np.testing.assert_array_equal(got, [threshold_otsu(hist=(r, centers)) for r in hist])


@pytest.mark.parametrize("dates", [1, 2, 3, 4, 7, 30])
def test_nanmedian_first_axis_matches_numpy(dates: int) -> None:
    x = _field(5, shape=(dates, 2, 23, 19), nan=0.3)
    x[:, 0, :2, :2] = np.nan  # every date missing
    got = F.nanmedian_first_axis(da.from_array(x, chunks=(1, 1, 10, 10))).compute()
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanmedian(x, axis=0, keepdims=True)
    np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------- pixel size


def _grid(step: float, x0: float = 500_000.0, y0: float = 4_000_000.0, **attrs: object):
    """A 4 x 4 (y, x) grid of ``step`` coordinate units (``.rio`` ready to write a CRS)."""
    import rioxarray  # noqa: F401  (the .rio accessor)
    import xarray as xr

    n = 4
    return xr.DataArray(
        np.zeros((n, n), dtype="float32"),
        dims=("y", "x"),
        coords={"y": y0 - step * np.arange(n), "x": x0 + step * np.arange(n)},
        attrs=attrs,
    )


def test_pixel_size_in_metres_and_in_a_projected_crs_own_unit():
    assert F.pixel_size_m(_grid(10.0)) == 10.0  # no CRS: the coordinates are metres
    assert F.pixel_size_m(_grid(10.0, crs="epsg:32650")) == 10.0  # as stackstac sets it
    assert F.pixel_size_m(_grid(10.0, epsg=32650)) == 10.0
    feet = _grid(10.0).rio.write_crs("EPSG:2263")  # New York, US survey feet
    assert F.pixel_size_m(feet) == pytest.approx(3.048006, rel=1e-6)


def test_pixel_size_of_a_geographic_grid_is_its_ground_size():
    # 1e-4 degrees at 60 N: 11.1 m north, 5.6 m east; the side of a square of that area.
    grid = _grid(1e-4, x0=10.0, y0=60.0).rio.write_crs("EPSG:4326")
    north = 1e-4 * 111_412.0  # metres per degree of latitude at 60 N (WGS 84)
    east = 1e-4 * 55_800.0  # metres per degree of longitude at 60 N
    assert F.pixel_size_m(grid) == pytest.approx(np.sqrt(north * east), rel=2e-3)
    # Degrees without a CRS would read as 0.1 mm pixels: refused, naming the coordinate.
    with pytest.raises(BadInputError, match=r"x: .*degrees, not metres"):
        F.pixel_size_m(_grid(1e-4, x0=10.0, y0=60.0))


def test_pixel_size_of_a_real_copernicus_dem_tile_in_degrees(real_data):
    """REAL: a Copernicus GLO-30 tile near Rome (1 arcsec, EPSG:9707 = WGS 84 + EGM96 height)."""
    import rioxarray

    path = real_data / "copdem-tiles" / "Rome-30m-DEM.tif"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    dem = rioxarray.open_rasterio(path).isel(band=0, drop=True)
    lat = float(dem.y.mean())
    arcsec = 1 / 3600
    spherical = np.sqrt(arcsec * 111_320 * np.cos(np.radians(lat)) * arcsec * 110_574)
    assert F.pixel_size_m(dem) == pytest.approx(spherical, rel=5e-3)  # ~26.6 m at 42 N


def test_masked_histogram_counts_as_numpy_does() -> None:
    """OpenCV's counts equal np.histogram's of the finite masked values, values on and next to
    bin edges included; NaN, inf and values outside are not counted, nor a value on the last
    edge (numpy counts it in the last bin); uneven bins are refused."""
    from pipelines.errors import BadInputError

    rng = np.random.default_rng(0)
    bins = np.arange(-40.0, 10.0 + 1e-9, 0.05)
    steps = rng.integers(-820, 220, 200_000) * 0.05
    v = (steps + rng.choice([0.0, 1e-6, -1e-6, 0.025], steps.size)).astype("float32")
    v[:5] = [np.nan, np.inf, -np.inf, 10.0, -40.0]
    v = v.reshape(400, 500)
    mask = rng.random(v.shape) < 0.6
    mask[0, :5] = True
    want = np.histogram(v[mask & np.isfinite(v) & (v < 10.0)], bins=bins)[0]
    got = F.masked_histogram(v, mask, bins)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == (mask & (v >= -40.0) & (v < 10.0)).sum()
    with pytest.raises(BadInputError, match="bins"):
        F.masked_histogram(v, mask, np.array([0.0, 1.0, 5.0]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nanmean_is_numpys_to_the_bit_and_warns_through_no_shared_filter(dtype):
    import warnings

    rng = np.random.default_rng(3)
    x = rng.normal(0.2, 0.1, (3, 8, 4, 8, 2)).astype(dtype)
    x[rng.random(x.shape) < 0.4] = np.nan
    x[0, :, 0] = np.nan  # slices with no value at all
    for axis in (None, 0, (1, 3), -1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmean(x, axis=axis)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = F.nanmean(x, axis=axis)
        assert not caught  # nothing raised that a filter would have to silence
        assert np.asarray(got).dtype == np.asarray(expected).dtype
        np.testing.assert_array_equal(got, expected)
    assert np.isnan(F.nanmean(x, axis=(1, 3))[0, 0]).all()  # (3, 4, 2): [0, 0] had no value
