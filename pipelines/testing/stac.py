"""Build small COGs and STAC items shaped like the real catalogs' items (Earth Search v1, Planetary
Computer), and write them as an archive with the demo layout (``stac/collections/<c>.json``,
``stac/items/<c>.json``, ``data/<c>/<item>/<asset>.tif``).

Every builder takes the pixel values (DN, linear gamma0, metres) explicitly, so tests know exactly
what a loader must return.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from pipelines.catalog.assets import ASSET_STYLES
from pipelines.errors import BadInputError

S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"
DEM_COLLECTION = "cop-dem-glo-30"


def write_cog(
    path: str | os.PathLike,
    data: np.ndarray,
    geobox: GeoBox,
    *,
    nodata: float | int | None = None,
) -> str:
    """Write a single-band ``data`` (y, x) on ``geobox`` as a COG at ``path``; returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if data.shape != tuple(geobox.shape):
        raise ValueError(f"data shape {data.shape} differs from geobox shape {geobox.shape}")
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=str(geobox.crs),
        transform=geobox.affine,
        nodata=nodata,
        blocksize=256,
        compress="deflate",
    ) as dst:
        dst.write(data, 1)
    return path


def _time(when: datetime | str) -> str:
    if isinstance(when, datetime):
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return when


def _footprint(geobox: GeoBox) -> tuple[dict[str, Any], list[float]]:
    bb = geobox.boundingbox
    west, south, east, north = transform_bounds(
        str(geobox.crs), "EPSG:4326", bb.left, bb.bottom, bb.right, bb.top, densify_pts=21
    )
    bbox = [west, south, east, north]
    return mapping(box(*bbox)), bbox


def _proj(geobox: GeoBox) -> dict[str, Any]:
    a = geobox.affine
    return {"proj:shape": list(geobox.shape), "proj:transform": [a.a, a.b, a.c, a.d, a.e, a.f]}


def _item(
    item_id: str,
    collection: str,
    geobox: GeoBox,
    when: datetime | str,
    properties: Mapping[str, Any],
    assets: Mapping[str, Any],
    *,
    proj_code: bool = False,
) -> dict[str, Any]:
    geometry, bbox = _footprint(geobox)
    props: dict[str, Any] = {"datetime": _time(when)}
    if geobox.crs is None:
        raise BadInputError("geobox", geobox, "a GeoBox with a CRS")
    epsg = geobox.crs.epsg
    if proj_code:
        props["proj:code"] = f"EPSG:{epsg}"
    else:
        props["proj:epsg"] = epsg
    props.update(properties)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        ],
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": dict(assets),
    }


def s2_item(
    root: str | os.PathLike,
    item_id: str,
    geobox: GeoBox,
    when: datetime | str,
    dn: Mapping[str, np.ndarray],
    *,
    style: str = "s2-common-names",
    cloud_cover: float = 10.0,
    processing_baseline: str = "05.11",
    declare_scale_offset: bool = True,
    proj_code: bool = False,
    collection: str = S2_COLLECTION,
) -> dict[str, Any]:
    """A Sentinel-2 L2A item with one uint16 COG per band in ``dn`` (canonical names, incl. SCL).

    ``style="s2-common-names"`` gives Earth Search v1 keys (``red``, ``scl``) and, with
    ``declare_scale_offset``, ``raster:bands`` scale 1e-4 / offset -0.1 / nodata 0;
    ``style="s2-esa-ids"`` gives Planetary Computer keys (``B04``, ``SCL``) without raster:bands.
    """
    keys = ASSET_STYLES[style]
    assets = {}
    for band, values in dn.items():
        key = keys[band]
        is_scl = band == "SCL"
        data = np.asarray(values, dtype="uint8" if is_scl else "uint16")
        href = write_cog(
            Path(root) / "data" / collection / item_id / f"{key}.tif", data, geobox, nodata=0
        )
        meta: dict[str, Any] = {"nodata": 0, "data_type": str(data.dtype)}
        if declare_scale_offset and not is_scl:
            meta.update(scale=0.0001, offset=-0.1)
        asset = {
            "href": os.path.abspath(href),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"] if is_scl else ["data", "reflectance"],
            **_proj(geobox),
        }
        if declare_scale_offset or is_scl:
            asset["raster:bands"] = [meta]
        assets[key] = asset
    props = {
        "platform": "sentinel-2a",
        "constellation": "sentinel-2",
        "eo:cloud_cover": float(cloud_cover),
        "s2:processing_baseline": processing_baseline,
    }
    return _item(item_id, collection, geobox, when, props, assets, proj_code=proj_code)


