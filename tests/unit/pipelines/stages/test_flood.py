"""flood_change: unchanged land stays dry, flooded vegetation is its own class, terrain masks
behave on real Copernicus DEM tiles (Rome, Los Angeles; 1 arcsec)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from pipelines.classes import FloodClass
from pipelines.errors import BadInputError
from pipelines.evaluate import evaluate_flood_terrain_real
from pipelines.stages import filters as F
from pipelines.stages.flood import flood_change, terrain_ok_np
from pipelines.stages.terrain import height_above_drainage_of_plane, slope_np, steep_np
from pipelines.testing.scenes import band_cube, sar_land_cover_fields

N = 96
YY, XX = np.mgrid[0:N, 0:N]
BANDS = ("VV", "VH")
LAKE = (YY - 48) ** 2 + (XX - 20) ** 2 < 15**2


def _sar(vv: np.ndarray, vh: np.ndarray, dates: int, seed: int) -> np.ndarray:
    """(time, band=[VV, VH], y, x) dB of noise-free dB maps with 4.4-look gamma speckle."""
    rng = np.random.default_rng(seed)
    out = np.empty((dates, 2, N, N), dtype="float32")
    for t in range(dates):
        for b, db in enumerate((vv, vh)):
            lin = 10 ** (np.asarray(db, "float64") / 10) * rng.gamma(4.4, 1 / 4.4, (N, N))
            out[t, b] = 10 * np.log10(lin)
    return out


def _flat_dem() -> xr.DataArray:
    return xr.DataArray(da.from_array(np.full((N, N), 20.0, "float32"), chunks=48), dims=("y", "x"))


def _run(pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    return flood_change(band_cube(pre, BANDS, 48), band_cube(post, BANDS, 48), _flat_dem()).values[
        0
    ]


def _land() -> tuple[np.ndarray, np.ndarray]:
    """A lake in heterogeneous land (crops, grass, dark bare soil at -21 dB VH)."""
    rng = np.random.default_rng(1)
    vh = rng.choice([-13.0, -17.0, -21.0], size=(N // 12, N // 12)).repeat(12, 0).repeat(12, 1)
    return np.where(LAKE, -21.0, vh + 7.0), np.where(LAKE, -28.0, vh)


def test_unchanged_land_stays_dry():
    vv, vh = _land()
    res = _run(_sar(vv, vh, 3, seed=2), _sar(vv, vh, 1, seed=3))
    assert np.isin(res, (FloodClass.FLOODED, FloodClass.FLOODED_VEGETATION)).mean() < 0.005
    assert (res[LAKE] == FloodClass.PERMANENT_WATER).mean() > 0.95


def test_flooded_vegetation_is_its_own_class():
    vv, vh = _land()
    field = (YY >= 66) & (YY < 78) & (XX >= 50) & (XX < 62)  # open flood
    grove = (YY >= 66) & (YY < 78) & (XX >= 70) & (XX < 82)  # flooded trees: double bounce
    crops = (YY >= 10) & (YY < 22) & (XX >= 70) & (XX < 82)  # growing crops: VV and VH rise
    vv_post = np.where(field, -22.0, np.where(grove | crops, vv + 5.0, vv))
    vh_post = np.where(field, -28.0, np.where(grove, vh - 1.0, np.where(crops, vh + 5.0, vh)))
    res = _run(_sar(vv, vh, 3, seed=4), _sar(vv_post, vh_post, 1, seed=5))
    inner = ndimage.binary_erosion(field | grove | crops, iterations=2)  # the filter's reach
    assert (res[field & inner] == FloodClass.FLOODED).mean() > 0.9
    assert (res[grove & inner] == FloodClass.FLOODED_VEGETATION).mean() > 0.9
    assert (res[crops] == FloodClass.DRY).mean() > 0.98


def test_a_flood_under_wind_is_flooded_whatever_its_vv():
    """Flood water roughened by wind (VV -13 dB, above the VV water range; VH -27 dB, below every
    land cover) is flooded, not dry; dark bare soil stays dry (unchanged land)."""
    vv, vh = _land()
    field = (YY >= 60) & (YY < 84) & (XX >= 50) & (XX < 80)
    vv_post, vh_post = np.where(field, -13.0, vv), np.where(field, -27.0, vh)
    res = _run(_sar(vv, vh, 3, seed=6), _sar(vv_post, vh_post, 1, seed=7))
    inner = ndimage.binary_erosion(field, iterations=2)  # the filter's reach
    assert (res[field & inner] == FloodClass.FLOODED).mean() > 0.9
    assert np.isin(res[~field & ~LAKE], (FloodClass.FLOODED,)).mean() < 0.005


def test_a_flood_filling_the_tile_is_flooded():
    """Rough flood water (VH -23, VV -17 dB) over 95 % and 100 % of a tile of mixed land: too
    little land is left for a split, and the date is water-dominated: 99.8 % and 98.8 % of it is
    flooded. Before, 82 % and 67 % was (by the 3 dB decrease alone)."""
    vv, vh = _land()
    for share in (1.0, 0.95):
        flood = np.less(XX, int(N * share))
        vv_post, vh_post = np.where(flood, -17.0, vv), np.where(flood, -23.0, vh)
        res = _run(_sar(vv, vh, 3, seed=8), _sar(vv_post, vh_post, 1, seed=9))
        assert np.isin(res[flood & ~LAKE], (FloodClass.FLOODED,)).mean() > 0.97
        assert (res[LAKE] == FloodClass.PERMANENT_WATER).mean() > 0.95


def test_post_threshold_is_learned_on_floodable_terrain():
    """Radar shadow on a steep hillside (VH -29, VV -22 dB, before and after the event) poses
    as calm water in the sub-tiles there; its pooled split sat too low for rough flood water on
    the plain (VH -22, VV -17 dB): 74 % of the flood found. The post-event threshold is
    learned where the terrain may flood: 91 %."""
    vv, vh = sar_land_cover_fields(0, N, N, (0.2, 0.35, 0.25, 0.15, 0.05))
    hill = YY < 30
    shadow = hill & (XX % 16 < 8)
    flood = (YY >= 50) & (YY < 80) & (XX >= 20) & (XX < 80)
    vv_pre, vh_pre = np.where(shadow, -22.0, vv), np.where(shadow, -29.0, vh)
    vv_post, vh_post = np.where(flood, -17.0, vv_pre), np.where(flood, -22.0, vh_pre)
    dem = np.full((N, N), 20.0, "float32")
    dem[hill] += 3.0 * (30 - YY[hill])  # 3 m per 10 m pixel: 17 degrees
    pre, post = _sar(vv_pre, vh_pre, 3, seed=0), _sar(vv_post, vh_post, 1, seed=20)
    dem_cube = xr.DataArray(da.from_array(dem, chunks=48), dims=("y", "x"))
    res = flood_change(band_cube(pre, BANDS, 48), band_cube(post, BANDS, 48), dem_cube).values[0]
    assert (res[flood] == FloodClass.FLOODED).mean() > 0.88
    assert (res[~flood] == FloodClass.FLOODED).mean() < 0.005
    assert not (res[hill] == FloodClass.FLOODED).any()


def test_without_a_hand_input_the_height_is_derived_from_the_dem():
    """A flat terrace 20 m above a flat plain, behind a cliff: its 0.086 km2 drain over the
    cliff and are no drainage of their own (0.09 km2, ASF's recipe), so it stands 20 m above
    the plain's drainage, over the 15 m limit, though it is level. A quarry 30 m deep in the
    plain is a filled depression to the routing: the plain around it stays low (the lowest
    point within 500 m, the stand-in used before, put the whole plain 30 m up). Water on the
    terrace after the event is no flood; water on the plain is. Called without ``hand``,
    flood_change derives the height from ``dem`` alone, as given the derived plane."""
    terrace, cliff = YY < 9, (YY >= 9) & (YY < 12)
    dem = np.where(terrace, 20.0, np.where(cliff, 20.0 - 20.0 * (YY - 8) / 4, 0.0))
    dem = dem - np.where((YY >= 30) & (YY < 36) & (XX >= 85) & (XX < 91), 30.0, 0.0)
    dem = dem.astype("float32")
    height = height_above_drainage_of_plane(dem, 10.0)
    assert (height[terrace] > 15.0).all() and (height[YY >= 14] < 1.0).all()
    vv, vh = sar_land_cover_fields(3, N, N, (0.2, 0.35, 0.25, 0.15, 0.05))
    wet = ((YY < 8) | ((YY >= 50) & (YY < 80))) & (XX >= 20) & (XX < 80)
    pre = _sar(vv, vh, 3, seed=4)
    post = _sar(np.where(wet, -21.0, vv), np.where(wet, -28.0, vh), 1, seed=5)
    args = (
        band_cube(pre, BANDS, 48),
        band_cube(post, BANDS, 48),
        xr.DataArray(da.from_array(dem, chunks=48), dims=("y", "x")),
    )
    res = flood_change(*args).values[0]
    assert (res[wet & (YY >= 50)] == FloodClass.FLOODED).mean() > 0.95
    assert not (res[terrace] == FloodClass.FLOODED).any()
    given = flood_change(*args, hand=xr.DataArray(height, dims=("y", "x"))).values[0]
    np.testing.assert_array_equal(res, given)
    # With a height of 0 everywhere the terrace's water is a flood.
    flat = flood_change(*args, hand=xr.DataArray(np.zeros_like(dem), dims=("y", "x")))
    assert (flat.values[0][wet & (YY < 8)] == FloodClass.FLOODED).mean() > 0.9


def test_terrain_masks_on_real_copernicus_dem(real_data: Path):
    res = evaluate_flood_terrain_real(str(real_data))
    if not res:
        pytest.skip("real Copernicus DEM tiles not present")
    # Measured with the height above nearest drainage (drainage from 0.09 km2, ASF's recipe):
    # floodplains (lowest tenth of elevations) 0.94 (Rome) and 0.92 (Los Angeles) floodable,
    # hills (highest tenth) 0.18 and 0.02: a hilltop above its own gully counts as low.
    for key in ("rome", "los_angeles"):
        share = res[f"flood_terrain_floodable_{key}"]
        assert share["lowest_tenth"] > 0.85 and share["highest_tenth"] < 0.25, res
        assert share["highest_tenth"] < share["tile"] < share["lowest_tenth"], res
        # A 1 km margin makes a window's height its tile's (0.01 % of the 15 m decisions
        # differ; 1.7 % and 2.1 % without a margin, as the stage called alone on a window).
        edge = res[f"flood_terrain_hand_window_disagreement_{key}"]
        assert edge["margin_33_px"] < 0.001 < edge["margin_0_px"], res


def _terrain_reference(
    z: np.ndarray, hand: np.ndarray, pixel_m: float, max_slope: float, max_hand: float
):
    """Floodable terrain from the float32 slope plane and the height plane."""
    slope = slope_np(z, pixel_m).astype("float32")
    return ~((slope > max_slope) | (hand > max_hand))


def _terrain_fused(
    z: np.ndarray, hand: np.ndarray, pixel_m: float, max_slope: float, max_hand: float, chunk: int
):
    """flood_change's floodable terrain (one block call), on a chunked DEM."""
    chunks = (1, chunk, chunk)
    return F.overlap(
        terrain_ok_np,
        da.from_array(z[None], chunks=chunks),
        da.from_array(hand[None], chunks=chunks),
        depth=1,
        dtype=bool,
        pixel_m=pixel_m,
        max_slope_deg=max_slope,
        max_hand_m=max_hand,
    ).compute()[0]


def test_terrain_decision_is_the_float64_slopes_at_the_limit():
    """SYNTHETIC: central differences one float32 step after another across the limit (where
    float32 arithmetic alone decides some of them wrongly), rough hills, NaN holes and an
    infinity; the fused decision equals the slope and height planes'."""
    rng = np.random.default_rng(11)
    n = 160
    yy, xx = np.mgrid[0:n, 0:n].astype("float64")
    hills = (60.0 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.5, (n, n))).astype(
        "float32"
    )
    for pixel_m, limit in ((10.0, 5.0), (10.0, 2.5), (10.0, 1.0), (30.0, 2.5)):
        # Pixel 3k + 1 of a row sees 0 and b_k either side: its slope is b_k / (2 px), with
        # b_k the float32 values around 2 px tan(limit).
        rise = np.float32(2 * pixel_m * np.tan(np.radians(limit)))
        steps = np.arange(-40, 41)
        b = np.array([rise + k * np.spacing(rise) for k in steps], dtype="float32")
        ramp = np.zeros((4, 3 * b.size), dtype="float32")
        ramp[:, 2::3] = b
        for z in (ramp, hills):
            z = z.copy()
            z[1, 7:9] = np.nan
            z[-1, 30] = np.inf
            # A height on both sides of 15 m on the hills, below it on the ramp (the slope
            # alone decides there); NaN and inf included.
            hand = z - np.float32(np.min(z[np.isfinite(z)]))
            ref = _terrain_reference(z, hand, pixel_m, limit, 15.0)
            for chunk in (n, 48):
                got = _terrain_fused(z, hand, pixel_m, limit, 15.0, chunk)
                np.testing.assert_array_equal(got, ref)
        # The ramp puts pixels on both sides of the limit, and float32 squares alone would
        # decide some of them wrongly at 2.5 and 1 degrees: the float64 path is exercised.
        steep = steep_np(ramp, pixel_m, limit)
        assert 0 < steep[2, 1::3].mean() < 1
        naive = b * b > np.float32((2 * pixel_m * np.tan(np.radians(limit))) ** 2)
        if limit in (2.5, 1.0) and pixel_m == 10.0:
            assert (naive != steep[2, 1::3]).any()


