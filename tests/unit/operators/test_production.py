"""The plan task's manifest: the XCom every task of a run reads, serialised explicitly."""

from __future__ import annotations

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
