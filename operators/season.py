"""Airflow tasks of the ``season_crop_yield`` DAG: parcels -> crop_type -> yield for one season.

Task bodies are thin wrappers over :mod:`pipelines.engine.season` (the parcels step per tile)
and the registry's province-scope steps ``crop_type`` and ``yield``, called with the
:class:`~pipelines.engine.season.SeasonRun` the plan task describes; they pass small manifests
through XCom. The Dask cluster, failure classes and catalog step are the production DAG's.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from operators.production import (
    DEFAULT_ARGS,
    RunManifest,
    classify_failures,
    finalize_task,
    pending_batches,
    prepare_task,
    start_dask_task,
    stop_dask_task,
)

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from pipelines.engine.season import SeasonRun


@classify_failures
def season_plan_task(params: dict[str, Any]) -> dict[str, Any]:
    """Plan the season (its window, the parcels stage) and check the season's inputs."""
    from pipelines.agri.calendar import load_calendar
    from pipelines.config import load_config
    from pipelines.engine.plan import RunPlan, plan_run
    from pipelines.engine.season import season_window
    from pipelines.errors import BadInputError, NoScenesError

    config = load_config(params.get("config") or None, store=params.get("store") or None)
    raw_season = params.get("season") or config.start.year
    try:
        season = int(raw_season)
    except (TypeError, ValueError):
        raise BadInputError("season", raw_season, "a year such as 2025") from None
    start, end = season_window(season)
    config = config.with_window(start, end).model_copy(update={"products": ("parcels",)})
    labels = params.get("labels") or config.agri.labels
    if not labels:
        raise BadInputError("labels", labels, "a GeoJSON of labelled fields (param or agri.labels)")
    from pipelines import storage

    if not storage.exists(labels):
        raise BadInputError(
            "labels",
            labels,
            "an existing GeoJSON of labelled fields",
            "for a demo archive, `terrapipe demo-labels` writes a field survey",
        )
    calendar = config.crop_calendar or load_calendar(None)

    def require_s2(plan: RunPlan) -> None:
        if not plan.tiles or not plan.items.get("s2"):
            raise NoScenesError(f"no Sentinel-2 scenes for {config.province} in season {season}")

    planned = plan_run(config, require=require_s2)
    plan, url = planned.plan, planned.url
    n_scenes = {k: len(v) for k, v in plan.items.items()}
    overwrite = bool(params.get("overwrite"))
    return {
        "plan_url": url,
        "store": config.store,
        "province": config.province,
        "season": season,
        "window": list(plan.window),
        "tiles": len(plan.tiles),
        "batches": len(plan.batches),
        "pending": pending_batches(plan, config.store, overwrite),
        "scenes": n_scenes,
        "overwrite": overwrite,
        "dask": config.dask.model_dump(),
        "labels": labels,
        "counties": config.agri.counties,
        "yield_history": params.get("yield_history") or config.agri.yield_history,
        "calendar": calendar.model_dump(mode="json"),
    }


def _plan(info: dict[str, Any], batch: int | None = None) -> Any:
    """The season's whole plan, or the part of it batch ``batch``'s tasks read."""
    from pipelines.engine.plan import read_plan, read_plan_part

    if batch is None:
        return read_plan(info["plan_url"])
    return read_plan_part(info["plan_url"], batch)


def _season(info: dict[str, Any]) -> SeasonRun:
    """The season run the plan task's manifest describes (what the province steps take)."""
    from pipelines.agri.calendar import parse_calendar
    from pipelines.engine.season import SeasonRun

    plan = _plan(info)
    return SeasonRun(
        plan=plan,
        store=info["store"],
        calendar=parse_calendar(info["calendar"]),
        labels=info["labels"],
        aoi=plan.aoi,
        counties=info.get("counties"),
        yield_history=info.get("yield_history"),
        overwrite=bool(info["overwrite"]),
    )


