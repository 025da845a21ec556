"""water_mask: open water from Sentinel-1 backscatter by split-based automatic thresholding.

Every constant below is physical or published; ``docs/water.md`` lists them with their sources.
Method, per date (backscatter in dB):

1. **Speckle**: Lee (1980) filter, 5 x 5 px, in linear power, for the equivalent number of
   looks of IW GRDH (4.4, ESA Sentinel-1 User Guide).
2. **Primary polarisation**: VH when present, else VV. Cross-polarised backscatter separates
   open water from land better than VV in most conditions (wind roughening raises VV far more
   than VH; Bonafilia et al. 2020, Sen1Floods11).
3. **Scene threshold** (split-based thresholding, Martinis et al. 2009; Chini et al. 2017;
   the tile-selected Otsu of Markert et al. 2020): the plane is cut into ``block_px``
   sub-tiles. A sub-tile is bimodal when half of it is valid, Otsu's split leaves >= 10 % of it
   on each side, Ashman's D of the two sides is >= :data:`MIN_ASHMAN_D` and the darker side's
   mean lies in the lower half of the open-water range (<= :data:`FALLBACK_DB`, -25 dB VH):
   a dark mode above it is as likely bare soil (VH -20..-23 dB) as water. The histograms of
   the bimodal sub-tiles are pooled and the threshold is Otsu's split of the pool: sub-tiles
   are chosen on water edges, where the speckle filter leaves many mixed pixels between the
   two modes, and a between-class split classes a mixed pixel by its nearer mode. Fallbacks,
   in order: when no sub-tile is bimodal, the Otsu split of the whole date's histogram if
   that split passes the same test (a global VH Otsu, for water spread too thinly over the
   sub-tiles), or, with VH deciding, if it leaves 10 % on each side, its dark side lies in the
   VH water range (<= -20 dB) and the VV of the pixels below it holds a class of its own
   (Otsu, Ashman's D, >= 10 % of the date) whose mean lies in the VV water range (< -15 dB):
   rough water (wind, rain; VH -25..-20 dB) is dark in both channels, bare soil as dark in VH
   is not in VV, and the dark side of a scene of many land covers mixes both, so neither its
   mean VV nor the separation of its VH split says much. A date of which at least 90 % is dark
   in both channels (VH and VV inside their water ranges: a lake or the sea filling the tile,
   a flood over most of it) holds too little of anything else for a split to measure (less
   than 10 % on one side): it takes the top of the VH water range (-20 dB), so that every
   pixel dark in both channels is water, before any other rule; otherwise (no
   water mode anywhere: a land-only scene) the middle of the water range
   (:data:`FALLBACK_DB`), which lies below land, so a land-only scene stays (almost) dry
   instead of having a threshold forced into its land mode. Every threshold is clamped to
   :data:`WATER_DB`.
4. **Decision**: water = primary < threshold, and, when VH decides, VV inside the water range
   too (``VV < WATER_DB["VV"][1]``, -15 dB) unless the pixel is sure water
   (:func:`sure_water_np`): filtered VH below :data:`VH_WATER_ONLY_DB` (-25 dB), or within
   :data:`SURE_WATER_REACH_PX` (1 px) of such a pixel. In the upper half of the
   VH water range VH overlaps bare soil (VH -20..-23 dB), within a few dB of the IW noise floor
   (NESZ <= -22 dB by requirement, Torres et al. 2012), and the VV check rejects dry soil and
   other cross-pol-dark, co-pol-bright surfaces. Below -25 dB no land cover's mode lies in VH
   (the same reason a sub-tile's dark mode must lie there), while wind roughens water in VV far
   more than in VH: a lake at VV -13 dB and VH -26 dB is water, and a VV check on every pixel
   drops all of it. The filter smears a water edge, so the edge of such a lake reads above
   -25 dB in VH: next to sure water it is that water's edge.
5. **Terrain** (only with a ``dem``): terrain steeper than ``max_slope_deg`` (5 degrees,
   :data:`MAX_SLOPE_DEG`) is land and stays out of the thresholds' histograms. A water surface
   is level, and DEMs flatten lakes and wide rivers; what is dark in both channels on a
   mountain slope is radar shadow, wet snow or smooth rock (the height above drainage, which
   ``flood_change`` also uses, is not: a lake on a plateau or behind a dam stands high above
   the lowest point near it).
6. **Minimum mapping unit**: water components smaller than ``mmu_ha`` (0.5 ha, about 11 IW
   GRDH resolution cells of 20 x 22 m) are land.

Nodata (0) where VV or the deciding polarisation is missing.

The thresholds come from exact histograms (dask reductions), so the result does not depend on
chunking.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.errors import BadInputError
from pipelines.stages import filters as F
from pipelines.stages import terrain as T

__all__ = [
    "ENL_IW_GRDH",
    "FALLBACK_DB",
    "HIST_BINS_DB",
    "MAX_SLOPE_DEG",
    "MIN_ASHMAN_D",
    "MMU_HA",
    "SURE_WATER_REACH_PX",
    "THRESHOLD_RULES",
    "VH_WATER_ONLY_DB",
    "WATER_DB",
    "WATER_DOMINATED_SHARE",
    "WaterEvidence",
    "ashman_d",
    "auto_threshold",
    "rough_water_split",
    "scene_threshold",
    "speckle_filter",
    "sure_water",
    "sure_water_np",
    "threshold_of",
    "threshold_rule_of",
    "water_from_db",
    "water_mask",
]

#: Backscatter range of calm open water in Sentinel-1 IW (dB), the allowed range of a
#: threshold: VH -30..-20 dB, VV -25..-15 dB. The low ends sit at the IW noise floor; the
#: operational upper bounds of ASF HydroSAR (VH -24/-25 dB, VV -17 dB) lie inside the range
#: (docs/water.md).
WATER_DB: dict[str, tuple[float, float]] = {"VH": (-30.0, -20.0), "VV": (-25.0, -15.0)}
#: Threshold when a date shows no water mode: the middle of :data:`WATER_DB` (dB).
FALLBACK_DB: dict[str, float] = {p: 0.5 * (lo + hi) for p, (lo, hi) in WATER_DB.items()}
#: VH (dB) below which VH alone decides (no VV check; :func:`sure_water_np` grows it by
#: :data:`SURE_WATER_REACH_PX`): the lower half of the VH water range,
#: below every land cover's mode (bare soil VH -20..-23 dB); wind raises water's VV far more
#: than its VH (Bonafilia et al. 2020), so a windy lake keeps VH there while VV leaves its
#: water range.
VH_WATER_ONLY_DB = FALLBACK_DB["VH"]
#: Ashman's D, measured on the two sides of Otsu's split, above which a histogram is bimodal.
#: Ashman et al. (1994; used by Chini et al. 2017) separate two Gaussian components from D > 2;
#: measured on the sides of Otsu's split instead of on fitted components, an even mixture of
#: two Gaussians with component D = 2 gives D = 2.92, while a single Gaussian already gives 2.65
#: (its two halves); hence 2.9.
MIN_ASHMAN_D = 2.9
#: Reach (px) of sure water (:func:`sure_water_np`): the Lee filter smears a water edge, so
#: the edge of water that VH alone calls water reads brighter in VH than the water itself.
#: 1 px, not the filter's half window (2 px): the Lee filter keeps most of a pixel's own value
#: where the local variance is high, as at a step edge. Measured (SYNTHETIC, docs/water.md),
#: reach 0 / 1 / 2 px: a windy lake (VV -13, VH -26 dB) 0.87 / 0.98 / 0.999 IoU, and a lake
#: along dark bare soil (VH -23, VV -14 dB) 0.943 / 0.898 / 0.840 (the soil taken in).
SURE_WATER_REACH_PX = 1
#: Equivalent number of looks of Sentinel-1 IW GRDH (ESA Sentinel-1 User Guide).
ENL_IW_GRDH = 4.4
#: Minimum mapping unit (ha): about 11 IW GRDH resolution cells (20 x 22 m).
MMU_HA = 0.5
#: Steepest terrain (degrees, from the DEM) that ``water_mask`` lets hold water when given a
#: DEM: a water surface is level, and DEMs flatten lakes and wide rivers; over one 30 m DEM
#: cell 5 degrees rise 2.6 m. The limit ``flood_change`` puts on floodable terrain.
MAX_SLOPE_DEG = 5.0
#: Smallest share of a sub-tile on either side of its split for the sub-tile to be bimodal.
MIN_CLASS_SHARE = 0.1
#: Share of a date's pixels dark in both channels (VH and VV inside :data:`WATER_DB`) from
#: which the date is water-dominated (:func:`_settle_np`): what else it holds is less than
#: :data:`MIN_CLASS_SHARE`, too little for any split to measure.
WATER_DOMINATED_SHARE = 1.0 - MIN_CLASS_SHARE
#: Histogram bin edges of the thresholds (dB): 0.05 dB wide, -40..10 dB.
HIST_BINS_DB = np.arange(-40.0, 10.0 + 1e-9, 0.05)
_BINS = HIST_BINS_DB
_CENTERS = 0.5 * (_BINS[:-1] + _BINS[1:])

WATER_NODATA, WATER_LAND, WATER_WATER = 0, 1, 2


def validate_s1(s1: xr.DataArray, field: str) -> xr.DataArray:
    """Check dims (time, band, y, x) and a VV band; return it dask-backed in that order."""
    s1 = F.require_dims(s1, field, ("time", "band", "y", "x"))
    F.require_bands(s1, field, ("VV",))
    return F.as_dask(s1)


def speckle_filter(db: xr.DataArray, size: int = 5, enl: float = ENL_IW_GRDH) -> xr.DataArray:
    """Lee-filtered copy of a (time, y, x) dB array (``size`` px window, ``enl`` looks)."""
    return db.copy(data=F.lee_filter(db.data.astype("float32"), size=size, enl=enl))


# --------------------------------------------------------------------------- histogram maths


def _split(hist: np.ndarray, thr: float) -> tuple[float, float, float, float, float, float]:
    """Shares, means and variances (dB, dB^2) of the two sides of ``thr`` of a histogram."""
    lo = thr > _CENTERS
    n = hist.sum()
    out = []
    for side in (lo, ~lo):
        w = hist[side]
        s = w.sum()
        if s <= 0:
            return 0.0, 0.0, np.nan, np.nan, np.nan, np.nan
        m = float((w * _CENTERS[side]).sum() / s)
        v = float((w * (_CENTERS[side] - m) ** 2).sum() / s)
        out.append((float(s / n), m, v))
    (p1, m1, v1), (p2, m2, v2) = out
    return p1, p2, m1, m2, v1, v2


def ashman_d(m1: float, m2: float, v1: float, v2: float) -> float:
    """Ashman's D of two modes (means in dB, variances in dB^2); > 2: cleanly separated."""
    return float(np.sqrt(2.0) * abs(m1 - m2) / np.sqrt(v1 + v2 + 1e-12))


