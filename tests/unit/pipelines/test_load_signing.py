"""Planetary Computer's asset links signed for reading: real Planetary Computer items, a local
SAS token endpoint (tests/fixtures/sas.py); no request leaves the machine. Reads of signed
links, from the token to the pixels: test_signed_reads.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox

from pipelines.errors import BadInputError, TransientIOError, failure_class
from pipelines.load import (
    classify_read_error,
    load_input,
    load_s1,
    reader_for,
    sign_href,
    unsigned,
)
from tests.fixtures.sas import FAKE_TOKEN, SasEndpoint, graph_readers

BLOB = ".blob.core.windows.net/"
#: The 10 km square of UTM 33N that the four 2024-04-19 sentinel-1-rtc frames in EPSG:32633 cover.
S1_GRID = GeoBox.from_bbox((500000, 3800000, 510240, 3810240), crs="EPSG:32633", resolution=10)


def _items(real_data: Path, collection: str) -> list[dict[str, Any]]:
    folder = real_data / "stac-json/items/mpc" / collection
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _s1_items(real_data: Path) -> list[dict[str, Any]]:
    return [i for i in _items(real_data, "sentinel-1-rtc") if i["properties"]["proj:epsg"] == 32633]


def _graph_urls(da: xr.DataArray) -> set[str]:
    """The hrefs the Dask workers will open: stackstac's asset tables in the graph."""
    urls = set()
    for value in dict(da.__dask_graph__()).values():
        if isinstance(value, np.ndarray) and value.dtype.names and "url" in value.dtype.names:
            urls |= {str(u) for u in value["url"].ravel() if u is not None}
    return urls


def test_every_blob_link_gets_the_token_one_request_per_container(
    real_data: Path, sas_endpoint: SasEndpoint
) -> None:
    collections = ("sentinel-1-rtc", "sentinel-2-l2a", "cop-dem-glo-30")
    items = [i for c in collections for i in _items(real_data, c)]
    n_blob = 0
    for item in items:
        for asset in item["assets"].values():
            signed = sign_href(asset["href"])
            if BLOB in asset["href"]:
                n_blob += 1
                assert signed.href == f"{asset['href']}?{FAKE_TOKEN}"
                assert signed.expiry is not None
            else:  # tilejson, rendered_preview: links to the PC API itself, no token
                assert signed.href == asset["href"] and signed.expiry is None
    assert len(items) > 40 and n_blob > 500
    # one token per account/container, cached for every later link
    assert sorted(sas_endpoint.token_requests()) == [
        "elevationeuwest/copernicus-dem",
        "sentinel1euwestrtc/sentinel1-grd-rtc",
        "sentinel2l2a01/sentinel2-l2",
    ]
    assert sas_endpoint.keys == [None, None, None]  # anonymous without PC_SDK_SUBSCRIPTION_KEY
    signed_twice = f"{items[0]['assets']['vv']['href']}?{FAKE_TOKEN}"
    assert sign_href(signed_twice).href == signed_twice  # a link signed already is left
    assert len(sas_endpoint.requests) == 3


def test_the_subscription_key_is_sent_when_set(
    real_data: Path, sas_endpoint: SasEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from planetary_computer.settings import Settings

    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "k-123")
    Settings.get.cache_clear()
    sign_href(_s1_items(real_data)[0]["assets"]["vv"]["href"])
    assert sas_endpoint.keys == ["k-123"]


def test_none_leaves_the_links_and_asks_for_no_token(
    real_data: Path, sas_endpoint: SasEndpoint
) -> None:
    from stackstac.rio_reader import AutoParallelRioReader

    items = _s1_items(real_data)
    da = load_s1(items, S1_GRID)
    assert _graph_urls(da) and not any("?" in u for u in _graph_urls(da))
    assert reader_for("none") is AutoParallelRioReader
    assert sas_endpoint.requests == []
    with pytest.raises(BadInputError, match=r"stac\.sign: got 'azure'"):
        load_s1(items, S1_GRID, sign="azure")  # type: ignore[arg-type]


