"""season_features: a season's S2 / S1 / DEM observations resampled onto a fixed calendar.

The agri stages (parcels, crop_type, yield) compare pixels and parcels across dates, which needs
every pixel on the same dates whatever the clouds did. :func:`season_features` builds that cube:

- S2 dates are cloud-masked with the ``cloud_mask`` stage (SCL or spectral rules; when neither
  SCL nor the spectral bands are present, every finite BGRN observation counts as clear).
- Each pixel's clear observations are linearly interpolated in time onto the calendar
  ``doy = start_doy, start_doy + step_days, ... <= end_doy`` (day of year of ``season``). Before
  the first and after the last clear observation the nearest one is held, so a value is NaN only
  where the pixel was never observed clear. Dates up to ``MARGIN_DAYS`` outside the calendar
  (e.g. late February) anchor the ends; the rest of the input's dates are ignored.
- S1 VV/VH (dB) get the same treatment (every finite value is an observation): ``sar``; and
  ``sar_filtered``, the same after the multi-temporal speckle filter over the season's stack
  (:func:`multitemporal_filter_np`, Quegan & Yu 2001), for the parcel segmentation. Parcel
  means take the unfiltered ``sar``: averaging over a parcel removes the speckle without the
  filter's window reaching into the neighbouring fields.
- ``clear_dates`` counts each pixel's clear S2 dates within the calendar: how much of its NDVI
  curve is observed rather than interpolated (the agri steps weigh SAR against NDVI by it);
  ``ndvi_weight`` says it per calendar date (:func:`optical_weight_by_date`): the crop
  features fuse each date's NDVI with the SAR by it.
- Slope (degrees) and hillshade (0-1, sun azimuth 315 deg, altitude 45 deg) come from the DEM.

Lazy in, lazy out: the temporal work is one ``xr.apply_ufunc(dask="parallelized")`` per input
with ``time`` as the core dimension, chunked in y/x like the input (a chunk holds every date of its
pixels, so memory per chunk is dates x bands x chunk pixels x 4 bytes).
"""

from __future__ import annotations

from collections.abc import Hashable

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from pipelines.classes import CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import filters as F

__all__ = [
    "BGRN",
    "CHUNK_PX",
    "MARGIN_DAYS",
    "POLS",
    "calendar_doys",
    "interp_calendar",
    "multitemporal_filter_np",
    "optical_weight",
    "optical_weight_by_date",
    "season_features",
    "slope_hillshade",
]

#: Reflectance bands kept in the cube, in this order.
BGRN: tuple[str, ...] = ("B02", "B03", "B04", "B08")
#: SAR polarisations kept in the cube, in this order.
POLS: tuple[str, ...] = ("VV", "VH")
#: Dates this many days outside [start_doy, end_doy] still anchor the interpolation.
MARGIN_DAYS = 45
#: Chunk size (px) of the temporal work in y and x: every date of a 256 x 256 block and one band
#: at a time keeps a task's memory to tens of MB whatever the tile size.
CHUNK_PX = 256
#: Spatial window (px) of the local means of the multi-temporal speckle filter: the window of the
#: Lee filter the SAR stages use (``pipelines.stages.gapfill.LEE_WINDOW_PX``, 5 px); 25 pixels of
#: ENL 4.4 give the local mean about 110 looks, so its own speckle is negligible.
MT_WINDOW_PX = 5
_SUN_AZIMUTH_DEG = 315.0
_SUN_ALTITUDE_DEG = 45.0


