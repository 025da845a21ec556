"""Evaluation of crop_type and yield on a demo archive (truth parcels, landcover, county yields).

- :func:`season_table` builds the per-parcel table of one season of the archive tile by tile
  (bounded memory) and caches it under ``var/cache/agri`` (``cache=False`` to skip the cache).
- :func:`season_tables`: the same, plus the label-window rows of a set of labels
  (:func:`pipelines.agri.labels.label_rows`) taken in the same pass over the tiles.
- :func:`evaluate_crop_type`: few-shot crop model from ``sample_demo_labels`` on one season,
  each label taught through its own window as in the season run; per-crop precision/recall
  and cropland precision/recall, pixel-weighted against ``truth/landcover.tif``.
- :func:`evaluate_yield`: crop maps of every season, county features, a yield model trained on
  the earlier seasons and scored on the held-out one (1 - MAPE over counties and crops) against
  the trend + last-season baseline; plus the USDA backtest and the calibration check.
- :func:`evaluate_calendar_rules_real`: crop_type's calendar rules (never bare, never green, no
  crop template fits) on the REAL eo-learn patch's RABA land-use polygons: how much of its
  forest, grassland and built-up land they rule out as annual crops.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.classes import LandClass
from pipelines.errors import BadInputError

#: Tile edge (pixels) of the season-table build.
TILE_PX = 512
#: Non-parcel segments of the truth source get ids from this offset up.
SEGMENT_OFFSET = 1_000_000


def _cache_dir() -> Path:
    from pipelines.config import terrapipe_home

    return Path(os.environ.get("TERRAPIPE_CACHE", terrapipe_home() / "cache")) / "agri"


def _read_raster(archive: str, rel: str) -> np.ndarray:
    import rasterio

    from pipelines import storage

    with rasterio.open(storage.join(archive, rel)) as src:
        return src.read(1)


def truth_segments(archive: str) -> np.ndarray:
    """Parcel ids of the truth source, int64 (y, x): truth parcels (ids 1..n) and, outside
    parcels, the 8-connected patches of each land class (ids from ``SEGMENT_OFFSET``), so that
    non-crop land (forest, grassland, urban, water) is segmented too, as a segmentation would."""
    from scipy import ndimage

    from pipelines.demo import open_archive_info

    info = open_archive_info(archive)
    parcels = _read_raster(archive, info["truth"]["parcels"]).astype(np.int64)
    lc = _read_raster(archive, info["truth"]["landcover"])
    ids = parcels.copy()
    nxt = SEGMENT_OFFSET
    for code in np.unique(lc[parcels == 0]):
        if code == LandClass.NODATA:
            continue
        lab, n = ndimage.label((lc == code) & (parcels == 0), structure=np.ones((3, 3)))
        m = lab > 0
        ids[m] = lab[m] + nxt - 1
        nxt += n
    return ids


def _parcel_source(archive: str, source: Any) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source.astype(np.int64)
    if source == "truth":
        return truth_segments(archive)
    if isinstance(source, str | os.PathLike):
        import rasterio

        try:
            with rasterio.open(str(source)) as src:
                return src.read(1).astype(np.int64)
        except rasterio.errors.RasterioIOError:
            pass
    raise BadInputError(
        "parcel_ids_source", source, "'truth', a parcel id GeoTIFF path or a (y, x) int array"
    )


def _majority(ids: np.ndarray, values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Most frequent value of ``values`` per id in ``index`` (0 when absent)."""
    df = pd.DataFrame({"id": ids.ravel(), "v": values.ravel()})
    df = df[df.id > 0]
    counts = df.groupby(["id", "v"]).size().reset_index(name="c")
    best = counts.sort_values("c").drop_duplicates("id", keep="last").set_index("id")["v"]
    return best.reindex(index).fillna(0).to_numpy().astype(np.int64)


def _season_items(archive: str, collection: str, season: int) -> list[dict[str, Any]]:
    from pipelines.demo import archive_items

    items = archive_items(archive, collection)
    return [i for i in items if str(i["properties"]["datetime"]).startswith(str(season))]


def season_table(
    archive: str,
    season: int,
    parcel_ids_source: Any = "truth",
    *,
    tile_px: int = TILE_PX,
    cache: bool = True,
) -> pd.DataFrame:
    """Per-parcel table of ``season`` over the whole archive grid, built tile by tile.

    ``parcel_ids_source``: ``"truth"`` (:func:`truth_segments`), a parcel id GeoTIFF on the
    archive grid, or a (y, x) int array. Returns :func:`pipelines.agri.parcel_table.parcel_table`
    columns plus ``county_id`` (majority county), ``truth_class`` (majority LandClass code) and
    ``season``. Memory: one ``tile_px`` tile's season cube at a time.
    """
    table, _ = season_tables(archive, season, parcel_ids_source, tile_px=tile_px, cache=cache)
    return table


