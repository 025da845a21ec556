"""The crop_type step of a season: a few-shot crop model over the province's parcels, then the
crop_type product tile by tile.

:func:`crop_type_step` (the registry's ``crop_type``) fits the model on every tile's parcel table
and writes a crop per parcel (``season/<season>/crop_predictions.parquet``), then creates the
crop_type cube; :func:`crop_type_tile` paints the predictions on one tile's fine parcels.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

from pipelines import products, storage
from pipelines.agri.calendar import CropCalendar
from pipelines.engine.plan import RunPlan
from pipelines.engine.run import provenance
from pipelines.engine.season import (
    SeasonRun,
    parcel_rows,
    season_label_rows,
    season_of,
    tile_tables,
)
from pipelines.errors import BadInputError, NoScenesError
from pipelines.stages.registry import get_stage

#: Rows of a Parquet row group of the crop predictions: a batch of tiles reads only the groups
#: of its parcel ids (``terrapipe bench-province`` measures it: ``crop_predictions``).
PREDICTION_ROW_GROUP_ROWS = 2**14


def season_table(plan: RunPlan, store: str) -> pd.DataFrame:
    """The parcel tables of every tile of the season, concatenated (index parcel_id)."""
    parts = tile_tables(plan, store, products.season_table_url)
    if not parts:
        raise NoScenesError(
            f"no parcel tables for season {season_of(plan)}: run the tiles step first"
        )
    return pd.concat(parts)


def labels_to_parcels(plan: RunPlan, store: str, labels: Any) -> dict[int, str]:
    """Parcel id -> crop of the labels (GeoDataFrame in the plan's CRS), tile by tile over the
    parcels cube (one tile's ids in memory at a time)."""
    from shapely.geometry import box

    from pipelines.agri.labels import labels_to_parcels as assign

    cube = products.open_product(store, plan.province, "parcels")
    fine = cube["fine"].sel(time=np.datetime64(plan.window[0], "ns"))
    out: dict[int, str] = {}
    for tile_id in plan.tile_ids:
        tile = plan.tile(tile_id)
        inside = labels[labels.intersects(box(*tile.bounds))]
        if inside.empty:
            continue
        ys, xs = plan.province_grid.region(tile)
        ids = np.nan_to_num(fine.isel(y=ys, x=xs).values).astype(np.int64)
        out.update(assign(inside, ids, tile.geobox.affine))
    return out


def crop_fingerprint(
    labels_url: str,
    calendar: CropCalendar,
    tables: pd.DataFrame,
    label_rows: pd.DataFrame | None = None,
) -> str:
    """What decides the crop predictions: labels, calendar, crop_type version, parcel tables
    and the labels' own rows."""
    digest = hashlib.sha256(storage.read_bytes(labels_url))
    digest.update(json.dumps(calendar.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(get_stage("crop_type").version.encode())
    digest.update(
        pd.util.hash_pandas_object(tables.index.to_series(), index=False).to_numpy().tobytes()
    )
    if label_rows is not None and len(label_rows):
        digest.update(pd.util.hash_pandas_object(label_rows).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def split_labels(labels: Any, rows: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """The rows of the labels that have one (their own windows, written by the parcels step)
    and the labels that have none (added after it, or on no parcel): these take their whole
    parcel (:func:`labels_to_parcels`); :func:`pipelines.agri.labels.split_labels`."""
    from pipelines.agri.labels import split_labels as split

    own, whole = split(labels, rows)
    return own, whole


def fit_crops(
    plan: RunPlan,
    store: str,
    labels_url: str,
    calendar: CropCalendar,
    aoi: Any,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit the few-shot crop model on the season's parcels and write a prediction per parcel.

    Skipped when the predictions of the same labels, calendar, crop_type version and parcels
    exist; ``refit`` in the result tells the map step to rewrite every tile.
    """
    from pipelines.agri.crop_type import fit_crop_model, predict_crops
    from pipelines.agri.labels import read_labels

    season = season_of(plan)
    table = season_table(plan, store)
    labels = read_labels(labels_url, aoi, plan.crs, calendar.names)
    own_rows, whole_parcel = split_labels(labels, season_label_rows(plan, store))
    fingerprint = crop_fingerprint(labels_url, calendar, table, own_rows)
    meta_url = products.crop_model_url(store, plan.province, season)
    predictions_at = products.crop_predictions_url(store, plan.province, season)
    if not overwrite and storage.exists(meta_url) and storage.exists(predictions_at):
        meta = json.loads(storage.read_text(meta_url))
        if meta.get("fingerprint") == fingerprint:
            return {**meta, "refit": False}
    by_parcel = labels_to_parcels(plan, store, whole_parcel) if len(whole_parcel) else {}
    model = fit_crop_model(table, by_parcel, calendar, labelled=own_rows)
    predictions = predict_crops(model, table)
    predictions["county_id"] = table["county_id"].reindex(predictions.index).values
    write_predictions(predictions, predictions_at)
    meta = {
        "fingerprint": fingerprint,
        "parcels": len(predictions),
        "labels": len(by_parcel) + len(own_rows),
        "labels_on_own_window": len(own_rows),
        "crops": {str(k): int(v) for k, v in predictions["crop"].value_counts().items()},
    }
    storage.write_text(meta_url, json.dumps(meta))  # last: the predictions are complete
    return {**meta, "refit": True}


def write_predictions(predictions: pd.DataFrame, url: str) -> int:
    """Write the crop predictions (index parcel_id) sorted by parcel id, in row groups of
    :data:`PREDICTION_ROW_GROUP_ROWS`: a batch of tiles reads the groups of its own ids
    (:func:`~pipelines.engine.season.parcel_rows`). Returns the bytes written."""
    return products.write_table(
        predictions.sort_index(), url, row_group_rows=PREDICTION_ROW_GROUP_ROWS
    )


def prepare_crop_type(plan: RunPlan, store: str, calendar: CropCalendar) -> str:
    """Create (or extend) the crop_type cube: class map, cropland and per-crop probabilities."""
    dims = ("time", "y", "x")
    variables: dict[str, tuple[Any, ...]] = {
        "crop_class": (
            "uint8",
            0,
            {"long_name": "crop class (LandClass code, 0 not cropland)"},
            dims,
        ),
        "cropland": ("float32", np.nan, {"long_name": "cropland probability", "units": "1"}, dims),
    }
    for crop in calendar.names:
        attrs = {"long_name": f"probability of {crop}", "units": "1"}
        variables[f"p_{crop}"] = ("float32", np.nan, attrs, dims)
    return products.init_cube(
        store,
        plan.province,
        "crop_type",
        plan.province_grid,
        times=[plan.window[0]],
        variables=variables,
        attrs={"stage": "crop_type", "season": season_of(plan)},
    )


def crop_type_step(parcels: SeasonRun) -> dict[str, Any]:
    """The province-scope crop_type step (registry ``crop_type``) of the season ``parcels``, whose
    parcels step has run: fit the crop model and write a crop per parcel (:func:`fit_crops`),
    then create the crop_type cube that :func:`crop_type_tile` fills. Returns the fit manifest."""
    if not parcels.labels:
        raise BadInputError("labels", parcels.labels, "a GeoJSON of labelled fields")
    result = fit_crops(
        parcels.plan,
        parcels.store,
        parcels.labels,
        parcels.calendar,
        parcels.aoi,
        parcels.overwrite,
    )
    prepare_crop_type(parcels.plan, parcels.store, parcels.calendar)
    return result


def crop_type_tile(
    plan: RunPlan,
    store: str,
    tile_id: str,
    overwrite: bool = False,
    predictions: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The crop_type product of one tile: predictions (read from the store when not given)
    painted on its fine parcels."""
    from pipelines.agri.crop_type import crop_maps

    stage = get_stage("crop_type")
    label = plan.dates["parcels"][0]
    if not overwrite and products.is_done(
        store, plan.province, "crop_type", tile_id, label, stage.version
    ):
        return {"tile_id": tile_id, "skipped": True}
    tile = plan.tile(tile_id)
    ys, xs = plan.province_grid.region(tile)
    cube = products.open_product(store, plan.province, "parcels").isel(y=ys, x=xs)
    fine = cube["fine"].sel(time=np.datetime64(plan.window[0], "ns")).load()
    ids = np.nan_to_num(fine.values).astype("int64")
    if predictions is None:
        predictions = products.read_table(
            products.crop_predictions_url(store, plan.province, season_of(plan)),
            parcel_rows(plan, [tile_id]),
        )
    maps = crop_maps(ids, predictions).assign_coords(y=fine["y"].values, x=fine["x"].values)
    maps = maps.expand_dims(time=[np.datetime64(plan.window[0], "ns")])
    written = products.write_tile_product(
        store,
        plan.province,
        "crop_type",
        plan.province_grid,
        tile,
        maps,
        stage=stage,
        spec=products.ProductSpec(
            quicklook="classes",
            classes=dict(stage.classes or {}),
            overview_resampling="nearest",
            quicklook_variables=("crop_class",),
            mantissa_bits=plan.mantissa_bits,
        ),
        provenance=provenance(plan, stage, tile_id, [label]),
        intervals=[plan.window],
        overwrite=True,
    )
    return {"tile_id": tile_id, "skipped": False, "bytes_written": written["bytes_written"]}
