"""Concurrent runs: one STAC server shared until its last user leaves; two runs of one config
(two processes) write each product once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
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


HOLD_ON_ANOTHER_NODE = """
import socket
import sys
import time
from pipelines.products import lock
socket.gethostname = lambda: "node-a"  # a task on another node (pod) of the cluster
lock.LEASE_S = float(sys.argv[4])
with lock.store_lock(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_an_object_lock_of_a_task_killed_on_another_node_is_taken_over_after_its_lease(
    s3_store,
):
    """A tile task killed with its node (a spot node taken back, a pod evicted) leaves its tile's
    lock object in the store. Its retry runs on another node, which cannot see whether the
    holder's process lives. Before, the lock held for its fixed 2 h: the retry waited 30 min and
    refused as bad input, and the run failed. Now the dead holder's lease runs out unrenewed."""
    from pipelines.errors import BadInputError
    from pipelines.products.lock import lock_url, store_lock
    from pipelines.storage import filesystem

    lease_s = 3.0
    args = [sys.executable, "-c", HOLD_ON_ANOTHER_NODE, s3_store, "tiny", "tile-t", str(lease_s)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        time.sleep(2 * lease_s)  # renewed meanwhile: still held
        with (
            pytest.raises(BadInputError, match="on node-a"),
            store_lock(s3_store, "tiny", "tile-t"),
        ):
            pass
    finally:
        proc.kill()
        proc.wait()
    killed = time.monotonic()
    with store_lock(s3_store, "tiny", "tile-t", wait_s=10 * lease_s) as holder:
        taken_after = time.monotonic() - killed
        assert holder.host != "node-a"
    assert taken_after <= lease_s + 2, taken_after
    fs, path = filesystem(lock_url(s3_store, "tiny", "tile-t"))
    assert not fs.exists(path)  # released


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


HOLD = """
import sys
import threading
from pipelines.products.lock import store_lock
with store_lock(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_the_production_task_body_holds_each_tiles_lock(tiny_archive, tmp_path, monkeypatch):
    """The lock lives in the task bodies (the engine), not only in ``terrapipe run``: a
    scheduler's process task waits for another run writing its tile, then refuses naming it;
    two tasks of one batch at once (two DAG runs) write each product once."""
    pytest.importorskip("airflow")
    from airflow.sdk.exceptions import AirflowFailException
    from distributed import LocalCluster

    from operators.production import RunManifest, prepare_task, process_task
    from pipelines.engine import run as run_module
    from pipelines.engine.plan import plan_run
    from tests.integration.test_production import tiny_config

    store = str(tmp_path / "store")
    config = tiny_config(tiny_archive, store, products=["cloud_mask"])
    planned = plan_run(config)
    info = RunManifest.of(planned, config, False).to_xcom()
    prepare_task(info)
    group = next(g.name for g in planned.plan.groups if "cloud_mask" in g.stages)
    tile = planned.plan.batches[0][0]
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        cluster_info = {"address": cluster.scheduler_address, "pid": None}
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, store, "tiny", f"tile-{tile}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            monkeypatch.setattr(run_module, "TILE_LOCK_WAIT_S", 0.5)
            with pytest.raises(AirflowFailException, match=f"tile-{tile} held by pid {holder.pid}"):
                process_task(0, info, cluster_info, group)
        finally:
            holder.communicate("", timeout=30)
        assert not list(Path(store).glob("tiny/*/items/*/*.json"))  # it wrote nothing

        monkeypatch.setattr(run_module, "TILE_LOCK_WAIT_S", 600.0)
        outs: list[dict[str, object]] = []
        tasks = [
            threading.Thread(target=lambda: outs.append(process_task(0, info, cluster_info, group)))
            for _ in range(2)
        ]
        for t in tasks:
            t.start()
        for t in tasks:
            t.join(timeout=600)
    markers = list(Path(store).glob("tiny/*/items/*/*.json"))
    assert len(outs) == 2 and markers
    # between them the two tasks wrote each product of the batch once
    assert sum(int(o["written"]) for o in outs) == len(markers)
    assert sum(int(o["skipped"]) for o in outs) == len(markers)