def _water_mode(hist: np.ndarray, thr: float, pol: str) -> bool:
    """True when ``thr`` splits ``hist`` into a separated dark mode in the lower water range."""
    p1, p2, m1, m2, v1, v2 = _split(hist, thr)
    if min(p1, p2) < MIN_CLASS_SHARE:
        return False
    return m1 <= FALLBACK_DB[pol] and ashman_d(m1, m2, v1, v2) >= MIN_ASHMAN_D


def rough_water_split(count: float, hist: np.ndarray, pol: str) -> float:
    """The split a date may take for rough water (dB), else NaN: with VH deciding, no bimodal
    sub-tile (``count`` 0), and the whole date's Otsu split leaving >= :data:`MIN_CLASS_SHARE`
    on each side with the dark side's mean VH in the VH water range (<= -20 dB) but above
    :data:`FALLBACK_DB`. Wind or rain roughen flood water from the calm-water VH floor towards
    -20 dB; bare soil can be as dark in VH. Which it is, VV tells (:func:`threshold_of`: the
    split is taken when the VV of the pixels below it holds a class of its own in the VV water
    range). The VH sides need not be separated (Ashman's D): among many land covers the VH
    histogram has no gap between rough water and the darker covers, and the class is asked of
    VV instead."""
    if pol != "VH" or count > 0:
        return float("nan")
    otsu = F.otsu_from_hist(hist, _BINS)
    if not np.isfinite(otsu):
        return float("nan")
    p1, p2, m1, *_ = _split(np.asarray(hist, dtype="float64"), otsu)
    if min(p1, p2) < MIN_CLASS_SHARE:
        return float("nan")
    if m1 <= FALLBACK_DB[pol] or m1 > WATER_DB[pol][1]:
        return float("nan")  # as dark as calm water (the fallback finds it), or above the range
    return float(otsu)