def test_terrain_decision_on_real_copernicus_dem(real_data: Path):
    """REAL: the fused terrain decision equals the slope and height planes' on Copernicus DEM
    (the height above drainage of each 600 px window)."""
    import rasterio

    folder = real_data / "copdem-tiles"
    if not (folder / "Rome-30m-DEM.tif").is_file():
        pytest.skip("real Copernicus DEM tiles not present")
    for name in ("Rome-30m-DEM.tif", "los_angeles_dem_geoid.tif"):
        with rasterio.open(folder / name) as src:
            z = src.read(1)[:600, :600].astype("float32")
            if src.nodata is not None:
                z[z == src.nodata] = np.nan
        hand = height_above_drainage_of_plane(z, 30.0)
        for limit in (5.0, 1.0):
            ref = _terrain_reference(z, hand, 30.0, limit, 15.0)
            np.testing.assert_array_equal(_terrain_fused(z, hand, 30.0, limit, 15.0, 256), ref)
            assert 0.05 < ref.mean() < 0.95 or limit == 5.0


def _dated(cube: xr.DataArray, days: list[str]) -> xr.DataArray:
    return cube.assign_coords(time=np.array(days, dtype="datetime64[ns]"))


def _with_references(post: xr.DataArray, start: str) -> xr.DataArray:
    """``post`` with the reference windows a run's loader gives it (no event date, 30 days)."""
    import datetime as dt

    from pipelines.inputs import reference_window

    days = [dt.date.fromisoformat(str(t)[:10]) for t in post["time"].values]
    windows = [reference_window(d, dt.date.fromisoformat(start), None, 30) for d in days]
    return post.assign_coords(
        reference_from=("time", np.array([lo for lo, _ in windows], dtype="datetime64[ns]")),
        reference_until=(
            "time",
            np.array([hi for _, hi in windows], dtype="datetime64[ns]") + np.timedelta64(1, "D"),
        ),
    )


