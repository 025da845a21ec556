"""Scenes on AWS S3 (``s3://`` links: Earth Search's Copernicus DEM, its Sentinel-2 L1C) read
from AWS itself, whatever S3 the store uses: the real GDAL reads, through a local stand-in for
S3 (tests/fixtures/blob.py; plain HTTP through GDAL's proxy); no request leaves the machine."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from pipelines.config import EARTH_SEARCH_HOST, parse_config, stac_signing
from pipelines.errors import BadInputError
from pipelines.load import load_dem, scene_gdal_options
from tests.fixtures.blob import GRID, BlobStore, dem_cog, dem_item


@pytest.fixture
def aws_via_proxy(blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> BlobStore:
    """The stand-in answering for AWS over plain HTTP (``AWS_HTTPS=NO`` from the environment,
    as GDAL reads it there when no option sets it), and a store on MinIO: its endpoint and
    key in the environment, as a deployment's Secret puts them."""
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "MINIOKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return blob_store


def _dem_on_s3(store: BlobStore, bucket: str) -> dict[str, Any]:
    key = f"test/{uuid.uuid4().hex}.tif"
    store.blobs[f"/{bucket}/{key}"] = dem_cog(np.arange(4096, dtype="float32").reshape(64, 64))
    return dem_item(f"s3://{bucket}/{key}")


def test_open_data_is_read_from_aws_unsigned_whatever_s3_the_store_uses(
    aws_via_proxy: BlobStore,
) -> None:
    """Earth Search's DEM (``s3://copernicus-dem-30m``) read with the store's settings went to
    the store's MinIO, or to AWS signed with MinIO's key (refused); with no key at all, GDAL
    refused to try ('AWS_SECRET_ACCESS_KEY and AWS_NO_SIGN_REQUEST ... not defined')."""
    item = _dem_on_s3(aws_via_proxy, "copernicus-dem-30m")
    dem = load_dem([item], GRID, sign="aws_public")
    assert np.isfinite(dem.compute(scheduler="threads").values).all()
    assert aws_via_proxy.requests and aws_via_proxy.refused() == 0
    assert all(r.host.endswith("amazonaws.com") and not r.signed for r in aws_via_proxy.requests)


def test_with_the_store_s_settings_aws_refuses_the_store_s_key(aws_via_proxy: BlobStore) -> None:
    """What ``none`` does with an s3:// link (the store's settings): not for AWS's open data."""
    options = scene_gdal_options("none")
    assert options["AWS_S3_ENDPOINT"] == "minio.internal:9000"
    aws = scene_gdal_options("aws_public")
    assert aws["AWS_NO_SIGN_REQUEST"] == "YES"
    assert not {"AWS_S3_ENDPOINT", "AWS_VIRTUAL_HOSTING", "AWS_HTTPS", "AWS_REGION"} & set(aws)


def test_requester_pays_is_signed_with_the_process_s_aws_key_and_paid(
    aws_via_proxy: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earth Search's Sentinel-2 L1C (``s3://sentinel-s2-l1c``) and USGS's Landsat serve only
    requesters who sign and pay. (GDAL keeps a bucket's request settings for the process: each
    bucket here is read one way only.)"""
    from pipelines.engine.run import _read_failure

    aws_via_proxy.requester_pays |= {"sentinel-s2-l1c", "usgs-landsat"}
    aws_via_proxy.aws_keys.add("AKIAREALAWSKEY")
    item = _dem_on_s3(aws_via_proxy, "usgs-landsat")
    with pytest.raises(Exception) as failed:  # as open data: unsigned, refused
        load_dem([item], GRID, sign="aws_public").compute(scheduler="threads")
    refused = _read_failure(failed.value)
    assert isinstance(refused, BadInputError) and "usgs-landsat" in str(refused)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALAWSKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real-secret")
    item = _dem_on_s3(aws_via_proxy, "sentinel-s2-l1c")
    dem = load_dem([item], GRID, sign="aws_requester_pays")
    assert np.isfinite(dem.compute(scheduler="threads").values).all()
    paid = [r for r in aws_via_proxy.requests if "sentinel-s2-l1c" in r.path]
    assert paid and all(r.status in (200, 206) and r.signed and r.payer for r in paid)


def test_earth_search_reads_its_s3_links_from_aws_by_default() -> None:
    assert stac_signing({"url": f"https://{EARTH_SEARCH_HOST}/v1"}) == "aws_public"
    assert stac_signing({"url": "https://planetarycomputer.microsoft.com/api/stac/v1"}) == (
        "planetary_computer"
    )
    assert stac_signing({"url": "https://stac.example.org"}) == "none"
    assert stac_signing({"archive": "s3://bucket/archive"}) == "none"  # lives with the store
    assert stac_signing({"url": f"https://{EARTH_SEARCH_HOST}/v1", "sign": "none"}) == "none"
    with pytest.raises(BadInputError, match="aws_requester_pays"):
        stac_signing({"sign": "aws"})
    config = parse_config(
        {
            "province": "p",
            "aoi": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
            "crs": "EPSG:32631",
            "start": "2025-07-01",
            "end": "2025-07-31",
            "products": ["cloud_mask"],
            "store": "/tmp/store",
            "stac": {"url": f"https://{EARTH_SEARCH_HOST}/v1", "sign": "aws_requester_pays"},
        }
    )
    assert config.stac.signing == "aws_requester_pays"