#: Which rule set a date's threshold (:func:`threshold_rule_of`), by code: no water mode
#: anywhere (the fixed :data:`FALLBACK_DB`), the pooled bimodal sub-tiles, the whole date's
#: split as a water mode, the rough-water split, a water-dominated date.
THRESHOLD_RULES = ("fallback", "sub-tiles", "global split", "rough-water split", "water-dominated")
_FALLBACK, _SUB_TILES, _GLOBAL, _ROUGH, _DOMINATED = range(len(THRESHOLD_RULES))


def _scene_threshold_rule(
    pool: np.ndarray, count: float, hist: np.ndarray, pol: str
) -> tuple[float, int]:
    """:func:`scene_threshold` and the code of its rule in :data:`THRESHOLD_RULES`."""
    lo, hi = WATER_DB[pol]
    thr, rule = (F.otsu_from_hist(pool, _BINS), _SUB_TILES) if count > 0 else (np.nan, _FALLBACK)
    if not np.isfinite(thr):
        otsu = F.otsu_from_hist(hist, _BINS)
        if np.isfinite(otsu) and _water_mode(np.asarray(hist, dtype="float64"), otsu, pol):
            thr, rule = otsu, _GLOBAL
    if not np.isfinite(thr):
        thr, rule = FALLBACK_DB[pol], _FALLBACK
    return float(np.clip(thr, lo, hi)), rule


