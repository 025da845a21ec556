"""Airflow tasks of the production DAGs, built from the stage registry.

The DAG files in ``dags/`` only call :func:`production_dags` / :func:`build_production_dag`.
Every task is a thin wrapper over :mod:`pipelines.engine` (one planning function, the
runner); tasks pass small manifests (URLs, counts) through XCom, never arrays:
:class:`RunManifest` from the plan task, :class:`~pipelines.engine.manifest.BatchManifest`
from each mapped task, each serialised explicitly.

Failure classes: bad input fails at once without retry (``AirflowFailException``), no scenes
skips (``AirflowSkipException``), transient I/O is retried with exponential backoff.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from pipelines.config import DaskConfig, ProvinceConfig
    from pipelines.engine.plan import PlannedRun, RunPlan
    from pipelines.stages.registry import Stage

DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": dt.timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
}

#: Limit on the tasks that do not process pixels (plan, cluster, cubes, catalog).
CONTROL_TASK_TIMEOUT = dt.timedelta(hours=1)


@dataclass(frozen=True)
class DeploymentSettings:
    """How a deployment schedules the production DAG, read from the dag-processor's environment.

    ``TERRAPIPE_SCHEDULE``: cron of the data intervals (default monthly, ``0 0 1 * *``): each
    scheduled run processes exactly its interval, e.g. the run of 2025-06 processes
    2025-06-01..2025-06-30. ``none`` makes the DAG manual only.
    ``TERRAPIPE_CATCHUP``: ``true`` runs every missed interval since ``TERRAPIPE_START_DATE``
    (backfill, each month once). ``TERRAPIPE_MAX_ACTIVE_RUNS``, ``TERRAPIPE_MAX_ACTIVE_TASKS``:
    Airflow's limits per DAG. ``TERRAPIPE_TASK_TIMEOUT_MIN``: ``execution_timeout`` of a batch
    task (minutes). ``TERRAPIPE_CONFIG_DIR``: a folder of province configs (``*.yaml``): one DAG
    per config, ``province_production__<file stem>``, its scheduled runs bound to that config.
    ``TERRAPIPE_ON_FAILURE_CALLBACK``: ``module:function`` called by Airflow with the task's
    context when a task fails (alerts: mail, chat, an incident tool), set on every task.
    """

    schedule: str | None = "0 0 1 * *"
    start_date: dt.datetime = dt.datetime(2022, 1, 1, tzinfo=dt.UTC)
    catchup: bool = False
    max_active_runs: int = 1
    max_active_tasks: int = 16
    task_timeout: dt.timedelta = dt.timedelta(hours=6)
    config_dir: Path | None = None
    on_failure_callback: str | None = None
    """``module:function`` of the failure hook (checked to import and be callable)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentSettings:
        """The settings of ``env`` (default ``os.environ``); a bad value is a BadInputError
        naming the variable."""
        env = os.environ if env is None else env
        base = cls()
        schedule = env.get("TERRAPIPE_SCHEDULE", "").strip() or base.schedule
        if schedule is not None and schedule.lower() == "none":
            schedule = None
        if schedule is not None:
            _check_cron(schedule)
        folder = env.get("TERRAPIPE_CONFIG_DIR", "").strip()
        return cls(
            schedule=schedule,
            start_date=_env_date(env, "TERRAPIPE_START_DATE", base.start_date),
            catchup=_env_bool(env, "TERRAPIPE_CATCHUP", base.catchup),
            max_active_runs=_env_int(env, "TERRAPIPE_MAX_ACTIVE_RUNS", base.max_active_runs),
            max_active_tasks=_env_int(env, "TERRAPIPE_MAX_ACTIVE_TASKS", base.max_active_tasks),
            task_timeout=dt.timedelta(
                minutes=_env_int(
                    env, "TERRAPIPE_TASK_TIMEOUT_MIN", int(base.task_timeout.total_seconds() // 60)
                )
            ),
            config_dir=_config_dir(folder) if folder else None,
            on_failure_callback=_callback_spec(env.get("TERRAPIPE_ON_FAILURE_CALLBACK", "")),
        )

    def failure_callback(self) -> Callable[[Any], None] | None:
        """The failure hook, imported; None when none is set."""
        if not self.on_failure_callback:
            return None
        return load_callback(self.on_failure_callback)

    def province_configs(self) -> dict[str, Path]:
        """DAG id -> config file, one per ``*.yaml`` / ``*.yml`` of ``config_dir``."""
        if self.config_dir is None:
            return {}
        files = sorted([*self.config_dir.glob("*.yaml"), *self.config_dir.glob("*.yml")])
        return {f"province_production__{_dag_suffix(f.stem)}": f.resolve() for f in files}


def _bad_env(name: str, value: str, valid: str) -> Exception:
    from pipelines.errors import BadInputError

    return BadInputError(name, value, valid)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_env(name, raw, "a positive integer") from None
    if value < 1:
        raise _bad_env(name, raw, "a positive integer")
    return value


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise _bad_env(name, raw, "true or false")


def _env_date(env: Mapping[str, str], name: str, default: dt.datetime) -> dt.datetime:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise _bad_env(name, raw, "an ISO date YYYY-MM-DD") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _check_cron(expr: str) -> None:
    from croniter import croniter

    presets = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually")
    if expr not in presets and not croniter.is_valid(expr):
        raise _bad_env(
            "TERRAPIPE_SCHEDULE", expr, f"a cron expression (e.g. '0 0 1 * *'), {presets} or none"
        )


def _config_dir(folder: str) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise _bad_env("TERRAPIPE_CONFIG_DIR", folder, "a folder of province config YAML files")
    return path


def load_callback(spec: str, name: str = "TERRAPIPE_ON_FAILURE_CALLBACK") -> Callable[[Any], None]:
    """The callable ``module:function`` (or ``module.function``); a BadInputError naming
    ``name`` when it does not import or is not callable."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep:
        module, _, attr = spec.rpartition(".")
    try:
        func = getattr(importlib.import_module(module), attr) if module and attr else None
    except (ImportError, AttributeError):
        func = None
    if not callable(func):
        raise _bad_env(name, spec, "an importable callable module:function taking the context")
    return func


def _callback_spec(raw: str) -> str | None:
    spec = raw.strip()
    if not spec:
        return None
    load_callback(spec)
    return spec


def _dag_suffix(stem: str) -> str:
    """A config file's stem as a DAG id part (letters, digits, ``_``, ``-``, ``.``)."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in stem)


def classify_failures(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map failures to Airflow's classes: bad input and bugs fail at once, no scenes skips,
    transient failures (:func:`pipelines.errors.is_transient`: by type and cause) are re-raised
    so the task's retries (exponential backoff) apply."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.errors import BadInputError, NoScenesError, is_transient

        try:
            return func(*args, **kwargs)
        except BadInputError as exc:
            raise AirflowFailException(f"bad input (not retried): {exc}") from exc
        except NoScenesError as exc:
            raise AirflowSkipException(f"no scenes: {exc}") from exc
        except Exception as exc:
            if is_transient(exc):
                raise
            raise AirflowFailException(f"{type(exc).__name__} (not retried): {exc}") from exc

    return wrapper


# ---- the plan task's manifest ------------------------------------------------------------------


@dataclass(frozen=True)
class RunManifest:
    """What the plan task hands every other task of a run (its XCom): where the plan is, the
    batch layout and what is left to do."""

    plan_url: str
    store: str
    province: str
    window: tuple[str, str]
    """First and last day (YYYY-MM-DD) of the run."""
    tiles: int
    batches: int
    pending: Mapping[str, tuple[int, ...]]
    """Per stage group, the batches with at least one output without a marker."""
    scenes: Mapping[str, int]
    """Scenes found per source input."""
    overwrite: bool
    dask: DaskConfig
    groups: tuple[str, ...] = ()
    """Stage groups of the production DAG's mapped tasks (the season's plan task lists none)."""
    only_tiles: tuple[str, ...] = ()
    """The tiles this attempt processes (e.g. the failed ones, ``terrapipe redo --failed``);
    empty: every tile of the plan."""

    @classmethod
    def of(
        cls,
        planned: PlannedRun,
        config: ProvinceConfig,
        overwrite: bool,
        only_tiles: Sequence[str] = (),
    ) -> RunManifest:
        """The manifest of a planned run, its pending batches read from the store's markers
        (of ``only_tiles`` when given: the batches holding them)."""
        plan = planned.plan
        return cls(
            plan_url=planned.url,
            store=config.store,
            province=config.province,
            window=plan.window,
            tiles=len(plan.tiles),
            batches=len(plan.batches),
            groups=tuple(g.name for g in plan.groups),
            pending=pending_batches(plan, config.store, overwrite, only_tiles),
            scenes={k: len(v) for k, v in plan.items.items()},
            overwrite=overwrite,
            dask=config.dask,
            only_tiles=tuple(only_tiles),
        )

    def to_xcom(self) -> dict[str, object]:
        return {
            "plan_url": self.plan_url,
            "store": self.store,
            "province": self.province,
            "window": list(self.window),
            "tiles": self.tiles,
            "batches": self.batches,
            "groups": list(self.groups),
            "pending": {group: list(batches) for group, batches in self.pending.items()},
            "scenes": dict(self.scenes),
            "overwrite": self.overwrite,
            "dask": self.dask.model_dump(),
            "only_tiles": list(self.only_tiles),
        }

    @classmethod
    def from_xcom(cls, raw: Mapping[str, Any]) -> RunManifest:
        """The manifest of a plan task's XCom (extra keys, e.g. the season's, are ignored)."""
        return cls(
            plan_url=str(raw["plan_url"]),
            store=str(raw["store"]),
            province=str(raw["province"]),
            window=(str(raw["window"][0]), str(raw["window"][1])),
            tiles=int(raw["tiles"]),
            batches=int(raw["batches"]),
            groups=tuple(raw.get("groups", ())),
            pending={str(g): tuple(int(b) for b in bs) for g, bs in raw["pending"].items()},
            scenes={str(k): int(v) for k, v in raw["scenes"].items()},
            overwrite=bool(raw["overwrite"]),
            dask=_dask_config(raw["dask"]),
            only_tiles=tuple(str(t) for t in raw.get("only_tiles", ())),
        )

    def restrict(self, plan: RunPlan) -> RunPlan:
        """``plan`` with its batches holding only :attr:`only_tiles` (the same batch indexes),
        or ``plan`` itself when the attempt processes every tile."""
        if not self.only_tiles:
            return plan
        keep = set(self.only_tiles)
        return dataclasses.replace(
            plan, batches=[[t for t in b if t in keep] for b in plan.batches]
        )


def _dask_config(raw: Mapping[str, Any]) -> DaskConfig:
    from pipelines.config import DaskConfig

    return DaskConfig.model_validate(raw)


# ---- task bodies (plain functions; the DAG wraps them; XCom in and out) ------------------------


@classify_failures
def plan_task(params: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, object]:
    """Plan the run and write the plan to the store; returns its :class:`RunManifest`."""
    from pipelines.config import load_config
    from pipelines.engine.plan import plan_run

    config = load_config(config_param(params, context), store=params.get("store") or None)
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
    planned = plan_run(config)
    only = tile_param(params.get("tiles"), planned.plan.tile_ids)
    return RunManifest.of(planned, config, bool(params.get("overwrite")), only).to_xcom()


def tile_param(raw: str | None, tile_ids: Sequence[str]) -> tuple[str, ...]:
    """The ``tiles`` param (comma-separated tile ids) checked against the plan's tiles; empty
    for every tile."""
    from pipelines.errors import BadInputError

    tiles = tuple(t.strip() for t in str(raw or "").split(",") if t.strip())
    unknown = [t for t in tiles if t not in tile_ids]
    if unknown:
        shown = ", ".join(list(tile_ids)[:10]) + (" ..." if len(tile_ids) > 10 else "")
        raise BadInputError("tiles", ",".join(unknown), f"tile ids of the run's plan: {shown}")
    return tiles


def config_param(params: Mapping[str, Any], context: Mapping[str, Any]) -> str | None:
    """The run's province config path; None (the embedded demo config) only for a run started
    by hand: a scheduled or backfill run without a config fails, naming what to set."""
    from pipelines.errors import BadInputError

    path = params.get("config") or None
    run = context.get("dag_run")
    run_type = str(getattr(run, "run_type", "") or "").lower()
    if path is None and ("scheduled" in run_type or "backfill" in run_type):
        raise BadInputError(
            "config",
            None,
            "a province config for a scheduled run: set TERRAPIPE_CONFIG_DIR (one DAG per config"
            " file) or give the DAG's `config` param a default",
        )
    return str(path) if path is not None else None


#: Days after a flood event searched for post-event SAR (flood_event DAG).
POST_EVENT_DAYS = 12


def _iso_date(field: str, value: str) -> dt.date:
    from pipelines.errors import BadInputError

    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise BadInputError(field, value, "an ISO date YYYY-MM-DD") from None


def pending_batches(
    plan: RunPlan, store: str, overwrite: bool, only_tiles: Sequence[str] = ()
) -> dict[str, tuple[int, ...]]:
    """Per stage group, the batches with at least one (product, tile, date) without a marker;
    only the tiles ``only_tiles`` count when given. A batch's markers are read until the first
    missing one (one read per batch of a fresh window), and batches are read side by side
    on an object store (:func:`pipelines.storage.concurrently`): a month of a 1,700-tile
    province done but for one batch holds some 60,000 markers; read one after another at tens
    of milliseconds a read, that is tens of minutes before any tile starts."""
    from pipelines.products import is_done
    from pipelines.stages.registry import get_stage
    from pipelines.storage import concurrently

    pending: dict[str, tuple[int, ...]] = {}
    for group in plan.groups:
        stages = [get_stage(n) for n in group.stages]
        wanted = [
            index
            for index, batch in enumerate(plan.batches)
            if not only_tiles or any(t in only_tiles for t in batch)
        ]

        def has_missing(index: int, stages: list[Stage] = stages) -> bool:
            return any(
                not is_done(store, plan.province, s.name, t, label, s.version)
                for t in plan.batches[index]
                if not only_tiles or t in only_tiles
                for s in stages
                for label in plan.tile_dates(s, t)
            )

        missing = (
            [True] * len(wanted) if overwrite else concurrently(has_missing, wanted, url=store)
        )
        pending[group.name] = tuple(i for i, m in zip(wanted, missing, strict=True) if m)
    return pending


def _window(
    params: Mapping[str, Any], context: Mapping[str, Any], start: dt.date, end: dt.date
) -> tuple[dt.date, dt.date]:
    """Window from params, else from a scheduled run's data interval, else the config's."""
    if params.get("start") and params.get("end"):
        return _iso_date("start", params["start"]), _iso_date("end", params["end"])
    lo, hi = context.get("data_interval_start"), context.get("data_interval_end")
    if lo is not None and hi is not None and hi > lo:
        return lo.date(), (hi - dt.timedelta(seconds=1)).date()
    return start, end


def pending_gpu_groups(info: RunManifest) -> list[str]:
    """The run's stage groups that declare a GPU and have batches to do."""
    from pipelines.engine.plan import read_plan

    if not any(info.pending.get(g) for g in info.groups):
        return []
    return [
        g.name
        for g in read_plan(info.plan_url).groups
        if g.resources.get("GPU", 0) > 0 and info.pending.get(g.name)
    ]


@classify_failures
def start_dask_task(plan_info: Mapping[str, Any]) -> dict[str, object]:
    """Start one LocalCluster for the run (or use the configured scheduler). A run with GPU
    work checks up front that the ``gpu`` pool exists and that the cluster has a worker
    declaring ``GPU``; either missing fails the run at once, naming what to create."""
    from operators.dask_cluster import start_cluster, stop_cluster
    from operators.provision import require_pool

    info = RunManifest.from_xcom(plan_info)
    if not any(info.pending.values()):
        return {"address": None, "pid": None}  # everything is done: no cluster needed
    gpu_groups = pending_gpu_groups(info)
    if gpu_groups:
        require_pool()
    handle = start_cluster(info.dask)
    if gpu_groups:
        try:
            check_gpu_workers(handle.to_xcom(), info)
        except BaseException:
            stop_cluster(handle)
            raise
    return handle.to_xcom()


def check_gpu_workers(cluster: Mapping[str, Any], info: RunManifest) -> tuple[str, ...]:
    """The GPU workers of the run's cluster (bounded wait); BadInputError naming what to start
    when there is none."""
    from operators.dask_cluster import require_gpu_workers, run_client

    local = bool(cluster.get("pid"))
    with run_client(cluster, info.dask) as client:
        return require_gpu_workers(client, info.dask, local=local)


@classify_failures
def prepare_task(plan_info: Mapping[str, Any]) -> dict[str, int]:
    """Create or extend the product cubes (serial, before any tile writes); with the run's
    ``overwrite``, a cube whose times are lost is recreated."""
    from pipelines.engine.plan import read_plan
    from pipelines.engine.run import prepare_products

    info = RunManifest.from_xcom(plan_info)
    if not any(info.pending.values()):
        return {}
    return prepare_products(read_plan(info.plan_url), info.store, info.overwrite)


def batch_label(plan: RunPlan, batch: int) -> str:
    """A batch's label: its index and tiles, e.g. ``3: 31UFU_0_0 31UFU_0_1 (+4)``."""
    tiles = plan.batches[batch]
    more = f" (+{len(tiles) - 2})" if len(tiles) > 2 else ""
    return f"{batch}: {' '.join(tiles[:2])}{more}"


def batches_task(plan_info: Mapping[str, Any], group: str) -> list[int]:
    """Batch indexes to map over for ``group`` (empty when the run has none of its stages)."""
    return list(RunManifest.from_xcom(plan_info).pending.get(group, ()))


@classify_failures
def process_task(
    batch: int,
    plan_info: Mapping[str, Any],
    cluster: Mapping[str, Any],
    group: str,
    plan: RunPlan | None = None,
) -> dict[str, str | int | float]:
    """Process one batch of tiles for one stage group on the run's Dask cluster; returns the
    batch's :class:`~pipelines.engine.manifest.BatchManifest`. ``plan``: the batch's part of
    the run's plan (:func:`~pipelines.engine.plan.read_plan_part`) or the whole plan, when the
    caller has read it already, else the part is read here."""
    from operators.dask_cluster import require_gpu_workers, run_client
    from pipelines.engine.plan import read_plan_part
    from pipelines.engine.run import process_batch

    info = RunManifest.from_xcom(plan_info)
    plan = info.restrict(plan if plan is not None else read_plan_part(info.plan_url, batch))
    gpu = any(g.name == group and g.resources.get("GPU", 0) > 0 for g in plan.groups)
    # A local cluster found gone (killed, lost) is restarted for this task, never waited on.
    with run_client(cluster, info.dask) as client:
        if gpu:  # a GPU worker lost since the run started fails the task, not waits on it
            require_gpu_workers(client, info.dask, local=bool(cluster.get("pid")))
        progress = tile_progress(plan, group, batch)
        manifest = process_batch(
            plan,
            info.store,
            group,
            batch,
            client,
            info.overwrite,
            progress=progress,
            plan_url=info.plan_url,
        )
    return manifest.to_xcom()


def tile_progress(plan: RunPlan, group: str, batch: int) -> Callable[[str], None]:
    """Log one structured line (JSON) as a batch starts and as each of its tiles is done, in the
    task's log: ``{"event": "tile_done", "group", "batch", "tile", "done", "of", "seconds"}``."""
    import json
    import logging
    import time

    log = logging.getLogger("terrapipe.tiles")
    tiles = plan.batches[batch]
    t0 = time.monotonic()
    done = 0
    start = {"event": "batch_start", "group": group, "batch": batch, "tiles": list(tiles)}
    log.info(json.dumps(start))

    def tile_done(tile_id: str) -> None:
        nonlocal done
        done += 1
        line = {
            "event": "tile_done",
            "group": group,
            "batch": batch,
            "tile": tile_id,
            "done": done,
            "of": len(tiles),
            "seconds": round(time.monotonic() - t0, 1),
        }
        log.info(json.dumps(line))

    return tile_done


@classify_failures
def finalize_task(
    plan_info: Mapping[str, Any], manifests: Sequence[Any]
) -> dict[str, int | float | str]:
    """Rebuild the static STAC catalog over the markers present and sum up the run (totals and
    the catalog URL). Runs after failed batches too (trigger rule ``all_done``): the catalog then
    lists what was written, and :class:`~pipelines.errors.IncompleteRunError` (not retried) keeps
    the run from counting as a success. The run's report (``report.json``) records the outcome."""
    from pipelines.engine.manifest import Totals, summarize
    from pipelines.engine.plan import read_plan
    from pipelines.engine.report import record_outcome
    from pipelines.engine.run import finalize
    from pipelines.errors import IncompleteRunError

    flat: list[Mapping[str, Any]] = []
    for m in manifests:
        # A mapped task's results arrive as a lazy sequence of its instances' manifests.
        # Indexing by length avoids probing past the end (Airflow logs each miss as an error).
        flat.extend([m] if isinstance(m, dict) else [m[i] for i in range(len(m))])
    flat = [m for m in flat if isinstance(m, Mapping)]
    info = RunManifest.from_xcom(plan_info)
    totals = summarize([Totals.from_xcom(m) for m in flat])
    catalog = finalize(read_plan(info.plan_url), info.store)
    missing = incomplete_batches(info, flat)
    record_outcome(info.plan_url, "failed" if missing else "success")
    if missing:
        raise IncompleteRunError(describe_incomplete(info, missing, catalog))
    return {**totals.to_xcom(), "catalog": catalog, "plan_url": info.plan_url}


def incomplete_batches(
    info: RunManifest, manifests: Sequence[Mapping[str, Any]]
) -> list[tuple[str, int]]:
    """(group, batch) of the production groups' pending batches without a manifest of a
    completed task (failed, never run, or lost); none for the season's plan (no groups)."""
    done = {
        (str(m["group"]), int(m["batch"]))
        for m in manifests
        if "group" in m and "batch" in m and not m.get("failed")
    }
    return [
        (group, batch)
        for group in info.groups
        for batch in info.pending.get(group, ())
        if (group, batch) not in done
    ]


def describe_incomplete(info: RunManifest, missing: Sequence[tuple[str, int]], catalog: str) -> str:
    """One line: which batches did not complete, their failed products with the start of each
    error's message (:meth:`~pipelines.engine.manifest.ProductFailure.summary`, from the
    manifests the failed tasks kept in the store) and where the catalog of the written products
    is."""
    from pipelines.engine.manifest import read_failures

    failed = []
    for group, batch in missing:
        kept = read_failures(info.plan_url, group, batch)
        failed += [f.summary() for f in (kept.failed if kept else ())]
    shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
    batches = ", ".join(f"process_{g}[{b}]" for g, b in missing)
    return (
        f"{len(missing)} batch(es) did not complete ({batches})"
        + (f": {shown}" if shown else "")
        + f". The catalog lists the products written: {catalog}"
    )


def stop_dask_task(cluster: dict[str, object]) -> None:
    """Stop the cluster this run started (external clusters stay up)."""
    from operators.dask_cluster import stop_cluster

    stop_cluster(cluster)


def failed_tasks(states: Mapping[str, str | None]) -> list[str]:
    """The tasks (``task_id`` or ``task_id_<map index>``) that make a run failed, from its task
    states: failed or upstream_failed ones, and ``finalize`` skipped after a planned run (what
    marking a running run failed leaves: running tasks failed, pending ones skipped)."""
    failed = sorted(
        k
        for k, v in states.items()
        if v in ("failed", "upstream_failed") and not k.startswith("stop_dask")
    )
    if not failed and states.get("plan") == "success" and states.get("finalize") == "skipped":
        failed = ["finalize (skipped)"]
    return failed


def teardown_verdict(context: Mapping[str, Any]) -> None:
    """Fail the teardown (and, as it fails the run, the run) when a task of the run failed or
    the run was marked failed by hand while running: Airflow keeps such a run running until its
    teardown ends, and would then count it a success from its skipped leaves."""
    from airflow.sdk.exceptions import AirflowFailException

    ti = context["ti"]
    try:
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    except Exception as exc:  # no Execution API to ask: the run's leaves decide alone
        import logging

        logging.getLogger(__name__).warning("task states not read: %s", exc)
        return
    failed = failed_tasks(states)
    if failed:
        raise AirflowFailException(f"the run failed (cluster stopped): {', '.join(failed[:10])}")


# ---- the DAG -----------------------------------------------------------------------------------


def production_dags(
    dag_id: str, *, doc: str, params: dict[str, Any], settings: DeploymentSettings | None = None
) -> dict[str, DAG]:
    """The production DAGs of a deployment: ``dag_id`` itself, triggered by hand with its config
    named by the ``config`` param (unscheduled: a scheduled run could name no config), and one
    scheduled ``<dag_id>__<stem>`` per config of ``TERRAPIPE_CONFIG_DIR``, each bound to its
    config (see :class:`DeploymentSettings`)."""
    settings = settings or DeploymentSettings.from_env()
    dags = {
        dag_id: build_production_dag(
            dag_id, doc=doc, params=params, settings=settings, scheduled=False
        )
    }
    for bound_id, path in settings.province_configs().items():
        bound_id = bound_id.replace("province_production", dag_id, 1)
        bound_doc = f"{doc}\n\nBound to the province config `{path}`."
        dags[bound_id] = build_production_dag(
            bound_id, doc=bound_doc, params={**params, "config": str(path)}, settings=settings
        )
    return dags


def build_production_dag(
    dag_id: str,
    *,
    doc: str,
    params: dict[str, Any],
    settings: DeploymentSettings | None = None,
    scheduled: bool = True,
    tags: tuple[str, ...] = ("terrapipe",),
) -> DAG:
    """A DAG: plan -> Dask -> prepare -> one mapped task per stage group -> catalog.

    Scheduled DAGs run on data intervals (``settings.schedule``, monthly by default): each run
    processes exactly its interval. The stage groups (and their Airflow pools) come from the
    registry: consecutive stages with the same resources share a task; GPU groups run in the
    ``gpu`` pool. Every task has an ``execution_timeout``.
    """
    from airflow.sdk import DAG, CronDataIntervalTimetable, Param, task

    from pipelines.stages.registry import registry_groups

    settings = settings or DeploymentSettings.from_env()
    cron = settings.schedule if scheduled else None
    callback = settings.failure_callback()
    with DAG(
        dag_id=dag_id,
        schedule=CronDataIntervalTimetable(cron, timezone="UTC") if cron else None,
        start_date=settings.start_date,
        catchup=settings.catchup,
        max_active_runs=settings.max_active_runs,
        max_active_tasks=settings.max_active_tasks,
        default_args={
            **DEFAULT_ARGS,
            "execution_timeout": CONTROL_TASK_TIMEOUT,
            **({"on_failure_callback": callback} if callback else {}),
        },
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

        # all_done: the catalog is rebuilt over the markers written even when a batch failed;
        # finalize then fails (IncompleteRunError), so the run does not count as a success.
        @task(task_id="finalize", trigger_rule="all_done")
        def finalize(plan_info: dict[str, Any], *results: Any) -> dict[str, Any]:
            return finalize_task(plan_info, list(results))

        @task(task_id="stop_dask", trigger_rule="all_done", retries=0)
        def stop_dask(cluster: dict[str, Any], **context: Any) -> None:
            stop_dask_task(cluster)
            teardown_verdict(context)

        # XComArgs while the DAG is built, the upstream tasks' XCom values when a task runs
        # (Airflow's task typing cannot say both).
        info: Any = plan()
        cluster: Any = start_dask(info)
        upstream: Any = prepare(info, cluster)
        results = []
        for group in registry_groups():
            # none_failed: a group runs when the one before it had nothing to do (an empty,
            # skipped mapping, e.g. a GPU-only product list) but not after it failed.
            @task(task_id=f"batches_{group.name}", trigger_rule="none_failed")
            def batches(plan_info: dict[str, Any], _after: Any, group_name: str) -> list[int]:
                return batches_task(plan_info, group_name)

            @task(
                task_id=f"process_{group.name}",
                pool=group.pool,
                max_active_tis_per_dag=None if group.pool == "default_pool" else 1,
                execution_timeout=settings.task_timeout,
                map_index_template="{{ tiles | default('') }}",
            )
            def process(
                batch: int, plan_info: dict[str, Any], cluster: dict[str, Any], group_name: str
            ) -> dict[str, Any]:
                from airflow.sdk import get_current_context

                from pipelines.engine.plan import read_plan_part

                # The batch's part of the plan, read once for the label and the work.
                plan = read_plan_part(RunManifest.from_xcom(plan_info).plan_url, batch)
                # The mapped task's label in the UI and the logs: its tiles, not 0..n.
                get_current_context()["tiles"] = batch_label(plan, batch)  # type: ignore[typeddict-unknown-key]
                return process_task(batch, plan_info, cluster, group_name, plan)

            indexes = batches(info, upstream, group.name)
            mapped = process.partial(plan_info=info, cluster=cluster, group_name=group.name).expand(
                batch=indexes
            )
            results.append(mapped)
            upstream = mapped
        done = finalize(info, *results)
        # A teardown: always runs; it fails the run when a task failed or the run was marked
        # failed by hand (else Airflow would count such a run a success from its skipped leaves).
        stopped = stop_dask(cluster).as_teardown(setups=cluster, on_failure_fail_dagrun=True)
        done >> stopped
    return dag
