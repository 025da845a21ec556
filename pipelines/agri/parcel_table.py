"""Per-parcel season table: the season feature cube averaged over each parcel.

:func:`parcel_table` turns a computed :func:`pipelines.agri.features.season_features` Dataset and a
(y, x) parcel id raster into one row per parcel id (ids > 0):

- ``area_px``: pixels of the parcel in the input;
- ``ndvi_dDDD``: mean NDVI on calendar day DDD; ``b02_dDDD`` .. ``b08_dDDD``: mean BGRN reflectance;
  ``vv_dDDD`` / ``vh_dDDD``: mean backscatter (dB);
- temporal statistics of those parcel-mean curves: ``ndvi_max``, ``ndvi_min``, ``ndvi_mean``,
  ``ndvi_argmax_doy``, ``b0X_mean``/``_std``/``_min``/``_max``, ``vv_``/``vh_`` ``mean``/``std``/
  ``min``/``max``, ``vh_early_min`` (minimum VH over days 130-200: flooded paddies after
  transplanting are dark), ``vh_minus_vv`` (mean VH - VV, dB);
- ``slope`` (degrees), ``hillshade`` (0-1), ``valid_fraction`` and ``clear_dates`` (clear S2
  dates within the calendar; NaN when the cube has none) parcel means; ``ndvi_weight_dDDD``: mean
  per-date optical weight (when the cube has ``ndvi_weight``); ``ndvi_sd``: mean
  over the calendar of the within-parcel NDVI standard deviation (texture);
- ``centroid_x`` / ``centroid_y``: the parcel's centroid in the grid's CRS (m on terrapipe's
  projected grids), the mean of its pixel centres (spatial context of the crop model); NaN
  when the features carry no x / y coordinates.

Tables of a large area are built tile by tile: :func:`parcel_sums` gives additive per-parcel sums
and counts, :func:`merge_sums` adds those of several tiles, :func:`finish_table` derives the
columns above; ``parcel_table = finish_table(parcel_sums(...))``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from pipelines.errors import BadInputError

#: Days of year over which the early-season VH minimum is taken (flooded paddies).
EARLY_VH_DOYS = (130, 200)
_BANDS = ("B02", "B03", "B04", "B08")
_POLS = ("VV", "VH")
_CENTROIDS = ("centroid_x", "centroid_y")
#: The tables' format: raised whenever their columns change (2: centroids), so that tables
#: cached by an earlier version are built again.
TABLE_FORMAT = 2


def _series_names(prefix: str, doys: np.ndarray) -> list[str]:
    return [f"{prefix}_d{int(d):03d}" for d in doys]


def _check(features: xr.Dataset, parcel_ids: np.ndarray) -> np.ndarray:
    missing = [v for v in ("ndvi", "reflectance", "sar") if v not in features]
    if missing:
        raise BadInputError(
            "features", sorted(features.data_vars), "a season_features Dataset", f"lacks {missing}"
        )
    ids = np.asarray(parcel_ids)
    shape = (features.sizes["y"], features.sizes["x"])
    if ids.shape != shape:
        raise BadInputError(
            "parcel_ids", ids.shape, f"a (y, x) array of the features' shape {shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise BadInputError("parcel_ids", str(ids.dtype), "non-negative integer parcel ids")
    return ids


def parcel_sums(features: xr.Dataset, parcel_ids: np.ndarray) -> pd.DataFrame:
    """Additive per-parcel sums of a computed feature Dataset (index parcel_id > 0).

    Columns: ``n`` (pixels), and for every per-pixel layer ``<name>`` its finite-value sum
    ``<name>__s`` and count ``<name>__n``; ``ndvi_sq_dDDD__s`` holds sums of squares (texture).
    """
    ids = _check(features, parcel_ids).ravel().astype(np.int64)
    sel = ids > 0
    if not sel.any():
        return pd.DataFrame(index=pd.Index([], name="parcel_id", dtype="int64"))
    uniq, inv = np.unique(ids[sel], return_inverse=True)
    n_par = len(uniq)
    doys = features["doy"].values
    layers: dict[str, np.ndarray] = {}
    ndvi = np.asarray(features["ndvi"].transpose("doy", "y", "x").values, dtype="float64")
    for name, plane in zip(_series_names("ndvi", doys), ndvi, strict=True):
        layers[name] = plane
    for name, plane in zip(_series_names("ndvi_sq", doys), ndvi**2, strict=True):
        layers[name] = plane
    if "ndvi_weight" in features:
        weight = features["ndvi_weight"].transpose("doy", "y", "x").values
        for name, plane in zip(_series_names("ndvi_weight", doys), weight, strict=True):
            layers[name] = np.asarray(plane, dtype="float64")
    refl = features["reflectance"].transpose("band", "doy", "y", "x")
    for band in _BANDS:
        cube = np.asarray(refl.sel(band=band).values, dtype="float64")
        for name, plane in zip(_series_names(band.lower(), doys), cube, strict=True):
            layers[name] = plane
    sar = features["sar"].transpose("pol", "doy", "y", "x")
    for pol in _POLS:
        cube = np.asarray(sar.sel(pol=pol).values, dtype="float64")
        for name, plane in zip(_series_names(pol.lower(), doys), cube, strict=True):
            layers[name] = plane
    for name in ("slope", "hillshade", "valid_fraction", "clear_dates"):
        if name in features:
            layers[name] = np.asarray(features[name].values, dtype="float64")
    if "x" in features.coords and "y" in features.coords:  # pixel centres in the grid's CRS
        ys, xs = np.meshgrid(
            features["y"].values.astype("float64"),
            features["x"].values.astype("float64"),
            indexing="ij",
        )
        layers["centroid_x"], layers["centroid_y"] = xs, ys
    cols: dict[str, np.ndarray] = {"n": np.bincount(inv, minlength=n_par).astype("float64")}
    for name, plane in layers.items():
        v = plane.ravel()[sel]
        ok = np.isfinite(v)
        cols[f"{name}__s"] = np.bincount(inv[ok], weights=v[ok], minlength=n_par)
        cols[f"{name}__n"] = np.bincount(inv[ok], minlength=n_par).astype("float64")
    return pd.DataFrame(cols, index=pd.Index(uniq, name="parcel_id"))


def merge_sums(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Add the :func:`parcel_sums` of several tiles (a parcel split by tile edges is summed)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(index=pd.Index([], name="parcel_id", dtype="int64"))
    return pd.concat(parts).groupby(level=0).sum()


def _mean(sums: pd.DataFrame, name: str) -> np.ndarray:
    n = sums[f"{name}__n"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums[f"{name}__s"].to_numpy() / np.maximum(n, 1), np.nan)


def finish_table(sums: pd.DataFrame) -> pd.DataFrame:
    """The parcel table (see module docstring) from merged :func:`parcel_sums`."""
    out: dict[str, np.ndarray] = {"area_px": sums["n"].to_numpy().astype("int64")}
    doys = sorted(
        int(c[len("ndvi_d") : len("ndvi_d") + 3])
        for c in sums.columns
        if c.startswith("ndvi_d") and c.endswith("__s")
    )
    doy_arr = np.asarray(doys)
    series: dict[str, np.ndarray] = {}
    for prefix in ("ndvi", *(b.lower() for b in _BANDS), *(p.lower() for p in _POLS)):
        names = _series_names(prefix, doy_arr)
        block = np.stack([_mean(sums, n) for n in names], axis=1)
        series[prefix] = block
        for j, n in enumerate(names):
            out[n] = block[:, j]
    for n in _series_names("ndvi_weight", doy_arr):
        if f"{n}__s" in sums:
            out[n] = _mean(sums, n)
    sq = np.stack([_mean(sums, n) for n in _series_names("ndvi_sq", doy_arr)], axis=1)
    with np.errstate(invalid="ignore"):
        out["ndvi_sd"] = np.nanmean(np.sqrt(np.maximum(sq - series["ndvi"] ** 2, 0.0)), axis=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nd = series["ndvi"]
        out["ndvi_max"] = np.nanmax(nd, axis=1)
        out["ndvi_min"] = np.nanmin(nd, axis=1)
        out["ndvi_mean"] = np.nanmean(nd, axis=1)
        arg = np.nanargmax(np.where(np.isfinite(nd), nd, -np.inf), axis=1)
        out["ndvi_argmax_doy"] = np.where(np.isfinite(out["ndvi_max"]), doy_arr[arg], np.nan)
        for prefix in (*(b.lower() for b in _BANDS), *(p.lower() for p in _POLS)):
            block = series[prefix]
            out[f"{prefix}_mean"] = np.nanmean(block, axis=1)
            out[f"{prefix}_std"] = np.nanstd(block, axis=1)
            out[f"{prefix}_min"] = np.nanmin(block, axis=1)
            out[f"{prefix}_max"] = np.nanmax(block, axis=1)
        early = (doy_arr >= EARLY_VH_DOYS[0]) & (doy_arr <= EARLY_VH_DOYS[1])
        out["vh_early_min"] = (
            np.nanmin(series["vh"][:, early], axis=1) if early.any() else np.full(len(sums), np.nan)
        )
        out["vh_minus_vv"] = np.nanmean(series["vh"] - series["vv"], axis=1)
    for name in ("slope", "hillshade", "valid_fraction", "clear_dates", *_CENTROIDS):
        out[name] = _mean(sums, name) if f"{name}__s" in sums else np.full(len(sums), np.nan)
    table = pd.DataFrame(out, index=sums.index.copy())
    # float64 kept for the centroids: metres of a UTM grid need 7+ digits
    keep = {"area_px", *_CENTROIDS}
    return table.astype({c: "float32" for c in table.columns if c not in keep})


def parcel_table(features: xr.Dataset, parcel_ids: np.ndarray) -> pd.DataFrame:
    """One row per parcel id > 0 of ``parcel_ids`` (y, x) over a computed ``features`` Dataset.

    Index ``parcel_id``; columns as in the module docstring (float32, ``area_px`` int64).
    """
    return finish_table(parcel_sums(features, parcel_ids))
