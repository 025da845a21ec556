"""CLI commands of the agriculture products: ``season`` (the season DAG) and ``demo-labels``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.production_cli import (
    ConfigArg,
    StoreOpt,
    print_result,
    raise_for,
    stdout_to_stderr,
)

console = Console(stderr=True)


def season(
    config: ConfigArg = None,
    season: Annotated[int | None, typer.Option(help="Season year (default: the config's).")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Labels GeoJSON (default: the config's agri.labels).")
    ] = None,
    store: StoreOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Recompute even where markers exist.")] = False,
) -> None:
    """Parcels -> crop type -> county yield for one season (season_crop_yield DAG)."""
    from operators.airflow_env import run_dag
    from pipelines.config import load_config

    cfg = load_config(config, store=store)  # a bad config fails here, before Airflow
    year = season or cfg.start.year
    conf = {
        "config": str(Path(config).resolve()) if config else None,
        "store": store,
        "season": year,
        "labels": labels,
        "overwrite": overwrite,
    }
    t0 = time.perf_counter()
    status = console.status(f"season_crop_yield: {cfg.province} {year} through Airflow...")
    with status, stdout_to_stderr():
        result = run_dag("season_crop_yield", conf)
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    print_result(result)
    from pipelines.engine.season import season_window

    start, end = season_window(year)
    raise_for(
        result,
        f"of Sentinel-2 for {cfg.province} in season {year} ({start} to {end}); "
        "pick a season the catalog covers",
    )


def demo_labels(
    archive: Annotated[
        str | None, typer.Argument(help="Demo archive root (default: the embedded demo archive).")
    ] = None,
    per_crop: Annotated[int, typer.Option(help="Labelled fields per crop.")] = 3,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    out: Annotated[
        str | None, typer.Option(help="Output GeoJSON (default: ARCHIVE/labels.geojson).")
    ] = None,
) -> None:
    """Field-survey labels for a demo archive: points in truth parcels, a few per crop."""
    from pipelines import storage
    from pipelines.config import terrapipe_home
    from pipelines.demo.labels import sample_demo_labels

    archive = archive or str(terrapipe_home() / "archive" / "demo")
    doc = sample_demo_labels(archive, per_crop=per_crop, seed=seed)
    target = out or storage.join(archive, "labels.geojson")
    storage.write_text(target, json.dumps(doc))
    print(json.dumps({"labels": target, "features": len(doc["features"])}))


ArchiveArg = Annotated[
    str | None, typer.Argument(help="Demo archive root (default: the embedded demo archive).")
]
RealDataOpt = Annotated[
    str | None,
    typer.Option(
        envvar="TERRAPIPE_REAL_DATA",
        help="Real data folder (shared/data/real; default: beside the repository).",
    ),
]
DemoOpt = Annotated[
    bool, typer.Option(help="Score the demo archive (--no-demo: the real patch only).")
]


def _archive(archive: str | None) -> str:
    from pipelines.config import terrapipe_home

    return archive or str(terrapipe_home() / "archive" / "demo")


def eval_parcels(
    archive: ArchiveArg = None,
    season: Annotated[int, typer.Option(help="Season year.")] = 2025,
    max_tiles: Annotated[int | None, typer.Option(help="Tiles to score (default: all).")] = None,
    real: Annotated[bool, typer.Option(help="Also score the eo-learn RABA parcels.")] = True,
    demo: DemoOpt = True,
    real_data: RealDataOpt = None,
) -> None:
    """Parcels against the demo truth (matched fraction at IoU > 0.5, nesting, boundary
    agreement, edge strength inside the true parcels) and against the real eo-learn RABA
    polygons; prints JSON, each part labelled with its data source."""
    from pipelines.agri.eval_parcels import evaluate_parcels, evaluate_parcels_real
    from pipelines.errors import BadInputError

    if not demo and not real:
        raise BadInputError("--no-demo", True, "--real (the eo-learn patch): nothing to score")
    report: dict[str, dict[str, object]] = {}
    if demo:
        scored = evaluate_parcels(_archive(archive), season=season, max_tiles=max_tiles)
        report["demo"] = {"data": "demo", **scored}
    if real:
        report["eolearn"] = {
            "data": "real: eolearn-testeopatch",
            **evaluate_parcels_real(real_data),
        }
    print(json.dumps(report, default=str))


def eval_crop_type(
    archive: ArchiveArg = None,
    season: Annotated[int | None, typer.Option(help="Season (default: the last).")] = None,
    labels: Annotated[str | None, typer.Option(help="Labels GeoJSON (default: survey).")] = None,
    real: Annotated[
        bool, typer.Option(help="Also apply the calendar rules to the eo-learn RABA polygons.")
    ] = True,
    demo: DemoOpt = True,
    real_data: RealDataOpt = None,
    calendar: Annotated[
        str | None,
        typer.Option(help="Crop calendar YAML for the real patch (default: Central Europe)."),
    ] = None,
) -> None:
    """Few-shot crop type against the demo truth (per-crop and cropland precision/recall), and
    the calendar rules on the real eo-learn patch's land-use polygons (``real``: how much
    forest, grassland and built-up land they rule out as annual crops); prints JSON."""
    from pipelines.agri.eval_crops import evaluate_calendar_rules_real, evaluate_crop_type
    from pipelines.errors import BadInputError

    if not demo and not real:
        raise BadInputError("--no-demo", True, "--real (the eo-learn patch): nothing to score")
    report: dict[str, object] = {}
    if demo:
        report.update(evaluate_crop_type(_archive(archive), season=season, labels=labels))
    if real:
        rules = evaluate_calendar_rules_real(real_data, calendar=calendar)
        report["real"] = {"data": "real: eolearn-testeopatch", **rules}
    print(json.dumps(report))


def eval_yield(
    archive: ArchiveArg = None,
    season: Annotated[int | None, typer.Option(help="Held-out season (default: last).")] = None,
    usda: Annotated[bool, typer.Option(help="Also backtest on USDA county yields.")] = True,
    crop_source: Annotated[
        str, typer.Option(help="Crop maps: 'predicted' (few-shot model) or 'truth'.")
    ] = "predicted",
) -> None:
    """County yield forecast of a held-out season vs truth and the trend + last-season
    baseline; the USDA soybean backtests; prints JSON."""
    from pipelines.agri.eval_crops import evaluate_yield

    report = evaluate_yield(
        _archive(archive), test_season=season, usda=usda, crop_source=crop_source
    )
    print(json.dumps(report, default=str))


def eval_season(
    archive: ArchiveArg = None,
    season: Annotated[int, typer.Option(help="Season year of the run.")] = 2025,
    config: Annotated[Path | None, typer.Option(help="Config of the run (default: demo).")] = None,
) -> None:
    """A season run's products (parcels, crop type, yield) against the demo truth; JSON."""
    from pipelines.agri.eval_season import evaluate_season
    from pipelines.config import load_config

    cfg = load_config(config)
    print(
        json.dumps(evaluate_season(cfg.store, cfg.province, season, _archive(archive)), default=str)
    )
