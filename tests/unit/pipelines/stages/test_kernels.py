"""The compiled kernels (pipelines.stages.kernels) against the numpy formulas they replace.

Small planes with a halo, NaN in every band, values on and beyond the clips, zero and negative
denominators, signed zeros, infinities, every cloud class code and SCL water; each float plane
must equal numpy's to the bit (NaN where numpy's is NaN), the flags those of haze_index's two
lookup tables.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from pipelines.classes import SCL_WATER
from pipelines.stages import filters
from pipelines.stages import haze as H
from pipelines.stages import kernels as K
from pipelines.stages import terrain as TR

f32 = np.float32
NY, NX, TOP, LEFT = 9, 13, 2, 3


def _bits_equal(a: np.ndarray, b: np.ndarray, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), (name, a, b)


def _plane(rng: np.random.Generator, specials: bool = True) -> np.ndarray:
    """(NY + 4, NX + 6) float32 reflectance-like plane with special values sprinkled in."""
    x = rng.uniform(-0.05, 0.5, (NY + 4, NX + 6)).astype(f32)
    if specials:
        pick = rng.random(x.shape)
        x[pick < 0.06] = np.nan
        x[(pick >= 0.06) & (pick < 0.09)] = f32(0.0)
        x[(pick >= 0.09) & (pick < 0.11)] = f32(-0.0)
        x[(pick >= 0.11) & (pick < 0.13)] = f32(0.04)  # the gate's lower end
        x[(pick >= 0.13) & (pick < 0.14)] = f32(np.inf)
        x[(pick >= 0.14) & (pick < 0.16)] = f32(-5e-7)  # b + b' + 1e-6 == 0 with its twin
    return x


@np.errstate(invalid="ignore", divide="ignore")
def _numpy_pixels(
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    cm: np.ndarray,
    swir: np.ndarray | None,
    band: str | None,
    b8: np.ndarray | None,
    scl: np.ndarray | None,
    windowed: np.ndarray,
) -> dict[str, np.ndarray]:
    """haze_index's per-pixel formulas in numpy, one operation per pass (the code the kernel
    replaced), on planes without halo."""
    rgb = np.minimum(np.minimum(b2, b3), b4)
    invalid = np.isnan(rgb)
    dark = windowed.copy()
    dark[invalid] = np.nan
    gate = np.clip((rgb - f32(0.04)) / f32(0.04), 0.0, 1.0)
    score = np.clip((b4 - b2) / ((b4 + b2) + f32(1e-6)) / f32(0.15), 0.0, 1.0)
    out: dict[str, np.ndarray] = {}
    if swir is not None:
        num = swir * f32(0.6) if band == "B11" else swir
        ratio = np.clip((num / (rgb + f32(1e-6)) - f32(1.2)) / f32(0.8), 0.0, 1.0)
        ratio[np.isnan(ratio)] = 0.0
        score = np.fmax(score, ratio)
        floor = swir * f32(H.SWIR_FLOOR[str(band)])
        floor[np.isnan(floor)] = 0.0
        out["haze_dark"] = np.clip((rgb - floor) / f32(0.3), 0.0, 1.0) * f32(255.0)
    surf = gate * score
    surf[invalid] = np.nan
    water = np.zeros(b2.shape, dtype=bool)
    if b8 is not None:
        water = (b3 - b8) / ((b3 + b8) + f32(1e-6)) > 0
    if scl is not None:
        water |= scl == SCL_WATER
    code = H._CLOUD_BITS[cm] | (invalid.astype(np.uint8) << 4) | (water.astype(np.uint8) << 5)
    flags = H._PIXEL_BITS[code]
    land, clear = (flags & H._LAND) > 0, (flags & H._CLEAR_LAND) > 0
    value = out.get("haze_dark", dark)
    w = f32(1.0) - surf
    if swir is None:
        value = value * w
    sums = [land.sum(), clear.sum(), value[land].sum(dtype=np.float64)]
    sums += [value[clear].sum(dtype=np.float64)]
    sums += [w[land].sum(dtype=np.float64), w[clear].sum(dtype=np.float64)] if swir is None else []
    out.update(
        dark=dark,
        surf=surf,
        flags=flags,
        obscured=(flags & H._OBSCURED) > 0,
        weight=np.where(clear, w, f32(0.0)),
        sums=np.array(sums + [0.0] * (6 - len(sums))),
    )
    return out


def _call_kernel(
    planes: dict[str, np.ndarray], cm: np.ndarray, band: str | None, b8: bool, scl: bool
) -> dict[str, np.ndarray]:
    shape = (NY, NX)
    out = {k: np.full(shape, f32(7.0)) for k in ("dark", "surf", "haze_dark", "weight")}
    out["flags"] = np.full(shape, 99, dtype=np.uint8)
    out["obscured"] = np.zeros(shape, dtype=bool)
    out["sums"] = np.full(K.SUMS, -1.0)
    absent = np.zeros((1, 1), dtype=f32)
    K.haze_pixels(
        planes["B02"],
        planes["B03"],
        planes["B04"],
        cm,
        planes[band] if band else absent,
        planes["B08"] if b8 else absent,
        planes["SCL"] if scl else absent,
        planes["windowed"],
        TOP,
        LEFT,
        {None: 0, "B12": 1, "B11": 2}[band],
        f32(H.SWIR_FLOOR[band] if band else 0.0),
        b8,
        scl,
        f32(SCL_WATER),
        H._CODES,
        H._BITS,
        out["dark"],
        out["surf"],
        out["haze_dark"] if band else absent,
        out["weight"],
        out["flags"],
        out["obscured"],
        out["sums"],
    )
    return out


@pytest.mark.parametrize("band", [None, "B12", "B11"])
@pytest.mark.parametrize("b8, scl", [(False, False), (True, False), (False, True), (True, True)])
def test_haze_pixels_equal_the_numpy_formulas(band: str | None, b8: bool, scl: bool) -> None:
    rng = np.random.default_rng(7)
    planes = {b: _plane(rng) for b in ("B02", "B03", "B04", "B08", "B11", "B12")}
    planes["B04"][3, 4] = -planes["B02"][3, 4]  # b4 + b2 == 0: 0 / 1e-6
    planes["SCL"] = rng.choice([4.0, float(SCL_WATER), np.nan], size=planes["B02"].shape)
    planes["SCL"] = planes["SCL"].astype(f32)
    planes["windowed"] = rng.uniform(0, 255, planes["B02"].shape).astype(f32)
    cm = rng.integers(0, 8, planes["B02"].shape).astype(np.uint8)
    cm[0, :] = 255
    got = _call_kernel(planes, cm, band, b8, scl)
    inner = {k: v[TOP : TOP + NY, LEFT : LEFT + NX] for k, v in planes.items()}
    ref = _numpy_pixels(
        inner["B02"],
        inner["B03"],
        inner["B04"],
        cm[TOP : TOP + NY, LEFT : LEFT + NX],
        inner[band] if band else None,
        band,
        inner["B08"] if b8 else None,
        inner["SCL"] if scl else None,
        inner["windowed"],
    )
    for name in ("dark", "surf", "weight", "flags", "obscured") + (("haze_dark",) if band else ()):
        _bits_equal(got[name], ref[name], name)
    np.testing.assert_array_equal(got["sums"][:2], ref["sums"][:2])
    np.testing.assert_allclose(got["sums"][2:], ref["sums"][2:], rtol=1e-12)
    # The scene is not trivial: NaN, land and clear land, water and obscured pixels are there.
    assert np.isnan(ref["surf"]).any() and 0 < ref["sums"][1] < ref["sums"][0]
    assert ref["obscured"].any() and not ref["obscured"].all()
    if b8 or scl:
        assert ((ref["flags"] & H._VALID) > 0).sum() > ref["sums"][0] + ref["obscured"].sum() / 2


def test_flags_equal_the_lookup_tables_for_every_code() -> None:
    """Every cloud class code 0..255, invalid or not, water or not."""
    codes = np.arange(256, dtype=np.uint8)
    for invalid in (False, True):
        for water in (False, True):
            n = codes.size
            one = np.full((1, n), f32(0.2))
            b3 = one.copy()
            b8 = np.full((1, n), f32(0.1) if water else f32(0.5))  # NDWI > 0: water
            b2 = np.full((1, n), np.nan if invalid else f32(0.2), dtype=f32)
            out = {k: np.empty((1, n), dtype=f32) for k in ("dark", "surf", "weight")}
            flags, obscured = np.empty((1, n), np.uint8), np.empty((1, n), bool)
            K.haze_pixels(
                b2,
                b3,
                one,
                codes[None],
                np.zeros((1, 1), f32),
                b8,
                np.zeros((1, 1), f32),
                one,
                0,
                0,
                0,
                f32(0.0),
                True,
                False,
                f32(SCL_WATER),
                H._CODES,
                H._BITS,
                out["dark"],
                out["surf"],
                np.zeros((1, 1), f32),
                out["weight"],
                flags,
                obscured,
                np.zeros(K.SUMS),
            )
            code = H._CLOUD_BITS[codes] | (invalid << 4) | (water << 5)
            np.testing.assert_array_equal(flags[0], H._PIXEL_BITS[code], err_msg=str(code))
            np.testing.assert_array_equal(obscured[0], (flags[0] & H._OBSCURED) > 0)


def test_dark8_equals_the_numpy_formula() -> None:
    rng = np.random.default_rng(3)
    b2, b3, b4 = (_plane(rng) for _ in range(3))
    b4[0, :4] = [0.3, 0.31, -0.0, 1e-30]
    got = K.haze_dark8(b2, b3, b4, np.empty_like(b2))
    rgb = np.minimum(np.minimum(b2, b3), b4)
    ref = np.clip(rgb / f32(0.3), 0.0, 1.0) * f32(255.0)
    ref[np.isnan(rgb)] = np.inf
    _bits_equal(got, ref, "dark8")
    assert np.isinf(got).any()


def test_weight_equals_the_numpy_formula() -> None:
    rng = np.random.default_rng(5)
    surf = _plane(rng)[None].repeat(2, axis=0)
    flags = rng.integers(0, 16, surf.shape).astype(np.uint8)
    bit = np.array([H._LAND, H._CLEAR_LAND], dtype=np.uint8)
    out = np.full(surf.shape, f32(7.0))
    K.haze_weight(flags, surf, bit, out)
    ref = np.where((flags & bit[:, None, None]) > 0, f32(1.0) - surf, f32(0.0))
    _bits_equal(out, ref, "weight")


def test_kernels_compile_in_memory_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch):
    """Where numba finds no writable cache directory (a read-only install, no writable home,
    no NUMBA_CACHE_DIR) ``njit(cache=True)`` raises: the kernels are then compiled in memory."""
    import numba

    real = numba.njit

    def njit(*args: object, cache: bool = False, **kwargs: object) -> object:
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    monkeypatch.setattr(K, "_COMPILED", {})
    b = np.array([[0.1, np.nan]], dtype=f32)
    got = K.haze_dark8(b, b, b, np.empty_like(b))
    np.testing.assert_array_equal(got, [[f32(0.1) / f32(0.3) * f32(255.0), np.inf]])
    assert type(K._COMPILED["haze_dark8"]._cache).__name__ == "NullCache"  # not cached


@pytest.mark.parametrize("bands", [("B02", "B03", "B04", "B12"), ("B02", "B03", "B04", "B11")])
def test_stage_score_equals_the_public_numpy_score(bands: tuple[str, ...]) -> None:
    """haze_index's bright_surface (compiled) equals haze.bright_surface_score (numpy) to the
    bit wherever the visible bands are valid."""
    import xarray as xr

    rng = np.random.default_rng(11)
    data = np.stack([_plane(rng) for _ in bands])[None]  # (1, band, y, x)
    s2 = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={"band": list(bands)})
    cm = xr.DataArray(np.ones((1, *data.shape[2:]), dtype=np.uint8), dims=("time", "y", "x"))
    got = H.haze_index(s2, cm, window=3)["bright_surface"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = H.bright_surface_score(s2, list(bands)).values
    valid = ~np.isnan(data[:, :3]).any(axis=1)
    assert valid.sum() > 50
    _bits_equal(got[valid], ref[valid], "bright_surface")


def test_warm_loads_every_kernel() -> None:
    """kernels.warm leaves each kernel with one compiled version (the stages' argument types),
    so the first chunk of a warmed worker compiles nothing."""
    import xarray as xr

    bands = ("B02", "B03", "B04", "B08", "B12", "SCL")
    data = np.full((2, len(bands), 8, 8), f32(0.1))
    s2 = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={"band": list(bands)})
    cloud = np.full((2, 8, 8), 2, dtype=np.uint8)  # CloudClass.CLOUD: indexed over all land
    cm = xr.DataArray(cloud, dims=("time", "y", "x"))
    ds = H.haze_index(s2, cm, window=3).compute()  # every kernel runs
    assert ds["all_pixels"].values.all()
    assert K.warm() >= 0.0
    for name in ("haze_dark8", "haze_pixels_0", "haze_pixels_1", "haze_pixels_2", "haze_weight"):
        assert len(K._COMPILED[name].signatures) == 1, name
    lee = filters.lee_filter(da.from_array(np.full((2, 8, 8), f32(-12.0))), size=3)
    assert lee.compute().shape == (2, 8, 8)  # the Lee kernels with the stage's arguments
    lee = filters.lee_filter(da.from_array(np.full((2, 8, 8), f32(np.nan))), size=3)
    assert np.isnan(lee.compute()).all()  # the NaN kernels too
    for name in ("lee_square", "lee_weights", "lee_means", "lee_recover"):
        assert len(K._COMPILED[name].signatures) == 1, name
    hist = filters._square_hist_block(
        np.full((1, 8, 8), f32(-22.0)),
        bins=np.arange(-40.0, 10.0 + 1e-9, 0.05),
        block_px=4,
        need=8,
        min_ashman_d=2.9,
        max_low_mean=-25.0,
    )
    assert hist[0, 0, 0, -1000:].sum() == 64  # the sub-tile counts with the stage's arguments
    from pipelines.stages import flood as FL

    flat = np.zeros((1, 8, 8), f32)
    assert FL.terrain_ok_np(flat, flat, pixel_m=10.0, max_slope_deg=5.0, max_hand_m=15.0).all()
    for name in ("square_counts", "steep"):
        assert len(K._COMPILED[name].signatures) == 1, name
    from affine import Affine

    from pipelines.stages.terrain import height_above_drainage_np

    valley = np.abs(np.arange(8, dtype=f32) - 4)[None, :] + np.arange(8, dtype=f32)[:, None]
    assert height_above_drainage_np(valley, Affine(10, 0, 0, 0, -10, 80), latlon=False).shape
    assert len(K._COMPILED["hand_along_paths"].signatures) == 1  # the stages' argument types


def _numpy_lee_recover(lin: np.ndarray, mean: np.ndarray, var: np.ndarray, enl: float):
    """The Lee filter's recovery in numpy, one operation per pass (the code the kernel
    replaced): returns the recovered power and the local variance."""
    lin, var = lin.copy(), var.copy()
    tmp = np.multiply(mean, mean)
    var -= tmp
    np.clip(var, f32(0.0), f32(np.inf), out=var)
    cu2 = f32(1.0 / enl)
    tmp *= cu2
    np.subtract(var, tmp, out=tmp)
    tmp /= 1.0 + cu2
    np.clip(tmp, f32(0.0), f32(np.inf), out=tmp)
    with np.errstate(invalid="ignore", divide="ignore"):
        tmp /= var
    np.copyto(tmp, f32(0.0), where=~np.greater(var, 0.0))
    with np.errstate(invalid="ignore"):
        lin -= mean
        lin *= tmp
        lin += mean
    np.clip(lin, f32(1e-10), f32(np.inf), out=lin)
    return lin, var


@pytest.mark.parametrize("enl", [1.0, 4.0, 4.4])
def test_lee_kernels_equal_the_numpy_formula(enl: float) -> None:
    """Linear power with NaN, a flat patch (zero variance), a NaN patch wider than the window
    (empty windows: NaN mean and mean of squares), signed zeros, values below the 1e-10 floor
    and mean squares a rounding below mean^2 (negative variance before the clip)."""
    rng = np.random.default_rng(17)
    db = rng.uniform(-30.0, 5.0, (11, 14)).astype(f32)
    db[rng.random(db.shape) < 0.08] = np.nan
    db[1:5, 1:5] = f32(-12.0)  # flat: zero variance
    db[6:11, 8:14] = np.nan  # wider than the 3 x 3 window
    db[6:11, 0:5] = rng.uniform(-140.0, -110.0, (5, 5))  # below the 1e-10 floor (-100 dB)
    lin = np.exp(db * f32(np.log(10.0) / 10.0))
    lin[0, :3] = [f32(0.0), f32(-0.0), f32(1e-12)]
    sq = np.empty_like(lin)
    assert K.lee_square(lin, sq) is True
    _bits_equal(sq, lin * lin, "square")
    clean = np.array([[f32(0.5), f32(-0.0), f32(np.inf)]])
    assert K.lee_square(clean, np.empty_like(clean)) is False
    # Box means over 3 x 3 with NaN left out; empty windows NaN, as in the stage.
    nan = np.isnan(lin)
    pad = np.pad(np.where(nan, f32(0.0), lin), 1)
    pad2 = np.pad(np.where(nan, f32(0.0), sq), 1)
    padw = np.pad((~nan).astype(f32), 1)
    ny, nx = lin.shape
    win = [(dy, dx) for dy in range(3) for dx in range(3)]
    den = sum(padw[dy : dy + ny, dx : dx + nx] for dy, dx in win)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sum(pad[dy : dy + ny, dx : dx + nx] for dy, dx in win) / den).astype(f32)
        var = (sum(pad2[dy : dy + ny, dx : dx + nx] for dy, dx in win) / den).astype(f32)
    # The compiled weights and means equal the numpy ones.
    w, src, sq0 = np.empty_like(lin), np.empty_like(lin), sq.copy()
    K.lee_weights(lin, sq0, w, src)
    _bits_equal(w, (~nan).astype(f32), "weights")
    _bits_equal(src, np.where(nan, f32(0.0), lin), "source")
    _bits_equal(sq0, np.where(nan, f32(0.0), sq), "squares")
    got_mean = (sum(np.pad(src, 1)[dy : dy + ny, dx : dx + nx] for dy, dx in win) / f32(9)).astype(
        f32
    )
    got_den = (den / f32(9)).astype(f32)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_mean = np.divide(got_mean, got_den)
    ref_mean[got_den <= 1e-12] = np.nan
    K.lee_means(got_mean, got_mean.copy(), got_den)
    np.testing.assert_array_equal(np.isnan(got_mean), np.isnan(ref_mean), "means")
    _bits_equal(got_mean[~np.isnan(ref_mean)], ref_mean[~np.isnan(ref_mean)], "means")
    var[2, 2] = np.nextafter(mean[2, 2] * mean[2, 2], f32(0.0))  # a rounding below mean^2
    assert np.isnan(mean).any() and (var == mean * mean).any()
    ref_lin, ref_var = _numpy_lee_recover(lin, mean, var, enl)
    got_lin, got_var = lin.copy(), var.copy()
    K.lee_recover(got_lin, mean, got_var, f32(1.0 / enl))
    # NaN's sign bit is left out: numpy's own loops give x + NaN or NaN + x by position.
    for name, got, ref in (("variance", got_var, ref_var), ("recovered", got_lin, ref_lin)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), name)
        _bits_equal(got[~np.isnan(got)], ref[~np.isnan(ref)], name)
    assert (got_lin == f32(1e-10)).any() and np.isnan(got_lin).any()


@pytest.mark.parametrize("block_px", [4, 16, 64])
@pytest.mark.parametrize(
    "bins", [np.arange(-40.0, 10.0 + 1e-9, 0.05), np.linspace(0.0, 255.0, 1021)]
)
def test_square_counts_equal_the_numpy_counts(bins: np.ndarray, block_px: int) -> None:
    """The compiled sub-tile counts (the grid path of filters._square_bin_counts) equal the
    numpy path's on every edge, a float32 step either side of it, NaN, infinities, values
    outside the edges and squares cut by the plane's edges."""
    rng = np.random.default_rng(5)
    edges = bins.astype(f32)
    v = np.concatenate(
        [
            edges,
            np.nextafter(edges, f32(-np.inf)),
            np.nextafter(edges, f32(np.inf)),
            rng.uniform(bins[0] - 5, bins[-1] + 5, 20_000).astype(f32),
            np.array([np.nan, np.inf, -np.inf, 1e30, -1e30], dtype=f32),
        ]
    )
    v = v[rng.permutation(v.size)][: 120 * (v.size // 120)].reshape(120, -1)
    n_x = -(-v.shape[1] // block_px)
    square = (np.arange(v.shape[0]) // block_px)[:, None] * n_x + np.arange(v.shape[1]) // block_px
    n = int(square.max()) + 1
    counts, nonfinite = filters._square_bin_counts(v, square, n, bins)
    got, got_nonfinite = filters._square_bin_counts(v, square, n, bins, grid=(block_px, n_x))
    assert got.sum() > 0.75 * v.size  # most values inside the edges
    np.testing.assert_array_equal(got, counts)
    np.testing.assert_array_equal(got_nonfinite, nonfinite)


def _numpy_flood_code(
    vv: np.ndarray,
    vh: np.ndarray | None,
    sure: np.ndarray,
    thr: np.ndarray,
    ref_vv: np.ndarray,
    ref_vh: np.ndarray | None,
    state: np.ndarray,
    pol: str,
    change_db: float,
    double_bounce: bool,
    bounce_db: float,
    ratio_db: float,
) -> tuple[np.ndarray, np.ndarray]:
    """flood_change's classes in numpy, one operation per pass (the code the kernel replaced):
    the classes and the flooded mask."""
    primary, ref_primary = (vh, ref_vh) if pol == "VH" else (vv, ref_vv)
    assert primary is not None and ref_primary is not None
    valid = np.isnan(vv)
    if pol == "VH":
        valid |= np.isnan(primary)
    valid = ~valid & ((state & 1) != 0)
    with np.errstate(invalid="ignore"):
        change = primary - ref_primary
        water = primary < thr.reshape(-1, 1, 1)
        decrease = (change <= -change_db) & (primary < (-20.0 if pol == "VH" else -15.0))
        water |= decrease
        if pol == "VH":  # VV inside its water range, unless the pixel is sure water
            water &= (vv < -15.0) | sure
    keep = ((state & 4) != 0) & valid
    water &= keep
    code = valid.astype(np.uint8)
    code[valid & ((state & 2) != 0)] = 3
    flooded = water
    if double_bounce and vh is not None and ref_vh is not None:
        with np.errstate(invalid="ignore"):
            diff_vv = vv - ref_vv
            diff_vh = change if pol == "VH" else vh - ref_vh
            vegetation = (diff_vv >= bounce_db) & (diff_vv - diff_vh >= ratio_db)
        vegetation &= keep & ~water
        code[vegetation] = 4
        flooded = water | vegetation
    code[water] = 2
    return code, flooded


@pytest.mark.parametrize("pol", ["VH", "VV"])
@pytest.mark.parametrize("bounce", [True, False])
def test_flood_pixels_equal_the_numpy_formula(pol: str, bounce: bool) -> None:
    """Every class and the flooded mask from the compiled pass equal numpy's, with NaN in each
    plane, values on the threshold and on each limit, and every reference state."""
    from pipelines.stages import flood as FL

    rng = np.random.default_rng(21)
    t, ny, nx = 3, 23, 31
    vv = rng.normal(-15, 6, (t, ny, nx)).astype(f32)
    vh = rng.normal(-22, 6, (t, ny, nx)).astype(f32)
    ref_vv = rng.normal(-15, 6, (ny, nx)).astype(f32)
    ref_vh = rng.normal(-22, 6, (ny, nx)).astype(f32)
    for a in (vv, vh, ref_vv, ref_vh):
        a[rng.random(a.shape) < 0.05] = np.nan
    thr = rng.uniform(-26, -20, t).astype(f32)
    vh.flat[rng.integers(0, vh.size, 40)] = f32(-20.0)
    vv.flat[rng.integers(0, vv.size, 40)] = f32(-15.0)
    vh[0].flat[rng.integers(0, ny * nx, 40)] = thr[0]
    ref_vh.flat[rng.integers(0, ref_vh.size, 20)] = vh[1].flat[rng.integers(0, ny * nx, 20)] + 3
    state = rng.integers(0, 8, (ny, nx)).astype(np.uint8)
    sure = rng.random((t, ny, nx)) < 0.3  # where VH alone decides: no VV check
    with_vh = pol == "VH"
    params = FL._FloodParams(pol, 3.0, bounce and with_vh, 3.0, 3.0)
    h, rh = (vh, ref_vh) if with_vh else (None, None)
    want, flooded = _numpy_flood_code(
        vv, h, sure, thr, ref_vv, rh, state, pol, 3.0, bounce and with_vh, 3.0, 3.0
    )
    assert len(np.unique(want)) == (5 if bounce and with_vh else 4)
    got = FL._flood_code_np(vv, h, sure if with_vh else None, thr, ref_vv, rh, state, params, 0)
    np.testing.assert_array_equal(got, want)
    small = filters.small_components_np(flooded, 4)
    want[small] = 1
    got = FL._flood_code_np(vv, h, sure if with_vh else None, thr, ref_vv, rh, state, params, 4)
    np.testing.assert_array_equal(got, want)


def _numpy_steep(z: np.ndarray, limit: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """terrain.steep_np's float32 test in numpy, one operation per pass (the code the kernel
    replaced): steep, and the pixels to decide again in float64."""
    with np.errstate(invalid="ignore", over="ignore"):
        dy = TR.double_diff(z, 0, np.empty_like(z))
        dx = TR.double_diff(z, 1, np.empty_like(z))
        inf = np.isinf(dy) | np.isinf(dx)
        sq = dy * dy + dx * dx
        steep = sq > limit
        near = (np.abs(sq - limit) <= np.float32(TR.SLOPE_MARGIN) * limit) | inf
    return steep, near


@pytest.mark.parametrize("shape", [(2, 2), (2, 9), (7, 2), (31, 40)])
def test_steep_equals_the_numpy_formula(shape: tuple[int, int]) -> None:
    """The compiled slope test gives numpy's float32 decision and the same pixels to decide in
    float64: NaN gaps, infinite heights, gradients on the limit, planes 2 px thin."""
    rng = np.random.default_rng(shape[1])
    z = np.cumsum(rng.normal(0.0, 3.0, shape), axis=1).astype(f32)
    z[rng.random(shape) < 0.05] = np.nan
    z[rng.random(shape) < 0.03] = np.inf
    z[:2] = np.arange(shape[1], dtype=f32)  # row 0: no rise along y, twice the x step is 2
    limit = f32(4.0)  # (2 px tan(limit))^2 = 4: row 0's squared gradient lies on the limit
    steep = np.empty(shape, dtype=bool)
    near = K.steep(z, limit, f32(TR.SLOPE_MARGIN) * limit, steep)
    want, want_near = _numpy_steep(z, limit)
    np.testing.assert_array_equal(steep, want)
    np.testing.assert_array_equal(near, np.flatnonzero(want_near))
    assert near.size > 0
