"""STAC APIs answering HTTP errors: 4xx (bad request, unauthorized, forbidden, not found) is bad
input naming the URL and the status, never retried; 408, 429 and 5xx stay transient. One policy
decides (pipelines.errors.is_transient)."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from pystac_client.exceptions import APIError

from pipelines.catalog import search as search_module
from pipelines.catalog.search import api_failure, search
from pipelines.errors import BadInputError, TransientIOError, failure_class, is_transient
from tests.fixtures.http import local_http, local_url

NOT_TRANSIENT = [400, 401, 403, 404]
TRANSIENT = [408, 429, 500, 502, 503, 504]


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/sNNN/...`` answers status NNN with a JSON error body, as STAC APIs do."""

    def do_GET(self) -> None:
        status = int(self.path.split("/")[1].removeprefix("s"))
        body = json.dumps({"code": "Error", "description": f"status {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def status_api() -> Iterator[str]:
    with local_http(_Handler) as server:
        yield local_url(server)


def _api_error(status: int | None, text: str = '{"code": "x"}') -> APIError:
    error = APIError(text)
    if status is not None:
        error.status_code = status
    return error


@pytest.mark.parametrize("status", NOT_TRANSIENT)
def test_a_root_url_answering_4xx_is_bad_input_naming_the_status(status_api, status):
    url = f"{status_api}/s{status}/stac"
    with pytest.raises(BadInputError, match=f"HTTP {status}") as info:
        search(url, ["s2"], timeout=5)
    assert info.value.field == "api_url" and info.value.value == url
    assert not is_transient(info.value) and failure_class(info.value) == "bad_input"


@pytest.mark.parametrize("status", [429, 503])
def test_a_root_url_answering_429_or_5xx_is_transient(status_api, status):
    with pytest.raises(TransientIOError, match="did not answer") as info:
        search(f"{status_api}/s{status}/stac", ["s2"], timeout=5)
    assert failure_class(info.value) == "transient"


@pytest.mark.parametrize(
    ("status", "transient"), [(s, False) for s in NOT_TRANSIENT] + [(s, True) for s in TRANSIENT]
)
def test_the_one_policy_reads_the_status_of_an_api_error(status, transient):
    assert is_transient(_api_error(status)) is transient
    got = api_failure("http://stac.example", _api_error(status), "failed a search")
    assert isinstance(got, TransientIOError if transient else BadInputError)


def test_an_api_error_wrapping_a_lost_connection_is_transient_by_its_cause():
    # pystac_client raises APIError(str(err)) inside the handler of the requests error
    try:
        try:
            raise requests.ConnectionError("Connection refused")
        except requests.ConnectionError as err:
            raise APIError(str(err))  # noqa: B904 (as the library does)
    except APIError as exc:
        wrapped = exc
    assert is_transient(wrapped)
    assert isinstance(api_failure("http://stac.example", wrapped, "x"), TransientIOError)
    # without a status or a transient cause: an answer it could not use, not retried
    bare = api_failure("http://stac.example", _api_error(None, "Invalid response"), "x")
    assert isinstance(bare, BadInputError) and "Invalid response" in str(bare)


class _FakeClient:
    """A client whose collections list works and whose search answers ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_collections(self) -> list[Any]:
        return [SimpleNamespace(id="sentinel-2-l2a")]

    def conforms_to(self, conformance: object) -> bool:
        return False

    def search(self, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(("status", "expected"), [(400, BadInputError), (502, TransientIOError)])
def test_a_search_answering_an_http_error_is_classified_by_its_status(
    monkeypatch, status, expected
):
    monkeypatch.setattr(
        search_module, "_open", lambda url, timeout: _FakeClient(_api_error(status))
    )
    with pytest.raises(expected, match="failed a search") as info:
        search("http://stac.example", ["s2"])
    assert str(status) in str(info.value)
