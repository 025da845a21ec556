"""The season run of the agriculture products: parcels -> crop_type -> yield for one province.

Steps (each a task of the ``season_crop_yield`` DAG, each resumable):

1. **parcels** (per tile, on Dask; :func:`season_tile`): season feature cube -> parcels (fine,
   coarse) -> the parcels product (Zarr, COG, STAC item), parcel polygons (GeoParquet, both
   levels) and the per-parcel season table (Parquet, with the parcel's county). Parcel ids are
   made unique in the province by a per-tile offset (``tile_ordinal << 20``).
2. **crop_type** (province, then per tile; :mod:`pipelines.engine.season_crops`): all tiles'
   tables + the labels file -> the few-shot crop model -> a prediction per parcel (Parquet) ->
   predictions painted on the parcels raster: the crop_type product (class map, probability per
   crop, cropland probability).
3. **yield** (province; :mod:`pipelines.engine.season_yield`): per-county features of this and
   the past seasons (earlier season runs) + the province's past yield statistics -> county
   forecasts (Parquet, CSV, choropleth PNG, STAC item).

crop_type and yield are the registry's province-scope steps: each takes, as its one declared
input, the :class:`SeasonRun` in which its upstream step is complete. Where each file lives is
:mod:`pipelines.products.layout` (``season/<season>/...``, ``parcels/vector/<season>/...``,
``yield/<season>/...``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipelines import products, storage
from pipelines.agri.calendar import CropCalendar
from pipelines.engine.graph import tile_sources
from pipelines.engine.plan import RunPlan
from pipelines.engine.run import provenance
from pipelines.errors import BadInputError, NoScenesError
from pipelines.stages.registry import get_stage

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


@dataclass(frozen=True)
class SeasonRun:
    """One province season as its province-scope steps see it: the season's plan and store, and
    its inputs beyond the imagery."""

    plan: RunPlan
    """The season plan (window :func:`season_window`, the parcels stage)."""
    store: str
    """Store URL of the products (local directory or ``s3://...``)."""
    calendar: CropCalendar
    """Crop calendar of the province."""
    labels: str | None = None
    """GeoJSON of labelled fields (points or polygons with a ``crop`` property)."""
    aoi: Any = None
    """The province AOI (shapely geometry, WGS84): labels outside it are refused."""
    counties: str | None = None
    """GeoJSON of county polygons (``county_id``, ``name`` properties) or None."""
    yield_history: str | None = None
    """CSV of past county yields ``season,county_id,crop,yield`` (t/ha) or None."""
    overwrite: bool = False
    """Recompute even where the results of the same inputs exist."""

    @property
    def season(self) -> int:
        """The season year."""
        return season_of(self.plan)


def tile_offset(plan: RunPlan, tile_id: str) -> int:
    """Offset added to a tile's local parcel ids (unique ids across the province)."""
    ordinal = plan.tile_ids.index(tile_id) + 1
    if ordinal >= 2 ** (31 - LOCAL_ID_BITS):
        raise BadInputError("tiles", len(plan.tiles), f"fewer than {2 ** (31 - LOCAL_ID_BITS)}")
    return ordinal << LOCAL_ID_BITS


def parcel_rows(plan: RunPlan, tile_ids: Sequence[str]) -> products.RowRange:
    """The rows of a table indexed by ``parcel_id`` that may hold the parcels of ``tile_ids``
    (from the lowest of their offsets to the end of the highest's ids; the tiles of a batch are
    consecutive, so nothing else)."""
    offsets = [tile_offset(plan, t) for t in tile_ids]
    return products.RowRange("parcel_id", min(offsets), max(offsets) + (1 << LOCAL_ID_BITS))


# ---- counties ------------------------------------------------------------------------------


def county_raster(counties: dict[str, Any] | None, geobox: Any) -> np.ndarray:
    """County ids (``county_id`` property, else feature order + 1) burnt on ``geobox`` (0 none)."""
    from rasterio.features import rasterize
    from shapely.geometry import shape

    from pipelines.grid import reproject_geometry

    if not counties:
        return np.zeros(geobox.shape, np.int32)
    shapes = []
    for i, feat in enumerate(counties.get("features", [])):
        cid = int(feat.get("properties", {}).get("county_id", i + 1))
        geom = reproject_geometry(shape(feat["geometry"]), "EPSG:4326", str(geobox.crs))
        shapes.append((geom, cid))
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
    """The county polygons GeoJSON at ``url`` (None without a URL)."""
    if not url:
        return None
    try:
        return json.loads(storage.read_text(url))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise BadInputError("counties", url, "a readable GeoJSON of county polygons") from exc


# ---- the parcels step, per tile ------------------------------------------------------------


def season_tile(
    plan: RunPlan,
    store: str,
    tile_id: str,
    client: Any,
    counties: dict[str, Any] | None = None,
    overwrite: bool = False,
    labels: Any = None,
) -> dict[str, Any]:
    """Parcels product, polygons and parcel table of one tile; skipped when all exist.

    ``labels``: the season's labels (GeoDataFrame in the plan's CRS, :func:`read_season_labels`)
    or None: the rows of their own windows on this tile are written beside the table
    (:func:`pipelines.agri.labels.label_rows`)."""
    from pipelines.agri.features import season_features
    from pipelines.agri.parcel_table import parcel_table
    from pipelines.agri.parcels import parcels
    from pipelines.agri.polygons import parcel_polygons, write_geoparquet

    season = season_of(plan)
    stage = get_stage("parcels")
    label = plan.dates["parcels"][0]
    table_at = products.season_table_url(store, plan.province, season, tile_id)
    done = products.is_done(store, plan.province, "parcels", tile_id, label, stage.version)
    if done and storage.exists(table_at) and not overwrite:
        return {"tile_id": tile_id, "skipped": True, "parcels": 0}
    if not plan.items_for("s2", tile_id):
        raise NoScenesError(f"no Sentinel-2 scenes on tile {tile_id} in season {season}")
    sources = tile_sources(plan, [stage], tile_id)  # s1 and dem: None without scenes
    s2 = sources["s2"]
    assert s2 is not None  # parcels needs s2: a tile without its scenes is refused above
    lazy = season_features(s2, sources["s1"], sources["dem"], season)
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
    written = products.write_tile_product(
        store,
        plan.province,
        "parcels",
        plan.province_grid,
        tile,
        product,
        stage=stage,
        spec=products.ProductSpec(
            quicklook="continuous", overview_resampling="nearest", mantissa_bits=plan.mantissa_bits
        ),
        provenance=provenance(plan, stage, tile_id, [label]),
        intervals=[plan.window],
        overwrite=True,
    )
    transform, crs = tile.geobox.affine, str(tile.geobox.crs)
    fine_poly = parcel_polygons(fine, transform, crs, "fine", parents=coarse)
    coarse_poly = parcel_polygons(coarse, transform, crs, "coarse")
    polys = pd.concat([fine_poly, coarse_poly], ignore_index=True)
    write_geoparquet(polys, products.vector_url(store, plan.province, "parcels", season, tile_id))
    if labels is not None:
        from shapely.geometry import box

        from pipelines.agri.labels import label_rows

        on_tile = labels[labels.intersects(box(*tile.bounds))]
        products.write_table(
            label_rows(features, on_tile, fine, transform),
            products.season_label_rows_url(store, plan.province, season, tile_id),
        )
    table = parcel_table(features, fine)  # written last: the tile is complete
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
    products.write_table(table, table_at)
    return {
        "tile_id": tile_id,
        "skipped": False,
        "parcels": len(table),
        "bytes_written": int(written["bytes_written"]),
    }


def read_season_labels(url: str | None, aoi: Any, crs: Any, crops: tuple[str, ...]) -> Any:
    """The season's labels for the parcels step (GeoDataFrame in ``crs``), or None where there
    are none or they do not read: the crop_type step reports what is wrong with them, and the
    parcels do not depend on them."""
    import logging

    from pipelines.agri.labels import read_labels

    if not url:
        return None
    try:
        return read_labels(url, aoi, crs, crops)
    except BadInputError as exc:
        logging.getLogger(__name__).warning("labels left out of the parcels step: %s", exc)
        return None


def tile_tables(plan: RunPlan, store: str, url_of: Any) -> list[pd.DataFrame]:
    """The tables the parcels step wrote per tile, at ``url_of(store, province, season,
    tile_id)`` (e.g. :func:`pipelines.products.season_table_url`), for the tiles that have one."""
    season = season_of(plan)
    urls = [url_of(store, plan.province, season, tile_id) for tile_id in plan.tile_ids]
    return [products.read_table(url) for url in urls if storage.exists(url)]


def season_label_rows(plan: RunPlan, store: str) -> pd.DataFrame:
    """The label-window rows every tile's parcels step wrote (index label key, ``crop``)."""
    parts = [p for p in tile_tables(plan, store, products.season_label_rows_url) if len(p)]
    if not parts:
        return pd.DataFrame(columns=["crop"], index=pd.Index([], name="label_key"))
    rows = pd.concat(parts)
    return rows[~rows.index.duplicated(keep="first")]


def tiles_with_parcels(
    plan: RunPlan, store: str, tile_ids: Sequence[str] | None = None
) -> set[str]:
    """Ids of the plan's tiles (or of ``tile_ids``) whose parcel table the parcels step wrote."""
    season = season_of(plan)
    return {
        tile_id
        for tile_id in (plan.tile_ids if tile_ids is None else tile_ids)
        if storage.exists(products.season_table_url(store, plan.province, season, tile_id))
    }
