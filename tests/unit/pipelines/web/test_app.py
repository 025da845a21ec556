"""The web app on a small store written by the product writer: products from the catalog, map
tiles rendered from the COGs, pixel values with the STAC item, parcel outlines, runs, labels."""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from fastapi.testclient import TestClient
from odc.geo.xr import xr_coords
from PIL import Image
from pyproj import Transformer
from rasterio.warp import transform as warp_transform

from pipelines.agri.labels import MIN_PER_CROP, read_labels
from pipelines.classes import CloudClass
from pipelines.config import parse_config
from pipelines.errors import BadInputError
from pipelines.grid import ProvinceGrid, TileGrid
from pipelines.products import (
    ProductSpec,
    Provenance,
    build_catalog,
    cog_url,
    init_cube,
    write_tile_product,
)
from pipelines.products.quicklook import PALETTES
from pipelines.stages.registry import get_stage
from pipelines.web.app import create_app
from pipelines.web.render import class_colours, web_mercator

TILE_PX = 64
CRS = "EPSG:32650"
PROVINCE = "webtest"
DATE = "2025-07-20"
CALENDAR = str(Path(__file__).parents[4] / "pipelines" / "data" / "demo_crops.yaml")
CHECKSUM = "sha256:" + "ab" * 32


def _pgrid() -> ProvinceGrid:
    grid = TileGrid(crs=CRS, resolution=10.0, tile_px=TILE_PX)
    tiles = tuple(grid.tile(ix, iy) for iy in (6001, 6000) for ix in (400, 401))
    return ProvinceGrid(grid=grid, tiles=tiles)


def _tile_data(tile, variables: dict[str, np.ndarray], dims=("time", "y", "x")) -> xr.Dataset:
    coords = xr_coords(tile.geobox)
    return xr.Dataset(
        {k: (dims, v) for k, v in variables.items()},
        coords={"time": pd.to_datetime([DATE]).values, "y": coords["y"], "x": coords["x"]},
    )


def _write_store(store: str) -> ProvinceGrid:
    """cloud_mask (classes), dehaze (4-band reflectance) and parcels (int ids) on 4 tiles."""
    pgrid = _pgrid()
    rng = np.random.default_rng(0)
    f32 = ("float32", np.nan, {})
    init_cube(store, PROVINCE, "cloud_mask", pgrid, [DATE], {"cloud_mask": ("uint8", 0, {})})
    init_cube(store, PROVINCE, "dehaze", pgrid, [DATE], {b: f32 for b in BANDS})
    init_cube(
        store,
        PROVINCE,
        "parcels",
        pgrid,
        [DATE],
        {"fine": ("int32", 0, {}), "coarse": ("int32", 0, {})},
    )
    prov = Provenance(
        stage_versions={"cloud_mask": "1.1.0"},
        input_items=["S2_item_1"],
        model_checksums={"dehaze": CHECKSUM},
    )
    for i, tile in enumerate(pgrid.tiles):
        classes = rng.integers(1, 5, size=(1, TILE_PX, TILE_PX), dtype="uint8")
        classes[:, :4, :] = 0  # a nodata strip
        refl = rng.uniform(0.02, 0.4, size=(4, 1, TILE_PX, TILE_PX)).astype("float32")
        ids = np.zeros((1, TILE_PX, TILE_PX), dtype="int32")
        ids[:, 8:40, 8:24] = 1 + 10 * i  # one 32 x 16 px parcel per tile, ids unique
        ids[:, 8:40, 30:60] = 2 + 10 * i
        for name, variables, spec in (
            ("cloud_mask", {"cloud_mask": classes}, ProductSpec(quicklook=None)),
            ("dehaze", dict(zip(BANDS, refl, strict=True)), ProductSpec(quicklook=None)),
            ("parcels", {"fine": ids, "coarse": ids}, ProductSpec(quicklook=None)),
        ):
            write_tile_product(
                store,
                PROVINCE,
                name,
                pgrid,
                tile,
                _tile_data(tile, variables),
                stage=get_stage(name),
                provenance=prov,
                spec=spec,
            )
    build_catalog(store, PROVINCE)
    return pgrid


BANDS = ("B02", "B03", "B04", "B08")


def _aoi(pgrid: ProvinceGrid) -> dict:
    """The WGS84 outline of the tiles, shrunk by two pixels."""
    minx, miny, maxx, maxy = pgrid.bounds
    to_wgs = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform
    ring = [(minx + 20, miny + 20), (maxx - 20, miny + 20), (maxx - 20, maxy - 20)]
    ring += [(minx + 20, maxy - 20), (minx + 20, miny + 20)]
    return {"type": "Polygon", "coordinates": [[list(to_wgs(x, y)) for x, y in ring]]}