def s1_item(
    root: str | os.PathLike,
    item_id: str,
    geobox: GeoBox,
    when: datetime | str,
    linear: Mapping[str, np.ndarray],
    *,
    collection: str = S1_COLLECTION,
) -> dict[str, Any]:
    """A Planetary-Computer-style sentinel-1-rtc item: float32 linear gamma0, nodata -32768,
    ``proj:*`` at item level, assets ``vv``/``vh`` (``linear`` keyed by ``"VV"``/``"VH"``)."""
    assets = {}
    for pol, values in linear.items():
        key = pol.lower()
        href = write_cog(
            Path(root) / "data" / collection / item_id / f"{key}.tif",
            np.asarray(values, dtype="float32"),
            geobox,
            nodata=-32768,
        )
        assets[key] = {
            "href": os.path.abspath(href),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [{"nodata": -32768, "data_type": "float32"}],
        }
    props = {
        "platform": "SENTINEL-1A",
        "constellation": "Sentinel-1",
        "sar:polarizations": list(linear),
        "sar:instrument_mode": "IW",
        "sat:orbit_state": "descending",
        **_proj(geobox),
    }
    return _item(item_id, collection, geobox, when, props, assets)


def dem_item(
    root: str | os.PathLike,
    item_id: str,
    geobox: GeoBox,
    heights: np.ndarray,
    *,
    when: datetime | str = "2021-04-22T00:00:00Z",
    collection: str = DEM_COLLECTION,
) -> dict[str, Any]:
    """A Copernicus DEM item (asset ``data``, float32 metres) on ``geobox`` (usually EPSG:4326)."""
    href = write_cog(
        Path(root) / "data" / collection / item_id / "data.tif",
        np.asarray(heights, dtype="float32"),
        geobox,
    )
    asset = {
        "href": os.path.abspath(href),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "raster:bands": [{"data_type": "float32", "unit": "meter", "sampling": "point"}],
    }
    props = {"platform": "tandem-x", "gsd": 30, **_proj(geobox)}
    return _item(item_id, collection, geobox, when, props, {"data": asset})


def collection_json(collection: str, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A minimal STAC Collection whose extent covers ``items``."""
    bboxes = np.array([it["bbox"] for it in items]) if items else np.array([[-180, -90, 180, 90]])
    times = sorted(it["properties"]["datetime"] for it in items) or [None]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection,
        "description": f"{collection} (test archive)",
        "license": "proprietary",
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        float(bboxes[:, 0].min()),
                        float(bboxes[:, 1].min()),
                        float(bboxes[:, 2].max()),
                        float(bboxes[:, 3].max()),
                    ]
                ]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
    }


def write_archive(
    root: str | os.PathLike, items: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Path:
    """Write ``{collection: items}`` as ``stac/collections/<c>.json`` + ``stac/items/<c>.json``."""
    root = Path(root)
    (root / "stac" / "collections").mkdir(parents=True, exist_ok=True)
    (root / "stac" / "items").mkdir(parents=True, exist_ok=True)
    for collection, its in items.items():
        (root / "stac" / "collections" / f"{collection}.json").write_text(
            json.dumps(collection_json(collection, its))
        )
        (root / "stac" / "items" / f"{collection}.json").write_text(
            json.dumps({"type": "FeatureCollection", "features": list(its)})
        )
    return root
