"""haze_index: He et al. (2009) dark channel per pixel and a per-scene dark-channel-prior index.

Dark channel (``dark_channel``, 0..255, the 8-bit true-colour scale): for each pixel the minimum
over B02, B03, B04 of ``clip(reflectance / 0.3, 0, 1) * 255``, then the minimum over a 15 x 15 px
window (NaN pixels are ignored by the window and stay NaN).

Scene index (``dcp_index``): the mean dark channel of clear land pixels, i.e. pixels the cloud
mask calls CLEAR, with all three visible bands valid and not water. Water is NDWI
``(B03 - B08) / (B03 + B08) > 0`` when B08 is present, and SCL 6 when SCL is present.

**Bright surfaces, with SWIR (B12, else B11).** A plain dark-channel mean reads bright soil,
sand, rock and roofs as haze, and it follows the season: the same fields are dark under a
closed canopy and bright as bare soil, which moves the mean as much as thin haze does. Aerosol
haze is nearly transparent at 2.2 um, while the visible floor of a land surface scales with its
2.2 um reflectance (Kaufman et al. 1997, the MODIS dark-target relation: blue about 0.25 x
2.2 um). The index therefore uses the *surface-corrected* dark channel (``haze_dark_channel``):
per pixel ``min(B02, B03, B04) - 0.25 B12`` (``0.15 B11`` without B12), on the same 8-bit
scale (clipped to 0..255), averaged with equal weight over the counted pixels. What is left is
the airlight that haze adds (plus a small, steady offset of bright roofs), not the surface. No
15 x 15 window is taken for the index: the window's minimum picks whichever surface is darkest
nearby, which brings the surface back in.

**Bright surfaces, B02-B04 only.** ``haze_dark_channel`` is the windowed dark channel and
each pixel gets a bright-surface score ``s`` in 0..1 (``bright_surface``) and counts in the
mean with weight ``1 - s``:

* ``s = g * max(s_red, s_swir)``, gated by brightness ``g`` (0 below a raw dark channel of 0.04
  reflectance, 1 above 0.08): dark pixels are never down-weighted, so the mean over dark
  vegetation is untouched.
* ``s_red`` (needs only B02, B04): redness ``(B04 - B02) / (B04 + B02)`` mapped 0 -> 0 and
  0.15 -> 1. Haze adds airlight that is at least as strong in blue as in red, so it pushes a
  pixel toward blue; a bright pixel that is clearly redder than it is blue owes its brightness
  to the surface. Thin haze over soil lowers the redness, and the pixel regains weight.
* ``s_swir`` (when B12, else B11, is present): ratio of SWIR to the visible dark channel
  ``B12 / min(B02, B03, B04)`` (``0.6 B11 / ...`` without B12) mapped 1.2 -> 0 and 2.0 -> 1.
  Aerosol haze is nearly transparent at 1.6-2.2 um, so haze raises the visible floor but not
  the SWIR; brightness that persists in SWIR is surface (soil, rock, concrete).

Grey, SWIR-less bright surfaces (white roofs with only B02-B04) cannot be told from haze and
still raise the index; that is a limit of the three-band method.

``bright_surface`` and ``pixel_weight`` (the haze evidence :mod:`pipelines.stages.dehaze`
reads) are computed in both cases. In the three-band case, the weighted mean is
``sum(w dc) / max(sum(w), 0.25 n)`` over the ``n`` counted pixels: when fewer than a quarter of
the pixels (by weight) carry haze evidence, the missing weight counts as haze-free, so a scene
of bright desert without haze scores low instead of the mean of its few dark pixels or of its
bright soil.

**Mostly cloudy scenes.** When fewer than ``min_clear_fraction`` (5 %) of the valid land pixels
are clear, the index is computed on all valid land pixels, clouds included
(``all_pixels`` = True). Thick cloud then gives the highest values (its dark channel is near
the cloud's own brightness) and thin cloud or fog intermediate ones, so the index orders
clear < hazy < cloudy. Scenes with enough clear land keep the clear-only index.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import xarray as xr

from pipelines.classes import SCL_WATER, CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import filters as F

__all__ = [
    "SWIR_FLOOR",
    "VISIBLE",
    "bright_surface_score",
    "dark_channel_8bit",
    "haze_index",
    "surface_floor",
]

VISIBLE = ("B02", "B03", "B04")
#: Reflectance that maps to 255 on the 8-bit true-colour scale.
TRUE_COLOUR_MAX = 0.3
#: Visible floor of a land surface per unit of SWIR reflectance (Kaufman et al. 1997: blue
#: about 0.25 x 2.2 um); B11 (1.6 um) is read as 0.6 x B12, as in ``bright_surface_score``.
SWIR_FLOOR = {"B12": 0.25, "B11": 0.25 * 0.6}


def surface_floor(s2: xr.DataArray, present: list[str]) -> xr.DataArray | None:
    """Visible dark floor of the surface predicted from SWIR (time, y, x), reflectance; None
    without B11/B12."""
    for band in ("B12", "B11"):
        if band in present:
            return SWIR_FLOOR[band] * s2.sel(band=band, drop=True)
    return None


def dark_channel_8bit(rgb_min_refl: xr.DataArray, window: int) -> xr.DataArray:
    """Windowed dark channel (time, y, x) on the 0..255 scale from the per-pixel RGB minimum."""
    dc = (rgb_min_refl / TRUE_COLOUR_MAX).clip(0.0, 1.0) * 255.0
    dc = dc.astype("float32")
    data = F.min_filter(dc.data, window)
    out = dc.copy(data=data)
    return out.where(dc.notnull())


def bright_surface_score(s2: xr.DataArray, present: list[str]) -> xr.DataArray:
    """Bright-surface score 0..1 (time, y, x); see the module docstring."""
    b2 = s2.sel(band="B02", drop=True)
    b3 = s2.sel(band="B03", drop=True)
    b4 = s2.sel(band="B04", drop=True)
    dmin = cast(xr.DataArray, np.fmin(np.fmin(b2, b3), b4))  # ufuncs dispatch to xarray
    gate = ((dmin - 0.04) / 0.04).clip(0.0, 1.0)
    redness = (b4 - b2) / (b4 + b2 + 1e-6)
    score = (redness / 0.15).clip(0.0, 1.0)
    swir = None
    if "B12" in present:
        swir = s2.sel(band="B12", drop=True)
    elif "B11" in present:
        swir = 0.6 * s2.sel(band="B11", drop=True)
    if swir is not None:
        ratio = swir / (dmin + 1e-6)
        s_swir = ((ratio - 1.2) / 0.8).clip(0.0, 1.0).fillna(0.0)
        score = cast(xr.DataArray, np.fmax(score, s_swir))
    return (gate * score).astype("float32")


def _validate(s2: xr.DataArray, cloud_mask: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    s2 = F.require_dims(s2, "s2", ("time", "band", "y", "x"))
    F.require_bands(s2, "s2", VISIBLE)
    cloud_mask = F.require_dims(cloud_mask, "cloud_mask", ("time", "y", "x"))
    for dim in ("time", "y", "x"):
        if cloud_mask.sizes[dim] != s2.sizes[dim]:
            raise BadInputError(
                f"cloud_mask.{dim}",
                cloud_mask.sizes[dim],
                f"{s2.sizes[dim]} (the size of s2 along {dim})",
            )
    return s2, cloud_mask


def haze_index(
    s2: xr.DataArray,
    cloud_mask: xr.DataArray,
    *,
    window: int = 15,
    min_clear_fraction: float = 0.05,
    min_evidence_fraction: float = 0.25,
) -> xr.Dataset:
    """Dark channel and dark-channel-prior haze index of each S2 date, lazily.

    ``s2``: (time, band, y, x) reflectance 0..1 with at least B02, B03, B04.
    ``cloud_mask``: (time, y, x) uint8 CloudClass on the same grid.
    Returns a Dataset with ``dark_channel`` (time, y, x) float32 on the 0..255 scale,
    ``haze_dark_channel`` (time, y, x) float32 on the same scale (the per-pixel dark channel
    less the SWIR-predicted surface floor; the windowed dark channel without SWIR),
    ``dcp_index`` (time,) float32 on the same scale, ``bright_surface`` and ``pixel_weight``
    (haze evidence per pixel: clear land, not a bright surface) (time, y, x) float32 0..1,
    ``clear_fraction``
    (time,) float32, ``all_pixels`` (time,) bool (index taken over all valid land pixels because
    the scene is mostly cloud) and ``obscured`` (time, y, x) bool (cloud, shadow or nodata).
    """
    s2, cloud_mask = _validate(s2, cloud_mask)
    if window < 1 or window % 2 == 0:
        raise BadInputError("window", window, "an odd window size >= 1 in pixels")
    if not 0.0 <= min_clear_fraction <= 1.0:
        raise BadInputError("min_clear_fraction", min_clear_fraction, "a fraction in 0..1")
    if not 0.0 < min_evidence_fraction <= 1.0:
        raise BadInputError("min_evidence_fraction", min_evidence_fraction, "a fraction in (0, 1]")
    present = [str(b) for b in s2.coords["band"].values]
    s2 = F.as_dask(s2)
    cloud_mask = F.as_dask(cloud_mask)

    rgb = s2.sel(band=list(VISIBLE))
    rgb_min = rgb.min("band", skipna=False)
    dark = dark_channel_8bit(rgb_min, window)
    surface = bright_surface_score(s2, present)

    valid = rgb_min.notnull()
    water = xr.zeros_like(valid)
    if "B08" in present:
        b3 = s2.sel(band="B03", drop=True)
        b8 = s2.sel(band="B08", drop=True)
        water = water | ((b3 - b8) / (b3 + b8 + 1e-6) > 0.0)
    if "SCL" in present:
        water = water | (s2.sel(band="SCL", drop=True) == SCL_WATER)
    cm = cloud_mask.astype("uint8")
    land = valid & ~water & (cm != CloudClass.NODATA)
    clear_land = land & (cm == CloudClass.CLEAR)
    n_land = land.sum(("y", "x"))
    n_clear = clear_land.sum(("y", "x"))
    clear_fraction = (n_clear / n_land.where(n_land > 0)).fillna(0.0).astype("float32")
    all_pixels = clear_fraction < min_clear_fraction
    counted = xr.where(all_pixels, land, clear_land)
    weight = ((1.0 - surface) * counted).where(valid, 0.0).astype("float32")
    n_counted = counted.sum(("y", "x"))
    floor = surface_floor(s2, present)
    if floor is not None:
        corrected = ((rgb_min - floor.fillna(0.0)) / TRUE_COLOUR_MAX).clip(0.0, 1.0) * 255.0
        haze_dark = corrected.astype("float32").where(valid)
        num = (haze_dark.fillna(0.0) * counted).sum(("y", "x"))
        index = (num / n_counted.where(n_counted > 0)).astype("float32")
    else:
        haze_dark = dark
        wsum = weight.sum(("y", "x"))
        num = (weight * dark.fillna(0.0)).sum(("y", "x"))
        denom = np.fmax(wsum, min_evidence_fraction * n_counted)
        index = (num / denom.where(n_counted > 0)).astype("float32")

    obscured = ~valid | (cm == CloudClass.CLOUD) | (cm == CloudClass.SHADOW)
    obscured = obscured | (cm == CloudClass.NODATA)
    coords = {k: v for k, v in dark.coords.items() if set(v.dims) <= {"time", "y", "x"}}
    ds = xr.Dataset(
        {
            "dark_channel": dark.astype("float32"),
            "haze_dark_channel": haze_dark.astype("float32"),
            "dcp_index": index,
            "bright_surface": surface.where(valid),
            "pixel_weight": weight,
            "clear_fraction": clear_fraction,
            "all_pixels": all_pixels,
            "obscured": obscured,
        },
        coords=coords,
    )
    ds["dark_channel"].attrs.update(units="8-bit true-colour scale (reflectance/0.3*255)")
    ds["haze_dark_channel"].attrs.update(
        units="8-bit true-colour scale",
        surface_correction="swir" if floor is not None else "none (windowed dark channel)",
    )
    ds["dcp_index"].attrs.update(
        units="8-bit true-colour scale",
        window=window if floor is None else 1,
        surface="swir floor" if floor is not None else "bright-surface weights",
    )
    ds.attrs.update({k: v for k, v in s2.attrs.items() if k in ("crs", "epsg")})
    return ds
