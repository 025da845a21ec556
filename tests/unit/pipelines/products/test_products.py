"""Product writing: cubes by region, COGs, quicklooks, STAC markers, skip/resume, catalog."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from odc.geo.xr import xr_coords
from PIL import Image
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate

from models.registry import model_checksum
from pipelines.bench import peer_write_cog
from pipelines.classes import CloudClass, FloodClass
from pipelines.errors import BadInputError
from pipelines.grid import ProvinceGrid, TileGrid
from pipelines.products import (
    ProductSpec,
    Provenance,
    build_catalog,
    catalog_items,
    catalog_period,
    catalog_url,
    cog_url,
    collection_url,
    cube_url,
    init_cube,
    is_done,
    marker_url,
    open_product,
    outdated,
    period_url,
    quicklook_url,
    read_marker,
    update_catalog,
    write_cog,
    write_quicklook,
    write_tile,
    write_tile_product,
    write_time_values,
)
from pipelines.products import writer as writer_module
from pipelines.products.layout import CATALOG_FILE
from pipelines.products.stac import stale_upstream
from pipelines.stages import get_stage

TILE_PX = 32
PROVINCE = "demo"
PRODUCT = "cloud_mask"
VARIABLES = {
    "cloud": ("uint8", 0, {"long_name": "cloud class", "flag_values": [0, 1, 2, 3, 4]}),
    "prob": ("float32", np.nan, {"long_name": "cloud probability", "units": "1"}),
}
WINDOW_1 = ["2024-05-01", "2024-05-11", "2024-05-21"]
WINDOW_2 = ["2024-06-01", "2024-06-11"]


@dataclass(frozen=True)
class _Stage:
    """The two fields a marker needs from a registry Stage."""

    name: str
    version: str


def _stage(version: str = "1.0.0") -> _Stage:
    return _Stage(name=PRODUCT, version=version)


@pytest.fixture
def pgrid() -> ProvinceGrid:
    grid = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=TILE_PX)
    tiles = tuple(grid.tile(ix, iy) for iy in (401, 400) for ix in (20, 21))
    return ProvinceGrid(grid=grid, tiles=tiles)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def tile_data(tile, times, seed: int, *, lazy: bool = True, scalars: bool = False) -> xr.Dataset:
    """Deterministic per-tile data on the tile geobox: classes 0-4 and probabilities."""
    rng = np.random.default_rng(seed)
    nt = len(times)
    cloud = rng.integers(0, 5, size=(nt, TILE_PX, TILE_PX), dtype="uint8")
    prob = rng.random((nt, TILE_PX, TILE_PX), dtype="float32")
    prob[:, 0, :3] = np.nan
    if lazy:
        cloud, prob = (
            da.from_array(cloud, chunks=(1, 16, 16)),
            da.from_array(prob, chunks=(1, 16, 16)),
        )
    coords = xr_coords(tile.geobox)
    ds = xr.Dataset(
        {"cloud": (("time", "y", "x"), cloud), "prob": (("time", "y", "x"), prob)},
        coords={"time": pd.to_datetime(times).values, "y": coords["y"], "x": coords["x"]},
    )
    if scalars:
        ds["cloud_fraction"] = (ds["cloud"] >= 2).mean(("y", "x"))
    return ds


def _tile_view(ds: xr.Dataset, pgrid: ProvinceGrid, tile) -> xr.Dataset:
    ys, xs = pgrid.region(tile)
    return ds.isel(y=ys, x=xs)


# --- cube -------------------------------------------------------------------------------------


def test_init_cube_metadata_only_with_grid_mapping(store, pgrid):
    url = init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES, {"title": "clouds"})
    assert url == cube_url(store, PROVINCE, PRODUCT)
    # metadata only: no data chunk was written
    assert not os.path.exists(os.path.join(url, "cloud", "c"))
    ds = open_product(store, PROVINCE, PRODUCT)
    assert ds["cloud"].dims == ("time", "y", "x")
    assert ds["cloud"].shape == (3, 2 * TILE_PX, 2 * TILE_PX)
    assert ds["cloud"].data.chunksize == (1, TILE_PX, TILE_PX)
    assert ds["cloud"].dtype == np.uint8 and int(ds["cloud"].max()) == 0  # fill = NODATA
    assert bool(ds["prob"].isnull().all())
    assert ds["cloud"].attrs["grid_mapping"] == "spatial_ref"
    assert ds.attrs["title"] == "clouds"
    assert ds.rio.crs.to_epsg() == 32650
    gbox = pgrid.geobox
    assert tuple(ds.rio.transform())[:6] == tuple(gbox.affine)[:6]
    np.testing.assert_allclose(ds["x"].values, xr_coords(gbox)["x"].values)
    with open(os.path.join(url, "zarr.json")) as f:
        assert json.load(f)["zarr_format"] == 3


def test_init_cube_idempotent_and_appends_missing_times(store, pgrid):
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    assert open_product(store, PROVINCE, PRODUCT).sizes["time"] == 3
    # earlier dates arrive later: appended, existing indices never move
    init_cube(store, PROVINCE, PRODUCT, pgrid, ["2024-04-01", *WINDOW_1[:1]], VARIABLES)
    raw = open_product(store, PROVINCE, PRODUCT, sort_time=False)
    assert [str(t)[:10] for t in raw["time"].values] == [*WINDOW_1, "2024-04-01"]
    ordered = open_product(store, PROVINCE, PRODUCT)
    assert [str(t)[:10] for t in ordered["time"].values] == ["2024-04-01", *WINDOW_1]
    assert ordered.attrs["terrapipe:grid"]["tile_px"] == TILE_PX


def test_init_cube_refuses_other_grid_or_variables(store, pgrid):
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    other = TileGrid(crs="EPSG:32650", resolution=20.0, tile_px=TILE_PX)
    other_pgrid = ProvinceGrid(grid=other, tiles=(other.tile(10, 200),))
    with pytest.raises(BadInputError, match="province_grid"):
        init_cube(store, PROVINCE, PRODUCT, other_pgrid, WINDOW_1, VARIABLES)
    with pytest.raises(BadInputError, match="variables"):
        init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, {"cloud": ("int16", 0, {})})
    with pytest.raises(BadInputError, match="fill_value"):
        init_cube(store, PROVINCE, "other", pgrid, WINDOW_1, {"c": ("uint8", np.nan, {})})
    with pytest.raises(BadInputError, match="times"):
        init_cube(store, PROVINCE, "other", pgrid, [], VARIABLES)


def test_four_tiles_write_in_parallel_and_read_back_equal(store, pgrid):
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    datas = {t.tile_id: tile_data(t, WINDOW_1, seed=i) for i, t in enumerate(pgrid.tiles)}

    def write(tile):
        return write_tile(store, PROVINCE, PRODUCT, pgrid, tile, datas[tile.tile_id])

    with ThreadPoolExecutor(max_workers=4) as pool:
        infos = list(pool.map(write, pgrid.tiles))
    assert {i.y for i in infos} == {(0, TILE_PX), (TILE_PX, 2 * TILE_PX)}
    ds = open_product(store, PROVINCE, PRODUCT).load()
    for tile in pgrid.tiles:
        got = _tile_view(ds, pgrid, tile)
        want = datas[tile.tile_id].compute()
        np.testing.assert_array_equal(got["cloud"].values, want["cloud"].values)
        np.testing.assert_array_equal(got["prob"].values, want["prob"].values)  # NaN == NaN
        np.testing.assert_allclose(got["y"].values, want["y"].values)


def test_second_window_does_not_clobber_first(store, pgrid):
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    first = tile_data(tile, WINDOW_1, seed=1)
    write_tile(store, PROVINCE, PRODUCT, pgrid, tile, first)
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_2, VARIABLES)
    second = tile_data(tile, WINDOW_2, seed=2, lazy=False)
    # a window that comes in a different order than the cube's time axis
    write_tile(store, PROVINCE, PRODUCT, pgrid, tile, second.isel(time=[1, 0]))
    ds = _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, tile)
    np.testing.assert_array_equal(
        ds["cloud"].sel(time=pd.to_datetime(WINDOW_1)).values, first["cloud"].values
    )
    np.testing.assert_array_equal(
        ds["cloud"].sel(time=pd.to_datetime(WINDOW_2)).values, second["cloud"].values
    )
    # the other tiles were never written: still NODATA
    assert (
        int(
            _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, pgrid.tiles[3])["cloud"].max()
        )
        == 0
    )


def test_write_tile_rejects_bad_input(store, pgrid):
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    good = tile_data(tile, WINDOW_1, seed=0, lazy=False)
    with pytest.raises(BadInputError, match="dims"):
        write_tile(store, PROVINCE, PRODUCT, pgrid, tile, good.expand_dims(band=["a"]))
    with pytest.raises(BadInputError, match=r"data\.x"):
        write_tile(store, PROVINCE, PRODUCT, pgrid, tile, good.assign_coords(x=good.x + 10))
    with pytest.raises(BadInputError, match=r"data\.y"):  # the tile below: same x, other y
        write_tile(store, PROVINCE, PRODUCT, pgrid, pgrid.tiles[2], good)
    with pytest.raises(BadInputError, match="init_cube"):
        write_tile(
            store,
            PROVINCE,
            PRODUCT,
            pgrid,
            tile,
            good.assign_coords(time=pd.to_datetime([*WINDOW_2, "2025-01-01"])),
        )
    with pytest.raises(BadInputError, match="STAC item"):
        write_tile(
            store, PROVINCE, PRODUCT, pgrid, tile, good.assign(frac=good["prob"].mean(("y", "x")))
        )
    with pytest.raises(BadInputError, match="dtype"):
        write_tile(store, PROVINCE, PRODUCT, pgrid, tile, good.assign(cloud=good["cloud"] * 1.5))
    with pytest.raises(BadInputError, match="cube"):
        write_tile(store, PROVINCE, "never_initialised", pgrid, tile, good)
    far = pgrid.grid.tile(0, 0)
    with pytest.raises(BadInputError, match="tile"):
        write_tile(store, PROVINCE, PRODUCT, pgrid, far, good)
    # transposed (time, x, y) is fine: it is only an order
    write_tile(store, PROVINCE, PRODUCT, pgrid, tile, good.transpose("time", "x", "y"))
    got = _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, tile)["cloud"].values
    np.testing.assert_array_equal(got, good["cloud"].values)


def test_time_only_variables_are_province_level(store, pgrid):
    variables = {**VARIABLES, "n_scenes": ("int16", -1, {}, ("time",))}
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, variables)
    values = xr.Dataset(
        {"n_scenes": ("time", np.array([3, 5], "int16"))},
        coords={"time": pd.to_datetime(WINDOW_1[1:]).values},
    )
    assert write_time_values(store, PROVINCE, PRODUCT, values) == [1, 2]
    got = open_product(store, PROVINCE, PRODUCT)["n_scenes"].values
    np.testing.assert_array_equal(got, [-1, 3, 5])


# --- COG and quicklook ------------------------------------------------------------------------


def test_write_cog_valid_georeferenced_with_band_names(tmp_path, pgrid):
    tile = pgrid.grid.tile(5, 7)
    big = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=64).tile(5, 7)  # overviews need size
    coords = xr_coords(big.geobox, crs_coord_name="spatial_ref")
    rng = np.random.default_rng(0)
    data = xr.DataArray(
        rng.random((2, 64, 64), dtype="float32"),
        dims=("band", "y", "x"),
        coords={"band": ["B04", "B08"], **coords},
    )
    data[0, :4, :4] = np.nan
    path = str(tmp_path / "a" / "b.tif")
    size = write_cog(data, path, overview_resampling="average", blocksize=16)
    assert size == os.path.getsize(path)
    valid, errors, _ = cog_validate(path)
    assert valid, errors
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32650
        assert tuple(src.transform)[:6] == tuple(big.geobox.affine)[:6]
        assert src.descriptions == ("B04", "B08")
        assert src.overviews(1) == [2, 4]
        assert src.profile["blockxsize"] == 16 and src.profile["compress"] == "deflate"
        assert src.profile["interleave"] == "band"
        assert np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(2), data.values[1])
    # class raster, integer nodata
    cls = xr.DataArray(
        np.ones((TILE_PX, TILE_PX), "uint8"),
        dims=("y", "x"),
        coords=xr_coords(tile.geobox, crs_coord_name="spatial_ref"),
        name="cloud",
    )
    write_cog(cls, str(tmp_path / "c.tif"), nodata=0, compress="zstd")
    assert cog_validate(str(tmp_path / "c.tif"))[0]
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.nodata == 0 and src.descriptions == ("cloud",) and src.dtypes == ("uint8",)
    with pytest.raises(BadInputError, match="spatial_ref"):
        write_cog(xr.DataArray(np.ones((4, 4)), dims=("y", "x")), str(tmp_path / "d.tif"))
    with pytest.raises(BadInputError, match="overview_resampling"):
        write_cog(cls, str(tmp_path / "e.tif"), overview_resampling="best")


def test_write_cog_does_not_read_rio_cogeos_shared_profiles_while_it_writes(tmp_path, monkeypatch):
    """rio-cogeo's ``cog_profiles.get`` copies a shared UserDict by emptying it for a moment:
    a COG written in another thread meanwhile saw the profile empty and failed ("Writing
    through VRTSourcedRasterBand is not supported", or KeyError 'blockysize')."""
    from rio_cogeo.profiles import cog_profiles

    big = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=64).tile(5, 7)
    data = xr.DataArray(
        np.ones((64, 64), "uint8"),
        dims=("y", "x"),
        coords=xr_coords(big.geobox, crs_coord_name="spatial_ref"),
        name="cloud",
    )
    # What another thread's copy leaves there for a moment.
    monkeypatch.setattr(cog_profiles["deflate"], "data", {})
    path = str(tmp_path / "c.tif")
    write_cog(data, path, nodata=255, overview_resampling="mode", blocksize=16)
    assert cog_validate(path)[0]
    with rasterio.open(path) as src:
        assert src.driver == "GTiff" and src.profile["compress"] == "deflate"
        assert src.overviews(1) == [2, 4] and src.block_shapes[0] == (16, 16)


