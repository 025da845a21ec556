"""dehaze: He et al. (2009, 2010) dark-channel-prior haze removal for S2 B02, B03, B04, B08.

Scattering model per band ``c``: ``I_c = J_c t_c + A_c (1 - t_c)``; the stage estimates ``A`` and
``t`` and returns ``J_c = (I_c - A_c) / max(t_c, t0) + A_c`` (clipped at 0).

1. **Atmospheric light** ``A`` (time, band): per scene, the mean of ``I`` over the pixels whose
   dark channel (from ``haze_index``) is in the top 0.1 % among the pixels that carry haze
   evidence (``pixel_weight >= 0.5``: clear land, not a bright surface; every valid pixel when
   none does). The percentile comes from an exact per-scene histogram (a dask reduction), so
   ``A`` is lazy and does not depend on chunking.
2. **Haze fraction** ``h``: dark channel of ``I / A`` over B02-B04 (15 x 15 window),
   ``h = (D - j0) / (1 - j0)`` clipped to 0..1, where ``j0 = floor / A`` is the dark channel a
   haze-free scene would have. He et al. take it as 0; satellite scenes rarely have fully black
   pixels, and taking 0 would "dehaze" clear scenes, so ``floor`` is the scene's 1st percentile
   of the dark channel (reflectance) capped at ``max_floor`` (0.03): a clear scene gets
   ``h ~ 0`` and stays unchanged, while uniform haze (whose floor exceeds the cap) is still
   removed, down to the cap.
   **With SWIR** (B12, else B11; ``use_swir``): a second estimate from the surface floor that
   SWIR predicts per pixel (``haze.surface_floor``, the dark-target relation of Kaufman et al.
   1997): ``h_swir = min over a swir_window square (31 px) of (D_px - f) / (1 - f)``, with
   ``D_px`` the per-pixel dark channel of ``I / A`` and ``f`` the floor over ``A``. The plain
   dark channel over-reads haze wherever a window holds no dark surface (bare soil in spring
   and after harvest), the SWIR floor wherever a surface is bluer than the relation says
   (top-of-atmosphere scenes with Rayleigh path radiance, roofs). Both over-read, neither
   under-reads on the surfaces it is made for, so the smaller of the two is kept:
   ``h = min(h, h_swir)``.
3. **Spatial support**: ``h`` is averaged over a ``(2 r + 1)`` px box weighted by the haze
   evidence, with a weak prior toward the scene's mean haze where a window has little
   evidence, then refined by the guided filter (He et al. 2010; radius ``r``, ``eps``) guided
   by the blue band. Without SWIR the evidence is ``pixel_weight`` (bright soil, water and
   clouds do not count). With SWIR it is all land the index counted (clear, or every pixel of
   a mostly cloudy scene; not water, NDWI > 0): ``h_swir`` holds on bare soil too, and
   bright-surface weights would keep only the soil whose redness haze has lowered, i.e. the
   hazy part of the scene, and spread its haze over the clear part.
4. **Transmission**: ``t_ref = 1 - omega h`` (at least ``t0``) is the transmission of B04: with
   haze thicker at short wavelengths, the RGB minimum of ``I / A`` over dark targets sits in the
   red band. Each band follows the Angstrom law ``tau ~ lambda ** -alpha``:
   ``t_c = t_ref ** ((lambda_c / 665 nm) ** -alpha)``, i.e. ``t_c = t_blue ** (beta_c / beta_blue)``
   with ``beta ~ lambda ** -alpha`` (B02 490, B03 560, B04 665, B08 842 nm).

**Airlight floor.** Satellite scenes seldom hold opaque haze, so the brightest hazy pixels
only bound ``A`` from below, and an ``A`` that is too small over-amplifies every bright surface
(``J = I t / t_est`` with ``t_est`` too small). ``A`` is therefore at least ``min_airlight``
(0.3 reflectance, about the reflectance of an optically thick, non-absorbing haze layer); an
``A`` that is too large only under-corrects. A known ``airlight`` (per band) may be given.

Pass-through: NaN input stays NaN. Pixels the cloud mask calls cloud or shadow (``obscured``)
are returned unchanged where the estimated transmission is below ``t_opaque`` (0.3): an opaque
cloud hides the surface and cannot be restored. Thin cloud and shadow (whose dark channel is low)
are restored like any hazy pixel; a mostly cloudy scene such as a fog or thin-cloud deck is thus
still restored where it is semi-transparent.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import cv2
import dask.array as da
import numpy as np
import xarray as xr

from pipelines.errors import BadInputError
from pipelines.stages import filters as F
from pipelines.stages.haze import SWIR_FLOOR, TRUE_COLOUR_MAX

__all__ = ["BGRN", "WAVELENGTH_NM", "dehaze"]

BGRN = ("B02", "B03", "B04", "B08")
#: Central wavelengths (nm) of the restored bands.
WAVELENGTH_NM = {"B02": 490.0, "B03": 560.0, "B04": 665.0, "B08": 842.0}
_REF_NM = 665.0
_NEEDED_VARS = ("dark_channel", "pixel_weight", "obscured")
_DC_BINS = np.linspace(0.0, 255.0, 1021)
# Output types of the block functions, given to dask (else it calls them on empty arrays).
_META2 = np.empty((0, 0), dtype=np.float64)
_META3 = np.empty((0, 0, 0), dtype=np.float32)
_META4 = np.empty((0, 0, 0, 0), dtype=np.float64)


def _quantile_np(hist: np.ndarray, q: float, from_top: bool) -> np.ndarray:
    """Lower bin edge (time,) of the ``q`` quantile of per-time histograms (time, nbins)."""
    total = hist.sum(axis=1, keepdims=True)
    need = np.maximum(1.0, np.ceil(q * total))
    if from_top:
        above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # pixels in bins >= k
        k = (above >= need).sum(axis=1) - 1
    else:
        below = np.cumsum(hist, axis=1)  # pixels in bins <= k
        k = (below < need).sum(axis=1)
    return _DC_BINS[:-1][np.clip(k, 0, len(_DC_BINS) - 2)]


def _scene_stats_np(hists: np.ndarray, top_fraction: float) -> np.ndarray:
    """Per scene (time, 3) float64 from the dark-channel histograms (time, 2 nbins) of the
    evidence pixels and of every valid pixel: the airlight threshold (the top ``top_fraction``
    of the evidence pixels, of every valid pixel in a scene without evidence), whether the
    scene has evidence (1/0), and the 1st percentile of the same pixels (0..255 scale)."""
    nb = len(_DC_BINS) - 1
    has_evidence = hists[:, :nb].sum(axis=1) > 0
    hist = np.where(has_evidence[:, None], hists[:, :nb], hists[:, nb:])
    out = np.empty((hists.shape[0], 3), dtype="float64")
    out[:, 0] = _quantile_np(hist, top_fraction, from_top=True)
    out[:, 1] = has_evidence
    out[:, 2] = _quantile_np(hist, 0.01, from_top=False)
    return out


def _params_np(
    stats: np.ndarray,
    *sums: np.ndarray,
    min_airlight: float,
    max_floor: float,
    airlight: tuple[float, ...] | None,
) -> np.ndarray:
    """Per scene (time, 5) float32: A of B02, B03, B04, B08 (the mean of the brightest
    candidates, ``sums``: their band sums and count, at least ``min_airlight``; the given
    ``airlight`` instead when set) and j0, the haze-free dark channel over A (the scene floor,
    at most ``max_floor``, over the visible A, within 0..0.95)."""
    n = stats.shape[0]
    out = np.empty((n, len(BGRN) + 1), dtype=np.float32)
    if airlight is None:
        count = sums[0][:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums[0][:, :-1] / np.where(count > 0, count, np.nan)[:, None]
        out[:, : len(BGRN)] = np.fmax(mean, min_airlight)
    else:
        out[:, : len(BGRN)] = np.float32(1.0) * np.array(airlight, dtype=np.float32)
    a_vis = (out[:, 0] + out[:, 1] + out[:, 2]) / np.float32(3.0)
    p1 = stats[:, 2] / 255.0 * TRUE_COLOUR_MAX
    out[:, len(BGRN)] = np.clip(np.fmin(p1, max_floor) / a_vis, 0.0, 0.95)
    return out


def _scene_haze_np(sums: np.ndarray) -> np.ndarray:
    """Evidence-weighted mean haze per scene (time, 1, 1) float32 from the sums (time, 2) of
    haze times evidence and of the evidence."""
    return (sums[:, 0] / np.fmax(sums[:, 1], 1e-6)).astype(np.float32)[:, None, None]


def _buf(slot: str, shape: tuple[int, ...], dtype: object = np.float32) -> np.ndarray:
    """This thread's work buffer ``dehaze_<slot>`` (:func:`pipelines.stages.filters.work_buffer`):
    intermediate planes of the block functions, never returned. The float planes ``f1``-``f5``
    are shared by the block functions (a thread runs one at a time; in the support-and-restore
    call the support's ``f3`` holds the haze the recovery reads): five planes per thread, not
    one per intermediate."""
    return F.work_buffer(f"dehaze_{slot}", shape, dtype)


def _invalid_np(b2: np.ndarray, b3: np.ndarray, b4: np.ndarray, b8: np.ndarray) -> np.ndarray:
    """Where any of the four bands is NaN (a work buffer, bool)."""
    shape = b2.shape
    out = np.isnan(b2, out=_buf("invalid", shape, bool))
    tmp = _buf("isnan", shape, bool)
    for b in (b3, b4, b8):
        out |= np.isnan(b, out=tmp)
    return out


def _evidence_np(weight: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Haze evidence for the airlight: ``pixel_weight >= 0.5`` and valid (NaN weight is no
    evidence); a work buffer, bool."""
    ev = np.greater_equal(weight, 0.5, out=_buf("evidence", weight.shape, bool))
    ev &= np.logical_not(invalid, out=_buf("valid", weight.shape, bool))
    return ev


def _hist_block(dark: np.ndarray, weight: np.ndarray, *bgrn: np.ndarray) -> np.ndarray:
    """Per-time histograms (time, 1, 1, 2 nbins) of the dark channel over the evidence pixels,
    then over every valid pixel."""
    invalid = _invalid_np(*bgrn)
    ev = _evidence_np(weight, invalid)
    nb = len(_DC_BINS) - 1
    # One bincount for both: bins 0..nb of the other valid pixels (nb: invalid or out of
    # range), then nb + 1.. of the evidence pixels.
    code = F.bin_index(dark, _DC_BINS)
    np.copyto(code, nb, where=invalid)
    np.add(code, nb + 1, out=code, where=ev)
    out = np.zeros((dark.shape[0], 1, 1, 2 * nb), dtype="float64")
    for i in range(dark.shape[0]):
        counts = np.bincount(code[i].ravel(), minlength=2 * (nb + 1))
        hist_ev = counts[nb + 1 : 2 * nb + 1]
        out[i, 0, 0, :nb] = hist_ev
        out[i, 0, 0, nb:] = counts[:nb] + hist_ev
    return out


def _airlight_block(
    dark: np.ndarray,
    weight: np.ndarray,
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    b8: np.ndarray,
    thr: np.ndarray,
    has_evidence: np.ndarray,
) -> np.ndarray:
    """Per-time sums (time, 1, 1, 5) of each band over the brightest candidates, and their
    count; ``thr`` and ``has_evidence`` are (time, 1, 1).

    The dark channel reaches ``thr`` on about ``top_fraction`` of a scene: the candidate rules
    (valid, evidence) are read on those pixels alone."""
    out = np.zeros((dark.shape[0], 1, 1, 5), dtype="float64")
    above = np.greater_equal(dark, thr, out=_buf("above", dark.shape, bool))
    for i in range(dark.shape[0]):
        idx = np.flatnonzero(above[i])
        if not idx.size:
            continue
        vals = [b[i].ravel()[idx] for b in (b2, b3, b4, b8)]
        bright = ~(np.isnan(vals[0]) | np.isnan(vals[1]) | np.isnan(vals[2]) | np.isnan(vals[3]))
        if has_evidence[i].item():
            bright &= weight[i].ravel()[idx] >= 0.5
        for k, v in enumerate(vals):
            out[i, 0, 0, k] = v[bright].sum(dtype="float64")
        out[i, 0, 0, 4] = np.count_nonzero(bright)
    return out


def _land_evidence_block(
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    b8: np.ndarray,
    obscured: np.ndarray,
    *all_px: np.ndarray,
) -> np.ndarray:
    """Evidence with SWIR: valid land (NDWI <= 0) the index counted, float32 0/1."""
    shape = b2.shape
    counted = np.logical_not(obscured, out=_buf("counted", shape, bool))
    if all_px:
        counted |= all_px[0].astype(bool)  # mostly cloudy scene: every pixel counted
    counted &= np.logical_not(_invalid_np(b2, b3, b4, b8), out=_buf("valid", shape, bool))
    ndwi = np.subtract(b3, b8, out=_buf("f1", shape))
    den = np.add(b3, b8, out=_buf("f2", shape))
    den += np.float32(1e-6)
    ndwi /= den
    counted &= np.less_equal(ndwi, 0.0, out=_buf("land", shape, bool))
    out = np.empty(shape, dtype=np.float32)
    np.copyto(out, counted)
    return out


def _weight_evidence_block(
    b2: np.ndarray, b3: np.ndarray, b4: np.ndarray, b8: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Evidence without SWIR: the haze index's pixel weight (0 where invalid), float32."""
    w = np.array(weight, dtype=np.float32, copy=True)
    invalid = _invalid_np(b2, b3, b4, b8)
    invalid |= np.isnan(w, out=_buf("isnan", w.shape, bool))
    np.copyto(w, np.float32(0.0), where=invalid)
    return w


def _haze_block(
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    w_ev: np.ndarray,
    *rest: np.ndarray,
    window: int,
    swir_window: int,
    swir_factor: float | None,
) -> np.ndarray:
    """Haze fraction times evidence (time, y, x) float32 of a block with halo; ``rest``: the
    SWIR band when ``swir_factor`` is set, then A of B02, B03, B04 and j0, each (time, 1, 1)."""
    swir = rest[0] if swir_factor is not None else None
    a2, a3, a4, j0 = rest[-4:]
    shape = b2.shape
    # Dark channel of I / A per pixel (NaN where a band is NaN).
    norm_min = np.divide(b2, a2, out=_buf("f1", shape))
    tmp = np.divide(b3, a3, out=_buf("f2", shape))
    np.minimum(norm_min, tmp, out=norm_min)
    np.minimum(norm_min, np.divide(b4, a4, out=tmp), out=norm_min)
    haze = np.empty(shape, dtype=np.float32)
    if swir is not None:
        a_vis = (a2 + a3 + a4) / np.float32(3.0)
        j_swir = np.multiply(swir, np.float32(swir_factor), out=_buf("f3", shape))
        np.copyto(j_swir, np.float32(0.0), where=np.isnan(j_swir))  # no SWIR: no floor
        j_swir /= a_vis
        np.clip(j_swir, 0.0, 0.95, out=j_swir)
        resid_in = np.subtract(norm_min, j_swir, out=_buf("f4", shape))
        resid = F.min_filter_into(resid_in, swir_window, _buf("f5", shape))
        resid /= np.subtract(np.float32(1.0), j_swir, out=j_swir)
        np.clip(resid, 0.0, 1.0, out=resid)
    F.min_filter_into(norm_min, window, haze)
    haze -= j0
    haze /= 1.0 - j0
    np.clip(haze, 0.0, 1.0, out=haze)
    if swir is not None:
        np.fmin(haze, resid, out=haze)
    np.copyto(haze, np.float32(0.0), where=np.isnan(haze))
    haze *= w_ev
    return haze


def _sum2_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], 1, 1, 2), dtype="float64")
    for i in range(a.shape[0]):
        out[i, 0, 0] = a[i].sum(dtype="float64"), b[i].sum(dtype="float64")
    return out