def calendar_doys(start_doy: int = 60, end_doy: int = 330, step_days: int = 10) -> np.ndarray:
    """The calendar: day-of-year ints ``start_doy..end_doy`` every ``step_days`` (end included
    when it falls on a step)."""
    for name, value in (("start_doy", start_doy), ("end_doy", end_doy), ("step_days", step_days)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise BadInputError(name, value, "an integer number of days")
    if not 1 <= start_doy <= 366:
        raise BadInputError("start_doy", start_doy, "a day of year in 1..366")
    if not start_doy < end_doy <= 366:
        raise BadInputError("end_doy", end_doy, f"a day of year in {start_doy + 1}..366")
    if not 1 <= step_days <= end_doy - start_doy:
        raise BadInputError("step_days", step_days, f"1..{end_doy - start_doy} days")
    return np.arange(start_doy, end_doy + 1, step_days, dtype="int64")


def _calendar_weights(t_obs: np.ndarray, t_cal: np.ndarray) -> np.ndarray:
    """(T, C) matrix: a series sampled at every ``t_obs`` times it is its linear interpolation at
    ``t_cal`` (held constant outside ``t_obs``)."""
    n_t, n_c = len(t_obs), len(t_cal)
    w = np.zeros((n_t, n_c), dtype="float64")
    for c, t in enumerate(t_cal):
        k = int(np.searchsorted(t_obs, t, side="right"))  # t_obs[k-1] <= t < t_obs[k]
        if k == 0:
            w[0, c] = 1.0
        elif k == n_t or t_obs[k] == t_obs[k - 1]:
            w[k - 1, c] = 1.0
        else:
            f = (t - t_obs[k - 1]) / (t_obs[k] - t_obs[k - 1])
            w[k - 1, c], w[k, c] = 1.0 - f, f
    return w


def interp_calendar(values: np.ndarray, t_obs: np.ndarray, t_cal: np.ndarray) -> np.ndarray:
    """Linear interpolation along the last axis from times ``t_obs`` onto ``t_cal``.

    ``values``: (..., T) float, NaN = not observed; ``t_obs``: (T,) non-decreasing days;
    ``t_cal``: (C,) days. Returns (..., C) float32; outside a pixel's observed span its nearest
    observation is held; NaN where the pixel has no observation at all.

    Each pixel's gaps are first filled on the observation dates (linearly between its nearest
    observations, held at the ends): the filled series' piecewise-linear curve is the one through
    the observations, so sampling it on the calendar is one (T, C) matrix product for all pixels.
    """
    values = np.asarray(values, dtype="float32")
    lead, n_t = values.shape[:-1], values.shape[-1]
    n_c = len(t_cal)
    if n_t == 0 or values.size == 0:
        return np.full((*lead, n_c), np.nan, dtype="float32")
    t_obs = np.asarray(t_obs, dtype="float64")
    # (T, P): each date a contiguous vector (no copy when the caller's memory is time-first, as
    # apply_ufunc's moved core dim is).
    series = np.ascontiguousarray(np.moveaxis(values, -1, 0).reshape(n_t, -1))
    # Forward pass: value and date of the last observation at or before each date; backward
    # pass: of the first at or after. NaN date = none on that side.
    v_prev = np.empty_like(series)
    t_prev = np.empty(series.shape, dtype="float32")
    v, tv = np.full(series.shape[1], np.nan, "float32"), np.full(series.shape[1], np.nan, "float32")
    for i in range(n_t):
        ok = np.isfinite(series[i])
        v = np.where(ok, series[i], v)
        tv = np.where(ok, np.float32(t_obs[i]), tv)
        v_prev[i], t_prev[i] = v, tv
    filled = np.empty_like(series)
    v, tv = np.full(series.shape[1], np.nan, "float32"), np.full(series.shape[1], np.nan, "float32")
    for i in range(n_t - 1, -1, -1):
        ok = np.isfinite(series[i])
        v = np.where(ok, series[i], v)
        tv = np.where(ok, np.float32(t_obs[i]), tv)
        span = tv - t_prev[i]
        frac = np.where(
            span > 0, (np.float32(t_obs[i]) - t_prev[i]) / np.where(span > 0, span, 1), 0
        )
        inside = v_prev[i] + frac * (v - v_prev[i])
        # Only one side observed: that observation is held (the first before, the last after).
        filled[i] = np.where(np.isnan(tv), v_prev[i], np.where(np.isnan(t_prev[i]), v, inside))
    weights = _calendar_weights(t_obs, np.asarray(t_cal, dtype="float64")).astype("float32")
    out = weights.T @ filled  # (C, P); NaN rows stay NaN (never observed)
    return np.moveaxis(out.reshape(n_c, *lead), 0, -1)


def multitemporal_filter_np(db: np.ndarray, window: int = MT_WINDOW_PX) -> np.ndarray:
    """Multi-temporal speckle filter (Quegan & Yu 2001, IEEE TGRS 39(11)) of a (T, Y, X) dB stack.

    In linear intensity: ``J_k = E[I_k] / N * sum_i I_i / E[I_i]``, ``E`` the local mean over a
    ``window`` x ``window`` box and the sum over the N dates observed at the pixel. The ratio
    ``I_i / E[I_i]`` keeps each pixel's own structure (a field border one pixel wide) and its
    average over N dates has N times the looks (ENL 4.4 per S1 IW GRDH date), while ``E[I_k]``
    keeps each date's level. Returns float32 dB, NaN where the input is NaN.
    """
    db = np.asarray(db, dtype="float32")
    ok = np.isfinite(db)
    lin = np.power(np.float32(10.0), db / np.float32(10.0), dtype="float32")
    lin[~ok] = np.nan  # not observed (NaN, or an infinite dB): out of every local mean
    local = F.box_mean_np(lin, window)  # each date's local mean of its observed pixels
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(ok & (local > 0), lin / local, np.nan)
        n = np.isfinite(ratio).sum(axis=0)
        mean_ratio = np.where(n > 0, np.nansum(ratio, axis=0) / np.maximum(n, 1), np.nan)
        out = local * mean_ratio[None]
        return np.where(ok & (out > 0), np.float32(10.0) * np.log10(out), np.nan).astype("float32")


def optical_weight(clear_dates: np.ndarray, n_calendar: int) -> np.ndarray:
    """Weight (0..1) of the optical NDVI curve against the SAR of a pixel or parcel with
    ``clear_dates`` clear S2 dates on a calendar of ``n_calendar`` dates.

    ``min(1, clear_dates / n_calendar)``: with at least one clear date per calendar date every
    calendar value is an interpolation between clear observations one calendar step apart, and the
    NDVI curve alone decides (the SAR terms drop out exactly); with fewer, the calendar values are
    interpolated over gaps longer than the step in proportion, and the SAR, which sees through
    cloud, takes the rest. NaN counts weigh 0.
    """
    if isinstance(n_calendar, bool) or not isinstance(n_calendar, int | np.integer):
        raise BadInputError("n_calendar", n_calendar, "an integer number of calendar dates")
    if n_calendar < 1:
        raise BadInputError("n_calendar", n_calendar, "at least 1 calendar date")
    c = np.nan_to_num(np.asarray(clear_dates, dtype="float32"), nan=0.0)
    return np.clip(c / np.float32(n_calendar), 0.0, 1.0).astype("float32")


def optical_weight_by_date(
    clear: np.ndarray, t_obs: np.ndarray, t_cal: np.ndarray, step_days: float
) -> np.ndarray:
    """Weight (0..1) of each calendar value of the optical NDVI curve against the SAR, per date.

    ``clear``: (..., T) bool, the pixel's S2 observation at ``t_obs`` (T,) days (non-decreasing)
    is clear; ``t_cal``: (C,) calendar days; ``step_days``: the calendar step. Returns (..., C)
    float32: ``min(1, step_days / span)``, ``span`` the days between the clear observations that
    bracket the calendar date (the interval its value is interpolated over; 0 on a clear date).
    A value held beyond the first or last clear observation, or of a pixel never clear, weighs 0.

    The per-date form of :func:`optical_weight`: that one spreads ``clear / calendar dates``
    evenly over the season, so a pixel whose clear dates all fall before sowing got the same
    weight at its green-up, interpolated over two months of cloud, as on its clear dates. Here
    the interpolation span of each calendar value decides: a value between clear dates one
    calendar step apart or closer is observed (weight 1, the SAR drops out), one interpolated
    over a gap k steps long keeps 1 / k (the straight line over the gap is that much less of a
    measurement). No demo figure enters it.
    """
    if isinstance(step_days, bool) or not np.isfinite(step_days) or step_days <= 0:
        raise BadInputError("step_days", step_days, "a positive calendar step in days")
    clear = np.asarray(clear, dtype=bool)
    t_obs = np.asarray(t_obs, dtype="float64")
    t_cal = np.asarray(t_cal, dtype="float64")
    if clear.shape[-1] != len(t_obs):
        raise BadInputError(
            "clear", clear.shape, f"(..., T) with T = {len(t_obs)} observation dates (t_obs)"
        )
    lead, n_t = clear.shape[:-1], clear.shape[-1]
    if n_t == 0:
        return np.zeros((*lead, len(t_cal)), dtype="float32")
    series = np.moveaxis(clear, -1, 0).reshape(n_t, -1)
    # last clear date at or before each observation date, first at or after (NaN: none)
    t_prev = np.empty(series.shape, dtype="float64")
    t_next = np.empty(series.shape, dtype="float64")
    last = np.full(series.shape[1], np.nan)
    for i in range(n_t):
        last = np.where(series[i], t_obs[i], last)
        t_prev[i] = last
    last = np.full(series.shape[1], np.nan)
    for i in range(n_t - 1, -1, -1):
        last = np.where(series[i], t_obs[i], last)
        t_next[i] = last
    out = np.zeros((len(t_cal), series.shape[1]), dtype="float32")
    for c, t in enumerate(t_cal):
        i_le = int(np.searchsorted(t_obs, t, side="right")) - 1
        i_ge = int(np.searchsorted(t_obs, t, side="left"))
        if i_le < 0 or i_ge >= n_t:
            continue  # held beyond the season's dates: no observation brackets it
        span = t_next[i_ge] - t_prev[i_le]
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(span <= step_days, 1.0, step_days / span)
        out[c] = np.where(np.isfinite(span), w, 0.0)
    return np.moveaxis(out.reshape(len(t_cal), *lead), 0, -1)


def _season_doy(times: xr.DataArray, season: int) -> np.ndarray:
    """Fractional day of year of ``times`` in ``season`` (1.0 = 1 January 00:00; may be < 1)."""
    t = pd.DatetimeIndex(np.asarray(times.values, dtype="datetime64[ns]"))
    origin = pd.Timestamp(year=season, month=1, day=1)
    return ((t - origin) / pd.Timedelta(days=1)).to_numpy(dtype="float64") + 1.0


def _to_calendar(obs: xr.DataArray, t_obs: np.ndarray, doys: np.ndarray, name: str) -> xr.DataArray:
    """apply_ufunc of :func:`interp_calendar` with ``time`` as the core dim -> ``doy``."""
    obs = obs.chunk({"time": -1})
    out = xr.apply_ufunc(
        interp_calendar,
        obs,
        kwargs={"t_obs": t_obs, "t_cal": doys.astype("float64")},
        input_core_dims=[["time"]],
        output_core_dims=[["doy"]],
        dask="parallelized",
        output_dtypes=["float32"],
        dask_gufunc_kwargs={"output_sizes": {"doy": len(doys)}},
    )
    out = out.assign_coords(doy=doys)
    return out.rename(name)


def _select_window(
    arr: xr.DataArray, season: int, lo: int, hi: int
) -> tuple[xr.DataArray, np.ndarray]:
    """Dates of ``arr`` whose season day-of-year is within [lo, hi], sorted, and their DOYs."""
    doy = _season_doy(arr["time"], season)
    keep = np.flatnonzero((doy >= lo) & (doy < hi + 1))
    order = keep[np.argsort(doy[keep], kind="stable")]
    return arr.isel(time=order), doy[order]


def _clear_mask(s2: xr.DataArray, present: list[str]) -> xr.DataArray:
    """(time, y, x) bool: S2 observation clear (cloud_mask stage; finite BGRN when it can't run)."""
    finite = s2.sel(band=list(BGRN)).notnull().all("band")
    if "SCL" in present or all(b in present for b in ("B11", "B12")):
        from pipelines.stages.cloud_mask import cloud_mask

        return (cloud_mask(s2) == CloudClass.CLEAR) & finite
    return finite


def slope_hillshade(
    dem: xr.DataArray, pixel_m: float | None = None
) -> tuple[xr.DataArray, xr.DataArray]:
    """Slope (degrees) and hillshade (0-1; sun azimuth 315 deg, altitude 45 deg) of a (y, x) DEM.

    Gradients are central differences (``numpy.gradient``, one-sided at the grid edge) over a
    1-pixel halo between chunks; ``pixel_m`` is the
    pixel size in metres (from the ``x`` coordinate when None). NaN heights give NaN.
    """
    dem = F.require_dims(dem, "dem", ("y", "x"))
    res = float(pixel_m) if pixel_m is not None else F.pixel_size_m(dem)
    data = F.as_dask(dem.astype("float32")).data
    az = np.deg2rad(360.0 - _SUN_AZIMUTH_DEG + 90.0)
    zen = np.deg2rad(90.0 - _SUN_ALTITUDE_DEG)

    def _terrain(block: np.ndarray, which: int) -> np.ndarray:
        if min(block.shape) < 2:
            dzdy = dzdx = np.zeros(block.shape)
        else:
            dzdy, dzdx = np.gradient(block.astype("float64"), res)
        slope = np.arctan(np.hypot(dzdx, dzdy))
        if which == 0:
            return np.degrees(slope).astype("float32")
        aspect = np.arctan2(dzdy, -dzdx)
        shade = np.cos(zen) * np.cos(slope) + np.sin(zen) * np.sin(slope) * np.cos(az - aspect)
        return np.clip(shade, 0.0, 1.0).astype("float32")

    if min(s for c in data.chunks for s in c) < 2:
        data = data.rechunk(-1)
    depth = {ax: 1 if data.shape[ax] > 2 else 0 for ax in (0, 1)}
    slope_d, shade_d = (
        da.map_overlap(_terrain, data, depth=depth, boundary="none", dtype="float32", which=w)
        for w in (0, 1)
    )
    coords = {k: v for k, v in dem.coords.items() if set(v.dims) <= {"y", "x"}}
    slope = xr.DataArray(slope_d, dims=("y", "x"), coords=coords, name="slope")
    shade = xr.DataArray(shade_d, dims=("y", "x"), coords=coords, name="hillshade")
    slope.attrs["units"] = "degrees"
    shade.attrs["units"] = "1"
    return slope, shade


def season_features(
    s2: xr.DataArray,
    s1: xr.DataArray | None,
    dem: xr.DataArray | None,
    season: int,
    *,
    start_doy: int = 60,
    end_doy: int = 330,
    step_days: int = 10,
) -> xr.Dataset:
    """The season feature cube of one tile, lazily.

    ``s2``: (time, band, y, x) float32 reflectance 0..1 with B02, B03, B04, B08 (SCL and B11/B12
    optional, used by the cloud mask); ``s1``: (time, band=VV,VH, y, x) float32 dB or None;
    ``dem``: (y, x) metres or None; ``season``: the year whose day-of-year calendar is used.
    Returns a Dataset on s2's (y, x) grid: ``ndvi`` (doy, y, x), ``reflectance`` (doy, band, y, x),
    ``sar`` (doy, pol, y, x, dB), ``sar_filtered`` (the same, speckle-filtered over the
    season's S1 stack, :func:`multitemporal_filter_np`), ``slope`` (y, x, degrees),
    ``hillshade`` (y, x, 0-1),
    ``valid_fraction`` (y, x: clear S2 dates / S2 dates within the calendar), ``clear_dates``
    (y, x: clear S2 dates within the calendar), ``ndvi_weight`` (doy, y, x: how much of each
    calendar NDVI value is observed, :func:`optical_weight_by_date`), all float32;
    ``doy`` is an int coordinate. See the module docstring for the masking and gap filling.
    """
    if (
        isinstance(season, bool)
        or not isinstance(season, int | np.integer)
        or not (1900 <= season <= 2200)
    ):
        raise BadInputError("season", season, "a year such as 2025")
    season = int(season)
    doys = calendar_doys(start_doy, end_doy, step_days)
    s2 = F.require_dims(s2, "s2", ("time", "band", "y", "x"))
    present = F.require_bands(s2, "s2", BGRN)
    lo, hi = int(doys[0]) - MARGIN_DAYS, int(doys[-1]) + MARGIN_DAYS
    s2w, t_s2 = _select_window(s2, season, lo, hi)
    in_cal = (t_s2 >= doys[0]) & (t_s2 < doys[-1] + 1)
    if not in_cal.any():
        found = sorted({str(t)[:10] for t in s2["time"].values})
        raise BadInputError(
            "s2.time",
            found[:3] + (["..."] if len(found) > 3 else []),
            f"Sentinel-2 dates within day {doys[0]}..{doys[-1]} of season {season}",
            "the season has no scenes: search the season's date window",
        )
    s2w = F.as_dask(s2w).chunk({"time": -1, "band": 1, "y": CHUNK_PX, "x": CHUNK_PX})
    clear = _clear_mask(s2w, present)
    bgrn = s2w.sel(band=list(BGRN)).where(clear)
    red, nir = bgrn.sel(band="B04", drop=True), bgrn.sel(band="B08", drop=True)
    ndvi_obs = ((nir - red) / (nir + red).where(lambda v: v > 1e-6)).clip(-1.0, 1.0)

    ndvi = _to_calendar(ndvi_obs.astype("float32"), t_s2, doys, "ndvi").transpose("doy", "y", "x")
    refl = _to_calendar(bgrn.astype("float32"), t_s2, doys, "reflectance")
    refl = refl.transpose("doy", "band", "y", "x")
    n_dates = int(in_cal.sum())
    clear_dates = clear.isel(time=np.flatnonzero(in_cal)).sum("time").astype("float32")
    ndvi_weight = xr.apply_ufunc(
        optical_weight_by_date,
        clear.chunk({"time": -1}),
        kwargs={"t_obs": t_s2, "t_cal": doys.astype("float64"), "step_days": float(step_days)},
        input_core_dims=[["time"]],
        output_core_dims=[["doy"]],
        dask="parallelized",
        output_dtypes=["float32"],
        dask_gufunc_kwargs={"output_sizes": {"doy": len(doys)}},
    )
    ndvi_weight = ndvi_weight.assign_coords(doy=doys).transpose("doy", "y", "x")
    valid = (clear_dates / np.float32(n_dates)).rename("valid_fraction")

    ny, nx = s2.sizes["y"], s2.sizes["x"]
    chunks_yx = bgrn.data.chunks[2:]
    if s1 is not None:
        s1 = F.require_dims(s1, "s1", ("time", "band", "y", "x"))
        F.require_bands(s1, "s1", POLS)
        if (s1.sizes["y"], s1.sizes["x"]) != (ny, nx):
            raise BadInputError("s1", dict(s1.sizes), f"the s2 grid: y={ny}, x={nx}")
        s1w, t_s1 = _select_window(s1.sel(band=list(POLS)), season, lo, hi)
        if s1w.sizes["time"] == 0:
            raise BadInputError(
                "s1.time",
                s1.sizes["time"],
                f"Sentinel-1 dates near season {season}",
                "or pass None",
            )
        s1w = F.as_dask(s1w.astype("float32")).chunk(
            {"time": -1, "band": 1, "y": chunks_yx[0], "x": chunks_yx[1]}
        )
        s1w = s1w.assign_coords(y=s2["y"].values, x=s2["x"].values)
        sar = _to_calendar(s1w, t_s1, doys, "sar")
        sar = sar.rename({"band": "pol"}).transpose("doy", "pol", "y", "x")
        half = MT_WINDOW_PX // 2
        filtered = da.map_overlap(
            lambda b: multitemporal_filter_np(b[:, 0])[:, None],
            s1w.data,
            depth={0: 0, 1: 0, 2: half, 3: half},
            boundary="none",
            dtype="float32",
        )
        sar_filtered = _to_calendar(s1w.copy(data=filtered), t_s1, doys, "sar_filtered")
        sar_filtered = sar_filtered.rename({"band": "pol"}).transpose("doy", "pol", "y", "x")
    else:
        sar = xr.DataArray(
            da.full(
                (len(doys), len(POLS), ny, nx),
                np.nan,
                dtype="float32",
                chunks=((len(doys),), (len(POLS),), *chunks_yx),
            ),
            dims=("doy", "pol", "y", "x"),
            coords={"doy": doys, "pol": list(POLS)},
            name="sar",
        )
        sar_filtered = sar.rename("sar_filtered")
    sar = sar.assign_coords(pol=list(POLS))
    sar_filtered = sar_filtered.assign_coords(pol=list(POLS))

    if dem is not None:
        dem = F.require_dims(dem, "dem", ("y", "x"))
        if (dem.sizes["y"], dem.sizes["x"]) != (ny, nx):
            raise BadInputError("dem", dict(dem.sizes), f"the s2 grid: y={ny}, x={nx}")
        dem = F.as_dask(dem).chunk({"y": chunks_yx[0], "x": chunks_yx[1]})
        slope, shade = slope_hillshade(dem, F.pixel_size_m(s2))
        slope = slope.assign_coords(y=s2["y"].values, x=s2["x"].values)
        shade = shade.assign_coords(y=s2["y"].values, x=s2["x"].values)
    else:
        empty = da.full((ny, nx), np.nan, dtype="float32", chunks=chunks_yx)
        slope = xr.DataArray(empty, dims=("y", "x"), name="slope", attrs={"units": "degrees"})
        shade = xr.DataArray(empty, dims=("y", "x"), name="hillshade", attrs={"units": "1"})

    yx = {"y": s2["y"].values, "x": s2["x"].values}
    ds = xr.Dataset(
        {
            "ndvi": ndvi.drop_vars([c for c in ndvi.coords if c not in ("doy", "y", "x")]),
            "reflectance": refl.drop_vars(
                [c for c in refl.coords if c not in ("doy", "band", "y", "x")]
            ),
            "sar": sar.drop_vars([c for c in sar.coords if c not in ("doy", "pol", "y", "x")]),
            "sar_filtered": sar_filtered.drop_vars(
                [c for c in sar_filtered.coords if c not in ("doy", "pol", "y", "x")]
            ),
            "slope": slope.drop_vars([c for c in slope.coords if c not in ("y", "x")]),
            "hillshade": shade.drop_vars([c for c in shade.coords if c not in ("y", "x")]),
            "valid_fraction": valid.drop_vars([c for c in valid.coords if c not in ("y", "x")]),
            "clear_dates": clear_dates.drop_vars(
                [c for c in clear_dates.coords if c not in ("y", "x")]
            ),
            "ndvi_weight": ndvi_weight.drop_vars(
                [c for c in ndvi_weight.coords if c not in ("doy", "y", "x")]
            ),
        }
    ).assign_coords({**yx, "doy": doys, "band": list(BGRN)})
    units: dict[Hashable, str] = {
        "sar": "dB",
        "sar_filtered": "dB",
        "slope": "degrees",
        "clear_dates": "dates",
    }
    for name in ds.data_vars:
        ds[name].attrs = {"units": units.get(name, "1")}
    ds.attrs.update(
        {k: v for k, v in s2.attrs.items() if k in ("crs", "epsg", "transform", "spatial_ref")}
    )
    ds.attrs.update(
        season=season,
        start_doy=int(doys[0]),
        end_doy=int(doys[-1]),
        step_days=int(step_days),
        s2_dates=n_dates,
        calendar="day of year of `season`; linear in time between clear observations",
    )
    return ds
