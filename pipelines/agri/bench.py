"""Throughput of the agriculture stages on the bench tile (``terrapipe bench --only agri``).

Inputs are loaded once and kept in memory; each step is timed alone (threaded scheduler,
2 threads): season features and parcels in output Mpx/s, the parcel table in input Mpx/s, the
few-shot crop model (fit + predict over the tile's parcels) in parcels/s, the crop maps in Mpx/s
and the county features in parcels/s. Labels are a survey of the tile drawn from the bench
archive's truth (3 parcels per crop, as for the demo).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipelines.engine.plan import RunPlan


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def survey_labels(
    parcel_ids: np.ndarray, truth_classes: np.ndarray, crops: dict[int, str], per_crop: int = 3
) -> dict[int, str]:
    """``per_crop`` parcels per crop whose pixels are most purely that crop in the truth."""
    labels: dict[int, str] = {}
    ids = parcel_ids.ravel().astype(np.int64)
    area = np.bincount(ids)
    for code, name in crops.items():
        hits = np.bincount(ids, weights=(truth_classes.ravel() == code), minlength=area.size)
        purity = np.where(area > 50, hits / np.maximum(area, 1), 0.0)
        purity[0] = 0.0
        best = [int(i) for i in np.argsort(-purity)[:per_crop] if purity[i] > 0.8]
        labels.update({i: name for i in best})
    return labels


def bench_agri(plan: RunPlan, tile_id: str, archive: str) -> dict[str, Any]:
    """Per-step throughput of parcels, crop_type and the county features on one bench tile."""
    import dask
    import rasterio
    from rasterio.windows import from_bounds

    from pipelines import storage
    from pipelines.agri.calendar import load_calendar
    from pipelines.agri.crop_type import crop_maps, fit_crop_model, predict_crops
    from pipelines.agri.features import season_features
    from pipelines.agri.parcel_table import parcel_table
    from pipelines.agri.parcels import parcels
    from pipelines.agri.stage import season_year
    from pipelines.agri.yields import county_features
    from pipelines.classes import CROPS
    from pipelines.demo import open_archive_info
    from pipelines.engine.graph import load_source

    calendar = load_calendar(None)
    tile = plan.tile(tile_id)
    with dask.config.set(scheduler="threads", num_workers=2):
        s2 = load_source(plan, "s2", tile_id).persist()
        s1 = load_source(plan, "s1", tile_id).persist()
        dem = load_source(plan, "dem", tile_id).persist()
        season = season_year(s2)
        features, t_feat = _timed(lambda: season_features(s2, s1, dem, season).compute())
        ids, t_par = _timed(lambda: parcels(features).compute())
    fine = np.asarray(ids["fine"].values)
    mpx = fine.size / 1e6
    table, t_table = _timed(lambda: parcel_table(features, fine))
    info = open_archive_info(archive)
    with rasterio.open(storage.join(archive, info["truth"]["landcover"])) as src:
        window = from_bounds(*tile.bounds, transform=src.transform)
        truth = src.read(1, window=window, boundless=True, fill_value=0)
    truth = truth[: fine.shape[0], : fine.shape[1]]
    crops = {int(c): c.name.lower() for c in CROPS}
    labels = survey_labels(fine, truth, crops)
    model, t_fit = _timed(lambda: fit_crop_model(table, labels, calendar))
    predictions, t_pred = _timed(lambda: predict_crops(model, table))
    maps, t_maps = _timed(lambda: crop_maps(fine, predictions))
    table = table.assign(season=season, county_id=1)
    _, t_county = _timed(lambda: county_features(table, predictions, calendar))
    n = len(table)
    return {
        "tile_px": int(fine.shape[0]),
        "s2_dates": int(s2.sizes["time"]),
        "parcels": n,
        "labels": len(labels),
        "season_features_mpx_s": round(mpx / t_feat, 3),
        "parcels_mpx_s": round(mpx / t_par, 3),
        "parcel_table_mpx_s": round(mpx / t_table, 3),
        "crop_type_fit_predict_parcels_s": round(n / (t_fit + t_pred), 1),
        "crop_maps_mpx_s": round(mpx / t_maps, 3),
        "county_features_parcels_s": round(n / t_county, 1),
        "seconds": {
            "season_features": round(t_feat, 2),
            "parcels": round(t_par, 2),
            "parcel_table": round(t_table, 2),
            "crop_fit": round(t_fit, 2),
            "crop_predict": round(t_pred, 2),
            "crop_maps": round(t_maps, 3),
            "county_features": round(t_county, 3),
        },
        "maps_variables": sorted(maps.data_vars),
    }
