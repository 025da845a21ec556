"""The tiny province through a deployment on Airflow's CeleryExecutor (infra/local/deploy.sh with
TERRAPIPE_EXECUTOR=celery): tasks queued on a Redis broker and run by two Celery workers, the
pixels computed on an external Dask cluster.

While a tile task writes its products, the Celery worker running it is killed with every process
it started, as a node taken back: no task process is left to report. The scheduler fails the
task when its heartbeats stop, the retry runs on the other worker, and the run's products equal
those of a run without Airflow on the same inputs."""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.deployment import (
    RUN_TIMEOUT_S,
    Deployment,
    have_postgres,
    next_month,
    phase,
    products_digest,
    started_deployment,
    tiny_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "province_production__tiny"
PRODUCTS = ["cloud_mask"]
#: Seconds without a heartbeat after which the scheduler fails a running task (Airflow's
#: default, 300 s, shortened for the test).
HEARTBEAT_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def config_path(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny province in 128 px tiles, two mapped tile tasks, July 18-24."""
    import yaml

    folder = tmp_path_factory.mktemp("configs")
    cfg = tiny_config(tiny_archive, tmp_path_factory.mktemp("celery-store"), PRODUCTS)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def hold_flag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The failpoint flag (pipelines.faults): the first task process to write a product marker
    creates it, its pid inside, and waits there while it exists."""
    return tmp_path_factory.mktemp("failpoint") / "hold.flag"


@pytest.fixture(scope="module")
def deployment(
    config_path: Path, hold_flag: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    if not have_postgres():
        pytest.skip("PostgreSQL binaries not installed (deploy.sh installs them with apt-get)")
    if not shutil.which("redis-server") and not shutil.which("apt-get"):
        pytest.skip("redis-server not installed and no apt-get for deploy.sh to install it")
    folder = tmp_path_factory.mktemp("celery-deployment")
    settings = {
        "TERRAPIPE_EXECUTOR": "celery",
        "TERRAPIPE_CELERY_WORKERS": "2",
        "TERRAPIPE_PARALLELISM": "4",
        "TERRAPIPE_GPU_WORKERS": "0",
        "TERRAPIPE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "TERRAPIPE_CONFIG_DIR": str(config_path.parent),
        "TERRAPIPE_START_DATE": next_month().isoformat(),
        "TERRAPIPE_HOME": str(folder / "home"),
        "TERRAPIPE_FAULT_AT": "stac.marker",
        "TERRAPIPE_FAULT_ACTION": "hold",
        "TERRAPIPE_FAULT_FLAG": str(hold_flag),
    }
    with started_deployment(folder, settings) as deployment:
        yield deployment


def _celery_workers(deployment: Deployment) -> dict[str, int]:
    """The deployment's Celery workers: name -> pid of the worker's main process."""
    pid_files = (deployment.folder / "pids").glob("airflow-celery-worker-*.pid")
    return {p.stem.removeprefix("airflow-"): int(p.read_text()) for p in pid_files}


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process it started; returns their pids."""
    import psutil

    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    return [p.pid for p in tree]


def _wait_for_holder(flag: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = flag.read_text().strip() if flag.exists() else ""
        if text:
            return int(text)
        time.sleep(0.2)
    raise AssertionError(f"no task process reached the failpoint within {timeout_s} s")


def test_a_celery_worker_lost_mid_tile_is_retried_on_another_and_the_products_are_whole(
    deployment: Deployment, config_path: Path, hold_flag: Path, tmp_path: Path
) -> None:
    import yaml

    from operators.dask_cluster import connect
    from pipelines.config import load_config
    from pipelines.engine.run import run_local
    from pipelines.products.lock import lock_url, store_lock

    t0 = time.monotonic()
    deployment.wait_for_dag(DAG_ID)
    deployment.rest("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    body = {"logical_date": None, "conf": {"config": str(config_path)}}
    run_id = deployment.rest("POST", f"/dags/{DAG_ID}/dagRuns", body)["dag_run_id"]

    # A tile task holds at its first product marker (its COG is written): kill the Celery
    # worker running it, the worker's pool and the task processes with it.
    holder = _wait_for_holder(hold_flag, RUN_TIMEOUT_S)
    workers = _celery_workers(deployment)
    assert len(workers) == 2, workers
    import psutil

    ancestors = {p.pid for p in psutil.Process(holder).parents()}
    (lost,) = [name for name, pid in workers.items() if pid in ancestors]
    killed = _kill_tree(workers[lost])
    assert holder in killed
    t0 = phase(f"tile task held and {lost} killed", t0)

    state = deployment.wait_for_run(DAG_ID, run_id)
    assert state == "success", deployment.failures(run_id)
    t0 = phase("run ended", t0)

    # The scheduler's records: every task ran through Celery (a Celery task id each); the tile
    # task of the lost worker failed once when its heartbeats stopped and its retry succeeded.
    tries = deployment.sql(
        "select task_id, map_index, try_number, state, external_executor_id from task_instance"
        " where run_id = %s",
        run_id,
    )
    # (The GPU group's tile task is skipped: no product of this run needs a GPU.)
    odd = [row for row in tries if row[3] != "skipped" and (row[3] != "success" or not row[4])]
    assert not odd, odd
    failed = deployment.sql(
        "select task_id, map_index, try_number from task_instance_history"
        " where run_id = %s and state = 'failed'",
        run_id,
    )
    assert len(failed) == 1 and failed[0][0].startswith("process_"), (failed, tries)
    task_id, map_index, _ = failed[0]
    ((retry_id, retry_try),) = [(r[4], r[2]) for r in tries if (r[0], r[1]) == (task_id, map_index)]
    assert retry_try >= 2, tries
    # The retry's Celery task was received by the surviving worker.
    (survivor,) = [name for name in workers if name != lost]
    assert retry_id in (deployment.folder / "logs" / f"airflow-{survivor}.log").read_text()

    # No tile lock is held, and the products equal those of a run without Airflow (the engine
    # on the same Dask cluster, another store), file for file and pixel for pixel.
    store = yaml.safe_load(config_path.read_text())["store"]
    locks = sorted(Path(lock_url(store, "tiny", "x")).parent.glob("*.lock"))
    assert any(p.stem.startswith("tile-") for p in locks), locks
    for path in locks:  # each is free: taken at once (held, it would refuse)
        with store_lock(store, "tiny", path.stem, wait_s=0):
            pass
    config = load_config(str(config_path), store=str(tmp_path / "embedded"))
    client = connect(deployment.env["TERRAPIPE_DASK_ADDRESS"])
    try:
        summary = run_local(config, client)
    finally:
        client.close()
    assert int(summary["written"]) > 0
    deployed = products_digest(store, "tiny", PRODUCTS)
    assert deployed and deployed == products_digest(config.store, "tiny", PRODUCTS)
    phase("run without Airflow, compared", t0)