def scene_threshold(pool: np.ndarray, count: float, hist: np.ndarray, pol: str) -> float:
    """Threshold (dB) of one date from its pooled bimodal sub-tiles and its whole histogram.

    ``pool``: summed histogram of the bimodal sub-tiles over :data:`_BINS`; ``count``: how many;
    ``hist``: the whole date's histogram. See the module docstring for the fallbacks (the
    rough-water split, which needs VV, is :func:`rough_water_split`).
    """
    return _scene_threshold_rule(pool, count, hist, pol)[0]


def _decisions_of_blocks(h: np.ndarray, nb: int, pol: str) -> np.ndarray:
    """Per date, from the sub-tile histograms of every chunk of
    :func:`pipelines.stages.filters.block_histogram_blocks` (time, cy, cx, 2 nb + 1) summed over
    the chunks: :func:`scene_threshold`, :func:`rough_water_split`, the date's pixel count and
    the scene threshold's rule (:data:`THRESHOLD_RULES`), float64 (time, 4)."""
    sums = h.sum(axis=(1, 2))
    rows = []
    for r in sums:
        thr, rule = _scene_threshold_rule(r[:nb], r[nb], r[nb + 1 :], pol)
        rows.append((thr, rough_water_split(r[nb], r[nb + 1 :], pol), r[nb + 1 :].sum(), rule))
    return np.array(rows, dtype="float64").reshape(len(sums), 4)


def vv_dark_class(hist: np.ndarray) -> tuple[float, float]:
    """Pixel count and mean VV (dB) of the darkest VV class of a histogram over
    :data:`HIST_BINS_DB` (the VV of the pixels below a rough-water split): the dark side of
    its Otsu split where that split separates two classes (>= :data:`MIN_CLASS_SHARE` each,
    Ashman's D >= :data:`MIN_ASHMAN_D`), else the whole histogram as one class."""
    total = float(hist.sum())
    if total <= 0:
        return 0.0, float("nan")
    otsu = F.otsu_from_hist(hist, _BINS)
    if np.isfinite(otsu):
        p1, p2, m1, m2, v1, v2 = _split(hist, otsu)
        if min(p1, p2) >= MIN_CLASS_SHARE and ashman_d(m1, m2, v1, v2) >= MIN_ASHMAN_D:
            return p1 * total, m1
    return total, float((hist * _CENTERS).sum() / total)


