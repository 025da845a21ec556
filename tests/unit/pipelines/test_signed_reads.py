"""Links that need a token, signed as the file is opened (pipelines/signed_reads.py): the real
reader, a local token endpoint (tests/fixtures/sas.py) and a local stand-in for Azure Blob
Storage (tests/fixtures/blob.py); no request leaves the machine."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import numpy as np
import pytest

from pipelines.errors import BadInputError, TransientIOError, failure_class
from pipelines.load import load_dem
from tests.fixtures.blob import GRID, PX, BlobStore, dem_cog, dem_item
from tests.fixtures.sas import SasEndpoint

ACCOUNT_CONTAINER = "elevationeuwest.blob.core.windows.net/copernicus-dem"


@pytest.fixture
def dem_blob(blob_store: BlobStore) -> tuple[dict[str, Any], np.ndarray]:
    heights = np.arange(64 * 64, dtype="float32").reshape(64, 64)
    path = f"/copernicus-dem/test/{uuid.uuid4().hex}.tif"
    blob_store.blobs[path] = dem_cog(heights)
    return dem_item(f"http://elevationeuwest.blob.core.windows.net{path}"), heights


def test_a_link_is_signed_when_the_file_is_opened_not_when_the_graph_is_built(
    dem_blob, blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    item, heights = dem_blob
    dem = load_dem([item], GRID, sign="planetary_computer")
    assert sas_endpoint.requests == [] and blob_store.requests == []  # nothing asked yet
    assert "sig=" not in repr(dict(dem.__dask_graph__()))  # no token in the graph
    values = dem.compute(scheduler="threads").values
    assert np.isfinite(values).all() and values.min() >= heights.min()
    assert sas_endpoint.token_requests() == ["elevationeuwest/copernicus-dem"]
    assert blob_store.requests and blob_store.refused() == 0
    assert all(r.se for r in blob_store.requests)


def _tokens_valid_for(seconds: float, se_offset_s: float = 0.0) -> Any:
    """A token service body: tokens that expire ``seconds`` after each request (``msft:expiry``
    and the token's own ``se``, which the blob store checks, offset by ``se_offset_s``)."""

    def body() -> bytes:
        now = dt.datetime.now(dt.UTC)
        expiry = now + dt.timedelta(seconds=seconds)
        se = (expiry + dt.timedelta(seconds=se_offset_s)).strftime("%Y-%m-%dT%H%%3A%M%%3A%SZ")
        token = f"sv=2024-05-04&se={se}&sp=rl&sr=c&sig=FAKEsig%3D"
        return json.dumps(
            {"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token}
        ).encode()

    return body


def test_a_graph_read_after_the_token_of_its_build_time_expired_reads(
    dem_blob, blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    """Tokens valid for 2 s; the graph is computed 3 s after it was built, as a tile's read
    waits in a busy cluster's queue or for a later round. Signed at build time, every read was
    refused (HTTP 403) and failed as a corrupt file, not retried."""
    import time

    item, _ = dem_blob
    sas_endpoint.body = _tokens_valid_for(2.0)
    dem = load_dem([item], GRID, sign="planetary_computer")
    time.sleep(3.0)
    assert np.isfinite(dem.compute(scheduler="threads").values).all()
    assert blob_store.requests and blob_store.refused() == 0


def test_a_cached_token_with_less_than_the_margin_left_is_replaced_before_the_open(
    dem_blob, blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    """The package keeps a token until a minute before it expires: a file opened with 5
    minutes left would be refused halfway through a long round. A token with less than
    SAS_MIN_TTL_S left is replaced first."""
    from planetary_computer.sas import TOKEN_CACHE, SASToken

    from pipelines.load import SAS_MIN_TTL_S, sign_href

    item, _ = dem_blob
    sas_endpoint.body = _tokens_valid_for(3600.0)
    sign_href(item["assets"]["data"]["href"])
    ((url, cached),) = TOKEN_CACHE.items()
    assert SAS_MIN_TTL_S > 300.0
    late = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=300)  # the same token, 55 min on
    TOKEN_CACHE[url] = SASToken(**{"msft:expiry": late, "token": cached.token})
    dem = load_dem([item], GRID, sign="planetary_computer")
    assert np.isfinite(dem.compute(scheduler="threads").values).all()
    assert len(sas_endpoint.requests) == 2  # replaced
    assert TOKEN_CACHE[url].expiry > late + dt.timedelta(minutes=30)


def test_a_service_handing_out_short_tokens_is_not_asked_at_every_open(
    dem_blob, sas_endpoint: SasEndpoint
) -> None:
    from pipelines.load import sign_href

    item, _ = dem_blob
    href = item["assets"]["data"]["href"]
    sas_endpoint.body = _tokens_valid_for(300.0)
    first = sign_href(href)  # 5 min left: asked again once, then used as it is
    assert first.expiry is not None and len(sas_endpoint.requests) == 2
    for _ in range(3):
        assert sign_href(href).expiry == first.expiry
    assert len(sas_endpoint.requests) == 2


def test_a_refused_read_is_transient_only_once_its_token_expired() -> None:
    from pipelines.load import expired_token_failure

    href = f"https://{ACCOUNT_CONTAINER}/a/b.tif"
    refused = RuntimeError(f"Error reading Window(...) from '{href}': HTTP response code: 403")
    now = dt.datetime.now(dt.UTC)
    expired = expired_token_failure(href, now - dt.timedelta(seconds=5), refused)
    assert isinstance(expired, TransientIOError) and failure_class(expired) == "transient"
    assert expired.__cause__ is refused and "expired" in str(expired)
    assert expired_token_failure(href, now + dt.timedelta(seconds=30), refused) is not None
    # a token with time left, no token, or another failure: not an expired token
    assert expired_token_failure(href, now + dt.timedelta(minutes=30), refused) is None
    assert expired_token_failure(href, None, refused) is None
    other = RuntimeError(f"Error reading Window(...) from '{href}': HTTP response code: 500")
    assert expired_token_failure(href, now - dt.timedelta(seconds=5), other) is None


def test_a_link_its_token_does_not_open_is_bad_input_naming_it_without_the_token(
    dem_blob, blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    """A token the service says is valid for an hour whose signature the storage refuses: not
    an expiry, so not retried; the message names the link, not the token."""
    from pipelines.load import classify_read_error

    item, _ = dem_blob
    sas_endpoint.body = _tokens_valid_for(3600.0, se_offset_s=-7200.0)
    dem = load_dem([item], GRID, sign="planetary_computer")
    with pytest.raises(Exception) as failed:
        dem.compute(scheduler="threads")
    classified = classify_read_error(failed.value, [item])  # as a tile's failure is recorded
    assert isinstance(classified, BadInputError), repr(classified)
    assert "sig=" not in str(classified) and "copernicus-dem/test/" in str(classified)
    assert "stac.exclude_items" not in str(classified)  # the credentials', not the scene's
    assert blob_store.refused() >= 1


def test_a_refused_token_request_at_the_open_names_the_subscription_key(
    dem_blob, blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    item, _ = dem_blob
    dem = load_dem([item], GRID, sign="planetary_computer")
    sas_endpoint.statuses = [403]
    with pytest.raises(BadInputError) as failed:
        dem.compute(scheduler="threads")
    assert failed.value.field == "PC_SDK_SUBSCRIPTION_KEY"
    assert blob_store.requests == []


def test_the_signing_reader_pickles_its_unsigned_link(
    dem_blob, blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    """Readers travel between workers as their state: the link without a token, also once
    the file is open."""
    import pickle

    from rasterio.enums import Resampling
    from stackstac.raster_spec import RasterSpec
    from stackstac.rio_reader import DEFAULT_GDAL_ENV

    from pipelines.signed_reads import SigningRioReader

    item, _ = dem_blob
    href = item["assets"]["data"]["href"]
    reader = SigningRioReader(
        url=href,
        spec=RasterSpec(epsg=4326, bounds=(15.0, 34.0, 15.064, 34.064), resolutions_xy=(PX, PX)),
        resampling=Resampling.nearest,
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),
        scale_offset=(1.0, 0.0),
        gdal_env=DEFAULT_GDAL_ENV,
    )
    assert reader.dataset is not None and blob_store.requests  # opened, with a token
    assert reader.url == href and "sig=" not in repr(reader.__getstate__())
    copy = pickle.loads(pickle.dumps(reader))
    assert isinstance(copy, SigningRioReader) and copy.url == href


def test_a_file_the_storage_does_not_have_fails_its_products_naming_it(
    blob_store: BlobStore, sas_endpoint: SasEndpoint
) -> None:
    """stackstac reads an HTTP 404 as nodata by default: the product was written, marked done
    and listed the scene as an input, without a pixel of it (a missing local file failed). The
    failure names the item the signed link belongs to, and how a run leaves it out."""
    from pipelines.load import classify_read_error

    href = f"http://{ACCOUNT_CONTAINER}/test/{uuid.uuid4().hex}.tif"
    item = dem_item(href)
    dem = load_dem([item], GRID, sign="planetary_computer")
    with pytest.raises(Exception) as failed:
        dem.compute(scheduler="threads")
    classified = classify_read_error(failed.value, [dem_item(f"{href}x"), item])
    assert isinstance(classified, BadInputError) and classified.field == "scene asset"
    assert classified.value == href and "not found" in str(classified)
    assert f"item {item['id']!r}" in str(classified) and "stac.exclude_items" in str(classified)
    assert "sig=" not in str(classified) and failure_class(classified) == "bad_input"
    assert [r.status for r in blob_store.requests] == [404]
