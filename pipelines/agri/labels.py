"""Field labels for the few-shot crop model: reading, checking, and the label budget.

Labels are GeoJSON (or any vector file geopandas reads) points or polygons in WGS84 with a
``crop`` property naming one of the province calendar's crops. :func:`read_labels` checks them
(inside the AOI, known crop names, at least ``MIN_PER_CROP`` per crop) and reprojects them to the
processing CRS; :func:`labels_to_parcels` assigns them to parcel ids, and
:func:`label_windows` / :func:`label_rows` give each label the pixels that describe its own
field (a point: its parcel's pixels within ``LABEL_WINDOW_M``), so that a label on a parcel
merged with its neighbours under cloud still teaches its own crop. A survey stays within
:func:`label_budget` (``MAX_PER_10000_KM2`` per 10,000 km2 or ``MIN_PER_CROP`` per crop,
whichever is more).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import BadInputError

if TYPE_CHECKING:
    import geopandas as gpd

#: Fewest labels per crop the crop model accepts.
MIN_PER_CROP = 3
#: Label budget of a field survey: labels per 10,000 km2 (or MIN_PER_CROP per crop if more).
MAX_PER_10000_KM2 = 40
#: Radius (m) around a point label within which its parcel's pixels describe the labelled field:
#: the extended window of observation of the LUCAS field survey (a circle of 20 m radius around
#: the point; Eurostat, LUCAS 2018 technical reference document C1, instructions for surveyors),
#: several times the few metres of a handheld GNSS position's error.
LABEL_WINDOW_M = 20.0


def label_budget(area_km2: float, n_crops: int) -> int:
    """Labels a survey of ``area_km2`` with ``n_crops`` crops may hold."""
    return max(int(MAX_PER_10000_KM2 * area_km2 / 10_000.0), MIN_PER_CROP * n_crops)


def _read_frame(source: Any) -> gpd.GeoDataFrame:
    import geopandas as gpd

    if isinstance(source, dict):
        try:
            return gpd.GeoDataFrame.from_features(source, crs="EPSG:4326")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(
                "labels", "<mapping>", "a GeoJSON FeatureCollection", str(exc)
            ) from None
    from pipelines import storage

    path = str(source)
    try:
        if "://" in path and not path.startswith("file://"):
            return gpd.GeoDataFrame.from_features(
                json.loads(storage.read_text(path)), crs="EPSG:4326"
            )
        return gpd.read_file(path.removeprefix("file://"))
    except FileNotFoundError:
        raise BadInputError("labels", path, "a label GeoJSON file that exists") from None
    except Exception as exc:  # pyogrio / json errors: the file is not a vector file
        if "No such file" in str(exc) or "does not exist" in str(exc):
            raise BadInputError("labels", path, "a label GeoJSON file that exists") from None
        raise BadInputError(
            "labels", path, "a readable GeoJSON of points or polygons", str(exc)
        ) from None


def read_labels(
    path_or_url: Any, aoi_geometry: Any, crs: str, crops: Sequence[str]
) -> gpd.GeoDataFrame:
    """Read and check field labels; returns a GeoDataFrame (crop, geometry) in ``crs``.

    ``path_or_url``: GeoJSON path / fsspec URL or a GeoJSON mapping (WGS84); ``aoi_geometry``:
    shapely geometry of the AOI in WGS84; ``crops``: valid crop names. Raises BadInputError for
    a missing ``crop`` property, unknown crop names, labels outside the AOI, or fewer than
    ``MIN_PER_CROP`` labels of some crop.
    """
    crops = [str(c) for c in crops]
    gdf = _read_frame(path_or_url)
    if len(gdf) == 0:
        raise BadInputError("labels", 0, f">= {MIN_PER_CROP} labels per crop of {crops}")
    if "crop" not in gdf.columns:
        raise BadInputError(
            "labels.crop", sorted(c for c in gdf.columns if c != "geometry"), "a 'crop' property"
        )
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    gdf = gdf.to_crs("EPSG:4326")
    bad_geom = gdf.geometry.isna() | gdf.geometry.is_empty
    bad_geom |= ~gdf.geom_type.isin(["Point", "MultiPoint", "Polygon", "MultiPolygon"])
    if bad_geom.any():
        raise BadInputError(
            "labels.geometry",
            list(gdf.index[bad_geom][:5]),
            "Point or Polygon geometries",
        )
    names = gdf["crop"].astype(str).str.strip().str.lower()
    unknown = sorted(set(names) - set(crops))
    if unknown:
        raise BadInputError("labels.crop", unknown, f"crop names of the calendar: {crops}")
    outside = ~gdf.geometry.within(aoi_geometry)
    if outside.any():
        shown = [
            [round(v, 5) for v in g.representative_point().coords[0]]
            for g in gdf.geometry[outside][:3]
        ]
        raise BadInputError(
            "labels.geometry",
            shown,
            "labels inside the AOI",
            f"{int(outside.sum())} of {len(gdf)} labels lie outside it",
        )
    counts = Counter(names)
    short = {c: counts.get(c, 0) for c in crops if counts.get(c, 0) < MIN_PER_CROP}
    if short:
        raise BadInputError(
            "labels",
            short,
            f">= {MIN_PER_CROP} labels for every crop of {crops} (got {len(gdf)} labels)",
        )
    out = gdf.assign(crop=names)[["crop", "geometry"]]
    return out.to_crs(crs).reset_index(drop=True)


def labels_to_parcels(labels: Any, parcel_ids: np.ndarray, transform: Any) -> dict[int, str]:
    """Parcel id -> crop of the labels (GeoDataFrame in the raster's CRS).

    Points take the parcel under them; polygons the parcel covering most of their pixels. Labels
    on id 0 are dropped; a parcel labelled twice keeps its most frequent crop.
    """
    from rasterio.features import rasterize
    from rasterio.transform import rowcol

    ids = np.asarray(parcel_ids)
    votes: dict[int, Counter] = {}
    for crop, geom in zip(labels["crop"], labels.geometry, strict=True):
        if geom.geom_type in ("Point", "MultiPoint"):
            pts = list(getattr(geom, "geoms", [geom]))
            found = []
            for p in pts:
                r, c = rowcol(transform, p.x, p.y)
                if 0 <= r < ids.shape[0] and 0 <= c < ids.shape[1]:
                    found.append(int(ids[r, c]))
        else:
            mask = rasterize([(geom, 1)], out_shape=ids.shape, transform=transform, fill=0)
            under = ids[mask.astype(bool)]
            under = under[under > 0]
            found = [int(np.bincount(under).argmax())] if under.size else []
        for pid in found:
            if pid > 0:
                votes.setdefault(pid, Counter())[str(crop)] += 1
    return {pid: v.most_common(1)[0][0] for pid, v in votes.items()}


def label_key(crop: str, geometry: Any) -> str:
    """A label's identity across edits of its file: a digest of its crop and geometry (WKB)."""
    import hashlib

    return hashlib.sha256(str(crop).encode() + geometry.wkb).hexdigest()[:16]


def label_windows(
    labels: Any, parcel_ids: np.ndarray, transform: Any, radius_px: float
) -> np.ndarray:
    """(Y, X) int64: ``k + 1`` on the pixels that describe label ``k`` (its row in ``labels``, a
    GeoDataFrame in the raster's CRS), 0 elsewhere.

    A point: the pixels of the parcel under it within ``radius_px`` pixels of it (its own field,
    even where the parcel merged several); a polygon: its pixels that lie on parcels (id > 0).
    Points on id 0 or outside the raster have no window; a later label's window wins where two
    overlap."""
    from rasterio.features import rasterize
    from rasterio.transform import rowcol

    ids = np.asarray(parcel_ids)
    out = np.zeros(ids.shape, np.int64)
    yy, xx = np.ogrid[: ids.shape[0], : ids.shape[1]]
    for k, geom in enumerate(labels.geometry):
        if geom.geom_type in ("Point", "MultiPoint"):
            for point in getattr(geom, "geoms", [geom]):
                r, c = rowcol(transform, point.x, point.y)
                if not (0 <= r < ids.shape[0] and 0 <= c < ids.shape[1]) or ids[r, c] == 0:
                    continue
                near = (yy - r) ** 2 + (xx - c) ** 2 <= radius_px**2
                out[near & (ids == ids[r, c])] = k + 1
        else:
            mask = rasterize([(geom, 1)], out_shape=ids.shape, transform=transform, fill=0)
            out[mask.astype(bool) & (ids > 0)] = k + 1
    return out


def label_rows(features: Any, labels: Any, parcel_ids: np.ndarray, transform: Any) -> Any:
    """The parcel-table row (:func:`pipelines.agri.parcel_table.parcel_table`) of every label's
    window (:func:`label_windows`, radius ``LABEL_WINDOW_M``) over a computed season
    ``features`` Dataset: index the :func:`label_key`, plus a ``crop`` column. Labels without a
    window (on no parcel, outside the raster) have no row."""
    import pandas as pd

    from pipelines.agri.parcel_table import parcel_table

    radius_px = LABEL_WINDOW_M / abs(float(transform.a))
    windows = label_windows(labels, parcel_ids, transform, radius_px)
    if not windows.any():
        return pd.DataFrame(columns=["crop"], index=pd.Index([], name="label_key"))
    rows = parcel_table(features, windows).copy()  # one block: the crop column joins it
    picked = labels.iloc[rows.index.to_numpy() - 1]
    rows.index = pd.Index(
        [label_key(c, g) for c, g in zip(picked["crop"], picked.geometry, strict=True)],
        name="label_key",
    )
    rows["crop"] = picked["crop"].astype(str).to_numpy()
    return rows


def split_labels(labels: Any, rows: Any) -> tuple[Any, Any]:
    """The label-window rows (:func:`label_rows`, index :func:`label_key`) of the ``labels``
    that have one, and the labels that have none (added after the windows were taken, or on no
    parcel): these take their whole parcel (:func:`labels_to_parcels`)."""
    keys = [label_key(c, g) for c, g in zip(labels["crop"], labels.geometry, strict=True)]
    has_row = np.array([k in rows.index for k in keys], dtype=bool)
    picked = [k for k, ok in zip(keys, has_row, strict=True) if ok]
    return rows.loc[picked], labels[~has_row]