@pytest.mark.parametrize("kind", ["float", "classes"])
def test_write_cog_writes_the_bytes_rio_cogeo_writes_and_holds_from_many_threads(tmp_path, kind):
    big = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=64).tile(5, 7)
    coords = xr_coords(big.geobox, crs_coord_name="spatial_ref")
    rng = np.random.default_rng(1)
    if kind == "float":
        values = rng.random((2, 64, 64), dtype="float32")
        values[0, :5, :7] = np.nan
        nodata, resampling = float("nan"), "average"
    else:
        values = rng.integers(0, 5, (1, 64, 64), dtype="uint8")
        nodata, resampling = 255, "mode"
    data = xr.DataArray(
        values, dims=("band", "y", "x"), coords={"band": ["a", "b"][: len(values)], **coords}
    )
    ours, theirs = tmp_path / "ours.tif", tmp_path / "theirs.tif"
    write_cog(data, str(ours), nodata=nodata, overview_resampling=resampling, blocksize=16,
              tags={"terrapipe_label": "x"})  # fmt: skip
    peer_write_cog(data, str(theirs), nodata=nodata, overview_resampling=resampling, blocksize=16,
                   tags={"terrapipe_label": "x"})  # fmt: skip
    assert ours.read_bytes() == theirs.read_bytes()  # layout, overviews, tags: byte for byte
    with rasterio.open(ours) as src:
        assert src.overviews(1) == [2, 4]

    # The writers of a tile's products and dates run in threads: every write holds.
    def write_many(k: int) -> list[bool]:
        done = []
        for i in range(12):
            path = str(tmp_path / f"t{k}-{i}.tif")
            write_cog(data, path, nodata=nodata, overview_resampling=resampling, blocksize=16)
            done.append(cog_validate(path)[0])
        return done

    with ThreadPoolExecutor(8) as pool:
        results = [ok for run in pool.map(write_many, range(8)) for ok in run]
    assert len(results) == 96 and all(results)


