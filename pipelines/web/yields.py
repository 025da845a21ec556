"""The county yield forecast of a season run as a map layer: counties joined to their forecast.

The ``yield`` product is a province-wide table (``<store>/<province>/yield/<season>/
forecast.parquet``, committed by its STAC item ``yield/items/<season>.json``); the page draws it
as a choropleth over the config's county polygons (``agri.counties``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pipelines import products, storage
from pipelines.errors import BadInputError

PRODUCT = "yield"


def yield_seasons(store: str, province: str) -> list[int]:
    """Seasons whose yield forecast is committed (its STAC item present), ascending."""
    root = storage.join(products.product_url(store, province, PRODUCT), "items")
    fs, base = storage.filesystem(root)
    if not fs.exists(base):
        return []
    found = []
    for path in fs.glob(f"{base.rstrip('/')}/*.json"):
        stem = str(path).rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def yield_map(store: str, province: str, season: int, counties_url: str | None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the counties with their forecast per crop (t/ha:
    ``forecast``, ``lower``, ``upper``), the crops, the forecast range and the STAC item."""
    from pipelines.engine.season import read_counties
    from pipelines.engine.season_yield import FORECAST_FILES

    seasons = yield_seasons(store, province)
    if season not in seasons:
        raise BadInputError(
            "season", season, f"a season with a yield forecast: {seasons or 'none'}"
        )
    counties = read_counties(counties_url)
    if not counties:
        raise BadInputError(
            "agri.counties", counties_url, "a GeoJSON of county polygons to draw the forecast on"
        )
    url = products.season_file_url(store, province, PRODUCT, season, FORECAST_FILES["parquet"])
    if not storage.exists(url):
        raise BadInputError(
            "yield", url, "the forecast table its STAC item names", "rerun terrapipe season"
        )
    table = products.read_table(url)
    by_county: dict[int, dict[str, dict[str, float | None]]] = {}
    for row in table.to_dict("records"):
        by_county.setdefault(int(row["county_id"]), {})[str(row["crop"])] = {
            k: _num(row.get(k)) for k in ("forecast", "lower", "upper")
        }
    features = []
    for i, feature in enumerate(counties.get("features", [])):
        props = feature.get("properties") or {}
        cid = int(props.get("county_id", i + 1))
        features.append(
            {
                "type": "Feature",
                "geometry": feature.get("geometry"),
                "properties": {
                    "county_id": cid,
                    "name": props.get("name", ""),
                    "forecast": by_county.get(cid, {}),
                },
            }
        )
    values = [float(v) for v in table["forecast"] if _num(v) is not None]
    item_url = products.season_item_url(store, province, PRODUCT, season)
    return {
        "type": "FeatureCollection",
        "features": features,
        "season": season,
        "crops": sorted({str(c) for c in table["crop"]}),
        "range": [min(values), max(values)] if values else None,
        "units": "t/ha",
        "item": json.loads(storage.read_text(item_url)),
    }


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
