"""season_features: calendar interpolation, cloud masking, SAR and terrain layers, laziness."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipelines.agri.features import (
    BGRN,
    calendar_doys,
    interp_calendar,
    season_features,
    slope_hillshade,
)
from pipelines.classes import SCL_CLOUD_HIGH, SCL_SNOW, SCL_VEGETATION
from pipelines.errors import BadInputError

NY = NX = 12


def _coords(ny: int = NY, nx: int = NX) -> dict[str, np.ndarray]:
    return {
        "y": 4_000_000.0 - 10.0 * (np.arange(ny) + 0.5),
        "x": 300_000.0 + 10.0 * (np.arange(nx) + 0.5),
    }


def _s2(dates: list[str], red: list[float], nir: list[float], scl: list[int]) -> xr.DataArray:
    """(time, band, y, x) cube: spatially uniform reflectance per date, with SCL."""
    bands = [*BGRN, "SCL"]
    data = np.zeros((len(dates), len(bands), NY, NX), dtype="float32")
    for t, (r, n, s) in enumerate(zip(red, nir, scl, strict=True)):
        data[t, 0], data[t, 1], data[t, 2], data[t, 3], data[t, 4] = 0.05, 0.08, r, n, s
    return xr.DataArray(
        da.from_array(data, chunks=(1, len(bands), 6, 6)),
        dims=("time", "band", "y", "x"),
        coords={"time": pd.DatetimeIndex(dates).values, "band": bands, **_coords()},
    )


def test_interp_calendar_is_linear_holds_the_ends_and_keeps_never_observed_nan():
    nan = np.nan
    values = np.array(
        [[nan, 1.0, nan, 3.0, nan], [nan] * 5, [5.0, nan, nan, nan, nan]], dtype="float32"
    )
    out = interp_calendar(values, np.array([0, 10, 20, 30, 40.0]), np.array([0, 5, 15, 20, 45.0]))
    np.testing.assert_allclose(out[0], [1.0, 1.0, 1.5, 2.0, 3.0])
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[2], [5.0] * 5)
    assert out.dtype == np.float32


def test_interp_calendar_keeps_leading_dims():
    values = np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4)
    out = interp_calendar(values, np.array([0, 1, 2, 3.0]), np.array([0.5, 2.5]))
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out[..., 0], values[..., 0] + 0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"start_doy": 0}, "start_doy"),
        ({"start_doy": 100, "end_doy": 90}, "end_doy"),
        ({"step_days": 0}, "step_days"),
        ({"step_days": 2.5}, "step_days"),
    ],
)
def test_calendar_rejects_bad_values(kwargs, field):
    with pytest.raises(BadInputError) as err:
        calendar_doys(**kwargs)
    assert err.value.field == field


def test_season_features_masks_clouds_and_interpolates_on_the_calendar():
    dates = ["2025-03-01", "2025-03-11", "2025-03-21", "2025-03-31"]
    red = [0.10, 0.05, 0.30, 0.05]
    nir = [0.30, 0.45, 0.31, 0.35]
    scl = [SCL_VEGETATION, SCL_VEGETATION, SCL_CLOUD_HIGH, SCL_VEGETATION]  # 21 March cloudy
    s2 = _s2(dates, red, nir, scl)
    ds = season_features(s2, None, None, 2025, start_doy=60, end_doy=90, step_days=5)
    assert isinstance(ds["ndvi"].data, da.Array)  # lazy
    ds = ds.compute()
    assert list(ds["doy"].values) == [60, 65, 70, 75, 80, 85, 90]
    assert ds["ndvi"].dims == ("doy", "y", "x")
    assert ds["reflectance"].dims == ("doy", "band", "y", "x")
    assert list(ds["band"].values) == list(BGRN)
    assert ds.attrs["season"] == 2025
    ndvi_obs = [(n - r) / (n + r) for r, n in zip(red, nir, strict=True)]
    # 1 March is DOY 60; the cloudy date (DOY 80) is skipped: DOY 70..90 interpolate 70 -> 90.
    expected = np.interp(
        [60, 65, 70, 75, 80, 85, 90], [60, 70, 90], [ndvi_obs[i] for i in (0, 1, 3)]
    )
    np.testing.assert_allclose(ds["ndvi"].values[:, 3, 4], expected, atol=1e-5)
    red_cal = ds["reflectance"].sel(band="B04").values[:, 0, 0]
    np.testing.assert_allclose(red_cal[-1], 0.05, atol=1e-6)
    # 3 of 4 season dates clear (the 10 m cloud buffer covers the whole 12 px tile here anyway).
    np.testing.assert_allclose(ds["valid_fraction"].values, 0.75)
    assert np.isnan(ds["sar"].values).all() and ds["sar"].dims == ("doy", "pol", "y", "x")
    assert np.isnan(ds["slope"].values).all()


def test_season_features_sar_and_terrain():
    dates = ["2025-03-01", "2025-04-01"]
    s2 = _s2(dates, [0.1, 0.1], [0.4, 0.4], [SCL_VEGETATION] * 2)
    s1_data = np.zeros((2, 2, NY, NX), dtype="float32")
    s1_data[0], s1_data[1] = -10.0, -20.0
    s1_data[1, 1, 0, 0] = np.nan  # a gap in VH: held from the other date
    s1 = xr.DataArray(
        da.from_array(s1_data, chunks=(1, 2, 6, 6)),
        dims=("time", "band", "y", "x"),
        coords={"time": pd.DatetimeIndex(dates).values, "band": ["VV", "VH"], **_coords()},
    )
    xx = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")[1]
    dem = xr.DataArray(
        da.from_array((-xx * 1.0).astype("float32"), chunks=6),  # 1 m drop per 10 m eastwards
        dims=("y", "x"),
        coords=_coords(),
    )
    ds = season_features(s2, s1, dem, 2025, start_doy=60, end_doy=91, step_days=31).compute()
    np.testing.assert_allclose(ds["sar"].sel(pol="VV").values[:, 5, 5], [-10.0, -20.0])
    np.testing.assert_allclose(ds["sar"].sel(pol="VH").values[:, 0, 0], [-10.0, -10.0])
    np.testing.assert_allclose(ds["slope"].values, np.degrees(np.arctan(0.1)), rtol=1e-4)
    shade = ds["hillshade"].values
    assert ((shade >= 0) & (shade <= 1)).all()
    # A slope facing east is lit less than flat ground by a sun in the north-west; one facing
    # west more.
    flat = slope_hillshade(dem * 0.0)[1].compute().values
    west = slope_hillshade(-dem)[1].compute().values
    assert shade.mean() < flat.mean() < west.mean()


def test_season_without_scenes_is_bad_input():
    s2 = _s2(["2024-06-01"], [0.1], [0.4], [SCL_VEGETATION])
    with pytest.raises(BadInputError) as err:
        season_features(s2, None, None, 2025)
    assert err.value.field == "s2.time"
    assert "2024-06-01" in str(err.value)


def test_missing_band_is_bad_input():
    s2 = _s2(["2025-06-01"], [0.1], [0.4], [SCL_VEGETATION]).sel(band=["B02", "B03", "B04"])
    with pytest.raises(BadInputError) as err:
        season_features(s2, None, None, 2025)
    assert err.value.field == "s2.band"


def test_season_is_validated():
    s2 = _s2(["2025-06-01"], [0.1], [0.4], [SCL_VEGETATION])
    with pytest.raises(BadInputError) as err:
        season_features(s2, None, None, "2025")
    assert err.value.field == "season"


def test_season_features_on_the_tiny_archive(tiny_archive):
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.load import load_s2

    info = open_archive_info(str(tiny_archive))
    geobox = archive_geobox(info)[:32, :32]
    items = [
        it
        for it in archive_items(str(tiny_archive), "sentinel-2-l2a")
        if str(it["properties"]["datetime"]).startswith("2025")
    ]
    s2 = load_s2(items, geobox, bands=("B02", "B03", "B04", "B08"), with_scl=True, chunksize=32)
    ds = season_features(s2, None, None, 2025).compute()
    assert ds["ndvi"].shape == (28, 32, 32)
    assert np.isfinite(ds["ndvi"].values).all()
    assert (ds["valid_fraction"].values > 0.2).all()
    # The crops' NDVI rises and falls through the season: the calendar is not flat.
    assert float(ds["ndvi"].max("doy").mean() - ds["ndvi"].min("doy").mean()) > 0.2


def test_season_features_leave_snow_out_of_the_ndvi_curves():
    # A field of winter wheat under snow on 21 March: its NDVI that day (-0.07) is the snow's,
    # not the crop's, and would read as bare ground. The date is a gap, as under cloud.
    dates = ["2025-03-01", "2025-03-11", "2025-03-21", "2025-03-31"]
    red = [0.10, 0.05, 0.80, 0.05]
    nir = [0.30, 0.45, 0.70, 0.35]
    scl = [SCL_VEGETATION, SCL_VEGETATION, SCL_SNOW, SCL_VEGETATION]
    s2 = _s2(dates, red, nir, scl)
    ds = season_features(s2, None, None, 2025, start_doy=60, end_doy=90, step_days=5).compute()
    ndvi_obs = [(n - r) / (n + r) for r, n in zip(red, nir, strict=True)]
    expected = np.interp(
        [60, 65, 70, 75, 80, 85, 90], [60, 70, 90], [ndvi_obs[i] for i in (0, 1, 3)]
    )
    np.testing.assert_allclose(ds["ndvi"].values[:, 3, 4], expected, atol=1e-5)
    np.testing.assert_allclose(ds["valid_fraction"].values, 0.75)
