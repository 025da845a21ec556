"""CLI commands of production runs: ``plan``, ``run``, ``backfill``, ``status``, ``redo`` and
``demo``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import BadInputError, RunCancelled

if TYPE_CHECKING:
    from pipelines.config import ProvinceConfig

#: Exit codes of a run (the JSON result's ``exit_code``): 3 no scenes, 1 a task failed.
EXIT_OK, EXIT_FAILED, EXIT_NO_SCENES = 0, 1, 3

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
        "left_out": list(p.left_out),
        "derived": p.derived_sources(),
        "dates": {k: len(v) for k, v in p.dates.items()},
        **est,
    }
    if not as_json:
        table = Table("", "value", title=f"plan: {p.province} {p.window[0]}..{p.window[1]}")
        for key in ("tiles", "batches", "max_batch_size"):
            table.add_row(key, str(report[key]))
        for k, v in report["scenes"].items():
            origin = report["derived"].get(k)
            table.add_row(f"scenes {k}", f"{v} (derived from {origin})" if origin else str(v))
        if p.left_out:
            table.add_row("scenes left out (stac.exclude_items)", ", ".join(p.left_out))
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
    failed: list[str] = []
    no_scenes: list[str] = []
    with Progress(console=console) as progress:
        bar = progress.add_task("backfill", total=len(windows))
        for lo, hi in windows:
            progress.update(bar, description=f"backfill {lo}..{hi}")
            result = _run_window(
                "province_production", config, store, overwrite, lo.isoformat(), hi.isoformat()
            )
            state, _ = run_state(result)
            if state == "no_scenes":
                no_scenes.append(f"{lo}..{hi}")
            elif state != "success":
                failed.append(f"{lo}..{hi}")
            progress.advance(bar)
    if failed:
        state, code = "failed", EXIT_FAILED
    elif len(no_scenes) == len(windows):
        state, code = "no_scenes", EXIT_NO_SCENES
    else:  # windows without scenes are skipped, like the scheduled DAG skips them
        state, code = "success", EXIT_OK
    report = {"windows": len(windows), "failed": failed, "no_scenes": no_scenes}
    print(json.dumps({**report, "state": state, "exit_code": code}))
    if code:
        raise typer.Exit(code)


def demo(
    size: Annotated[str, typer.Option(help="Demo archive size: tiny, demo or bench.")] = "demo",
    seed: Annotated[int, typer.Option(help="Archive seed.")] = 0,
) -> None:
    """The embedded default end to end: demo archive, local STAC API, Airflow run, products."""
    from rich.markup import escape

    from pipelines.config import terrapipe_home
    from pipelines.demo import build_archive

    home = terrapipe_home()
    archive = home / "archive" / size
    t0 = time.perf_counter()
    status = console.status(f"demo archive ({escape(size)}) in {escape(str(archive))}...")
    with status, stdout_to_stderr():
        build_archive(str(archive), size=size, seed=seed)
    console.print(f"archive ready in {time.perf_counter() - t0:.0f} s: {escape(str(archive))}")
    config = Path(__file__).parent / "data" / f"{size}.yaml"
    result = _run_window(
        "province_production", config if config.exists() else None, None, False, None, None
    )
    print_result(result)
    raise_for(result)


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
    tiles: Sequence[str] = (),
) -> dict[str, Any]:
    from operators.airflow_env import run_dag
    from pipelines.config import load_config

    # Validate here first: a bad config fails at once with the field named, before Airflow.
    cfg = load_config(config, store=store)
    window = {k: _date(k, v) for k, v in (("start", start), ("end", end)) if v}
    windowed = cfg.model_copy(update=window)
    conf = {
        "config": str(Path(config).resolve()) if config else None,
        "store": store,
        "start": start,
        "end": end,
        "overwrite": overwrite,
    }
    if tiles:  # only these tiles of the window's plan (redo --failed)
        conf["tiles"] = ",".join(tiles)
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as held:
            if dag_id == "province_production":  # one run per store, province, window, products
                from pipelines.engine.run import run_lock

                held.enter_context(run_lock(windowed))
            status = f"{dag_id}: {cfg.province} running through Airflow..."
            held.enter_context(console.status(status))
            held.enter_context(stdout_to_stderr())
            result = run_dag(dag_id, conf)
    except RunCancelled as exc:  # the JSON result says so; main() prints the line, exits 128+n
        _record_cancelled(windowed)
        wall_s = round(time.perf_counter() - t0, 2)
        cancelled = {"dag_id": dag_id, "wall_s": wall_s, "signal": exc.signal_name}
        print(json.dumps({**cancelled, "state": "cancelled", "exit_code": exc.exit_code}))
        raise
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    return result


def _record_cancelled(cfg: ProvinceConfig) -> None:
    """Record a cancelled attempt of ``cfg``'s run (its window set) in the run's report, when
    its plan was written."""
    from pipelines import storage
    from pipelines.engine.plan import config_plan_url
    from pipelines.engine.report import record_outcome

    url = config_plan_url(cfg)
    try:
        if storage.exists(url):
            record_outcome(url, "cancelled")
    except Exception as exc:  # the exit code and the JSON result still say cancelled
        console.print(f"could not record the cancelled run in {url}: {type(exc).__name__}")


def status(
    run_id: Annotated[
        str | None, typer.Argument(help="A run id (default: list the province's runs).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Province config YAML (default: the embedded demo).")
    ] = None,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """A province's runs with their state, or one run's tiles: done / failed / pending / no
    scenes per product, with each failure's class and message (read from the store)."""
    from rich.markup import escape

    from pipelines.config import load_config
    from pipelines.engine.report import plan_url_of, run_report, run_summaries

    cfg = load_config(config, store=store)
    if run_id is None:
        rows = [
            {
                "run_id": r.run_id,
                "window": list(r.window),
                "state": r.state,
                "outcome": r.outcome,
                "ended": r.ended,
                "as_of": r.as_of,
                **{k: v for k, v in r.counts.items()},
            }
            for r in run_summaries(cfg.store, cfg.province)
        ]
        if not as_json:
            table = Table(
                "run",
                "state",
                "last attempt",
                "done",
                "failed",
                "pending",
                title=f"runs of {cfg.province} in {cfg.store}, as each last attempt ended"
                " (`terrapipe status RUN`: one run as the store holds it now)",
            )
            for row in rows:
                table.add_row(
                    escape(str(row["run_id"])),
                    str(row["state"]),
                    f"{row['outcome'] or '-'} {row['ended'] or ''}".strip(),
                    *(str(row[k]) for k in ("done", "failed", "pending")),
                )
            console.print(table)
        print(json.dumps({"province": cfg.province, "runs": rows}))
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"reading run {escape(run_id)}", total=None)
        report = run_report(
            plan_url_of(cfg.store, cfg.province, run_id),
            cfg.store,
            progress=lambda read, total: bar.update(task, completed=read, total=total),
        )
    if not as_json:
        table = Table(
            "tile", "state", "s", "MB", "products", title=f"run {escape(run_id)}: {report.state}"
        )
        for tile in report.tiles:
            shown = ", ".join(
                f"{p.product} {p.state}"
                + (f" (outdated: {'; '.join(p.outdated)})" if p.outdated else "")
                for p in tile.products
                if p.state != "done"
            )
            table.add_row(
                tile.tile_id,
                tile.state,
                f"{tile.seconds:.1f}",
                f"{tile.bytes_written / 1e6:.1f}",
                escape(shown or "all done"),
            )
        console.print(table)
        for tile_id, product in report.failed():
            console.print(
                f"[red]failed[/] {escape(product.product)} on {escape(tile_id)}: "
                f"{escape(str(product.kind))}: {escape(str(product.message))}"
            )
        scenes = report.failed_scenes()
        if scenes:
            for scene, tiles in scenes.items():
                console.print(f"[red]scene at fault[/] {escape(scene)}: {len(tiles)} tile(s)")
            console.print(
                "to run without them, list them in the config: "
                + escape(f"stac: {{exclude_items: [{', '.join(scenes)}]}}")
            )
    print(json.dumps(report.to_json()))


