"""haze_index and dehaze stages: real eo-learn scenes, synthetic haze, bright soil, laziness."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from pipelines.classes import CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import get_stage
from pipelines.stages.cloud_mask import cloud_mask
from pipelines.stages.dehaze import dehaze
from pipelines.stages.haze import haze_index
from pipelines.testing.scenes import band_cube
from tests.conftest import L1C_BANDS

BGRN_IDX = [1, 2, 3, 7]
WAVELENGTH = np.array([490.0, 560.0, 665.0, 842.0])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.nanmean((a - b) ** 2)))


def _ndvi(bgrn: np.ndarray) -> np.ndarray:
    return (bgrn[3] - bgrn[2]) / (bgrn[3] + bgrn[2] + 1e-6)


@pytest.fixture(scope="module")
def scenes(real_data) -> np.ndarray:
    """The five real L1C scenes (k, band, y, x): k0 cloud, k1 thin cloud/haze, k2-k4 clear."""
    root = real_data / "eolearn-testeopatch"
    assert json.loads((root / "REFERENCE_SCENES.dates.json").read_text())["band_order"] == (
        L1C_BANDS
    )
    return np.load(root / "REFERENCE_SCENES.npy").transpose(0, 3, 1, 2)


def _haze(s2: xr.DataArray) -> xr.Dataset:
    return haze_index(s2, cloud_mask(s2))


def test_registered():
    assert get_stage("haze_index").inputs == ("s2", "cloud_mask")
    assert get_stage("dehaze").inputs == ("s2", "haze_index")


def test_index_orders_real_scenes(scenes):
    hz = _haze(band_cube(scenes, L1C_BANDS, chunk=50))
    assert isinstance(hz["dark_channel"].data, da.Array)
    assert isinstance(hz["dcp_index"].data, da.Array)
    idx = hz["dcp_index"].values
    # Measured: k0 176.0, k1 69.9, k2-k4 26.1-27.5.
    assert idx[0] > idx[1] > max(idx[2:]) + 20
    assert hz["all_pixels"].values.tolist() == [True, True, False, False, False]
    # Same ordering from the three visible bands alone.
    rgb = band_cube(scenes[:, 1:4], ["B02", "B03", "B04"], chunk=50)
    idx_rgb = haze_index(rgb, cloud_mask(band_cube(scenes, L1C_BANDS, chunk=50))).dcp_index.values
    assert idx_rgb[0] > idx_rgb[1] > max(idx_rgb[2:]) + 20


def test_dark_channel_definition_and_chunking(scenes):
    s2 = band_cube(scenes[2:4], L1C_BANDS, chunk=101)
    cm = xr.full_like(s2.isel(band=0, drop=True), CloudClass.CLEAR, dtype="uint8")
    one = haze_index(s2, cm).compute()
    four = haze_index(band_cube(scenes[2:4], L1C_BANDS, chunk=51), cm.chunk(51)).compute()
    np.testing.assert_allclose(one.dark_channel, four.dark_channel, rtol=0, atol=1e-4)
    np.testing.assert_allclose(one.dcp_index, four.dcp_index, rtol=1e-5)
    from scipy.ndimage import minimum_filter

    rgb = scenes[2, 1:4]
    expected = minimum_filter(np.clip(rgb / 0.3, 0, 1).min(0) * 255, size=15, mode="nearest")
    np.testing.assert_allclose(one.dark_channel.values[0], expected, atol=1e-3)


def test_bright_soil_scores_below_haze():
    rng = np.random.default_rng(0)
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    shape = (6, 64, 64)
    tex = 1.0 + 0.03 * rng.standard_normal(shape[1:])
    # Bright desert (surface reflectance): red > blue, bright SWIR, no haze.
    desert = np.array([0.12, 0.15, 0.18, 0.26, 0.40, 0.35])[:, None, None] * tex
    # Vegetation under haze: I = J t + A (1 - t), t(B02..B12) from an Angstrom law.
    veg = np.array([0.03, 0.06, 0.04, 0.35, 0.18, 0.08])[:, None, None] * tex
    t = 0.65 ** ((np.array([490, 560, 665, 842, 1610, 2190]) / 665.0) ** -1.3)
    hazy = veg * t[:, None, None] + 0.3 * (1 - t[:, None, None])
    assert abs(desert[:3].mean() - hazy[:3].mean()) < 0.01  # same mean visible brightness
    data = np.stack([desert, hazy])
    s2 = band_cube(data, bands, chunk=64)
    cm = xr.full_like(s2.isel(band=0, drop=True), CloudClass.CLEAR, dtype="uint8")
    for subset in (bands, ["B02", "B03", "B04"]):
        hz = haze_index(s2.sel(band=subset), cm).compute()
        idx = hz.dcp_index.values
        dc = hz.dark_channel.mean(("y", "x")).values
        assert dc[0] > 0.75 * dc[1]  # the plain dark channel barely tells them apart
        assert idx[0] < 0.5 * idx[1], (subset, idx)


def _synthetic_haze(clear: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hazy copy of a clear 13-band scene: BGRN hazed with a smooth, wavelength-dependent t."""
    rng = np.random.default_rng(seed)
    ny, nx = clear.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 50.0**2))
    t_red = 1 - (1 - rng.uniform(0.35, 0.7)) * (0.4 + 0.6 * blob)
    airlight = rng.uniform(0.22, 0.4) * np.array([1.0, 0.97, 0.93, 0.88])
    t = t_red[None] ** ((WAVELENGTH / 665.0) ** -rng.uniform(0.5, 2.0))[:, None, None]
    truth = clear[BGRN_IDX]
    hazy = clear.copy()
    hazy[BGRN_IDX] = truth * t + airlight[:, None, None] * (1 - t)
    return hazy, truth


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (4, 1), (4, 2)])
def test_dehaze_synthetic_haze_on_real_scene(scenes, k, seed):
    hazy, truth = _synthetic_haze(scenes[k], seed)
    s2 = band_cube(hazy[None], L1C_BANDS, chunk=101)
    out = dehaze(s2, _haze(s2))
    assert isinstance(out.data, da.Array)
    assert out.dims == ("time", "band", "y", "x")
    assert out.band.values.tolist() == ["B02", "B03", "B04", "B08"]
    res = out.values[0]
    hazy_bgrn = hazy[BGRN_IDX]
    # Measured gains of 8-13 dB on such cases.
    assert _psnr(res, truth) > _psnr(hazy_bgrn, truth) + 3.0
    ndvi_err_hazy = np.mean(np.abs(_ndvi(hazy_bgrn) - _ndvi(truth)))
    ndvi_err_out = np.nanmean(np.abs(_ndvi(res) - _ndvi(truth)))
    assert ndvi_err_out < 0.6 * ndvi_err_hazy