def test_the_graph_holds_unsigned_links_read_by_the_signing_reader(
    real_data: Path, sas_endpoint: SasEndpoint
) -> None:
    """No token is asked for while the graph is built: the workers sign as they open a file
    (test_signed_reads.py reads through the signing reader)."""
    from pipelines.signed_reads import SigningRioReader

    items = _s1_items(real_data)
    before = copy.deepcopy(items)
    da = load_s1(items, S1_GRID, sign="planetary_computer")
    read = set(",".join(da["item_ids"].values).split(","))  # the frames on the grid
    assert read and _graph_urls(da) == {
        i["assets"][pol]["href"] for i in items if i["id"] in read for pol in ("vv", "vh")
    }
    assert items == before
    assert reader_for("planetary_computer") is SigningRioReader
    assert graph_readers(da) == {SigningRioReader}
    assert sas_endpoint.requests == []
    assert "sig=" not in repr(da.coords) + repr(da.attrs)


@pytest.mark.parametrize(
    ("source", "collection", "grid"),
    [
        (
            "s2",
            "sentinel-2-l2a",
            GeoBox.from_bbox((510000, 9000000, 520240, 9010240), crs="EPSG:32646", resolution=10),
        ),
        (
            "dem",
            "cop-dem-glo-30",
            GeoBox.from_bbox((-9000, -60000, 0, -51000), crs="EPSG:3031", resolution=30),
        ),
    ],
)
def test_every_loader_signs(
    real_data: Path, sas_endpoint: SasEndpoint, source: str, collection: str, grid: GeoBox
) -> None:
    from pipelines.signed_reads import SigningRioReader

    items = _items(real_data, collection)
    da = load_input(source, items, grid, sign="planetary_computer")
    assert _graph_urls(da) and graph_readers(da) == {SigningRioReader}
    assert load_input(source, items, grid, sign="none") is not None


def test_a_refused_token_request_names_the_subscription_key(
    real_data: Path, sas_endpoint: SasEndpoint
) -> None:
    sas_endpoint.statuses = [403]
    with pytest.raises(BadInputError) as info:
        sign_href(_s1_items(real_data)[0]["assets"]["vv"]["href"])
    err = info.value
    assert err.field == "PC_SDK_SUBSCRIPTION_KEY" and err.value == "not set"
    assert "HTTP 403" in str(err) and "sentinel1euwestrtc" in str(err)
    assert failure_class(err) == "bad_input"  # not retried
    assert len(sas_endpoint.requests) == 1  # 403 is not retried by the package either


def test_a_token_service_that_keeps_failing_is_transient_after_the_packages_retries(
    real_data: Path, sas_endpoint: SasEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planetary_computer.sas

    # the package's own retries (10, backing off from 0.8 s), made quick: 2 retries, no sleep
    monkeypatch.setattr(planetary_computer.sas.get_token, "__defaults__", (2, 0.0))
    href = _s1_items(real_data)[0]["assets"]["vv"]["href"]
    sas_endpoint.statuses = [503, 429]
    assert sign_href(href).href.endswith(FAKE_TOKEN)  # the third try answers
    assert len(sas_endpoint.requests) == 3
    planetary_computer.sas.TOKEN_CACHE.clear()
    sas_endpoint.statuses = [503, 503, 503]
    with pytest.raises(TransientIOError, match="no SAS token"):
        sign_href(href)
    assert len(sas_endpoint.requests) == 6


def test_an_endpoint_that_answers_no_token_names_the_sas_url(
    real_data: Path, sas_endpoint: SasEndpoint
) -> None:
    sas_endpoint.body = lambda: b'{"detail": "not a token"}'
    with pytest.raises(BadInputError) as info:
        sign_href(_s1_items(real_data)[0]["assets"]["vv"]["href"])
    assert info.value.field == "PC_SDK_SAS_URL" and info.value.value == sas_endpoint.url


def test_read_failures_name_links_without_their_token() -> None:
    href = "https://acct.blob.core.windows.net/cont/a/b.tif"
    exc = RuntimeError(f"Error opening '{href}?{FAKE_TOKEN}': RasterioIOError('HTTP 404')")
    classified = classify_read_error(exc)
    assert isinstance(classified, BadInputError) and classified.value == href
    assert "sig=" not in str(classified)
    assert unsigned(f"x '{href}?{FAKE_TOKEN}' y") == f"x '{href}' y"
    plain = "https://example.com/a.tif?x=1"  # not Azure Blob Storage: left as it is
    assert unsigned(plain) == plain