@pytest.mark.parametrize("kind", ["truecolor", "classes", "continuous"])
def test_write_quicklook_small_png(tmp_path, kind):
    rng = np.random.default_rng(1)
    h, w = 700, 600
    if kind == "truecolor":
        data = xr.DataArray(rng.random((3, h, w)) * 0.3, dims=("band", "y", "x"))
        data[:, :10, :10] = np.nan
        extra = {}
    elif kind == "classes":
        data = xr.DataArray(rng.integers(0, 4, (h, w), dtype="uint8"), dims=("y", "x"))
        extra = {"classes": FloodClass}
    else:
        data = xr.DataArray(rng.random((h, w)), dims=("y", "x"))
        extra = {"label": "water fraction [1]"}
    path = tmp_path / f"{kind}.png"
    size = write_quicklook(data, str(path), kind, **extra)
    assert size == path.stat().st_size
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert max(img.size) <= 512
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    if kind == "truecolor":
        with Image.open(path) as img:
            assert img.mode == "RGBA" and np.asarray(img)[0, 0, 3] == 0  # nodata transparent


def test_quicklook_block_mean_ignores_nan_and_pads_ragged_edges():
    from pipelines.products.quicklook import _block_mean

    rng = np.random.default_rng(3)
    arr = rng.random((2, 7, 9)).astype("float32")
    arr[0, :3, :3] = np.nan  # one whole block missing
    arr[1, 4, 5] = np.nan  # one pixel of a block missing
    got = _block_mean(arr, 3)
    assert got.shape == (2, 3, 3) and got.dtype == np.float32
    for b in range(2):
        for i in range(3):
            for j in range(3):
                block = arr[b, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3]  # edge blocks are smaller
                if np.isnan(block).all():
                    assert np.isnan(got[b, i, j])
                else:
                    assert got[b, i, j] == pytest.approx(float(np.nanmean(block)), rel=1e-5)


