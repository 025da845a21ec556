"""GeoTIFF inputs of `terrapipe stage`: the CRS and the size are checked on the header, before any
pixel is read; a grid mismatch names the file and what differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import geotiff
from pipelines.errors import BadInputError
from pipelines.testing.scenes import write_geotiff

BANDS = ["B02", "B03", "B04", "B08"]


def _s2(path: Path, **kwargs) -> Path:
    return write_geotiff(path, np.full((4, 8, 8), 1000, "uint16"), BANDS, **kwargs)


def _no_pixel_reads(monkeypatch) -> None:
    """Make any pixel read fail the test: the checks must come from the header alone."""
    import rasterio.io

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were read")

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", refuse)


def test_an_input_in_degrees_is_refused_before_reading(tmp_path, monkeypatch):
    path = _s2(tmp_path / "wgs84.tif", crs="EPSG:4326", origin=(114.0, 34.6), pixel_m=0.0001)
    _no_pixel_reads(monkeypatch)
    with pytest.raises(BadInputError, match="projected CRS") as info:
        geotiff.read_optical([path])
    assert info.value.field == "--s2" and info.value.value == str(path)
    assert "EPSG:4326" in str(info.value)


def test_earth_engine_band_names_are_read_as_the_stages_name_them(tmp_path):
    """Earth Engine exports name S2 bands without the zero padding (B2, B8); B8A keeps its
    name; two descriptions naming one band are refused."""
    assert [geotiff.canonical_band(n) for n in ("B2", "b08", " B8A ", "B08A", "B12", "vh")] == [
        "B02",
        "B08",
        "B8A",
        "B8A",
        "B12",
        "VH",
    ]
    gee = write_geotiff(
        tmp_path / "gee.tif", np.full((4, 8, 8), 1000, "uint16"), ["B2", "B3", "B4", "B8"]
    )
    assert list(geotiff.read_optical([gee])["band"].values) == BANDS
    twice = write_geotiff(tmp_path / "twice.tif", np.ones((2, 8, 8), "uint16"), ["B2", "B02"])
    with pytest.raises(BadInputError, match="each band once") as info:
        geotiff.read_optical([twice])
    assert info.value.value == str(twice)


def test_bands_without_descriptions_are_read_by_the_names_given_in_file_order(tmp_path):
    """A GeoTIFF whose bands have no descriptions (a band stack cut with gdal_translate, a
    13-band L1C export) is refused by name unless the bands are named in the file's order; the
    names given are counted against the file's bands."""
    l1c = [f"B{i}" for i in range(1, 9)] + ["B8A", "B9", "B10", "B11", "B12"]
    data = (np.arange(13, dtype="uint16")[:, None, None] + 1000) * np.ones((1, 8, 8), "uint16")
    bare = write_geotiff(tmp_path / "bare.tif", data, [])
    with pytest.raises(BadInputError, match="name the bands in order") as info:
        geotiff.read_optical([bare])
    assert info.value.field == "--s2" and info.value.value == str(bare)
    names = geotiff.parse_band_names(",".join(l1c), "--bands")
    assert names[:9] == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A")
    got = geotiff.read_optical([bare], band_names=names)
    assert list(got["band"].values) == list(names)
    np.testing.assert_allclose(got.sel(band="B04").values, 0.1003)
    with pytest.raises(BadInputError, match="13 bands") as info:
        geotiff.read_optical([bare], band_names=("B02", "B03", "B04", "B08"))
    assert info.value.value == str(bare)
    sar = write_geotiff(tmp_path / "sar.tif", np.full((2, 8, 8), -15.0, "float32"), [])
    assert list(geotiff.read_sar([sar], band_names=("VV", "VH"))["band"].values) == ["VV", "VH"]
    for bad in ("B02,B2", "", "B02,,B04"):
        with pytest.raises(BadInputError) as info:
            geotiff.parse_band_names(bad, "--scene-bands")
        assert info.value.field == "--scene-bands" and info.value.value == bad


def test_a_comparison_of_pixels_reads_a_scene_in_degrees(tmp_path):
    """``any_crs`` (the super-resolution evaluation's scenes): a geographic CRS is read as it
    is, the same pixels as the projected file."""
    projected = _s2(tmp_path / "utm.tif")
    degrees = _s2(tmp_path / "wgs84.tif", crs="EPSG:4326", origin=(114.0, 34.6), pixel_m=0.0001)
    got = geotiff.read_optical([degrees], "--scene", any_crs=True)
    np.testing.assert_array_equal(got.values, geotiff.read_optical([projected]).values)