def test_each_month_of_a_long_window_is_compared_with_the_scenes_before_it():
    """Paddies flooded in March (water from 5 March on) against a February reference: in a
    window of March and April without an event date, March reads them flooded and April,
    compared with March's scenes as its own month's run would be, permanent water; the result
    is that of the two months run apart. Before, April was compared with February too."""
    vv, vh = _land()
    paddy = (YY >= 60) & (YY < 84) & (XX >= 50) & (XX < 80)
    wet_vv, wet_vh = np.where(paddy, -21.0, vv), np.where(paddy, -28.0, vh)
    pre = _dated(
        band_cube(_sar(vv, vh, 3, seed=10), BANDS, 48), ["2025-02-05", "2025-02-17", "2025-02-25"]
    )
    post_days = ["2025-03-05", "2025-03-17", "2025-03-29", "2025-04-10", "2025-04-22"]
    post = _dated(band_cube(_sar(wet_vv, wet_vh, 5, seed=11), BANDS, 48), post_days)
    dem = _flat_dem()
    both = flood_change(pre, _with_references(post, "2025-03-01"), dem).values
    march = flood_change(pre, post.isel(time=slice(0, 3)), dem).values
    april = flood_change(post.isel(time=slice(0, 3)), post.isel(time=slice(3, 5)), dem).values
    np.testing.assert_array_equal(both, np.concatenate([march, april]))
    inner = ndimage.binary_erosion(paddy, iterations=2)
    assert (both[:3][:, inner] == FloodClass.FLOODED).mean() > 0.9
    assert (both[3:][:, inner] == FloodClass.PERMANENT_WATER).mean() > 0.9
    assert (flood_change(pre, post, dem).values[3:][:, inner] == FloodClass.FLOODED).mean() > 0.9
    # A month without a scene in its reference window gets no decision (the plan leaves it out).
    sparse = _dated(post.isel(time=[0, 3]), ["2025-03-05", "2025-05-10"])  # none in April
    sparse = _with_references(sparse, "2025-03-01")
    assert (flood_change(pre, sparse, dem).values[1] == FloodClass.NODATA).all()