def catalog(
    config: ConfigArg = None,
    store: StoreOpt = None,
    month: Annotated[
        list[str] | None,
        typer.Option(help="Only this month's catalogs (YYYY-MM; repeat for more)."),
    ] = None,
) -> None:
    """Rebuild a province's static STAC catalog from the markers in its store: every month
    (default), or the months given. A run rebuilds the months it wrote by itself; this is for
    markers removed or copied in by hand."""
    from pipelines import products
    from pipelines.config import load_config

    for value in month or ():
        if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
            raise BadInputError("month", value, "a month as YYYY-MM, e.g. 2025-07")
    cfg = load_config(config, store=store)
    if month:
        url = products.update_catalog(cfg.store, cfg.province, month)
    else:
        url = products.build_catalog(cfg.store, cfg.province)
    print(json.dumps({"catalog": url, "months": month or "all"}))


def redo(
    run_id: Annotated[str, typer.Argument(help="The run id (see `terrapipe status`).")],
    config: ConfigArg = None,
    store: StoreOpt = None,
    failed: Annotated[
        bool,
        typer.Option("--failed", help="Only the tiles with a failed product (not pending ones)."),
    ] = False,
) -> None:
    """Run again what a run left undone (its failed and pending products) through Airflow;
    products already done keep their markers and are not redone. ``--failed``: only the tiles
    with a failed product. ``CONFIG`` must be the config the run was planned from."""
    from pipelines.config import load_config
    from pipelines.engine.plan import config_plan_url, read_plan
    from pipelines.engine.report import plan_url_of, run_report

    cfg = load_config(config, store=store)
    url = plan_url_of(cfg.store, cfg.province, run_id)
    start, end = read_plan(url).window
    planned = cfg.model_copy(update={"start": _date("start", start), "end": _date("end", end)})
    if config_plan_url(planned) != url:
        raise BadInputError(
            "config",
            str(config or "the embedded demo config"),
            f"the config run {run_id} was planned from (its fingerprint differs)",
        )
    before = run_report(url, cfg.store)
    tiles = before.failed_tiles() if failed else []
    if failed and not tiles:
        console.print(f"redo {run_id} --failed: no failed tile (state {before.state})")
        print(json.dumps({"run_id": run_id, "tiles": [], "state": "success", "exit_code": 0}))
        return
    console.print(
        f"redo {run_id}: {len(tiles)} tile(s) with {before.counts['failed']} failed products"
        if failed
        else f"redo {run_id}: {before.counts['failed']} failed and {before.counts['pending']}"
        " pending (tile, product) pairs"
    )
    result = _run_window("province_production", config, store, False, start, end, tiles)
    print_result(result)
    raise_for(result)


