"""The plan task's manifest: the XCom every task of a run reads, serialised explicitly."""

from __future__ import annotations

import pytest

from operators.production import RunManifest
from pipelines.config import DaskConfig

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
}


def test_the_run_manifest_round_trips_its_xcom():
    manifest = RunManifest.from_xcom(XCOM)
    assert manifest.pending["cpu0"] == (0, 1) and manifest.dask == DaskConfig()
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
