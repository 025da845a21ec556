"""Airflow tasks of the production DAGs, built from the stage registry.

The DAG files in ``dags/`` only call :func:`build_production_dag`. Every task is a thin
wrapper over :mod:`pipelines.engine.run`; tasks pass small manifests (URLs, counts) through
XCom, never arrays.

Failure classes: bad input fails at once without retry (``AirflowFailException``), no scenes
skips (``AirflowSkipException``), transient I/O is retried with exponential backoff.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": dt.timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
}


#: Exceptions (by class name, anywhere in the MRO) worth a retry: I/O that may pass, and Dask
#: workers lost to memory or network.
RETRYABLE = ("TransientIOError", "OSError", "TimeoutError", "KilledWorker", "CommClosedError")


def is_retryable(exc: BaseException) -> bool:
    """True for failures that may pass on retry (transient I/O, lost workers)."""
    from pipelines.errors import BadInputError

    if isinstance(exc, BadInputError):
        return False
    return any(cls.__name__ in RETRYABLE for cls in type(exc).__mro__)


def classify_failures(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map failures to Airflow's classes: bad input and bugs fail at once, no scenes skips,
    transient I/O is re-raised so the task's retries (exponential backoff) apply."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.errors import BadInputError, NoScenesError

        try:
            return func(*args, **kwargs)
        except BadInputError as exc:
            raise AirflowFailException(f"bad input (not retried): {exc}") from exc
        except NoScenesError as exc:
            raise AirflowSkipException(f"no scenes: {exc}") from exc
        except Exception as exc:
            if is_retryable(exc):
                raise
            raise AirflowFailException(f"{type(exc).__name__} (not retried): {exc}") from exc

    return wrapper


# ---- task bodies (plain functions; the DAG wraps them) ---------------------------------------


@classify_failures
def plan_task(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Plan the run and write the plan to the store; returns its URL and the batch layout."""
    from pipelines.config import load_config
    from pipelines.engine.plan import make_plan, plan_url, write_plan
    from pipelines.engine.run import stac_api_for
    from pipelines.errors import NoScenesError

    config = load_config(params.get("config") or None, store=params.get("store") or None)
    if params.get("products"):
        config = config.model_copy(update={"products": tuple(params["products"].split(","))})
    start, end = _window(params, context, config.start, config.end)
    if params.get("event_date"):
        event = _iso_date("event_date", params["event_date"])
        flood = config.flood.model_copy(update={"event_date": event})
        config = config.model_copy(update={"flood": flood})
        if not (params.get("start") and params.get("end")):
            start, end = event, event + dt.timedelta(days=POST_EVENT_DAYS)
    config = config.with_window(start, end)
    with stac_api_for(config.stac) as api_url:
        plan = make_plan(config, api_url)
    n_scenes = {k: len(v) for k, v in plan.items.items()}
    if not plan.tiles or not any(n_scenes.values()):
        raise NoScenesError(f"no scenes for {config.province} in {plan.window}: {n_scenes}")
    url = plan_url(config.store, config.province, plan.window, config.fingerprint())
    write_plan(plan, url)
    overwrite = bool(params.get("overwrite"))
    return {
        "plan_url": url,
        "store": config.store,
        "province": config.province,
        "window": list(plan.window),
        "tiles": len(plan.tiles),
        "batches": len(plan.batches),
        "groups": [g.name for g in plan.groups],
        "pending": pending_batches(plan, config.store, overwrite),
        "scenes": n_scenes,
        "overwrite": overwrite,
        "dask": config.dask.model_dump(),
    }


#: Days after a flood event searched for post-event SAR (flood_event DAG).
POST_EVENT_DAYS = 12


def _iso_date(field: str, value: str) -> dt.date:
    from pipelines.errors import BadInputError

    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise BadInputError(field, value, "an ISO date YYYY-MM-DD") from None


def pending_batches(plan: Any, store: str, overwrite: bool) -> dict[str, list[int]]:
    """Per stage group, the batches with at least one (product, tile, date) without a marker."""
    from pipelines.engine.run import pending_labels
    from pipelines.stages.registry import get_stage

    pending: dict[str, list[int]] = {}
    for group in plan.groups:
        stages = [get_stage(n) for n in group.stages]
        pending[group.name] = [
            index
            for index, batch in enumerate(plan.batches)
            if overwrite
            or any(pending_labels(plan, store, s, t, False) for t in batch for s in stages)
        ]
    return pending


def _window(
    params: dict[str, Any], context: dict[str, Any], start: dt.date, end: dt.date
) -> tuple[dt.date, dt.date]:
    """Window from params, else from a scheduled run's data interval, else the config's."""
    if params.get("start") and params.get("end"):
        return _iso_date("start", params["start"]), _iso_date("end", params["end"])
    lo, hi = context.get("data_interval_start"), context.get("data_interval_end")
    if lo is not None and hi is not None and hi > lo:
        return lo.date(), (hi - dt.timedelta(seconds=1)).date()
    return start, end