def test_quicklook_classes_palette_is_fixed(tmp_path):
    data = xr.DataArray(np.full((40, 40), int(CloudClass.CLEAR), "uint8"), dims=("y", "x"))
    write_quicklook(data, str(tmp_path / "q.png"), "classes", classes=CloudClass)
    with Image.open(tmp_path / "q.png") as img:
        rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in rgb}
    assert (0x4D, 0xAF, 0x4A) in colours  # CloudClass.CLEAR
    with pytest.raises(BadInputError, match="kind"):
        write_quicklook(data, str(tmp_path / "x.png"), "rainbow")


# --- markers, skip/resume, catalog --------------------------------------------------------------

SPEC = ProductSpec(quicklook="classes", classes=CloudClass, blocksize=16)
PROV = Provenance(
    stage_versions={"load": "0.1.0"},
    input_items={lab: [f"S2A_{lab}_T50"] for lab in WINDOW_1 + WINDOW_2},
    model_checksums={},
)


def _write(store, pgrid, tile, times, seed, **kw):
    kw.setdefault("stage", _stage())
    kw.setdefault("spec", SPEC)
    kw.setdefault("provenance", PROV)
    data = tile_data(tile, times, seed, scalars=True)
    return write_tile_product(store, PROVINCE, PRODUCT, pgrid, tile, data, **kw)


def test_write_tile_product_layout_marker_and_manifest(store, pgrid):
    tile = pgrid.tiles[2]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    manifest = _write(store, pgrid, tile, WINDOW_1, seed=3)
    json.dumps(manifest)  # goes through XCom
    assert manifest["written"] == WINDOW_1 and manifest["n_skipped"] == 0
    assert manifest["bytes_written"] > 0
    label = WINDOW_1[1]
    for url in (
        cog_url(store, PROVINCE, PRODUCT, tile.tile_id, label),
        quicklook_url(store, PROVINCE, PRODUCT, tile.tile_id, label),
        marker_url(store, PROVINCE, PRODUCT, tile.tile_id, label),
    ):
        assert os.path.exists(url), url
    cog = cog_url(store, PROVINCE, PRODUCT, tile.tile_id, label)
    assert cog_validate(cog)[0]
    data = tile_data(tile, WINDOW_1, seed=3).compute()
    with rasterio.open(cog) as src:
        assert src.descriptions == ("cloud", "prob")
        assert tuple(src.transform)[:6] == tuple(tile.geobox.affine)[:6]
        np.testing.assert_array_equal(src.read(1), data["cloud"].values[1])

    item = pystac.Item.from_file(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, label))
    p = item.properties
    assert item.id == f"{PROVINCE}_{PRODUCT}_{tile.tile_id}_{label}"
    assert item.datetime.isoformat().startswith(label)
    assert p["terrapipe:stage"] == PRODUCT and p["terrapipe:stage_version"] == "1.0.0"
    assert p["terrapipe:stage_versions"] == {"cloud_mask": "1.0.0", "load": "0.1.0"}
    assert p["terrapipe:input_items"] == [f"S2A_{label}_T50"]
    assert p["terrapipe:model_checksums"] == {}
    assert p["terrapipe:software_version"]
    assert p["processing:software"]["terrapipe"] == p["terrapipe:software_version"]
    assert p["proj:code"] == "EPSG:32650"
    assert p["proj:shape"] == [TILE_PX, TILE_PX]
    assert p["proj:transform"] == list(tile.geobox.affine)[:6]
    frac = float((data["cloud"].values[1] >= 2).mean())
    assert p["terrapipe:cloud_fraction"] == pytest.approx(frac)
    to_wgs84 = Transformer.from_crs(32650, 4326, always_xy=True)
    minx, miny, maxx, maxy = tile.bounds
    w, s, e, n = item.bbox
    for x, y in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)):
        lon, lat = to_wgs84.transform(x, y)
        assert w - 1e-9 <= lon <= e + 1e-9 and s - 1e-9 <= lat <= n + 1e-9
    assert item.geometry["type"] == "Polygon"
    assert set(item.assets) == {"cog", "quicklook", "zarr"}
    for asset in item.assets.values():
        assert os.path.exists(asset.get_absolute_href()), asset.href
    zarr_asset = item.assets["zarr"]
    sel = zarr_asset.extra_fields["terrapipe:selection"]
    cube = xr.open_dataset(
        zarr_asset.get_absolute_href(), **zarr_asset.extra_fields["xarray:open_kwargs"]
    )
    region = cube["cloud"].sel(time=sel["time"]).isel(y=slice(*sel["y"]), x=slice(*sel["x"]))
    np.testing.assert_array_equal(region.values, data["cloud"].values[1])


