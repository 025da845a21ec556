"""water_mask and flood_change stages on synthetic speckled SAR (gamma, 4 looks)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from pipelines.classes import FloodClass
from pipelines.errors import BadInputError
from pipelines.stages import get_stage
from pipelines.stages.flood import flood_change
from pipelines.stages.water import SURE_WATER_REACH_PX, water_mask
from pipelines.testing.scenes import band_cube

N = 192
YY, XX = np.mgrid[0:N, 0:N]
LAKE = (YY - 45) ** 2 + (XX - 45) ** 2 < 25**2
RIVER = np.abs(XX - (120 + 15 * np.sin(YY / 25.0))) < 5
PERMANENT = LAKE | RIVER
FLOOD = (np.abs(XX - (120 + 15 * np.sin(YY / 25.0))) < 28) & (YY > 80) & ~PERMANENT
HILL = (YY > 150) & (XX < 60)  # steep slope with a dark (radar-shadow-like) patch after the event
SPECK = (YY - 30) ** 2 + (XX - 170) ** 2 < 3**2  # 29 px (0.29 ha): below the 0.5 ha unit


def _sar(water: np.ndarray, dates: int, seed: int) -> np.ndarray:
    """(time, band=[VV, VH], y, x) dB: land -8/-15 dB, water -21/-28 dB, 4-look gamma speckle."""
    rng = np.random.default_rng(seed)
    out = np.empty((dates, 2, N, N), dtype="float32")
    for t in range(dates):
        for b, (land, wet) in enumerate(((-8.0, -21.0), (-15.0, -28.0))):
            mean = 10 ** (np.where(water, wet, land) / 10)
            out[t, b] = 10 * np.log10(mean * rng.gamma(4.0, 0.25, size=(N, N)))
    return out


#: Both flooded classes: open water and flooded vegetation.
FLOODED = (FloodClass.FLOODED, FloodClass.FLOODED_VEGETATION)
#: Sentinel-1 polarisations of the synthetic scenes.
S1_BANDS = ("VV", "VH")


def _dem(chunk: int) -> xr.DataArray:
    dem = np.full((N, N), 50.0, dtype="float32") + 0.001 * XX  # flat plain
    dem[HILL] += 2.0 * (YY[HILL] - 150)  # 20 m per 10 m pixel: a steep, high hillside
    return xr.DataArray(da.from_array(dem, chunks=chunk), dims=("y", "x"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def event():
    pre = _sar(PERMANENT, 3, seed=1)
    post = _sar(PERMANENT | FLOOD | HILL | SPECK, 2, seed=2)
    return pre, post


def test_registered():
    assert get_stage("water_mask").inputs == ("s1", "dem")
    assert get_stage("water_mask").optional == ("dem",)
    assert get_stage("flood_change").inputs == ("s1_pre", "s1_post", "dem", "hand")
    assert get_stage("flood_change").optional == ("s1_pre", "hand")


def test_water_mask_iou_and_chunking(event):
    _, post = event
    out = water_mask(band_cube(post, S1_BANDS, 96))
    assert isinstance(out.data, da.Array) and out.dims == ("time", "y", "x")
    res = out.values
    truth = PERMANENT | FLOOD | HILL | SPECK
    for t in range(2):
        assert _iou(res[t] == 2, truth) >= 0.9  # measured 0.99
    np.testing.assert_array_equal(res, water_mask(band_cube(post, S1_BANDS, N)).values)
    vv_only = water_mask(band_cube(post[:, :1], ("VV",), 64)).values
    assert _iou(vv_only[0] == 2, truth) >= 0.9


def test_water_mask_with_a_dem_leaves_steep_terrain_dry(event):
    """A dark patch on a steep hillside (radar shadow, wet snow) reads as water from the SAR
    alone; with the DEM it is land, the water on the plain is kept, and the result does not
    depend on the chunks."""
    _, post = event
    truth = PERMANENT | FLOOD | SPECK
    res = water_mask(band_cube(post, S1_BANDS, 96), _dem(96)).values
    for t in range(2):
        assert not (res[t][HILL] == 2).any()
        assert (res[t][HILL] == 1).all()  # land, not nodata
        assert _iou(res[t] == 2, truth) >= 0.9
    np.testing.assert_array_equal(res, water_mask(band_cube(post, S1_BANDS, N), _dem(N)).values)
    # A flat DEM changes nothing.
    flat = xr.full_like(_dem(96), 50.0)
    np.testing.assert_array_equal(
        water_mask(band_cube(post, S1_BANDS, 96), flat).values,
        water_mask(band_cube(post, S1_BANDS, 96)).values,
    )
    with pytest.raises(BadInputError, match="dem"):
        water_mask(band_cube(post, S1_BANDS, 96), _dem(96)[:-1])
    with pytest.raises(BadInputError, match="max_slope_deg"):
        water_mask(band_cube(post, S1_BANDS, 96), _dem(96), max_slope_deg=0.0)


def test_water_mask_fallback_without_water():
    land = _sar(np.zeros((N, N), bool), 1, seed=3)
    res = water_mask(band_cube(land, S1_BANDS, 96)).values
    assert (res == 2).mean() < 0.01  # the fixed -18 dB threshold finds (almost) nothing


def test_water_mask_nodata(event):
    _, post = event
    post = post.copy()
    post[0, :, :10, :10] = np.nan
    res = water_mask(band_cube(post, S1_BANDS, 96)).values
    assert (res[0, :10, :10] == 0).all() and (res[0, 20:, 20:] > 0).all()


def test_flood_change(event):
    pre, post = event
    out = flood_change(band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), _dem(96))
    assert isinstance(out.data, da.Array) and out.dims == ("time", "y", "x")
    res = out.values
    assert res.dtype == np.uint8 and res.shape == (2, N, N)
    for t in range(2):
        flooded = res[t] == FloodClass.FLOODED
        assert _iou(flooded, FLOOD) >= 0.8  # measured 0.99
        assert _iou(res[t] == FloodClass.PERMANENT_WATER, PERMANENT) >= 0.8
        assert flooded[HILL].mean() < 0.05  # slope and height above drainage exclude the hill
        assert not flooded[SPECK].any()  # below the minimum mapping unit
    # Without terrain masks the hill would be flooded: the masks do the work.
    flat = xr.full_like(_dem(96), 50.0)
    res_flat = flood_change(
        band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), flat
    ).values
    assert (res_flat[0][HILL] == FloodClass.FLOODED).mean() > 0.9
    # Chunking does not matter.
    np.testing.assert_array_equal(
        res, flood_change(band_cube(pre, S1_BANDS, N), band_cube(post, S1_BANDS, N), _dem(N)).values
    )


def test_flood_change_permanent_water_input(event):
    pre, post = event
    extra = np.zeros((N, N), dtype="uint8")
    extra[100:140, 100:150] = 1
    pw = xr.DataArray(da.from_array(extra, chunks=96), dims=("y", "x"))
    res = flood_change(
        band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), _dem(96), permanent_water=pw
    ).values
    assert (res[0][extra == 1] == FloodClass.PERMANENT_WATER).all()


def test_flood_change_hand_input_decides_the_height_above_drainage(event):
    pre, post = event
    args = (band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), _dem(96))
    base = flood_change(*args).values
    # The west of the flood stands 30 m above its drainage, the rest (the hill too) at it.
    height = np.where(XX < 120, 30.0, 0.0).astype("float32")
    hand = xr.DataArray(da.from_array(height, chunks=96), dims=("y", "x"))
    res = flood_change(*args, hand=hand).values
    assert (base[0][FLOOD & (XX < 120)] == FloodClass.FLOODED).mean() > 0.9
    assert not np.isin(res[:, FLOOD & (XX < 120)], FLOODED).any()
    # Where the product says low, nothing changes; the hill's slope still excludes it (the
    # window minimum of the flat DEM's height decides as the product does there).
    east = XX >= 120
    np.testing.assert_array_equal(res[:, east & ~FLOOD], base[:, east & ~FLOOD])
    assert _iou(np.isin(res[0], FLOODED) & east, FLOOD & east) >= 0.9
    assert not np.isin(res[:, HILL], FLOODED).any()
    # NaN in the product excludes nothing.
    gap = (YY >= 100) & (YY < 140)
    gaps = hand.where(xr.DataArray(~gap, dims=("y", "x")))
    with_gaps = flood_change(*args, hand=gaps).values
    np.testing.assert_array_equal(with_gaps[:, gap & (XX < 110)], base[:, gap & (XX < 110)])
    with pytest.raises(BadInputError, match="hand"):
        flood_change(*args, hand=hand.isel(x=slice(0, 50)))


def test_bad_inputs(event):
    pre, post = event
    with pytest.raises(BadInputError, match=r"VV.*bands present"):
        water_mask(band_cube(post[:, 1:], ("VH",), 96))
    with pytest.raises(BadInputError, match="dims"):
        water_mask(band_cube(post, S1_BANDS, 96).isel(time=0))
    with pytest.raises(BadInputError, match="dem"):
        flood_change(
            band_cube(pre, S1_BANDS, 96),
            band_cube(post, S1_BANDS, 96),
            _dem(96).isel(x=slice(0, 50)),
        )
    with pytest.raises(BadInputError, match="dims"):
        flood_change(
            band_cube(pre, S1_BANDS, 96),
            band_cube(post, S1_BANDS, 96),
            _dem(96).expand_dims(time=[0]),
        )


def _sar_db(vv: np.ndarray, vh: np.ndarray, dates: int, seed: int) -> np.ndarray:
    """(time, band=[VV, VH], y, x) dB of per-pixel noise-free dB maps with 4-look speckle."""
    rng = np.random.default_rng(seed)
    out = np.empty((dates, 2, N, N), dtype="float32")
    for t in range(dates):
        for b, db in enumerate((vv, vh)):
            lin = 10 ** (np.asarray(db, dtype="float64") / 10) * rng.gamma(4.0, 0.25, size=(N, N))
            out[t, b] = 10 * np.log10(lin)
    return out


def test_flooded_forest_by_double_bounce_not_growing_crops():
    forest = (YY > 100) & (XX < 60)  # flooded forest: VV +4 dB, VH -1 dB (double bounce)
    crops = (YY < 60) & (XX < 60)  # growing crops: VV +3 dB, VH +4 dB (volume scattering)
    vv_pre = np.where(PERMANENT, -21.0, np.where(forest, -8.0, -12.0))
    vh_pre = np.where(PERMANENT, -28.0, np.where(forest, -14.0, -19.0))
    vv_post = np.where(forest, -4.0, np.where(crops, -9.0, vv_pre))
    vh_post = np.where(forest, -15.0, np.where(crops, -15.0, vh_pre))
    pre = _sar_db(vv_pre, vh_pre, 3, seed=5)
    post = _sar_db(vv_post, vh_post, 1, seed=6)
    res = flood_change(
        band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), _dem(96)
    ).values[0]
    assert (res[forest & ~HILL] == FloodClass.FLOODED_VEGETATION).mean() > 0.9
    assert np.isin(res[crops], FLOODED).mean() < 0.02
    # Off, or without VH, the forest stays dry: only the VV/VH ratio tells it from growth.
    off = flood_change(
        band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), _dem(96), double_bounce=False
    ).values[0]
    assert np.isin(off[forest], FLOODED).mean() < 0.05
    vv_only = flood_change(
        band_cube(pre[:, :1], ("VV",), 96), band_cube(post[:, :1], ("VV",), 96), _dem(96)
    ).values[0]
    assert np.isin(vv_only[forest], FLOODED).mean() < 0.05


def test_seasonal_water_is_not_permanent():
    paddy = (YY > 20) & (YY < 70) & (XX > 150) & (XX < 190)  # irrigated, drained by the event
    vv_land = np.where(PERMANENT, -21.0, -11.0)
    vh_land = np.where(PERMANENT, -28.0, -18.0)
    wet_vv = np.where(paddy, -21.0, vv_land)
    wet_vh = np.where(paddy, -28.0, vh_land)
    pre = np.concatenate(
        [_sar_db(wet_vv, wet_vh, 2, seed=7), _sar_db(vv_land, vh_land, 1, seed=8)]
    )  # the median says water; the latest pre date says land
    post = _sar_db(wet_vv, wet_vh, 1, seed=9)  # the flood puts water back on the paddy
    res = flood_change(
        band_cube(pre, S1_BANDS, 96), band_cube(post, S1_BANDS, 96), _dem(96)
    ).values[0]
    assert (res[paddy] == FloodClass.FLOODED).mean() > 0.9
    assert (res[LAKE] == FloodClass.PERMANENT_WATER).mean() > 0.95
    # The narrow river keeps its edges in the reference (a median, not a Lee filter).
    assert (res[RIVER] == FloodClass.PERMANENT_WATER).mean() > 0.9


def test_water_threshold_ignores_bright_towns():
    # Towns at 0 dB VV: their bimodal split from the fields must not set the water level.
    town = ((YY > 100) & (XX > 140)) | ((YY > 140) & (XX < 90))
    soil = (YY < 100) & (XX > 100) & ~PERMANENT  # bare soil at -14 dB VV, -23 dB VH
    vv = np.where(PERMANENT, -22.0, np.where(town, 0.0, np.where(soil, -14.0, -10.0)))
    vh = np.where(PERMANENT, -29.0, np.where(town, -9.0, np.where(soil, -23.0, -16.0)))
    res = water_mask(band_cube(_sar_db(vv, vh, 1, seed=10), S1_BANDS, 96)).values[0]
    assert _iou(res == 2, PERMANENT) >= 0.85
    # Soil away from the water's edge (the 5 x 5 filter mixes the first 2 px, and sure water
    # reaches 1 px further) stays land.
    inner = soil & ~ndimage.binary_dilation(PERMANENT, iterations=2 + SURE_WATER_REACH_PX)
    assert (res[inner] == 2).mean() < 0.01