def test_dehaze_keeps_clear_scene(scenes):
    s2 = band_cube(scenes[2:5], L1C_BANDS, chunk=101)
    res = dehaze(s2, _haze(s2)).values
    ref = scenes[2:5][:, BGRN_IDX]
    assert np.nanmax(np.abs(res - ref)) < 0.02
    assert np.nanmean(np.abs(res - ref)) < 0.005  # measured 0.002-0.003
    assert min(_psnr(res[i], ref[i]) for i in range(3)) > 40.0  # measured 51-52 dB


def test_dehaze_real_thin_cloud_moves_toward_clear(scenes):
    s2 = band_cube(scenes, L1C_BANDS, chunk=101)
    hz = _haze(s2)
    out = dehaze(s2, hz).values
    restored = scenes[1].copy()
    restored[BGRN_IDX] = out[1]
    s2r = band_cube(restored[None], L1C_BANDS, chunk=101)
    after = float(haze_index(s2r, cloud_mask(s2r)).dcp_index.values[0])
    before = float(hz.dcp_index.values[1])
    clear = float(hz.dcp_index.values[2:].mean())
    # Measured: 69.9 -> 23.3, clear scenes 26.6.
    assert abs(after - clear) < 0.5 * abs(before - clear)


def test_dehaze_chunking_and_nodata(scenes):
    hazy, _ = _synthetic_haze(scenes[3], 5)
    hazy[:, :5, :7] = np.nan
    one = band_cube(hazy[None], L1C_BANDS, chunk=101)
    four = band_cube(hazy[None], L1C_BANDS, chunk=51)
    a = dehaze(one, _haze(one)).values
    b = dehaze(four, _haze(four)).values
    np.testing.assert_allclose(a, b, atol=1e-4, equal_nan=True)
    assert np.isnan(a[0, :, :5, :7]).all() and np.isfinite(a[0, :, 10:, 10:]).all()


def test_bad_inputs(scenes):
    s2 = band_cube(scenes[:1], L1C_BANDS, chunk=101)
    cm = cloud_mask(s2)
    with pytest.raises(BadInputError, match=r"B03.*bands present"):
        haze_index(s2.sel(band=["B02", "B04"]), cm)
    with pytest.raises(BadInputError, match="cloud_mask"):
        haze_index(s2, cm.isel(x=slice(0, 10)))
    with pytest.raises(BadInputError, match="dims"):
        haze_index(s2, cm.isel(time=0))
    hz = haze_index(s2, cm)
    with pytest.raises(BadInputError, match=r"B08.*bands present"):
        dehaze(s2.sel(band=["B02", "B03", "B04"]), hz)
    with pytest.raises(BadInputError, match="pixel_weight"):
        dehaze(s2, hz.drop_vars("pixel_weight"))
    with pytest.raises(BadInputError, match="omega"):
        dehaze(s2, hz, omega=1.5)


