"""Quality of a season run's products (what the season_crop_yield DAG wrote) against the truth
of a demo archive: parcels matched, crop type and cropland precision/recall, county yields.

Unlike the per-module evaluations, this scores the products end to end: predicted parcels, the
crop model fitted on them, and the yield model trained on earlier season runs.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr


def truth_on_cube(archive: str, name: str, cube: xr.Dataset) -> np.ndarray:
    """A truth raster of ``archive`` sampled at the pixel centres of ``cube`` (0 outside)."""
    import rasterio

    from pipelines import storage
    from pipelines.demo import open_archive_info

    info = open_archive_info(archive)
    with rasterio.open(storage.join(archive, info["truth"][name])) as src:
        values = src.read(1)
        xs, ys = np.meshgrid(cube["x"].values, cube["y"].values)
        rows, cols = rasterio.transform.rowcol(src.transform, xs.ravel(), ys.ravel())
    rows = np.asarray(rows).reshape(xs.shape)
    cols = np.asarray(cols).reshape(xs.shape)
    inside = (rows >= 0) & (rows < values.shape[0]) & (cols >= 0) & (cols < values.shape[1])
    picked = values[rows.clip(0, values.shape[0] - 1), cols.clip(0, values.shape[1] - 1)]
    return np.where(inside, picked, 0)


def evaluate_season(store: str, province: str, season: int, archive: str) -> dict[str, Any]:
    """Parcels, crop type and yield products of ``season`` against the archive's truth."""
    from pipelines import products, storage
    from pipelines.agri.calendar import load_calendar
    from pipelines.agri.eval_crops import crop_scores
    from pipelines.agri.eval_parcels import match_parcels, nesting
    from pipelines.agri.yields import baseline_forecast, score
    from pipelines.demo import open_archive_info

    when = np.datetime64(f"{season}-03-01", "ns")
    parcels = products.open_product(store, province, "parcels").sel(time=when)
    fine = np.nan_to_num(parcels["fine"].values).astype(np.int64)
    coarse = np.nan_to_num(parcels["coarse"].values).astype(np.int64)
    truth_parcels = truth_on_cube(archive, "parcels", parcels).astype(np.int64)
    report: dict[str, Any] = {
        "season": season,
        "parcels_fine": match_parcels(truth_parcels, fine),
        "parcels_coarse_nesting": nesting(fine, coarse),
    }
    crop = products.open_product(store, province, "crop_type").sel(time=when)
    landcover = truth_on_cube(archive, "landcover", crop)
    names = load_calendar(None).names
    scores = crop_scores(crop["crop_class"].values.astype(np.int64), landcover, names)
    per_crop = [scores[c][k] for c in names for k in ("precision", "recall")]
    report["crop_type"] = {
        "scores": scores,
        "min_crop_precision_recall": min(per_crop),
        "cropland": scores["cropland"],
    }
    forecast_at = products.season_file_url(store, province, "yield", season, "forecast.parquet")
    if storage.exists(forecast_at):
        info = open_archive_info(archive)
        truth = pd.read_csv(
            io.BytesIO(storage.read_bytes(storage.join(archive, info["truth"]["yields"])))
        )
        forecast = products.read_table(forecast_at)
        base = baseline_forecast(truth[truth["season"] < season], season)
        report["yield"] = {
            "model": score(forecast, truth[truth["season"] == season]),
            "baseline_trend_last_season": score(
                base.merge(forecast[["county_id", "crop"]], on=["county_id", "crop"]),
                truth[truth["season"] == season],
            ),
        }
    return report
