"""`terrapipe stage NAME` on GeoTIFFs: real eo-learn Sentinel-2 scenes and synthetic SAR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines.cli import EXIT_BAD_INPUT, main
from pipelines.testing.scenes import write_geotiff
from tests.conftest import L1C_BANDS

#: eo-learn TestEOPatch grid origin (EPSG:32633, 10 m).
ORIGIN = (465181.05, 5080254.63)


def _write(path: Path, data: np.ndarray, names: list[str], crs: str = "EPSG:32633") -> Path:
    """A GeoTIFF on the eo-learn TestEOPatch grid."""
    return write_geotiff(path, data, names, crs=crs, origin=ORIGIN)


def _run(capsys, *args: str) -> dict:
    assert main(["stage", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_haze_index_orders_real_scenes_clear_hazy_cloudy(real_data, tmp_path, capsys):
    scenes = np.load(real_data / "eolearn-testeopatch" / "REFERENCE_SCENES.npy")
    keep = ["B02", "B03", "B04", "B08", "B11", "B12"]
    idx = [L1C_BANDS.index(b) for b in keep]
    index = {}
    for k in range(5):
        # Integer reflectance x 10000, as S2 products ship it.
        dn = np.round(scenes[k][..., idx].transpose(2, 0, 1) * 10000).astype("uint16")
        path = _write(tmp_path / f"k{k}.tif", dn, keep)
        out = _run(capsys, "haze_index", "--s2", str(path), "--out", str(tmp_path / f"h{k}.tif"))
        index[k] = out["dcp_index"][0]
    assert index[0] > index[1] > max(index[2], index[3], index[4])
    with rasterio.open(tmp_path / "h1.tif") as src:
        assert src.crs.to_epsg() == 32633 and "dark_channel" in src.descriptions


def test_bands_named_on_the_command_line_read_a_stack_without_descriptions(
    real_data, tmp_path, capsys
):
    """REAL eo-learn L1C scene as a 13-band GeoTIFF without band descriptions (the layout of a
    band stack cut from the product): `--bands s2=...` names its bands in order, and the stage
    gives what it gives on the same pixels with named bands."""
    scene = np.load(real_data / "eolearn-testeopatch" / "REFERENCE_SCENES.npy")[1]
    dn = np.round(scene.transpose(2, 0, 1) * 10000).astype("uint16")
    bare = _write(tmp_path / "stack.tif", dn, [])
    named = _write(tmp_path / "named.tif", dn, L1C_BANDS)
    code = main(["stage", "haze_index", "--s2", str(bare), "--out", str(tmp_path / "x.tif")])
    assert code == EXIT_BAD_INPUT and "descriptions" in capsys.readouterr().err
    bands = "s2=" + ",".join(L1C_BANDS)
    args = ["haze_index", "--s2", str(bare), "--bands", bands, "--out", str(tmp_path / "a.tif")]
    got = _run(capsys, *args)
    want = _run(capsys, "haze_index", "--s2", str(named), "--out", str(tmp_path / "b.tif"))
    assert got["dcp_index"] == want["dcp_index"]
    code = main(["stage", "haze_index", "--s2", str(bare), "--bands", "dem=DEM", "--out", "y"])
    assert code == EXIT_BAD_INPUT and "--bands" in capsys.readouterr().err


def test_dehaze_writes_a_cog_with_the_input_grid(real_data, tmp_path, capsys):
    from rio_cogeo.cogeo import cog_validate

    scenes = np.load(real_data / "eolearn-testeopatch" / "REFERENCE_SCENES.npy")
    # Without SCL the cloud mask upstream of dehaze uses spectral rules, which need SWIR.
    keep = ["B02", "B03", "B04", "B08", "B11", "B12"]
    refl = scenes[1][..., [L1C_BANDS.index(b) for b in keep]].transpose(2, 0, 1).astype("float32")
    path = _write(tmp_path / "hazy.tif", refl, keep)
    out_path = tmp_path / "clear.tif"
    out = _run(capsys, "dehaze", "--s2", str(path), "--out", str(out_path))
    assert out["stage"] == "dehaze"
    assert cog_validate(str(out_path))[0]
    with rasterio.open(out_path) as src, rasterio.open(path) as ref:
        assert src.transform.almost_equals(ref.transform, precision=1e-6)
        assert list(src.descriptions) == ["B02", "B03", "B04", "B08"]


def test_water_and_flood_on_synthetic_sar(tmp_path, capsys):
    rng = np.random.default_rng(3)
    shape = (120, 120)
    water = np.zeros(shape, bool)
    water[:, :30] = True
    flood = np.zeros(shape, bool)
    flood[40:90, 40:100] = True

    def sar(mask: np.ndarray) -> np.ndarray:
        vv = np.where(mask, 10 ** (-2.2), 10 ** (-0.9)) * rng.gamma(4.4, 1 / 4.4, shape)
        vh = np.where(mask, 10 ** (-2.8), 10 ** (-1.6)) * rng.gamma(4.4, 1 / 4.4, shape)
        return (10 * np.log10(np.stack([vv, vh]))).astype("float32")

    pre = [_write(tmp_path / f"pre{i}.tif", sar(water), ["VV", "VH"]) for i in range(2)]
    post = _write(tmp_path / "post.tif", sar(water | flood), ["VV", "VH"])
    dem = _write(tmp_path / "dem.tif", np.full((1, *shape), 50.0, "float32"), ["DEM"])
    out = _run(capsys, "water_mask", "--s1", str(post), "--out", str(tmp_path / "w.tif"))
    true_fraction = (water | flood).mean()
    assert out["water_mask_fractions"]["2"] == pytest.approx(true_fraction, abs=0.05)
    # With a DEM whose western half is a steep slope, the water there is land.
    slope = np.full((1, *shape), 50.0, "float32")
    slope[0, :, :60] += 2.0 * np.arange(60, dtype="float32")  # 2 m per 10 m pixel: 11 degrees
    steep = _write(tmp_path / "steep.tif", slope, ["DEM"])
    out = _run(
        capsys,
        "water_mask",
        "--s1",
        str(post),
        "--dem",
        str(steep),
        "--out",
        str(tmp_path / "ws.tif"),
    )
    east = (water | flood)[:, 61:].sum() / water.size
    assert out["water_mask_fractions"]["2"] == pytest.approx(east, abs=0.03)
    args = ["flood_change", "--out", str(tmp_path / "f.tif"), "--dem", str(dem)]
    for p in pre:
        args += ["--s1-pre", str(p)]
    out = _run(capsys, *args, "--s1-post", str(post))
    flooded = out["flood_change_fractions"]["2"]
    assert flooded == pytest.approx(flood.mean(), abs=0.05)
    # A height above drainage product 20 m over the flood's south half keeps it dry there.
    height = np.zeros((1, *shape), "float32")
    height[0, 65:] = 20.0
    hand = _write(tmp_path / "hand.tif", height, ["HAND"])
    out = _run(capsys, *args, "--s1-post", str(post), "--hand", str(hand))
    north = flood[:65].sum() / flood.size
    assert out["flood_change_fractions"]["2"] == pytest.approx(north, abs=0.03)


def test_stage_cli_rejects_mismatched_grids(tmp_path, capsys):
    a = _write(tmp_path / "a.tif", np.ones((2, 20, 20), "float32"), ["VV", "VH"])
    b = _write(tmp_path / "b.tif", np.ones((2, 21, 20), "float32"), ["VV", "VH"])
    code = main(
        ["stage", "water_mask", "--s1", str(a), "--s1", str(b), "--out", str(tmp_path / "o.tif")]
    )
    assert code == 2
    assert "same grid" in capsys.readouterr().err
