"""The plan task's manifest: the XCom every task of a run reads, serialised explicitly."""

from __future__ import annotations

import json

import pytest

from operators.production import RunManifest
from pipelines.config import DaskConfig
from pipelines.errors import BadInputError

XCOM = {
    "plan_url": "/store/p/runs/2025-07-01_2025-07-10_abc/plan.json",
    "store": "/store",
    "province": "p",
    "window": ["2025-07-01", "2025-07-10"],
    "tiles": 6,
    "batches": 2,
    "groups": ["cpu0", "gpu1"],
    "pending": {"cpu0": [0, 1], "gpu1": []},
    "scenes": {"s2": 3, "s1": 0},
    "overwrite": False,
    "dask": DaskConfig().model_dump(),
    "only_tiles": ["t1"],
}


def test_the_run_manifest_round_trips_its_xcom():
    manifest = RunManifest.from_xcom(XCOM)
    assert manifest.pending["cpu0"] == (0, 1) and manifest.dask == DaskConfig()
    assert manifest.only_tiles == ("t1",)
    assert manifest.to_xcom() == XCOM
    assert list(manifest.to_xcom()) == list(XCOM)


def test_the_season_plan_xcom_reads_as_a_run_manifest():
    season = {k: v for k, v in XCOM.items() if k != "groups"} | {"season": 2025, "labels": "x"}
    manifest = RunManifest.from_xcom(season)
    assert manifest.groups == () and manifest.plan_url == XCOM["plan_url"]


def _raising(exc: BaseException):
    from operators.production import classify_failures

    @classify_failures
    def task() -> None:
        raise exc

    return task


def test_tasks_retry_by_the_one_policy_of_type_and_cause():
    pytest.importorskip("airflow")
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
    from botocore.exceptions import EndpointConnectionError
    from distributed.scheduler import KilledWorker

    from pipelines.errors import BadInputError, NoScenesError

    # retried (re-raised as they are): an endpoint that died, a lost worker
    for exc in (EndpointConnectionError(endpoint_url="http://s3"), KilledWorker("k", "w", 3)):
        with pytest.raises(type(exc)):
            _raising(exc)()
    # failed at once: a missing bucket (s3fs raises FileNotFoundError), a blocked path, bad input
    for exc in (
        FileNotFoundError(2, "The specified bucket does not exist"),
        FileExistsError(17, "exists"),
        BadInputError("aoi", 1, "a polygon"),
    ):
        with pytest.raises(AirflowFailException):
            _raising(exc)()
    with pytest.raises(AirflowSkipException):
        _raising(NoScenesError("none"))()


def test_a_run_is_complete_only_when_every_pending_batch_has_a_clean_manifest(tmp_path):
    from operators.production import describe_incomplete, incomplete_batches
    from pipelines import storage
    from pipelines.engine.manifest import BatchManifest, ProductFailure, Totals, failures_url

    plan_url = str(tmp_path / "runs" / "w_abc" / "plan.json")
    info = RunManifest.from_xcom(XCOM | {"plan_url": plan_url})
    clean = BatchManifest("cpu0", 0, Totals(tiles=1, written=2)).to_xcom()
    assert "failed" not in clean  # the XCom of a clean batch keeps its keys
    assert incomplete_batches(info, [clean]) == [("cpu0", 1)]  # batch 1 failed: no XCom
    failure = ProductFailure.of("cloud_mask", "t1", ["2025-07-20"], BadInputError("asset", 1, "x"))
    kept = BatchManifest("cpu0", 1, Totals(tiles=1, written=1), (failure,))
    assert BatchManifest.from_xcom(kept.to_xcom()) == kept
    assert failure.kind == "bad_input"
    assert incomplete_batches(info, [clean, kept.to_xcom()]) == [("cpu0", 1)]
    done = BatchManifest("cpu0", 1, Totals(tiles=1, written=1)).to_xcom()
    assert incomplete_batches(info, [clean, done]) == []
    # the season's plan lists no groups: nothing to check
    assert incomplete_batches(RunManifest.from_xcom(XCOM | {"groups": []}), []) == []

    storage.write_text(failures_url(plan_url, "cpu0", 1), json.dumps(kept.to_xcom()))
    line = describe_incomplete(info, [("cpu0", 1)], "/store/p/catalog.json")
    assert "process_cpu0[1]" in line and "cloud_mask on t1 (bad_input: BadInputError: " in line
    assert str(BadInputError("asset", 1, "x")) in line  # what failed, not only its class
    assert "/store/p/catalog.json" in line


# ---- schedules: data intervals, deployment settings, config per DAG ---------------------------