@classify_failures
def season_tiles_task(batch: int, info: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """Parcels, polygons and parcel tables of one batch of tiles."""
    from operators.dask_cluster import run_client
    from pipelines.agri.calendar import parse_calendar
    from pipelines.engine.season import read_counties, read_season_labels, season_tile
    from pipelines.errors import NoScenesError

    plan = _plan(info, batch)
    counties = read_counties(info.get("counties"))
    labels = read_season_labels(
        info.get("labels"), plan.aoi, plan.crs, parse_calendar(info["calendar"]).names
    )
    results = []
    # A local cluster found gone (the start task's process exited under a scheduler) or on
    # another machine is started again for this task, as the production DAG's tile tasks do.
    with run_client(cluster, RunManifest.from_xcom(info).dask) as client:
        for tile_id in plan.batches[batch]:
            try:
                results.append(
                    season_tile(
                        plan,
                        info["store"],
                        tile_id,
                        client,
                        counties,
                        info["overwrite"],
                        labels=labels,
                    )
                )
            except NoScenesError as exc:
                results.append({"tile_id": tile_id, "no_scenes": str(exc)})
    return {
        "batch": batch,
        "tiles": len(results),
        "written": sum(1 for r in results if r.get("skipped") is False),
        "skipped": sum(1 for r in results if r.get("skipped")),
        "no_scenes": sum(1 for r in results if "no_scenes" in r),
        "parcels": sum(int(r.get("parcels", 0)) for r in results),
        "bytes_written": sum(int(r.get("bytes_written", 0)) for r in results),
    }


@classify_failures
def fit_crops_task(info: dict[str, Any]) -> dict[str, Any]:
    """The registry's crop_type step over the province: fit the few-shot crop model on the
    season's parcels, predict a crop per parcel, create the crop_type cube."""
    from pipelines.stages.registry import get_stage

    return get_stage("crop_type").func(parcels=_season(info))


def all_batches(info: dict[str, Any]) -> list[int]:
    return list(range(int(info["batches"])))


@classify_failures
def crop_maps_task(batch: int, info: dict[str, Any], fit: dict[str, Any]) -> dict[str, Any]:
    """The crop_type product of one batch of tiles (all rewritten after a refit)."""
    from pipelines import products
    from pipelines.engine.season import parcel_rows, tiles_with_parcels
    from pipelines.engine.season_crops import crop_type_tile

    plan = _plan(info, batch)
    overwrite = bool(info["overwrite"] or fit.get("refit"))
    with_parcels = tiles_with_parcels(plan, info["store"], plan.batches[batch])
    # the batch's parcels only: the province's table is millions of rows
    predictions = products.read_table(
        products.crop_predictions_url(info["store"], plan.province, info["season"]),
        parcel_rows(plan, plan.batches[batch]),
    )
    results = [
        crop_type_tile(plan, info["store"], tile_id, overwrite, predictions)
        for tile_id in plan.batches[batch]
        if tile_id in with_parcels
    ]
    return {
        "batch": batch,
        "tiles": len(results),
        "written": sum(1 for r in results if not r["skipped"]),
        "skipped": sum(1 for r in results if r["skipped"]),
        "bytes_written": sum(int(r.get("bytes_written", 0)) for r in results),
    }


@classify_failures
def yield_task(info: dict[str, Any]) -> dict[str, Any]:
    """The registry's yield step: county yield forecast of the season from this and earlier
    season runs."""
    from pipelines.stages.registry import get_stage

    return get_stage("yield").func(crop_type=_season(info))


def build_season_dag(dag_id: str, *, doc: str, params: dict[str, Any]) -> DAG:
    """plan -> Dask -> parcels per tile -> fit crops -> crop maps per tile -> yield -> catalog."""
    from airflow.sdk import DAG, Param, task

    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=dt.datetime(2022, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        doc_md=doc,
        tags=["terrapipe", "agriculture"],
        params={
            k: Param(v, type=["null", "string", "integer", "boolean"]) for k, v in params.items()
        },
        render_template_as_native_obj=True,
    ) as dag:

        @task(task_id="plan", retries=2)
        def plan(**context: Any) -> dict[str, Any]:
            return season_plan_task(dict(context["params"]))

        @task(task_id="start_dask")
        def start_dask(info: dict[str, Any]) -> dict[str, Any]:
            return start_dask_task(info)

        @task(task_id="prepare_products")
        def prepare(info: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
            return prepare_task(info)

        @task(task_id="parcel_batches")
        def parcel_batches(info: dict[str, Any], _after: Any) -> list[int]:
            # The season plan has one stage group, parcels: its pending batches.
            return sorted({b for batches in info["pending"].values() for b in batches})

        @task(task_id="parcels")
        def parcels(batch: int, info: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
            return season_tiles_task(batch, info, cluster)

        @task(task_id="fit_crop_type", trigger_rule="none_failed")
        def fit(info: dict[str, Any], _after: Any) -> dict[str, Any]:
            return fit_crops_task(info)

        @task(task_id="map_batches")
        def map_batches(info: dict[str, Any], _after: Any) -> list[int]:
            return all_batches(info)

        @task(task_id="crop_type")
        def crop_type(batch: int, info: dict[str, Any], fit: dict[str, Any]) -> dict[str, Any]:
            return crop_maps_task(batch, info, fit)

        @task(task_id="yield_forecast", trigger_rule="none_failed")
        def forecast(info: dict[str, Any], _after: Any) -> dict[str, Any]:
            return yield_task(info)

        @task(task_id="finalize", trigger_rule="none_failed")
        def finalize(info: dict[str, Any], forecast: Any, *results: Any) -> dict[str, Any]:
            summary = finalize_task(info, list(results))
            summary["season"] = info["season"]
            summary["yield"] = forecast
            return summary

        @task(task_id="stop_dask", trigger_rule="all_done", retries=0)
        def stop_dask(cluster: dict[str, Any]) -> None:
            stop_dask_task(cluster)

        # XComArgs while the DAG is built, the upstream tasks' XCom values when a task runs
        # (Airflow's task typing cannot say both).
        info: Any = plan()
        cluster: Any = start_dask(info)
        prepared: Any = prepare(info, cluster)
        tiles: Any = parcels.partial(info=info, cluster=cluster).expand(
            batch=parcel_batches(info, prepared)
        )
        fitted: Any = fit(info, tiles)
        maps: Any = crop_type.partial(info=info, fit=fitted).expand(batch=map_batches(info, fitted))
        yields: Any = forecast(info, maps)
        done = finalize(info, yields, tiles, maps)
        stopped = stop_dask(cluster).as_teardown(setups=cluster)
        done >> stopped
    return dag