def test_rerun_skips_done_and_overwrite_redoes(store, pgrid):
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, tile, WINDOW_1, seed=4)
    again = _write(store, pgrid, tile, WINDOW_1, seed=99)
    assert again["n_written"] == 0 and again["skipped"] == WINDOW_1
    ds = _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, tile)
    np.testing.assert_array_equal(ds["cloud"].values, tile_data(tile, WINDOW_1, 4)["cloud"].values)
    redo = _write(store, pgrid, tile, WINDOW_1, seed=99, overwrite=True)
    assert redo["written"] == WINDOW_1
    ds = _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, tile)
    np.testing.assert_array_equal(ds["cloud"].values, tile_data(tile, WINDOW_1, 99)["cloud"].values)
    # a new stage version is not done: everything is redone under it
    bumped = _write(store, pgrid, tile, WINDOW_1, seed=4, stage=_stage("2.0.0"))
    assert bumped["written"] == WINDOW_1
    assert is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "2.0.0")
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")


def test_a_product_of_an_older_upstream_stage_or_older_weights_is_not_done(store, pgrid):
    # A marker records the versions of the stages upstream of its product; once one of them
    # changes (cloud_mask learned snow: haze_index, the NDVI gap filling and the season
    # features read it), what was made from the older one is made again.
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    upstream = get_stage("haze_index")
    old = Provenance(stage_versions={"load": "0.1.0", upstream.name: "0.0.1"})
    _write(store, pgrid, tile, WINDOW_1, seed=4, provenance=old)
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")
    stale = stale_upstream(
        read_marker(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0]))["properties"],
        PRODUCT,
    )
    assert stale == [f"haze_index 0.0.1 -> {upstream.version}"]
    found = outdated(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.1.0")
    assert found == [f"{PRODUCT} 1.0.0 -> 1.1.0", f"haze_index 0.0.1 -> {upstream.version}"]
    assert outdated(store, PROVINCE, PRODUCT, tile.tile_id, "2030-01-01", "1.0.0") is None
    again = _write(store, pgrid, tile, WINDOW_1, seed=4, provenance=old)
    assert again["written"] == WINDOW_1  # not skipped
    now = Provenance(stage_versions={"load": "0.1.0", upstream.name: upstream.version})
    _write(store, pgrid, tile, WINDOW_1, seed=4, provenance=now)
    assert is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")
    assert outdated(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0") == []
    assert _write(store, pgrid, tile, WINDOW_1, seed=4, provenance=now)["n_written"] == 0
    # Weights retrained under the same stage version: what the old weights made is not done.
    by_old_weights = Provenance(
        stage_versions=now.stage_versions, model_checksums={"dehaze": "sha256:" + "0" * 64}
    )
    _write(store, pgrid, tile, WINDOW_1, seed=4, provenance=by_old_weights, overwrite=True)
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")
    current = f"sha256:{model_checksum('dehaze')}"
    by_these = Provenance(stage_versions=now.stage_versions, model_checksums={"dehaze": current})
    _write(store, pgrid, tile, WINDOW_1, seed=4, provenance=by_these, overwrite=True)
    assert is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")


@pytest.mark.parametrize("threads", [1, 3])
def test_failure_before_marker_leaves_no_marker_and_rerun_completes(
    store, pgrid, monkeypatch, threads
):
    """A date whose COG fails is not done; one thread stops there, several let the other
    dates commit; a rerun writes what is not done."""
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    other, tile = pgrid.tiles[1], pgrid.tiles[3]
    _write(store, pgrid, other, WINDOW_1, seed=10)
    real_write_cog = writer_module.write_cog

    def flaky(data, url, **kw):
        if WINDOW_1[1] in url:  # the second date fails after its zarr region was written
            raise OSError("disk full")
        return real_write_cog(data, url, **kw)

    monkeypatch.setattr(writer_module, "write_cog", flaky)
    with pytest.raises(OSError, match="disk full"):
        _write(store, pgrid, tile, WINDOW_1, seed=11, threads=threads)
    done = [is_done(store, PROVINCE, PRODUCT, tile.tile_id, lab, "1.0.0") for lab in WINDOW_1]
    assert done == [True, False, threads > 1]
    assert not os.path.exists(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[1]))
    # the other tile is intact
    ds = _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, other)
    np.testing.assert_array_equal(
        ds["cloud"].values, tile_data(other, WINDOW_1, 10)["cloud"].values
    )
    monkeypatch.setattr(writer_module, "write_cog", real_write_cog)
    rerun = _write(store, pgrid, tile, WINDOW_1, seed=11, threads=threads)
    assert rerun["skipped"] == [lab for lab, d in zip(WINDOW_1, done, strict=True) if d]
    assert rerun["written"] == [lab for lab, d in zip(WINDOW_1, done, strict=True) if not d]
    assert all(is_done(store, PROVINCE, PRODUCT, tile.tile_id, lab, "1.0.0") for lab in WINDOW_1)
    ds = _tile_view(open_product(store, PROVINCE, PRODUCT), pgrid, tile)
    np.testing.assert_array_equal(ds["cloud"].values, tile_data(tile, WINDOW_1, 11)["cloud"].values)

    # a new stage version that fails midway never leaves an old marker over new bytes
    monkeypatch.setattr(writer_module, "write_cog", flaky)
    with pytest.raises(OSError, match="disk full"):
        _write(store, pgrid, tile, WINDOW_1, seed=12, stage=_stage("2.0.0"), threads=threads)
    markers = [
        read_marker(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, lab)) for lab in WINDOW_1
    ]
    assert markers[0]["properties"]["terrapipe:stage_version"] == "2.0.0"
    assert markers[1] is None
    if threads == 1:
        assert markers[2] is None
    else:
        assert markers[2]["properties"]["terrapipe:stage_version"] == "2.0.0"


