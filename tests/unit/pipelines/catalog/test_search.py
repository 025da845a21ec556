"""STAC search on APIs that are not STAC: garbage or other JSON with status 200, a URL that is
not http(s). Each is bad input naming the URL, never a crash or a retry."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator

import pytest

from pipelines.catalog.search import search
from pipelines.errors import BadInputError, TransientIOError
from tests.fixtures.http import local_http, local_url

#: Path -> body answered with status 200.
BODIES = {
    "/garbage": b"<html>not json at all",
    "/other": json.dumps({"hello": "world"}).encode(),
    "/list": b"[1, 2, 3]",
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = BODIES.get(self.path.split("?")[0].rstrip("/"), b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def not_stac_api() -> Iterator[str]:
    with local_http(_Handler) as server:
        yield local_url(server)


@pytest.mark.parametrize("path", ["/garbage", "/other", "/list", "/"])
def test_an_api_answering_200_with_something_else_is_bad_input(not_stac_api, path):
    url = not_stac_api + path
    with pytest.raises(BadInputError, match="not STAC JSON") as info:
        search(url, ["s2"], timeout=5)
    assert info.value.field == "api_url" and info.value.value == url


@pytest.mark.parametrize("url", ["ftp://example.com/stac", "file:///tmp/stac", "example.com"])
def test_a_url_that_is_not_http_is_bad_input_not_transient(url):
    with pytest.raises(BadInputError, match="https://") as info:
        search(url, ["s2"])
    assert not isinstance(info.value, TransientIOError)
