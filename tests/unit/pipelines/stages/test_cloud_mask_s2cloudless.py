"""cloud_mask_s2cloudless: the s2cloudless model on real L1C scenes, windows in metres, bad input,
and `terrapipe stage cloud_mask --method s2cloudless`."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import rasterio

from pipelines.classes import CloudClass
from pipelines.cli import main
from pipelines.errors import BadInputError
from pipelines.inputs import get_input
from pipelines.stages import get_stage
from pipelines.stages.cloud_prob import (
    MODEL_BANDS,
    PROBABILITY_NODATA,
    cloud_mask_s2cloudless,
)
from pipelines.testing.scenes import band_cube, write_geotiff
from tests.conftest import L1C_BANDS


@pytest.fixture(scope="module")
def eolearn(real_data):
    """The 5 real L1C scenes (5, 13, y, x), and eo-learn's CLM (bool) and CLP (0-1) of their
    dates (Sentinel Hub's s2cloudless products, not human labels)."""
    root = real_data / "eolearn-testeopatch"
    scenes = np.load(root / "REFERENCE_SCENES.npy")
    meta = json.loads((root / "REFERENCE_SCENES.dates.json").read_text())
    stamps = json.loads((root / "TestEOPatch" / "timestamps.json").read_text())
    assert meta["band_order"] == L1C_BANDS
    idx = [stamps.index(s["timestamp"]) for s in meta["scenes"]]
    clm = np.load(root / "TestEOPatch" / "mask" / "CLM.npy")[..., 0][idx].astype(bool)
    clp = np.load(root / "TestEOPatch" / "data" / "CLP.npy")[..., 0][idx]
    return scenes.transpose(0, 3, 1, 2), clm, clp


def _model_bands(scenes: np.ndarray) -> np.ndarray:
    return scenes[:, [L1C_BANDS.index(b) for b in MODEL_BANDS]]


def test_registered_beside_the_rules():
    stage = get_stage("cloud_mask_s2cloudless")
    assert stage.inputs == ("s2_l1c",)
    # The production input loads the model's bands and B03 (snow), without an L2A scene
    # classification.
    spec = get_input("s2_l1c")
    assert set(spec.bands) == {*MODEL_BANDS, "B03"} and len(spec.bands) == 11
    assert not spec.scene_classes and spec.loader == "s2"
    assert stage.product_vars == ("cloud_mask", "cloud_probability")
    # Snow (5) where the scene holds B03 as well, as the production input does.
    assert dict(stage.classes or {}) == {0: "nodata", 1: "clear", 2: "cloud", 5: "snow"}


def test_agrees_with_eolearn_clm_and_clp_on_real_scenes(eolearn):
    scenes, clm, clp = eolearn
    out = cloud_mask_s2cloudless(band_cube(scenes, L1C_BANDS, chunk=101))
    assert isinstance(out["cloud_mask"].data, da.Array)
    ds = out.compute()
    tiled = cloud_mask_s2cloudless(band_cube(scenes, L1C_BANDS, chunk=40)).compute()
    np.testing.assert_array_equal(ds["cloud_mask"].values, tiled["cloud_mask"].values)
    np.testing.assert_array_equal(ds["cloud_probability"].values, tiled["cloud_probability"].values)
    pred = ds["cloud_mask"].values == CloudClass.CLOUD
    # Measured (60 m cells, this grid): accuracy 0.9999, cloud F1 0.9999 (k0 thick cloud, k1
    # thin cloud, k2-k4 clear); every 10 m pixel: 0.9997 and 0.9996;
    # the rest is k1's thin-cloud edge. The bar leaves room for LightGBM build differences.
    assert (pred == clm).mean() >= 0.98
    tp = np.sum(pred & clm)
    assert 2 * tp / (2 * tp + np.sum(pred ^ clm)) >= 0.98
    assert pred[2:].mean() < 0.01
    # Probability against eo-learn's CLP: measured mean absolute difference 0.019 (percent
    # rounding included; 0.020 at every pixel), correlation 0.994.
    prob = ds["cloud_probability"].values.astype("float32") / 100
    assert np.abs(prob - clp).mean() <= 0.04
    assert np.corrcoef(prob.ravel(), clp.ravel())[0, 1] >= 0.98


def test_same_mask_as_the_s2cloudless_package(eolearn):
    from s2cloudless import S2PixelCloudDetector

    scenes, _, _ = eolearn
    # At 10 m the defaults in metres are the package's 4 px average and 2 px dilation.
    ref = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2).get_cloud_masks(
        _model_bands(scenes).transpose(0, 2, 3, 1)
    )
    cube = band_cube(scenes, L1C_BANDS, chunk=101)
    ours = cloud_mask_s2cloudless(cube, processing_m=None)["cloud_mask"].values
    np.testing.assert_array_equal(ours == CloudClass.CLOUD, ref == 1)


