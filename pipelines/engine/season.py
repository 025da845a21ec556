"""The season run of the agriculture products: parcels -> crop_type -> yield for one province.

Steps (each a task of the ``season_crop_yield`` DAG, each resumable):

1. **tiles** (per tile, on Dask): season feature cube -> parcels (fine, coarse) -> the parcels
   product (Zarr, COG, STAC item), parcel polygons (GeoParquet, both levels) and the per-parcel
   season table (Parquet, with the parcel's county). Parcel ids are made unique in the province by
   a per-tile offset (``tile_ordinal << 20``).
2. **fit** (province): all tiles' tables + the labels file -> the few-shot crop model -> a
   prediction per parcel (Parquet).
3. **maps** (per tile): predictions painted on the parcels raster -> the crop_type product
   (class map, probability per crop, cropland probability).
4. **yield** (province): per-county features of this and the past seasons (earlier season runs)
   + the province's past yield statistics -> county forecasts (Parquet, CSV, choropleth PNG,
   STAC item).

Layout under ``<store>/<province>/``: ``parcels/`` and ``crop_type/`` like every product (plus
``parcels/vector/<season>/<tile>.parquet``), ``season/<season>/tables/<tile>.parquet``,
``season/<season>/crop_predictions.parquet``, ``yield/<season>/forecast.{parquet,csv,png}`` and
``yield/items/<season>.json``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipelines import products, storage
from pipelines.engine.plan import RunPlan
from pipelines.errors import BadInputError, NoScenesError

#: The season window (month, day) in the season year; winter wheat sown the autumn before is
#: green from March and harvested in June, the summer crops are harvested by November.
SEASON_START = (3, 1)
SEASON_END = (11, 30)
#: Bits of a parcel id that number parcels within one tile (the rest number the tile).
LOCAL_ID_BITS = 20


def season_window(season: int) -> tuple[dt.date, dt.date]:
    """First and last day of ``season``'s window."""
    if isinstance(season, bool) or not isinstance(season, int) or not 1980 <= season <= 2200:
        raise BadInputError("season", season, "a year such as 2025")
    return dt.date(season, *SEASON_START), dt.date(season, *SEASON_END)


def season_of(plan: RunPlan) -> int:
    """The season year of a season plan."""
    return int(plan.window[0][:4])


def tile_offset(plan: RunPlan, tile_id: str) -> int:
    """Offset added to a tile's local parcel ids (unique ids across the province)."""
    ordinal = plan.tile_ids.index(tile_id) + 1
    if ordinal >= 2 ** (31 - LOCAL_ID_BITS):
        raise BadInputError("tiles", len(plan.tiles), f"fewer than {2 ** (31 - LOCAL_ID_BITS)}")
    return ordinal << LOCAL_ID_BITS


def season_url(store: str, province: str, season: int, *parts: str) -> str:
    return storage.join(products.province_url(store, province), "season", str(season), *parts)


def table_url(store: str, province: str, season: int, tile_id: str) -> str:
    return season_url(store, province, season, "tables", f"{tile_id}.parquet")


def predictions_url(store: str, province: str, season: int) -> str:
    return season_url(store, province, season, "crop_predictions.parquet")


def polygons_url(store: str, province: str, season: int, tile_id: str) -> str:
    return storage.join(
        products.product_url(store, province, "parcels"),
        "vector",
        str(season),
        f"{tile_id}.parquet",
    )


def yield_url(store: str, province: str, season: int, name: str) -> str:
    return storage.join(products.product_url(store, province, "yield"), str(season), name)


def write_parquet(df: pd.DataFrame, url: str) -> int:
    """Write ``df`` as Parquet (local or object storage); returns bytes written."""
    buf = io.BytesIO()
    df.to_parquet(buf)
    storage.write_bytes(url, buf.getvalue())
    return buf.tell()


def read_parquet(url: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(url)))


# ---- counties ------------------------------------------------------------------------------


def county_raster(counties: dict[str, Any] | None, geobox: Any) -> np.ndarray:
    """County ids (``county_id`` property, else feature order + 1) burnt on ``geobox`` (0 none)."""
    from rasterio.features import rasterize
    from shapely.geometry import shape
    from shapely.ops import transform as reproject

    if not counties:
        return np.zeros(geobox.shape, np.int32)
    from pyproj import Transformer

    to_crs = Transformer.from_crs("EPSG:4326", str(geobox.crs), always_xy=True).transform
    shapes = []
    for i, feat in enumerate(counties.get("features", [])):
        cid = int(feat.get("properties", {}).get("county_id", i + 1))
        shapes.append((reproject(to_crs, shape(feat["geometry"])), cid))
    return rasterize(shapes, out_shape=geobox.shape, transform=geobox.affine, fill=0, dtype="int32")


