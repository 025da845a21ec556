"""The season run on the tiny archive: parcels per tile -> crop model over the province -> crop
maps per tile; then the season_crop_yield DAG through Airflow with a skipping rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import products
from pipelines.config import parse_config
from pipelines.errors import BadInputError


def season_config(archive: Path, store: str, **changes):
    return parse_config(season_raw(archive, store, **changes))


def season_raw(archive: Path, store: str, **changes) -> dict:
    info = json.loads((archive / "archive.json").read_text())
    raw = {
        "province": "tiny",
        "aoi": json.loads((archive / "province.geojson").read_text()),
        "crs": info["crs"],
        "tile_px": 128,
        "start": "2025-03-01",
        "end": "2025-11-30",
        "products": ["parcels"],
        "stac": {"archive": str(archive), "max_cloud_cover": 100},
        "store": store,
        "crop_calendar": str(Path(__file__).parents[2] / "pipelines" / "data" / "demo_crops.yaml"),
        "agri": {
            "labels": str(archive / "labels.geojson"),
            "counties": str(archive / "counties.geojson"),
            "yield_history": str(archive / "truth" / "yields.csv"),
        },
        "dask": {"n_workers": 1, "gpu_workers": 0, "memory_limit": "3GiB"},
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def tiny_labels(tiny_archive):
    from pipelines.demo.labels import sample_demo_labels

    path = tiny_archive / "labels.geojson"
    if not path.exists():
        path.write_text(json.dumps(sample_demo_labels(str(tiny_archive), per_crop=3, seed=0)))
    return path


@pytest.fixture(scope="module")
def season_run(tiny_archive, tiny_labels, tmp_path_factory):
    from distributed import Client, LocalCluster

    from pipelines.engine.plan import make_plan, stac_api_for
    from pipelines.engine.run import prepare_products
    from pipelines.engine.season import (
        SeasonRun,
        read_counties,
        read_season_labels,
        season_tile,
    )
    from pipelines.engine.season_crops import crop_type_tile
    from pipelines.stages.registry import get_stage

    store = str(tmp_path_factory.mktemp("season-store"))
    config = season_config(tiny_archive, store)
    with stac_api_for(config.stac) as api:
        plan = make_plan(config, api)
    prepare_products(plan, store)
    counties = read_counties(config.agri.counties)
    labels = read_season_labels(
        str(tiny_labels), config.aoi_geometry(), plan.crs, config.crop_calendar.names
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        tiles = [
            season_tile(plan, store, t, client, counties, labels=labels) for t in plan.tile_ids
        ]
        again = [season_tile(plan, store, t, client, counties) for t in plan.tile_ids]
    season = SeasonRun(
        plan=plan,
        store=store,
        calendar=config.crop_calendar,
        labels=str(tiny_labels),
        aoi=config.aoi_geometry(),
    )
    crop_step = get_stage("crop_type").func  # fit, predictions, crop_type cube
    fitted = crop_step(parcels=season)
    fit_again = crop_step(parcels=season)
    maps = [crop_type_tile(plan, store, t) for t in plan.tile_ids]
    return {
        "plan": plan,
        "store": store,
        "tiles": tiles,
        "again": again,
        "fit": fitted,
        "fit_again": fit_again,
        "maps": maps,
        "config": config,
    }


def test_parcels_are_unique_across_tiles_and_coarse_nests_in_fine(season_run):
    plan, store = season_run["plan"], season_run["store"]
    assert all(not r["skipped"] and r["parcels"] > 0 for r in season_run["tiles"])
    assert all(r["skipped"] for r in season_run["again"])  # rerun: markers and tables found
    cube = products.open_product(store, "tiny", "parcels").isel(time=0)
    fine = np.nan_to_num(cube["fine"].values).astype(np.int64)
    coarse = np.nan_to_num(cube["coarse"].values).astype(np.int64)
    for t in plan.tile_ids:  # a parcel id belongs to one tile only
        ys, xs = plan.province_grid.region(plan.tile(t))
        inside = set(np.unique(fine[ys, xs])) - {0}
        outside = set(
            np.unique(
                np.delete(
                    fine.ravel(),
                    np.ravel_multi_index(
                        np.meshgrid(
                            np.arange(ys.start, ys.stop),
                            np.arange(xs.start, xs.stop),
                            indexing="ij",
                        ),
                        fine.shape,
                    ).ravel(),
                )
            )
        ) - {0}
        assert inside and not inside & outside
    pairs = pd.DataFrame({"f": fine[fine > 0], "c": coarse[fine > 0]}).drop_duplicates()
    assert pairs.groupby("f")["c"].nunique().max() == 1  # each fine parcel in one coarse one


def test_polygons_and_tables_are_written_per_tile(season_run):
    import geopandas as gpd

    plan, store = season_run["plan"], season_run["store"]
    tile_id = plan.tile_ids[0]
    polys = gpd.read_parquet(products.vector_url(store, "tiny", "parcels", 2025, tile_id))
    assert {"parcel_id", "level", "area_m2", "perimeter_m"} <= set(polys.columns)
    assert set(polys["level"]) == {"fine", "coarse"}
    assert (polys["area_m2"] > 0).all() and polys.crs.to_epsg() == 32650
    table = products.read_table(products.season_table_url(store, "tiny", 2025, tile_id))
    fine = polys[polys["level"] == "fine"]
    assert set(table.index) == set(fine["parcel_id"])
    assert (table["county_id"] > 0).mean() > 0.9 and (table["season"] == 2025).all()


def test_crop_maps_follow_the_predictions(season_run):
    store = season_run["store"]
    assert season_run["fit"]["labels"] >= 15 and season_run["fit"]["refit"]
    # each label on a parcel teaches through its own window (written by the parcels step)
    assert season_run["fit"]["labels_on_own_window"] >= 0.8 * season_run["fit"]["labels"]
    assert not season_run["fit_again"]["refit"]  # same labels, calendar, version, parcels
    assert all(not m["skipped"] for m in season_run["maps"])
    crop = products.open_product(store, "tiny", "crop_type").isel(time=0)
    parcels = products.open_product(store, "tiny", "parcels").isel(time=0)
    classes = crop["crop_class"].values
    fine = np.nan_to_num(parcels["fine"].values)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 4, 5}
    assert (classes[fine == 0] == 0).all()
    probs = np.stack(
        [crop[f"p_{c}"].values for c in ("wheat", "corn", "rice", "cotton", "soybean")]
    )
    ok = np.isfinite(probs)
    assert ok.any() and (probs[ok] >= 0).all() and (probs[ok] <= 1).all()
    land = np.nan_to_num(crop["cropland"].values)
    assert ((land >= 0) & (land <= 1)).all()
    # against the truth landcover (read on the cube's pixel centres): most crop pixels are right
    import rasterio

    archive = Path(season_run["config"].stac.archive)
    with rasterio.open(archive / "truth" / "landcover.tif") as src:
        lc = src.read(1)
        rows, cols = rasterio.transform.rowcol(
            src.transform, *np.meshgrid(crop["x"].values, crop["y"].values)
        )
    rows, cols = np.asarray(rows).reshape(classes.shape), np.asarray(cols).reshape(classes.shape)
    inside = (rows >= 0) & (rows < lc.shape[0]) & (cols >= 0) & (cols < lc.shape[1])
    truth = np.where(inside, lc[rows.clip(0, lc.shape[0] - 1), cols.clip(0, lc.shape[1] - 1)], 0)
    is_crop = (truth >= 1) & (truth <= 5)
    mapped = is_crop & (classes > 0)
    assert mapped.sum() > 0.3 * is_crop.sum()
    assert (classes[mapped] == truth[mapped]).mean() > 0.6


#: Past seasons of the yield test and their yields relative to the archive's.
PAST_YIELDS = ((2022, 0.9), (2023, 0.95), (2024, 1.0))


def test_yield_step_forecasts_from_earlier_season_runs(season_run, tmp_path):
    """The registry's yield step on this season's tables and predictions, copied as three earlier
    season runs: forecast files and, last, the season's STAC item."""
    from pipelines.engine.season import SeasonRun
    from pipelines.stages.registry import get_stage

    plan, config = season_run["plan"], season_run["config"]
    tables = products.read_table(
        products.season_table_url(season_run["store"], "tiny", 2025, plan.tile_ids[0])
    )
    predictions = products.read_table(
        products.crop_predictions_url(season_run["store"], "tiny", 2025)
    )
    store = str(tmp_path / "store")
    for season in (2022, 2023, 2024, 2025):
        url = products.season_table_url(store, "tiny", season, plan.tile_ids[0])
        products.write_table(tables.assign(season=season), url)
        products.write_table(predictions, products.crop_predictions_url(store, "tiny", season))
    # The tiny archive's truth has the 2025 yields only: past seasons a little lower.
    truth = pd.read_csv(config.agri.yield_history)
    history = pd.concat(
        [truth.assign(season=s, **{"yield": truth["yield"] * f}) for s, f in PAST_YIELDS]
    )
    history.to_csv(tmp_path / "history.csv", index=False)
    run = SeasonRun(
        plan=plan,
        store=store,
        calendar=config.crop_calendar,
        counties=config.agri.counties,
        yield_history=str(tmp_path / "history.csv"),
    )
    result = get_stage("yield").func(crop_type=run)
    assert result["season"] == 2025 and result["rows"] > 0
    assert result["train_seasons"] == [2022, 2023, 2024]
    hrefs = {
        kind: products.season_file_url(store, "tiny", "yield", 2025, f"forecast.{kind}")
        for kind in ("parquet", "csv", "png")
    }
    assert result["forecast"] == hrefs["parquet"]
    forecast = products.read_table(hrefs["parquet"])
    assert {"county_id", "crop", "forecast", "baseline", "county"} <= set(forecast.columns)
    assert len(pd.read_csv(hrefs["csv"])) == len(forecast) == result["rows"]
    item = json.loads(Path(products.season_item_url(store, "tiny", "yield", 2025)).read_text())
    assert item["id"] == "tiny-yield-2025"
    assert {k: a["href"] for k, a in item["assets"].items()} == hrefs
    props = item["properties"]
    assert props["terrapipe:product"] == "yield" and props["terrapipe:season"] == 2025
    assert props["start_datetime"] == "2025-03-01T00:00:00Z" and props["datetime"] is None
    assert props["terrapipe:model"]["features"] == result["features"]


