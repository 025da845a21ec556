"""ndvi_gapfilled: NDVI of every S2 date, with the pixels under cloud estimated from the pixel's own
clear dates and the SAR backscatter of the same days.

Radar sees through cloud: C-band VV and VH backscatter respond to canopy water and structure, so
they track vegetation where the optical view is blocked (Veloso et al. 2017, RSE 199; the
cross-ratio VH - VV rises with biomass). Per tile:

1. NDVI of each date on the pixels ``cloud_mask`` calls clear (cloud, shadow, cirrus, snow and
   nodata are gaps: the NDVI of snow is the snow's, not that of the vegetation under it).
2. A temporal prior for every (date, pixel): the linear interpolation in time of the pixel's
   clear NDVI on the nearest clear date before and after, *excluding the date itself* (one side
   only: that value), and the distance in days to the dates it used.
3. SAR of the date: the S1 acquisition nearest in time within :data:`SAR_MAX_DAYS` days (as
   super-resolution pairs them), Lee-filtered in dB (ENL 4.4, as water_mask), giving VV, VH and
   VH - VV.
4. A gradient-boosted regression (scikit-learn's HistGradientBoostingRegressor, which takes
   missing SAR or a missing prior as such) fitted on the tile's clear (date, pixel) samples,
   whose features are exactly what a cloudy pixel has: prior, its gap in days, VV, VH, VH - VV
   and day of year. Clear pixels keep their observed NDVI; gaps get the prediction.

Output ``ndvi`` (time, y, x) float32 NDVI (-1..1, NaN where the tile has nothing to fit on), and
``source`` (time, y, x) uint8 :data:`SOURCE_CLASSES`. The fit needs the whole tile's time series
at once: memory grows with dates x tile pixels (about 20 bytes per date and pixel).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.classes import CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import filters as F

#: An S1 acquisition stands for an S2 date when it is at most this many days away.
SAR_MAX_DAYS = 6
#: Lee filter of the SAR (window px, equivalent number of looks of S1 IW GRD; see water_mask).
LEE_WINDOW_PX, LEE_ENL = 5, 4.4
#: Fewest clear (date, pixel) samples the regression is fitted on; below, gaps stay NaN.
MIN_TRAIN_SAMPLES = 200
#: Most clear samples the regression is fitted on (a random subset; seeded).
MAX_TRAIN_SAMPLES = 50_000
#: ``source`` codes.
SOURCE_CLASSES = {0: "nodata", 1: "optical", 2: "estimated with SAR", 3: "estimated without SAR"}
RED, NIR = "B04", "B08"


def temporal_prior(ndvi: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-date-out temporal prior of ``ndvi`` (T, y, x; NaN = gap) on ``days`` (T,):
    (prior, gap in days to the farther of the dates used), NaN where no other date is clear."""
    t_n = ndvi.shape[0]
    prev_val = np.full(ndvi.shape, np.nan, np.float32)
    prev_day = np.full(ndvi.shape, np.nan, np.float32)
    next_val = np.full(ndvi.shape, np.nan, np.float32)
    next_day = np.full(ndvi.shape, np.nan, np.float32)
    for t in range(1, t_n):  # last clear value strictly before t
        ok = np.isfinite(ndvi[t - 1])
        prev_val[t] = np.where(ok, ndvi[t - 1], prev_val[t - 1])
        prev_day[t] = np.where(ok, days[t - 1], prev_day[t - 1])
    for t in range(t_n - 2, -1, -1):  # first clear value strictly after t
        ok = np.isfinite(ndvi[t + 1])
        next_val[t] = np.where(ok, ndvi[t + 1], next_val[t + 1])
        next_day[t] = np.where(ok, days[t + 1], next_day[t + 1])
    here = days.astype(np.float32)[:, None, None]
    span = next_day - prev_day
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (here - prev_day) / span, 0.5)
        both = prev_val + w * (next_val - prev_val)
    prior = np.where(
        np.isfinite(prev_val) & np.isfinite(next_val),
        both,
        np.where(np.isfinite(prev_val), prev_val, next_val),
    ).astype(np.float32)
    gap = np.fmax(here - prev_day, next_day - here).astype(np.float32)
    gap = np.where(np.isfinite(prior), gap, np.nan).astype(np.float32)
    return prior, gap


