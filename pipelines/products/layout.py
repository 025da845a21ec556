"""Where products live under a store URL (a contract other parts code against).

::

    <store>/<province>/catalog.json
    <store>/<province>/<product>/collection.json
    <store>/<province>/<product>/cube.zarr
    <store>/<province>/<product>/cog/<tile_id>/<label>.tif
    <store>/<province>/<product>/quicklook/<tile_id>/<label>.png
    <store>/<province>/<product>/items/<tile_id>/<label>.json     (STAC item, the commit marker)

A season run (parcels -> crop_type -> yield) adds its tables beside the products::

    <store>/<province>/season/<season>/tables/<tile_id>.parquet   (per-parcel table of a tile)
    <store>/<province>/season/<season>/crop_predictions.parquet   (a crop per parcel)
    <store>/<province>/season/<season>/crop_model.json            (what the predictions came from)
    <store>/<province>/<product>/vector/<season>/<tile_id>.parquet  (GeoParquet polygons)
    <store>/<province>/<product>/<season>/<name>                  (province tables: forecast.csv)
    <store>/<province>/<product>/items/<season>.json              (their STAC item, written last)

``label`` is the acquisition date ``YYYY-MM-DD`` for dated products, or a season/window label
(e.g. ``2024-S1`` or ``2024-04-01_2024-09-30``) for products without dates. ``store`` is a local
directory or any fsspec URL (``s3://bucket/prefix``).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from pipelines.errors import BadInputError
from pipelines.storage import join

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

CATALOG_FILE = "catalog.json"
COLLECTION_FILE = "collection.json"
CUBE_DIR = "cube.zarr"
#: Folder of a product's month catalogs (:mod:`pipelines.products.catalog`).
PERIODS_DIR = "months"

_DATE_LABEL = re.compile(r"^(\d{4}-\d{2})-\d{2}")


def check_name(field: str, value: Any) -> str:
    """``value`` if it is a safe path component (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
        raise BadInputError(
            field, value, "a non-empty name of letters, digits, '.', '_' or '-' (no '/')"
        )
    return value


def date_label(time: Any) -> str:
    """The ``YYYY-MM-DD`` label of a time (naive times are UTC)."""
    return to_utc(time).strftime("%Y-%m-%d")


def to_utc(time: Any) -> pd.Timestamp:
    """``time`` as a naive UTC ``pandas.Timestamp`` (tz-aware times are converted)."""
    try:
        ts = pd.Timestamp(time)
    except (TypeError, ValueError) as exc:
        raise BadInputError("time", time, "a date or datetime (ISO string, datetime64)") from exc
    if pd.isna(ts):
        raise BadInputError("time", time, "a date or datetime, not NaT")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def province_url(store: str, province: str) -> str:
    """``<store>/<province>``."""
    return join(store, check_name("province", province))


def catalog_url(store: str, province: str) -> str:
    """``<store>/<province>/catalog.json``."""
    return join(province_url(store, province), CATALOG_FILE)


def product_url(store: str, province: str, product: str) -> str:
    """``<store>/<province>/<product>``."""
    return join(province_url(store, province), check_name("product", product))


def collection_url(store: str, province: str, product: str) -> str:
    """``<store>/<province>/<product>/collection.json``."""
    return join(product_url(store, province, product), COLLECTION_FILE)


def cube_url(store: str, province: str, product: str) -> str:
    """``<store>/<province>/<product>/cube.zarr``."""
    return join(product_url(store, province, product), CUBE_DIR)


def cog_url(store: str, province: str, product: str, tile_id: str, label: str) -> str:
    """``<store>/<province>/<product>/cog/<tile_id>/<label>.tif``."""
    return join(
        product_url(store, province, product),
        "cog",
        check_name("tile_id", tile_id),
        check_name("label", label) + ".tif",
    )


def quicklook_url(store: str, province: str, product: str, tile_id: str, label: str) -> str:
    """``<store>/<province>/<product>/quicklook/<tile_id>/<label>.png``."""
    return join(
        product_url(store, province, product),
        "quicklook",
        check_name("tile_id", tile_id),
        check_name("label", label) + ".png",
    )


def catalog_period(label: str) -> str:
    """The period whose catalog links the item ``label``: its month (``YYYY-MM``) for a date
    label, else the label itself."""
    match = _DATE_LABEL.match(label)
    return match.group(1) if match else label


def period_url(store: str, province: str, product: str, period: str) -> str:
    """``<store>/<province>/<product>/months/<period>.json``: a period's catalog."""
    return join(
        product_url(store, province, product), PERIODS_DIR, check_name("period", period) + ".json"
    )


def marker_url(store: str, province: str, product: str, tile_id: str, label: str) -> str:
    """``<store>/<province>/<product>/items/<tile_id>/<label>.json``: the STAC item marker."""
    return join(
        product_url(store, province, product),
        "items",
        check_name("tile_id", tile_id),
        check_name("label", label) + ".json",
    )


# Hrefs as written inside a marker (relative to items/<tile_id>/<label>.json), so that a province
# folder can be copied or moved anywhere and its STAC stays valid.
def rel_from_item(kind: str, tile_id: str, label: str) -> str:
    """Relative href from a marker to its sibling ``cog``/``quicklook``/``cube``/``collection``
    or to the ``period`` catalog that links it."""
    if kind == "cog":
        return f"../../cog/{tile_id}/{label}.tif"
    if kind == "quicklook":
        return f"../../quicklook/{tile_id}/{label}.png"
    if kind == "cube":
        return f"../../{CUBE_DIR}"
    if kind == "collection":
        return f"../../{COLLECTION_FILE}"
    if kind == "period":
        return f"../../{PERIODS_DIR}/{catalog_period(label)}.json"
    if kind == "catalog":
        return f"../../../{CATALOG_FILE}"
    raise ValueError(f"unknown kind {kind!r}")


# ---- season runs ---------------------------------------------------------------------------


def season_url(store: str, province: str, season: int, *parts: str) -> str:
    """``<store>/<province>/season/<season>/<parts...>``: a season run's working tables."""
    return join(province_url(store, province), "season", str(season), *parts)


def season_table_url(store: str, province: str, season: int, tile_id: str) -> str:
    """``<store>/<province>/season/<season>/tables/<tile_id>.parquet``: a tile's parcel table."""
    return season_url(
        store, province, season, "tables", check_name("tile_id", tile_id) + ".parquet"
    )


def season_label_rows_url(store: str, province: str, season: int, tile_id: str) -> str:
    """``<store>/<province>/season/<season>/label_rows/<tile_id>.parquet``: the parcel-table rows
    of the labels' own windows on a tile (:func:`pipelines.agri.labels.label_rows`)."""
    return season_url(
        store, province, season, "label_rows", check_name("tile_id", tile_id) + ".parquet"
    )


def crop_predictions_url(store: str, province: str, season: int) -> str:
    """``<store>/<province>/season/<season>/crop_predictions.parquet``: a crop per parcel."""
    return season_url(store, province, season, "crop_predictions.parquet")


def crop_model_url(store: str, province: str, season: int) -> str:
    """``<store>/<province>/season/<season>/crop_model.json``: the fingerprint and counts of
    the crop model the predictions came from (written after them)."""
    return season_url(store, province, season, "crop_model.json")


def vector_url(store: str, province: str, product: str, season: int, tile_id: str) -> str:
    """``<store>/<province>/<product>/vector/<season>/<tile_id>.parquet``: GeoParquet polygons
    of a tile's season product."""
    return join(
        product_url(store, province, product),
        "vector",
        str(season),
        check_name("tile_id", tile_id) + ".parquet",
    )


def season_file_url(store: str, province: str, product: str, season: int, name: str) -> str:
    """``<store>/<province>/<product>/<season>/<name>``: a province-wide file of a season
    product (e.g. ``forecast.parquet`` of ``yield``)."""
    return join(product_url(store, province, product), str(season), check_name("name", name))


def season_item_url(store: str, province: str, product: str, season: int) -> str:
    """``<store>/<province>/<product>/items/<season>.json``: the STAC item of a province-wide
    season product (its commit marker)."""
    return join(product_url(store, province, product), "items", f"{season}.json")
