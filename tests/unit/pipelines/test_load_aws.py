"""Scenes of AWS's open data (``s3://`` links: Earth Search's Copernicus DEM) read from AWS
over HTTPS without credentials, whatever S3 the store uses: the real GDAL reads, through a
local stand-in for AWS and for the store's MinIO (tests/fixtures/blob.py; plain HTTP through
GDAL's proxy); no request leaves the machine."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from pipelines.config import EARTH_SEARCH_HOST, parse_config, stac_signing
from pipelines.errors import BadInputError
from pipelines.load import aws_open_data_href
from tests.fixtures.blob import STORE_HOST, STORE_KEY, BlobStore, dem_cog, dem_item


@pytest.fixture
def store_on_minio(blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> BlobStore:
    """The stand-in answering for AWS and for a store on MinIO, over plain HTTP, the store's
    endpoint and key in the environment, as a deployment's Secret puts them."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{STORE_HOST}:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STORE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return blob_store


def _dem_on_s3(store: BlobStore, bucket: str) -> dict[str, Any]:
    key = f"test/{uuid.uuid4().hex}.tif"
    store.blobs[f"/{bucket}/{key}"] = dem_cog(np.arange(4096, dtype="float32").reshape(64, 64))
    return dem_item(f"s3://{bucket}/{key}")


#: Reads in a fresh process: GDAL's S3 reader keeps the endpoint and key it first used for
#: the whole process (other tests' S3 server among them), which is what is tested here.
_READS = """
import json, sys
import numpy as np
from pipelines import load
from tests.fixtures.blob import GRID
load.AWS_OPEN_DATA_URL = "http://{bucket}.s3.amazonaws.com/{key}"
for item, sign in json.loads(sys.argv[1]):
    dem = load.load_dem([item], GRID, sign=sign).compute(scheduler="threads")
    assert np.isfinite(dem.values).all()
"""


def test_open_data_is_read_from_aws_without_credentials_and_the_store_from_the_store(
    store_on_minio: BlobStore,
) -> None:
    """Earth Search's DEM read with the store's S3 settings went to the store's MinIO (or to
    AWS signed with MinIO's key: refused); with no key at all, GDAL refused to try
    ('AWS_SECRET_ACCESS_KEY and AWS_NO_SIGN_REQUEST ... not defined'). Read over HTTPS, it
    leaves GDAL's S3 reader, and so the store's signed reads in the same process, alone."""
    import json
    import os
    import subprocess
    import sys

    dem = _dem_on_s3(store_on_minio, "copernicus-dem-30m")
    mine = _dem_on_s3(store_on_minio, "archive")  # an archive of the user's own on the store
    reads = json.dumps([[dem, "aws_public"], [mine, "none"]])
    done = subprocess.run(
        [sys.executable, "-c", _READS, reads], env=dict(os.environ), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    requests = store_on_minio.requests
    assert requests and all(r.status in (200, 206) for r in requests)
    by_host = {(r.path.split("/")[1], r.host, r.key_id) for r in requests}
    assert by_host == {
        ("copernicus-dem-30m", "copernicus-dem-30m.s3.amazonaws.com", None),
        ("archive", STORE_HOST, STORE_KEY),
    }


def test_an_open_data_link_is_its_public_https_url() -> None:
    assert aws_open_data_href("s3://copernicus-dem-30m/A_DEM/A_DEM.tif") == (
        "https://copernicus-dem-30m.s3.amazonaws.com/A_DEM/A_DEM.tif"
    )
    https = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif"
    assert aws_open_data_href(https) == https


def test_earth_search_reads_its_s3_links_as_open_data_by_default() -> None:
    assert stac_signing({"url": f"https://{EARTH_SEARCH_HOST}/v1"}) == "aws_public"
    assert stac_signing({"url": "https://planetarycomputer.microsoft.com/api/stac/v1"}) == (
        "planetary_computer"
    )
    assert stac_signing({"url": "https://stac.example.org"}) == "none"
    assert stac_signing({"archive": "s3://bucket/archive"}) == "none"  # lives with the store
    assert stac_signing({"url": f"https://{EARTH_SEARCH_HOST}/v1", "sign": "none"}) == "none"
    with pytest.raises(BadInputError, match="aws_public"):
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
            "stac": {"url": "https://stac.example.org", "sign": "aws_public"},
        }
    )
    assert config.stac.signing == "aws_public"