# Surface end-members (surface reflectance, B02 B03 B04 B08 B11 B12): green crop, bare soil.
_VEG = np.array([0.030, 0.065, 0.030, 0.450, 0.230, 0.110])
_SOIL = np.array([0.085, 0.115, 0.150, 0.225, 0.310, 0.260])
_AIR = np.array([0.300, 0.290, 0.280, 0.265, 0.220, 0.200])
_NM = np.array([490.0, 560.0, 665.0, 842.0, 1610.0, 2190.0])


def _hazy_scene(fc: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(band, y, x) surface J mixing crop and soil by ``fc``, and I = J t + A (1 - t)."""
    j = fc[None] * _VEG[:, None, None] + (1 - fc[None]) * _SOIL[:, None, None]
    t = np.exp(-depth[None] * ((_NM / 550.0) ** -1.3)[:, None, None])
    return j, j * t + _AIR[:, None, None] * (1 - t)


def _fields(seed: int, green: float) -> np.ndarray:
    """Vegetation fraction of 8 x 8 px fields: ``green`` of them cropped, the rest bare."""
    rng = np.random.default_rng(seed)
    f = (rng.random((12, 12)) < green).astype(float) * rng.uniform(0.7, 1.0, (12, 12))
    return np.kron(f, np.ones((8, 8)))


def test_haze_index_follows_haze_not_the_season():
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    flat = np.ones((96, 96))
    scenes = [  # (fields, depth): green season, bare season, both with the same thin haze, then
        (_fields(1, 0.9), 0.10),  # thicker haze over bare fields
        (_fields(2, 0.1), 0.10),
        (_fields(3, 0.1), 0.25),
    ]
    data = np.stack([_hazy_scene(fc, d * flat)[1] for fc, d in scenes])
    s2 = band_cube(data, bands, chunk=48)
    cm = xr.full_like(s2.isel(band=0, drop=True), CloudClass.CLEAR, dtype="uint8")
    hz = haze_index(s2, cm).compute()
    idx = hz.dcp_index.values
    plain = hz.dark_channel.mean(("y", "x")).values
    assert plain[1] - plain[0] > 25  # the plain dark channel follows the season
    assert abs(idx[1] - idx[0]) < 0.4 * (plain[1] - plain[0])
    assert idx[2] > max(idx[0], idx[1]) + 10  # and the index still follows the haze
    assert hz.haze_dark_channel.dims == ("time", "y", "x")


def test_dehaze_bare_soil_not_over_corrected():
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    yy, xx = np.mgrid[0:96, 0:96]
    depth = 0.08 + 0.25 * np.exp(-((yy - 40) ** 2 + (xx - 60) ** 2) / (2 * 30.0**2))
    clear, hazy = _hazy_scene(_fields(4, 0.2), depth)
    s2 = band_cube(hazy[None], bands, chunk=48)
    hz = haze_index(s2, xr.full_like(s2.isel(band=0, drop=True), CloudClass.CLEAR, "uint8"))
    ref = clear[:4]
    with_swir = dehaze(s2, hz).values[0]
    without = dehaze(s2, hz, use_swir=False).values[0]
    assert _psnr(with_swir, ref) > _psnr(hazy[:4], ref) + 2.0
    assert _psnr(with_swir, ref) > _psnr(without, ref)
    assert np.nanmean(np.abs(_ndvi(with_swir) - _ndvi(ref))) < np.nanmean(
        np.abs(_ndvi(hazy[:4]) - _ndvi(ref))
    )


def test_snow_is_not_read_as_haze(scenes):
    # REAL clear scene k2 with its upper 60 rows under fresh snow (SYNTHETIC spectrum: bright in
    # the visible, absorbing at 1.6 and 2.2 um). cloud_mask calls it snow, which is no clear
    # land: the three-band index keeps the clear scene's value. Read as clear land, the snow's
    # visible floor near 0.8 would be taken for thick haze.
    snow = [0.85, 0.85, 0.83, 0.80, 0.78, 0.75, 0.72, 0.70, 0.66, 0.5, 0.005, 0.08, 0.06]
    snowy = scenes[2].copy()
    snowy[:, :60] = np.array(snow)[:, None, None]
    full = band_cube(np.stack([scenes[2], snowy]), L1C_BANDS, chunk=50)
    cm = cloud_mask(full)
    assert (cm.values[1, :60] == CloudClass.SNOW).all()
    rgb = band_cube(np.stack([scenes[2], snowy])[:, 1:4], ["B02", "B03", "B04"], chunk=50)
    idx = haze_index(rgb, cm).dcp_index.values
    assert abs(idx[1] - idx[0]) < 3.0  # measured 26.2 and 26.5
    as_clear = xr.where(cm == CloudClass.SNOW, np.uint8(CloudClass.CLEAR), cm).astype("uint8")
    assert haze_index(rgb, as_clear).dcp_index.values[1] > idx[0] + 50  # measured 146.5
