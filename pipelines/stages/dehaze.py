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

from typing import cast

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.errors import BadInputError
from pipelines.stages import filters as F
from pipelines.stages.haze import TRUE_COLOUR_MAX, VISIBLE, surface_floor

__all__ = ["BGRN", "WAVELENGTH_NM", "dehaze"]

BGRN = ("B02", "B03", "B04", "B08")
#: Central wavelengths (nm) of the restored bands.
WAVELENGTH_NM = {"B02": 490.0, "B03": 560.0, "B04": 665.0, "B08": 842.0}
_REF_NM = 665.0
_NEEDED_VARS = ("dark_channel", "pixel_weight", "obscured")
_DC_BINS = np.linspace(0.0, 255.0, 1021)


def _per_time_quantile(hist: da.Array, q: float, from_top: bool) -> da.Array:
    """Lower bin edge (time,) of the ``q`` quantile of per-time histograms (time, nbins)."""
    total = hist.sum(axis=1, keepdims=True)
    if from_top:
        above = da.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # pixels in bins >= k
        need = da.maximum(1.0, np.ceil(q * total))
        k = (above >= need).sum(axis=1) - 1
    else:
        below = da.cumsum(hist, axis=1)  # pixels in bins <= k
        need = da.maximum(1.0, np.ceil(q * total))
        k = (below < need).sum(axis=1)
    k = da.clip(k, 0, len(_DC_BINS) - 2)
    return da.take(da.from_array(_DC_BINS[:-1]), k)


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
    img = s2.sel(band=list(BGRN)).transpose("time", "band", "y", "x").astype("float32")
    dark = F.as_dask(haze_index["dark_channel"].transpose("time", "y", "x"))
    weight = F.as_dask(haze_index["pixel_weight"].transpose("time", "y", "x")).fillna(0.0)
    obscured = F.as_dask(haze_index["obscured"].transpose("time", "y", "x"))

    valid = img.notnull().all("band")
    evidence = (weight >= 0.5) & valid
    has_evidence = evidence.any(("y", "x"))
    candidates = xr.where(has_evidence, evidence, valid)

    # 1. atmospheric light per scene and band.
    hist = F.hist_per_time(dark.data, candidates.data, _DC_BINS)
    thr = _per_time_quantile(hist, top_fraction, from_top=True)
    thr_x = xr.DataArray(thr, dims=("time",))
    brightest = candidates & (dark >= thr_x)
    if airlight is None:
        # numpy ufuncs dispatch to xarray (__array_ufunc__); their stubs return ndarray
        airlight_da = cast(
            xr.DataArray, np.fmax(img.where(brightest).mean(("y", "x")), min_airlight)
        )
    else:
        fixed = xr.DataArray(
            [float(airlight[b]) for b in BGRN], dims=("band",), coords={"band": list(BGRN)}
        )
        airlight_da = fixed * xr.ones_like(img.isel(y=0, x=0, drop=True))

    # 2. haze fraction from the dark channel of I / A.
    norm_min = (img.sel(band=list(VISIBLE)) / airlight_da.sel(band=list(VISIBLE))).min(
        "band", skipna=False
    )
    a_vis = airlight_da.sel(band=list(VISIBLE)).mean("band")
    # He et al.: windowed dark channel of I / A above the scene's floor.
    dark_norm = norm_min.copy(data=F.min_filter(norm_min.data.astype("float32"), window))
    p1 = _per_time_quantile(hist, 0.01, from_top=False) / 255.0 * TRUE_COLOUR_MAX
    floor = np.fmin(xr.DataArray(p1, dims=("time",)), max_floor)
    j0 = (floor / a_vis).clip(0.0, 0.95)
    haze = ((dark_norm - j0) / (1.0 - j0)).clip(0.0, 1.0)
    swir_floor = surface_floor(s2, present) if use_swir else None
    if swir_floor is not None:
        # Surface floor per pixel from SWIR; the residual above it is airlight.
        j_swir = (swir_floor.fillna(0.0) / a_vis).clip(0.0, 0.95).transpose("time", "y", "x")
        resid = (norm_min - j_swir).astype("float32")
        resid = resid.copy(data=F.min_filter(resid.data, swir_window))
        haze_swir = (resid / (1.0 - j_swir)).clip(0.0, 1.0)
        haze = cast(xr.DataArray, np.fmin(haze, haze_swir))

    # 3. evidence-weighted spatial support with a weak prior to the scene mean, then guided filter.
    if swir_floor is not None:
        # The SWIR floor reads bare soil as well as vegetation: all land the index counted is
        # evidence (bright-surface weights would keep mostly hazy soil: haze lowers redness).
        b3, b8 = img.sel(band="B03", drop=True), img.sel(band="B08", drop=True)
        land = (b3 - b8) / (b3 + b8 + 1e-6) <= 0.0
        counted = ~obscured
        if "all_pixels" in haze_index:  # mostly cloudy scene: the index counted every pixel
            counted = counted | F.as_dask(haze_index["all_pixels"])
        w_ev = (valid & counted & land).astype("float32")
    else:
        w_ev = weight.where(valid, 0.0)
    scene_h = (haze.fillna(0.0) * w_ev).sum(("y", "x")) / np.fmax(w_ev.sum(("y", "x")), 1e-6)
    size = 2 * radius + 1
    num = F.box_mean(haze.fillna(0.0).data * w_ev.data, size)
    den = F.box_mean(w_ev.data.astype("float64"), size)
    prior = 0.05
    scene_h_b = scene_h.data[:, None, None]
    h_smooth = (num + prior * scene_h_b) / (den + prior)
    guide = img.sel(band="B02", drop=True).data.astype("float64")
    h_ref = F.guided_filter(guide, h_smooth, radius, eps)
    h_ref = da.clip(h_ref, 0.0, 1.0)

    # 4. transmission per band (Angstrom scaling) and recovery.
    t_ref = da.clip(1.0 - omega * h_ref, t0, 1.0)
    t_ref = xr.DataArray(t_ref, dims=("time", "y", "x"))
    expo = xr.DataArray(
        [(WAVELENGTH_NM[b] / _REF_NM) ** (-angstrom) for b in BGRN],
        dims=("band",),
        coords={"band": list(BGRN)},
    )
    t_band = np.fmax(t_ref**expo, t0)
    restored = ((img - airlight_da) / t_band + airlight_da).clip(min=0.0)

    keep = obscured & (t_ref < t_opaque)
    out = xr.where(keep, img, restored).where(valid)
    out = out.astype("float32").transpose("time", "band", "y", "x")
    out = out.assign_coords({k: v for k, v in img.coords.items() if k not in out.coords})
    out.name = "dehaze"
    out.attrs.update({k: v for k, v in s2.attrs.items() if k in ("crs", "epsg")})
    out.attrs["units"] = "reflectance"
    return out
