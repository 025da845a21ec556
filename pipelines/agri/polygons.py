"""Parcel polygons: a parcel id raster to a GeoDataFrame, and GeoParquet writing.

:func:`parcel_polygons` vectorises the id raster with ``rasterio.features.shapes`` (pixel-edge
polygons, 4-connected, holes kept) and dissolves each id into one (Multi)Polygon with shapely.
Areas and perimeters are in metres, so the CRS must be projected in metres (UTM, the province
grids). :func:`write_geoparquet` writes through fsspec (local paths, ``file://``, ``s3://``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from pipelines.errors import BadInputError

__all__ = ["COLUMNS", "parcel_polygons", "read_geoparquet", "write_geoparquet"]

#: Columns of :func:`parcel_polygons`, in order (``geometry`` last).
COLUMNS = ("parcel_id", "level", "area_m2", "perimeter_m", "parent_id", "geometry")


def _majority(ids: np.ndarray, values: np.ndarray) -> dict[int, int]:
    """The most frequent non-zero ``values`` inside each id > 0 (0 when none)."""
    sel = (ids > 0) & (values > 0)
    if not sel.any():
        return {}
    pairs = np.stack([ids[sel].astype("int64"), values[sel].astype("int64")], axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    order = np.lexsort((-counts, uniq[:, 0]))
    uniq = uniq[order]
    first = np.ones(len(uniq), dtype=bool)
    first[1:] = uniq[1:, 0] != uniq[:-1, 0]
    return {int(a): int(b) for a, b in uniq[first]}


def parcel_polygons(
    ids: np.ndarray,
    transform: Any,
    crs: Any,
    level: str,
    parents: np.ndarray | None = None,
) -> Any:
    """Polygons of the parcels of an id raster as a GeoDataFrame.

    ``ids``: (y, x) integer parcel ids (0 = not a parcel); ``transform``: its affine transform;
    ``crs``: a projected CRS in metres; ``level``: "fine" or "coarse"; ``parents``: (y, x) ids of
    the parent level (e.g. the coarse raster for the fine level) or None. Returns columns
    :data:`COLUMNS`: ``area_m2`` and ``perimeter_m`` of the dissolved geometry, ``parent_id`` the
    parent id covering most of the parcel (0 without ``parents``), one row per id, sorted.
    """
    import geopandas as gpd
    import pandas as pd
    import shapely
    from affine import Affine
    from pyproj import CRS
    from rasterio.features import shapes

    arr = np.asarray(ids)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError("ids", f"{arr.dtype} {arr.shape}", "a 2-D integer (y, x) id raster")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo("int32").max):
        raise BadInputError("ids", (int(arr.min()), int(arr.max())), "ids in 0..2**31-1")
    if level not in ("fine", "coarse"):
        raise BadInputError("level", level, "'fine' or 'coarse'")
    if not isinstance(transform, Affine):
        try:
            transform = Affine(*list(transform)[:6])
        except (TypeError, ValueError) as err:
            raise BadInputError("transform", transform, "an affine.Affine (6 numbers)") from err
    try:
        crs_obj = CRS.from_user_input(crs)
    except Exception as err:  # pyproj raises CRSError and others
        raise BadInputError("crs", crs, "a CRS such as 'EPSG:32650'") from err
    if not crs_obj.is_projected:
        raise BadInputError("crs", crs, "a projected CRS in metres (areas are in m2)")
    if parents is not None:
        parents = np.asarray(parents)
        if parents.shape != arr.shape or not np.issubdtype(parents.dtype, np.integer):
            raise BadInputError(
                "parents", f"{parents.dtype} {parents.shape}", f"integer ids of shape {arr.shape}"
            )

    data = arr.astype("int32")
    geoms: dict[int, list[Any]] = {}
    for geom, value in shapes(data, mask=data > 0, connectivity=4, transform=transform):
        geoms.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    pids = sorted(geoms)
    merged = [g[0] if len(g) == 1 else shapely.union_all(g) for g in (geoms[p] for p in pids)]
    parent = _majority(arr, parents) if parents is not None else {}
    frame = pd.DataFrame(
        {
            "parcel_id": np.asarray(pids, dtype="int64"),
            "level": pd.Series([level] * len(pids), dtype="string"),
            "parent_id": np.asarray([parent.get(p, 0) for p in pids], dtype="int64"),
        }
    )
    gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(merged, crs=crs_obj), crs=crs_obj)
    gdf["area_m2"] = gdf.geometry.area.astype("float64")
    gdf["perimeter_m"] = gdf.geometry.length.astype("float64")
    return gdf[list(COLUMNS)]


def write_geoparquet(gdf: Any, url: str) -> str:
    """Write ``gdf`` as GeoParquet to ``url`` (local path, file:// or s3://); returns ``url``."""
    import geopandas as gpd

    from pipelines import storage

    if not isinstance(gdf, gpd.GeoDataFrame):
        raise BadInputError("gdf", type(gdf).__name__, "a geopandas.GeoDataFrame")
    buf = io.BytesIO()
    gdf.to_parquet(buf, index=False, compression="zstd")
    storage.write_bytes(url, buf.getvalue())
    return url


def read_geoparquet(url: str) -> Any:
    """A GeoDataFrame from the GeoParquet at ``url`` (local path, file:// or s3://)."""
    import geopandas as gpd
    import pyarrow as pa

    from pipelines import storage

    # Arrow's own in-memory reader: its threads never call into Python, as they do for a
    # Python file object (pipelines.products.tables)
    return gpd.read_parquet(pa.BufferReader(storage.read_bytes(url)))