def _one_cloud(eolearn, size: int = 40) -> np.ndarray:
    """A (1, 10, size, size) clear real spectrum (k4) with a 6x6 block of thick cloud (k0)."""
    scenes, _, _ = eolearn
    bands = _model_bands(scenes)
    img = np.broadcast_to(bands[4][:, 50:51, 50:51], (10, size, size)).copy()
    img[:, 17:23, 17:23] = bands[0][:, 50:51, 50:51]
    return img[None]


def test_windows_are_metres_converted_with_the_pixel_size(eolearn):
    img = _one_cloud(eolearn)
    names = list(MODEL_BANDS)
    for pixel_m, grown in ((10.0, 2), (20.0, 1)):
        cube = band_cube(img, names, chunk=40, pixel_m=pixel_m)
        res = cloud_mask_s2cloudless(cube, average_over_m=0.0, dilation_m=20.0, processing_m=None)
        cloud = res["cloud_mask"].values[0] == CloudClass.CLOUD
        assert cloud[17:23, 17:23].all()
        assert cloud[20, 17 - grown] and not cloud[20, 16 - grown]
        assert cloud[23 + grown - 1, 20] and not cloud[23 + grown, 20]


def test_processing_cells_are_aligned_to_the_crs(eolearn):
    scenes, _, _ = eolearn
    thin = scenes[1:2]  # thin cloud: probabilities vary from pixel to pixel
    # Origin on a multiple of 60 m: 6 x 6 cells start at the first pixel.
    origin = (600_000.0, 5_000_040.0)
    cube = band_cube(thin, L1C_BANDS, chunk=40, origin=origin)
    prob = cloud_mask_s2cloudless(cube, processing_m=60.0)["cloud_probability"].values[0]
    cells = prob[:96, :96].reshape(16, 6, 16, 6)
    assert (cells == cells[:, :1, :, :1]).all()  # one value per 6 x 6 cell
    assert len(np.unique(cells[:, 0, :, 0])) > 10
    # A tile starting 50 px (500 m) further east shares every cell it holds whole.
    east = band_cube(thin[..., 50:], L1C_BANDS, chunk=40, origin=(origin[0] + 500.0, origin[1]))
    prob_east = cloud_mask_s2cloudless(east)["cloud_probability"].values[0]
    np.testing.assert_array_equal(prob_east[:, 4:], prob[:, 54:])
    # 20 m pixels: 60 m cells are 3 x 3 pixels.
    coarse = band_cube(thin[..., ::2, ::2], L1C_BANDS, chunk=40, pixel_m=20.0, origin=origin)
    out = cloud_mask_s2cloudless(coarse)
    assert out["cloud_mask"].attrs["processing_m"] == 60.0
    prob20 = out["cloud_probability"].values[0][:48, :48].reshape(16, 3, 16, 3)
    assert (prob20 == prob20[:, :1, :, :1]).all()