@classify_failures
def start_dask_task(plan_info: dict[str, Any]) -> dict[str, Any]:
    """Start one LocalCluster for the run (or use the configured scheduler)."""
    from operators.dask_cluster import start_cluster
    from pipelines.config import DaskConfig

    if not any(plan_info["pending"].values()):
        return {"address": None, "pid": None}  # everything is done: no cluster needed
    return start_cluster(DaskConfig.model_validate(plan_info["dask"])).to_dict()


@classify_failures
def prepare_task(plan_info: dict[str, Any]) -> dict[str, Any]:
    """Create or extend the product cubes (serial, before any tile writes)."""
    from pipelines.engine.run import open_plan, prepare_products

    if not any(plan_info["pending"].values()):
        return {}
    plan = open_plan(plan_info["plan_url"])
    return prepare_products(plan, plan_info["store"])


def batches_task(plan_info: dict[str, Any], group: str) -> list[int]:
    """Batch indexes to map over for ``group`` (empty when the run has none of its stages)."""
    return list(plan_info["pending"].get(group, []))


@classify_failures
def process_task(
    batch: int, plan_info: dict[str, Any], cluster: dict[str, Any], group: str
) -> dict[str, Any]:
    """Process one batch of tiles for one stage group on the run's Dask cluster."""
    from operators.dask_cluster import connect
    from pipelines.engine.run import open_plan, process_batch

    plan = open_plan(plan_info["plan_url"])
    client = connect(cluster["address"])
    try:
        return process_batch(
            plan, plan_info["store"], group, batch, client, overwrite=plan_info["overwrite"]
        )
    finally:
        client.close()


@classify_failures
def finalize_task(plan_info: dict[str, Any], manifests: list[Any]) -> dict[str, Any]:
    """Rebuild the static STAC catalog and sum up the run."""
    from pipelines.engine.run import finalize, open_plan, summarize

    flat: list[dict[str, Any]] = []
    for m in manifests:
        # A mapped task's results arrive as a lazy sequence of its instances' manifests.
        # Indexing by length avoids probing past the end (Airflow logs each miss as an error).
        flat.extend([m] if isinstance(m, dict) else [m[i] for i in range(len(m))])
    plan = open_plan(plan_info["plan_url"])
    summary = summarize([m for m in flat if m])
    summary.update(finalize(plan, plan_info["store"]))
    return summary


def stop_dask_task(cluster: dict[str, Any]) -> None:
    """Stop the cluster this run started (external clusters stay up)."""
    from operators.dask_cluster import stop_cluster

    stop_cluster(cluster)


# ---- the DAG -----------------------------------------------------------------------------------


def build_production_dag(
    dag_id: str,
    *,
    schedule: str | None,
    doc: str,
    params: dict[str, Any],
    tags: tuple[str, ...] = ("terrapipe",),
    start_date: dt.datetime | None = None,
):
    """A DAG: plan -> Dask -> prepare -> one mapped task per stage group -> catalog.

    The stage groups (and their Airflow pools) come from the registry: consecutive stages with
    the same resources share a task; GPU groups run in the ``gpu`` pool.
    """
    from airflow.sdk import DAG, Param, task

    from pipelines.stages.registry import registry_groups

    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date or dt.datetime(2022, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        doc_md=doc,
        tags=list(tags),
        params={k: Param(v, type=["null", "string", "boolean"]) for k, v in params.items()},
        render_template_as_native_obj=True,
    ) as dag:

        @task(task_id="plan", retries=2)
        def plan(**context: Any) -> dict[str, Any]:
            return plan_task(dict(context["params"]), context)

        @task(task_id="start_dask")
        def start_dask(plan_info: dict[str, Any]) -> dict[str, Any]:
            return start_dask_task(plan_info)

        @task(task_id="prepare_products")
        def prepare(plan_info: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
            return prepare_task(plan_info)

        @task(task_id="finalize", trigger_rule="none_failed")
        def finalize(plan_info: dict[str, Any], *results: Any) -> dict[str, Any]:
            return finalize_task(plan_info, list(results))

        @task(task_id="stop_dask", trigger_rule="all_done", retries=0)
        def stop_dask(cluster: dict[str, Any]) -> None:
            stop_dask_task(cluster)

        info = plan()
        cluster = start_dask(info)
        upstream = prepare(info, cluster)
        results = []
        for group in registry_groups():

            @task(task_id=f"batches_{group.name}")
            def batches(plan_info: dict[str, Any], _after: Any, group_name: str) -> list[int]:
                return batches_task(plan_info, group_name)

            @task(
                task_id=f"process_{group.name}",
                pool=group.pool,
                max_active_tis_per_dag=None if group.pool == "default_pool" else 1,
            )
            def process(
                batch: int, plan_info: dict[str, Any], cluster: dict[str, Any], group_name: str
            ) -> dict[str, Any]:
                return process_task(batch, plan_info, cluster, group_name)

            indexes = batches(info, upstream, group.name)
            mapped = process.partial(plan_info=info, cluster=cluster, group_name=group.name).expand(
                batch=indexes
            )
            results.append(mapped)
            upstream = mapped
        done = finalize(info, *results)
        # A teardown: always runs, and does not decide the run's state (finalize does).
        stopped = stop_dask(cluster).as_teardown(setups=cluster)
        done >> stopped
    return dag
