"""GPU workers kept for GPU work: CPU stage tasks run only on the plain workers, a run with GPU
products and no GPU worker fails up front (bounded wait) naming what to start, and a missing
``gpu`` pool is found through the REST API, naming the pool to create."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from operators.dask_cluster import require_gpu_workers
from operators.provision import ApiAccess, require_pool
from pipelines.config import DaskConfig, parse_config
from pipelines.errors import BadInputError
from tests.fixtures.http import local_http, local_url


@pytest.fixture
def split_cluster(split_local_cluster) -> tuple[object, str, str]:
    """A client of a cluster of one plain worker and one worker declaring GPU=1 (threads),
    and their addresses."""
    _, client, plain, gpu = split_local_cluster
    return client, plain, gpu


@pytest.fixture
def split_local_cluster() -> Iterator[tuple[object, object, str, str]]:
    """The cluster of :func:`split_cluster` itself (in this process: its workers can be paused,
    closed and replaced), its client, the plain and the GPU worker's addresses."""
    from distributed import Client, LocalCluster, Worker

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    )
    cluster.worker_spec["gpu-0"] = {
        "cls": Worker,
        "options": {"nthreads": 1, "resources": {"GPU": 1}},
    }
    cluster.scale(len(cluster.worker_spec))
    cluster.sync(cluster._correct_state)
    client = Client(cluster, set_as_default=False)  # as the tasks connect (dask_cluster.connect)
    try:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpu = next(a for a, w in workers.items() if w.get("resources", {}).get("GPU"))
        plain = next(a for a in workers if a != gpu)
        yield cluster, client, plain, gpu
    finally:
        client.close()
        cluster.close()


def _tiny_config(archive: Path, store: Path, products: list[str]) -> object:
    return parse_config(
        {
            "province": "tiny",
            "aoi": json.loads((archive / "province.geojson").read_text()),
            "crs": json.loads((archive / "archive.json").read_text())["crs"],
            "tile_px": 128,
            "start": "2025-07-18",
            "end": "2025-07-24",
            "products": products,
            "stac": {"archive": str(archive), "max_cloud_cover": 100},
            "store": str(store),
        }
    )


def test_cpu_stage_tasks_run_only_on_the_plain_worker(split_cluster, tiny_archive, tmp_path):
    from distributed import get_task_stream

    from pipelines.engine.run import cluster_workers, cpu_workers, run_local

    client, plain, gpu = split_cluster
    workers = cluster_workers(client)
    assert workers.plain == (plain,) and workers.gpu == (gpu,)
    assert cpu_workers(client) == [plain]
    config = _tiny_config(tiny_archive, tmp_path / "store", ["cloud_mask", "water_mask"])
    with get_task_stream(client) as stream:
        result = run_local(config, client)
    assert result["written"] > 0
    ran_on = {str(t["worker"]) for t in stream.data}
    assert len(stream.data) > 10
    assert ran_on == {plain}, f"{sum(t['worker'] == gpu for t in stream.data)} tasks on {gpu}"


@pytest.mark.timeout(240)
def test_a_tile_whose_workers_all_left_fails_as_transient_and_its_retry_writes_it(
    split_local_cluster, tiny_archive, tmp_path
):
    """CPU tasks are pinned to the plain workers there are at submit time. A worker that
    restarts (its nanny, after it ran out of memory) or a pod that is replaced comes back under
    another address, and the scheduler keeps tasks pinned to addresses that are all gone
    waiting for ever: the tile task then hung until its execution timeout (6 h). Now its
    products fail as transient within seconds, naming why, and the retry writes them."""
    from distributed import Worker
    from distributed.core import Status

    from pipelines.engine.run import run_local
    from pipelines.errors import is_transient

    cluster, client, plain, gpu = split_local_cluster
    name = next(n for n, w in cluster.workers.items() if w.address == plain)
    worker = cluster.workers[name]
    worker.memory_manager.memory_pause_fraction = False  # its memory monitor would resume it
    worker.loop.add_callback(setattr, worker, "status", Status.paused)  # listed, runs nothing
    config = _tiny_config(tiny_archive, tmp_path / "store", ["cloud_mask", "water_mask"])

    def unrunnable(dask_scheduler) -> int:  # type: ignore[no-untyped-def]
        return len(dask_scheduler.unrunnable)

    def replace_the_plain_worker() -> None:
        deadline = time.monotonic() + 120
        while client.run_on_scheduler(unrunnable) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.worker_spec.pop(name)  # the plain worker leaves, another one joins
        cluster.worker_spec["plain-again"] = {"cls": Worker, "options": {"nthreads": 2}}
        cluster.sync(cluster._correct_state)

    replacing = threading.Thread(target=replace_the_plain_worker, daemon=True)
    replacing.start()
    started = time.monotonic()
    with pytest.raises(Exception) as failed:
        run_local(config, client)
    replacing.join(timeout=60)
    assert time.monotonic() - started < 120
    assert is_transient(failed.value), repr(failed.value)
    assert "left the cluster while it computed" in str(failed.value)
    assert plain in str(failed.value)
    now = client.scheduler_info(n_workers=-1)["workers"]
    assert plain not in now and gpu in now and len(now) == 2

    result = run_local(config, client)  # the task's retry: the workers there are now
    assert result["written"] > 0