def test_nodata_where_a_model_band_is_missing_data(eolearn):
    img = _one_cloud(eolearn)
    img[0, MODEL_BANDS.index("B10"), :5, :5] = np.nan
    ds = cloud_mask_s2cloudless(band_cube(img, list(MODEL_BANDS), chunk=20)).compute()
    assert (ds["cloud_mask"].values[0, :5, :5] == CloudClass.NODATA).all()
    assert (ds["cloud_probability"].values[0, :5, :5] == PROBABILITY_NODATA).all()
    assert (ds["cloud_mask"].values[0, 30:, 30:] == CloudClass.CLEAR).all()
    assert (ds["cloud_probability"].values[0, 30:, 30:] <= 100).all()


def test_bad_inputs_name_the_missing_bands():
    l2a = ["B01", "B02", "B03", "B04", "B05", "B08", "B8A", "B09", "B11", "B12", "SCL"]
    with pytest.raises(BadInputError, match=r"B10.*L2A scene.*L1C") as err:
        cloud_mask_s2cloudless(band_cube(np.zeros((1, len(l2a), 8, 8)), l2a, chunk=8))
    assert "'B10'" in str(err.value) and "B01" in str(err.value)
    six = ["B02", "B03", "B04", "B08", "B11", "B12"]
    with pytest.raises(BadInputError, match=r"B01.*B05.*B8A.*B09.*B10"):
        cloud_mask_s2cloudless(band_cube(np.zeros((1, 6, 8, 8)), six, chunk=8))
    full = band_cube(np.zeros((1, 10, 8, 8)), list(MODEL_BANDS), chunk=8)
    with pytest.raises(BadInputError, match="threshold"):
        cloud_mask_s2cloudless(full, threshold=1.5)
    with pytest.raises(BadInputError, match="dilation_m"):
        cloud_mask_s2cloudless(full, dilation_m=-1.0)
    with pytest.raises(BadInputError, match="processing_m"):
        cloud_mask_s2cloudless(full, processing_m=0.0)


def test_stage_cli_method_s2cloudless(eolearn, tmp_path, capsys):
    scenes, clm, _ = eolearn
    dn = np.round(scenes[0] * 10000).astype("uint16")  # thick cloud, as products ship it
    path = write_geotiff(
        tmp_path / "l1c.tif", dn, L1C_BANDS, crs="EPSG:32633", origin=(465181.05, 5080254.63)
    )
    out = tmp_path / "clm.tif"
    args = ["stage", "cloud_mask", "--method", "s2cloudless", "--s2-l1c", str(path), "--out"]
    assert main([*args, str(out)]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stage"] == "cloud_mask_s2cloudless"
    assert summary["cloud_mask_fractions"][str(int(CloudClass.CLOUD))] >= 0.98 * clm[0].mean()
    with rasterio.open(out) as src:
        assert list(src.descriptions) == ["cloud_mask", "cloud_probability"]
        # classes (0 nodata) and percent (0 a value, 255 nodata) share no nodata code: no tag,
        # so a 0 % pixel is not read as nodata
        assert src.nodata is None
    assert (
        main(["stage", "cloud_mask", "--method", "magic", "--s2-l1c", str(path), "--out", "x"]) != 0
    )
    assert "s2cloudless" in capsys.readouterr().err


def test_file_nodata_is_the_variables_common_code():
    import xarray as xr

    from pipelines.stages.cli import file_nodata

    cls = xr.DataArray(np.zeros((2, 2), "uint8"), dims=("y", "x"))
    pct = cls.copy().assign_attrs(nodata=255)
    both = xr.Dataset({"cloud_mask": cls, "cloud_probability": pct})
    assert file_nodata(both, ["cloud_mask"], np.dtype("uint8")) == 0
    assert file_nodata(both, ["cloud_probability"], np.dtype("uint8")) == 255
    assert file_nodata(both, ["cloud_mask", "cloud_probability"], np.dtype("uint8")) is None
    assert np.isnan(file_nodata(both, ["cloud_mask"], np.dtype("float32")))
