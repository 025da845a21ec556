"""Windowed raster operations shared by the classical stages.

Every function here takes and returns dask arrays shaped ``(time, y, x)`` (or ``(y, x)`` where
said) and works per 2-D slice. Neighbourhoods are handled with :func:`dask.array.map_overlap`
with a halo at least as wide as the operation reaches and ``boundary="none"``, so a block sees
exactly the pixels the whole-array computation would see: the result does not depend on how the
array is chunked (up to floating-point rounding in the box means).

Pixel counts (window sizes, radii) are in pixels; converting from metres is the caller's job
(:func:`pixels_for`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import cv2
import dask.array as da
import numpy as np
import xarray as xr
from dask.array.overlap import ensure_minimum_chunksize
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from pipelines.errors import BadInputError
from pipelines.stages import kernels

__all__ = [
    "any_in_window_np",
    "as_dask",
    "bin_index",
    "binary_dilate",
    "binary_open",
    "block_histogram_blocks",
    "block_histograms",
    "box_mean",
    "box_mean_np",
    "box_np",
    "crs_of",
    "dilate_np",
    "guided_filter",
    "guided_np",
    "hist_per_time",
    "lee_filter",
    "masked_histogram",
    "max_filter",
    "median_filter",
    "median_filter_np",
    "min_filter_finite_into",
    "min_filter_into",
    "min_filter_np",
    "nanmedian_first_axis",
    "nanmedian_np",
    "open_np",
    "otsu_from_hist",
    "overlap",
    "pixel_size_m",
    "pixels_for",
    "planes",
    "remove_small",
    "require_bands",
    "require_dims",
    "small_components_np",
    "tile_constant",
    "valley_from_hist",
    "work_buffer",
]


# --------------------------------------------------------------------------- validation


def require_dims(arr: Any, field: str, dims: tuple[str, ...]) -> xr.DataArray:
    """Check ``arr`` is a DataArray with exactly ``dims`` (any order); return it in that order."""
    if not isinstance(arr, xr.DataArray):
        raise BadInputError(field, type(arr).__name__, f"an xarray.DataArray with dims {dims}")
    if set(arr.dims) != set(dims) or len(arr.dims) != len(dims):
        raise BadInputError(field, tuple(arr.dims), f"dims {dims}")
    for dim in ("y", "x"):
        if dim in dims and arr.sizes[dim] < 1:
            raise BadInputError(field, dict(arr.sizes), f"at least one pixel along {dim}")
    return arr if arr.dims == dims else arr.transpose(*dims)


def require_bands(arr: xr.DataArray, field: str, needed: tuple[str, ...]) -> list[str]:
    """Check the ``band`` coordinate of ``arr`` holds every band in ``needed``."""
    if "band" not in arr.coords:
        raise BadInputError(f"{field}.band", None, f"a 'band' coordinate holding {list(needed)}")
    present = [str(b) for b in arr.coords["band"].values]
    for name in needed:
        if name not in present:
            raise BadInputError(
                f"{field}.band",
                name,
                f"bands {list(needed)} to be present",
                f"band {name!r} is missing; bands present: {present}",
            )
    return present


#: Below this coordinate spacing (in the array's units) a grid without a CRS is taken for degrees,
#: not metres: no sensor this pipeline reads has pixels of 5 cm, while 10 m is 9e-5 degrees.
MIN_METRE_SPACING = 0.05


def crs_of(arr: xr.DataArray) -> Any:
    """The CRS of ``arr`` (a :class:`pyproj.CRS`), or None: from its grid-mapping coordinate
    (``spatial_ref``, as rioxarray and odc-geo write it), else its ``crs`` or ``epsg`` attribute
    (as the loaders and stackstac set them)."""
    from pyproj import CRS

    ref = arr.coords.get("spatial_ref")
    candidates: list[Any] = []
    if ref is not None:
        candidates += [ref.attrs.get("crs_wkt"), ref.attrs.get("spatial_ref")]
    candidates += [arr.attrs.get("crs"), arr.attrs.get("epsg")]
    for value in candidates:
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            if isinstance(value, str | int):
                return _parsed_crs(value)
            return CRS.from_user_input(value)
        except Exception as exc:  # pyproj.exceptions.CRSError and wrong types alike
            raise BadInputError("crs", value, "a CRS pyproj reads (EPSG code, WKT)") from exc
    return None


@functools.lru_cache(maxsize=64)
def _parsed_crs(value: str | int) -> Any:
    """:meth:`pyproj.CRS.from_user_input` of a code or WKT, parsed once per process."""
    from pyproj import CRS

    return CRS.from_user_input(value)


def _spacing(arr: xr.DataArray, dim: str) -> float | None:
    """Median coordinate step along ``dim`` (absolute, the array's units), or None."""
    if dim not in arr.coords or arr.sizes.get(dim, 0) < 2:
        return None
    step = float(np.median(np.abs(np.diff(np.asarray(arr.coords[dim].values, dtype="float64")))))
    return step if np.isfinite(step) and step > 0 else None


def pixel_size_m(arr: xr.DataArray, default: float = 10.0) -> float:
    """Pixel size in metres: the side of a square of the pixel's ground area,
    ``sqrt(dx * dy)`` from the ``x`` and ``y`` coordinate steps (``dx`` alone without ``y``;
    ``default`` when neither is known).

    The steps are read in the array's CRS (:func:`crs_of`): metres, or a projected CRS's own
    unit (US survey feet, ...) converted; on a geographic CRS (degrees: Sen1Floods11 chips,
    Copernicus DEM tiles), the geodesic lengths of one step east and one step north at the
    grid's centre on the CRS's ellipsoid (a 1024 px tile of 10 m spans 0.1 degrees, over
    which the east-west length of a degree changes by under 0.5 % below 60 degrees of
    latitude). Without a CRS the steps are taken for metres; a step under
    :data:`MIN_METRE_SPACING` is refused as degrees without a CRS."""
    dx, dy = _spacing(arr, "x"), _spacing(arr, "y")
    if dx is None:
        return float(default)
    crs = crs_of(arr)
    if crs is not None and crs.is_compound:
        crs = crs.sub_crs_list[0]  # the horizontal part (e.g. WGS 84 + EGM96 height)
    if crs is not None and crs.is_geographic:
        xs = np.asarray(arr.coords["x"].values, dtype="float64")
        ys = np.asarray(arr.coords["y"].values, dtype="float64") if dy else np.zeros(1)
        lon, lat = float(np.median(xs)), float(np.median(ys))
        geod = crs.get_geod()
        east = abs(geod.inv(lon, lat, lon + dx, lat)[2])
        north = abs(geod.inv(lon, lat, lon, lat + (dy or dx))[2])
        return float(np.sqrt(east * north))
    unit = 1.0
    if crs is not None and crs.is_projected:
        unit = float(crs.axis_info[0].unit_conversion_factor)
    elif dx < MIN_METRE_SPACING:
        raise BadInputError(
            "x",
            f"coordinate step {dx:g}",
            "a grid in metres, or an array that carries its CRS (rioxarray's write_crs, "
            "odc-geo's assign_crs, or attrs['crs'])",
            "a step this small is degrees, not metres",
        )
    return float(np.sqrt(dx * (dy if dy is not None else dx)) * unit)


def pixels_for(metres: float, pixel_m: float) -> int:
    """Whole pixels covering ``metres`` at ``pixel_m`` metres per pixel (0 for 0 m)."""
    if metres <= 0:
        return 0
    return max(1, round(metres / pixel_m))


def as_dask(arr: xr.DataArray) -> xr.DataArray:
    """The same DataArray, dask-backed (one chunk when it was in memory)."""
    if isinstance(arr.data, da.Array):
        return arr
    return arr.copy(data=da.from_array(np.asarray(arr.data), chunks=-1))


#: Name prefix of the dask layers :func:`tile_constant` makes (``engine.run`` finds them).
TILE_CONSTANT_PREFIX = "tile-constant-"


def nanmean(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    """``np.nanmean`` to the bit, NaN where a slice has no finite value, without its
    "Mean of empty slice" warning: silenced through numpy's error state, which is per thread,
    not ``warnings.catch_warnings``, which a worker's other threads undo before Python 3.14
    (the warning then reaches the logs). Same dtype as ``np.nanmean`` of ``x``."""
    x = np.asarray(x)
    missing = np.isnan(x)
    total = np.sum(np.where(missing, 0, x), axis=axis, keepdims=keepdims)
    count = np.sum(~missing, axis=axis, dtype=np.intp, keepdims=keepdims)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.true_divide(total, count)
    return np.asarray(mean).astype(np.result_type(total), copy=False)


def _same(block: np.ndarray) -> np.ndarray:
    return block


def tile_constant(arr: da.Array) -> da.Array:
    """``arr``, marked as a part of a stage's graph that no date of its output changes (a
    reference built from pre-event dates, terrain masks): a layer named
    ``TILE_CONSTANT_PREFIX + token`` that passes each block through. A run that computes a
    tile's dates in rounds computes such a part once and holds it for every round
    (``engine.run.hold_tile_constants``); elsewhere the layer fuses into its neighbours."""
    from dask.base import tokenize

    return da.map_blocks(
        _same,
        arr,
        name=TILE_CONSTANT_PREFIX + tokenize(arr),
        dtype=arr.dtype,
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
    )


# --------------------------------------------------------------------------- overlap plumbing


def _haloed(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """The chunk sizes along an axis once ``map_overlap`` (``boundary="none"``) has added a
    ``depth`` halo on every side that has a neighbour."""
    last = len(chunks) - 1
    return tuple(c + depth * ((i > 0) + (i < last)) for i, c in enumerate(chunks))


def overlap(
    func: Callable[..., np.ndarray],
    *arrays: da.Array,
    depth: int,
    dtype: Any,
    per_time: tuple[da.Array, ...] = (),
    bands: int = 0,
    **kwargs: Any,
) -> da.Array:
    """Apply ``func`` to (time, y, x) blocks of ``arrays`` with a ``depth``-pixel halo in y, x.

    ``per_time``: (time,) or (time, 1, 1) arrays (per-scene values), passed after ``arrays`` as
    (time, 1, 1) blocks of the same dates, without a halo. ``bands`` > 0: ``func`` returns
    (time, bands, y, x) blocks (a new axis 1 of that length), halo included like its inputs.
    """
    arrays = tuple(da.asarray(arr) for arr in arrays)
    scalars = [s.reshape((-1, 1, 1)).rechunk((arrays[0].chunks[0], 1, 1)) for s in per_time]
    # The output's type, given: dask would otherwise call ``func`` on empty arrays to find it.
    kwargs["meta"] = np.empty((0,) * (arrays[0].ndim + (bands > 0)), dtype=dtype)
    ndim = arrays[0].ndim
    dep = {i: 0 for i in range(ndim)}
    single: dict[int, int] = {}
    for ax in (ndim - 2, ndim - 1):
        if depth <= 0 or all(len(arr.chunks[ax]) == 1 for arr in arrays):
            continue  # one chunk spans the axis: no neighbour to take a halo from
        if depth >= arrays[0].shape[ax]:
            # The halo would span the whole axis: one chunk along it needs no halo at all.
            single[ax] = -1
        else:
            dep[ax] = depth
    prepared = [arr.rechunk(single) if single else arr for arr in arrays]
    if bands > 0:
        kwargs["new_axis"] = 1
        if any(dep.values()):
            # map_overlap merges chunks smaller than the halo into their neighbour first;
            # done here so that the output's chunks are known.
            sizes = {
                ax: ensure_minimum_chunksize(d, prepared[0].chunks[ax])
                for ax, d in dep.items()
                if d
            }
            prepared = [arr.rechunk(sizes) for arr in prepared]
        grown = [_haloed(c, dep[ax]) for ax, c in enumerate(prepared[0].chunks)]
        kwargs["chunks"] = (grown[0], (bands,), *grown[1:])
    if not any(dep.values()):
        return da.map_blocks(func, *prepared, *scalars, dtype=dtype, **kwargs)
    depths = [dep] * len(prepared) + [dict.fromkeys(range(ndim), 0)] * len(scalars)
    return da.map_overlap(
        func,
        *prepared,
        *scalars,
        depth=depths,
        boundary="none",
        dtype=dtype,
        align_arrays=True,
        **kwargs,
    )


def _footprint(size: int, ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - 2) + (size, size)


# --------------------------------------------------------------------------- numpy kernels
#
# Kernels run OpenCV per 2-D (y, x) plane in float32 (uint8 for masks). NaN never enters an
# OpenCV call: window minima/maxima see it as +/-inf, box means as weight 0, and masks are uint8
# views of the boolean arrays (no copy). Border rules follow scipy.ndimage's modes:
# ``nearest`` (``cv2.BORDER_REPLICATE``) for minimum/maximum/median, ``reflect``
# (``cv2.BORDER_REFLECT``) for box means, and 0 outside for binary morphology.

#: Square windows at least this wide take the running box count for "any pixel set" (O(1) per
#: pixel) instead of a dilation (O(size) per pixel).
_BOX_COUNT_FROM = 31


def _planes(x: np.ndarray) -> np.ndarray:
    """``x`` as a stack of C-contiguous 2-D planes (a view when ``x`` is contiguous)."""
    x = np.ascontiguousarray(x)
    return x.reshape((-1, *x.shape[-2:]))


def planes(x: np.ndarray) -> np.ndarray:
    """A C-contiguous array as a stack of its 2-D (y, x) planes, a view (for OpenCV calls,
    which take 2-D arrays)."""
    if not x.flags.c_contiguous:
        raise ValueError("planes() needs a C-contiguous array")
    return x.reshape((-1, *x.shape[-2:]))


def _work_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype("float64") if x.dtype == np.float64 else np.dtype("float32")


def _rect(size: int) -> np.ndarray:
    return np.ones((size, size), dtype=np.uint8)


def _filled(x: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A float working copy of ``x`` with NaN replaced by ``fill``, and the NaN mask (None when
    there is none)."""
    out = np.array(x, dtype=_work_dtype(x), copy=True, order="C")
    nan = np.isnan(out)
    if not nan.any():
        return out, None
    out[nan] = fill
    return out, nan


def _min_filter_np(x: np.ndarray, size: int) -> np.ndarray:
    out, nan = _filled(x, np.inf)
    kernel = _rect(size)
    for plane in _planes(out):  # replicated border: scipy's mode="nearest"
        cv2.erode(plane, kernel, dst=plane, borderType=cv2.BORDER_REPLICATE)
    if nan is not None:
        out[np.isinf(out)] = np.nan  # windows that held only NaN
    return out.astype(x.dtype, copy=False)


def _median_filter_np(x: np.ndarray, size: int, fill: float) -> np.ndarray:
    out, nan = _filled(x, fill)
    if size <= 5 and out.dtype == np.float32:  # cv2.medianBlur's float32 window sizes
        for plane in _planes(out):
            plane[...] = cv2.medianBlur(plane, size)  # replicated border, as mode="nearest"
    else:
        out = ndi.median_filter(out, size=_footprint(size, x.ndim), mode="nearest")
    if nan is not None:
        out[nan] = np.nan
    return out.astype(x.dtype, copy=False)


def _any_in_window(mask: np.ndarray, size: int) -> np.ndarray:
    """Boolean maximum filter: True where the ``size`` square holds a True pixel (0 outside)."""
    m = _planes(np.asarray(mask, dtype=bool)).view(np.uint8)
    out = np.empty(m.shape, dtype=bool)
    res = out.view(np.uint8)
    for i, plane in enumerate(m):
        if size >= _BOX_COUNT_FROM:
            # Saturating uint8 box sum of 0/1: never wraps back to 0, so > 0 is exact.
            cnt = cv2.boxFilter(plane, -1, (size, size), normalize=False, borderType=_ZERO)
            np.greater(cnt, 0, out=out[i])
        else:
            cv2.dilate(plane, _rect(size), dst=res[i])
    return out.reshape(np.shape(mask))


def _max_filter_np(x: np.ndarray, size: int) -> np.ndarray:
    if x.dtype == bool:
        return _any_in_window(x, size)
    out, nan = _filled(x, -np.inf)
    kernel = _rect(size)
    for plane in _planes(out):
        cv2.dilate(plane, kernel, dst=plane, borderType=cv2.BORDER_REPLICATE)
    if nan is not None:
        out[np.isinf(out)] = np.nan
    return out.astype(x.dtype, copy=False)


_ZERO = cv2.BORDER_CONSTANT
_REFLECT = cv2.BORDER_REFLECT  # scipy.ndimage mode="reflect": d c b a | a b c d


_WORK = threading.local()


def _work(slot: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """This thread's work buffer ``slot`` of ``shape`` and ``dtype``, uninitialised. A kernel
    takes its intermediate planes from here instead of fresh arrays: a fresh multi-megabyte
    array costs a page fault per 4 KiB on first touch once the allocator has handed the last
    one back to the system, which doubled the Lee filter's time on a 1024 px tile. One buffer
    per slot and thread (replaced when the shape changes); never returned to a caller."""
    cache: dict[str, np.ndarray] | None = getattr(_WORK, "cache", None)
    if cache is None:
        cache = _WORK.cache = {}
    buf = cache.get(slot)
    if buf is None or buf.shape != shape or buf.dtype != np.dtype(dtype):
        buf = cache[slot] = np.empty(shape, dtype=dtype)
    return buf


def work_buffer(slot: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """:func:`_work` for the block functions of the stages: this thread's work buffer
    ``slot`` (uninitialised; the caller never returns it)."""
    return _work(slot, shape, dtype)


def _box(x: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Plain box mean of a NaN-free float array (reflected border; sums in float64), into
    ``out`` (C-contiguous, shape and dtype of ``x``) when given."""
    if out is None:
        out = np.empty_like(x)
    res = _planes(out)
    for i, plane in enumerate(_planes(x)):
        cv2.boxFilter(plane, -1, (size, size), dst=res[i], borderType=_REFLECT)
    return out


def _box_mean_np(x: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """NaN-aware (and optionally weighted) box mean: sum(w x) / sum(w) over the window, float32;
    NaN where the window holds no weight."""
    x = np.asarray(x, dtype=np.float32)
    nan = np.isnan(x)
    has_nan = bool(nan.any())
    if weights is None and not has_nan:
        return _box(x, size)
    if weights is None:
        w = (~nan).view(np.uint8).astype(np.float32)
    else:
        w = np.array(weights, dtype=np.float32, copy=True)
        if has_nan:
            w[nan] = 0.0
    xw = x * w
    if has_nan:
        xw[nan] = 0.0
    num = _box(xw, size)
    den = _box(w, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(num, den, out=num)
    num[den <= 1e-12] = np.nan
    return num


def _dilate_np(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation of a boolean mask by a disk of ``radius`` px (0 outside the array)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    kernel = disk(radius).astype(np.uint8)
    out = np.empty(_planes(mask).shape, dtype=bool)
    res = out.view(np.uint8)
    for i, plane in enumerate(_planes(mask).view(np.uint8)):
        cv2.dilate(plane, kernel, dst=res[i])
    return out.reshape(mask.shape)


def _open_np(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening by a ``2 radius + 1`` square; 0 outside the array (as scipy's binary_opening:
    an object touching the edge is eroded from outside)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    kernel = _rect(2 * radius + 1)
    out = np.empty(_planes(mask).shape, dtype=bool)
    res = out.view(np.uint8)
    for i, plane in enumerate(_planes(mask).view(np.uint8)):
        cv2.morphologyEx(plane, cv2.MORPH_OPEN, kernel, dst=res[i], borderType=_ZERO, borderValue=0)
    return out.reshape(mask.shape)


def _nan_box_means(
    xs: tuple[np.ndarray, ...], valid: np.ndarray, size: int, outs: tuple[np.ndarray, ...]
) -> None:
    """Box means of several float32 arrays that share one validity mask, into ``outs``: each
    ``sum(x w) / sum(w)`` over the window with ``w`` the 0/1 mask (one box of the weights for
    all), NaN where the window holds no valid pixel. The arrays in ``xs`` are 0 wherever
    ``valid`` is False (the caller zeroes them); the arithmetic is :func:`_box_mean_np`'s."""
    shape = valid.shape
    w = _work("nbm_w", shape, np.float32)
    np.copyto(w, valid)
    den = _box(w, size, out=_work("nbm_den", shape, np.float32))
    empty = np.less_equal(den, 1e-12, out=_work("nbm_empty", shape, bool))
    for x, out in zip(xs, outs, strict=True):
        _box(x, size, out=out)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(out, den, out=out)
        np.copyto(out, np.float32(np.nan), where=empty)


def _box_mean_into(x: np.ndarray, size: int, out: np.ndarray) -> np.ndarray:
    """:func:`_box_mean_np` of a float32 array into ``out`` (C-contiguous, x's shape); ``x``
    may be overwritten (its NaN set to 0)."""
    nan = np.isnan(x, out=_work("bmi_nan", x.shape, bool))
    if not nan.any():
        return _box(x, size, out=out)
    np.copyto(x, np.float32(0.0), where=nan)
    _nan_box_means((x,), np.logical_not(nan, out=nan), size, (out,))
    return out


def _guided_np(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float, out: np.ndarray | None = None
) -> np.ndarray:
    """He et al. (2010) guided filter of ``src`` by ``guide``, float32 (box means in float64
    sums), into ``out`` when given (a fresh array otherwise). Pixels where either input is NaN
    carry no weight in any window; where the guide is NaN the result is the smoothed source.

    Every intermediate plane is a work buffer of this thread (:func:`_work`) and the
    arithmetic is in place, in the order of the textbook formula (He et al. 2010, Alg. 1)."""
    size = 2 * radius + 1
    g = np.ascontiguousarray(guide, dtype=np.float32)
    p = np.ascontiguousarray(src, dtype=np.float32)
    shape = g.shape
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    nan = np.isnan(g, out=_work("gf_nan", shape, bool))
    nan |= np.isnan(p, out=_work("gf_pnan", shape, bool))
    mean_g = _work("gf_mg", shape, np.float32)
    mean_p = _work("gf_mp", shape, np.float32)
    corr_gp = _work("gf_gp", shape, np.float32)
    corr_gg = _work("gf_gg", shape, np.float32)
    tmp = _work("gf_tmp", shape, np.float32)
    has_nan = bool(nan.any())
    if not has_nan:
        _box(g, size, out=mean_g)
        _box(p, size, out=mean_p)
        _box(np.multiply(g, p, out=tmp), size, out=corr_gp)
        _box(np.multiply(g, g, out=tmp), size, out=corr_gg)
    else:
        g0 = _work("gf_g0", shape, np.float32)
        p0 = _work("gf_p0", shape, np.float32)
        np.copyto(g0, g)
        np.copyto(p0, p)
        np.copyto(g0, np.float32(0.0), where=nan)
        np.copyto(p0, np.float32(0.0), where=nan)
        gp = np.multiply(g0, p0, out=tmp)
        gg = np.multiply(g0, g0, out=_work("gf_gg0", shape, np.float32))
        valid = np.logical_not(nan, out=nan)
        _nan_box_means((g0, p0, gp, gg), valid, size, (mean_g, mean_p, corr_gp, corr_gg))
    var_g = corr_gg  # corr_gg - mean_g * mean_g
    var_g -= np.multiply(mean_g, mean_g, out=tmp)
    a = corr_gp  # (corr_gp - mean_g * mean_p) / (var_g + eps)
    a -= np.multiply(mean_g, mean_p, out=tmp)
    var_g += np.float32(eps)
    a /= var_g
    b = np.multiply(a, mean_g, out=tmp)  # mean_p - a * mean_g
    np.subtract(mean_p, b, out=b)
    if not has_nan:
        _box(a, size, out=out)
        out *= g
        out += _box(b, size, out=corr_gg)
        return out
    # Window means of a and b (NaN where a window held no valid pixel, weight 0 there).
    _box_mean_into(a, size, out)
    out *= np.asarray(guide, dtype=np.float32)
    out += _box_mean_into(b, size, corr_gg)
    missing = np.isnan(out, out=_work("gf_nan", shape, bool))
    np.copyto(out, mean_p, where=missing)
    return out


def guided_np(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`guided_filter` of one in-memory block (float32), into ``out`` when given."""
    return _guided_np(guide, src, radius, eps, out)


def box_mean_np(x: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """NaN-aware (optionally weighted) box mean of a float block over its last two axes (y, x;
    each leading plane apart), float32: ``sum(w x) / sum(w)`` over the ``size`` px window
    (reflected border), NaN where the window holds no weight."""
    return _box_mean_np(x, size, weights)


def box_np(x: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Plain box mean of one NaN-free float32 block (reflected border, float64 sums), into
    ``out`` (C-contiguous, x's shape; not ``x`` itself) when given."""
    return _box(np.ascontiguousarray(x), size, out)


def min_filter_into(x: np.ndarray, size: int, out: np.ndarray) -> np.ndarray:
    """:func:`min_filter_np` of one float32 block into ``out`` (C-contiguous, x's shape; not
    ``x``): NaN ignored, NaN where the window holds no finite value. ``x`` must be
    C-contiguous float32 and is modified: its NaN become +inf (which window minima ignore)."""
    nan = np.isnan(x, out=_work("mfi_nan", x.shape, bool))
    had_nan = bool(nan.any())
    if had_nan:
        np.copyto(x, np.float32(np.inf), where=nan)
    kernel = _rect(size)
    res = _planes(out)
    for i, plane in enumerate(_planes(x)):  # replicated border: scipy's mode="nearest"
        cv2.erode(plane, kernel, dst=res[i], borderType=cv2.BORDER_REPLICATE)
    if had_nan:
        np.copyto(out, np.float32(np.nan), where=np.isinf(out, out=nan))
    return out


def min_filter_finite_into(x: np.ndarray, size: int, out: np.ndarray) -> np.ndarray:
    """Window minimum (``size`` square, replicated border) of one float32 plane (y, x) that
    holds no NaN (+inf stands for a missing value) into ``out`` (C-contiguous, x's shape; not
    ``x``): :func:`min_filter_into` without its NaN pass."""
    cv2.erode(x, _rect(size), dst=out, borderType=cv2.BORDER_REPLICATE)
    return out


_LN10_10 = np.float32(np.log(10.0) / 10.0)


def _lee_np(db: np.ndarray, size: int, enl: float) -> np.ndarray:
    """Lee (1980) filter on backscatter given in dB; filtering is done in linear power.

    Float32: the output is the one fresh array, every intermediate plane a work buffer of
    this thread (:func:`_work`). The box means of the power and of its square share the NaN
    mask and the window weights (the arithmetic of :func:`_box_mean_np`, done once)."""
    shape = np.shape(db)
    lin = np.multiply(db, _LN10_10, dtype=np.float32)
    np.exp(lin, out=lin)  # 10 ** (dB / 10); NaN stays NaN
    sq = _work("lee_sq", shape, np.float32)
    mean = _work("lee_mean", shape, np.float32)
    var = _work("lee_var", shape, np.float32)
    # The compiled per-pixel passes take 2-D views: rows of every (time, y) of the block.
    nx = shape[-1] if shape and shape[-1] else 1
    if kernels.lee_square(lin.reshape(-1, nx), sq.reshape(-1, nx)):  # sq = lin^2; any NaN
        w = _work("lee_w", shape, np.float32)  # window weights 0/1
        src = _work("lee_src", shape, np.float32)  # the power, 0 where NaN
        kernels.lee_weights(
            lin.reshape(-1, nx), sq.reshape(-1, nx), w.reshape(-1, nx), src.reshape(-1, nx)
        )
        den = _box(w, size, out=_work("lee_den", shape, np.float32))
        _box(src, size, out=mean)
        _box(sq, size, out=var)
        # mean and mean of squares: divided by the weights, NaN in an empty window
        kernels.lee_means(mean.reshape(-1, nx), var.reshape(-1, nx), den.reshape(-1, nx))
    else:
        _box(lin, size, out=mean)
        _box(sq, size, out=var)  # mean of squares
    # One compiled pass: var = max(var - mean^2, 0); k = max((var - mean^2 cu2) / (1 + cu2),
    # 0) / var, 0 where var is not > 0; lin = max(mean + k (lin - mean), 1e-10), NaN kept.
    planes = (lin.reshape(-1, nx), mean.reshape(-1, nx), var.reshape(-1, nx))
    kernels.lee_recover(*planes, np.float32(1.0 / enl))
    np.log10(lin, out=lin)
    lin *= np.float32(10.0)
    return lin


def _component_areas(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a 0/1 uint8 plane: labels (int32, 0 the background), the
    area of each label in pixels (0 for the background) and the flat indices of the set
    pixels. OpenCV's block-based decision tree (Grana et al. 2010) labels without its
    statistics pass, which is slower than counting the labels; the labels are counted over
    the set pixels only."""
    n, labels = cv2.connectedComponentsWithAlgorithm(plane, 8, cv2.CV_32S, cv2.CCL_BBDT)
    # numpy finds the set pixels of a bool array an order of magnitude faster than of uint8.
    fg = np.flatnonzero(plane.view(bool))
    fg_labels = labels.ravel()[fg]
    return fg_labels, np.bincount(fg_labels, minlength=n), fg


def _remove_small_np(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 8-connected components of fewer than ``min_px`` pixels (per 2-D plane)."""
    mask = np.asarray(mask, dtype=bool)
    flat = _planes(mask).view(np.uint8)
    out = np.zeros(flat.shape, dtype=bool)
    for i, plane in enumerate(flat):
        if not plane.any():
            continue
        fg_labels, area, fg = _component_areas(plane)
        out[i].ravel()[fg] = area[fg_labels] >= min_px
    return out.reshape(mask.shape)


def small_components_np(mask: np.ndarray, min_px: int) -> np.ndarray:
    """The pixels of the 8-connected components of fewer than ``min_px`` pixels of a boolean
    (or uint8, non-zero set) mask, per 2-D plane: bool, same shape."""
    m = np.asarray(mask)
    flat = _planes(m if m.dtype == bool else m != 0).view(np.uint8)
    out = np.zeros(flat.shape, dtype=bool)
    for i, plane in enumerate(flat):
        if not plane.any():
            continue
        fg_labels, area, fg = _component_areas(plane)
        small = area[fg_labels] < min_px
        if small.any():
            out[i].ravel()[fg] = small
    return out.reshape(np.shape(mask))


def min_filter_np(x: np.ndarray, size: int) -> np.ndarray:
    """NaN-ignoring square minimum filter (``size`` px, odd) of one in-memory block (same shape
    and dtype); NaN where the window is all NaN."""
    return _min_filter_np(x, size)


def median_filter_np(x: np.ndarray, size: int, fill: float) -> np.ndarray:
    """:func:`median_filter` of one in-memory block (same shape and dtype)."""
    return _median_filter_np(x, size, fill)


def dilate_np(mask: np.ndarray, radius: int) -> np.ndarray:
    """:func:`binary_dilate` of one in-memory boolean block."""
    return _dilate_np(mask, radius)


def open_np(mask: np.ndarray, radius: int) -> np.ndarray:
    """:func:`binary_open` of one in-memory boolean block."""
    return _open_np(mask, radius)


def any_in_window_np(mask: np.ndarray, size: int) -> np.ndarray:
    """:func:`max_filter` of one in-memory boolean block: True where the ``size`` square
    holds a True pixel (0 outside the array)."""
    return _any_in_window(mask, size)


# --------------------------------------------------------------------------- dask wrappers


def median_filter(x: da.Array, size: int, fill: float) -> da.Array:
    """Square median filter (``size`` px, odd) that reads NaN as ``fill``; NaN stays NaN."""
    return overlap(_median_filter_np, x, depth=size // 2, dtype=x.dtype, size=size, fill=fill)


def max_filter(x: da.Array, size: int) -> da.Array:
    """Square maximum filter (bool or NaN-ignoring float)."""
    return overlap(_max_filter_np, x, depth=size // 2, dtype=x.dtype, size=size)


def box_mean(x: da.Array, size: int, weights: da.Array | None = None) -> da.Array:
    """NaN-aware (optionally weighted) square box mean, float32 (reflected border)."""
    if weights is None:
        return overlap(_box_mean_np, x, depth=size // 2, dtype="float32", size=size)
    return overlap(
        lambda a, w: _box_mean_np(a, size, w), x, weights, depth=size // 2, dtype="float32"
    )


def binary_dilate(mask: da.Array, radius: int) -> da.Array:
    """Dilation of a boolean mask by a disk of ``radius`` px."""
    return overlap(_dilate_np, mask, depth=radius, dtype=bool, radius=radius)


def binary_open(mask: da.Array, radius: int) -> da.Array:
    """Opening of a boolean mask by a square of side ``2 radius + 1`` px."""
    return overlap(_open_np, mask, depth=2 * radius, dtype=bool, radius=radius)


def guided_filter(guide: da.Array, src: da.Array, radius: int, eps: float) -> da.Array:
    """He et al. (2010) guided filter, box radius ``radius`` px, regulariser ``eps``; float32."""
    return overlap(
        _guided_np, guide, src, depth=2 * radius + 1, dtype="float32", radius=radius, eps=eps
    )


def lee_filter(db: da.Array, size: int = 5, enl: float = 4.0) -> da.Array:
    """Lee speckle filter over a ``size`` px window for an image of ``enl`` looks (dB in/out)."""
    return overlap(_lee_np, db, depth=size // 2, dtype="float32", size=size, enl=enl)


def remove_small(mask: da.Array, min_px: int) -> da.Array:
    """Drop 8-connected components with fewer than ``min_px`` pixels.

    The halo is ``min_px`` wide: a component cut by the halo edge then has at least ``min_px``
    pixels inside it and is rightly kept, so the result is exact whatever the chunking.
    """
    if min_px <= 1:
        return mask.astype(bool)
    return overlap(_remove_small_np, mask, depth=min_px, dtype=bool, min_px=min_px)


#: Up to this many values per pixel the median sorts by a network of element-wise minima/maxima.
_SORT_NETWORK_UP_TO = 24


def _nanmedian_first_axis(x: np.ndarray) -> np.ndarray:
    """``np.nanmedian(x, axis=0, keepdims=True)`` by one sort along the (short) first axis: NaN
    sorts last, the median is the middle valid value (the mean of the two middle ones for an
    even count, as numpy takes it); NaN where no value is valid. Without numpy's masked-array
    path for short axes."""
    if x.shape[0] == 1:
        return x.copy()
    if x.shape[0] == 2:
        # The mean of both where both are valid, else of the valid one with itself (that value):
        # the same additions as the general path's ``low + high``.
        a, b = x[:1], x[1:]
        low = np.where(np.isnan(a), b, a)
        low += np.where(np.isnan(b), a, b)
        low *= low.dtype.type(0.5)
        return low
    nan = np.isnan(x)
    n = np.count_nonzero(~nan, axis=0)[None]
    if x.shape[0] > _SORT_NETWORK_UP_TO:
        s = np.sort(x, axis=0)
    else:
        # Odd-even transposition sort with NaN as +inf: element-wise minima and maxima of whole
        # planes, instead of a strided sort of millions of short columns.
        s = np.array(x, copy=True)
        s[nan] = np.inf
        for step in range(s.shape[0]):
            for i in range(step % 2, s.shape[0] - 1, 2):
                low = np.minimum(s[i], s[i + 1])
                np.maximum(s[i], s[i + 1], out=s[i + 1])
                s[i] = low
    low = np.take_along_axis(s, np.maximum((n - 1) // 2, 0), axis=0)
    high = np.take_along_axis(s, np.minimum(n // 2, x.shape[0] - 1), axis=0)
    low += high
    low *= low.dtype.type(0.5)
    low[n == 0] = np.nan
    return low


def nanmedian_np(x: np.ndarray) -> np.ndarray:
    """:func:`nanmedian_first_axis` of one in-memory block (first axis kept, length 1)."""
    return _nanmedian_first_axis(x)


def nanmedian_first_axis(x: da.Array) -> da.Array:
    """NaN-ignoring median over the first axis of ``x`` (kept, length 1); NaN where every value
    is NaN. One block per chunk of the other axes."""
    x = x.rechunk({0: -1})
    return da.map_blocks(
        _nanmedian_first_axis,
        x,
        chunks=((1,), *x.chunks[1:]),
        dtype=x.dtype,
        meta=np.empty((0,) * x.ndim, dtype=x.dtype),
    )


# --------------------------------------------------------------------------- histograms


def _uniform(bins: np.ndarray) -> bool:
    widths = np.diff(bins)
    return bool(
        len(bins) > 1 and bins[-1] > bins[0] and np.allclose(widths, widths[0], rtol=1e-9, atol=0)
    )


def bin_index(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Bin of each value for equal-width ``bins`` (intp, same shape), as ``np.histogram`` bins
    it (last edge included); ``len(bins) - 1`` for NaN and values outside the edges.

    The index is taken by float32 arithmetic and corrected against the float64 edges, so it is
    exact whatever the rounding (float32 values: only those within :data:`_EDGE_MARGIN` bins of
    an edge are corrected, see :func:`_fast_columns`).
    """
    v = np.asarray(values)
    flat = v.ravel()
    fast = _fast_columns(flat, bins)
    if fast is None:
        return _bin_index_exact(v, bins)
    nb = len(bins) - 1
    col, near, _ = fast
    idx = col.astype(np.intp)
    idx -= 1
    idx[idx < 0] = nb  # below the edges, NaN
    if near.size:
        idx[near] = _bin_index_exact(flat[near], bins)
    return idx.reshape(v.shape)


#: Computed bin positions within this many bins of an edge are re-binned exactly
#: (float32 rounding of the position is below 1e-4 bins for 1000 bins over -40..10).
_EDGE_MARGIN = 1e-3


def _fast_params(dtype: np.dtype, bins: np.ndarray) -> tuple[np.float32, np.float32] | None:
    """The float32 scale and offset of the bin position ``v * scale - offset`` (bin ``k`` at
    ``[k + 1, k + 2)``) of :func:`_fast_columns`; None where the float32 fast path does not
    apply (other dtypes, unequal bins, rounding that could exceed :data:`_EDGE_MARGIN`)."""
    nb = len(bins) - 1
    lo, hi = float(bins[0]), float(bins[-1])
    if dtype != np.float32 or not _uniform(bins):
        return None
    scale = nb / (hi - lo)
    # Worst float32 rounding of the position, in bins, with a factor 4 to spare.
    if 4.0 * 2.0**-23 * (abs(lo * scale) + abs(hi * scale) + nb + 2) > _EDGE_MARGIN:
        return None
    return np.float32(scale), np.float32(lo * scale - 1.0)


def _fast_columns(
    flat: np.ndarray, bins: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For 1-D float32 ``flat`` and equal-width ``bins``: the column of each value (int32; 0
    below the edges or not finite, ``k + 1`` for bin ``k``, ``nb + 1`` above) from its float32
    position ``v * nb / (hi - lo) - lo * nb / (hi - lo)``, the indices of the values whose
    position lies within :data:`_EDGE_MARGIN` of an edge, where float32 rounding could cross
    it: their columns are to be taken exactly, and the indices of the values whose position is
    not finite (every non-finite value among them). None where this does not apply (other
    dtypes, unequal bins, rounding that could exceed the margin)."""
    ncol = len(bins) + 1
    params = _fast_params(flat.dtype, bins)
    if params is None:
        return None
    scale, offset = params
    # Work buffers of this thread (:func:`_work`): the returned column array too, which the
    # callers read before this thread bins again.
    pos = np.multiply(flat, scale, out=_work("bin_pos", flat.shape, np.float32))
    pos -= offset  # bin k lies at [k + 1, k + 2)
    mask = np.isfinite(pos, out=_work("bin_mask", flat.shape, bool))
    bad = np.flatnonzero(np.logical_not(mask, out=mask))
    if bad.size:
        pos[bad] = 0.5  # column 0 (not a bin), far from an edge
    np.clip(pos, 0.0, ncol - 1.0, out=pos)
    col = _work("bin_col", flat.shape, np.int32)
    np.copyto(col, pos, casting="unsafe")  # truncation, as astype
    frac = np.subtract(pos, col, out=pos, dtype=np.float32)
    frac -= np.float32(0.5)
    np.abs(frac, out=frac)
    near = np.greater(frac, np.float32(0.5 - _EDGE_MARGIN), out=mask)
    return col, np.flatnonzero(near), bad


def _bin_index_exact(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """:func:`bin_index` by float32 arithmetic corrected against the float64 edges."""
    nb = len(bins) - 1
    lo, hi = float(bins[0]), float(bins[-1])
    v = np.asarray(values)
    f = np.subtract(v, np.float32(lo), dtype=np.float32)
    f *= np.float32(nb / (hi - lo))
    np.copyto(f, np.float32(0.0), where=np.isnan(f))  # set to nb below
    np.clip(f, 0, nb - 1, out=f)
    idx = f.astype(np.intp)
    idx -= v < bins[idx]
    np.maximum(idx, 0, out=idx)
    idx += (v >= bins[idx + 1]) & (idx != nb - 1)
    idx[~((v >= lo) & (v <= hi))] = nb  # NaN compares False: outside
    return idx


def masked_histogram(values: np.ndarray, mask: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Counts (float64, ``len(bins) - 1``) of a 2-D float32 plane's finite values where
    ``mask`` (2-D bool) over equal-width ``bins``, by OpenCV's ``calcHist`` without copying the
    masked values out: the counts of ``np.histogram`` of those values (pinned in the tests),
    except that a value equal to the last edge is left out, as any value outside the bins is
    (numpy puts it in the last bin)."""
    if not _uniform(bins):
        raise BadInputError("bins", f"{len(bins)} edges", "equal-width bin edges")
    v = np.ascontiguousarray(values, dtype=np.float32)
    m = np.isfinite(v)  # calcHist counts NaN in the last bin
    m &= mask
    lo, hi = float(bins[0]), float(bins[-1])
    return (
        cv2.calcHist([v], [0], m.view(np.uint8), [len(bins) - 1], [lo, hi])
        .ravel()
        .astype("float64")
    )


def _histogram(
    values: np.ndarray, bins: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """``np.histogram(values, bins, weights=weights)[0]`` (float64) for 1-D finite ``values``.

    Equal-width ``bins`` take the bin index by arithmetic, corrected against the edges as numpy
    does for equal bins, and one ``bincount``: the same counts as ``np.histogram`` with the
    edges array, without its binary search per value.
    """
    nb = len(bins) - 1
    if not _uniform(bins):
        return np.histogram(values, bins=bins, weights=weights)[0].astype("float64")
    counts = np.bincount(bin_index(values, bins).ravel(), weights=weights, minlength=nb + 1)
    return counts[:nb].astype("float64")


def hist_per_time(
    values: da.Array, mask: da.Array, bins: np.ndarray, weights: da.Array | None = None
) -> da.Array:
    """Exact per-time histogram ``(time, nbins)`` of ``values`` where ``mask`` (lazy, int64)."""
    nb = len(bins) - 1

    def block(v: np.ndarray, m: np.ndarray, *w: np.ndarray) -> np.ndarray:
        out = np.zeros((v.shape[0], 1, 1, nb), dtype="float64")
        for i in range(v.shape[0]):
            sel = m[i] & np.isfinite(v[i])
            ww = w[0][i][sel] if w else None
            out[i, 0, 0] = _histogram(v[i][sel], bins, ww)
        return out

    args = [values] + [a.rechunk(values.chunks) for a in (mask, weights) if a is not None]
    chunks = (values.chunks[0], (1,) * len(values.chunks[1]), (1,) * len(values.chunks[2]), (nb,))
    h = da.map_blocks(block, *args, new_axis=3, chunks=chunks, dtype="float64")
    return h.sum(axis=(1, 2))


def _square_bin_counts(
    v: np.ndarray,
    square: np.ndarray,
    n_squares: int,
    bins: np.ndarray,
    key_base: np.ndarray | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of each square of a 2-D plane ``(n_squares, nbins)`` int64, as
    :func:`bin_index` bins (only values inside the edges count), and the count of non-finite
    values per square ``(n_squares,)``. ``square``: the square of each pixel (int, 2-D);
    ``key_base``: ``square.ravel() * (nbins + 2)`` as intp, when the caller has it; ``grid``:
    ``(block_px, squares a row)`` when ``square`` is that grid of squares anchored at the
    origin (float32 values are then counted by one compiled pass,
    :func:`pipelines.stages.kernels.square_counts`, the same counts)."""
    nb = len(bins) - 1
    ncol = nb + 2  # column 0: below the edges, NaN; 1..nb: the bins; nb + 1: above
    params = _fast_params(np.asarray(v).dtype, bins) if grid is not None else None
    if params is not None and grid is not None:
        return _grid_bin_counts(np.ascontiguousarray(v), grid, n_squares, bins, params)
    flat = np.ascontiguousarray(v).ravel()
    if key_base is None:
        key_base = np.asarray(square, dtype=np.intp).ravel() * ncol
    fast = _fast_columns(flat, bins)
    if fast is None:
        nonfinite = np.bincount(key_base[~np.isfinite(flat)] // ncol, minlength=n_squares)
        idx = bin_index(flat, bins) + 1
        idx[idx == nb + 1] = 0
        counts = np.bincount(key_base + idx, minlength=n_squares * ncol)
        return counts.reshape(n_squares, ncol)[:, 1 : nb + 1], nonfinite
    col, near, bad = fast
    bad = bad[~np.isfinite(flat[bad])]  # a finite value can have an infinite position
    nonfinite = np.bincount(key_base[bad] // ncol, minlength=n_squares)
    key = np.add(key_base, col, out=_work("bin_key", key_base.shape, np.intp))
    counts = np.bincount(key, minlength=n_squares * ncol)
    if near.size:
        exact = _bin_index_exact(flat[near], bins) + 1
        exact[exact == nb + 1] = 0
        np.subtract.at(counts, key[near], 1)
        np.add.at(counts, key_base[near] + exact, 1)
    return counts.reshape(n_squares, ncol)[:, 1 : nb + 1], nonfinite


def _grid_bin_counts(
    v: np.ndarray,
    grid: tuple[int, int],
    n_squares: int,
    bins: np.ndarray,
    params: tuple[np.float32, np.float32],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_square_bin_counts` of a float32 C-contiguous plane on a grid of squares
    (``grid``: side in px, squares a row): the fast path's columns in one compiled pass, the
    values within :data:`_EDGE_MARGIN` of an edge re-binned exactly (:func:`_bin_index_exact`)."""
    nb = len(bins) - 1
    ncol = nb + 2
    block_px, n_x = grid
    counts = np.zeros(n_squares * ncol, dtype=np.int64)
    nonfinite = np.zeros(n_squares, dtype=np.int64)
    near = _work("bin_near", (v.size,), np.int64)
    scale, offset = params
    limit = np.float32(0.5 - _EDGE_MARGIN)
    n_near = kernels.square_counts(
        v, block_px, n_x, scale, offset, limit, ncol, counts, nonfinite, near
    )
    if n_near:
        at = near[:n_near]
        y, x = np.divmod(at, v.shape[1])
        exact = _bin_index_exact(v.ravel()[at], bins) + 1
        exact[exact == nb + 1] = 0
        np.add.at(counts, ((y // block_px) * n_x + x // block_px) * ncol + exact, 1)
    return counts.reshape(n_squares, ncol)[:, 1 : nb + 1], nonfinite


@functools.lru_cache(maxsize=8)
def _square_grid(
    height: int, width: int, block_px: int, ncol: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``block_px`` square of each pixel of a (height, width) plane (int, 2-D), the pixels
    of each square, and ``square * ncol`` as flat intp keys; read-only, kept per shape."""
    nx = -(-width // block_px)
    square = (np.arange(height) // block_px)[:, None] * nx + (np.arange(width) // block_px)
    pixels = np.bincount(square.ravel(), minlength=-(-height // block_px) * nx)
    key_base = square.astype(np.intp).ravel() * ncol
    for arr in (square, pixels, key_base):
        arr.flags.writeable = False
    return square, pixels, key_base


def _square_hist_block(
    v: np.ndarray,
    *,
    bins: np.ndarray,
    block_px: int,
    need: float,
    min_ashman_d: float,
    max_low_mean: float,
) -> np.ndarray:
    """:func:`block_histograms` of one (time, y, x) block: (time, 1, 1, 2 nbins + 1) float64,
    the pooled histogram of the bimodal squares, their count, the histogram of the block."""
    nb = len(bins) - 1
    centers = 0.5 * (bins[:-1] + bins[1:])
    out = np.zeros((v.shape[0], 1, 1, 2 * nb + 1), dtype="float64")
    ny, nx = -(-v.shape[1] // block_px), -(-v.shape[2] // block_px)
    square, pixels, key_base = _square_grid(v.shape[1], v.shape[2], block_px, nb + 2)
    for i in range(v.shape[0]):
        grid = (block_px, nx)
        counts, nonfinite = _square_bin_counts(v[i], square, ny * nx, bins, key_base, grid)
        finite = pixels - nonfinite
        hist = counts.astype("float64")
        cand = np.flatnonzero(finite >= need)
        bimodal = cand[_bimodal_rows(hist[cand], centers, min_ashman_d, max_low_mean)]
        out[i, 0, 0, :nb] = hist[bimodal].sum(axis=0)
        out[i, 0, 0, nb] = bimodal.size
        out[i, 0, 0, nb + 1 :] = hist.sum(axis=0)
    return out


def block_histogram_blocks(
    values: da.Array,
    bins: np.ndarray,
    block_px: int,
    min_valid: float,
    min_ashman_d: float,
    max_low_mean: float = np.inf,
) -> da.Array:
    """:func:`block_histograms` of each chunk, not yet summed: (time, chunks along y, chunks
    along x, 2 nbins + 1) float64, per chunk the pooled histogram of its bimodal squares,
    their count and the histogram of the chunk (sum over axes 1 and 2 for the slice's)."""
    # Align the chunks on the block grid so each block lies in one chunk.
    cy = max(block_px, (values.chunksize[-2] // block_px) * block_px)
    cx = max(block_px, (values.chunksize[-1] // block_px) * block_px)
    values = values.rechunk((values.chunksize[0], cy, cx))
    nb = len(bins) - 1
    chunks = (values.chunks[0], (1,) * len(values.chunks[1]), (1,) * len(values.chunks[2]))
    return da.map_blocks(
        _square_hist_block,
        values,
        new_axis=3,
        chunks=(*chunks, (2 * nb + 1,)),
        dtype="float64",
        meta=np.empty((0, 0, 0, 0), dtype="float64"),
        bins=bins,
        block_px=block_px,
        need=max(16, min_valid * block_px * block_px),
        min_ashman_d=min_ashman_d,
        max_low_mean=max_low_mean,
    )


def block_histograms(
    values: da.Array,
    bins: np.ndarray,
    block_px: int,
    min_valid: float,
    min_ashman_d: float,
    max_low_mean: float = np.inf,
) -> tuple[da.Array, da.Array, da.Array]:
    """Pooled histogram of the bimodal ``block_px`` sub-tiles of each time slice, and the
    histogram of the whole slice.

    The (y, x) plane is cut into ``block_px`` squares on a grid anchored at the array origin.
    A square is bimodal when at least ``min_valid`` of it is valid, Otsu's split leaves at least
    10 % on each side, Ashman's D of the two sides is at least ``min_ashman_d`` and the mean of
    the lower side is at most ``max_low_mean`` (the lower mode is of the kind sought, not a
    second, darker land cover). Returns the summed histogram of the bimodal squares
    ``(time, nbins)``, their count ``(time,)`` and the histogram of every finite value
    ``(time, nbins)`` (:func:`hist_per_time` of the finite values), all from one pass: one bin
    index per pixel and one ``bincount`` of (square, bin) per block.
    """
    nb = len(bins) - 1
    h = block_histogram_blocks(values, bins, block_px, min_valid, min_ashman_d, max_low_mean)
    h = h.sum(axis=(1, 2))
    return h[:, :nb], h[:, nb], h[:, nb + 1 :]


def _otsu_rows(hist: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``skimage.filters.threshold_otsu(hist=(row, centers))`` of each row of ``hist`` (rows with
    at least two occupied bins), with its arithmetic: float32 counts, leading and trailing empty
    bins left out of the candidate splits."""
    counts = hist.astype(np.float32)
    w1 = np.cumsum(counts, axis=1)
    w2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    weighted = counts * centers
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.cumsum(weighted, axis=1) / w1
        m2 = (np.cumsum(weighted[:, ::-1], axis=1) / w2[:, ::-1])[:, ::-1]
        between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    # Splits before the first or after the last occupied bin are NaN (an empty side).
    between[np.isnan(between)] = -np.inf
    return centers[np.argmax(between, axis=1)]


def _bimodal_rows(
    hist: np.ndarray, centers: np.ndarray, min_ashman_d: float, max_low_mean: float = np.inf
) -> np.ndarray:
    """:func:`_bimodal` of each row of ``hist`` (nrows, nbins), vectorised; rows within
    rounding of a limit are decided by :func:`_bimodal` itself, so the answer is the same."""
    result = np.zeros(hist.shape[0], dtype=bool)
    total = hist.sum(axis=1)
    rows = np.flatnonzero((total > 0) & (np.count_nonzero(hist, axis=1) >= 2))
    if rows.size and np.isfinite(max_low_mean):
        # The lower side's mean is at least the lowest occupied bin centre: a row whose lowest
        # centre lies above the limit (beyond rounding) fails it in either test.
        lowest = centers[np.argmax(hist[rows] > 0, axis=1)]
        rows = rows[lowest <= max_low_mean + 1e-6 * (1.0 + abs(max_low_mean))]
    if not rows.size:
        return result
    h, total = hist[rows], total[rows]
    # Bins empty in every row change no split and no sum beyond rounding: left out.
    occupied = np.flatnonzero(h.any(axis=0))
    cut = slice(occupied[0], occupied[-1] + 1)
    ht, ct = h[:, cut], centers[cut]
    # The lower side of each row's split: its first k bins. Shares, means and variances of the
    # sides come from running sums (variance as E[c^2] - m^2), a relative error far below the
    # 1e-6 band in which the scalar test decides.
    k = np.searchsorted(ct, _otsu_rows(ht, ct))
    hc = ht * ct
    run = np.stack([np.cumsum(ht, axis=1), np.cumsum(hc, axis=1), np.cumsum(hc * ct, axis=1)])
    at = np.where(k > 0, run[:, np.arange(len(rows)), np.maximum(k - 1, 0)], 0.0)
    n1, s1, q1 = at
    n2 = total - n1
    shares = (n1 >= 0.1 * total) & (n2 >= 0.1 * total)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = s1 / n1
        m2 = (run[1, :, -1] - s1) / n2
        v1 = np.maximum(q1 / n1 - m1 * m1, 0.0)
        v2 = np.maximum((run[2, :, -1] - q1) / n2 - m2 * m2, 0.0)
        d = np.sqrt(2.0) * np.abs(m1 - m2) / np.sqrt(v1 + v2 + 1e-12)
    decided = shares & (m1 <= max_low_mean) & (d >= min_ashman_d)
    near = shares & (
        (np.abs(m1 - max_low_mean) <= 1e-6 * (1.0 + np.abs(m1)))
        | (np.abs(d - min_ashman_d) <= 1e-6 * (1.0 + d))
    )
    for j in np.flatnonzero(near):
        decided[j] = _bimodal(h[j], centers, min_ashman_d, max_low_mean)
    result[rows] = decided
    return result


def _bimodal(
    hist: np.ndarray, centers: np.ndarray, min_ashman_d: float, max_low_mean: float = np.inf
) -> bool:
    total = hist.sum()
    if total <= 0 or np.count_nonzero(hist) < 2:
        return False
    thr = threshold_otsu(hist=(hist, centers))
    lo = centers < thr
    n1, n2 = hist[lo].sum(), hist[~lo].sum()
    if n1 < 0.1 * total or n2 < 0.1 * total:
        return False
    m1 = (hist[lo] * centers[lo]).sum() / n1
    m2 = (hist[~lo] * centers[~lo]).sum() / n2
    if m1 > max_low_mean:
        return False
    v1 = (hist[lo] * (centers[lo] - m1) ** 2).sum() / n1
    v2 = (hist[~lo] * (centers[~lo] - m2) ** 2).sum() / n2
    d = np.sqrt(2.0) * abs(m1 - m2) / np.sqrt(v1 + v2 + 1e-12)
    return bool(d >= min_ashman_d)


def otsu_from_hist(hist: np.ndarray, bins: np.ndarray) -> float:
    """Otsu threshold of a histogram (NaN when it holds fewer than two occupied bins)."""
    hist = np.asarray(hist, dtype="float64")
    if hist.sum() <= 0 or np.count_nonzero(hist) < 2:
        return float("nan")
    centers = 0.5 * (bins[:-1] + bins[1:])
    return float(threshold_otsu(hist=(hist, centers)))


def valley_from_hist(hist: np.ndarray, bins: np.ndarray, smooth_bins: float = 10.0) -> float:
    """Threshold at the histogram minimum between the two modes on either side of Otsu's split.

    The histogram is smoothed with a Gaussian of ``smooth_bins`` bins; the lower mode is its
    peak below Otsu's threshold, the upper mode its peak above, and the threshold is the lowest
    point between them (the mode method). Unlike Otsu's split, the valley does not move towards
    a large or long-tailed class. NaN when the histogram holds fewer than two occupied bins.
    """
    hist = np.asarray(hist, dtype="float64")
    otsu = otsu_from_hist(hist, bins)
    if not np.isfinite(otsu):
        return float("nan")
    centers = 0.5 * (bins[:-1] + bins[1:])
    smooth = ndi.gaussian_filter1d(hist, smooth_bins, mode="constant")
    below = centers < otsu
    if not below.any() or below.all():
        return otsu
    i = int(np.argmax(np.where(below, smooth, -1.0)))
    j = int(np.argmax(np.where(below, -1.0, smooth)))
    k = i + int(np.argmin(smooth[i : j + 1]))
    return float(bins[k + 1]) if k < j else otsu