def majority_by_parcel(ids: np.ndarray, values: np.ndarray) -> pd.Series:
    """The most frequent non-zero ``values`` within each parcel id > 0 (0 when none)."""
    sel = (ids > 0) & (values > 0)
    if not sel.any():
        return pd.Series(dtype="int32")
    frame = pd.DataFrame({"parcel_id": ids[sel].astype(np.int64), "v": values[sel]})
    counts = frame.value_counts().reset_index(name="n").sort_values("n", ascending=False)
    return counts.drop_duplicates("parcel_id").set_index("parcel_id")["v"].astype("int32")


def read_counties(url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    try:
        return json.loads(storage.read_text(url))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise BadInputError("counties", url, "a readable GeoJSON of county polygons") from exc


# ---- step 1: per tile ----------------------------------------------------------------------


def season_tile(
    plan: RunPlan,
    store: str,
    tile_id: str,
    client: Any,
    counties: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Parcels product, polygons and parcel table of one tile; skipped when all exist."""
    from pipelines.agri.features import season_features
    from pipelines.agri.parcel_table import parcel_table
    from pipelines.agri.parcels import parcels
    from pipelines.agri.polygons import parcel_polygons, write_geoparquet
    from pipelines.engine.graph import load_source
    from pipelines.engine.run import provenance
    from pipelines.stages.registry import get_stage

    season = season_of(plan)
    stage = get_stage("parcels")
    label = plan.dates["parcels"][0]
    table_at = table_url(store, plan.province, season, tile_id)
    done = products.is_done(store, plan.province, "parcels", tile_id, label, stage.version)
    if done and storage.exists(table_at) and not overwrite:
        return {"tile_id": tile_id, "skipped": True, "parcels": 0}
    if not plan.items_for("s2", tile_id):
        raise NoScenesError(f"no Sentinel-2 scenes on tile {tile_id} in season {season}")
    s2 = load_source(plan, "s2", tile_id)
    s1 = load_source(plan, "s1", tile_id) if plan.items_for("s1", tile_id) else None
    dem = load_source(plan, "dem", tile_id) if plan.items_for("dem", tile_id) else None
    lazy = season_features(s2, s1, dem, season)
    lazy_ids = parcels(lazy)
    features, ids = client.gather(client.compute([lazy, lazy_ids]))
    offset = tile_offset(plan, tile_id)
    fine = np.asarray(ids["fine"].values)
    coarse = np.asarray(ids["coarse"].values)
    fine = np.where(fine > 0, fine + offset, 0).astype("int32")
    coarse = np.where(coarse > 0, coarse + offset, 0).astype("int32")
    tile = plan.tile(tile_id)
    product = xr.Dataset(
        {
            "fine": (("y", "x"), fine, {"long_name": "fine parcel id (0: not a parcel)"}),
            "coarse": (("y", "x"), coarse, {"long_name": "coarse parcel id (0: not a parcel)"}),
        },
        coords={"y": ids["y"].values, "x": ids["x"].values},
    ).expand_dims(time=[np.datetime64(plan.window[0], "ns")])
    prov = provenance(plan, stage, tile_id, [label])
    written = products.write_tile_product(
        store,
        plan.province,
        "parcels",
        plan.province_grid,
        tile,
        product,
        stage=stage,
        spec=products.ProductSpec(quicklook="continuous", overview_resampling="nearest"),
        provenance=prov,
        intervals=[plan.window],
        overwrite=True,
    )
    transform, crs = tile.geobox.affine, str(tile.geobox.crs)
    fine_poly = parcel_polygons(fine, transform, crs, "fine", parents=coarse)
    coarse_poly = parcel_polygons(coarse, transform, crs, "coarse")
    polys = pd.concat([fine_poly, coarse_poly], ignore_index=True)
    write_geoparquet(polys, polygons_url(store, plan.province, season, tile_id))
    table = parcel_table(features, fine)
    county = majority_by_parcel(fine, county_raster(counties, tile.geobox))
    extra = pd.DataFrame(
        {
            "county_id": county.reindex(table.index).fillna(0).astype("int32"),
            "coarse_id": majority_by_parcel(fine, coarse).reindex(table.index).fillna(0),
            "tile_id": tile_id,
            "season": season,
        },
        index=table.index,
    )
    table = pd.concat([table, extra], axis=1)
    write_parquet(table, table_at)
    return {
        "tile_id": tile_id,
        "skipped": False,
        "parcels": len(table),
        "bytes_written": int(written["bytes_written"]),
    }


# ---- step 2: fit the crop model ------------------------------------------------------------


def season_table(plan: RunPlan, store: str) -> pd.DataFrame:
    """The parcel tables of every tile of the season, concatenated (index parcel_id)."""
    season = season_of(plan)
    parts = []
    for entry in plan.tiles:
        url = table_url(store, plan.province, season, entry.tile_id)
        if storage.exists(url):
            parts.append(read_parquet(url))
    if not parts:
        raise NoScenesError(f"no parcel tables for season {season}: run the tiles step first")
    return pd.concat(parts)


def labels_to_parcels(plan: RunPlan, store: str, labels: Any) -> dict[int, str]:
    """Parcel id -> crop of the labels (GeoDataFrame in the plan's CRS), tile by tile over the
    parcels cube (one tile's ids in memory at a time)."""
    from shapely.geometry import box

    from pipelines.agri.labels import labels_to_parcels as assign

    cube = products.open_product(store, plan.province, "parcels")
    fine = cube["fine"].sel(time=np.datetime64(plan.window[0], "ns"))
    out: dict[int, str] = {}
    for entry in plan.tiles:
        tile = plan.tile(entry.tile_id)
        inside = labels[labels.intersects(box(*tile.bounds))]
        if inside.empty:
            continue
        ys, xs = plan.province_grid.region(tile)
        ids = np.nan_to_num(fine.isel(y=ys, x=xs).values).astype(np.int64)
        out.update(assign(inside, ids, tile.geobox.affine))
    return out


def crop_fingerprint(labels_url: str, calendar: Any, tables: pd.DataFrame) -> str:
    """What decides the crop predictions: labels, calendar, crop_type version, parcel tables."""
    import hashlib

    from pipelines.stages.registry import get_stage

    digest = hashlib.sha256(storage.read_bytes(labels_url))
    digest.update(json.dumps(calendar.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(get_stage("crop_type").version.encode())
    digest.update(pd.util.hash_pandas_object(tables.index.to_series(), index=False).values)
    return digest.hexdigest()[:16]


def fit_crops(
    plan: RunPlan,
    store: str,
    labels_url: str,
    calendar: Any,
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
    fingerprint = crop_fingerprint(labels_url, calendar, table)
    meta_url = season_url(store, plan.province, season, "crop_model.json")
    if (
        not overwrite
        and storage.exists(meta_url)
        and storage.exists(predictions_url(store, plan.province, season))
    ):
        meta = json.loads(storage.read_text(meta_url))
        if meta.get("fingerprint") == fingerprint:
            return {**meta, "refit": False}
    by_parcel = labels_to_parcels(plan, store, labels)
    model = fit_crop_model(table, by_parcel, calendar)
    predictions = predict_crops(model, table)
    predictions["county_id"] = table["county_id"].reindex(predictions.index).values
    write_parquet(predictions, predictions_url(store, plan.province, season))
    meta = {
        "fingerprint": fingerprint,
        "parcels": len(predictions),
        "labels": len(by_parcel),
        "crops": {str(k): int(v) for k, v in predictions["crop"].value_counts().items()},
    }
    storage.write_text(meta_url, json.dumps(meta))  # last: the predictions are complete
    return {**meta, "refit": True}


# ---- step 3: crop maps per tile ------------------------------------------------------------


def crop_type_tile(
    plan: RunPlan,
    store: str,
    tile_id: str,
    overwrite: bool = False,
    predictions: pd.DataFrame | None = None,
) -> dict:
    """The crop_type product of one tile: predictions (read from the store when not given)
    painted on its fine parcels."""
    from pipelines.agri.crop_type import crop_maps
    from pipelines.engine.run import provenance
    from pipelines.stages.registry import get_stage

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
        predictions = read_parquet(predictions_url(store, plan.province, season_of(plan)))
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
        ),
        provenance=provenance(plan, stage, tile_id, [label]),
        intervals=[plan.window],
        overwrite=True,
    )
    return {"tile_id": tile_id, "skipped": False, "bytes_written": written["bytes_written"]}


def prepare_crop_type(plan: RunPlan, store: str, calendar: Any) -> str:
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


# ---- step 4: county yield forecast ---------------------------------------------------------


def _season_frames(store: str, province: str, season: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parcel tables and crop predictions a season run left in the store."""
    root = season_url(store, province, season)
    fs, base = storage.filesystem(storage.join(root, "tables"))
    urls = sorted(fs.glob(base.rstrip("/") + "/*.parquet")) if fs.exists(base) else []
    preds = predictions_url(store, province, season)
    if not urls or not storage.exists(preds):
        raise NoScenesError(f"no season run of {season} in the store (tables and predictions)")
    prefix = storage.join(root, "tables")
    tables = [read_parquet(storage.join(prefix, u.rsplit("/", 1)[-1])) for u in urls]
    return pd.concat(tables), read_parquet(preds)


def read_yield_history(url: str) -> pd.DataFrame:
    """Past county yields: CSV ``season,county_id,crop,yield`` (t/ha)."""
    try:
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(url)))
    except FileNotFoundError:
        raise BadInputError("yield_history", url, "a CSV of past county yields") from None
    missing = [c for c in ("season", "county_id", "crop", "yield") if c not in frame.columns]
    if missing:
        raise BadInputError(
            "yield_history", list(frame.columns), "columns season, county_id, crop, yield (t/ha)"
        )
    return frame[["season", "county_id", "crop", "yield"]]


def forecast_season(
    plan: RunPlan,
    store: str,
    calendar: Any,
    counties_url: str | None = None,
    history_url: str | None = None,
) -> dict[str, Any]:
    """County yield forecast of the plan's season, trained on earlier season runs and their
    official yields; writes Parquet, CSV, a choropleth PNG and a STAC item."""
    from pipelines.agri import yields as Y

    season = season_of(plan)
    if not history_url:
        raise BadInputError("yield_history", history_url, "a CSV of past county yields")
    history = read_yield_history(history_url)
    past = history[history["season"] < season]
    if past["season"].nunique() < 2:
        raise NoScenesError(
            f"the yield model needs official yields of at least 2 seasons before {season}; "
            f"{history_url} has {sorted(past['season'].unique().tolist())}"
        )
    features = []
    for s in sorted({*past["season"].unique().tolist(), season}):
        try:
            table, predictions = _season_frames(store, plan.province, int(s))
        except NoScenesError:
            if s == season:
                raise
            continue
        features.append(Y.county_features(table, predictions, calendar))
    frame = pd.concat(features, ignore_index=True)
    train, current = Y.season_training_frame(frame, history, season)
    if train["season"].nunique() < 2:
        raise NoScenesError(
            f"the yield model needs at least 2 earlier season runs with yields; found "
            f"{sorted(train['season'].unique().tolist())}: run season_crop_yield for past seasons"
        )
    names = tuple(Y.SEASON_FEATURES)
    model = Y.fit_yield_model(train, names, method=Y.SEASON_METHOD)
    forecast = Y.forecast_yields(model, current)
    baseline = Y.baseline_forecast(past, season).rename(columns={"forecast": "baseline"})
    forecast = forecast.merge(baseline, on=Y.KEYS, how="left")
    counties = read_counties(counties_url)
    if counties:
        names_by_id = {
            int(f["properties"].get("county_id", i + 1)): f["properties"].get("name", "")
            for i, f in enumerate(counties.get("features", []))
        }
        forecast.insert(2, "county", forecast["county_id"].map(names_by_id))
    urls = {
        "parquet": yield_url(store, plan.province, season, "forecast.parquet"),
        "csv": yield_url(store, plan.province, season, "forecast.csv"),
    }
    write_parquet(forecast, urls["parquet"])
    storage.write_text(urls["csv"], forecast.to_csv(index=False, float_format="%.3f"))
    if counties:
        urls["png"] = yield_url(store, plan.province, season, "forecast.png")
        storage.write_bytes(urls["png"], products.choropleth_png(forecast, counties))
    item = yield_item(plan, season, urls, model)
    storage.write_text(
        storage.join(
            products.product_url(store, plan.province, "yield"), "items", f"{season}.json"
        ),
        json.dumps(item, indent=1),
    )
    return {
        "season": season,
        "rows": len(forecast),
        "train_seasons": sorted(int(s) for s in train["season"].unique()),
        "features": list(names),
        "forecast": urls["parquet"],
    }


def yield_item(plan: RunPlan, season: int, urls: dict[str, str], model: Any) -> dict[str, Any]:
    """The STAC item of a season's yield table (written last: its commit marker)."""
    from pyproj import Transformer
    from shapely.geometry import box, mapping
    from shapely.ops import transform as reproject

    to_wgs84 = Transformer.from_crs(plan.crs, "EPSG:4326", always_xy=True).transform
    footprint = reproject(to_wgs84, box(*plan.province_grid.bounds))
    media = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "png": "image/png"}
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"{plan.province}-yield-{season}",
        "geometry": mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": None,
            "start_datetime": f"{plan.window[0]}T00:00:00Z",
            "end_datetime": f"{plan.window[1]}T23:59:59Z",
            "terrapipe:product": "yield",
            "terrapipe:season": season,
            "terrapipe:units": "t/ha",
            "terrapipe:model": {
                "features": list(model.features),
                "method": model.method,
                **{k: v for k, v in model.info.items() if k != "seasons"},
            },
        },
        "links": [],
        "assets": {
            kind: {
                "href": url,
                "type": media[kind],
                "roles": ["data" if kind != "png" else "overview"],
            }
            for kind, url in urls.items()
        },
    }
