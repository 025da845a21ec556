"""cloud_mask stage: SCL path with dilation, spectral rules on real L1C scenes, laziness."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from pipelines.classes import CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import get_stage
from pipelines.stages.cloud_mask import SPECTRAL_BANDS, cloud_mask
from pipelines.testing.scenes import band_cube
from tests.conftest import L1C_BANDS


@pytest.fixture(scope="module")
def eolearn(real_data):
    root = real_data / "eolearn-testeopatch"
    scenes = np.load(root / "REFERENCE_SCENES.npy")
    meta = json.loads((root / "REFERENCE_SCENES.dates.json").read_text())
    stamps = json.loads((root / "TestEOPatch" / "timestamps.json").read_text())
    clm = np.load(root / "TestEOPatch" / "mask" / "CLM.npy")[..., 0]
    ref = np.stack([clm[stamps.index(s["timestamp"])] for s in meta["scenes"]])
    assert meta["band_order"] == L1C_BANDS
    return scenes.transpose(0, 3, 1, 2), ref.astype(bool)


def test_registered():
    stage = get_stage("cloud_mask")
    assert stage.inputs == ("s2",) and stage.version == "1.2.0"


def test_scl_codes_and_dilation():
    scl = np.full((1, 1, 40, 40), 4.0)  # vegetation
    scl[0, 0, 10:14, 10:14] = 9  # high-probability cloud
    scl[0, 0, 30, 30] = 3  # shadow
    scl[0, 0, 0, 35:] = 10  # cirrus
    scl[0, 0, 38:, :5] = np.nan  # nodata
    scl[0, 0, 39, 39] = 0  # nodata code
    scl[0, 0, 20, 30:33] = 1  # saturated or defective: no measurement
    s2 = band_cube(scl, ["SCL"], chunk=40)
    out = cloud_mask(s2, cloud_buffer_m=20.0, shadow_buffer_m=0.0)
    assert isinstance(out.data, da.Array)
    res = out.compute().values[0]
    assert res.dtype == np.uint8
    # 4x4 cloud dilated by a 2 px disk.
    assert (res[10:14, 10:14] == CloudClass.CLOUD).all()
    assert res[8, 11] == CloudClass.CLOUD and res[15, 12] == CloudClass.CLOUD
    assert res[7, 11] == CloudClass.CLEAR and res[8, 8] == CloudClass.CLEAR  # disk, not square
    assert res[30, 30] == CloudClass.SHADOW and res[30, 31] == CloudClass.CLEAR
    assert (res[0, 35:] == CloudClass.CIRRUS).all()
    assert (res[38:, :5] == CloudClass.NODATA).all() and res[39, 39] == CloudClass.NODATA
    assert (res[20, 30:33] == CloudClass.NODATA).all() and res[20, 33] == CloudClass.CLEAR
    # 4x4 grown by a radius-2 disk: an 8x8 square less 3 px cut at each corner.
    assert (res == CloudClass.CLOUD).sum() == 8 * 8 - 4 * 3


def test_default_buffer_depends_on_the_path():
    scl = np.full((1, 1, 20, 20), 4.0)
    scl[0, 0, 8:12, 8:12] = 9
    res = cloud_mask(band_cube(scl, ["SCL"], chunk=20)).values[0]
    # SCL: one 10 m pixel around the cloud (half an SCL 20 m pixel), a radius-1 disk.
    assert (res == CloudClass.CLOUD).sum() == 4 * 4 + 4 * 4
    assert res[7, 9] == CloudClass.CLOUD and res[6, 9] == CloudClass.CLEAR
    # Spectral rules: 40 m. A bright, white, blue-raised 6x6 cloud over dark vegetation.
    bands = list(SPECTRAL_BANDS)
    img = np.tile(np.array([0.03, 0.06, 0.04, 0.35, 0.18, 0.08])[:, None, None], (1, 30, 30))
    img[:, 12:18, 12:18] = np.array([0.5, 0.5, 0.5, 0.5, 0.4, 0.3])[:, None, None]
    res = cloud_mask(band_cube(img[None], bands, chunk=30)).values[0]
    assert res[12, 15] == CloudClass.CLOUD and res[8, 15] == CloudClass.CLOUD  # 4 px out
    assert res[7, 15] == CloudClass.CLEAR


def test_scl_chunking_does_not_matter():
    rng = np.random.default_rng(3)
    scl = rng.choice(
        [4.0, 5.0, 8.0, 3.0, 10.0, 0.0], p=[0.7, 0.2, 0.03, 0.03, 0.02, 0.02], size=(2, 1, 64, 64)
    )
    one = cloud_mask(band_cube(scl, ["SCL"], chunk=64), cloud_buffer_m=60.0).compute()
    four = cloud_mask(band_cube(scl, ["SCL"], chunk=32), cloud_buffer_m=60.0).compute()
    eager = cloud_mask(band_cube(scl, ["SCL"], chunk=64).compute(), cloud_buffer_m=60.0).compute()
    np.testing.assert_array_equal(one.values, four.values)
    np.testing.assert_array_equal(one.values, eager.values)


def test_spectral_rules_match_reference_masks(eolearn):
    scenes, ref = eolearn
    single = cloud_mask(band_cube(scenes, L1C_BANDS, chunk=101)).compute().values
    tiled = cloud_mask(band_cube(scenes, L1C_BANDS, chunk=50)).compute().values
    np.testing.assert_array_equal(single, tiled)
    pred = single == CloudClass.CLOUD
    tp = np.sum(pred & ref)
    f1 = 2 * tp / (2 * tp + np.sum(pred & ~ref) + np.sum(~pred & ref))
    # Measured 0.998 on these five scenes (k0 thick cloud, k1 thin cloud, k2-k4 clear).
    assert f1 >= 0.95
    assert pred[2:].mean() < 0.01  # the clear scenes stay clear


def test_spectral_shadow_near_cloud_only():
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    clear = np.array([0.04, 0.07, 0.05, 0.30, 0.18, 0.09])
    cloudy = np.array([0.45, 0.44, 0.43, 0.48, 0.35, 0.25])
    dark = np.array([0.02, 0.03, 0.02, 0.08, 0.05, 0.03])
    img = np.broadcast_to(clear[:, None, None], (6, 60, 60)).copy()
    img[:, 5:15, 5:15] = cloudy[:, None, None]
    img[:, 20:25, 5:15] = dark[:, None, None]  # shadow 50-100 m from the cloud
    img[:, 50:55, 50:55] = dark[:, None, None]  # dark patch far from any cloud
    res = (
        cloud_mask(
            band_cube(img[None], bands, chunk=30), shadow_search_m=200.0, shadow_buffer_m=0.0
        )
        .compute()
        .values[0]
    )
    assert (res[5:15, 5:15] == CloudClass.CLOUD).all()
    assert (res[20:25, 5:15] == CloudClass.SHADOW).all()
    assert (res[50:55, 50:55] == CloudClass.CLEAR).all()


def test_bad_inputs():
    s2 = band_cube(np.zeros((1, 2, 8, 8)), ["B02", "B03"], chunk=8)
    with pytest.raises(BadInputError, match=r"B04.*bands present.*B02"):
        cloud_mask(s2)
    with pytest.raises(BadInputError, match="dims"):
        cloud_mask(s2.isel(time=0))
    with pytest.raises(BadInputError, match="cloud_buffer_m"):
        cloud_mask(band_cube(np.zeros((1, 1, 8, 8)), ["SCL"], chunk=8), cloud_buffer_m=-1)


#: TOA reflectance of B02, B03, B04, B08, B11, B12 (0..1): fresh snow (bright in the visible,
#: absorbing at 1.6 and 2.2 um), a calm lake, a water cloud, bright dry sand, green crops.
SNOW = [0.85, 0.83, 0.80, 0.70, 0.08, 0.06]
LAKE = [0.07, 0.06, 0.04, 0.02, 0.01, 0.005]
CLOUD = [0.50, 0.50, 0.50, 0.50, 0.40, 0.30]
SAND = [0.20, 0.28, 0.35, 0.40, 0.50, 0.45]
CROPS = [0.03, 0.06, 0.04, 0.35, 0.18, 0.08]


def test_snow_from_scl_and_from_the_spectral_rules():
    scl = np.full((1, 1, 20, 20), 4.0)
    scl[0, 0, :, 10:] = 11  # snow
    scl[0, 0, 5:7, 15:17] = 9  # a cloud over the snow, grown by its buffer
    res = cloud_mask(band_cube(scl, ["SCL"], chunk=20)).values[0]
    assert (res[:, :10] == CloudClass.CLEAR).all()
    assert res[0, 19] == CloudClass.SNOW and res[15, 12] == CloudClass.SNOW
    assert res[5, 15] == CloudClass.CLOUD and res[4, 15] == CloudClass.CLOUD  # precedence

    img = np.empty((6, 40, 50))
    for i, spectrum in enumerate((SNOW, LAKE, CLOUD, SAND, CROPS)):
        img[:, :, 10 * i : 10 * i + 10] = np.array(spectrum)[:, None, None]
    s2 = band_cube(img[None], list(SPECTRAL_BANDS), chunk=40)
    res = cloud_mask(s2, cloud_buffer_m=0.0).compute().values[0]
    assert (res[:, :10] == CloudClass.SNOW).all()
    assert (res[:, 20:30] == CloudClass.CLOUD).all()  # a water cloud is not snow (NDSI 0.11)
    for cols in (slice(10, 20), slice(30, 40), slice(40, 50)):  # water, sand, crops
        assert (res[:, cols] == CloudClass.CLEAR).all()
    tiled = cloud_mask(band_cube(img[None], list(SPECTRAL_BANDS), chunk=16), cloud_buffer_m=0.0)
    np.testing.assert_array_equal(tiled.compute().values[0], res)


def test_no_snow_on_the_real_scenes(eolearn):
    # REAL: the five eo-learn L1C scenes (July-September, thick and thin cloud among them): the
    # snow tests find no pixel (largest NDSI 0.07), before or after the cloud precedence.
    scenes, _ = eolearn
    res = cloud_mask(band_cube(scenes, L1C_BANDS, chunk=101)).compute().values
    assert not (res == CloudClass.SNOW).any()