def _config(store: str, pgrid: ProvinceGrid, labels: Path, **changes):
    raw = {
        "province": PROVINCE,
        "aoi": _aoi(pgrid),
        "crs": CRS,
        "tile_px": TILE_PX,
        "start": "2025-07-15",
        "end": "2025-07-25",
        "products": ["cloud_mask", "dehaze"],
        "stac": {"archive": str(Path(store).parent / "no-archive")},
        "store": store,
        "crop_calendar": CALENDAR,
        "agri": {"labels": str(labels)},
    }
    raw.update(changes)
    return parse_config(raw)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, ProvinceGrid]:
    store = str(tmp_path_factory.mktemp("web-store") / "store")
    return store, _write_store(store)


@pytest.fixture
def client(built, tmp_path) -> TestClient:
    store, pgrid = built
    config = _config(store, pgrid, tmp_path / "labels.geojson")
    return TestClient(create_app(config))


def _centre_lonlat(pgrid: ProvinceGrid, tile_index: int, row: int, col: int) -> tuple[float, float]:
    """WGS84 lon/lat of the centre of pixel (row, col) of a tile."""
    minx, _, _, maxy = pgrid.tiles[tile_index].bounds
    x, y = minx + (col + 0.5) * 10.0, maxy - (row + 0.5) * 10.0
    lon, lat = warp_transform(CRS, "EPSG:4326", [x], [y])
    return lon[0], lat[0]


def _png(body: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(body))
    assert img.size == (256, 256)
    return np.asarray(img.convert("RGBA"))


# ---- products and tiles --------------------------------------------------------------------


def test_page_and_vendored_leaflet_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/leaflet/leaflet.js" in page.text
    assert "http" not in page.text.split("<body>")[1].split("<script")[0].lower()  # no CDN
    js = client.get("/static/vendor/leaflet/leaflet.js")
    assert js.status_code == 200 and "Leaflet 1.9.4" in js.text[:200]
    assert client.get("/static/app.js").status_code == 200


def test_products_come_from_the_catalog_with_styles_and_legends(client):
    body = client.get("/api/products").json()
    assert body["message"] is None
    found = {p["name"]: p for p in body["products"]}
    assert sorted(found) == ["cloud_mask", "dehaze", "parcels"]
    assert all(p["labels"] == [DATE] for p in found.values())
    assert found["cloud_mask"]["kind"] == "classes"
    assert found["dehaze"]["kind"] == "truecolor" and found["dehaze"]["bands"] == [
        "B04",
        "B03",
        "B02",
    ]
    assert found["parcels"]["kind"] == "ids"
    legend = {e["name"]: e["colour"] for e in found["cloud_mask"]["legend"]}
    assert legend == {
        "clear": PALETTES[CloudClass][CloudClass.CLEAR],
        "cloud": PALETTES[CloudClass][CloudClass.CLOUD],
        "shadow": PALETTES[CloudClass][CloudClass.SHADOW],
        "cirrus": PALETTES[CloudClass][CloudClass.CIRRUS],
        "snow": PALETTES[CloudClass][CloudClass.SNOW],
    }


def test_class_colours_fall_back_by_name_and_to_a_qualitative_palette():
    colours = class_colours({0: "nodata", 1: "land", 2: "water"})
    assert colours[2] == "#2e86de"  # LandClass.WATER of the quicklook palettes
    assert colours[1].startswith("#") and colours[1] not in (colours[2], colours[0])