def _labels_digest(labels: Any) -> list[str]:
    from pipelines.agri.labels import label_key

    if labels is None:
        return []
    return [label_key(c, g) for c, g in zip(labels["crop"], labels.geometry, strict=True)]


def season_tables(
    archive: str,
    season: int,
    parcel_ids_source: Any = "truth",
    labels: Any = None,
    *,
    tile_px: int = TILE_PX,
    cache: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`season_table` and, in the same pass over the tiles, the label-window rows of
    ``labels`` (a GeoDataFrame in the archive's CRS, :func:`pipelines.agri.labels.read_labels`;
    None: no rows): :func:`pipelines.agri.labels.label_rows` on each tile, as the season run's
    parcels step writes them (index the label key, plus ``crop``)."""
    import dask
    from affine import Affine

    from pipelines.agri.features import season_features
    from pipelines.agri.labels import label_rows
    from pipelines.agri.parcel_table import TABLE_FORMAT, finish_table, merge_sums, parcel_sums
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.load import load_dem, load_s1, load_s2

    info = open_archive_info(archive)
    if season not in info["seasons"]:
        raise BadInputError("season", season, f"one of the archive's seasons {info['seasons']}")
    ids = _parcel_source(archive, parcel_ids_source)
    key = rows_key = None
    if cache:
        h = hashlib.sha256(ids.tobytes())
        h.update(
            json.dumps([str(archive), info.get("seed"), season, tile_px, TABLE_FORMAT]).encode()
        )
        key = _cache_dir() / f"season_table_{h.hexdigest()[:16]}.parquet"
        h.update(json.dumps(_labels_digest(labels)).encode())
        rows_key = _cache_dir() / f"label_rows_{h.hexdigest()[:16]}.parquet"
        if key.exists() and (labels is None or rows_key.exists()):
            rows = pd.read_parquet(rows_key) if labels is not None else _no_rows()
            return pd.read_parquet(key), rows
    gbox = archive_geobox(info)
    if ids.shape != tuple(gbox.shape):
        raise BadInputError("parcel_ids_source", ids.shape, f"the archive grid {tuple(gbox.shape)}")
    s2_items = _season_items(archive, "sentinel-2-l2a", season)
    s1_items = _season_items(archive, "sentinel-1-rtc", season)
    dem_items = archive_items(archive, "cop-dem-glo-30")
    if not s2_items:
        raise BadInputError("season", season, "a season with Sentinel-2 scenes in the archive")
    parts, row_parts = [], []
    transform = Affine(*info["transform"][:6])
    ny, nx = gbox.shape
    with dask.config.set(scheduler="threads", num_workers=2):
        for y0 in range(0, ny, tile_px):
            for x0 in range(0, nx, tile_px):
                tile_ids = ids[y0 : y0 + tile_px, x0 : x0 + tile_px]
                if not (tile_ids > 0).any():
                    continue
                # the tile's own extent (a geobox slice is not clipped to the grid)
                tb = gbox[y0 : y0 + tile_ids.shape[0], x0 : x0 + tile_ids.shape[1]]
                s2 = load_s2(
                    s2_items,
                    tb,
                    bands=("B02", "B03", "B04", "B08"),
                    with_scl=True,
                    chunksize=tile_px,
                )
                s1 = load_s1(s1_items, tb, chunksize=tile_px) if s1_items else None
                dem = load_dem(dem_items, tb, chunksize=tile_px) if dem_items else None
                feats = season_features(s2, s1, dem, season).compute()
                parts.append(parcel_sums(feats, tile_ids))
                if labels is not None:
                    tile_t = transform * Affine.translation(x0, y0)
                    row_parts.append(label_rows(feats, labels, tile_ids, tile_t))
                del feats
    table = finish_table(merge_sums(parts)).copy()
    counties = _read_raster(archive, info["truth"]["counties"])
    landcover = _read_raster(archive, info["truth"]["landcover"])
    table["county_id"] = _majority(ids, counties, table.index.to_numpy())
    table["truth_class"] = _majority(ids, landcover, table.index.to_numpy())
    table["season"] = int(season)
    found = [r for r in row_parts if len(r)]
    rows = pd.concat(found) if found else _no_rows()
    rows = rows[~rows.index.duplicated(keep="first")]  # a label on two tiles: its first window
    if key is not None and rows_key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(key)
        if labels is not None:
            rows.to_parquet(rows_key)
    return table, rows


def _no_rows() -> pd.DataFrame:
    return pd.DataFrame(columns=["crop"], index=pd.Index([], name="label_key"))


def _read_archive_labels(archive: str, labels: Any, crops: tuple[str, ...]) -> Any:
    """The labels (default: the archive's demo survey) read and checked, in the archive's CRS."""
    from shapely.geometry import box

    from pipelines.agri.labels import read_labels
    from pipelines.demo import open_archive_info
    from pipelines.demo.labels import sample_demo_labels

    info = open_archive_info(archive)
    if labels is None:
        labels = sample_demo_labels(archive)
    return read_labels(labels, box(*info["bbox_wgs84"]), info["crs"], crops)


def _label_parcels(
    archive: str, labels: Any, ids: np.ndarray, crops: tuple[str, ...]
) -> tuple[dict[int, str], int]:
    from affine import Affine

    from pipelines.agri.labels import labels_to_parcels
    from pipelines.demo import open_archive_info

    info = open_archive_info(archive)
    gdf = _read_archive_labels(archive, labels, crops)
    return labels_to_parcels(gdf, ids, Affine(*info["transform"][:6])), len(gdf)


def crop_scores(crop_class: np.ndarray, landcover: np.ndarray, crops: tuple[str, ...]) -> dict:
    """Pixel precision/recall per crop and of cropland (crop_class > 0 vs LandClass crops)."""
    out: dict[str, Any] = {}
    valid = landcover != LandClass.NODATA
    for crop in crops:
        code = int(LandClass[crop.upper()])
        pred, true = (crop_class == code) & valid, (landcover == code) & valid
        tp = int((pred & true).sum())
        out[crop] = {
            "precision": round(tp / max(int(pred.sum()), 1), 4),
            "recall": round(tp / max(int(true.sum()), 1), 4),
        }
    codes = [int(LandClass[c.upper()]) for c in crops]
    pred, true = (crop_class > 0) & valid, np.isin(landcover, codes) & valid
    tp = int((pred & true).sum())
    out["cropland"] = {
        "precision": round(tp / max(int(pred.sum()), 1), 4),
        "recall": round(tp / max(int(true.sum()), 1), 4),
    }
    return out


def evaluate_crop_type(
    archive: str,
    *,
    season: int | None = None,
    labels: Any = None,
    parcel_ids_source: Any = "truth",
    calendar: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Few-shot crop type on ``season`` (the archive's last when None) against the truth.

    ``labels``: GeoJSON path/mapping (default: ``sample_demo_labels(archive, seed=seed)``);
    ``calendar``: CropCalendar or YAML path (default: the demo calendar). Returns per-crop and
    cropland pixel precision/recall, the minima, label counts and whether the bar is met.
    """
    from affine import Affine

    from pipelines.agri.calendar import load_calendar, parse_calendar
    from pipelines.agri.crop_type import crop_maps, fit_crop_model, predict_crops
    from pipelines.agri.labels import labels_to_parcels, split_labels
    from pipelines.demo import open_archive_info
    from pipelines.demo.labels import sample_demo_labels

    info = open_archive_info(archive)
    season = int(season if season is not None else info["seasons"][-1])
    cal = calendar if calendar is not None and not isinstance(calendar, str) else None
    cal = parse_calendar(cal) if cal is not None else load_calendar(calendar)
    ids = _parcel_source(archive, parcel_ids_source)
    if labels is None:
        labels = sample_demo_labels(archive, seed=seed)
    gdf = _read_archive_labels(archive, labels, cal.names)
    # as the season run: each label teaches through its own window, those without one (on no
    # parcel) through their whole parcel
    table, rows = season_tables(archive, season, ids, gdf)
    own_rows, whole_parcel = split_labels(gdf, rows)
    by_parcel = (
        labels_to_parcels(whole_parcel, ids, Affine(*info["transform"][:6]))
        if len(whole_parcel)
        else {}
    )
    n_labels = len(gdf)
    model = fit_crop_model(table, by_parcel, cal, seed=seed, labelled=own_rows)
    pred = predict_crops(model, table)
    maps = crop_maps(ids, pred)
    landcover = _read_raster(archive, info["truth"]["landcover"])
    scores = crop_scores(maps["crop_class"].values, landcover, cal.names)
    per_crop = [scores[c][k] for c in cal.names for k in ("precision", "recall")]
    area_km2 = info["width"] * info["height"] * info["resolution_m"] ** 2 / 1e6
    return {
        "season": season,
        "labels": n_labels,
        "area_km2": round(area_km2, 1),
        "parcels": len(table),
        "scores": scores,
        "min_crop_precision_recall": min(per_crop),
        "cropland_precision": scores["cropland"]["precision"],
        "cropland_recall": scores["cropland"]["recall"],
        "bar_met": min(per_crop) >= 0.85 and min(scores["cropland"].values()) >= 0.9,
        "labels_on_own_window": len(own_rows),
        "model": model.info,
    }


def evaluate_yield(
    archive: str,
    *,
    test_season: int | None = None,
    labels: Any = None,
    parcel_ids_source: Any = "truth",
    method: str | None = None,
    features: tuple[str, ...] | None = None,
    crop_source: str = "predicted",
    seed: int = 0,
    usda: bool = True,
) -> dict[str, Any]:
    """Yield forecast of ``test_season`` (the archive's last when None) from a model trained on
    the earlier seasons, scored against ``truth/yields.csv`` with the trend + last-season
    baseline; crop maps per season from the few-shot crop model (``crop_source="predicted"``)
    or the truth classes (``"truth"``). The model is the production one:
    :func:`pipelines.agri.yields.select_yield_model` over ``SEASON_CANDIDATES``, chosen by
    leave-one-season-out within the training seasons (the test season never enters); giving
    ``method`` and ``features`` fits that one configuration instead. Adds the USDA backtests
    (2015, and each season 2009-2015) and the calibration check."""
    from pipelines.agri.calendar import load_calendar
    from pipelines.agri.crop_type import fit_crop_model, predict_crops
    from pipelines.agri.eval_yields import calibration_check, usda_backtest, usda_rolling_backtest
    from pipelines.agri.yields import (
        METHODS,
        baseline_forecast,
        county_features,
        fit_yield_model,
        forecast_yields,
        score,
        season_training_frame,
        select_yield_model,
    )
    from pipelines.demo import open_archive_info

    if crop_source not in ("predicted", "truth"):
        raise BadInputError("crop_source", crop_source, "'predicted' or 'truth'")
    if (method is None) != (features is None):
        raise BadInputError(
            "method" if method is None else "features",
            None,
            "both method and features (one configuration), or neither (the selection)",
        )
    if method is not None and method not in METHODS:
        raise BadInputError("method", method, f"one of {list(METHODS)}")
    info = open_archive_info(archive)
    seasons = [int(s) for s in info["seasons"]]
    test_season = int(test_season if test_season is not None else seasons[-1])
    if test_season not in seasons or seasons.index(test_season) == 0:
        raise BadInputError("test_season", test_season, f"one of {seasons[1:]}")
    from pipelines import storage

    truth = pd.read_csv(storage.join(archive, info["truth"]["yields"]))
    cal = load_calendar()
    ids = _parcel_source(archive, parcel_ids_source)
    by_parcel = None
    if crop_source == "predicted":
        by_parcel, _ = _label_parcels(archive, labels, ids, cal.names)
    frames = []
    for s in seasons:
        if s > test_season:
            continue
        table = season_table(archive, s, ids)
        if by_parcel is not None:  # crop_source == "predicted"
            pred = predict_crops(fit_crop_model(table, by_parcel, cal, seed=seed), table)
        else:
            codes = {int(LandClass[c.upper()]): c for c in cal.names}
            pred = pd.DataFrame({"crop": table["truth_class"].map(codes).fillna("")})
        frames.append(county_features(table, pred, cal))
    train, test = season_training_frame(pd.concat(frames, ignore_index=True), truth, test_season)
    if method is not None and features is not None:
        model = fit_yield_model(train, features, method=method, seed=seed)
    else:
        model = select_yield_model(train, seed=seed, forecast=test)
    fc = forecast_yields(model, test)
    past = truth[truth["season"] < test_season]
    base = baseline_forecast(past, test_season).merge(
        fc[["county_id", "crop"]], on=["county_id", "crop"]
    )
    scored = fc.merge(
        truth[["season", "county_id", "crop", "yield"]], on=["season", "county_id", "crop"]
    )
    scored["ape"] = (scored["forecast"] - scored["yield"]).abs() / scored["yield"]
    res: dict[str, Any] = {
        "test_season": test_season,
        "train_seasons": sorted(int(s) for s in train["season"].unique()),
        "crop_source": crop_source,
        "method": model.method,
        "features": list(model.features),
        "selection": model.info.get("selection"),
        "model": score(fc, truth),
        "baseline_trend_last_season": score(base, truth),
        "one_minus_mape_by_crop": (1 - scored.groupby("crop")["ape"].mean()).round(4).to_dict(),
        "forecast": fc.round(3).to_dict(orient="records"),
    }
    res["bar_met"] = bool(
        res["model"]["one_minus_mape"] >= 0.903
        and res["model"]["mape"] < res["baseline_trend_last_season"]["mape"]
    )
    if usda:
        res["usda_backtest"] = usda_backtest()
        res["usda_rolling_backtest"] = usda_rolling_backtest()
        res["calibration"] = calibration_check(truth)
    return res


#: The crop calendar the REAL eo-learn patch (Slovenia) is read with: typical dates of Central
#: European maize and winter cereals (an assumption, not a measured calendar).
REAL_PATCH_CALENDAR = Path(__file__).resolve().parent.parent / "data" / "central_europe_crops.yaml"


def evaluate_calendar_rules_real(
    root: str | Path | None = None,
    *,
    calendar: str | Path | None = None,
    season: int | None = None,
) -> dict[str, Any]:
    """crop_type's calendar rules (:func:`pipelines.agri.crop_type.calendar_rules`, optical
    path: the patch has no SAR) on the eo-learn TestEOPatch, each RABA polygon a parcel of the
    season run's parcel table (:func:`pipelines.agri.parcel_table.parcel_table` of
    :func:`pipelines.agri.eval_parcels.load_real_patch`, then
    :func:`pipelines.agri.crop_type.crop_features`).

    ``calendar``: crop calendar YAML (default :data:`REAL_PATCH_CALENDAR`); ``season``: as
    :func:`load_real_patch`. Returns, per land-use class of the polygons (``LULC_NAME``), the
    polygons and pixels and the share of the pixels ruled out as annual crops, in all and by
    each rule, and the medians of the curves' minimum, maximum and best template correlation
    (NDVI of the L1C top-of-atmosphere reflectance)."""
    import xarray as xr

    from pipelines.agri import crop_type as C
    from pipelines.agri.calendar import load_calendar
    from pipelines.agri.eval_parcels import load_real_patch
    from pipelines.agri.features import BGRN, POLS
    from pipelines.agri.parcel_table import parcel_table

    patch = load_real_patch(root, season=season)
    cal = load_calendar(calendar if calendar is not None else REAL_PATCH_CALENDAR)
    feats = patch.features
    doys, (ny, nx) = feats["doy"].values, patch.truth.shape
    # No reflectance or SAR in the patch: NaN layers, as a season without them has.
    feats = feats.assign(
        reflectance=xr.DataArray(
            np.full((len(doys), len(BGRN), ny, nx), np.nan, "float32"),
            dims=("doy", "band", "y", "x"),
            coords={"band": list(BGRN)},
        ),
        sar=xr.DataArray(
            np.full((len(doys), len(POLS), ny, nx), np.nan, "float32"),
            dims=("doy", "pol", "y", "x"),
            coords={"pol": list(POLS)},
        ),
    )
    table = parcel_table(feats, patch.truth)
    parcel = C.crop_features(table, cal)
    rules = C.calendar_rules(parcel)
    ruled = rules.any(axis=1).to_numpy()
    nd = parcel[[c for c in parcel.columns if c.startswith("ndvi|")]].to_numpy()
    fit = parcel[[c for c in parcel.columns if c.startswith("calendar|")]].to_numpy()
    names = patch.polygons["LULC_NAME"].to_numpy()[table.index.to_numpy() - 1]
    weight = table["area_px"].to_numpy().astype("float64")
    classes: dict[str, Any] = {}
    for name in sorted(set(names)):
        m = names == name
        w = weight[m]
        classes[str(name)] = {
            "polygons": int(m.sum()),
            "pixels": int(w.sum()),
            "ruled_out_share": round(float((ruled[m] * w).sum() / w.sum()), 3),
            **{
                f"{rule}_share": round(float((rules[rule].to_numpy()[m] * w).sum() / w.sum()), 3)
                for rule in rules.columns
            },
            "ndvi_min_median": round(float(np.median(nd[m].min(axis=1))), 3),
            "ndvi_max_median": round(float(np.median(nd[m].max(axis=1))), 3),
            "best_template_corr_median": round(float(np.median(fit[m].max(axis=1))), 3),
        }
    return {
        "source": "eo-learn TestEOPatch NDVI (68 dates, L1C TOA) + RABA LULC.gpkg; no SAR",
        "season": patch.season,
        "calendar": str(calendar if calendar is not None else REAL_PATCH_CALENDAR.name),
        "calendar_doys": [int(doys[0]), int(doys[-1])],
        "thresholds": {
            "BARE_NDVI": C.BARE_NDVI,
            "GREEN_NDVI": C.GREEN_NDVI,
            "MIN_TEMPLATE_CORR": C.MIN_TEMPLATE_CORR,
        },
        "classes": classes,
    }
