"""Concurrent runs: one STAC server shared until its last user leaves; two runs of one config
(two processes) write each product once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipelines.catalog.server import (
    USERS_DIR_NAME,
    read_pid_file,
    shared_server,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_shared_stac_server_outlives_the_first_run_to_finish(mini_archive, tmp_path):
    archive = str(tmp_path / "archive")
    # The session's own server of the builder archive is recorded there: not this copy's.
    shutil.copytree(mini_archive.root, archive)
    (Path(archive) / USERS_DIR_NAME).mkdir()
    (Path(archive) / USERS_DIR_NAME / "999999999-dead").write_text("")  # a killed run
    with shared_server(archive) as first:
        with shared_server(archive) as second:
            assert second.url == first.url
        assert _answers(first.url)  # the second run left: the first still has its server
    assert not _answers(first.url)  # the last user stopped it
    assert read_pid_file(Path(archive) / ".stac-server.json") is None

    detached = start_server(archive)  # `terrapipe stac serve --detach`: not the runs' to stop
    try:
        with shared_server(archive) as used:
            assert used.url == detached.url
        assert _answers(detached.url)
    finally:
        stop_server(detached)


RUN = """
import json, sys
from operators.dask_cluster import connect
from pipelines.engine.run import run_local
from tests.integration.test_production import tiny_config
from pathlib import Path
client = connect(sys.argv[3])
config = tiny_config(Path(sys.argv[1]), sys.argv[2], products=["cloud_mask"])
summary = run_local(config, client, lock_wait_s=600)
print(json.dumps(summary))
"""


def test_object_store_lock_refuses_a_second_holder(s3_store):
    """S3 (moto) honours the conditional create (``If-None-Match: *``) the lock relies on."""
    from pipelines.errors import BadInputError
    from pipelines.products.lock import store_lock

    with store_lock(s3_store, "tiny", "k") as holder:
        second = store_lock(s3_store, "tiny", "k")
        with pytest.raises(BadInputError, match=f"pid {holder.pid}"):
            second.__enter__()
    with store_lock(s3_store, "tiny", "k"):  # released
        pass


def test_two_runs_of_one_config_write_each_product_once(tiny_archive, tmp_path):
    from operators.dask_cluster import connect, start_cluster, stop_cluster
    from pipelines.config import DaskConfig

    store = str(tmp_path / "store")
    handle = start_cluster(DaskConfig(n_workers=1, gpu_workers=1, memory_limit="3GiB"))
    try:
        connect(handle.address).wait_for_workers(2, timeout=120)
        args = [sys.executable, "-c", RUN, str(tiny_archive), store, handle.address]
        procs = [
            subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        stop_cluster(handle)
    assert [p.returncode for p in procs] == [0, 0]
    written = sorted(json.loads(out.strip().splitlines()[-1])["written"] for out in outs)
    markers = list(Path(store).glob("tiny/*/items/*/*.json"))
    # one run wrote every product, the other waited for it and then skipped them all
    assert written == [0, len(markers)] and markers


def test_a_copied_archive_does_not_use_the_server_of_its_original(mini_archive, tmp_path):
    """The copy carries the original's PID file; its server serves the original's files."""
    from pipelines.catalog.server import running_server

    first = tmp_path / "first"
    shutil.copytree(mini_archive.root, first, ignore=shutil.ignore_patterns(".stac-server*"))
    original = start_server(str(first))
    try:
        copy = tmp_path / "copy"
        shutil.copytree(first, copy)
        assert (copy / ".stac-server.json").exists()
        assert running_server(str(copy)) is None
        assert running_server(str(first)) is not None
    finally:
        stop_server(original)
