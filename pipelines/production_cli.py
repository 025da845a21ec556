"""CLI commands of production runs: ``plan``, ``run``, ``backfill`` and ``demo``."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import BadInputError

console = Console(stderr=True)

ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Province config YAML (default: the embedded demo province)."),
]
StoreOpt = Annotated[
    str | None, typer.Option(help="Override the output store (path or s3:// URL).")
]


def plan(
    config: ConfigArg = None,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Dry run: tiles, batches, scenes found, bytes to read and estimated core-hours."""
    from pipelines.bench import measured_throughput
    from pipelines.config import load_config
    from pipelines.engine.plan import estimate, plan_run

    cfg = load_config(config, store=store)
    with console.status("searching scenes..."):
        p = plan_run(cfg, write=False).plan
    est = estimate(p, measured_throughput())
    report: dict[str, Any] = {
        "province": p.province,
        "window": list(p.window),
        "tiles": len(p.tiles),
        "batches": len(p.batches),
        "max_batch_size": max((len(b) for b in p.batches), default=0),
        "groups": {g.name: {"stages": list(g.stages), "pool": g.pool} for g in p.groups},
        "scenes": {k: len(v) for k, v in p.items.items()},
        "dates": {k: len(v) for k, v in p.dates.items()},
        **est,
    }
    if not as_json:
        table = Table("", "value", title=f"plan: {p.province} {p.window[0]}..{p.window[1]}")
        for key in ("tiles", "batches", "max_batch_size"):
            table.add_row(key, str(report[key]))
        for k, v in report["scenes"].items():
            table.add_row(f"scenes {k}", str(v))
        for k, v in report["dates"].items():
            table.add_row(f"dates {k}", str(v))
        table.add_row("bytes to read", f"{est['bytes_to_read'] / 1e9:.2f} GB")
        table.add_row("estimated core-hours", f"{est['core_hours']:.3f}")
        Console().print(table)
    print(json.dumps(report))


def run(
    config: ConfigArg = None,
    store: StoreOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Recompute even where markers exist.")] = False,
    start: Annotated[str | None, typer.Option(help="Window start YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end YYYY-MM-DD (inclusive).")] = None,
) -> None:
    """Run a province through Airflow (province_production DAG) on a Dask cluster."""
    result = _run_window("province_production", config, store, overwrite, start, end)
    print_result(result)
    raise_for(result)


def backfill(
    config: ConfigArg = None,
    start: Annotated[str, typer.Option(help="First day YYYY-MM-DD.")] = "",
    end: Annotated[str, typer.Option(help="Last day YYYY-MM-DD (inclusive).")] = "",
    store: StoreOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Recompute even where markers exist.")] = False,
) -> None:
    """Run past windows month by month (the DAG's schedule); done windows are skipped."""
    from rich.progress import Progress

    first, last = _date("start", start), _date("end", end)
    if last < first:
        raise BadInputError("end", end, f"a date on or after start ({start})")
    windows = month_windows(first, last)
    failed = []
    with Progress(console=console) as progress:
        bar = progress.add_task("backfill", total=len(windows))
        for lo, hi in windows:
            progress.update(bar, description=f"backfill {lo}..{hi}")
            result = _run_window(
                "province_production", config, store, overwrite, lo.isoformat(), hi.isoformat()
            )
            if result["state"] != "success":
                failed.append(f"{lo}..{hi}")
            progress.advance(bar)
    print(json.dumps({"windows": len(windows), "failed": failed}))
    if failed:
        raise typer.Exit(1)


def demo(
    size: Annotated[str, typer.Option(help="Demo archive size: tiny, demo or bench.")] = "demo",
    seed: Annotated[int, typer.Option(help="Archive seed.")] = 0,
) -> None:
    """The embedded default end to end: demo archive, local STAC API, Airflow run, products."""
    from pipelines.config import terrapipe_home
    from pipelines.demo import build_archive

    home = terrapipe_home()
    archive = home / "archive" / size
    t0 = time.perf_counter()
    with console.status(f"demo archive ({size}) in {archive}..."):
        build_archive(str(archive), size=size, seed=seed)
    console.print(f"archive ready in {time.perf_counter() - t0:.0f} s: {archive}")
    config = Path(__file__).parent / "data" / f"{size}.yaml"
    result = _run_window(
        "province_production", config if config.exists() else None, None, False, None, None
    )
    print_result(result)
    if result["state"] != "success":
        raise typer.Exit(1)


# ---- helpers -----------------------------------------------------------------------------------


def month_windows(first: dt.date, last: dt.date) -> list[tuple[dt.date, dt.date]]:
    """Calendar-month windows covering ``first``..``last`` (clipped to them)."""
    windows = []
    lo = first
    while lo <= last:
        nxt = (lo.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        hi = min(last, nxt - dt.timedelta(days=1))
        windows.append((lo, hi))
        lo = nxt
    return windows


def _date(field: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadInputError(field, value, "a date YYYY-MM-DD") from None


def _run_window(
    dag_id: str,
    config: Path | None,
    store: str | None,
    overwrite: bool,
    start: str | None,
    end: str | None,
) -> dict[str, Any]:
    from operators.airflow_env import run_dag
    from pipelines.config import load_config

    # Validate here first: a bad config fails at once with the field named, before Airflow.
    cfg = load_config(config, store=store)
    if start:
        _date("start", start)
    if end:
        _date("end", end)
    conf = {
        "config": str(Path(config).resolve()) if config else None,
        "store": store,
        "start": start,
        "end": end,
        "overwrite": overwrite,
    }
    t0 = time.perf_counter()
    with console.status(f"{dag_id}: {cfg.province} running through Airflow..."):
        result = run_dag(dag_id, conf)
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    return result


def raise_for(result: dict[str, Any], where: str = "in the window for the AOI") -> None:
    """Non-zero exit for a failed run, and exit 3 (no scenes) when planning found none;
    ``where`` says which scenes were missing."""
    from pipelines.errors import NoScenesError

    if result["tasks"].get("plan") == "skipped":
        raise NoScenesError(f"{result['dag_id']}: no scenes {where}")
    if result["state"] != "success":
        raise typer.Exit(1)


def print_result(result: dict[str, Any]) -> None:
    failed = {k: v for k, v in result["tasks"].items() if v not in ("success", "skipped")}
    if failed:
        console.print(f"[bold red]tasks not successful:[/] {failed}")
    summary = result.get("summary") or {}
    console.print(
        f"[bold]{result['dag_id']}[/] {result['state']} in {result['wall_s']} s: "
        f"{summary.get('written', 0)} products written, {summary.get('skipped', 0)} skipped"
    )
    keys = ("dag_id", "state", "wall_s", "tasks", "task_seconds", "summary")
    print(json.dumps({k: result.get(k) for k in keys}))


__all__ = ["backfill", "demo", "month_windows", "plan", "print_result", "raise_for", "run"]