#: Weight of the scene's mean haze in each window's evidence-weighted mean (a weak prior).
_PRIOR = 0.05


def _support_block(
    hw: np.ndarray,
    w_ev: np.ndarray,
    guide: np.ndarray,
    scene_h: np.ndarray,
    radius: int,
    eps: float,
) -> np.ndarray:
    """Evidence-weighted box mean of the haze with a weak prior to the scene mean, refined by
    the guided filter on the blue band, clipped to 0..1 (float32, a work buffer of this
    thread)."""
    size = 2 * radius + 1
    shape = hw.shape
    # hw and w_ev hold no NaN (0 where invalid): plain box means.
    num = F.box_np(hw, size, out=_buf("f1", shape))
    den = F.box_np(w_ev, size, out=_buf("f2", shape))
    num += np.float32(_PRIOR) * scene_h
    den += np.float32(_PRIOR)
    num /= den
    h = F.guided_np(guide, num, radius, eps, out=_buf("f3", shape))
    np.clip(h, 0.0, 1.0, out=h)
    return h


def _restore_block(
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    b8: np.ndarray,
    h_ref: np.ndarray,
    obscured: np.ndarray,
    *airlight: np.ndarray,
    omega: float,
    t0: float,
    t_opaque: float,
    expo: tuple[float, ...],
) -> np.ndarray:
    """Recovered B02, B03, B04, B08 (time, 4, y, x) float32; ``airlight``: A per band, each
    (time, 1, 1).

    NaN in any band makes the transmission NaN there, so every band's recovery is NaN there;
    NaN transmission never counts as below ``t_opaque``."""
    shape = b2.shape
    t_ref = np.multiply(h_ref, np.float32(-omega), out=_buf("f1", shape))
    t_ref += np.float32(1.0)  # 1 - omega h
    np.clip(t_ref, t0, 1.0, out=t_ref)
    np.copyto(t_ref, np.float32(np.nan), where=_invalid_np(b2, b3, b4, b8))
    keep = np.less(t_ref, t_opaque, out=_buf("keep", shape, bool))  # False where NaN
    keep &= obscured.astype(bool, copy=False)
    any_keep = bool(keep.any())
    out = np.empty((b2.shape[0], 4, *b2.shape[1:]), dtype=np.float32)
    log_t = _buf("f2", shape)
    t_band = _buf("f4", shape)
    log_planes, band_planes = F.planes(log_t), F.planes(t_band)
    for i, plane in enumerate(F.planes(t_ref)):
        cv2.log(plane, log_planes[i])  # NaN stays NaN
    for k, (band, a, e) in enumerate(zip((b2, b3, b4, b8), airlight, expo, strict=True)):
        np.multiply(log_t, np.float32(e), out=t_band)
        for plane in band_planes:
            cv2.exp(plane, plane)  # t_ref ** e
        if e >= 1.0:  # t_ref ** e <= t_ref: may fall below t0 (else it stays above t0)
            np.clip(t_band, np.float32(t0), np.float32(1.0), out=t_band)
        r = out[:, k]
        np.subtract(band, a, out=r)
        r /= t_band
        r += a
        np.clip(r, np.float32(0.0), np.float32(np.inf), out=r)  # NaN stays NaN
        if any_keep:
            np.copyto(r, band, where=keep)
    return out