def test_an_input_too_large_is_refused_before_reading(tmp_path, monkeypatch):
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "huge.tif"
    side = 20_000  # 400 M pixels; the file stays tiny (no block is written)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=1,
        dtype="float32",
        crs="EPSG:32650",
        transform=from_origin(300000, 3800000, 10, 10),
        tiled=True,
        sparse_ok=True,
    ) as dst:
        dst.set_band_description(1, "DEM")
    assert path.stat().st_size < 10_000_000
    _no_pixel_reads(monkeypatch)
    with pytest.raises(BadInputError, match="at most") as info:
        geotiff.read_dem(path)
    assert info.value.field == "--dem" and "20000 x 20000" in str(info.value)


def test_a_grid_mismatch_names_the_file_and_what_differs(tmp_path):
    first = _s2(tmp_path / "a.tif")
    shifted = _s2(tmp_path / "b.tif", origin=(465191.05, 5080254.63))
    with pytest.raises(BadInputError) as info:
        geotiff.read_optical([first, shifted])
    message = str(info.value)
    assert info.value.value == str(shifted) and str(first) in message
    assert "transform" in message and "shape" not in message.partition("it has")[2]

    dem = write_geotiff(tmp_path / "dem.tif", np.zeros((1, 6, 8), "float32"), ["DEM"])
    arrays = {"s2": geotiff.read_optical([first]), "dem": geotiff.read_dem(dem)}
    with pytest.raises(BadInputError) as info:
        geotiff.check_same_grid(arrays)
    message = str(info.value)
    assert info.value.field == "--dem" and info.value.value == str(dem)
    assert "shape (6, 8) instead of (8, 8)" in message and str(first) in message


def test_stage_cli_on_a_corrupt_data_block_exits_2_naming_the_files(tmp_path, capsys):
    import rasterio

    from pipelines.cli import EXIT_BAD_INPUT, main

    rng = np.random.default_rng(0)
    data = (rng.random((2, 64, 64)) * -20).astype("float32")
    path = tmp_path / "s1.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=2,
        dtype="float32",
        crs="EPSG:32650",
        transform=rasterio.transform.from_origin(300000, 3800000, 10, 10),
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
    ) as dst:
        dst.write(data)
        dst.descriptions = ("VV", "VH")
    with rasterio.open(path) as src:  # the header stays intact, one tile's bytes do not
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = b"\xff" * size
    path.write_bytes(bytes(raw))
    out = tmp_path / "w.tif"
    assert main(["stage", "water_mask", "--s1", str(path), "--out", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "corrupt" in err and "s1.tif" in err and err.strip().count("\n") == 0
    assert not out.exists()


def test_sentinel1_in_linear_units_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    power = rng.gamma(4.4, 0.05 / 4.4, (2, 16, 16)).astype("float32")  # linear gamma0 ~0.05
    linear = write_geotiff(tmp_path / "power.tif", power, ["VV", "VH"])
    with pytest.raises(BadInputError, match=r"all >= 0.*10 \* log10") as info:
        geotiff.read_sar([linear])
    assert info.value.field == "--s1" and info.value.value == str(linear)
    db = write_geotiff(tmp_path / "db.tif", 10 * np.log10(power), ["VV", "VH"])
    assert float(geotiff.read_sar([db]).max()) < 0


def test_sentinel2_digital_numbers_written_as_floats_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    refl = rng.uniform(0.02, 0.4, (4, 16, 16)).astype("float32")
    dn = write_geotiff(tmp_path / "dn.tif", refl * 10_000, BANDS)
    with pytest.raises(BadInputError, match="divide by 10000") as info:
        geotiff.read_optical([dn])
    assert info.value.field == "--s2" and info.value.value == str(dn)
    ok = write_geotiff(tmp_path / "refl.tif", refl, BANDS)
    np.testing.assert_allclose(geotiff.read_optical([ok]).values[0], refl)
    ints = write_geotiff(tmp_path / "ints.tif", np.rint(refl * 10_000).astype("uint16"), BANDS)
    np.testing.assert_allclose(geotiff.read_optical([ints]).values[0], refl, atol=5.1e-5)


def test_sentinel2_band_scales_and_offsets_declared_by_the_file_are_applied(tmp_path):
    """Digital numbers of processing baseline 04.00+ (reflectance + 0.1, x 10000) with GDAL's
    band scale 1e-4 and offset -0.1: read as reflectance, the SCL band as codes."""
    import rasterio

    rng = np.random.default_rng(2)
    refl = rng.uniform(0.0, 0.4, (4, 16, 16)).astype("float32")
    dn = np.rint((refl + 0.1) * 10_000).astype("uint16")
    scl = np.full((1, 16, 16), 4, "uint16")
    path = write_geotiff(tmp_path / "pb4.tif", np.concatenate([dn, scl]), [*BANDS, "SCL"])
    with rasterio.open(path, "r+") as dst:
        dst.scales = (1e-4,) * 4 + (1.0,)
        dst.offsets = (-0.1,) * 4 + (0.0,)
    got = geotiff.read_optical([path])
    np.testing.assert_allclose(got.sel(band=BANDS).values[0], refl, atol=5.1e-5)
    assert (got.sel(band="SCL").values == 4).all()