def _vv_evidence_np(vh: np.ndarray, vv: np.ndarray, split: np.ndarray) -> np.ndarray:
    """What VV says of a filtered (time, y, x) block, per date: (time, 1, 1, bins + 1), the
    histogram over :data:`HIST_BINS_DB` of the VV of the pixels whose VH lies below the date's
    ``split`` (time, 1, 1; NaN: no split, nothing read), then (last) the count of pixels dark
    in both channels (VH and VV inside :data:`WATER_DB`)."""
    nb = len(_BINS) - 1
    out = np.zeros((vh.shape[0], 1, 1, nb + 1), dtype="float64")
    vh_top, vv_top = WATER_DB["VH"][1], WATER_DB["VV"][1]
    for t in range(vh.shape[0]):
        cut = float(split[t, 0, 0])
        if np.isfinite(cut):
            out[t, 0, 0, :nb] = F.masked_histogram(vv[t], vh[t] < cut, _BINS)  # NaN not below
        out[t, 0, 0, nb] = np.count_nonzero((vh[t] < vh_top) & (vv[t] < vv_top))
    return out


def _settle_rule_np(decisions: np.ndarray, vv_evidence: np.ndarray, pol: str) -> np.ndarray:
    """The threshold (dB) and the code of its rule (:data:`THRESHOLD_RULES`) of each date,
    float64 (time, 2), in this order: the top of the water range where at least
    :data:`WATER_DOMINATED_SHARE` of the date is dark in both channels (too little else for a
    split); the rough-water split where the date has one and the VV of the pixels below it
    holds a class (:func:`vv_dark_class`) whose mean lies in the VV water range and which makes
    at least :data:`MIN_CLASS_SHARE` of the date: a class of its own, dark in both channels;
    else the scene threshold (``decisions``: (time, 4) from :func:`_decisions_of_blocks`;
    ``vv_evidence``: (time, bins + 1) from :func:`_vv_evidence_np`; without it, (time, 0): the
    scene threshold)."""
    strict, split, pixels, rule = (decisions[:, k] for k in range(4))
    if vv_evidence.shape[1] == 0:
        return np.stack([strict, rule], axis=1)
    vv_hist, dark_both = vv_evidence[:, :-1], vv_evidence[:, -1]
    rough = np.zeros(len(strict), dtype=bool)
    for t in np.flatnonzero(np.isfinite(split)):
        count, mean = vv_dark_class(vv_hist[t])
        rough[t] = mean < WATER_DB["VV"][1] and count >= MIN_CLASS_SHARE * pixels[t]
    dominated = (pixels > 0) & (dark_both >= WATER_DOMINATED_SHARE * pixels)
    lo, hi = WATER_DB[pol]
    thr = np.where(dominated, hi, np.where(rough, np.clip(split, lo, hi), strict))
    rule = np.where(dominated, _DOMINATED, np.where(rough, _ROUGH, rule))
    return np.stack([thr, rule], axis=1)


def _settle_np(decisions: np.ndarray, vv_evidence: np.ndarray, pol: str) -> np.ndarray:
    """The threshold (time,) float32 of each date (:func:`_settle_rule_np`)."""
    return _settle_rule_np(decisions, vv_evidence, pol)[:, 0].astype("float32")


def _rule_np(decisions: np.ndarray, vv_evidence: np.ndarray, pol: str) -> np.ndarray:
    """The code of each date's threshold rule (time,) int8 (:func:`_settle_rule_np`)."""
    return _settle_rule_np(decisions, vv_evidence, pol)[:, 1].astype("int8")


def threshold_of(
    db: da.Array, pol: str, block_px: int = 64, vv: da.Array | None = None
) -> da.Array:
    """Per-date water threshold (time,) in dB of a filtered (time, y, x) ``pol`` image, lazily
    (:func:`auto_threshold` on the dask array: one histogram block per chunk, one threshold
    call per date). ``vv``: the filtered VV of the same pixels when VH decides: a date with a
    rough-water split (:func:`rough_water_split`) takes it when the VV of the pixels below it
    holds a class in the VV water range that makes >= :data:`MIN_CLASS_SHARE` of the date, and
    a date of which >= :data:`WATER_DOMINATED_SHARE` is dark in both channels takes the top of
    the VH water range (:func:`_settle_rule_np`)."""
    return _settled(db, pol, block_px, vv, _settle_np, np.float32)


def threshold_rule_of(
    db: da.Array, pol: str, block_px: int = 64, vv: da.Array | None = None
) -> da.Array:
    """Which rule set each date's threshold of :func:`threshold_of` (the same arguments):
    (time,) int8 codes into :data:`THRESHOLD_RULES`, lazily."""
    return _settled(db, pol, block_px, vv, _rule_np, np.int8)


