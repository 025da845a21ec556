"""The embedded Airflow: SQLite metadata DB under ``$TERRAPIPE_HOME/airflow``, this repo's
``dags/`` folder, the pools derived from the stage registry, and ``dag.test()`` runs.

Production deploys the same ``dags/`` folder with the Helm chart (see ``infra/``); nothing here
is used there.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.config import terrapipe_home
from pipelines.errors import TerrapipeError

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"

#: Concurrent GPU tasks allowed by the ``gpu`` pool (one per GPU worker of the cluster).
GPU_POOL_SLOTS = int(os.environ.get("TERRAPIPE_GPU_POOL_SLOTS", "1"))


def configure_environment() -> Path:
    """Point Airflow at a project-local home and this repo's DAGs (before importing airflow)."""
    home = Path(os.environ.get("AIRFLOW_HOME") or terrapipe_home() / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "60")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    return Path(os.environ["AIRFLOW_HOME"])


def ensure_airflow() -> Path:
    """Create the metadata DB once and the pools the registry needs; returns AIRFLOW_HOME."""
    home = configure_environment()
    marker = home / ".terrapipe-db-ready"
    if not marker.exists():
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        if proc.returncode != 0:
            raise TerrapipeError(f"airflow db migrate failed: {proc.stderr[-2000:]}")
        marker.touch()
    ensure_pools()
    return home


def ensure_pools() -> dict[str, int]:
    """Create the Airflow pools the stage registry asks for (``gpu`` for GPU stage groups)."""
    from airflow.models import Pool
    from airflow.utils.session import create_session

    from pipelines.stages.registry import registry_groups

    pools = {g.pool: GPU_POOL_SLOTS for g in registry_groups() if g.pool != "default_pool"}
    pools.setdefault("gpu", GPU_POOL_SLOTS)
    with create_session() as session:
        for name, slots in pools.items():
            Pool.create_or_update_pool(
                name,
                slots=slots,
                description="terrapipe GPU stages (one slot per GPU worker)",
                include_deferred=False,
                session=session,
            )
    return pools


def load_dag(dag_id: str):
    """Import ``dags/<dag_id>.py`` and return its DAG object."""
    path = DAGS_FOLDER / f"{dag_id}.py"
    if not path.exists():
        known = sorted(p.stem for p in DAGS_FOLDER.glob("*.py") if not p.stem.startswith("_"))
        from pipelines.errors import BadInputError

        raise BadInputError("dag_id", dag_id, f"one of {known}")
    spec = importlib.util.spec_from_file_location(f"terrapipe_dag_{dag_id}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def run_dag(
    dag_id: str, conf: dict[str, Any], logical_date: dt.datetime | None = None
) -> dict[str, Any]:
    """Run a DAG once in-process (``dag.test()``) and return its state and the tasks' states."""
    ensure_airflow()
    dag = load_dag(dag_id)
    run = dag.test(logical_date=logical_date, run_conf=conf)
    states: dict[str, str] = {}
    seconds: dict[str, float] = {}
    summary: dict[str, Any] | None = None
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = str(ti.state)
        if ti.duration is not None:
            seconds[key] = round(float(ti.duration), 2)
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter_by(dag_id=dag_id, run_id=run.run_id, task_id="finalize", key="return_value")
                .first()
            )
            value = XComModel.deserialize_value(row) if row is not None else None
            summary = value if isinstance(value, dict) else None
    except Exception:  # the summary is a convenience; states are the record
        summary = None
    return {
        "dag_id": dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "tasks": states,
        "task_seconds": seconds,
        "summary": summary,
    }