def test_truncated_or_foreign_marker_is_not_done(store, pgrid):
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, tile, WINDOW_1[:1], seed=5)
    url = marker_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0])
    assert is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")
    text = Path(url).read_text()
    Path(url).write_text(text[: len(text) // 2])
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")
    assert read_marker(url) is None
    Path(url).write_text('{"type": "FeatureCollection"}')
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0], "1.0.0")
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, "2030-01-01", "1.0.0")
    redo = _write(store, pgrid, tile, WINDOW_1[:1], seed=5)
    assert redo["written"] == WINDOW_1[:1]
    assert json.loads(Path(url).read_text())["type"] == "Feature"


def test_window_labels_and_intervals(store, pgrid):
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, "season", pgrid, ["2024-04-01"], VARIABLES)
    data = tile_data(tile, ["2024-04-01"], seed=6)
    manifest = write_tile_product(
        store,
        PROVINCE,
        "season",
        pgrid,
        tile,
        data,
        stage=_stage(),
        spec=ProductSpec(quicklook="continuous", quicklook_variables=("prob",)),
        labels=["2024-S1"],
        intervals=[("2024-04-01", "2024-09-30T23:59:59")],
        properties={"2024-S1": {"terrapipe:n_dates": 12}},
    )
    assert manifest["written"] == ["2024-S1"]
    item = json.loads(
        Path(marker_url(store, PROVINCE, "season", tile.tile_id, "2024-S1")).read_text()
    )
    assert item["properties"]["start_datetime"].startswith("2024-04-01")
    assert item["properties"]["end_datetime"].startswith("2024-09-30")
    assert item["properties"]["terrapipe:n_dates"] == 12
    assert os.path.exists(quicklook_url(store, PROVINCE, "season", tile.tile_id, "2024-S1"))
    with pytest.raises(BadInputError, match="labels"):
        write_tile_product(
            store, PROVINCE, "season", pgrid, tile, data, stage=_stage(), labels=["a/b"]
        )


def test_build_catalog_is_valid_static_stac_and_idempotent(store, pgrid):
    from pystac.validation import validate_dict

    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    for i, tile in enumerate(pgrid.tiles[:2]):
        _write(store, pgrid, tile, WINDOW_1[:2], seed=20 + i)
    url = build_catalog(store, PROVINCE)
    assert url == catalog_url(store, PROVINCE)
    first = Path(url).read_bytes()
    coll_path = Path(store) / PROVINCE / PRODUCT / "collection.json"
    first_coll = coll_path.read_bytes()
    assert build_catalog(store, PROVINCE) == url
    assert Path(url).read_bytes() == first and coll_path.read_bytes() == first_coll

    catalog = pystac.Catalog.from_file(url)
    (collection,) = list(catalog.get_children())
    assert collection.id == PRODUCT
    items = list(catalog.get_items(recursive=True))
    assert len(items) == 4
    assert {it.get_self_href() for it in items} == {
        os.path.abspath(marker_url(store, PROVINCE, PRODUCT, t.tile_id, lab))
        for t in pgrid.tiles[:2]
        for lab in WINDOW_1[:2]
    }
    for it in items:
        assert it.get_root().id == PROVINCE
        assert os.path.exists(it.assets["cog"].get_absolute_href())
    assert collection.extent.temporal.intervals[0][0].isoformat().startswith(WINDOW_1[0])
    # the collection links a catalog per month, which links the month's items; an item's
    # parent link names that month's catalog, its collection link the product's collection
    (month,) = list(collection.get_children())
    assert month.id == f"{PRODUCT}-2024-05" and len(list(month.get_items())) == 4
    for it in items:
        links = json.loads(Path(it.get_self_href()).read_text())["links"]
        hrefs = {link["rel"]: link["href"] for link in links}
        assert hrefs["parent"] == "../../months/2024-05.json"
        assert hrefs["collection"] == "../../collection.json"
    month_path = Path(store) / PROVINCE / PRODUCT / "months" / "2024-05.json"
    # core STAC schemas (bundled with pystac; extension schemas would need the network)
    for path in (url, coll_path, month_path, Path(items[0].get_self_href())):
        d = json.loads(Path(path).read_text())
        validate_dict(d, extensions=[])
    # a truncated marker is left out of the catalog
    Path(items[0].get_self_href()).write_text("{")
    build_catalog(store, PROVINCE)
    assert len(list(pystac.Catalog.from_file(url).get_items(recursive=True))) == 3


def _catalog_files(store: str) -> dict[str, bytes]:
    root = Path(store) / PROVINCE
    files = [root / CATALOG_FILE, *root.glob("*/collection.json"), *root.glob("*/months/*.json")]
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(files)}


