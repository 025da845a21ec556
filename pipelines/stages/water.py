"""water_mask: open water from Sentinel-1 backscatter by automatic thresholding.

Method, per date:

1. Speckle: Lee filter (5 x 5 px, 4 looks) on VV and VH, done in linear power.
2. Threshold: the (y, x) plane is cut into 64 x 64 px sub-tiles (a grid anchored at the array
   origin). A sub-tile is *bimodal* when at least half of it is valid, Otsu's split leaves at
   least 10 % of its pixels on each side, Ashman's D of the two sides is >= 2 (two well
   separated modes) and the lower side's mean is below the fixed threshold (-18 dB VV,
   -25 dB VH: the dark mode is water, not a darker land cover such as fields next to towns).
   The histograms (0.05 dB bins over -40..+10 dB) of all bimodal sub-tiles are pooled
   (Martinis et al. 2009, split-based automatic thresholding) and the threshold is the
   valley of the pooled histogram between its water mode and its land mode (found on either
   side of Otsu's split): Otsu's split itself moves towards the large and long-tailed land
   class (bright towns, flooded forest) and would call bare soil water. When no sub-tile is
   bimodal the scene has too little water to show a mode, and the fixed threshold is used:
   -18 dB for VV, -25 dB for VH. Thresholds are clamped to -26..-12 dB (VV) and
   -32..-18 dB (VH) so that a bimodal split of two land covers cannot flood the whole scene.
3. Water = VV below its threshold, and, when VH is present, VH below its threshold too
   (smooth surfaces are dark in both; this rejects e.g. VV-dark but VH-bright targets).

The thresholds are per date over the whole array and come from exact histograms (dask
reductions), so the result does not depend on chunking.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.errors import BadInputError
from pipelines.stages import filters as F

__all__ = ["CLAMP_DB", "FALLBACK_DB", "auto_threshold", "speckle_filter", "water_mask"]

#: Threshold used when no sub-tile is bimodal (dB).
FALLBACK_DB = {"VV": -18.0, "VH": -25.0}
#: Allowed range of an automatic threshold (dB).
CLAMP_DB = {"VV": (-26.0, -12.0), "VH": (-32.0, -18.0)}
_BINS = np.arange(-40.0, 10.0 + 1e-9, 0.05)

WATER_NODATA, WATER_LAND, WATER_WATER = 0, 1, 2


def validate_s1(s1: xr.DataArray, field: str) -> xr.DataArray:
    """Check dims (time, band, y, x) and a VV band; return it dask-backed in that order."""
    s1 = F.require_dims(s1, field, ("time", "band", "y", "x"))
    F.require_bands(s1, field, ("VV",))
    return F.as_dask(s1)


def speckle_filter(db: xr.DataArray, size: int = 5, enl: float = 4.0) -> xr.DataArray:
    """Lee-filtered copy of a (time, y, x) dB array."""
    return db.copy(data=F.lee_filter(db.data.astype("float32"), size=size, enl=enl))


def _threshold_from_pool(pool: np.ndarray, count: np.ndarray, pol: str) -> np.ndarray:
    lo, hi = CLAMP_DB[pol]
    out = np.empty(pool.shape[0], dtype="float32")
    for i in range(pool.shape[0]):
        thr = F.valley_from_hist(pool[i], _BINS) if count[i] > 0 else float("nan")
        out[i] = FALLBACK_DB[pol] if not np.isfinite(thr) else np.clip(thr, lo, hi)
    return out


def auto_threshold(
    db: xr.DataArray, pol: str, block_px: int = 64, min_ashman_d: float = 2.0
) -> xr.DataArray:
    """Per-date water threshold (time,) in dB of a filtered (time, y, x) ``pol`` image, lazily."""
    pool, count = F.block_histograms(
        db.data,
        _BINS,
        block_px=block_px,
        min_valid=0.5,
        min_ashman_d=min_ashman_d,
        max_low_mean=FALLBACK_DB[pol],
    )
    pool = pool.rechunk({0: 1, 1: -1})
    count = count.rechunk(1)
    thr = da.map_blocks(
        _threshold_from_pool, pool, count[:, None], pol=pol, drop_axis=1, dtype="float32"
    )
    return xr.DataArray(thr, dims=("time",), coords={"time": db.coords["time"]})


def water_from_db(
    vv: xr.DataArray, vh: xr.DataArray | None, block_px: int = 64
) -> tuple[xr.DataArray, xr.DataArray]:
    """Water (bool) and validity of filtered (time, y, x) VV (and VH) dB images."""
    t_vv = auto_threshold(vv, "VV", block_px)
    water = vv < t_vv
    valid = vv.notnull()
    if vh is not None:
        t_vh = auto_threshold(vh, "VH", block_px)
        water = water & ((vh < t_vh) | vh.isnull())
    return water & valid, valid


def water_mask(
    s1: xr.DataArray, *, speckle_size: int = 5, enl: float = 4.0, block_px: int = 64
) -> xr.DataArray:
    """Open water of each S1 date, lazily.

    ``s1``: (time, band, y, x) float32 backscatter in dB with VV (and VH), NaN nodata.
    Returns (time, y, x) uint8: 0 nodata, 1 land, 2 water. See the module docstring.
    """
    s1 = validate_s1(s1, "s1")
    if speckle_size < 1 or speckle_size % 2 == 0:
        raise BadInputError("speckle_size", speckle_size, "an odd window size >= 1 in pixels")
    if block_px < 8:
        raise BadInputError("block_px", block_px, "a sub-tile size >= 8 pixels")
    bands = [str(b) for b in s1.coords["band"].values]
    vv = speckle_filter(s1.sel(band="VV", drop=True), speckle_size, enl)
    vh = speckle_filter(s1.sel(band="VH", drop=True), speckle_size, enl) if "VH" in bands else None
    water, valid = water_from_db(vv, vh, block_px)
    out = xr.where(valid, xr.where(water, WATER_WATER, WATER_LAND), WATER_NODATA).astype("uint8")
    out.name = "water_mask"
    out.attrs["classes"] = "0 nodata, 1 land, 2 water"
    out.attrs.update({k: v for k, v in s1.attrs.items() if k in ("crs", "epsg")})
    return out
