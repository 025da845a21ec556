"""The loopback S3 server: COGs through storage.put_file read back by rasterio and stackstac, and
the tiny demo archive round-tripped through s3:// (written, served, searched, loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from pipelines import storage
from pipelines.catalog.search import search
from pipelines.catalog.server import serve_archive
from pipelines.load import load_s1, load_s2
from pipelines.testing import stac as builder

pytestmark = pytest.mark.integration


def test_env_points_at_loopback(s3_store: str, s3_server) -> None:
    assert s3_store.startswith("s3://terrapipe-test/t-")
    assert storage.s3_endpoint_url() == s3_server.endpoint_url
    env = storage.gdal_env(s3_store)
    assert env["AWS_S3_ENDPOINT"] == s3_server.endpoint_url.split("://")[1]
    assert env["AWS_VIRTUAL_HOSTING"] == "FALSE" and env["AWS_HTTPS"] == "NO"


def test_cog_round_trip_rasterio_and_stackstac(s3_store: str, tmp_path: Path) -> None:
    gb = GeoBox.from_bbox((500000, 5000000, 500320, 5000320), crs="EPSG:32633", resolution=10)
    dn = {"B04": np.arange(32 * 32, dtype="uint16").reshape(32, 32) + 1000}
    dn["B04"][0, 0] = 0
    item = builder.s2_item(tmp_path, "S3_ITEM", gb, "2024-06-01T10:00:00Z", dn)
    local = item["assets"]["red"]["href"]
    url = storage.join(s3_store, "red.tif")
    storage.put_file(local, url)
    assert storage.exists(url)
    # GDAL reads the credentials from the environment; rasterio.Env refuses them as options
    options = {k: v for k, v in storage.gdal_env(url).items() if "ACCESS_KEY" not in k}
    with rasterio.Env(**options), rasterio.open(url) as src:
        np.testing.assert_array_equal(src.read(1), dn["B04"])
        assert src.crs.to_epsg() == 32633
    item["assets"]["red"]["href"] = url
    da = load_s2([item], gb, bands=("B04",), with_scl=False).compute()
    want = dn["B04"].astype("float32") * np.float32(1e-4) - np.float32(0.1)
    got = da.isel(time=0, band=0).values
    assert np.isnan(got[0, 0])
    np.testing.assert_allclose(got.ravel()[1:], want.ravel()[1:], atol=1e-6)


def test_storage_rasterio_env_with_credentials(s3_store: str, tmp_path: Path) -> None:
    gb = GeoBox.from_bbox((500000, 5000000, 500160, 5000160), crs="EPSG:32633", resolution=10)
    path = builder.write_cog(tmp_path / "a.tif", np.ones((16, 16), "uint16"), gb, nodata=0)
    url = storage.join(s3_store, "a.tif")
    storage.put_file(path, url)
    with storage.rasterio_env(url), rasterio.open(url) as src:
        assert src.read(1).sum() == 256


def _upload_tree(local: Path, url: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.put_file(str(path), storage.join(url, str(path.relative_to(local))))


def _rewrite_hrefs(local: Path, url: str) -> None:
    """Point the uploaded item collections at the s3:// copies of their assets."""
    for path in sorted((local / "stac" / "items").glob("*.json")):
        fc = json.loads(path.read_text())
        for item in fc["features"]:
            for asset in item["assets"].values():
                href = asset["href"]
                if href.startswith(str(local)):
                    asset["href"] = storage.join(url, str(Path(href).relative_to(local)))
        storage.write_text(storage.join(url, "stac", "items", path.name), json.dumps(fc))


