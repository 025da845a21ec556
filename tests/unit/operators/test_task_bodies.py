"""Task bodies of the production DAG pass the run's settings through to the engine."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.config import DaskConfig

XCOM = {
    "plan_url": "/store/p/runs/2025-07-01_2025-07-10_abc/plan.json",
    "store": "/store",
    "province": "p",
    "window": ["2025-07-01", "2025-07-10"],
    "tiles": 6,
    "batches": 2,
    "groups": ["cpu0"],
    "pending": {"cpu0": [0, 1]},
    "scenes": {"s2": 3},
    "overwrite": False,
    "dask": DaskConfig().model_dump(),
}


@pytest.mark.parametrize("overwrite", [True, False])
def test_prepare_task_passes_the_runs_overwrite_to_prepare_products(monkeypatch, overwrite):
    pytest.importorskip("airflow")
    from operators.production import prepare_task
    from pipelines.engine import plan as plan_module
    from pipelines.engine import run as run_module

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(plan_module, "read_plan", lambda url: f"plan of {url}")
    monkeypatch.setattr(
        run_module,
        "prepare_products",
        lambda plan, store, overwrite=False: calls.append((plan, store, overwrite)) or {"x": 1},
    )
    assert prepare_task(XCOM | {"overwrite": overwrite}) == {"x": 1}
    assert calls == [(f"plan of {XCOM['plan_url']}", "/store", overwrite)]