def test_a_tile_without_scenes_before_the_window_gets_its_later_months():
    """No S1 scene before a window of March and April: March has no reference and no decision;
    April, compared with March's scenes, is what it is with a February archive beside it."""
    vv, vh = _land()
    paddy = (YY >= 60) & (YY < 84) & (XX >= 50) & (XX < 80)
    wet_vv, wet_vh = np.where(paddy, -21.0, vv), np.where(paddy, -28.0, vh)
    pre = _dated(band_cube(_sar(vv, vh, 2, seed=10), BANDS, 48), ["2025-02-05", "2025-02-17"])
    post_days = ["2025-03-05", "2025-03-17", "2025-04-10", "2025-04-22"]
    post = _dated(band_cube(_sar(wet_vv, wet_vh, 4, seed=11), BANDS, 48), post_days)
    post = _with_references(post, "2025-03-01")
    dem = _flat_dem()
    alone = flood_change(None, post, dem).values
    assert (alone[:2] == FloodClass.NODATA).all()
    np.testing.assert_array_equal(alone[2:], flood_change(pre, post, dem).values[2:])
    inner = ndimage.binary_erosion(paddy, iterations=2)
    assert (alone[2:][:, inner] == FloodClass.PERMANENT_WATER).mean() > 0.9
    # Without reference windows there is nothing to compare with.
    with pytest.raises(BadInputError, match=r"s1_pre.*reference_from"):
        flood_change(None, post.drop_vars(["reference_from", "reference_until"]), dem)


