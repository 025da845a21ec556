"""The tiny province through a real deployment (infra/local/deploy.sh): Airflow's scheduler,
dag-processor and api-server with the LocalExecutor on PostgreSQL, and an external Dask cluster.

One DAG run triggered through the REST API, one backfill run of a past month; the scheduler's own
records (task_instance rows in PostgreSQL) show the mapped tile tasks overlapping, and the products
equal those of a run without Airflow on the same inputs."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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
#: The same province in its own store, for the backfill run beside the triggered one.
MONTH_DAG_ID = "province_production__tiny_month"
PRODUCTS = ["cloud_mask", "water_mask"]


@pytest.fixture(scope="module")
def config_dir(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two configs of the tiny province: 128 px tiles in two batches (two mapped tasks), July
    18-24; the second the same in its own store."""
    import yaml

    folder = tmp_path_factory.mktemp("configs")
    cfg = tiny_config(tiny_archive, tmp_path_factory.mktemp("deployed-store"), PRODUCTS)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    cfg["store"] = str(tmp_path_factory.mktemp("month-store"))
    (folder / "tiny_month.yaml").write_text(yaml.safe_dump(cfg))
    return folder


@pytest.fixture(scope="module")
def deployment(config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not have_postgres():
        pytest.skip("PostgreSQL binaries not installed (deploy.sh installs them with apt-get)")
    folder = tmp_path_factory.mktemp("deployment")
    settings = {
        "TERRAPIPE_CONFIG_DIR": str(config_dir),
        "TERRAPIPE_START_DATE": next_month().isoformat(),
        "TERRAPIPE_PARALLELISM": "8",
        "TERRAPIPE_GPU_WORKERS": "1",
        "TERRAPIPE_HOME": str(folder / "home"),
    }
    with started_deployment(folder, settings) as deployment:
        yield deployment


def _print_overhead(deployment: Deployment, run_id: str) -> None:
    """Print (``pytest -s``) where a run's wall time went: its wall seconds, the seconds some
    task was running, the seconds none was (the scheduler's hops between tasks), and each
    task's wait from queued to started (the executor starting its process)."""
    ((run_start, run_end),) = deployment.sql(
        "select start_date, end_date from dag_run where run_id = %s", run_id
    )
    rows = deployment.sql(
        "select task_id, map_index, queued_dttm, start_date, end_date from task_instance"
        " where run_id = %s and start_date is not null order by start_date",
        run_id,
    )
    ran = sum((end - start).total_seconds() for _, _, _, start, end in rows if end)
    startup = [(start - queued).total_seconds() for _, _, queued, start, _ in rows if queued]
    busy = []  # the union of the tasks' running spans
    for _, _, _, start, end in rows:
        if end is None:
            continue
        if busy and start <= busy[-1][1]:
            busy[-1] = (busy[-1][0], max(busy[-1][1], end))
        else:
            busy.append((start, end))
    covered = sum((b - a).total_seconds() for a, b in busy)
    wall = (run_end - run_start).total_seconds()
    print(
        f"  run wall {wall:.1f} s: tasks running {covered:.1f} s (task seconds {ran:.1f}),"
        f" no task running {wall - covered:.1f} s; queued->start per task"
        f" {min(startup, default=0):.1f}..{max(startup, default=0):.1f} s"
        f" (sum {sum(startup):.1f} s, {len(rows)} tasks)",
        flush=True,
    )


def _placement_recorder() -> tuple[Any, Any]:
    """Two functions for ``run_on_scheduler`` (made here so that they travel by value): the
    first installs a plugin recording, for every task sent to a worker declaring a ``GPU``
    resource, the restrictions the scheduler held for it, and every worker joining or leaving;
    the second reads those records back."""

    def install(dask_scheduler: Any) -> None:
        from distributed.diagnostics.plugin import SchedulerPlugin

        class PlacementRecorder(SchedulerPlugin):
            name = "terrapipe-test-placements"

            def __init__(self) -> None:
                self.on_gpu: list[dict[str, Any]] = []
                self.workers: list[tuple[float, str, str]] = []

            def transition(self, key: Any, start: str, finish: str, *a: Any, **kw: Any) -> None:
                ts = dask_scheduler.tasks.get(key) if finish == "processing" else None
                ws = getattr(ts, "processing_on", None)
                if ts is None or ws is None or not (ws.resources or {}).get("GPU"):
                    return
                self.on_gpu.append(
                    {
                        "key": str(key),
                        "worker": ws.address,
                        "worker_restrictions": sorted(ts.worker_restrictions or ()),
                        "host_restrictions": sorted(ts.host_restrictions or ()),
                        "loose": bool(ts.loose_restrictions),
                        "annotations": {k: str(v) for k, v in (ts.annotations or {}).items()},
                        "workers_now": sorted(dask_scheduler.workers),
                    }
                )

            def add_worker(self, scheduler: Any, worker: str) -> None:
                self.workers.append((time.time(), "add", worker))

            def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
                self.workers.append((time.time(), "remove", worker))

        dask_scheduler.add_plugin(PlacementRecorder())

    def read(dask_scheduler: Any) -> dict[str, Any]:
        plugin = dask_scheduler.plugins["terrapipe-test-placements"]
        return {
            "first_on_gpu": plugin.on_gpu[:5],
            "n_on_gpu": len(plugin.on_gpu),
            "workers_joined_or_left": plugin.workers,
        }

    return install, read


def _overlapping(spans: list[tuple[dt.datetime, dt.datetime]]) -> bool:
    return any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


def test_the_scheduler_runs_the_province_in_parallel_like_the_embedded_run(
    deployment: Deployment, config_dir: Path, tmp_path: Path
) -> None:
    import yaml

    from operators.dask_cluster import connect
    from pipelines import products
    from pipelines.config import load_config
    from pipelines.engine.report import run_ids
    from pipelines.engine.run import cluster_workers, run_local

    t0 = time.monotonic()
    deployment.wait_for_dag(DAG_ID)
    deployment.wait_for_dag(MONTH_DAG_ID)
    t0 = phase("DAGs parsed", t0)
    config_path = config_dir / "tiny.yaml"
    conf = {"config": str(config_path), "start": "2025-07-18", "end": "2025-07-24"}
    # The Dask scheduler's task stream records which worker ran each task from now on.
    watcher = connect(deployment.env["TERRAPIPE_DASK_ADDRESS"])
    watcher.get_task_stream()
    install_recorder, read_placements = _placement_recorder()
    watcher.run_on_scheduler(install_recorder)
    since = time.time()
    run = deployment.rest("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]
    # At the same time, a backfill of a past month through the scheduler, in another store: it
    # processes its data interval, August 2025, exactly.
    for dag_id in (DAG_ID, MONTH_DAG_ID):
        deployment.rest("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    backfill = deployment.rest(
        "POST",
        "/backfills",
        {
            "dag_id": MONTH_DAG_ID,
            "from_date": "2025-08-01T00:00:00Z",
            "to_date": "2025-08-01T00:00:00Z",
            "max_active_runs": 1,
        },
    )
    state = deployment.wait_for_run(DAG_ID, run_id)
    tasks = deployment.task_states(run_id)
    assert state == "success", tasks
    t0 = phase("triggered run", t0)
    for task_id, index, _, start, end in tasks:
        if start is not None and end is not None:
            print(f"  {task_id}[{index}] {(end - start).total_seconds():.1f} s", flush=True)
    _print_overhead(deployment, run_id)

    # The run computed on the deployment's Dask cluster (no LocalCluster of its own).
    ((cluster,),) = deployment.sql(
        "select value from xcom where run_id = %s and task_id = 'start_dask'"
        " and key = 'return_value'",
        run_id,
    )
    cluster = json.loads(cluster) if isinstance(cluster, str) else cluster
    assert cluster == {"address": deployment.env["TERRAPIPE_DASK_ADDRESS"], "pid": None}, cluster

    # The scheduler's own records: the mapped tile tasks ran at once, not one after the other.
    spans = [
        (start, end)
        for task_id, index, task_state, start, end in tasks
        if task_id.startswith("process_") and index >= 0 and task_state == "success"
    ]
    assert len(spans) >= 2 and _overlapping(spans), tasks

    # CPU products only: none of their Dask tasks ran on the GPU worker (kept for GPU work).
    try:
        stream = watcher.get_task_stream(start=since)
        gpu_workers = cluster_workers(watcher).gpu
        placements = watcher.run_on_scheduler(read_placements)
    finally:
        watcher.close()
    assert gpu_workers and len(stream) > 10
    on_gpu = [t["key"] for t in stream if t["worker"] in gpu_workers]
    # On failure: what the scheduler held for those tasks, and which workers came and went.
    assert not on_gpu, (
        f"{len(on_gpu)} of {len(stream)} CPU tasks on the GPU worker; scheduler: {placements}"
    )

    # The same config and window without Airflow (the engine on the same Dask cluster, another
    # store): the same products, pixel for pixel.
    deployed_store = yaml.safe_load(config_path.read_text())["store"]
    config = load_config(str(config_path), store=str(tmp_path / "embedded"))
    client = connect(deployment.env["TERRAPIPE_DASK_ADDRESS"])
    try:
        summary = run_local(config, client)
    finally:
        client.close()
    assert int(summary["written"]) > 0
    deployed = products_digest(deployed_store, "tiny", PRODUCTS)
    assert deployed and deployed == products_digest(config.store, "tiny", PRODUCTS)
    for name in PRODUCTS:
        a = products.open_product(deployed_store, "tiny", name)[name].load()
        b = products.open_product(config.store, "tiny", name)[name].load()
        np.testing.assert_array_equal(a.values, b.values)
    t0 = phase("run without Airflow, compared", t0)

    rows = deployment.sql("select run_id from dag_run where backfill_id = %s", backfill["id"])
    assert len(rows) == 1, rows
    (month_run,) = rows[0]
    assert deployment.wait_for_run(MONTH_DAG_ID, month_run) == "success", deployment.failures(
        month_run
    )
    t0 = phase("backfill run (after the above)", t0)
    month_store = yaml.safe_load((config_dir / "tiny_month.yaml").read_text())["store"]
    windows = [r.rsplit("_", 1)[0] for r in run_ids(month_store, "tiny")]
    assert windows == ["2025-08-01_2025-08-31"], windows
    dates = {
        p.stem
        for name in PRODUCTS
        for p in Path(month_store, "tiny", name, "items").rglob("*.json")
    }
    assert dates and all(d.startswith("2025-08") for d in dates), dates


# ---- failures and GPU routing through the scheduler (one tile, one product each) --------------


def _one_tile_config(config_dir: Path, folder: Path, name: str, **changes: Any) -> Path:
    """The tiny province in 256 px tiles (two: the smallest layout), July 18-24, in its own
    store (``folder``)."""
    import yaml

    cfg = yaml.safe_load((config_dir / "tiny.yaml").read_text())
    cfg.update(tile_px=256, store=str(folder / "store"), **changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _trigger(deployment: Deployment, config: Path, **conf: Any) -> str:
    deployment.rest("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})  # new DAGs start paused
    body = {"logical_date": None, "conf": {"config": str(config), **conf}}
    return str(deployment.rest("POST", f"/dags/{DAG_ID}/dagRuns", body)["dag_run_id"])


def _task_log(deployment: Deployment, run_id: str, task_id: str) -> str:
    logs = deployment.folder / "airflow" / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    return "\n".join(p.read_text(errors="replace") for p in logs.glob(f"task_id={task_id}/*.log"))


def test_gpu_products_run_in_the_gpu_pool_on_the_gpu_worker(
    deployment: Deployment, config_dir: Path, tmp_path: Path
) -> None:
    """A GPU-only product list writes its products; the scheduler's records put its tile task in
    the ``gpu`` pool and the Dask scheduler its model tasks on the GPU worker."""
    from operators.dask_cluster import connect
    from pipelines.engine.run import cluster_workers

    deployment.wait_for_dag(DAG_ID)
    config = _one_tile_config(config_dir, tmp_path, "gpu", products=["dehaze_learned"])
    watcher = connect(deployment.env["TERRAPIPE_DASK_ADDRESS"])
    watcher.get_task_stream()
    since = time.time()
    run_id = _trigger(deployment, config)
    try:
        state = deployment.wait_for_run(DAG_ID, run_id)
        stream = watcher.get_task_stream(start=since)
        workers = cluster_workers(watcher)
    finally:
        watcher.close()
    assert state == "success", deployment.failures(run_id)
    pools = deployment.sql(
        "select task_id, pool, state from task_instance where run_id = %s and map_index >= 0",
        run_id,
    )
    assert pools and all(t.startswith("process_gpu") for t, _, _ in pools), pools
    assert {(pool, st) for _, pool, st in pools} == {("gpu", "success")}, pools
    markers = list((tmp_path / "store" / "tiny" / "dehaze_learned" / "items").rglob("*.json"))
    assert markers
    model_tasks = [t for t in stream if "_dehaze_block" in str(t["key"])]
    assert model_tasks and {t["worker"] for t in model_tasks} <= set(workers.gpu), model_tasks


def test_missing_gpu_pool_or_worker_fails_the_run_naming_what_to_create(
    deployment: Deployment, config_dir: Path, tmp_path: Path
) -> None:
    """Without the ``gpu`` pool, or with no worker declaring GPU, a run with GPU products fails
    at its start_dask task (no retry), within the run's timeout, saying what to create."""
    from distributed import LocalCluster

    deployment.wait_for_dag(DAG_ID)
    config = _one_tile_config(config_dir, tmp_path, "gpu", products=["dehaze_learned"])
    deployment.rest("DELETE", "/pools/gpu")
    try:
        run_id = _trigger(deployment, config)
        assert deployment.wait_for_run(DAG_ID, run_id) == "failed"
    finally:
        deployment.rest("POST", "/pools", {"name": "gpu", "slots": 1})
    states = {t: st for t, _, st, _, _ in deployment.task_states(run_id)}
    assert states["start_dask"] == "failed", states
    log = _task_log(deployment, run_id, "start_dask")
    assert "Airflow pool: got 'gpu'" in log and "airflow pools set gpu N" in log, log[-3000:]

    # A Dask cluster of one plain worker (no GPU), named by the config.
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as plain:
        cpu_only = _one_tile_config(
            config_dir,
            tmp_path,
            "cpu_only",
            products=["dehaze_learned"],
            dask={"address": plain.scheduler_address},
        )
        run_id = _trigger(deployment, cpu_only)
        assert deployment.wait_for_run(DAG_ID, run_id) == "failed"
    states = {t: st for t, _, st, _, _ in deployment.task_states(run_id)}
    assert states["start_dask"] == "failed", states
    log = _task_log(deployment, run_id, "start_dask")
    assert f"dask worker {plain.scheduler_address} --resources GPU=1" in log, log[-3000:]


def test_a_failed_tile_task_cleared_through_the_rest_api_succeeds_after_the_fix(
    deployment: Deployment, config_dir: Path, tiny_archive: Path, tmp_path: Path
) -> None:
    """A corrupt input COG fails the tile task at once (bad input, not retried); once the COG is
    restored, clearing the failed task (the UI's action) redoes it and the run succeeds."""
    from tests.integration.test_partial_failure import _corrupt_data_blocks

    deployment.wait_for_dag(DAG_ID)
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root, ignore=shutil.ignore_patterns("truth"))
    for path in (root / "stac" / "items").glob("*.json"):
        path.write_text(path.read_text().replace(str(tiny_archive), str(root)))
    s2 = json.loads((root / "stac" / "items" / "sentinel-2-l2a.json").read_text())["features"]
    victim = next(f for f in s2 if f["properties"]["datetime"].startswith("2025-07-20"))
    href = Path(victim["assets"]["scl"]["href"])
    original = _corrupt_data_blocks(href)
    stac = {"archive": str(root), "max_cloud_cover": 100}
    config = _one_tile_config(config_dir, tmp_path, "corrupt", products=["cloud_mask"], stac=stac)
    run_id = _trigger(deployment, config)
    assert deployment.wait_for_run(DAG_ID, run_id) == "failed"
    rows = deployment.sql(
        "select task_id, map_index, state, try_number from task_instance where run_id = %s"
        " and task_id like 'process_%%' and map_index >= 0",
        run_id,
    )
    # every tile task failed on its first try (bad input: not retried)
    assert rows and {(st, tries) for _, _, st, tries in rows} == {("failed", 1)}, rows

    href.write_bytes(original)
    deployment.rest(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {
            "dag_run_id": run_id,
            "only_failed": True,
            "include_downstream": True,
            "reset_dag_runs": True,
            "dry_run": False,
        },
    )
    assert deployment.wait_for_run(DAG_ID, run_id) == "success", deployment.failures(run_id)
    assert list((tmp_path / "store" / "tiny" / "cloud_mask" / "items").rglob("2025-07-20.json"))


def test_a_run_marked_failed_while_running_ends_failed(
    deployment: Deployment, config_dir: Path, tmp_path: Path
) -> None:
    """Marking a running run failed (REST API, the UI's action) leaves it failed: its teardown
    stops the cluster and does not turn it into a success."""
    deployment.wait_for_dag(DAG_ID)
    config = _one_tile_config(config_dir, tmp_path, "marked", products=["cloud_mask"])
    run_id = _trigger(deployment, config)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:  # until its tile task runs
        rows = deployment.task_states(run_id)
        if any(t.startswith("process_") and st == "running" for t, _, st, _, _ in rows):
            break
        time.sleep(0.5)
    deployment.rest("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", {"state": "failed"})
    assert deployment.wait_for_run(DAG_ID, run_id) == "failed"
    states = {t: st for t, _, st, _, _ in deployment.task_states(run_id)}
    # the teardown ran after the marking and failed the run (else it counts as a success)
    assert states["finalize"] in ("skipped", "failed") and states["stop_dask"] == "failed", states