def test_deployment_settings_default_to_monthly_data_intervals():
    from operators.production import DeploymentSettings

    settings = DeploymentSettings.from_env({})
    assert settings.schedule == "0 0 1 * *" and settings.catchup is False
    assert settings.max_active_runs == 1 and settings.province_configs() == {}
    custom = DeploymentSettings.from_env(
        {
            "TERRAPIPE_SCHEDULE": "none",
            "TERRAPIPE_CATCHUP": "true",
            "TERRAPIPE_MAX_ACTIVE_RUNS": "3",
            "TERRAPIPE_TASK_TIMEOUT_MIN": "90",
            "TERRAPIPE_START_DATE": "2024-01-01",
        }
    )
    assert custom.schedule is None and custom.catchup and custom.max_active_runs == 3
    assert custom.task_timeout.total_seconds() == 5400 and custom.start_date.year == 2024


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TERRAPIPE_SCHEDULE", "every month"),
        ("TERRAPIPE_CATCHUP", "maybe"),
        ("TERRAPIPE_MAX_ACTIVE_RUNS", "0"),
        ("TERRAPIPE_TASK_TIMEOUT_MIN", "1h"),
        ("TERRAPIPE_START_DATE", "2024-13-01"),
        ("TERRAPIPE_CONFIG_DIR", "/no/such/folder"),
        ("TERRAPIPE_ON_FAILURE_CALLBACK", "no_such_module:alert"),
        ("TERRAPIPE_ON_FAILURE_CALLBACK", "json:no_such_function"),
    ],
)
def test_a_bad_deployment_setting_names_the_variable(name, value):
    from operators.production import DeploymentSettings

    with pytest.raises(BadInputError) as err:
        DeploymentSettings.from_env({name: value})
    assert err.value.field == name and value in str(err.value)


def test_one_dag_per_province_config_of_the_config_folder(tmp_path):
    from operators.production import DeploymentSettings

    for name in ("north.yaml", "south west.yml", "notes.txt"):
        (tmp_path / name).write_text("province: x\n")
    settings = DeploymentSettings.from_env({"TERRAPIPE_CONFIG_DIR": str(tmp_path)})
    assert settings.province_configs() == {
        "province_production__north": (tmp_path / "north.yaml").resolve(),
        "province_production__south_west": (tmp_path / "south west.yml").resolve(),
    }


def test_a_scheduled_run_for_a_past_month_processes_exactly_that_month():
    import datetime as dt

    from airflow.timetables.interval import CronDataIntervalTimetable

    from operators.production import DeploymentSettings, _window

    timetable = CronDataIntervalTimetable(DeploymentSettings().schedule, timezone="UTC")
    interval = timetable.infer_manual_data_interval(
        run_after=dt.datetime(2025, 7, 1, 0, 0, tzinfo=dt.UTC)
    )
    context = {"data_interval_start": interval.start, "data_interval_end": interval.end}
    config_window = (dt.date(2020, 1, 1), dt.date(2020, 1, 31))
    assert _window({}, context, *config_window) == (dt.date(2025, 6, 1), dt.date(2025, 6, 30))
    # A manual run with a zero-width interval keeps the config's window.
    same = {"data_interval_start": interval.end, "data_interval_end": interval.end}
    assert _window({}, same, *config_window) == config_window


def test_a_scheduled_run_without_a_province_config_fails_naming_what_to_set():
    from types import SimpleNamespace

    from operators.production import config_param

    scheduled = {"dag_run": SimpleNamespace(run_type="scheduled")}
    with pytest.raises(BadInputError) as err:
        config_param({"config": None}, scheduled)
    assert err.value.field == "config" and "TERRAPIPE_CONFIG_DIR" in str(err.value)
    assert config_param({"config": "/p.yaml"}, scheduled) == "/p.yaml"
    assert config_param({}, {"dag_run": SimpleNamespace(run_type="manual")}) is None


def test_a_batch_is_labelled_by_its_tiles():
    import dataclasses

    from operators.production import batch_label
    from tests.unit.pipelines.engine.test_plan import synthetic_plan

    batches = [["a_0_0", "a_0_1", "a_1_0", "a_1_1"], ["b_0_0"]]
    plan = dataclasses.replace(synthetic_plan(), batches=batches)
    assert batch_label(plan, 0) == "0: a_0_0 a_0_1 (+2)"
    assert batch_label(plan, 1) == "1: b_0_0"