def run_state(result: dict[str, Any]) -> tuple[str, int]:
    """(state, exit code) of a DAG run's result: ``success`` (0) only when the run succeeded
    and every task is done or skipped; ``no_scenes`` (3) when planning found no scenes (the
    plan task skipped); ``failed`` (1) otherwise."""
    tasks: dict[str, str] = result.get("tasks") or {}
    if tasks.get("plan") == "skipped":
        return "no_scenes", EXIT_NO_SCENES
    ok = all(state in ("success", "skipped") for state in tasks.values())
    if result.get("state") == "success" and tasks and ok:
        return "success", EXIT_OK
    return "failed", EXIT_FAILED


def raise_for(result: dict[str, Any], where: str = "in the window for the AOI") -> None:
    """Exit 1 for a failed run, and exit 3 (no scenes) when planning found none; ``where``
    says which scenes were missing."""
    from pipelines.errors import NoScenesError

    state, code = run_state(result)
    if state == "no_scenes":
        raise NoScenesError(f"{result['dag_id']}: no scenes {where}")
    if code:
        raise typer.Exit(code)


def print_result(result: dict[str, Any]) -> None:
    """The run's summary on stderr and its JSON result (state and exit code) on stdout."""
    from rich.markup import escape

    state, code = run_state(result)
    failed = {k: v for k, v in result["tasks"].items() if v not in ("success", "skipped")}
    if failed:
        console.print(f"[bold red]tasks not successful:[/] {escape(str(failed))}")
    summary = result.get("summary") or {}
    console.print(
        f"[bold]{escape(str(result['dag_id']))}[/] {state} in {result['wall_s']} s: "
        f"{summary.get('written', 0)} products written, {summary.get('skipped', 0)} skipped"
    )
    keys = ("dag_id", "wall_s", "tasks", "task_seconds", "summary")
    doc = {k: result.get(k) for k in keys}
    print(json.dumps({**doc, "state": state, "dag_state": result.get("state"), "exit_code": code}))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to stdout inside (prints, log handlers, child processes) to
    stderr, so that stdout carries only a command's JSON result."""
    original = sys.stdout
    for stream in (original, sys.__stdout__):
        if stream is not None:
            stream.flush()
    try:
        saved: int | None = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors 1/2 to swap: Python-level redirection only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for stream in (original, sys.__stdout__):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


__all__ = [
    "backfill",
    "demo",
    "month_windows",
    "plan",
    "print_result",
    "raise_for",
    "redo",
    "run",
    "run_state",
    "status",
    "stdout_to_stderr",
]