def test_a_season_without_scenes_is_refused_before_any_work(tiny_archive, tiny_labels, tmp_path):
    import yaml
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from operators.season import season_plan_task

    path = tmp_path / "season.yaml"
    path.write_text(yaml.safe_dump(season_raw(tiny_archive, str(tmp_path / "store"))))
    # In Airflow the plan task skips (a scheduled window without scenes is not a failure) and
    # says why; the CLI turns the skip into exit code 3 with the season in the message.
    with pytest.raises(AirflowSkipException, match="no Sentinel-2 scenes for tiny in season 1990"):
        season_plan_task({"config": str(path), "season": 1990})
    with pytest.raises(AirflowFailException, match=r"season.*last year.*a year such as 2025"):
        season_plan_task({"config": str(path), "season": "last year"})
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.zarr"))


def test_season_labels_outside_the_aoi_are_refused(season_run, tmp_path):
    from pipelines.engine.season_crops import fit_crops

    bad = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"crop": "wheat"},
                "geometry": {"type": "Point", "coordinates": [0.0, 0.0]},
            }
        ],
    }
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(bad))
    cfg = season_run["config"]
    with pytest.raises(BadInputError):
        fit_crops(
            season_run["plan"],
            season_run["store"],
            str(path),
            cfg.crop_calendar,
            cfg.aoi_geometry(),
        )


def test_season_dag_runs_through_airflow_and_skips_on_rerun(tiny_archive, tiny_labels, tmp_path):
    import subprocess
    import sys

    import yaml

    config = season_config(tiny_archive, str(tmp_path / "store"))
    raw = json.loads(config.model_dump_json())
    raw["aoi"] = str(tiny_archive / "province.geojson")
    path = tmp_path / "tiny-season.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "TERRAPIPE_HOME": str(tmp_path / "home")}
    env.pop("AIRFLOW_HOME", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "season", str(path), "--season", "2025"]
    results = []
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = results
    assert first["state"] == "success", first["task_seconds"]
    assert first["summary"]["written"] > 0
    assert second["state"] == "success" and second["summary"]["written"] == 0
    assert (tmp_path / "store" / "tiny" / "crop_type").is_dir()