def test_a_run_marked_failed_by_hand_is_failed_by_its_teardown():
    from operators.production import failed_tasks

    done = {"plan": "success", "start_dask": "success", "process_cpu0_0": "success"}
    assert failed_tasks({**done, "finalize": "success", "stop_dask": "running"}) == []
    # marked failed while a tile task ran: it failed, finalize was skipped
    marked = {**done, "process_cpu0_1": "failed", "finalize": "skipped", "stop_dask": None}
    assert failed_tasks(marked) == ["process_cpu0_1"]
    # marked failed between tasks: nothing failed, but finalize was skipped
    assert failed_tasks({**done, "finalize": "skipped"}) == ["finalize (skipped)"]
    # no scenes: the plan skipped, everything after it too
    assert failed_tasks({"plan": "skipped", "finalize": "skipped"}) == []


def test_the_tiles_param_names_the_plan_tiles():
    from operators.production import tile_param
    from pipelines.errors import BadInputError

    assert tile_param(None, ["a", "b"]) == ()
    assert tile_param(" b, a ", ["a", "b"]) == ("b", "a")
    with pytest.raises(BadInputError, match="tiles: got 'c'"):
        tile_param("a,c", ["a", "b"])


def test_the_failure_hook_is_set_on_every_task():
    import json

    from operators.production import DeploymentSettings, build_production_dag

    settings = DeploymentSettings.from_env({"TERRAPIPE_ON_FAILURE_CALLBACK": "json:dumps"})
    assert settings.failure_callback() is json.dumps
    dag = build_production_dag("hooked", doc="", params={"config": None}, settings=settings)
    for task in dag.tasks:
        hooks = task.on_failure_callback
        assert json.dumps in (hooks if isinstance(hooks, list) else [hooks]), task.task_id
    plain = build_production_dag("plain", doc="", params={"config": None})
    assert not any(t.on_failure_callback for t in plain.tasks)


def test_tile_progress_logs_one_json_line_per_tile(caplog):
    import logging

    from operators.production import tile_progress

    plan = type("Plan", (), {"batches": [["a"], ["b", "c"]]})()
    with caplog.at_level(logging.INFO, logger="terrapipe.tiles"):
        progress = tile_progress(plan, "cpu0", 1)
        progress("b")
        progress("c")
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    assert lines[0] == {"event": "batch_start", "group": "cpu0", "batch": 1, "tiles": ["b", "c"]}
    assert [(x["tile"], x["done"], x["of"]) for x in lines[1:]] == [("b", 1, 2), ("c", 2, 2)]


# ---- pending batches: read from the store's markers ------------------------------------------


def _two_batch_plan():
    """The engine tests' two-tile plan (cloud_mask on both tiles, water_mask on the second),
    each tile a batch of its own."""
    import dataclasses

    from tests.unit.pipelines.engine.test_plan import synthetic_plan

    plan = synthetic_plan()
    return dataclasses.replace(plan, batches=[[t] for t in plan.tile_ids])


def test_pending_batches_are_those_with_a_product_without_its_marker(tmp_path):
    from operators.production import pending_batches
    from pipelines import storage
    from pipelines.products import marker_url
    from pipelines.stages.registry import get_stage

    plan, store = _two_batch_plan(), str(tmp_path)
    (group,) = plan.groups
    assert pending_batches(plan, store, overwrite=False) == {group.name: (0, 1)}
    for name, label in (("cloud_mask", "2025-07-03"), ("water_mask", "2025-07-02")):
        item = {
            "type": "Feature",
            "properties": {"terrapipe:stage_version": get_stage(name).version},
        }
        storage.write_text(marker_url(store, "p", name, "x0001_y0000", label), json.dumps(item))
    assert pending_batches(plan, store, overwrite=False) == {group.name: (0,)}
    assert pending_batches(plan, store, overwrite=True) == {group.name: (0, 1)}
    only = pending_batches(plan, store, overwrite=False, only_tiles=["x0001_y0000"])
    assert only == {group.name: ()}


def test_pending_batches_read_their_markers_side_by_side(monkeypatch):
    """On an object store each marker read waits tens of milliseconds: the batches' reads go
    out together. The first read waits for a second one to start; read one after another, it
    would wait in vain."""
    import threading

    from operators.production import pending_batches
    from pipelines import products

    second, lock, reads = threading.Event(), threading.Lock(), []

    def slow_is_done(store, province, product, tile_id, label, version):
        with lock:
            reads.append(tile_id)
            first = len(reads) == 1
        if first:
            assert second.wait(20), "the markers were read one after another"
        else:
            second.set()
        return False

    monkeypatch.setattr(products, "is_done", slow_is_done)
    plan = _two_batch_plan()
    assert pending_batches(plan, "s3://bucket/store", overwrite=False) == {
        plan.groups[0].name: (0, 1)
    }
    assert sorted(reads) == ["x0000_y0000", "x0001_y0000"]  # one read per batch: both missing