def _fill_block(
    red: np.ndarray,
    nir: np.ndarray,
    clear: np.ndarray,
    vv: np.ndarray,
    vh: np.ndarray,
    days: np.ndarray,
    doy: np.ndarray,
    seed: int,
) -> np.ndarray:
    """(2, T, y, x) float32: gap-filled NDVI and its source code, for one whole tile."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    with np.errstate(invalid="ignore", divide="ignore"):
        total = nir + red
        ndvi = np.where(clear & (total > 1e-6), (nir - red) / total, np.nan)
    ndvi = np.clip(ndvi, -1.0, 1.0).astype(np.float32)
    observed = np.isfinite(ndvi)
    valid = (np.isfinite(red) & np.isfinite(nir)) | np.isfinite(vv)
    prior, gap = temporal_prior(ndvi, days)
    doy_plane = np.broadcast_to(doy.astype(np.float32)[:, None, None], ndvi.shape)
    features = np.stack([prior, gap, vv, vh, vh - vv, doy_plane], axis=-1).reshape(-1, 6)
    target = ndvi.reshape(-1)
    train = np.flatnonzero(observed.reshape(-1))
    out = np.where(observed, ndvi, np.nan).astype(np.float32)
    source = np.where(observed, 1, 0).astype(np.float32)
    todo = (~observed) & valid
    if train.size >= MIN_TRAIN_SAMPLES and todo.any():
        rng = np.random.default_rng(seed)
        if train.size > MAX_TRAIN_SAMPLES:
            train = rng.choice(train, MAX_TRAIN_SAMPLES, replace=False)
        # Features no training sample has (no SAR on any date: all NaN) are left out.
        used = np.isfinite(features[train]).any(axis=0)
        model = HistGradientBoostingRegressor(max_iter=150, random_state=seed)
        model.fit(features[train][:, used], target[train])
        gaps = np.flatnonzero(todo.reshape(-1))
        predicted = model.predict(features[gaps][:, used])
        predicted = np.clip(predicted, -1.0, 1.0).astype(np.float32)
        out.reshape(-1)[gaps] = predicted
        has_sar = np.isfinite(vv).reshape(-1)[gaps]
        source.reshape(-1)[gaps] = np.where(has_sar, 2, 3)
    return np.stack([out, source])


def _days(times: np.ndarray) -> np.ndarray:
    return ((times - times[0]) / np.timedelta64(1, "D")).astype(np.float64)


def nearest_sar(
    s2_times: np.ndarray, s1_times: np.ndarray, max_days: float = SAR_MAX_DAYS
) -> list[int | None]:
    """Per S2 date, the index of the S1 date nearest in time within ``max_days`` days."""
    picks: list[int | None] = []
    for t in s2_times:
        if s1_times.size == 0:
            picks.append(None)
            continue
        gaps = np.abs((s1_times - t) / np.timedelta64(1, "D")).astype(np.float64)
        best = int(np.argmin(gaps))
        picks.append(best if gaps[best] <= max_days else None)
    return picks


def ndvi_gapfilled(
    s2: xr.DataArray,
    cloud_mask: xr.DataArray,
    s1: xr.DataArray | None = None,
    *,
    seed: int = 0,
) -> xr.Dataset:
    """NDVI of every S2 date with its cloud gaps filled from the clear dates and the SAR.

    ``s2``: (time, band, y, x) reflectance with B04 and B08; ``cloud_mask``: (time, y, x)
    CloudClass of the same dates (only CLEAR is observed); ``s1``: (time, band [VV, VH], y, x)
    backscatter in dB on the same grid, or None (gaps then filled from the clear dates only).
    ``seed``: of the training subset and the regression. Returns a Dataset of ``ndvi`` (time, y,
    x) float32 and ``source`` (time, y, x) uint8 (module docstring).
    """
    s2 = F.require_dims(s2, "s2", ("time", "band", "y", "x"))
    F.require_bands(s2, "s2", (RED, NIR))
    cloud_mask = F.require_dims(cloud_mask, "cloud_mask", ("time", "y", "x"))
    if cloud_mask.sizes["time"] != s2.sizes["time"]:
        raise BadInputError(
            "cloud_mask.time", cloud_mask.sizes["time"], f"{s2.sizes['time']} dates, as s2"
        )
    shape = (s2.sizes["y"], s2.sizes["x"])
    red = F.as_dask(s2.sel(band=RED)).data.rechunk((-1, -1, -1)).astype(np.float32)
    nir = F.as_dask(s2.sel(band=NIR)).data.rechunk((-1, -1, -1)).astype(np.float32)
    clear = F.as_dask(cloud_mask).data.rechunk((-1, -1, -1)) == int(CloudClass.CLEAR)
    times = s2["time"].values
    if s1 is not None:
        s1 = F.require_dims(s1, "s1", ("time", "band", "y", "x"))
        F.require_bands(s1, "s1", ("VV", "VH"))
        if (s1.sizes["y"], s1.sizes["x"]) != shape:
            raise BadInputError("s1.shape", (s1.sizes["y"], s1.sizes["x"]), f"{shape}, as s2")
    picks = nearest_sar(times, s1["time"].values) if s1 is not None else [None] * len(times)
    nan_plane = da.full(shape, np.nan, dtype=np.float32, chunks=-1)
    planes: dict[str, list[da.Array]] = {"VV": [], "VH": []}
    for pol in planes:
        filtered = None
        if s1 is not None:
            db = F.as_dask(s1.sel(band=pol).astype(np.float32)).data
            filtered = F.lee_filter(db, LEE_WINDOW_PX, LEE_ENL)
        for k in picks:
            planes[pol].append(nan_plane if k is None or filtered is None else filtered[k])
    vv = da.stack(planes["VV"]).rechunk((-1, -1, -1))
    vh = da.stack(planes["VH"]).rechunk((-1, -1, -1))
    doy = np.array([np.datetime64(t, "D").astype(object).timetuple().tm_yday for t in times])
    both = da.map_blocks(
        _fill_block,
        red,
        nir,
        clear,
        vv,
        vh,
        days=_days(times),
        doy=doy,
        seed=seed,
        new_axis=0,
        chunks=((2,), *red.chunks),
        dtype=np.float32,
    )
    coords: dict[str, Any] = {"time": times, "y": s2["y"].values, "x": s2["x"].values}
    dims = ("time", "y", "x")
    ndvi = xr.DataArray(
        both[0], coords=coords, dims=dims, attrs={"units": "1", "long_name": "NDVI"}
    )
    source = xr.DataArray(
        both[1].astype(np.uint8), coords=coords, dims=dims, attrs={"classes": str(SOURCE_CLASSES)}
    )
    return xr.Dataset({"ndvi": ndvi, "source": source})
