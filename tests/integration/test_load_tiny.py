"""The tiny demo archive end to end: served, searched (== brute force), loaded (== the COG DNs
scaled), and round-tripped through the loopback S3 server."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from shapely.geometry import box, shape

from pipelines import storage
from pipelines.catalog.search import search
from pipelines.catalog.server import serve_archive
from pipelines.load import load_dem, load_s1, load_s2

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _grid(archive: Path) -> GeoBox:
    info = json.loads((archive / "archive.json").read_text())
    return GeoBox((info["height"], info["width"]), Affine(*info["transform"][:6]), info["crs"])


def _features(archive: Path, collection: str) -> list[dict]:
    return json.loads((archive / "stac" / "items" / f"{collection}.json").read_text())["features"]


@pytest.mark.parametrize(("window", "max_cc"), [(None, None), ("2025-05-01/2025-08-31", 30.0)])
def test_search_tiny_equals_brute_force(tiny_stac_api, tiny_archive, window, max_cc) -> None:
    info = json.loads((tiny_archive / "archive.json").read_text())
    bbox = info["bbox_wgs84"]
    got = search(tiny_stac_api.url, ["s2"], bbox=bbox, datetime=window, max_cloud_cover=max_cc)
    start = end = None
    if window:
        start, end = (datetime.fromisoformat(w + "T00:00:00+00:00") for w in window.split("/"))
        end = end.replace(hour=23, minute=59, second=59)
    expected = set()
    for f in _features(tiny_archive, "sentinel-2-l2a"):
        t = datetime.fromisoformat(f["properties"]["datetime"].replace("Z", "+00:00"))
        if not shape(f["geometry"]).intersects(box(*bbox)):
            continue
        if (start and t < start) or (end and t > end):
            continue
        if max_cc is not None and f["properties"]["eo:cloud_cover"] > max_cc:
            continue
        expected.add(f["id"])
    assert expected and {i.id for i in got} == expected


def test_load_tiny_values(tiny_stac_api, tiny_archive) -> None:
    gb = _grid(tiny_archive)
    items = search(tiny_stac_api.url, ["s2"], datetime="2025-06-01/2025-06-30")
    da = load_s2(items, gb).compute()
    assert da.shape[1:] == (5, *gb.shape) and da.dtype == np.float32
    first = da.item_ids.values[0].split(",")[0]
    item = next(i for i in items if i.id == first)
    with rasterio.open(item.assets["red"].href) as src:
        dn = src.read(1).astype("float32")
    got = da.sel(band="B04").isel(time=0).values
    valid = dn != 0
    np.testing.assert_allclose(
        got[valid], dn[valid] * np.float32(1e-4) - np.float32(0.1), atol=1e-6
    )
    assert np.isnan(got[~valid]).all()
    s1 = load_s1(search(tiny_stac_api.url, ["s1"], datetime="2025-07-01/2025-07-31"), gb)
    assert s1.sizes["time"] >= 2 and np.isfinite(s1.values).mean() > 0.9
    dem = load_dem(search(tiny_stac_api.url, ["dem"]), gb).compute()
    assert np.isfinite(dem.values).all()


def test_tiny_archive_round_trips_through_s3(tiny_archive, s3_store: str, tmp_path: Path) -> None:
    archive = s3_store + "/tiny"
    window = "2025-07-01/2025-07-31"
    for path in sorted(p for p in (tiny_archive / "data").rglob("*.tif")):
        storage.put_file(str(path), storage.join(archive, str(path.relative_to(tiny_archive))))
    for kind in ("collections", "items"):
        for path in sorted((tiny_archive / "stac" / kind).glob("*.json")):
            text = path.read_text().replace(f'"{tiny_archive}/', f'"{archive}/')
            storage.write_text(storage.join(archive, "stac", kind, path.name), text)
    gb = _grid(tiny_archive)
    with serve_archive(archive, run_dir=tmp_path / "run") as server:
        remote_items = search(server.url, ["s2"], datetime=window)
    with serve_archive(str(tiny_archive), run_dir=tmp_path / "local") as server:
        local_items = search(server.url, ["s2"], datetime=window)
    assert [i.id for i in remote_items] == [i.id for i in local_items] and remote_items
    assert remote_items[0].assets["red"].href.startswith("s3://")
    remote = load_s2(remote_items, gb).compute()
    local = load_s2(local_items, gb).compute()
    np.testing.assert_array_equal(remote.values, local.values)