def _tracked(cube: xr.DataArray, days: list[str], tracks: list[int]) -> xr.DataArray:
    return _dated(cube, days).assign_coords(relative_orbit=("time", np.array(tracks, "int32")))


def test_a_date_is_compared_with_the_scenes_of_its_own_track():
    """Built-up blocks whose walls face one track: VV 6 dB brighter from track 2 than from
    track 1 (VH 1 dB), as the cardinal effect makes them. A date of track 2 against a reference
    of mostly track 1 reads as double bounce, flooded vegetation; against its own track it is
    dry. Permanent water is read from all of them. A date of a track with no reference scene
    of its own is compared with all of them; the dates come out in date order whatever their
    tracks."""
    vv, vh = _land()
    blocks = (YY >= 60) & (YY < 90) & (XX >= 50) & (XX < 90)
    vv2, vh2 = np.where(blocks, vv + 6.0, vv), np.where(blocks, vh + 1.0, vh)
    scenes = np.concatenate([_sar(vv, vh, 2, seed=20), _sar(vv2, vh2, 1, seed=21)])
    pre_days = ["2025-02-05", "2025-02-17", "2025-02-23"]
    pre = _tracked(band_cube(scenes, BANDS, 48), pre_days, [1, 1, 2])
    looks = np.concatenate(
        [_sar(vv2, vh2, 1, seed=22), _sar(vv, vh, 1, seed=23), _sar(vv, vh, 1, seed=24)]
    )
    post_days = ["2025-03-05", "2025-03-11", "2025-03-17"]
    post = _tracked(band_cube(looks, BANDS, 48), post_days, [2, 1, 3])
    dem = _flat_dem()
    tracked = flood_change(pre, post, dem).values
    mixed = flood_change(pre.drop_vars("relative_orbit"), post.drop_vars("relative_orbit"), dem)
    inner = ndimage.binary_erosion(blocks, iterations=3)
    wet = (FloodClass.FLOODED, FloodClass.FLOODED_VEGETATION)
    assert np.isin(mixed.values[0][inner], wet).mean() > 0.5  # geometry read as change
    assert np.isin(tracked[0][inner], wet).mean() < 0.05
    # Permanent water is read from every scene of the window (calm water is dark from any
    # track); the change, from the date's own track's scenes.
    perm = FloodClass.PERMANENT_WATER
    np.testing.assert_array_equal(tracked == perm, mixed.values == perm)
    for k, own in ((0, [2]), (1, [0, 1])):
        alone = flood_change(pre.isel(time=own), post.isel(time=[k]), dem).values[0]
        neither = (alone != perm) & (tracked[k] != perm)
        np.testing.assert_array_equal(tracked[k][neither], alone[neither], err_msg=post_days[k])
    np.testing.assert_array_equal(tracked[2], mixed.values[2])  # track 3: all of them
    assert [str(t)[:10] for t in flood_change(pre, post, dem)["time"].values] == post_days
