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
from pipelines.evaluate import evaluate_flood_terrain_real
from pipelines.stages.flood import flood_change
from pipelines.testing.scenes import band_cube

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


def test_terrain_masks_on_real_copernicus_dem(real_data: Path):
    res = evaluate_flood_terrain_real(str(real_data))
    if not res:
        pytest.skip("real Copernicus DEM tiles not present")
    # Measured: floodplains (lowest tenth of elevations) 0.94 (Rome) and 0.82 (Los Angeles)
    # floodable, hills (highest tenth) 0.005 and 0.
    for key in ("rome", "los_angeles"):
        share = res[f"flood_terrain_floodable_{key}"]
        assert share["lowest_tenth"] > 0.75 and share["highest_tenth"] < 0.05, res
