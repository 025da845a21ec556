"""Loaders: lazy grids from real catalog items (no pixel read), exact values from builder COGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from odc.geo.geobox import GeoBox

from pipelines import load
from pipelines.errors import BadInputError, NoScenesError
from pipelines.grid import TileGrid
from pipelines.inputs import get_input
from pipelines.load import (
    load_dem,
    load_input,
    load_s1,
    load_s2,
    normalise_item,
    s2_radiometry,
)


def _items(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _utm_geobox(item: dict, key: str, dx: float = 10240, size: float = 10240) -> GeoBox:
    t = item["assets"][key].get("proj:transform") or item["properties"]["proj:transform"]
    epsg = item["properties"]["proj:epsg"]
    x0, y0 = t[2] + dx, t[5] - dx
    return GeoBox.from_bbox((x0, y0 - size, x0 + size, y0), crs=f"EPSG:{epsg}", resolution=10)


def test_real_mpc_time_series_builds_lazily(real_data: Path) -> None:
    fc = json.loads((real_data / "stac-json/odc-stac/site2-2020_jun_jul-35MNM.geojson").read_text())
    items = fc["features"]
    gb = _utm_geobox(items[0], "B04")
    da = load_s2(items, gb, chunksize=512)
    assert da.dims == ("time", "band", "y", "x")
    assert list(da.band.values) == ["B02", "B03", "B04", "B08", "SCL"]
    assert da.dtype == np.float32 and da.shape[2:] == (1024, 1024)
    assert da.chunks[2] == (512, 512)
    assert da.sizes["time"] == len({i["properties"]["datetime"][:10] for i in items})
    np.testing.assert_allclose(da.x.values, gb.coords["x"].values)
    np.testing.assert_allclose(da.y.values, gb.coords["y"].values)
    assert da.x.values[0] == gb.boundingbox.left + 5  # pixel centres
    assert da.odc.geobox == gb
    ids = ",".join(da.item_ids.values).split(",")
    assert sorted(ids) == sorted(i["id"] for i in items)
    assert np.all(np.diff(da.time.values) > np.timedelta64(0))


def test_real_earth_search_items_on_a_tile(real_data: Path) -> None:
    items = _items(real_data / "stac-json/items/earth-search-v1/sentinel-2-l2a")
    items = [i for i in items if i["properties"]["proj:epsg"] == 32724]
    tile = TileGrid("EPSG:32724", tile_px=256).tile(238, 3691)  # at the 24MWV/24MXV seam
    da = load_s2(items, tile.geobox, bands=("B04", "B08"), with_scl=False)
    assert list(da.band.values) == ["B04", "B08"] and da.shape[1:] == (2, 256, 256)
    assert da.sizes["time"] == 1  # all of 2025-07-31: one mosaic
    # only the two tiles that meet at the seam touch the grid; the others are dropped
    assert set(da.item_ids.values[0].split(",")) == {
        "S2B_24MWV_20250731_0_L2A",
        "S2B_24MXV_20250731_0_L2A",
    }


def test_real_s1_rtc_and_dem_items_build(real_data: Path) -> None:
    s1 = _items(real_data / "stac-json/items/mpc/sentinel-1-rtc")
    s1 = [i for i in s1 if i["properties"]["proj:epsg"] == 32633]
    gb = GeoBox.from_bbox((500000, 3800000, 510240, 3810240), crs="EPSG:32633", resolution=10)
    da = load_s1(s1, gb)
    assert da.dims == ("time", "band", "y", "x") and list(da.band.values) == ["VV", "VH"]
    assert da.dtype == np.float32 and da.sizes["time"] == 1 and da.attrs["units"] == "dB"
    dem = _items(real_data / "stac-json/items/earth-search-v1/cop-dem-glo-30")
    polar = GeoBox.from_bbox((-9000, -60000, 0, -51000), crs="EPSG:3031", resolution=30)
    h = load_dem(dem, polar)
    assert h.dims == ("y", "x") and h.dtype == np.float32 and h.shape == polar.shape


def test_hh_only_s1_asks_for_vv_is_bad_input(real_data: Path) -> None:
    items = _items(real_data / "stac-json/items/earth-search-v1/sentinel-1-grd")
    gb = GeoBox.from_bbox((0, 0, 100, 100), crs="EPSG:32643", resolution=10)
    with pytest.raises(BadInputError, match="HH"):
        load_s1(items, gb)


def test_radiometry_rules(real_data: Path) -> None:
    es = _items(real_data / "stac-json/items/earth-search-v1/sentinel-2-l2a")[0]
    # earthsearch:boa_offset_applied: Earth Search harmonised the pixels; the -0.1 its items
    # still declare in raster:bands describes the source product (Element84/earth-search#71).
    assert es["properties"]["earthsearch:boa_offset_applied"] is True
    assert es["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    assert s2_radiometry(es, "B04") == (0.0001, 0.0, 0)
    assert s2_radiometry(es, "SCL") == (1.0, 0.0, 0)
    c1 = _items(real_data / "stac-json/items/earth-search-v1/sentinel-2-c1-l2a")[0]
    assert "earthsearch:boa_offset_applied" not in c1["properties"]  # Collection 1: not harmonised
    assert s2_radiometry(c1, "B04") == (0.0001, -0.1, 0)
    unflagged = json.loads(json.dumps(es))
    unflagged["properties"]["earthsearch:boa_offset_applied"] = False
    assert s2_radiometry(unflagged, "B04") == (0.0001, -0.1, 0)
    mpc = real_data / "stac-json/items/mpc/sentinel-2-l2a"
    new = json.loads(
        (mpc / "S2B_MSIL2A_20240419T095549_R122_T46XER_20240419T124342.json").read_text()
    )
    old = json.loads(
        (mpc / "S2A_MSIL2A_20190101T000001_R116_T59ULV_20201007T214655.json").read_text()
    )
    assert s2_radiometry(new, "B02") == (0.0001, -0.1, 0)  # baseline 05.10, nothing declared
    assert s2_radiometry(old, "B02") == (0.0001, 0.0, 0)  # baseline 02.12
    v0 = _items(real_data / "stac-json/items/earth-search-v0/sentinel-s2-l2a-cogs")[0]
    assert s2_radiometry(v0, "B02")[1] == 0.0  # sentinel:boa_offset_applied: pixels harmonised


def test_proj_code_gives_epsg() -> None:
    item = {"id": "x", "properties": {"proj:code": "EPSG:32633"}, "assets": {"a": {}}}
    assert normalise_item(item)["properties"]["proj:epsg"] == 32633


def test_no_items_is_no_scenes() -> None:
    gb = GeoBox.from_bbox((0, 0, 100, 100), crs="EPSG:32633", resolution=10)
    with pytest.raises(NoScenesError):
        load_s2([], gb)


# --- values, from the builder archive ---------------------------------------------------------


def _by_id(mini_archive, collection: str) -> dict[str, dict]:
    return {i["id"]: i for i in mini_archive.items[collection]}


def test_s2_values_scale_offset_nodata(mini_archive) -> None:
    items = _by_id(mini_archive, "sentinel-2-l2a")
    gb = mini_archive.geobox
    pick = [items["MPC_20240611"], items["MPC_20180621"], items["CODE_20240701"]]
    da = load_s2(pick, gb).compute()
    assert [str(t)[:10] for t in da.time.values] == ["2018-06-21", "2024-06-11", "2024-07-01"]
    for t, item_id, offset in ((0, "MPC_20180621", 0.0), (1, "MPC_20240611", -0.1),
                               (2, "CODE_20240701", -0.1)):  # fmt: skip
        dn = mini_archive.dn[item_id]
        for b in ("B02", "B08"):
            got = da.sel(band=b).isel(time=t).values
            want = dn[b].astype("float32") * np.float32(1e-4) + np.float32(offset)
            assert np.isnan(got[:4, :4]).all()  # DN 0 = nodata
            np.testing.assert_allclose(got[4:, 4:], want[4:, 4:], atol=1e-6)
        scl = da.sel(band="SCL").isel(time=t).values
        np.testing.assert_array_equal(scl[4:, 4:], dn["SCL"][4:, 4:].astype("float32"))
        assert np.isnan(scl[:4, :4]).all()


def test_same_day_tiles_are_mosaicked(mini_archive) -> None:
    items = _by_id(mini_archive, "sentinel-2-l2a")
    da = load_s2([items["ES_E_20240601"], items["ES_W_20240601"]], mini_archive.geobox)
    assert da.sizes["time"] == 1
    assert da.item_ids.values[0] == "ES_W_20240601,ES_E_20240601"
    red = da.sel(band="B04").isel(time=0).values
    west, east = mini_archive.dn["ES_W_20240601"]["B04"], mini_archive.dn["ES_E_20240601"]["B04"]
    # the grid's left half is the west tile's right half, its right half the east tile's left half
    np.testing.assert_allclose(red[4:, :32], west[4:, 32:] * 1e-4 - 0.1, atol=1e-6)
    np.testing.assert_allclose(red[4:, 36:], east[4:, 4:32] * 1e-4 - 0.1, atol=1e-6)
    assert np.isnan(red[:4, 32:36]).all()  # the east tile's nodata corner


def test_s1_db_and_nodata(mini_archive) -> None:
    (item,) = mini_archive.items["sentinel-1-rtc"]
    da = load_s1([item], mini_archive.geobox).compute()
    lin = mini_archive.dn["S1_20240603"]
    vv = da.sel(band="VV").isel(time=0).values
    assert np.isnan(vv[0, :8]).all() and np.isnan(vv[1, :8]).all()
    np.testing.assert_allclose(vv[2:], 10 * np.log10(lin["VV"][2:]), rtol=1e-5)
    np.testing.assert_allclose(
        da.sel(band="VH").isel(time=0).values, 10 * np.log10(lin["VH"]), rtol=1e-5
    )


def test_dem_is_reprojected_bilinear(mini_archive) -> None:
    (item,) = mini_archive.items["cop-dem-glo-30"]
    h = load_dem([item], mini_archive.geobox).compute()
    assert h.dims == ("y", "x") and not np.isnan(h.values).any()
    src = mini_archive.dn["DEM_N45E014"]["DEM"]
    assert src.min() <= h.values.min() and h.values.max() <= src.max()
    # the source is a plane in lon/lat: heights rise eastward and southward on the grid too
    assert (np.diff(h.values.mean(axis=0)) > 0).all() and (np.diff(h.values.mean(axis=1)) > 0).all()


def test_missing_band_names_item(mini_archive) -> None:
    item = dict(mini_archive.items["sentinel-2-l2a"][0])
    with pytest.raises(BadInputError) as err:
        load_s2([item], mini_archive.geobox, bands=("B05",))
    assert item["id"] in str(err.value) and "B05" in str(err.value)


# --- load_input: dispatch through the input table ----------------------------------------------


@pytest.mark.parametrize("name", ["s1", "s1_pre", "s1_post"])
def test_load_input_sar_equals_load_s1(mini_archive, name: str) -> None:
    items = mini_archive.items["sentinel-1-rtc"]
    got = load_input(name, items, mini_archive.geobox, chunksize=32)
    assert got.chunks is not None and got.chunks[2] == (32, 32)
    assert got.compute().identical(load_s1(items, mini_archive.geobox, chunksize=32).compute())


def test_load_input_dem_equals_load_dem(mini_archive) -> None:
    items = mini_archive.items["cop-dem-glo-30"]
    got = load_input(get_input("dem"), items, mini_archive.geobox).compute()
    assert got.identical(load_dem(items, mini_archive.geobox).compute())


def test_load_input_s2_reads_the_spec_bands_and_scl(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(load, "load_s2", lambda *a, **kw: calls.append((a, kw)))
    gb = GeoBox.from_bbox((0, 0, 100, 100), crs="EPSG:32633", resolution=10)
    load_input("s2", ["item"], gb, chunksize=256, sign="planetary_computer")
    assert calls == [
        (
            (["item"], gb),
            {
                "bands": ("B02", "B03", "B04", "B08", "B11", "B12"),
                "with_scl": True,
                "chunksize": 256,
                "sign": "planetary_computer",
            },
        )
    ]


def test_load_input_without_loader_or_unknown_is_bad_input() -> None:
    gb = GeoBox.from_bbox((0, 0, 100, 100), crs="EPSG:32633", resolution=10)
    with pytest.raises(BadInputError, match="permanent_water has no catalog loader"):
        load_input("permanent_water", [], gb)
    with pytest.raises(BadInputError, match="'s1_pre', 's1_post', 'dem'"):
        load_input("s3", [], gb)


def test_radiometry_per_item_and_band_in_any_chunking() -> None:
    """Each (item, band) gets its own scale, offset and nodata, whatever chunks hold them."""
    import dask.array as dsa
    import xarray as xr

    from pipelines.load import _apply_radiometry

    rng = np.random.default_rng(0)
    raw_np = rng.integers(0, 5, size=(3, 4, 6, 5)).astype("float32")
    scales = rng.uniform(0.5, 2.0, size=(3, 4))
    offsets = rng.uniform(-1.0, 1.0, size=(3, 4))
    nodata = [[0, None, 1, 2], [None, 0, 0, 3], [4, 4, None, 0]]
    items = [
        {
            "id": f"i{t}",
            "_radiometry": {
                f"b{b}": (float(scales[t, b]), float(offsets[t, b]), nodata[t][b]) for b in range(4)
            },
        }
        for t in range(3)
    ]
    want = np.empty_like(raw_np)
    for t in range(3):
        for b in range(4):
            v = raw_np[t, b] * np.float32(scales[t, b]) + np.float32(offsets[t, b])
            if nodata[t][b] is not None:
                v[raw_np[t, b] == nodata[t][b]] = np.nan
            want[t, b] = v
    for chunks in ((1, 1, 6, 5), (2, 3, 4, 5), (3, 4, 6, 5)):
        raw = xr.DataArray(
            dsa.from_array(raw_np, chunks=chunks),
            dims=("time", "band", "y", "x"),
            coords={"id": ("time", [f"i{t}" for t in range(3)])},
        )
        got = _apply_radiometry(raw, items[::-1], [f"b{b}" for b in range(4)]).values
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_uncalibrated_s1_grd_items_are_refused(real_data: Path) -> None:
    """REAL Planetary Computer sentinel-1-grd item (VV, VH: uncalibrated digital numbers in
    radar geometry): refused by name instead of read as backscatter; its RTC twin loads."""
    grd = _items(real_data / "stac-json/items/mpc/sentinel-1-grd")
    dv = [i for i in grd if i["properties"]["sar:polarizations"] == ["VV", "VH"]]
    gb = GeoBox.from_bbox((0, 3_700_000, 10_240, 3_710_240), crs="EPSG:32632", resolution=10)
    with pytest.raises(BadInputError, match=r"sentinel-1-grd.*RTC collection"):
        load_s1(dv, gb)
    rtc = _items(real_data / "stac-json/items/mpc/sentinel-1-rtc")[0]
    dn = json.loads(json.dumps(rtc))
    dn["assets"]["vv"]["raster:bands"][0]["data_type"] = "uint16"
    with pytest.raises(BadInputError, match="uint16 digital numbers"):
        load_s1([dn], gb)
    unprojected = json.loads(json.dumps(rtc))
    for key in ("proj:epsg", "proj:code", "proj:bbox", "proj:transform", "proj:shape"):
        unprojected["properties"].pop(key, None)
    with pytest.raises(BadInputError, match="no projection"):
        load_s1([unprojected], gb)


# --- height above drainage derived from DEM items -----------------------------------------------


def test_height_above_drainage_is_derived_from_dem_items_beyond_the_tile(tmp_path) -> None:
    """A valley in a 30 m DEM (UTM) whose floor lies east of the 10 m tile: the tile's height
    above drainage is the drop to that floor, which the tile itself does not hold (the DEM is
    read with a 1 km margin)."""
    from pipelines.load import derive_input, load_height_above_drainage
    from pipelines.testing.stac import dem_item

    wide = GeoBox.from_bbox((0, 0, 6000, 6000), crs="EPSG:32633", resolution=30)
    yy, xx = np.mgrid[0:200, 0:200]
    # Sides rise 1 m per 30 m pixel from the floor at x = 3,345 m; the floor falls southward.
    heights = (1.0 * np.abs(xx - 111) + 0.02 * (200 - yy)).astype("float32")
    item = dem_item(tmp_path, "DEM_VALLEY", wide, heights)
    tile = GeoBox.from_bbox((2460, 2460, 3180, 3180), crs="EPSG:32633", resolution=10)
    hand = load_height_above_drainage([item], tile, chunksize=36)
    assert hand.dims == ("y", "x") and hand.shape == (72, 72) and hand.dtype == np.float32
    assert hand.chunks == ((36, 36), (36, 36)) and hand.attrs["units"] == "m"
    values = hand.values
    # 29.5 to 5.5 DEM pixels west of the floor, plus the floor's fall along a diagonal path
    # (at most 0.02 m a pixel), less what bilinear resampling rounds off.
    distance_px = np.broadcast_to((3345.0 - tile.coords["x"].values) / 30.0, values.shape)
    assert np.all(values >= distance_px - 0.5) and np.all(values <= distance_px * 1.02 + 0.5)
    assert values[:, :20].min() > 15.0  # the west stands above flood_change's 15 m limit
    # The table's derivation is this loader's.
    derived = derive_input("hand", [item], tile, chunksize=36).values
    np.testing.assert_array_equal(derived, values)
    with pytest.raises(BadInputError, match="derive"):
        derive_input("dem", [item], tile)


def test_an_asf_glo30_hand_item_is_read_as_the_dem_is(tmp_path) -> None:
    """ASF's STAC items of ``glo-30-hand`` (as ASFHyP3/asf-stac's ``create_hand_items.py``
    writes them): one ``data`` asset typed ``image/tiff; application=geotiff`` (no raster
    extension), ``datetime`` null with the DEM's acquisition span as ``start_datetime`` and
    ``end_datetime``, no projection extension. The ``hand`` input reads it on a tile, and the
    plan dates it by its start."""
    from pipelines.engine.plan import item_date
    from pipelines.load import load_input
    from pipelines.testing.stac import dem_item

    wide = GeoBox.from_bbox((11.0, 45.0, 11.05, 45.05), crs="EPSG:4326", resolution=1 / 3600)
    heights = np.linspace(0.0, 40.0, wide.shape[0] * wide.shape[1], dtype="float32")
    item = dem_item(
        tmp_path, "Copernicus_DSM_COG_10_N45_00_E011_00_HAND", wide, heights.reshape(wide.shape)
    )
    props = {k: v for k, v in item["properties"].items() if not k.startswith("proj:")}
    item["properties"] = props | {
        "datetime": None,
        "start_datetime": "2010-12-01T00:00:00Z",
        "end_datetime": "2015-02-01T00:00:00Z",
    }
    item["collection"] = "glo-30-hand"
    item["stac_extensions"] = []
    item["assets"] = {
        "data": {"href": item["assets"]["data"]["href"], "type": "image/tiff; application=geotiff"}
    }
    tile = GeoBox.from_bbox((659000, 4987200, 660000, 4988200), crs="EPSG:32632", resolution=10)
    hand = load_input("hand", [item], tile, chunksize=50)
    values = hand.values
    assert hand.dims == ("y", "x") and values.shape == (100, 100)
    assert np.isfinite(values).all() and 0.0 <= values.min() < values.max() <= 40.0
    assert item_date(item) == "2010-12-01"


def test_a_failed_file_is_found_among_the_items_in_every_form_of_its_link() -> None:
    """A read names the file as it opened it: signed (a SAS token), an s3:// link read over
    HTTPS (aws_public), a GDAL /vsicurl/ path, a local path; the item is found in each."""
    from pipelines.load import asset_item

    def item(item_id: str, *hrefs: str) -> dict:
        return {"id": item_id, "assets": {f"b{k}": {"href": h} for k, h in enumerate(hrefs)}}

    es = item(
        "S2B_33UUP_20240601_0_L2A",
        "s3://sentinel-cogs/sentinel-s2-l2a-cogs/33/U/UP/2024/6/S2B_33UUP_20240601_0_L2A/B04.tif",
        "s3://sentinel-cogs/sentinel-s2-l2a-cogs/33/U/UP/2024/6/S2B_33UUP_20240601_0_L2A/B08.tif",
    )
    other_day = item(
        "S2B_33UUP_20240604_0_L2A",
        "s3://sentinel-cogs/sentinel-s2-l2a-cogs/33/U/UP/2024/6/S2B_33UUP_20240604_0_L2A/B04.tif",
    )
    pc = item("S1A_X", "https://acct.blob.core.windows.net/rtc/S1A_X/vh.tif")
    local = item("demo-1", "/tmp/archive/s2/demo-1/red.tif")
    items = [other_day, es, pc, local]
    key = "sentinel-s2-l2a-cogs/33/U/UP/2024/6/S2B_33UUP_20240601_0_L2A/B04.tif"
    assert asset_item(items, f"https://sentinel-cogs.s3.amazonaws.com/{key}") is es
    assert asset_item(items, f"/vsicurl/https://s3.amazonaws.com/sentinel-cogs/{key}") is es
    signed = "https://acct.blob.core.windows.net/rtc/S1A_X/vh.tif?st=1&se=2&sig=abc"
    assert asset_item(items, signed) is pc
    assert asset_item(items, "/tmp/archive/s2/demo-1/red.tif") is local
    assert asset_item(items, "/tmp/archive/s2/demo-1/B04.tif") is None  # same name elsewhere
    assert asset_item(items, "https://example.com/B04.tif") is None
    assert asset_item([], "/tmp/archive/s2/demo-1/red.tif") is None


def test_a_file_gdal_found_missing_is_read_once_the_cache_is_forgotten(tmp_path) -> None:
    """GDAL remembers for the life of the process that a link answered 404, even once the
    file is there; forget_remote_files clears that, so a redo on a long-lived worker reads it.
    pyogrio's wheel loads a libgdal of its own beside rasterio's: both are cleared."""
    import functools
    import http.server
    import threading

    import numpy as np
    import pyogrio  # noqa: F401  (its own libgdal, as in a worker that imported geopandas)
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.transform import from_origin

    from pipelines.load import _gdal_options, forget_remote_files

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/late/{tmp_path.name}.tif"
    try:
        with rasterio.Env(**_gdal_options()):  # as the stages read
            with pytest.raises(RasterioIOError, match="404"):
                rasterio.open(url)
            (tmp_path / "late").mkdir()
            profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8"}
            transform = from_origin(0, 80, 10, 10)
            path = tmp_path / "late" / f"{tmp_path.name}.tif"
            with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
                dst.write(np.ones((1, 8, 8), "uint8"))
            with pytest.raises(RasterioIOError, match="404"):
                rasterio.open(url)  # remembered
            assert forget_remote_files() >= 2
            with rasterio.open(url) as src:
                assert src.read(1).sum() == 64
    finally:
        server.shutdown()