def _settled(
    db: da.Array,
    pol: str,
    block_px: int,
    vv: da.Array | None,
    settle: Any,
    dtype: Any,
) -> da.Array:
    """The graph of :func:`threshold_of`, ending in ``settle`` (:func:`_settle_np` or
    :func:`_rule_np`) of ``dtype``, date by date."""
    if pol not in WATER_DB:
        raise BadInputError("pol", pol, f"one of {sorted(WATER_DB)}")
    h = F.block_histogram_blocks(
        db,
        _BINS,
        block_px=block_px,
        min_valid=0.5,
        min_ashman_d=MIN_ASHMAN_D,
        max_low_mean=FALLBACK_DB[pol],
    )
    decisions = da.blockwise(
        _decisions_of_blocks,
        "tk",
        h.rechunk({0: 1, 1: -1, 2: -1, 3: -1}),
        "tabc",
        new_axes={"k": 4},
        concatenate=True,
        nb=len(_BINS) - 1,
        pol=pol,
        dtype="float64",
        meta=np.empty((0, 0), dtype=np.float64),
    )
    # Date by date (in the chunks of the dates): a date's threshold reads no other date, so a
    # graph culled to some dates computes those only.
    dates = db.chunks[0]
    if pol != "VH" or vv is None:
        evidence = da.zeros((db.shape[0], 0), chunks=(dates, 0), dtype="float64")
    else:
        split = decisions[:, 1].rechunk((dates,))[:, None, None]
        ny, nx, nb = len(db.chunks[1]), len(db.chunks[2]), len(_BINS) - 1
        evidence = da.map_blocks(
            _vv_evidence_np,
            db,
            vv.rechunk(db.chunks),
            split,
            new_axis=3,
            chunks=(dates, (1,) * ny, (1,) * nx, (nb + 1,)),
            dtype="float64",
            meta=np.empty((0, 0, 0, 0), dtype=np.float64),
        ).sum(axis=(1, 2))
    return da.map_blocks(
        settle,
        decisions.rechunk((dates, 4)),
        evidence.rechunk((dates, -1)),
        pol=pol,
        drop_axis=1,
        chunks=(dates,),
        dtype=dtype,
        meta=np.empty((0,), dtype=dtype),
    )


def auto_threshold(
    db: xr.DataArray, pol: str, block_px: int = 64, vv: xr.DataArray | None = None
) -> xr.DataArray:
    """Per-date water threshold (time,) in dB of a filtered (time, y, x) ``pol`` image, lazily
    (``vv``: the filtered VV when VH decides, :func:`threshold_of`)."""
    thr = threshold_of(db.data, pol, block_px, vv=None if vv is None else vv.data)
    return xr.DataArray(thr, dims=("time",), coords={"time": db.coords["time"]})


# --------------------------------------------------------------------------- decision


class WaterEvidence(NamedTuple):
    """Water of filtered (time, y, x) images and what decided it."""

    water: xr.DataArray
    """bool (time, y, x): open water."""
    valid: xr.DataArray
    """bool (time, y, x): VV (and VH, when given) present."""
    primary: xr.DataArray
    """float32 (time, y, x) dB of the deciding polarisation (VH when given, else VV)."""
    pol: str
    """The deciding polarisation."""
    threshold: xr.DataArray
    """float32 (time,) dB threshold on ``primary``."""


def sure_water_np(primary: np.ndarray, reach: int) -> np.ndarray:
    """Where VH alone decides, bool of the shape of ``primary`` ((time,) y, x filtered VH dB):
    VH below :data:`VH_WATER_ONLY_DB`, grown by ``reach`` px (a square; the speckle filter
    smears a water edge, :data:`SURE_WATER_REACH_PX`)."""
    with np.errstate(invalid="ignore"):
        seed = np.asarray(primary) < VH_WATER_ONLY_DB
    return F.any_in_window_np(seed, 2 * reach + 1) if reach > 0 else seed


def sure_water(primary: da.Array, reach: int) -> da.Array:
    """:func:`sure_water_np` of a lazy (time, y, x) filtered VH, with a ``reach`` px halo."""
    return F.overlap(sure_water_np, primary, depth=reach, dtype=bool, reach=reach)