def test_a_run_rebuilds_the_months_it_wrote_from_every_marker_of_them(store, pgrid):
    """Before, each run's catalog step read every marker of the province (a 1,681-tile
    province: about 67,000 more each month). Now it rebuilds the months of its own dates, from
    every marker of those months, and its files equal those of a whole rebuild."""
    tiles = pgrid.tiles[:2]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    for i, tile in enumerate(tiles):
        _write(store, pgrid, tile, WINDOW_1, seed=40 + i)
    update_catalog(store, PROVINCE, {catalog_period(d) for d in WINDOW_1})
    may = Path(period_url(store, PROVINCE, PRODUCT, "2024-05"))
    assert len(catalog_items(store, PROVINCE, PRODUCT)) == 6
    # a May marker unreadable from now on: a June run does not read May's markers
    first_may = may.read_bytes()
    Path(marker_url(store, PROVINCE, PRODUCT, tiles[0].tile_id, WINDOW_1[0])).write_text("{")
    # June, by two runs: one tile each, the catalog updated after each
    for i, tile in enumerate(tiles):
        _write(store, pgrid, tile, WINDOW_2, seed=50 + i)
        update_catalog(store, PROVINCE, ["2024-06"], products=[PRODUCT])
    assert may.read_bytes() == first_may
    june = catalog_items(store, PROVINCE, PRODUCT)[6:]
    assert june == sorted((t.tile_id, d) for t in tiles for d in WINDOW_2)
    collection = pystac.Collection.from_file(collection_url(store, PROVINCE, PRODUCT))
    start, end = collection.extent.temporal.intervals[0]
    assert start.isoformat().startswith(WINDOW_1[0]) and end.isoformat().startswith(WINDOW_2[-1])
    assert [c.id for c in collection.get_children()] == [f"{PRODUCT}-2024-05", f"{PRODUCT}-2024-06"]
    # rebuilding May reads its markers again: the unreadable one is left out, and the files
    # equal a whole rebuild's
    update_catalog(store, PROVINCE, ["2024-05"])
    assert len(catalog_items(store, PROVINCE, PRODUCT)) == 9
    incremental = _catalog_files(store)
    build_catalog(store, PROVINCE)
    assert _catalog_files(store) == incremental
    # a month whose markers are all gone loses its catalog and its link
    for tile in tiles:
        for d in WINDOW_2:
            Path(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, d)).unlink()
    update_catalog(store, PROVINCE, ["2024-06"])
    assert not Path(period_url(store, PROVINCE, PRODUCT, "2024-06")).exists()
    assert len(catalog_items(store, PROVINCE, PRODUCT)) == 5


def test_a_collection_that_links_its_items_itself_is_rebuilt_whole(store, pgrid):
    """A store catalogued before month catalogs: its collection links every item itself. The
    first update rebuilds that product whole, so that no month of its history drops out."""
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    _write(store, pgrid, tile, WINDOW_1 + WINDOW_2, seed=60)
    old_links = [
        {"rel": "item", "href": f"./items/{tile.tile_id}/{d}.json"} for d in WINDOW_1 + WINDOW_2
    ]
    Path(collection_url(store, PROVINCE, PRODUCT)).write_text(
        json.dumps({"type": "Collection", "id": PRODUCT, "links": old_links})
    )
    update_catalog(store, PROVINCE, ["2024-06"])
    assert len(catalog_items(store, PROVINCE, PRODUCT)) == 5
    assert Path(period_url(store, PROVINCE, PRODUCT, "2024-05")).exists()


def test_catalog_periods_are_months_of_date_labels():
    assert catalog_period("2024-05-11") == "2024-05"
    assert catalog_period("2024-05-11T10:00") == "2024-05"
    assert catalog_period("2025") == "2025"
    assert catalog_period("2024-S1") == "2024-S1"


def test_items_load_with_stackstac_like_the_cube(store, pgrid):
    stackstac = pytest.importorskip("stackstac")
    tile = pgrid.tiles[1]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    # stackstac reads single-band assets only: a one-variable COG
    spec = ProductSpec(cog_variables=("cloud",), quicklook="classes", classes=CloudClass)
    _write(store, pgrid, tile, WINDOW_1, seed=30, spec=spec)
    items = []
    for lab in WINDOW_1:
        # the raw JSON (pystac's reader migrates proj:epsg away; stackstac 0.5 needs it)
        path = marker_url(store, PROVINCE, PRODUCT, tile.tile_id, lab)
        d = json.loads(Path(path).read_text())
        for asset in d["assets"].values():  # stackstac reads absolute hrefs
            asset["href"] = os.path.normpath(os.path.join(os.path.dirname(path), asset["href"]))
        items.append(d)
    assert items[0]["properties"]["proj:epsg"] == 32650
    stack = stackstac.stack(
        items, assets=["cog"], dtype="float64", fill_value=np.nan, xy_coords="center"
    ).compute()
    want = tile_data(tile, WINDOW_1, 30)["cloud"].values.astype("float64")
    want[want == int(CloudClass.NODATA)] = np.nan  # the COG nodata is honoured
    np.testing.assert_array_equal(stack.isel(band=0).values, want)
    np.testing.assert_allclose(stack["x"].values, xr_coords(tile.geobox)["x"].values)


def test_tiles_written_from_dask_distributed_tasks(store, pgrid):
    distributed = pytest.importorskip("distributed")
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1[:2], VARIABLES)

    def task(i, tile):
        data = tile_data(tile, WINDOW_1[:2], seed=50 + i)
        return write_tile_product(
            store, PROVINCE, PRODUCT, pgrid, tile, data, stage=_stage(), spec=SPEC
        )

    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=4, dashboard_address=None
    ) as client:
        futures = [client.submit(task, i, t, pure=False) for i, t in enumerate(pgrid.tiles)]
        manifests = client.gather(futures)
    assert [m["n_written"] for m in manifests] == [2, 2, 2, 2]
    ds = open_product(store, PROVINCE, PRODUCT).load()
    for i, tile in enumerate(pgrid.tiles):
        want = tile_data(tile, WINDOW_1[:2], seed=50 + i)["cloud"].values
        np.testing.assert_array_equal(_tile_view(ds, pgrid, tile)["cloud"].values, want)