def _refine_restore_block(
    hw: np.ndarray,
    w_ev: np.ndarray,
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    b8: np.ndarray,
    obscured: np.ndarray,
    scene_h: np.ndarray,
    *airlight: np.ndarray,
    radius: int,
    eps: float,
    omega: float,
    t0: float,
    t_opaque: float,
    expo: tuple[float, ...],
) -> np.ndarray:
    """Steps 3 and 4 of a block with halo in one call: the haze's spatial support and guided
    filter (:func:`_support_block`), then the transmission per band and the recovery
    (:func:`_restore_block`); (time, 4, y, x) float32."""
    h_ref = _support_block(hw, w_ev, b2, scene_h, radius, eps)
    return _restore_block(
        b2, b3, b4, b8, h_ref, obscured, *airlight, omega=omega, t0=t0, t_opaque=t_opaque, expo=expo
    )


def dehaze(
    s2: xr.DataArray,
    haze_index: xr.Dataset,
    *,
    omega: float = 0.95,
    t0: float = 0.1,
    radius_m: float = 400.0,
    eps: float = 1e-3,
    angstrom: float = 1.3,
    top_fraction: float = 0.001,
    max_floor: float = 0.03,
    window: int = 15,
    airlight: dict[str, float] | None = None,
    min_airlight: float = 0.3,
    t_opaque: float = 0.3,
    use_swir: bool = True,
    swir_window: int = 31,
) -> xr.DataArray:
    """Haze-free B02, B03, B04, B08 reflectance of each date, lazily.

    ``s2``: (time, band, y, x) reflectance 0..1 with B02, B03, B04, B08.
    ``haze_index``: the ``haze_index`` stage's Dataset for the same dates and grid.
    ``radius_m``: guided-filter radius in metres (40 px at 10 m); ``angstrom``: Angstrom exponent
    of the haze; ``airlight``: known atmospheric light per band (reflectance), replacing the
    estimate; ``min_airlight``: lower bound of the estimate; ``t_opaque``: transmission below
    which cloud pixels are passed through; ``use_swir``: also estimate haze from the SWIR
    surface floor when B12 or B11 is present; ``swir_window``: its window in px. Returns
    (time, band, y, x) float32 reflectance, bands B02, B03, B04, B08.
    """
    s2 = F.require_dims(s2, "s2", ("time", "band", "y", "x"))
    F.require_bands(s2, "s2", BGRN)
    if not isinstance(haze_index, xr.Dataset):
        raise BadInputError(
            "haze_index", type(haze_index).__name__, "the xarray.Dataset of the haze_index stage"
        )
    for var in _NEEDED_VARS:
        if var not in haze_index:
            raise BadInputError(
                "haze_index",
                sorted(haze_index.data_vars),
                f"a Dataset holding {list(_NEEDED_VARS)}",
                f"variable {var!r} is missing",
            )
    for dim in ("time", "y", "x"):
        if haze_index.sizes.get(dim) != s2.sizes[dim]:
            raise BadInputError(
                f"haze_index.{dim}", haze_index.sizes.get(dim), f"{s2.sizes[dim]} (as in s2)"
            )
    if not 0.0 < omega <= 1.0:
        raise BadInputError("omega", omega, "a value in (0, 1]")
    if not 0.0 < t0 < 1.0:
        raise BadInputError("t0", t0, "a value in (0, 1)")
    if airlight is not None and (
        not all(b in airlight for b in BGRN) or min(airlight[b] for b in BGRN) <= 0
    ):
        raise BadInputError("airlight", airlight, f"a positive reflectance for each of {BGRN}")
    if swir_window < 1 or swir_window % 2 == 0:
        raise BadInputError("swir_window", swir_window, "an odd window size >= 1 in pixels")
    if radius_m < 0 or eps <= 0:
        raise BadInputError("radius_m/eps", (radius_m, eps), "radius_m >= 0 and eps > 0")

    present = [str(b) for b in s2.coords["band"].values]
    pixel_m = F.pixel_size_m(s2)
    radius = max(1, F.pixels_for(radius_m, pixel_m))
    s2 = F.as_dask(s2)
    data = s2.data  # (time, band, y, x): require_dims put the dims in this order

    def plane(name: str) -> da.Array:
        arr = data[:, present.index(name)]
        return arr if arr.dtype == np.float32 else arr.astype("float32")

    bands = [plane(b) for b in BGRN]
    chunks = bands[0].chunks
    per_time = (chunks[0], 1, 1)

    def layer(name: str) -> da.Array:
        var = haze_index[name]
        arr = F.as_dask(var.transpose(*[d for d in ("time", "y", "x") if d in var.dims])).data
        return arr.rechunk(chunks if arr.ndim == 3 else per_time[0])

    dark, weight, obscured = (layer(v) for v in ("dark_channel", "pixel_weight", "obscured"))

    # 1. atmospheric light per scene and band: top fraction of the dark channel among the
    # pixels carrying haze evidence (every valid pixel of a scene without any).
    nb = len(_DC_BINS) - 1
    ny, nx = len(chunks[1]), len(chunks[2])
    red_chunks = (chunks[0], (1,) * ny, (1,) * nx)
    hists = da.map_blocks(
        _hist_block,
        dark,
        weight,
        *bands,
        new_axis=3,
        chunks=(*red_chunks, (2 * nb,)),
        dtype="f8",
        meta=_META4,
    ).sum(axis=(1, 2))
    stats = da.map_blocks(
        _scene_stats_np,
        hists.rechunk({1: -1}),
        top_fraction=top_fraction,
        chunks=(chunks[0], (3,)),
        dtype="f8",
        meta=_META2,
    )
    if airlight is None:
        sums = da.map_blocks(
            _airlight_block,
            dark,
            weight,
            *bands,
            stats[:, 0, None, None],
            stats[:, 1, None, None] > 0,
            new_axis=3,
            chunks=(*red_chunks, (len(BGRN) + 1,)),
            dtype="f8",
            meta=_META4,
        ).sum(axis=(1, 2))
    else:
        sums = None
    # A per band and j0, (time, 5) float32.
    params = da.map_blocks(
        _params_np,
        stats,
        *([sums.rechunk({1: -1})] if sums is not None else []),
        min_airlight=min_airlight,
        max_floor=max_floor,
        airlight=tuple(airlight[b] for b in BGRN) if airlight is not None else None,
        chunks=(chunks[0], (len(BGRN) + 1,)),
        dtype="f4",
        meta=_META2.astype("f4"),
    )
    a_band = [params[:, k, None, None] for k in range(len(BGRN))]
    j0 = params[:, len(BGRN), None, None]

    # 2. haze fraction: windowed dark channel of I / A above the scene's floor, and with SWIR
    # the smaller estimate above the SWIR surface floor.
    swir_band = next((b for b in ("B12", "B11") if b in present), None) if use_swir else None
    swir = [plane(swir_band)] if swir_band else []
    # 3. evidence: without SWIR the haze weights; with SWIR all land the index counted.
    if swir_band is not None:
        counted = [layer("all_pixels")] if "all_pixels" in haze_index else []
        counted = [c[:, None, None] for c in counted]
        w_ev = da.map_blocks(
            _land_evidence_block, *bands, obscured, *counted, dtype="f4", meta=_META3
        )
    else:
        w_ev = da.map_blocks(_weight_evidence_block, *bands, weight, dtype="f4", meta=_META3)
    depth = max(window, swir_window if swir else 1) // 2
    hw = F.overlap(
        _haze_block,
        *bands[:3],
        w_ev,
        *swir,
        depth=depth,
        dtype="float32",
        per_time=(*a_band[:3], j0),
        window=window,
        swir_window=swir_window,
        swir_factor=SWIR_FLOOR[swir_band] if swir_band else None,
    )
    hw = hw.rechunk(chunks)
    scene_h = da.map_blocks(
        _scene_haze_np,
        da.map_blocks(
            _sum2_block, hw, w_ev, new_axis=3, chunks=(*red_chunks, (2,)), dtype="f8", meta=_META4
        ).sum(axis=(1, 2)),
        drop_axis=1,
        new_axis=(1, 2),
        chunks=per_time,
        dtype="f4",
        meta=_META3,
    )
    # 3-4. spatial support and guided filter, transmission per band (Angstrom scaling) and
    # recovery, in one call per chunk.
    expo = tuple(float((WAVELENGTH_NM[b] / _REF_NM) ** (-angstrom)) for b in BGRN)
    restored = F.overlap(
        _refine_restore_block,
        hw,
        w_ev,
        *bands,
        obscured,
        depth=3 * radius + 1,
        dtype="float32",
        per_time=(scene_h, *a_band),
        bands=len(BGRN),
        radius=radius,
        eps=eps,
        omega=omega,
        t0=t0,
        t_opaque=t_opaque,
        expo=expo,
    ).rechunk((chunks[0], (len(BGRN),), *chunks[1:]))
    # Coordinates: those on (time, y, x) and the band coordinates of B02, B03, B04, B08.
    picked = [present.index(b) for b in BGRN]
    coords: dict[Hashable, Any] = {}
    for name, coord in s2.coords.items():
        if name == "band":
            continue
        if "band" in coord.dims:
            coords[name] = coord.isel(band=picked).drop_vars("band")
        elif set(coord.dims) <= {"time", "y", "x"}:
            coords[name] = coord
    coords["band"] = list(BGRN)
    out = xr.DataArray(restored, dims=("time", "band", "y", "x"), coords=coords, name="dehaze")
    out.attrs.update({k: v for k, v in s2.attrs.items() if k in ("crs", "epsg")})
    out.attrs["units"] = "reflectance"
    return out