def dark(
    primary: xr.DataArray,
    vv: xr.DataArray,
    pol: str,
    threshold: xr.DataArray | float,
    sure: xr.DataArray | None,
) -> xr.DataArray:
    """``primary < threshold``; when VH is primary, VV inside the water range too unless the
    pixel is ``sure`` water (:func:`sure_water_np`; None only when VV decides)."""
    out = primary < threshold
    if pol == "VH":
        assert sure is not None, "VH decides: the sure-water mask is needed"
        out = out & ((vv < WATER_DB["VV"][1]) | sure)
    return out


def dark_np(
    primary: np.ndarray, vv: np.ndarray, pol: str, thr: Any, sure: np.ndarray | None
) -> np.ndarray:
    """:func:`dark` on numpy arrays (``sure`` None only when VV decides)."""
    out = primary < thr
    if pol == "VH":
        assert sure is not None, "VH decides: the sure-water mask is needed"
        out &= (vv < WATER_DB["VV"][1]) | sure
    return out


def water_code(
    vv: np.ndarray,
    vh: np.ndarray | None,
    sure: np.ndarray | None,
    thr: np.ndarray,
    pol: str,
) -> np.ndarray:
    """:func:`water_from_db` on one block as class codes (no minimum mapping unit): filtered
    (time, y, x) dB planes (``vh`` None without VH), the sure-water mask (:func:`sure_water_np`;
    None without VH) and per-date thresholds (time,) in dB -> uint8 (time, y, x) 0 nodata,
    1 land, 2 water."""
    primary = vh if vh is not None else vv
    valid = ~np.isnan(vv) & ~np.isnan(primary)
    water = dark_np(primary, vv, pol, thr.reshape(-1, 1, 1), sure) & valid
    return valid.astype(np.uint8) + water.view(np.uint8)


def _water_classes(
    vv: np.ndarray,
    vh: np.ndarray | None,
    sure: np.ndarray | None,
    thr: np.ndarray,
    steep: np.ndarray | None,
    pol: str,
    min_px: int,
) -> np.ndarray:
    """:func:`water_code` of a block, water on ``steep`` terrain (y, x; None: no DEM) set to
    land, then, with ``min_px`` > 1 (the block holds whole planes), water components smaller
    than ``min_px`` set to land."""
    code = water_code(vv, vh, sure, thr, pol)
    if steep is not None:
        np.copyto(code, np.uint8(WATER_LAND), where=(code == WATER_WATER) & steep)
    if min_px > 1:
        small = F.small_components_np(code == WATER_WATER, min_px)
        np.copyto(code, np.uint8(WATER_LAND), where=small)
    return code


def drop_small_classes(
    code: np.ndarray, min_px: int, classes: tuple[int, ...], into: int
) -> np.ndarray:
    """Class codes with the 8-connected components of ``classes`` (taken together) smaller
    than ``min_px`` pixels set to ``into`` (per 2-D plane)."""
    target = code == classes[0]
    for c in classes[1:]:
        target |= code == c
    out = code.copy()
    np.copyto(out, np.uint8(into), where=F.small_components_np(target, min_px))
    return out


def blockwise_args(*arrays: da.Array | None, index: str = "tyx") -> list[Any]:
    """``(array, index)`` pairs for :func:`dask.array.blockwise` (None passed as a literal)."""
    out: list[Any] = []
    for arr in arrays:
        out += [arr, None if arr is None else index]
    return out


def water_from_db(
    vv: xr.DataArray,
    vh: xr.DataArray | None,
    block_px: int = 64,
    reach: int = SURE_WATER_REACH_PX,
) -> WaterEvidence:
    """Open water of filtered (time, y, x) VV (and VH) dB images (no minimum mapping unit);
    ``reach``: the reach of sure water (px)."""
    pol, primary = ("VH", vh) if vh is not None else ("VV", vv)
    thr = auto_threshold(primary, pol, block_px, vv=vv if vh is not None else None)
    valid = vv.notnull() & primary.notnull()
    sure = None if vh is None else vh.copy(data=sure_water(F.as_dask(vh).data, reach))
    water = dark(primary, vv, pol, thr, sure) & valid
    return WaterEvidence(water, valid, primary, pol, thr)


