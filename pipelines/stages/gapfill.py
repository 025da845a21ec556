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
``source`` (time, y, x) uint8 :data:`SOURCE_CLASSES`. A pixel's prior needs all its dates at
once, so the tile is worked in spatial blocks of every date (:data:`MAX_BLOCK_DATE_PX`): each
draws its part of the tile's training sample, one task fits the tile's regression on it, and each
block is then filled with it. A task's memory is bounded by the block, not by the window's dates
x the tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

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
#: Most (date, pixel)s one block of the gap filling holds. A pixel's dates must be in one block
#: (its temporal prior reads them all), so a tile is filled in spatial blocks of every date. A
#: block's task peaks at about 110 bytes a (date, pixel) with its inputs: 2**23 keeps it under
#: 1 GiB whatever the window (a year's 128 S2 dates on a 1024 px tile: 16 blocks of 256 px).
MAX_BLOCK_DATE_PX = 2**23
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


def _block_features(
    red: np.ndarray,
    nir: np.ndarray,
    cloud: np.ndarray,
    vv: np.ndarray,
    vh: np.ndarray,
    days: np.ndarray,
    doy: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block's observed NDVI (T, y, x; NaN = gap), the (date, pixel)s to fill (T, y, x) and
    the regression's features (T * y * x, 6): prior, gap, VV, VH, VH - VV, day of year. From
    the block's reflectance, CloudClass and backscatter (dB) as loaded: the two steps that read
    a block (:func:`_training_sample`, :func:`_fill_block`) convert them here, so that they
    share only the loaded blocks and no derived array of the graph."""
    red, nir, vv, vh = (a.astype(np.float32, copy=False) for a in (red, nir, vv, vh))
    clear = cloud == int(CloudClass.CLEAR)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = nir + red
        ndvi = np.where(clear & (total > 1e-6), (nir - red) / total, np.nan)
    ndvi = np.clip(ndvi, -1.0, 1.0).astype(np.float32)
    valid = (np.isfinite(red) & np.isfinite(nir)) | np.isfinite(vv)
    prior, gap = temporal_prior(ndvi, days)
    doy_plane = np.broadcast_to(doy.astype(np.float32)[:, None, None], ndvi.shape)
    features = np.stack([prior, gap, vv, vh, vh - vv, doy_plane], axis=-1).reshape(-1, 6)
    return ndvi, ~np.isfinite(ndvi) & valid, features


@dataclass(frozen=True)
class TrainingSample:
    """A block's clear (date, pixel)s drawn for the regression: ``keys`` (n,) their priorities
    (:func:`sample_keys`; the tile's sample is its :data:`MAX_TRAIN_SAMPLES` lowest keys),
    ``features`` (n, 6) and ``ndvi`` (n,) the observed NDVI."""

    keys: np.ndarray
    features: np.ndarray
    ndvi: np.ndarray


def sample_keys(index: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random keys, uniform in [0, 1), of (date, pixel) indices into a tile's (time, y, x)
    window (SplitMix64 of index and seed): a key depends on the seed and the sample's place in
    the tile only, so the tile's training sample is the same however the tile is cut in blocks."""
    z = index.astype(np.uint64) + np.uint64((seed + 1) * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class GapModel:
    """The tile's regression and the feature columns it was fitted on."""

    regression: Any
    columns: np.ndarray


def _training_sample(
    red: np.ndarray,
    nir: np.ndarray,
    cloud: np.ndarray,
    vv: np.ndarray,
    vh: np.ndarray,
    days: np.ndarray,
    doy: np.ndarray,
    seed: int,
    shape: tuple[int, int],
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    """(1, 1, 1) object: the :class:`TrainingSample` of one block of a tile of ``shape`` (rows,
    columns), at most :data:`MAX_TRAIN_SAMPLES` clear (date, pixel)s of lowest key."""
    assert block_info is not None  # dask's map_blocks passes where the block lies
    origin = [start for start, _ in block_info[0]["array-location"][1:]]
    ndvi, _, features = _block_features(red, nir, cloud, vv, vh, days, doy)
    t, y, x = np.nonzero(np.isfinite(ndvi))
    observed = np.ravel_multi_index((t, y, x), ndvi.shape)
    tile_index = (t * shape[0] + origin[0] + y) * shape[1] + origin[1] + x
    keys = sample_keys(tile_index, seed)
    if observed.size > MAX_TRAIN_SAMPLES:
        lowest = np.argpartition(keys, MAX_TRAIN_SAMPLES)[:MAX_TRAIN_SAMPLES]
        observed, keys = observed[lowest], keys[lowest]
    return _one(TrainingSample(keys, features[observed], ndvi.reshape(-1)[observed]))


def _one(value: Any) -> np.ndarray:
    """``value`` as a (1, 1, 1) object block (dask carries a block's Python objects so)."""
    block = np.empty((1, 1, 1), dtype=object)
    block[0, 0, 0] = value
    return block


def _fit_model(blocks: list[np.ndarray], seed: int) -> np.ndarray:
    """(1, 1, 1) object: the tile's :class:`GapModel`, fitted on the :data:`MAX_TRAIN_SAMPLES`
    lowest-key samples of its blocks' :class:`TrainingSample` (``blocks``: each block's (1, 1,
    1) object array); None with fewer than :data:`MIN_TRAIN_SAMPLES` clear samples."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    samples: list[TrainingSample] = [b.item() for b in blocks]
    keys = np.concatenate([s.keys for s in samples])
    if keys.size < MIN_TRAIN_SAMPLES:
        return _one(None)
    # In key order: the same samples in the same order, however the tile was cut in blocks.
    lowest = np.argsort(keys, kind="stable")[:MAX_TRAIN_SAMPLES]
    features = np.concatenate([s.features for s in samples])[lowest]
    ndvi = np.concatenate([s.ndvi for s in samples])[lowest]
    # Features no training sample has (no SAR on any date: all NaN) are left out.
    columns = np.isfinite(features).any(axis=0)
    regression = HistGradientBoostingRegressor(max_iter=150, random_state=seed)
    regression.fit(features[:, columns], ndvi)
    return _one(GapModel(regression, columns))


def _one_task(function: Any, blocks: da.Array, *args: Any) -> da.Array:
    """A (1, 1, 1) object array of ``function([every block of blocks], *args)``, computed by
    one task. Not a blockwise step: dask fuses a blockwise step into the steps that read it, and
    every block of the fill would fit the model again."""
    name = f"{function.__name__.strip('_')}-{tokenize(blocks.name, *args)}"
    task = (function, list(flatten(blocks.__dask_keys__())), *args)
    dependencies: list[Any] = [blocks]  # dask's DaskCollection protocol, which Array meets
    graph = HighLevelGraph.from_collections(name, {(name, 0, 0, 0): task}, dependencies)
    return da.Array(graph, name, ((1,), (1,), (1,)), meta=np.empty((0, 0, 0), dtype=object))


def _fill_block(
    red: np.ndarray,
    nir: np.ndarray,
    cloud: np.ndarray,
    vv: np.ndarray,
    vh: np.ndarray,
    fitted: np.ndarray,
    days: np.ndarray,
    doy: np.ndarray,
) -> np.ndarray:
    """(2, T, y, x) float32: one block's gap-filled NDVI and its source code, with the tile's
    model (``fitted``, the (1, 1, 1) object block of :func:`_fit_model`)."""
    model: GapModel | None = fitted.item()
    ndvi, todo, features = _block_features(red, nir, cloud, vv, vh, days, doy)
    observed = np.isfinite(ndvi)
    out = ndvi.copy()
    source = np.where(observed, 1, 0).astype(np.float32)
    if model is not None and todo.any():
        gaps = np.flatnonzero(todo.reshape(-1))
        predicted = model.regression.predict(features[gaps][:, model.columns])
        out.reshape(-1)[gaps] = np.clip(predicted, -1.0, 1.0).astype(np.float32)
        has_sar = np.isfinite(vv).reshape(-1)[gaps]
        source.reshape(-1)[gaps] = np.where(has_sar, 2, 3)
    return np.stack([out, source])


def block_px(n_dates: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the spatial blocks the gap filling works in: every date of a pixel
    in one block, at most :data:`MAX_BLOCK_DATE_PX` (date, pixel)s a block, blocks of a tile of
    about equal size."""
    side = max(1, math.isqrt(MAX_BLOCK_DATE_PX // max(n_dates, 1)))
    rows, cols = (math.ceil(n / math.ceil(n / side)) for n in shape)
    return rows, cols


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
    times = s2["time"].values
    blocks = (-1, *block_px(len(times), shape))
    red = F.as_dask(s2.sel(band=RED)).data.rechunk(blocks)
    nir = F.as_dask(s2.sel(band=NIR)).data.rechunk(blocks)
    cloud = F.as_dask(cloud_mask).data.rechunk(blocks)
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
    vv = da.stack(planes["VV"]).rechunk(blocks)
    vh = da.stack(planes["VH"]).rechunk(blocks)
    doy = np.array([np.datetime64(t, "D").astype(object).timetuple().tm_yday for t in times])
    days = _days(times)
    # One regression a tile, fitted on a sample drawn block by block; then each block filled.
    one_per_block = ((1,), (1,) * len(red.chunks[1]), (1,) * len(red.chunks[2]))
    samples = da.map_blocks(
        _training_sample,
        red,
        nir,
        cloud,
        vv,
        vh,
        days=days,
        doy=doy,
        seed=seed,
        shape=shape,
        chunks=one_per_block,
        dtype=object,
        meta=np.empty((0, 0, 0), dtype=object),
    )
    fitted = _one_task(_fit_model, samples, seed)
    both = da.map_blocks(
        _fill_block,
        red,
        nir,
        cloud,
        vv,
        vh,
        fitted,
        days=days,
        doy=doy,
        new_axis=0,
        chunks=((2,), *red.chunks),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
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