def test_computed_data_gives_the_files_of_data_read_back_from_the_cube(tmp_path, pgrid):
    """COGs and quicklooks of computed (in-memory) data are taken from it, not read back from
    the cube: byte for byte the files of lazy data (whose COGs are read back), with NaNs of
    either sign, a plane of NaNs only and a class plane of the fill value only (chunks Zarr
    does not store)."""
    tile = pgrid.tiles[1]
    data = tile_data(tile, WINDOW_1, seed=5, lazy=False, scalars=True)
    negative_nan = np.array(0xFFC00000, dtype="uint32").view("float32")
    prob = data["prob"].values
    prob[0] = negative_nan  # a whole plane of NaN, not the cube's NaN fill
    prob[1, 5, :4] = negative_nan
    data["cloud"].values[2] = 0  # the fill value only
    lazy = data.chunk({"time": 1, "y": 16, "x": 16})
    files = {}
    for name, ds in (("lazy", lazy), ("computed", data)):
        store = str(tmp_path / name)
        init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
        write_tile_product(
            store, PROVINCE, PRODUCT, pgrid, tile, ds, stage=_stage(), spec=SPEC, provenance=PROV
        )
        files[name] = {
            (label, kind): Path(url(store, PROVINCE, PRODUCT, tile.tile_id, label)).read_bytes()
            for label in WINDOW_1
            for kind, url in (("cog", cog_url), ("quicklook", quicklook_url))
        }
    assert writer_module._in_memory(data) and not writer_module._in_memory(lazy)
    assert files["computed"] == files["lazy"]
    with rasterio.open(
        cog_url(str(tmp_path / "computed"), PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0])
    ) as src:
        assert np.isnan(src.read(2)).all()


@pytest.mark.parametrize("lazy", [True, False])
def test_float_rasters_are_stored_rounded_to_their_mantissa_bits(tmp_path, pgrid, lazy):
    """Cube and COG hold the same float values, rounded to nearest with the spec's mantissa
    bits (relative error at most 2**-(bits + 1)), NaN kept; classes exact; None keeps every
    bit; a bad bit count is refused."""
    tile = pgrid.tiles[0]
    data = tile_data(tile, WINDOW_1, seed=9, lazy=lazy)
    exact = tile_data(tile, WINDOW_1, seed=9, lazy=False)["prob"].values
    for bits in (13, None):
        store = str(tmp_path / f"bits{bits}")
        init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
        spec = ProductSpec(
            quicklook="classes", classes=CloudClass, blocksize=16, mantissa_bits=bits
        )
        _ = write_tile_product(
            store, PROVINCE, PRODUCT, pgrid, tile, data, stage=_stage(), spec=spec
        )
        cube = _tile_view(open_product(store, PROVINCE, PRODUCT).load(), pgrid, tile)
        stored = cube["prob"].values
        np.testing.assert_array_equal(np.isnan(stored), np.isnan(exact))
        np.testing.assert_array_equal(cube["cloud"].values, data["cloud"].values)
        with rasterio.open(cog_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[1])) as src:
            np.testing.assert_array_equal(src.read(2), stored[1])
        item = read_marker(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0]))
        said = item["properties"].get("terrapipe:mantissa_bits")
        finite = np.isfinite(exact)
        if bits is None:
            assert said is None
            np.testing.assert_array_equal(stored[finite], exact[finite])
            continue
        assert said == {"prob": bits}  # the float raster only
        error = np.abs(stored[finite] - exact[finite]) / np.abs(exact[finite])
        assert error.max() <= 2.0 ** -(bits + 1) and error.max() > 0
        mantissa = stored[finite].view("uint32") & 0x7FFFFF
        assert not (mantissa & ((1 << (23 - bits)) - 1)).any()  # the dropped bits are zero
    with pytest.raises(BadInputError, match="mantissa_bits"):
        ProductSpec(mantissa_bits=0)


@pytest.mark.parametrize("budget", [1, 2**30])
def test_dates_written_at_once_stay_within_the_planes_budget(store, pgrid, monkeypatch, budget):
    """Dates whose planes fit the budget together are encoded side by side (all three reach a
    barrier), a date larger than the budget alone (never two at once)."""
    import threading

    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    real_write_cog = writer_module.write_cog
    lock, running, peak = threading.Lock(), [0], [0]
    together = threading.Barrier(len(WINDOW_1), timeout=30)

    def counting(data, url, **kw):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if budget > 1:
                together.wait()
            return real_write_cog(data, url, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(writer_module, "write_cog", counting)
    monkeypatch.setattr(writer_module, "DATE_PLANES_BUDGET_BYTES", budget)
    manifest = _write(store, pgrid, pgrid.tiles[0], WINDOW_1, seed=4, threads=3)
    assert manifest["written"] == WINDOW_1
    assert peak[0] == (len(WINDOW_1) if budget > 1 else 1)


def test_writer_threads_follow_a_containers_cpu_limit(monkeypatch):
    """In a Kubernetes pod the CPU affinity is the node's; the pod's limit is a cgroup quota.
    A quota of one CPU (100 ms a 100 ms period) leaves one writer thread, whatever the node."""
    import dask.system

    from pipelines.engine.run import write_threads

    monkeypatch.setattr(dask.system, "_try_extract_cgroup_cpu_quota", lambda: (100000, 100000))
    assert writer_module.usable_cpus() == 1 and write_threads() == 1
    monkeypatch.setattr(dask.system, "_try_extract_cgroup_cpu_quota", lambda: (None, None))
    assert writer_module.usable_cpus() == len(os.sched_getaffinity(0))


def test_a_process_ending_does_not_wait_for_the_dates_still_queued():
    """The date threads are daemons: a run cancelled while a product's dates are queued ends
    at once (they have no marker and are redone), where a thread pool would write them all."""
    import subprocess
    import sys
    import time

    script = (
        "import threading, time\n"
        "from pipelines.products.writer import _in_daemon_threads\n"
        "jobs = [(k, k) for k in range(6)]\n"
        "slow = lambda k, i: time.sleep(60)\n"
        "threading.Thread(target=_in_daemon_threads, args=(slow, jobs, 2), daemon=True).start()\n"
        "time.sleep(0.5)\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert time.monotonic() - started < 30  # six 60 s dates on two threads would take 180 s