def test_no_gpu_worker_fails_within_the_wait_naming_what_to_start():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(BadInputError) as info:
            require_gpu_workers(client, DaskConfig(address="tcp://x:1"), local=False, wait_s=0.5)
        assert "dask worker" in str(info.value) and "--resources GPU=1" in str(info.value)
        assert cluster.scheduler_address in str(info.value)
        with pytest.raises(BadInputError) as local:
            require_gpu_workers(client, DaskConfig(gpu_workers=0), local=True, wait_s=0.0)
        assert "dask.gpu_workers" in str(local.value)


class _Api(http.server.BaseHTTPRequestHandler):
    """A REST API holding the pools of ``server.pools`` behind a bearer token."""

    def do_GET(self) -> None:
        pools: dict[str, int] = self.server.pools  # type: ignore[attr-defined]
        if self.path == "/auth/token":
            self._reply(201, {"access_token": "t0k"})
        elif self.headers.get("Authorization") != "Bearer t0k":
            self._reply(401, {"detail": "not authenticated"})
        elif self.path.startswith("/api/v2/pools/") and self.path[14:] in pools:
            name = self.path[14:]
            self._reply(200, {"name": name, "slots": pools[name]})
        else:
            self._reply(404, {"detail": "not found"})

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[tuple[ApiAccess, dict[str, int]]]:
    with local_http(_Api) as server:
        server.pools = {}  # type: ignore[attr-defined]
        yield ApiAccess(local_url(server)), server.pools  # type: ignore[attr-defined]


def test_a_missing_or_empty_gpu_pool_is_named_with_how_to_create_it(api):
    access, pools = api
    with pytest.raises(BadInputError) as missing:
        require_pool("gpu", access)
    assert "airflow pools set gpu" in str(missing.value)
    pools["gpu"] = 0
    with pytest.raises(BadInputError) as empty:
        require_pool("gpu", access)
    assert "0 slots" in str(empty.value)
    pools["gpu"] = 2
    assert require_pool("gpu", access) == 2


def test_the_pool_check_is_skipped_when_the_api_does_not_answer(caplog):
    assert require_pool("gpu", ApiAccess("http://127.0.0.1:9")) is None
    assert "not checked" in caplog.text


PROVISION = """
from operators.airflow_env import ensure_airflow
from operators.provision import main
ensure_airflow()  # the metadata DB and the registry's pools (gpu: 1 slot)
main(["tcp://10.0.0.5:8786", "--gpu-slots", "3"])
from airflow.models import Connection, Pool
from airflow.utils.session import create_session
with create_session() as session:
    pools = {p.pool: p.slots for p in session.query(Pool).all()}
    conn = session.query(Connection).filter(Connection.conn_id == "dask_default").one()
    print(pools["gpu"], conn.host, conn.port)
"""


def test_provision_writes_the_gpu_pool_and_the_dask_connection(tmp_path):
    """``python -m operators.provision`` on a fresh metadata DB (SQLite, its own process: the
    Airflow home is read at import)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
    proc = subprocess.run(
        [sys.executable, "-c", PROVISION], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[0]) == {
        "pool": "gpu",
        "slots": 3,
        "connection": "dask_default",
        "port": 8786,
    }
    assert lines[-1] == "3 10.0.0.5 8786"


def test_the_worker_split_is_asked_of_the_scheduler_not_read_from_the_client_cache(
    split_cluster, monkeypatch
):
    """The client's periodic identity refresh (no per-worker entries) can land between a fetch
    and its read; the split must not read "no workers" then (a CPU group would go unrestricted,
    onto the GPU worker too)."""
    from pipelines.engine.run import ClusterWorkers, cluster_workers, cpu_workers

    client, plain, gpu = split_cluster

    async def refresh_landing_last(n_workers: int = 0) -> dict:
        # the periodic refresh's fetch (no per-worker entries) lands after the asked one;
        # returned as the real refresh returns the cache (distributed >= 2026.11 reads its result)
        client._scheduler_identity = await client.scheduler.identity(n_workers=0)
        return client._scheduler_identity

    monkeypatch.setattr(client, "_update_scheduler_info", refresh_landing_last)
    assert client.scheduler_info(n_workers=-1)["workers"] == {}  # what the cache then holds
    assert cluster_workers(client) == ClusterWorkers(plain=(plain,), gpu=(gpu,))
    assert cpu_workers(client) == [plain]