def test_archive_round_trip_through_s3(mini_archive, s3_store: str, tmp_path: Path) -> None:
    """Builder archive: written to s3://, served from there, searched, loaded == local copy."""
    archive = s3_store + "/archive"
    _upload_tree(mini_archive.root, archive)
    _rewrite_hrefs(mini_archive.root, archive)
    gb = mini_archive.geobox
    with serve_archive(archive, run_dir=tmp_path / "run") as server:
        items = search(server.url, ["s2", "s1"], datetime="2024-06-01/2024-06-30")
    s2 = [i for i in items if i.collection_id == "sentinel-2-l2a"]
    s1 = [i for i in items if i.collection_id == "sentinel-1-rtc"]
    assert {i.id for i in s2} == {"ES_W_20240601", "ES_E_20240601", "MPC_20240611"}
    assert all(a.href.startswith("s3://") for i in items for a in i.assets.values())
    remote = load_s2(s2, gb).compute()
    local_items = [d for d in mini_archive.items["sentinel-2-l2a"] if d["id"] in {i.id for i in s2}]
    local = load_s2(local_items, gb).compute()
    np.testing.assert_array_equal(remote.values, local.values)
    assert np.isfinite(remote.values).mean() > 0.9
    np.testing.assert_array_equal(
        load_s1(s1, gb).values, load_s1(mini_archive.items["sentinel-1-rtc"], gb).values
    )


def _s3_requests(monkeypatch) -> list[tuple[str, int | None]]:
    """Each request the S3 client makes from now on, in order: (operation, bytes of the answer's
    body, None without one or while it is under way)."""
    import aiobotocore.client

    requests: list[tuple[str, int | None]] = []
    original = aiobotocore.client.AioBaseClient._make_api_call

    async def counted(self, operation, params):
        k = len(requests)
        requests.append((operation, None))
        answer = await original(self, operation, params)
        requests[k] = (operation, answer.get("ContentLength"))
        return answer

    monkeypatch.setattr(aiobotocore.client.AioBaseClient, "_make_api_call", counted)
    return requests


def test_a_small_object_is_read_in_one_request(s3_store: str, monkeypatch) -> None:
    """Markers and batch records are read by the tens of thousands in a province: each read is
    one GET, a missing one too (opening the object as a file asked for its size first, and for
    a missing key listed its prefix as well: two requests either way)."""
    url = storage.join(s3_store, "marker.json")
    storage.write_text(url, '{"type": "Feature"}')
    requests = _s3_requests(monkeypatch)
    assert storage.read_text(url) == '{"type": "Feature"}'
    assert [op for op, _ in requests] == ["GetObject"]
    requests.clear()
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(s3_store, "missing.json"))
    assert [op for op, _ in requests] == ["GetObject"]


def test_a_batchs_part_of_a_plan_is_streamed_from_s3(s3_store: str) -> None:
    """A batch's task streams the plan from the object store (:func:`read_plan_part`): the
    same part as the whole plan read and cut in memory."""
    from dataclasses import replace

    from pipelines.engine.plan import read_plan, read_plan_part, write_plan
    from tests.unit.pipelines.engine.test_plan import synthetic_plan

    whole = replace(synthetic_plan(), batches=[["x0000_y0000"], ["x0001_y0000"]])
    url = storage.join(s3_store, "p", "runs", "r", "plan.json")
    write_plan(whole, url)
    assert read_plan(url) == whole
    for batch in range(2):
        assert read_plan_part(url, batch) == whole.batch_part(batch)


def test_a_range_of_a_table_is_read_from_s3_in_a_few_small_requests(
    s3_store: str, monkeypatch
) -> None:
    """A crop-map batch reads its parcels' rows of the season's predictions from the object
    store: the footer and the row groups that may hold them, not the whole object."""
    import pandas as pd

    from pipelines import products

    rng = np.random.default_rng(0)
    n = 12 * 2**14  # row groups of about 1 MB, as the predictions' (a probability per crop)
    frame = pd.DataFrame(
        {f"p_{k}": rng.random(n) for k in range(8)},
        index=pd.Index(np.arange(n, dtype="int64"), name="parcel_id"),
    )
    url = storage.join(s3_store, "crop_predictions.parquet")
    size = products.write_table(frame, url, row_group_rows=2**14)
    requests = _s3_requests(monkeypatch)
    rows = products.RowRange("parcel_id", 3 * 2**14 + 5, 4 * 2**14 - 5)
    got = products.read_table(url, rows)
    fetched = [n for op, n in requests if op == "GetObject"]
    pd.testing.assert_frame_equal(got, frame.iloc[3 * 2**14 + 5 : 4 * 2**14 - 5])
    assert len(fetched) <= 4 and sum(fetched) < size / 3, (fetched, size)
