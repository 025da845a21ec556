"""Canonical band names and the asset keys each STAC catalog style uses for them.

Catalogs name the same band differently: Planetary Computer and Earth Search v0 use the ESA band
ids (``B04``, ``SCL``), Earth Search v1 uses common names (``red``, ``scl``); Sentinel-1 assets are
``vv``/``vh`` (lower case) on both; DEM items carry one ``data`` asset. The style is detected from
the asset keys the item itself has, never from its URL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pystac

from pipelines.errors import BadInputError

#: Canonical Sentinel-2 band names, in wavelength order (B10 exists in L1C only).
S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
#: Canonical Sentinel-1 polarisations.
S1_POLS: tuple[str, ...] = ("VV", "VH", "HH", "HV")
#: Canonical DEM band.
DEM_BAND = "DEM"

_ESA = {b: b for b in S2_BANDS} | {"SCL": "SCL"}
_COMMON = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}

#: Asset key per canonical band, per catalog style. Extend or override by passing ``styles=``.
ASSET_STYLES: dict[str, dict[str, str]] = {
    # Earth Search v1 (sentinel-2-l2a, sentinel-2-c1-l2a, sentinel-2-l1c) and the demo archive.
    "s2-common-names": _COMMON,
    # Planetary Computer sentinel-2-l2a, Earth Search v0 sentinel-s2-l2a-cogs.
    "s2-esa-ids": _ESA,
    # Planetary Computer sentinel-1-rtc / sentinel-1-grd, Earth Search v1 sentinel-1-grd.
    "s1-lower": {p: p.lower() for p in S1_POLS},
    "s1-upper": {p: p for p in S1_POLS},
    # Copernicus DEM on Planetary Computer and Earth Search.
    "dem": {DEM_BAND: "data"},
}

#: Asset keys whose presence identifies a style (checked in this order).
_STYLE_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("s2-common-names", ("red", "blue", "green", "nir")),
    ("s2-esa-ids", ("B04", "B02", "B03", "B08")),
    ("s1-lower", ("vv", "vh", "hh", "hv")),
    ("s1-upper", ("VV", "VH", "HH", "HV")),
    ("dem", ("data",)),
)


def _item_dict(item: pystac.Item | Mapping[str, Any]) -> Mapping[str, Any]:
    return item.to_dict(transform_hrefs=False) if isinstance(item, pystac.Item) else item


def detect_style(
    item: pystac.Item | Mapping[str, Any], styles: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """Name of the asset-key style of ``item``, from the asset keys it has.

    Raises BadInputError naming the item and its assets when no style matches.
    """
    d = _item_dict(item)
    keys = set(d.get("assets") or {})
    for style, markers in _STYLE_MARKERS:
        if styles is not None and style not in styles:
            continue
        if keys.intersection(markers):
            return style
    if styles is not None:  # custom styles: the one that maps the most of this item's keys
        best = max(styles, key=lambda s: len(keys.intersection(styles[s].values())))
        if keys.intersection(styles[best].values()):
            return best
    raise BadInputError(
        f"item {d.get('id')!r} assets",
        sorted(keys),
        "assets of a known catalog style: " + ", ".join(s for s, _ in _STYLE_MARKERS),
        "add the catalog's keys to pipelines.catalog.assets.ASSET_STYLES",
    )


def asset_key(
    item: pystac.Item | Mapping[str, Any],
    band: str,
    styles: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Asset key of canonical ``band`` (e.g. ``"B04"``, ``"SCL"``, ``"VV"``, ``"DEM"``) in ``item``.

    Raises BadInputError naming the item id, the band and the assets it has when the item lacks it.
    For Sentinel-1 items that declare ``sar:polarizations``, the error names the declared ones.
    """
    d = _item_dict(item)
    table = ASSET_STYLES if styles is None else styles
    style = detect_style(d, table)
    assets = d.get("assets") or {}
    key = table[style].get(band)
    if key is not None and key in assets:
        return key
    item_id = d.get("id")
    pols = (d.get("properties") or {}).get("sar:polarizations")
    if band in S1_POLS and pols:
        raise BadInputError(
            f"item {item_id!r} polarisation",
            band,
            f"one of the polarisations the item declares: {list(pols)}",
            f"its assets are {sorted(assets)}",
        )
    known = sorted(b for b, k in table[style].items() if k in assets)
    raise BadInputError(
        f"item {item_id!r} band",
        band,
        f"a band the item has ({style} style): {known}",
        f"its assets are {sorted(assets)}; an item catalogued without it is left out of every "
        "run by listing its ID under stac.exclude_items",
    ).of_scene(None if item_id is None else str(item_id))


def asset_keys(
    item: pystac.Item | Mapping[str, Any],
    bands: Iterable[str],
    styles: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """``{canonical band: asset key}`` for ``bands`` in ``item`` (BadInputError if one lacks)."""
    return {b: asset_key(item, b, styles) for b in bands}