def test_tile_over_the_store_draws_the_classes_and_is_transparent_elsewhere(built, client):
    _, pgrid = built
    lon, lat = _centre_lonlat(pgrid, 0, 32, 32)
    t = web_mercator().tile(lon, lat, 15)
    response = client.get(f"/tiles/cloud_mask/{DATE}/{t.z}/{t.x}/{t.y}.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    rgba = _png(response.content)
    drawn = rgba[rgba[..., 3] > 0][:, :3]
    assert len(drawn) > 1000
    allowed = {
        tuple(int(PALETTES[CloudClass][c].lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
        for c in (1, 2, 3, 4)
    }
    assert {tuple(int(v) for v in px) for px in np.unique(drawn, axis=0)} <= allowed
    far = web_mercator().tile(lon + 1.0, lat, 15)
    empty = _png(client.get(f"/tiles/cloud_mask/{DATE}/{far.z}/{far.x}/{far.y}.png").content)
    assert (empty[..., 3] == 0).all()


def test_truecolor_and_parcel_tiles_are_not_empty(built, client):
    _, pgrid = built
    lon, lat = _centre_lonlat(pgrid, 0, 20, 16)
    t = web_mercator().tile(lon, lat, 16)
    for product in ("dehaze", "parcels"):
        rgba = _png(client.get(f"/tiles/{product}/{DATE}/{t.z}/{t.x}/{t.y}.png").content)
        drawn = rgba[rgba[..., 3] > 0]
        assert len(drawn) > 100, product
        assert len(np.unique(drawn[:, :3], axis=0)) > 1, product


def test_the_colour_scale_is_the_percentile_range_of_the_date_over_all_tiles(built, client):
    store, pgrid = built
    body = client.get(f"/api/legend/dehaze/{DATE}").json()
    assert body["kind"] == "truecolor" and body["bands"] == ["B04", "B03", "B02"]
    pixels = []
    for tile in pgrid.tiles:
        with rasterio.open(cog_url(store, PROVINCE, "dehaze", tile.tile_id, DATE)) as src:
            pixels.append(src.read([3, 2, 1]).reshape(3, -1))
    want = np.percentile(np.concatenate(pixels, axis=1), [2, 98], axis=1)
    assert body["low"] == pytest.approx(want[0].tolist(), rel=1e-4)
    assert body["high"] == pytest.approx(want[1].tolist(), rel=1e-4)
    assert client.get(f"/api/legend/cloud_mask/{DATE}").json() == {
        "kind": "classes",
        "bands": ["cloud_mask"],
    }


def _renderer(built, tmp_path):
    from pipelines.web.render import TileRenderer
    from pipelines.web.store import StoreIndex

    store, _ = built
    return TileRenderer(StoreIndex(store, PROVINCE))


def test_a_tile_at_the_cogs_own_zoom_equals_rio_tilers_tile(built, tmp_path):
    from rio_tiler.io import Reader

    from pipelines.web.render import read_tile_window

    store, pgrid = built
    url = cog_url(store, PROVINCE, "dehaze", pgrid.tiles[0].tile_id, DATE)
    lon, lat = _centre_lonlat(pgrid, 0, 32, 32)
    for z in (16, 15):  # 64 px of 10 m: zoom 15-16 at this latitude
        t = web_mercator().tile(lon, lat, z)
        with Reader(url, tms=web_mercator()) as src:
            want = src.tile(t.x, t.y, t.z, tilesize=256, indexes=[3, 2, 1]).array
            got = read_tile_window(src, web_mercator().xy_bounds(t), [3, 2, 1]).array
        # Edge pixels and nearest-neighbour ties may fall the other way: a handful at most.
        valid = ~np.ma.getmaskarray(want) & ~np.ma.getmaskarray(got)
        edge = (np.ma.getmaskarray(got) != np.ma.getmaskarray(want)).sum()
        assert valid.sum() > 1000 and edge <= 0.005 * valid.sum()
        same = np.ma.getdata(got)[valid] == np.ma.getdata(want)[valid]
        assert same.mean() > 0.99


def test_a_zoomed_out_tile_reads_only_the_pixels_each_cog_covers(built, tmp_path, monkeypatch):
    from rio_tiler.io import Reader

    _, pgrid = built
    renderer = _renderer(built, tmp_path)
    sizes: list[tuple[int, int]] = []
    part = Reader.part

    def recording(self, bbox, **kwargs):
        sizes.append((kwargs["width"], kwargs["height"]))
        return part(self, bbox, **kwargs)

    monkeypatch.setattr(Reader, "part", recording)
    lon, lat = _centre_lonlat(pgrid, 0, 63, 63)  # the corner the four tiles share
    t = web_mercator().tile(lon, lat, 8)  # a 156 km tile: each 640 m COG is about 1 px
    rgba = _png(renderer.tile("cloud_mask", DATE, t.z, t.x, t.y))
    assert len(sizes) == 4 and all(w <= 3 and h <= 3 for w, h in sizes), sizes
    assert 4 <= (rgba[..., 3] > 0).sum() <= 16  # the four COGs, where they lie, nothing else


def test_a_tile_over_more_cogs_than_the_limit_is_left_empty(built, tmp_path):
    from pipelines.web import render

    _, pgrid = built
    lon, lat = _centre_lonlat(pgrid, 0, 63, 63)  # the corner the four tiles share
    renderer = _renderer(built, tmp_path)
    low = web_mercator().tile(lon, lat, 10)
    assert render.most_cogs_in_a_tile(renderer.index.items("cloud_mask", DATE), 10) == 4
    assert renderer.tile("cloud_mask", DATE, low.z, low.x, low.y) is not None
    renderer.max_tile_cogs = 3  # below the four a shared corner always has; refused at init
    assert renderer.tile("cloud_mask", DATE, low.z, low.x, low.y) is None
    with pytest.raises(BadInputError, match="max_tile_cogs: got 3; expected at least 4"):
        render.TileRenderer(renderer.index, max_tile_cogs=3)


def test_min_zoom_is_the_lowest_zoom_whose_tiles_read_at_most_the_limit():
    from pipelines.web import render
    from pipelines.web.store import ProductIndex, StoreIndex, TileItem

    # A province of 6 x 6 tiles of 0.1 degree (about 9 x 11 km at this latitude).
    items = tuple(
        TileItem(
            f"t{i}_{j}",
            DATE,
            (114.0 + 0.1 * i, 34.0 + 0.1 * j, 114.1 + 0.1 * i, 34.1 + 0.1 * j),
            "",
            "",
        )
        for i in range(6)
        for j in range(6)
    )
    assert render.most_cogs_in_a_tile(items, 0) == 36
    assert render.most_cogs_in_a_tile(items, 14) == 4  # a tile over a corner the grid shares
    assert render.most_cogs_in_a_tile(items, 11) == 9  # a 0.18 degree tile: 3 x 3 at most

    class Fixed(StoreIndex):
        def products(self):
            return {"dehaze": ProductIndex("dehaze", {DATE: items, "2025-07-25": items[:3]})}

    renderer = render.TileRenderer(Fixed("s", "p"), max_tile_cogs=4)
    zoom = renderer.min_zoom("dehaze")
    assert (
        render.most_cogs_in_a_tile(items, zoom) <= 4 < render.most_cogs_in_a_tile(items, zoom - 1)
    )
    assert zoom == 12 and renderer.min_zoom("dehaze") == 12
    assert render.TileRenderer(Fixed("s", "p"), max_tile_cogs=9).min_zoom("dehaze") == 11
    assert render.TileRenderer(Fixed("s", "p")).min_zoom("dehaze") == 0  # 36 <= 64


def test_the_products_list_says_from_which_zoom_a_layer_is_drawn(built, client, tmp_path):
    from pipelines.web.cli import serve
    from pipelines.web.render import MAX_TILE_COGS

    listed = {p["name"]: p for p in client.get("/api/products").json()["products"]}
    for name in ("cloud_mask", "dehaze", "parcels"):
        assert listed[name]["min_zoom"] == 0  # four tiles: every zoom
        assert listed[name]["max_tile_cogs"] == MAX_TILE_COGS
    assert inspect.signature(serve).parameters["max_tile_cogs"].default == MAX_TILE_COGS
    store, pgrid = built
    four = TestClient(create_app(_config(store, pgrid, tmp_path / "l.geojson"), max_tile_cogs=4))
    listed = {p["name"]: p for p in four.get("/api/products").json()["products"]}
    assert listed["cloud_mask"]["max_tile_cogs"] == 4


def test_the_colour_scale_of_a_large_date_samples_its_cogs_evenly(built, tmp_path, monkeypatch):
    from pipelines.web import render

    monkeypatch.setattr(render, "RANGE_SAMPLE_COGS", 2)
    renderer = _renderer(built, tmp_path)
    items = renderer.index.items("dehaze", DATE)
    sampled = render.spread_sample(items, 2)
    assert [it.tile_id for it in sampled] == [items[0].tile_id, items[-1].tile_id]
    pixels = []
    for item in sampled:
        with rasterio.open(item.cog_url) as src:
            pixels.append(src.read([3, 2, 1]).reshape(3, -1))
    want = np.percentile(np.concatenate(pixels, axis=1), [2, 98], axis=1)
    got = renderer.value_range("dehaze", DATE)
    assert got[:, 0] == pytest.approx(want[0], rel=1e-4)
    assert got[:, 1] == pytest.approx(want[1], rel=1e-4)


def test_spread_sample_keeps_the_ends_and_spaces_the_rest():
    from pipelines.web.render import spread_sample

    assert spread_sample(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread_sample(list(range(3)), 4) == [0, 1, 2]


def test_bad_tile_requests_name_what_is_valid(client):
    r = client.get(f"/tiles/no_such/{DATE}/15/1/1.png")
    assert r.status_code == 400 and "cloud_mask" in r.json()["error"]
    r = client.get("/tiles/cloud_mask/1999-01-01/15/1/1.png")
    assert r.status_code == 400 and DATE in r.json()["error"]
    r = client.get(f"/tiles/cloud_mask/{DATE}/3/9/1.png")
    assert r.status_code == 400 and r.json()["field"] == "tile"


def test_click_gives_the_pixel_values_and_the_stac_item(built, client):
    store, pgrid = built
    lon, lat = _centre_lonlat(pgrid, 1, 40, 10)
    body = client.get(f"/api/point/dehaze/{DATE}", params={"lon": lon, "lat": lat}).json()
    tile_id = pgrid.tiles[1].tile_id
    assert body["tile_id"] == tile_id
    with rasterio.open(cog_url(store, PROVINCE, "dehaze", tile_id, DATE)) as src:
        want = src.read(window=((40, 41), (10, 11)))[:, 0, 0]
    assert [body["values"][b] for b in BANDS] == pytest.approx(want.tolist())
    props = body["item"]["properties"]
    assert body["item"]["id"].endswith(f"dehaze_{tile_id}_{DATE}")
    assert props["terrapipe:model_checksums"] == {"dehaze": CHECKSUM}
    assert props["terrapipe:input_items"] == ["S2_item_1"]
    outside = client.get(f"/api/point/dehaze/{DATE}", params={"lon": lon + 1, "lat": lat})
    assert outside.status_code == 400 and "a point on a tile" in outside.json()["error"]
    bad = client.get(f"/api/point/dehaze/{DATE}", params={"lon": 200, "lat": lat})
    assert bad.status_code == 400 and bad.json()["field"] == "lon"


def test_parcel_under_a_click_is_outlined_from_the_cog(built, client):
    import geopandas as gpd
    from shapely.geometry import Point, shape

    _, pgrid = built
    lon, lat = _centre_lonlat(pgrid, 2, 20, 12)
    feature = client.get(f"/api/parcel/{DATE}", params={"lon": lon, "lat": lat}).json()
    assert feature["properties"]["parcel_id"] == 21
    assert feature["properties"]["tile_id"] == pgrid.tiles[2].tile_id
    poly = shape(feature["geometry"])
    assert poly.contains(Point(lon, lat))
    area = gpd.GeoSeries([poly], crs="EPSG:4326").to_crs(CRS).area.iloc[0]
    assert area == pytest.approx(32 * 16 * 100.0, rel=1e-3)
    gap = _centre_lonlat(pgrid, 2, 50, 2)
    r = client.get(f"/api/parcel/{DATE}", params={"lon": gap[0], "lat": gap[1]})
    assert r.status_code == 400 and "parcel id > 0" in r.json()["error"]


def test_a_missing_cog_is_named_and_other_products_still_list(built, tmp_path):
    import shutil

    store, pgrid = built
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    victim = Path(cog_url(copy, PROVINCE, "cloud_mask", pgrid.tiles[0].tile_id, DATE))
    victim.unlink()
    client = TestClient(create_app(_config(copy, pgrid, tmp_path / "labels.geojson")))
    lon, lat = _centre_lonlat(pgrid, 0, 32, 32)
    t = web_mercator().tile(lon, lat, 15)
    r = client.get(f"/tiles/cloud_mask/{DATE}/{t.z}/{t.x}/{t.y}.png")
    assert r.status_code == 404 and str(victim) in r.json()["error"]
    assert "missing" in r.json()["error"]
    products = {p["name"]: p for p in client.get("/api/products").json()["products"]}
    assert products["cloud_mask"]["kind"] == "classes"  # the other tiles still draw
    for tile in pgrid.tiles[1:]:
        Path(cog_url(copy, PROVINCE, "cloud_mask", tile.tile_id, DATE)).unlink()
    client = TestClient(create_app(_config(copy, pgrid, tmp_path / "labels.geojson")))
    products = {p["name"]: p for p in client.get("/api/products").json()["products"]}
    assert "missing from the store" in products["cloud_mask"]["error"]
    assert products["dehaze"]["kind"] == "truecolor"


def test_a_store_without_products_says_so(built, tmp_path):
    _, pgrid = built
    empty = str(tmp_path / "empty-store")
    client = TestClient(create_app(_config(empty, pgrid, tmp_path / "labels.geojson")))
    body = client.get("/api/products").json()
    assert body["products"] == [] and "holds no products" in body["message"]
    assert empty in body["message"]
    assert client.get("/api/runs").json() == {"runs": []}
    r = client.get("/api/runs/2025-01-01_2025-01-31_abc")
    assert r.status_code == 400 and "none yet" in r.json()["error"]


# ---- labels --------------------------------------------------------------------------------


def _point(pgrid: ProvinceGrid, i: int) -> dict:
    lon, lat = _centre_lonlat(pgrid, i % 4, 20 + i, 20 + i)
    return {"type": "Point", "coordinates": [lon, lat]}


def test_labels_save_count_undo_and_read_by_the_season_reader(built, tmp_path, client):
    _, pgrid = built
    labels = tmp_path / "labels.geojson"
    state = client.get("/api/labels").json()
    assert state["features"] == [] and state["min_per_crop"] == MIN_PER_CROP
    crops = state["crops"]
    assert crops == ["wheat", "corn", "rice", "cotton", "soybean"]
    assert not labels.exists()
    n = 0
    for crop in crops:
        for _ in range(MIN_PER_CROP):
            state = client.post("/api/labels", json={"crop": crop, "geometry": _point(pgrid, n)})
            assert state.status_code == 200, state.text
            n += 1
    state = state.json()
    assert state["ready"] and state["counts"] == {c: MIN_PER_CROP for c in crops}
    config = _config(built[0], pgrid, labels)
    read = read_labels(str(labels), config.aoi_geometry(), config.crs, crops)
    assert len(read) == n and sorted(set(read["crop"])) == sorted(crops)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.geojson"]  # no temp file left

    polygon = {
        "type": "Polygon",
        "coordinates": [[_point(pgrid, 0)["coordinates"], _point(pgrid, 1)["coordinates"]]],
    }
    polygon["coordinates"][0] += [_point(pgrid, 5)["coordinates"], polygon["coordinates"][0][0]]
    state = client.post(
        "/api/labels",
        json={"crop": "Corn ", "geometry": polygon, "properties": {"parcel_id": 7, "x": 1}},
    ).json()
    assert state["counts"]["corn"] == MIN_PER_CROP + 1
    last = json.loads(labels.read_text())["features"][-1]
    assert last["properties"]["crop"] == "corn" and last["properties"]["parcel_id"] == 7
    assert "x" not in last["properties"]

    state = client.post("/api/labels/undo").json()
    assert state["counts"]["corn"] == MIN_PER_CROP and len(state["features"]) == n
    assert len(json.loads(labels.read_text())["features"]) == n


def test_refused_labels_name_the_problem_and_keep_the_saved_file(built, tmp_path, client):
    _, pgrid = built
    labels = tmp_path / "labels.geojson"
    assert client.post(
        "/api/labels", json={"crop": "wheat", "geometry": _point(pgrid, 0)}
    ).is_success
    saved = labels.read_bytes()
    r = client.post("/api/labels", json={"crop": "banana", "geometry": _point(pgrid, 1)})
    assert r.status_code == 400 and "banana" in r.json()["error"] and "wheat" in r.json()["error"]
    lon, lat = _point(pgrid, 1)["coordinates"]
    outside = {"type": "Point", "coordinates": [lon + 0.5, lat]}
    r = client.post("/api/labels", json={"crop": "wheat", "geometry": outside})
    assert r.status_code == 400 and "inside the AOI" in r.json()["error"]
    r = client.post("/api/labels", json={"crop": "wheat", "geometry": {"type": "LineString"}})
    assert r.status_code == 400 and r.json()["field"] == "geometry"
    r = client.post("/api/labels", content=b"not json", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert labels.read_bytes() == saved
    assert client.post("/api/labels/undo").is_success
    r = client.post("/api/labels/undo")
    assert r.status_code == 400 and "a saved label to undo" in r.json()["error"]


def test_an_unreadable_label_file_is_refused_not_overwritten(built, tmp_path, client):
    _, pgrid = built
    labels = tmp_path / "labels.geojson"
    labels.write_text("{broken")
    r = client.post("/api/labels", json={"crop": "wheat", "geometry": _point(pgrid, 0)})
    assert r.status_code == 400 and "agri.labels" in r.json()["error"]
    assert labels.read_text() == "{broken"


def test_a_config_without_a_label_file_says_what_to_set(built, tmp_path):
    store, pgrid = built
    config = _config(store, pgrid, tmp_path / "x.geojson", agri={})
    r = TestClient(create_app(config)).get("/api/labels")
    assert r.status_code == 400 and r.json()["field"] == "agri.labels"


# ---- runs ----------------------------------------------------------------------------------


def test_a_run_shows_its_tiles_by_state_with_failure_reasons(built, client, monkeypatch):
    from types import SimpleNamespace

    from shapely.geometry import Point, shape

    from pipelines.engine import plan as plan_module
    from pipelines.engine import report as report_module
    from pipelines.engine.report import ProductStatus, RunReport, TileStatus

    _, pgrid = built
    run_id = "2025-07-15_2025-07-25_0123456789ab"
    done = ProductStatus("cloud_mask", "done", 1, 1)
    failed = ProductStatus(
        "dehaze",
        "failed",
        1,
        0,
        kind="bad_input",
        error="BadInputError",
        message="s2: no B04",
        scene="S2A_50SKD_20250720_0_L2A",
    )
    tiles = (
        TileStatus(pgrid.tiles[0].tile_id, "failed", (done, failed), 1.5, 1000),
        TileStatus(pgrid.tiles[1].tile_id, "done", (done,), 1.0, 500),
    )
    report = RunReport(
        run_id=run_id,
        plan_url=f"/store/{PROVINCE}/runs/{run_id}/plan.json",
        province=PROVINCE,
        window=("2025-07-15", "2025-07-25"),
        state="failed",
        outcome="failed",
        ended="2025-07-26T00:00:00+00:00",
        counts={"failed": 1, "pending": 0, "done": 2, "no_scenes": 0},
        tiles=tiles,
    )
    by_id = {t.tile_id: t for t in pgrid.tiles}
    monkeypatch.setattr(report_module, "run_ids", lambda store, province: [run_id])
    monkeypatch.setattr(report_module, "plan_url_of", lambda s, p, r: report.plan_url)
    plans_read: list[SimpleNamespace] = []
    reported_on: list[object] = []

    def read_plan(url):
        plans_read.append(SimpleNamespace(tile=lambda t: by_id[t]))
        return plans_read[-1]

    def run_report(url, store=None, plan=None, settled=None):
        reported_on.append(plan)
        return report

    monkeypatch.setattr(report_module, "run_report", run_report)
    monkeypatch.setattr(plan_module, "read_plan", read_plan)
    runs = client.get("/api/runs").json()["runs"]
    assert [r["run_id"] for r in runs] == [run_id] and runs[0]["state"] == "failed"
    assert runs[0]["products"] == ["cloud_mask", "dehaze"]
    body = client.get(f"/api/runs/{run_id}").json()
    # the plan is read once: for the report and the tiles' footprints
    assert len(plans_read) == 1 and reported_on[-1] is plans_read[0]
    assert body["report"]["counts"]["failed"] == 1 and "tiles" not in body["report"]
    # the page lists the scene at fault with its tiles (tests/integration/test_web.py)
    assert body["report"]["failed_scenes"] == {"S2A_50SKD_20250720_0_L2A": [pgrid.tiles[0].tile_id]}
    features = body["tiles"]["features"]
    assert [f["properties"]["state"] for f in features] == ["failed", "done"]
    shown = features[0]["properties"]["products"][1]
    assert shown["kind"] == "bad_input" and shown["message"] == "s2: no B04"
    lon, lat = _centre_lonlat(pgrid, 0, 32, 32)
    assert shape(features[0]["geometry"]).contains(Point(lon, lat))
    download = client.get(f"/api/runs/{run_id}/report.json")
    assert "attachment" in download.headers["content-disposition"]
    assert json.loads(download.content) == report.to_json()


# ---- yield ---------------------------------------------------------------------------------


def test_the_yield_forecast_is_a_county_choropleth_layer(built, tmp_path):
    from pipelines.products import season_file_url, season_item_url, write_table

    store, pgrid = built
    aoi = _aoi(pgrid)
    ring = aoi["coordinates"][0]
    mid = (ring[0][0] + ring[1][0]) / 2
    west = [ring[0], [mid, ring[0][1]], [mid, ring[2][1]], ring[3], ring[0]]
    counties = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"county_id": 1, "name": "West"},
                "geometry": {"type": "Polygon", "coordinates": [west]},
            },
            {"type": "Feature", "properties": {"county_id": 2, "name": "East"}, "geometry": aoi},
        ],
    }
    counties_path = tmp_path / "counties.geojson"
    counties_path.write_text(json.dumps(counties))
    forecast = pd.DataFrame(
        {
            "season": [2025, 2025, 2025],
            "county_id": [1, 1, 2],
            "crop": ["wheat", "corn", "wheat"],
            "forecast": [6.0, 7.5, 5.0],
            "lower": [5.0, 6.5, 4.0],
            "upper": [7.0, 8.5, np.nan],
        }
    )
    config = _config(
        store, pgrid, tmp_path / "labels.geojson", agri={"counties": str(counties_path)}
    )
    client = TestClient(create_app(config))
    assert "yield" not in [p["name"] for p in client.get("/api/products").json()["products"]]
    write_table(forecast, season_file_url(store, PROVINCE, "yield", 2025, "forecast.parquet"))
    item_url = season_item_url(store, PROVINCE, "yield", 2025)
    Path(item_url).parent.mkdir(parents=True)
    Path(item_url).write_text(json.dumps({"id": "webtest_yield_2025", "properties": {}}))
    try:
        found = {p["name"]: p for p in client.get("/api/products").json()["products"]}
        assert found["yield"]["kind"] == "choropleth" and found["yield"]["labels"] == ["2025"]
        body = client.get("/api/yield/2025").json()
        assert body["crops"] == ["corn", "wheat"] and body["range"] == [5.0, 7.5]
        by_name = {f["properties"]["name"]: f["properties"] for f in body["features"]}
        assert by_name["West"]["forecast"]["corn"] == {"forecast": 7.5, "lower": 6.5, "upper": 8.5}
        assert by_name["East"]["forecast"]["wheat"]["upper"] is None
        assert body["item"]["id"] == "webtest_yield_2025"
        r = client.get("/api/yield/2024")
        assert r.status_code == 400 and "[2025]" in r.json()["error"]
        no_counties = TestClient(create_app(_config(store, pgrid, tmp_path / "l.geojson")))
        r = no_counties.get("/api/yield/2025")
        assert r.status_code == 400 and r.json()["field"] == "agri.counties"
    finally:
        import shutil

        shutil.rmtree(Path(store) / PROVINCE / "yield")


# ---- object store --------------------------------------------------------------------------


def test_a_store_on_s3_draws_and_answers_clicks(built, tmp_path, s3_store):
    from pipelines import storage

    store, pgrid = built
    fs, remote = storage.filesystem(s3_store)
    fs.put(str(Path(store) / PROVINCE), f"{remote.rstrip('/')}/{PROVINCE}", recursive=True)
    client = TestClient(create_app(_config(s3_store, pgrid, tmp_path / "labels.geojson")))
    names = [p["name"] for p in client.get("/api/products").json()["products"]]
    assert sorted(names) == ["cloud_mask", "dehaze", "parcels"]
    lon, lat = _centre_lonlat(pgrid, 0, 32, 32)
    t = web_mercator().tile(lon, lat, 15)
    rgba = _png(client.get(f"/tiles/cloud_mask/{DATE}/{t.z}/{t.x}/{t.y}.png").content)
    assert (rgba[..., 3] > 0).sum() > 1000
    body = client.get(f"/api/point/cloud_mask/{DATE}", params={"lon": lon, "lat": lat}).json()
    assert body["tile_id"] == pgrid.tiles[0].tile_id and body["values"]["cloud_mask"] in (
        1,
        2,
        3,
        4,
    )


def test_each_date_is_its_own_layer(built, tmp_path):
    import shutil

    store, pgrid = built
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    later = "2025-07-25"
    init_cube(copy, PROVINCE, "cloud_mask", pgrid, [later], {"cloud_mask": ("uint8", 0, {})})
    tile = pgrid.tiles[0]
    data = _tile_data(tile, {"cloud_mask": np.full((1, TILE_PX, TILE_PX), 2, dtype="uint8")})
    data = data.assign_coords(time=pd.to_datetime([later]).values)
    write_tile_product(
        copy,
        PROVINCE,
        "cloud_mask",
        pgrid,
        tile,
        data,
        stage=get_stage("cloud_mask"),
        spec=ProductSpec(quicklook=None),
    )
    build_catalog(copy, PROVINCE)
    client = TestClient(create_app(_config(copy, pgrid, tmp_path / "labels.geojson")))
    found = {p["name"]: p for p in client.get("/api/products").json()["products"]}
    assert found["cloud_mask"]["labels"] == [DATE, later]
    cloud = tuple(int(PALETTES[CloudClass][CloudClass.CLOUD][i : i + 2], 16) for i in (1, 3, 5))
    here = web_mercator().tile(*_centre_lonlat(pgrid, 0, 32, 32), 17)
    rgba = _png(client.get(f"/tiles/cloud_mask/{later}/{here.z}/{here.x}/{here.y}.png").content)
    drawn = rgba[rgba[..., 3] > 0][:, :3]
    assert len(drawn) > 1000 and {tuple(int(v) for v in px) for px in drawn} == {cloud}
    there = web_mercator().tile(*_centre_lonlat(pgrid, 3, 32, 32), 17)
    rgba = _png(client.get(f"/tiles/cloud_mask/{later}/{there.z}/{there.x}/{there.y}.png").content)
    assert (rgba[..., 3] == 0).all()  # that tile has no scene on the later date
