"""Terrain from a DEM for the SAR water stages: the slope, and the test "steeper than a limit".

A water surface is level: where a DEM (which flattens lakes and wide rivers) shows a slope,
standing water cannot be. ``flood_change`` excludes such terrain from floods, with the height
above drainage (:func:`pipelines.stages.flood.terrain_ok_np`); ``water_mask`` excludes it from
open water when it is given a DEM (:func:`steep_mask`).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from affine import Affine

from pipelines.errors import BadInputError
from pipelines.stages import filters as F
from pipelines.stages import kernels as K

__all__ = [
    "HAND_DRAIN_AREA_M2",
    "HAND_MARGIN_M",
    "HAND_PIXEL_M",
    "SLOPE_MARGIN",
    "double_diff",
    "gradient_at",
    "height_above_drainage_nested",
    "height_above_drainage_np",
    "height_above_drainage_of_plane",
    "slope_np",
    "steep_mask",
    "steep_np",
]

#: Upstream area (m2) above which a DEM cell is drainage for the height above nearest drainage:
#: 100 cells of the 1 arcsec (about 30 m) Copernicus DEM, the accumulation threshold of ASF's
#: Global HAND from GLO-30 (``asf_tools`` HydroSAR ``calculate_hand``, ``acc_thresh=100``), the
#: product whose 15 m limit ``flood_change`` applies.
HAND_DRAIN_AREA_M2 = 100 * 30.0 * 30.0
#: Spacing (m) at which a height above drainage is derived from a DEM: the Copernicus DEM's own
#: 1 arcsec (about 30 m); flow routed on a finer, interpolated grid learns nothing more.
HAND_PIXEL_M = 30.0
#: Margin (m) of DEM read around a tile to derive its height above drainage: flow paths that
#: would leave through the tile's edge reach their drainage inside it. REAL (Copernicus DEM,
#: Rome and Los Angeles, 120 px windows of 1 arcsec against the whole tile): the decision at
#: 15 m differs on 1.7-2.1 % of the pixels without a margin, 0.01 % with 33 px (1 km);
#: ``pipelines.evaluate.evaluate_flood_terrain_real``.
HAND_MARGIN_M = 1000.0


def height_above_drainage_np(
    dem: np.ndarray,
    transform: Affine,
    *,
    latlon: bool,
    drain_area_m2: float = HAND_DRAIN_AREA_M2,
) -> np.ndarray:
    """Height above nearest drainage (HAND; Rennó et al. 2008, Nobre et al. 2011), metres,
    float32 (y, x), of a (y, x) DEM in metres on the grid ``transform`` (degrees where
    ``latlon``, else metres).

    ASF's Global HAND recipe with pyflwdir: depressions filled and D8 flow directions by
    priority flood (:func:`pyflwdir.from_dem`, Wang & Liu 2006; flow leaves at the array edge
    and at NaN cells), drainage where the upstream area exceeds ``drain_area_m2``, and each
    cell's height above the drainage cell its flow path reaches first (negative inside a filled
    depression). NaN where the DEM is NaN. Computed over a whole basin, or a margin wide enough
    that the paths reach their drainage inside it (docs/water.md).
    """
    import pyflwdir

    z = np.asarray(dem, dtype=np.float32)
    if z.ndim != 2:
        raise BadInputError("dem", z.shape, "a (y, x) array")
    missing = ~np.isfinite(z)
    if missing.all() or z.size < 2:
        # No cell to route (pyflwdir needs two and a valid one): a lone cell is its own outlet.
        return np.where(missing, np.float32(np.nan), np.float32(0.0))
    nodata = np.float32(-9999.0)
    filled = np.where(missing, nodata, z)
    flw = pyflwdir.from_dem(filled, nodata=float(nodata), transform=transform, latlon=latlon)
    drain = flw.upstream_area(unit="m2") > drain_area_m2
    # pyflwdir's FlwdirRaster.hand, its loop compiled (K.hand_along_paths).
    hand = K.hand_along_paths(
        flw.idxs_ds, flw.idxs_seq, drain.ravel(), filled.astype("float64").ravel()
    ).reshape(z.shape)
    return np.where(missing, np.nan, hand).astype(np.float32)


def height_above_drainage_nested(
    coarse: np.ndarray, transform: Affine, factor: int, offset: int, shape: tuple[int, int]
) -> np.ndarray:
    """Height above nearest drainage (m, float32) of a coarse (y, x) DEM on the metric grid
    ``transform`` (:func:`height_above_drainage_np`), bilinearly upsampled ``factor`` times
    onto the fine grid nested in it (OpenCV's pixel-centre convention: a fine pixel's centre
    maps to (j + 0.5) / factor - 0.5 coarse pixels, the geometry of a grid zoomed out by
    ``factor``) and cropped to ``shape`` from ``offset`` fine pixels in on both axes. The one
    derivation of a fine grid's height: from a DEM read coarse around a tile
    (``pipelines.load.load_height_above_drainage``) or from a fine plane's block means
    (:func:`height_above_drainage_of_plane`)."""
    import cv2

    out: np.ndarray = height_above_drainage_np(coarse, transform, latlon=False)
    if factor > 1:
        out = cv2.resize(
            out, (out.shape[1] * factor, out.shape[0] * factor), interpolation=cv2.INTER_LINEAR
        )
    ny, nx = shape
    return np.ascontiguousarray(out[offset : offset + ny, offset : offset + nx])


def height_above_drainage_of_plane(dem: np.ndarray, pixel_m: float) -> np.ndarray:
    """Height above nearest drainage (m, float32 (y, x)) of a (y, x) DEM plane on a metric grid
    of ``pixel_m`` m pixels, derived from that plane alone: block means at about the DEM's own
    spacing (:data:`HAND_PIXEL_M`; the edge rows and columns repeated to fill the last block),
    :func:`height_above_drainage_np` there, bilinearly upsampled back
    (:func:`height_above_drainage_nested`).
    The recipe a run applies to a tile's DEM read with :data:`HAND_MARGIN_M` around it
    (``pipelines.load.load_height_above_drainage``), without the margin: paths that leave
    through the plane's edge end there. NaN where the DEM is NaN, and next to a block without a
    valid cell (the interpolation reads it)."""
    z = np.asarray(dem, dtype=np.float32)
    if z.ndim != 2:
        raise BadInputError("dem", z.shape, "a (y, x) array")
    factor = max(1, round(HAND_PIXEL_M / pixel_m))
    ny, nx = z.shape
    pad = ((0, -ny % factor), (0, -nx % factor))
    blocks = np.pad(z, pad, mode="edge").reshape(
        (ny + pad[0][1]) // factor, factor, (nx + pad[1][1]) // factor, factor
    )
    coarse = F.nanmean(blocks, axis=(1, 3)).astype(np.float32)  # a block with no valid cell: NaN
    step = pixel_m * factor
    grid = Affine(step, 0, 0, 0, -step, 0)
    hand = height_above_drainage_nested(coarse, grid, factor, 0, (ny, nx))
    return np.where(np.isfinite(z), hand, np.float32(np.nan))


def slope_np(dem: np.ndarray, pixel_m: float) -> np.ndarray:
    """Slope (degrees, float64) of a DEM block (..., y, x) in metres on ``pixel_m`` m pixels:
    central differences (one-sided at the array edge); NaN next to DEM gaps."""
    if min(dem.shape[-2:]) < 2:
        return np.zeros(dem.shape, dtype="float64")
    gy, gx = np.gradient(dem.astype("float64"), pixel_m, axis=(-2, -1))
    return np.degrees(np.arctan(np.hypot(gx, gy)))


#: Squared float32 gradients within this relative distance of the squared slope limit are
#: decided by the float64 slope in degrees (float32 rounding moves them by less than 1e-6).
SLOPE_MARGIN = 1e-4


def double_diff(z: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """Twice ``np.gradient(z, axis=axis)`` for unit spacing, in float32 into ``out``:
    ``z[i+1] - z[i-1]`` inside, twice the one-sided difference at the array edge (``z`` 2-D,
    >= 2 along ``axis``)."""
    if axis == 0:
        np.subtract(z[2:], z[:-2], out=out[1:-1])
        np.subtract(z[1], z[0], out=out[0])
        np.subtract(z[-1], z[-2], out=out[-1])
        out[[0, -1]] *= np.float32(2.0)
    else:
        np.subtract(z[:, 2:], z[:, :-2], out=out[:, 1:-1])
        np.subtract(z[:, 1], z[:, 0], out=out[:, 0])
        np.subtract(z[:, -1], z[:, -2], out=out[:, -1])
        out[:, [0, -1]] *= np.float32(2.0)
    return out


def gradient_at(z: np.ndarray, iy: np.ndarray, ix: np.ndarray, pixel_m: float) -> np.ndarray:
    """``np.gradient(z.astype("float64"), pixel_m)`` at pixels (iy, ix) of a 2-D ``z``: the
    slope in degrees there, as :func:`slope_np` computes it (float64)."""
    grads = []
    for axis, idx in ((0, iy), (1, ix)):
        n = z.shape[axis]
        hi, lo = np.minimum(idx + 1, n - 1), np.maximum(idx - 1, 0)
        at = (lambda i: z[i, ix]) if axis == 0 else (lambda i: z[iy, i])
        step = np.where((idx > 0) & (idx < n - 1), 2.0 * pixel_m, pixel_m)
        grads.append((at(hi).astype("float64") - at(lo).astype("float64")) / step)
    gy, gx = grads
    return np.degrees(np.arctan(np.hypot(gx, gy)))


def steep_np(dem: np.ndarray, pixel_m: float, max_slope_deg: float) -> np.ndarray:
    """``slope > max_slope_deg`` for a 2-D float32 DEM (m), the slope in degrees from central
    differences (:func:`slope_np`): bool (y, x), False where the slope is NaN.

    Decided on the float32 squared gradient ``(2 dz/dx px)^2 + (2 dz/dy px)^2`` against
    ``(2 px tan(limit))^2``; values within :data:`SLOPE_MARGIN` of it (or infinite) are
    decided by the float64 slope in degrees, so the answer is the float64 slope's."""
    z = np.asarray(dem, dtype=np.float32)
    if min(z.shape) < 2:
        return np.zeros(z.shape, dtype=bool)
    limit = np.float32((2.0 * pixel_m * np.tan(np.radians(min(max_slope_deg, 90.0)))) ** 2)
    if np.isfinite(limit):
        # The float32 test in one compiled pass (kernels.steep); the pixels near the limit
        # (or with an infinite difference) decided again by their float64 slope.
        steep = np.empty(z.shape, dtype=bool)
        margin = np.float32(SLOPE_MARGIN) * limit
        at = K.steep(np.ascontiguousarray(z), limit, margin, steep)
        iy, ix = np.divmod(at, z.shape[1])
    else:
        # No float32 test against an infinite limit (90 degrees or more): every pixel whose
        # squared gradient is defined is decided by its float64 slope.
        dy = double_diff(z, 0, F.work_buffer("steep_dy", z.shape, np.float32))
        dx = double_diff(z, 1, F.work_buffer("steep_dx", z.shape, np.float32))
        dy *= dy
        dx *= dx
        dy += dx  # (2 px |grad|)^2, NaN next to DEM gaps
        steep = np.zeros(z.shape, dtype=bool)
        iy, ix = np.nonzero(~np.isnan(dy))
    if iy.size:
        steep[iy, ix] = gradient_at(z, iy, ix, pixel_m).astype(np.float32) > max_slope_deg
    return steep


def steep_mask(dem: da.Array, pixel_m: float, max_slope_deg: float) -> da.Array:
    """:func:`steep_np` of a (y, x) float DEM (m) on ``pixel_m`` m pixels, lazily: bool (y, x),
    the same whatever the chunks (a 1 px overlap: the central differences' reach)."""
    data = dem.astype("float32")[None]
    return F.overlap(
        _steep_block, data, depth=1, dtype=bool, pixel_m=pixel_m, max_slope_deg=max_slope_deg
    )[0]


def _steep_block(dem: np.ndarray, pixel_m: float, max_slope_deg: float) -> np.ndarray:
    """:func:`steep_np` of a (1, y, x) DEM block: bool (1, y, x)."""
    return steep_np(dem[0], pixel_m, max_slope_deg)[None]
