"""Writers of the demo archive: COGs, JSON, GeoJSON and the Zarr truth cube, through fsspec URLs.

Local archives are written in place (temp file + rename); object storage gets a local temp file
uploaded with :func:`pipelines.storage.put_file`.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio import features

from pipelines import storage

COG_PROFILE = {
    "driver": "COG",
    "compress": "ZSTD",
    "level": 1,
    "blocksize": 512,
    "overviews": "AUTO",
    "bigtiff": "IF_SAFER",
    "num_threads": 1,
}


def write_cog(
    url: str,
    array: np.ndarray,
    *,
    transform: Affine,
    crs: str,
    nodata: float | None,
    resampling: str = "average",
) -> None:
    """Write a single-band 2-D ``array`` as a COG (ZSTD, 512 px tiles, overviews) to ``url``."""
    pred = 3 if np.issubdtype(array.dtype, np.floating) else 2
    profile = dict(
        COG_PROFILE,
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        predictor=pred,
        resampling=resampling.upper(),
        overview_resampling=resampling.upper(),
    )
    if storage.is_remote(url):
        with tempfile.TemporaryDirectory(prefix="terrapipe-cog-") as tmp:
            path = os.path.join(tmp, "a.tif")
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(array, 1)
            storage.put_file(path, url)
        return
    path = _local(url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.tif"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array, 1)
    os.replace(tmp, path)


def _local(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def dumps(obj: Any, compact: bool = False) -> str:
    """Deterministic JSON text (indent 1, or compact; key order as built)."""
    if compact:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"
    return json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(url: str, obj: Any, compact: bool = False) -> None:
    """Write ``obj`` as JSON to ``url``."""
    storage.write_text(url, dumps(obj, compact))


@lru_cache(maxsize=8)
def _to_wgs84(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def to_wgs84(geom: dict[str, Any], crs: str) -> dict[str, Any]:
    """GeoJSON geometry from ``crs`` to WGS84 lon/lat (7 decimals)."""
    import shapely
    from shapely.geometry import mapping, shape

    tr = _to_wgs84(crs)

    def fn(xy: np.ndarray) -> np.ndarray:
        lon, lat = tr.transform(xy[:, 0], xy[:, 1])
        return np.round(np.column_stack([lon, lat]), 7)

    return dict(mapping(shapely.transform(shape(geom), fn)))


def raster_polygons(
    ids: np.ndarray, transform: Affine, crs: str, simplify_m: float = 0.0
) -> dict[int, dict[str, Any]]:
    """Polygons (WGS84 GeoJSON geometries) of each non-zero id in ``ids``; 4-connected."""
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    parts: dict[int, list[Any]] = {}
    arr = ids.astype(np.int32) if ids.dtype != np.int32 else ids
    for geom, value in features.shapes(arr, mask=arr > 0, transform=transform, connectivity=4):
        parts.setdefault(int(value), []).append(shape(geom))
    out: dict[int, dict[str, Any]] = {}
    for key in sorted(parts):
        g = parts[key][0] if len(parts[key]) == 1 else unary_union(parts[key])
        if simplify_m > 0:
            g = g.simplify(simplify_m, preserve_topology=True)
        out[key] = to_wgs84(dict(mapping(g)), crs)
    return out


def feature_collection(features_: list[dict[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection."""
    return {"type": "FeatureCollection", "features": features_}
