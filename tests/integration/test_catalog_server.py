"""The local STAC API server: start on a free port, PID file, stop, CLI serve/stop."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipelines.catalog.server import (
    PID_FILE_NAME,
    read_pid_file,
    serve_archive,
    start_server,
    stop_server,
)
from pipelines.cli import main
from pipelines.errors import BadInputError


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def test_server_serves_collections_and_items(mini_stac_api, mini_archive) -> None:
    root = _get(mini_stac_api.url + "/")
    assert root["type"] == "Catalog"
    ids = {c["id"] for c in _get(mini_stac_api.url + "/collections")["collections"]}
    assert ids == set(mini_archive.items)
    items = _get(mini_stac_api.url + "/collections/sentinel-2-l2a/items?limit=100")["features"]
    assert {i["id"] for i in items} == {i["id"] for i in mini_archive.items["sentinel-2-l2a"]}


def test_context_manager_writes_and_removes_pid_file(mini_archive, tmp_path) -> None:
    pid_file = tmp_path / "server.json"
    with serve_archive(str(mini_archive.root), run_dir=tmp_path, pid_file=pid_file) as server:
        recorded = read_pid_file(pid_file)
        assert recorded is not None and recorded.pid == server.pid and recorded.url == server.url
        assert psutil.pid_exists(server.pid)
        assert _get(server.url + "/")["type"] == "Catalog"
    assert not pid_file.exists()
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"


def test_given_port_that_is_taken_is_bad_input(mini_archive, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BadInputError, match="port"):
            start_server(str(mini_archive.root), port=port, run_dir=tmp_path)
    assert not (tmp_path / PID_FILE_NAME).exists()


def test_archive_without_items_is_bad_input(tmp_path) -> None:
    with pytest.raises(BadInputError, match="stac/items"):
        start_server(str(tmp_path))


def test_stop_without_server_is_false(tmp_path) -> None:
    assert stop_server(tmp_path / "missing.json") is False


def test_cli_serve_detach_then_stop(mini_archive, tmp_path, capsys) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(mini_archive.root / "stac", archive / "stac")  # hrefs stay absolute
    assert main(["stac", "serve", str(archive), "--detach"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pid_file = Path(out["pid_file"])
    assert pid_file == archive / PID_FILE_NAME and pid_file.exists()
    try:
        assert _get(out["url"] + "/")["type"] == "Catalog"
        # a second server for the same archive is refused while the first runs
        assert main(["stac", "serve", str(archive), "--detach"]) == 2
    finally:
        assert main(["stac", "stop", str(archive)]) == 0
    assert "stopped" in capsys.readouterr().out
    assert not pid_file.exists()
    assert not psutil.pid_exists(out["pid"]) or psutil.Process(out["pid"]).status() == "zombie"