def min_pixels(mmu_ha: float, pixel_m: float) -> int:
    """Pixels of ``mmu_ha`` hectares at ``pixel_m`` metres per pixel (at least 1)."""
    return max(1, int(np.ceil(mmu_ha * 10_000.0 / (pixel_m * pixel_m))))


def water_mask(
    s1: xr.DataArray,
    dem: xr.DataArray | None = None,
    *,
    speckle_size: int = 5,
    enl: float = ENL_IW_GRDH,
    block_px: int = 64,
    mmu_ha: float = MMU_HA,
    max_slope_deg: float = MAX_SLOPE_DEG,
) -> xr.DataArray:
    """Open water of each S1 date, lazily.

    ``s1``: (time, band, y, x) float32 backscatter in dB with VV (and VH), NaN nodata.
    ``dem``: optional (y, x) float elevation (m) on the same grid: terrain steeper than
    ``max_slope_deg`` is land, and stays out of the thresholds' histograms (radar shadow and
    wet snow on mountain slopes are as dark as water; a water surface is level, and a DEM
    flattens lakes and wide rivers). Returns (time, y, x) uint8: 0 nodata, 1 land, 2 water.
    See the module docstring.
    """
    s1 = validate_s1(s1, "s1")
    if speckle_size < 1 or speckle_size % 2 == 0:
        raise BadInputError("speckle_size", speckle_size, "an odd window size >= 1 in pixels")
    if block_px < 8:
        raise BadInputError("block_px", block_px, "a sub-tile size >= 8 pixels")
    if not mmu_ha >= 0:
        raise BadInputError("mmu_ha", mmu_ha, "an area >= 0 hectares")
    if not max_slope_deg > 0:
        raise BadInputError("max_slope_deg", max_slope_deg, "a slope > 0 degrees")
    bands = [str(b) for b in s1.coords["band"].values]
    data = s1.data  # (time, band, y, x)
    pixel_m = F.pixel_size_m(s1)
    steep = None
    if dem is not None:
        dem = F.require_dims(dem, "dem", ("y", "x"))
        if dem.shape != tuple(s1.sizes[d] for d in ("y", "x")):
            raise BadInputError("dem", dem.shape, "the (y, x) shape of s1")
        steep = T.steep_mask(F.as_dask(dem).data, pixel_m, max_slope_deg)
        steep = steep.rechunk(data.chunks[2:])

    def lee(band: str) -> da.Array:
        return F.lee_filter(data[:, bands.index(band)].astype("float32"), speckle_size, enl)

    vv = lee("VV")
    vh = lee("VH") if "VH" in bands else None
    pol, primary = ("VH", vh) if vh is not None else ("VV", vv)
    # Steep terrain stays out of the histograms (NaN is no sample) but is filtered as it is.
    measured = primary if steep is None else da.where(steep[None], np.float32(np.nan), primary)
    thr = threshold_of(measured, pol, block_px, vv=vv if vh is not None else None)
    sure = sure_water(vh, SURE_WATER_REACH_PX) if vh is not None else None
    min_px = min_pixels(mmu_ha, pixel_m)
    # Decision and classes in one call per block, with the minimum mapping unit when a block
    # holds whole planes; else the mapping unit on the codes, with a halo.
    fused = all(len(c) == 1 for a in (vv, vh) if a is not None for c in a.chunks[1:])
    code = da.blockwise(
        _water_classes,
        "tyx",
        *blockwise_args(vv, vh, sure),
        thr,
        "t",
        *blockwise_args(steep, index="yx"),
        pol=pol,
        min_px=min_px if fused else 0,
        dtype="uint8",
        meta=np.empty((0, 0, 0), dtype=np.uint8),
        align_arrays=True,
    )
    if min_px > 1 and not fused:
        code = F.overlap(
            drop_small_classes,
            code,
            depth=min_px,
            dtype="uint8",
            min_px=min_px,
            classes=(WATER_WATER,),
            into=WATER_LAND,
        )
    out = xr.DataArray(
        code,
        dims=("time", "y", "x"),
        coords={k: v for k, v in s1.coords.variables.items() if set(v.dims) <= {"time", "y", "x"}},
    )
    out.name = "water_mask"
    out.attrs["classes"] = "0 nodata, 1 land, 2 water"
    out.attrs.update({k: v for k, v in s1.attrs.items() if k in ("crs", "epsg")})
    return out
