"""haze_index: He et al. (2009) dark channel per pixel and a per-scene dark-channel-prior index.

Dark channel (``dark_channel``, 0..255, the 8-bit true-colour scale): for each pixel the minimum
over B02, B03, B04 of ``clip(reflectance / 0.3, 0, 1) * 255``, then the minimum over a 15 x 15 px
window (NaN pixels are ignored by the window and stay NaN).

Scene index (``dcp_index``): the mean dark channel of clear land pixels, i.e. pixels the cloud
mask calls CLEAR (not snow: its visible floor near 0.8 is no haze), with all three visible
bands valid and not water. Water is NDWI
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

import functools
import itertools
import operator
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.array.overlap import ensure_minimum_chunksize
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from pipelines.classes import SCL_WATER, CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import filters as F
from pipelines.stages import kernels as K

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


def _swir_band(present: list[str]) -> str | None:
    return next((b for b in ("B12", "B11") if b in present), None)


def _buf(slot: str, shape: tuple[int, ...], dtype: object = np.float32) -> np.ndarray:
    """This thread's work buffer ``haze_<slot>`` (:func:`pipelines.stages.filters.work_buffer`):
    intermediate planes of the block functions, never returned; the flags reuse the float
    planes of the bright-surface score, the scene sums (one plane at a time) their own."""
    return F.work_buffer(f"haze_{slot}", shape, dtype)


def _dark_8bit_np(rgb_min: np.ndarray) -> np.ndarray:
    """Per-pixel dark channel on the 0..255 scale from the RGB minimum reflectance, float32."""
    dc = np.array(rgb_min, dtype=np.float32, copy=True)
    dc /= np.float32(TRUE_COLOUR_MAX)
    np.clip(dc, 0.0, 1.0, out=dc)
    dc *= np.float32(255.0)
    return dc


def _windowed_dark_np(dc: np.ndarray, window: int) -> np.ndarray:
    """Minimum of ``dc`` over a ``window`` square ignoring NaN; NaN where ``dc`` is NaN."""
    out = F.min_filter_np(dc, window)
    out[np.isnan(dc)] = np.nan
    return out


def _surface_np(
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    swir: np.ndarray | None,
    swir_band: str | None,
    out: np.ndarray | None = None,
    dmin: np.ndarray | None = None,
) -> np.ndarray:
    """Bright-surface score 0..1 of a block, float32 (module docstring), into ``out`` (the
    shape of the bands) when given. ``dmin``: the visible minimum ``min(B02, B03, B04)`` when
    the caller has it (the score is then only read where all three bands are valid)."""
    shape = np.shape(b2)
    if dmin is None:
        dmin = np.fmin(b2, b3, out=_buf("dmin", shape))
        np.fmin(dmin, b4, out=dmin)
    gate = np.subtract(dmin, K.SURFACE_GATE, out=out)
    gate /= K.SURFACE_GATE
    np.clip(gate, 0.0, 1.0, out=gate)
    score = np.subtract(b4, b2, out=_buf("score", shape))  # redness
    den = np.add(b4, b2, out=_buf("den", shape))
    den += K.RATIO_EPS
    score /= den
    score /= K.SURFACE_REDNESS
    np.clip(score, 0.0, 1.0, out=score)
    if swir is not None:
        ratio = _buf("ratio", shape)
        np.add(dmin, K.RATIO_EPS, out=den)
        if swir_band == "B11":
            np.multiply(swir, K.B11_AS_B12, out=ratio)
            ratio /= den
        else:
            np.divide(swir, den, out=ratio)
        ratio -= K.SWIR_RATIO_LOW
        ratio /= K.SWIR_RATIO_WIDTH
        np.clip(ratio, 0.0, 1.0, out=ratio)
        nan = np.isnan(ratio, out=_buf("nan", shape, bool))
        if nan.any():
            np.copyto(ratio, np.float32(0.0), where=nan)  # clipped: NaN is all left
        np.fmax(score, ratio, out=score)
    gate *= score
    return gate


def dark_channel_8bit(rgb_min_refl: xr.DataArray, window: int) -> xr.DataArray:
    """Windowed dark channel (time, y, x) on the 0..255 scale from the per-pixel RGB minimum."""
    data = F.as_dask(rgb_min_refl).data

    def block(x: np.ndarray) -> np.ndarray:
        return _windowed_dark_np(_dark_8bit_np(x), window)

    out = F.overlap(block, data, depth=window // 2, dtype="float32")
    return rgb_min_refl.copy(data=out)


def bright_surface_score(s2: xr.DataArray, present: list[str]) -> xr.DataArray:
    """Bright-surface score 0..1 (time, y, x); see the module docstring."""
    swir_band = _swir_band(present)
    names = VISIBLE + ((swir_band,) if swir_band else ())
    planes = [
        F.as_dask(s2.sel(band=b, drop=True)).data.astype("float32", copy=False) for b in names
    ]

    def block(b2: np.ndarray, b3: np.ndarray, b4: np.ndarray, *swir: np.ndarray) -> np.ndarray:
        return _surface_np(b2, b3, b4, swir[0] if swir else None, swir_band)

    template = s2.sel(band="B02", drop=True)
    return template.copy(
        data=da.map_blocks(
            block, *planes, dtype="float32", meta=np.empty((0, 0, 0), dtype=np.float32)
        )
    )


# Bits of the per-pixel flags of haze_index.
_VALID, _LAND, _CLEAR_LAND, _OBSCURED = 1, 2, 4, 8


def _cloud_bits() -> np.ndarray:
    """What each cloud class code says for the flags (uint8 lookup table over 0..255):
    ``_LAND`` where it is not nodata, ``_CLEAR_LAND`` where clear, ``_OBSCURED`` for cloud,
    shadow and nodata."""
    codes = np.arange(256)
    lut = np.where(codes != CloudClass.NODATA, _LAND, 0)
    lut |= np.where(codes == CloudClass.CLEAR, _CLEAR_LAND, 0)
    obscured = np.isin(codes, (CloudClass.CLOUD, CloudClass.SHADOW, CloudClass.NODATA))
    lut |= np.where(obscured, _OBSCURED, 0)
    return lut.astype(np.uint8)


_CLOUD_BITS = _cloud_bits()


def _pixel_bits() -> np.ndarray:
    """The flags from the cloud bits (:data:`_CLOUD_BITS`, below 16) and the pixel's own tests
    (16: invalid, 32: water), as a uint8 lookup table over 0..255: land and clear land only
    where the pixel is valid and not water, obscured also wherever it is invalid, valid where
    it is."""
    codes = np.arange(256)
    cloud, invalid, water = codes & 15, (codes & 16) > 0, (codes & 32) > 0
    keep = np.where(invalid | water, _OBSCURED, _LAND | _CLEAR_LAND | _OBSCURED)
    flags = (cloud & keep) | np.where(invalid, _OBSCURED, _VALID)
    return flags.astype(np.uint8)


_PIXEL_BITS = _pixel_bits()


#: Per-time sums of haze_index (kernels.haze_pixels): land and clear-land pixel counts, then the
#: index numerator over land and over clear land and, without SWIR, the weight over each.
_N_SUMS = K.SUMS
#: The cloud classes and the flags' bits the compiled kernel tests and sets (it gives the flags
#: of _CLOUD_BITS and _PIXEL_BITS by comparisons; tested on every code).
_CODES = np.array(
    [CloudClass.NODATA, CloudClass.CLEAR, CloudClass.CLOUD, CloudClass.SHADOW], dtype=np.uint8
)
_BITS = np.array([_VALID, _LAND, _CLEAR_LAND, _OBSCURED], dtype=np.uint8)
#: Stands for an absent band in the compiled kernels (never read).
_ABSENT = np.zeros((1, 1), dtype=np.float32)


#: Transparent huge page size (x86-64; arm64 with 4 KiB base pages).
_HUGE_PAGE = 2 << 20


#: Pixels of a plane in one strip of :func:`_block_np`: 128 rows of a 1024 px tile. The strip's
#: visible bands, 8-bit dark channel and window minimum (5 float32 planes, 2.5 MiB) are still
#: in the processor's cache when the per-pixel pass reads them again, instead of being read
#: back from memory after the whole plane. DEMO bench tile, two dates on two threads: 7.95 ms a
#: call on whole planes, 7.18 / 6.84 / 6.95 ms in strips of 64 / 128 / 256 rows (equal outputs).
STRIP_PX = 128 * 1024


def strip_rows(width: int, reach: int) -> int:
    """Rows of one strip of a ``width`` px wide plane (:data:`STRIP_PX`), at least the
    ``2 * reach + 1`` rows of the window it is filtered with (fewer would filter the halo
    rows more often than the strip's own)."""
    return max(2 * reach + 1, STRIP_PX // max(width, 1))


def _c32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _fresh(shape: tuple[int, ...], dtypes: list[type]) -> list[np.ndarray]:
    """Fresh planes of ``shape``, one per dtype, carved from one allocation: when that is 4 MiB
    or more, it starts on a 2 MiB boundary, and numpy asks the kernel for transparent huge
    pages for it, so the planes' first touch costs a page fault per 2 MiB instead of one per
    4 KiB (on a 1024 px tile, 4,600 faults a run of the bench, most of the block call's time).
    The planes share their memory: it is freed with the last of them."""
    n = int(np.prod(shape))
    sizes = [-(-n * np.dtype(d).itemsize // 64) * 64 for d in dtypes]
    total = sum(sizes)
    huge = total >= 2 * _HUGE_PAGE
    raw = np.empty(total + _HUGE_PAGE * huge, dtype=np.uint8)
    start = -raw.ctypes.data % _HUGE_PAGE if huge else 0
    planes: list[np.ndarray] = []
    for size, dtype in zip(sizes, dtypes, strict=True):
        nbytes = n * np.dtype(dtype).itemsize
        planes.append(raw[start : start + nbytes].view(dtype).reshape(shape))
        start += size
    return planes


def _block_np(
    b2: np.ndarray,
    b3: np.ndarray,
    b4: np.ndarray,
    cm: np.ndarray,
    *rest: np.ndarray,
    swir_band: str | None,
    has_b8: bool,
    has_scl: bool,
    window: int,
    halo: tuple[int, int, int, int],
    block_id: tuple[int, ...] = (0, 0, 0),
    flags_out: bool = True,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """All the per-pixel work of haze_index on one (time, y, x) block, in one call.

    The inputs carry a ``halo[0]`` px halo in y and ``halo[1]`` px in x on the sides that have a
    neighbour (``halo[2]``, ``halo[3]``: the number of blocks along y, x; ``block_id``: this
    block's place); ``rest``: the SWIR band, B08 and SCL, those present. Returns, on the block
    without its halo: the windowed dark channel, the bright-surface score (NaN where invalid),
    the surface-corrected dark channel (None without SWIR), the flags (uint8), the obscured
    mask (bool), the partial per-time sums (time, 1, 1, ``_N_SUMS``) float64 and the pixel
    weight of a scene indexed over clear land (:func:`_weight_np`). Only the window minimum
    reads the halo. The output planes share one allocation (:func:`_fresh`); with
    ``flags_out`` False the flags are this thread's work buffer instead (read before this
    thread's next block call: the caller's own pixel weight).

    Per date, in strips of rows (:func:`strip_rows`), two compiled passes
    (:mod:`pipelines.stages.kernels`) and one OpenCV window minimum between them: the 8-bit
    dark channel of the rows not done yet; the strip's 15 x 15 px minimum (from ``window // 2``
    rows either side); then every per-pixel field, the flags and the sums of the strip in one
    pass."""
    rest_list = [_c32(a) for a in rest]
    swir = rest_list.pop(0) if swir_band else _ABSENT
    b8 = rest_list.pop(0) if has_b8 else _ABSENT
    scl = rest_list.pop(0) if has_scl else _ABSENT
    b2, b3, b4 = _c32(b2), _c32(b3), _c32(b4)
    codes = np.ascontiguousarray(cm, dtype=np.uint8)
    dy, dx, ny, nx = halo
    _, i, j = block_id
    top, left = dy * (i > 0), dx * (j > 0)
    full = np.shape(b2)
    inner = (full[0], full[1] - top - dy * (i < ny - 1), full[2] - left - dx * (j < nx - 1))
    dc = _buf("dc", full[1:])
    windowed = _buf("windowed", full[1:])
    names = ("dark", "surf", "haze_dark", "weight") if swir_band else ("dark", "surf", "weight")
    out = _fresh(inner, [np.float32] * len(names) + [np.uint8] * flags_out + [np.bool_])
    planes = dict(zip(names, out, strict=False))
    dark, surf, weight = planes["dark"], planes["surf"], planes["weight"]
    haze_dark = planes.get("haze_dark")
    flags = out[-2] if flags_out else _buf("flags", inner, np.uint8)
    obscured = out[-1]
    sums = np.zeros((full[0], 1, 1, _N_SUMS), dtype=np.float64)
    mode = {None: 0, "B12": 1, "B11": 2}[swir_band]
    floor = np.float32(SWIR_FLOOR[swir_band] if swir_band else 0.0)
    reach = window // 2
    rows = strip_rows(full[2], reach)
    strip_sums = np.zeros(_N_SUMS, dtype=np.float64)
    for t in range(full[0]):
        dark_rows = 0  # rows of the 8-bit dark channel computed so far
        for y0 in range(0, inner[1], rows):
            y1 = min(inner[1], y0 + rows)
            # The window minimum of the strip's output rows reads `reach` rows either side.
            lo, hi = max(0, y0 + top - reach), min(full[1], y1 + top + reach)
            if hi > dark_rows:
                span = slice(dark_rows, hi)
                K.haze_dark8(b2[t, span], b3[t, span], b4[t, span], dc[span])
                dark_rows = hi
            F.min_filter_finite_into(dc[lo:hi], window, windowed[lo:hi])
            # The kernel reads input row y + top for output row y: inputs from row y0 on.
            K.haze_pixels(
                b2[t, y0:],
                b3[t, y0:],
                b4[t, y0:],
                codes[t, y0:],
                swir[t, y0:] if swir_band else swir,
                b8[t, y0:] if has_b8 else b8,
                scl[t, y0:] if has_scl else scl,
                windowed[y0:],
                top,
                left,
                mode,
                floor,
                has_b8,
                has_scl,
                np.float32(SCL_WATER),
                _CODES,
                _BITS,
                dark[t, y0:y1],
                surf[t, y0:y1],
                haze_dark[t, y0:y1] if haze_dark is not None else _ABSENT,
                weight[t, y0:y1],
                flags[t, y0:y1],
                obscured[t, y0:y1],
                strip_sums,
            )
            sums[t, 0, 0] += strip_sums
    return dark, surf, haze_dark, flags, obscured, sums, weight


def _scene_np(
    partial: np.ndarray, use_floor: bool, min_clear_fraction: float, min_evidence_fraction: float
) -> np.ndarray:
    """Scene figures of each date (time, 3) float64 from its blocks' partial sums (time, blocks
    along y, blocks along x, ``_N_SUMS``): the clear-land fraction, 1 where the index is taken
    over all land (the scene is mostly cloud), and the index (NaN without a counted pixel)."""
    sums = partial.sum(axis=(1, 2))
    n_land, n_clear = sums[:, 0], sums[:, 1]
    clear_fraction = np.where(n_land > 0, n_clear / np.maximum(n_land, 1.0), 0.0)
    all_pixels = clear_fraction.astype("float32") < min_clear_fraction
    n_counted = np.where(all_pixels, n_land, n_clear)
    num = np.where(all_pixels, sums[:, 2], sums[:, 3])
    if use_floor:
        denom = n_counted
    else:
        wsum = np.where(all_pixels, sums[:, 4], sums[:, 5])
        denom = np.fmax(wsum, min_evidence_fraction * n_counted)
    with np.errstate(invalid="ignore", divide="ignore"):
        index = np.where(n_counted > 0, num / np.where(n_counted > 0, denom, 1.0), np.nan)
    return np.stack([clear_fraction, all_pixels.astype("float64"), index], axis=1)


def _column_np(scene: np.ndarray, k: int) -> np.ndarray:
    """Column ``k`` of the scene figures (:func:`_scene_np`): the clear fraction as float32,
    the all-pixels flag as bool, the index as float32."""
    return scene[:, k] > 0 if k == 1 else scene[:, k].astype(np.float32)


def _weight_np(
    clear_weight: np.ndarray, flags: np.ndarray, surf: np.ndarray, scene: np.ndarray
) -> np.ndarray:
    """Haze evidence per pixel: ``1 - bright_surface`` where counted (land when the scene is
    mostly cloud, else clear land), 0 elsewhere; float32. ``clear_weight``: the block call's
    weight over clear land, returned as it is when no date of the block is mostly cloud;
    ``scene``: the scene figures of the block's dates (:func:`_scene_np`)."""
    all_pixels = scene[:, 1] > 0
    if not all_pixels.any():
        return clear_weight
    bit = np.where(all_pixels, _LAND, _CLEAR_LAND).astype(np.uint8)  # (time,)
    out = np.empty(np.shape(surf), dtype=np.float32)
    K.haze_weight(np.ascontiguousarray(flags, dtype=np.uint8), _c32(surf), bit, out)
    return out


def _haloed_inputs(
    arrays: list[da.Array], depth: int
) -> tuple[list[da.Array], tuple[tuple[int, ...], ...], tuple[int, int, int, int]]:
    """``arrays`` (time, y, x), same chunks, with a ``depth`` px halo in y and x taken from
    their neighbours (none along an axis in one chunk; one chunk along an axis the halo would
    span; chunks thinner than the halo merged first, as ``map_overlap`` does). Returns the
    haloed arrays, the chunks of the blocks without their halo, and ``_block_np``'s halo
    argument."""
    ref = arrays[0]
    single = {}
    for ax in (1, 2):
        if depth > 0 and len(ref.chunks[ax]) > 1 and depth >= ref.shape[ax]:
            single[ax] = -1  # the halo would span the axis: one chunk needs none
    if single:
        arrays = [a.rechunk(single) for a in arrays]
    dep = {ax: depth if depth > 0 and len(arrays[0].chunks[ax]) > 1 else 0 for ax in (1, 2)}
    sizes = {ax: ensure_minimum_chunksize(d, arrays[0].chunks[ax]) for ax, d in dep.items() if d}
    if sizes:
        arrays = [a.rechunk(sizes) for a in arrays]
    chunks = arrays[0].chunks
    if any(dep.values()):
        depths = {0: 0, 1: dep[1], 2: dep[2]}
        arrays = [da.overlap.overlap(a, depth=depths, boundary="none") for a in arrays]
    return arrays, chunks, (dep[1], dep[2], len(chunks[1]), len(chunks[2]))


def _band_of(block: np.ndarray, k: int) -> np.ndarray:
    """Band ``k`` of a (time, band, y, x) block as float32 (a view when it is float32)."""
    return block[:, k].astype(np.float32, copy=False)


def _per_block(
    prefix: str,
    source: da.Array,
    fn: Callable[..., np.ndarray],
    arg: object,
    chunks: tuple[tuple[int, ...], ...],
    meta: np.ndarray,
    source_index: Callable[[tuple[int, ...]], tuple[int, ...]],
) -> da.Array:
    """``fn(block, arg)`` of blocks of ``source`` as a dask array of ``chunks``: its block ``r``
    from the block ``source_index(r)`` of ``source``. A graph layer written out, one task per
    block, without the argument tokenising and signature inspection of ``map_blocks`` (most of
    haze_index's graph construction time)."""
    name = f"{prefix}-{source.name}"
    blocks = itertools.product(*(range(len(c)) for c in chunks))
    dsk: dict[Any, Any] = {(name, *r): (fn, (source.name, *source_index(r)), arg) for r in blocks}
    dependencies: list[Any] = [source]  # dask's DaskCollection protocol, which Array meets
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=dependencies)
    return da.Array(graph, name, chunks=chunks, meta=meta)


def _block_of_bands(
    blocks: list[np.ndarray], bands: list[int], cm: np.ndarray, **kw: Any
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:
    """:func:`_block_np` on (time, band, y, x) blocks of s2: band ``bands[i]`` of
    ``blocks[i]``, in the order B02, B03, B04, then SWIR, B08, SCL (those present)."""
    planes = [_band_of(b, k) for b, k in zip(blocks, bands, strict=True)]
    return _block_np(*planes[:3], cm, *planes[3:], **kw)


def _dates_of_bands(
    blocks: list[np.ndarray],
    bands: list[int],
    cm: np.ndarray,
    *,
    use_floor: bool,
    min_clear_fraction: float,
    min_evidence_fraction: float,
    **kw: Any,
) -> tuple[np.ndarray | None, ...]:
    """The whole of haze_index on a block of dates whose chunks hold whole planes (y, x):
    :func:`_block_of_bands`, then the scene figures of those dates (:func:`_scene_np` on their
    sums: a block holds the whole scene) and their pixel weight (:func:`_weight_np`). Returns
    the outputs of :data:`_OUTPUTS`: the planes (time, y, x) dark channel, bright-surface score,
    surface-corrected dark channel (None without SWIR), obscured, pixel weight, then the (time,)
    clear fraction, all-pixels flag and index, as the multi-chunk graph gives them."""
    dark, surf, haze_dark, flags, obscured, sums, clear_weight = _block_of_bands(
        blocks, bands, cm, **kw, flags_out=False
    )
    scene = _scene_np(sums, use_floor, min_clear_fraction, min_evidence_fraction)
    weight = _weight_np(clear_weight, flags, surf, scene)
    columns = (_column_np(scene, 0), _column_np(scene, 1), _column_np(scene, 2))
    return (dark, surf, haze_dark, obscured, weight, *columns)


#: The outputs of haze_index's two graphs, in order: (time, y, x) planes, then (time,) figures.
_OUTPUTS = (
    ("dark", np.float32),
    ("surf", np.float32),
    ("haze_dark", np.float32),
    ("obscured", np.bool_),
    ("weight", np.float32),
    ("clear_fraction", np.float32),
    ("all_pixels", np.bool_),
    ("dcp", np.float32),
)
_PLANES = 5


def _holds_whole_planes(chunks: tuple[tuple[int, ...], ...]) -> bool:
    """Whether each chunk of (time, y, x) ``chunks`` holds whole planes (one chunk along y and
    x): then haze_index takes the one-task-per-block-of-dates graph (:func:`_whole_planes`)."""
    return len(chunks[1]) == 1 and len(chunks[2]) == 1


def _whole_planes(
    data: da.Array,
    cm: da.Array,
    at: list[tuple[int, int]],
    kw: dict[str, Any],
    scene_kw: dict[str, Any],
) -> list[da.Array | None]:
    """haze_index's graph where each chunk of ``data`` (time, band, y, x) holds whole planes:
    one task per block of dates (:func:`_dates_of_bands`) reading its bands (chunk along the
    band axis and place in it: ``at``, in the order B02, B03, B04, SWIR, B08, SCL, those
    present) from the chunks of ``data`` and its cloud mask from ``cm`` (time, y, x; chunks of
    ``data`` without the band axis); then one task per output and block picking it from the
    tuple. Returns the outputs of :data:`_OUTPUTS` (``haze_dark`` None without SWIR)."""
    chunks: tuple[tuple[int, ...], ...] = (data.chunks[0], data.chunks[2], data.chunks[3])
    name = "haze-dates-" + tokenize(data.name, cm.name, at, kw, scene_kw)
    call = functools.partial(_dates_of_bands, **kw, **scene_kw, halo=(0, 0, 1, 1))
    dsk: dict[Any, Any] = {
        (name, t, 0, 0): (
            call,
            [(data.name, t, c, 0, 0) for c, _ in at],
            [k for _, k in at],
            (cm.name, t, 0, 0),
        )
        for t in range(len(chunks[0]))
    }
    dependencies: list[Any] = [data, cm]
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=dependencies)
    dates = da.Array(graph, name, chunks=chunks, meta=np.empty((0, 0, 0), dtype=np.float32))

    def same(r: tuple[int, ...]) -> tuple[int, ...]:
        return r

    def date(r: tuple[int, ...]) -> tuple[int, ...]:
        return (r[0], 0, 0)

    outs: list[da.Array | None] = []
    for k, (label, dtype) in enumerate(_OUTPUTS):
        if label == "haze_dark" and kw["swir_band"] is None:
            outs.append(None)
            continue
        plane = k < _PLANES
        meta: np.ndarray = np.empty((0, 0, 0) if plane else (0,), dtype=dtype)
        out_chunks = chunks if plane else (chunks[0],)
        prefix = f"haze-{label}"
        pick = same if plane else date
        outs.append(_per_block(prefix, dates, operator.getitem, k, out_chunks, meta, pick))
    return outs


def _in_chunks(
    planes: list[da.Array],
    cm: da.Array,
    plane_chunks: tuple[tuple[int, ...], ...],
    window: int,
    kw: dict[str, Any],
    scene_kw: dict[str, Any],
) -> list[da.Array | None]:
    """haze_index's graph on chunks that do not hold whole planes: :func:`_block_np` per chunk
    on the band ``planes`` (time, y, x; B02, B03, B04, SWIR, B08, SCL, those present) and the
    cloud mask ``cm`` with the window's halo, the scene figures of each date from one reduction
    of the chunks' sums (:func:`_scene_np`), the pixel weight per chunk from them
    (:func:`_weight_np`). Returns the outputs of :data:`_OUTPUTS` in ``plane_chunks``
    (``haze_dark`` None without SWIR)."""
    f32 = np.empty((0, 0, 0), dtype=np.float32)
    haloed, chunks, halo = _haloed_inputs([*planes[:3], cm, *planes[3:]], window // 2)
    fused = da.map_blocks(
        _block_np, *haloed, **kw, halo=halo, chunks=chunks, dtype="float32", meta=f32
    )

    def same(r: tuple[int, ...]) -> tuple[int, ...]:
        return r[:3]

    def part(k: int, meta: np.ndarray) -> da.Array:
        """Output ``k`` of the fused blocks, in the chunks of the inputs."""
        arr = _per_block(f"haze-out{k}", fused, operator.getitem, k, chunks, meta, same)
        return arr if arr.chunks == plane_chunks else arr.rechunk(plane_chunks)

    dark, surf = part(0, f32), part(1, f32)
    haze_dark = part(2, f32) if kw["swir_band"] is not None else None
    flags = part(3, np.empty((0, 0, 0), dtype=np.uint8))
    obscured = part(4, np.empty((0, 0, 0), dtype=bool))
    ny, nx = len(chunks[1]), len(chunks[2])
    partial = _per_block(
        "haze-sums",
        fused,
        operator.getitem,
        5,
        (chunks[0], (1,) * ny, (1,) * nx, (_N_SUMS,)),
        np.empty((0, 0, 0, 0), dtype=np.float64),
        same,
    )
    # The scene figures of each date in one call: clear fraction, all-pixels flag, index.
    scene = da.map_blocks(
        _scene_np,
        partial.rechunk({1: -1, 2: -1}) if ny * nx > 1 else partial,
        **scene_kw,
        drop_axis=(1, 2),
        chunks=(chunks[0], (3,)),
        dtype="float64",
        meta=np.empty((0, 0), dtype=np.float64),
    )

    def column(k: int, dtype: str) -> da.Array:
        meta = np.empty((0,), dtype=dtype)
        return _per_block(
            f"haze-scene{k}", scene, _column_np, k, (chunks[0],), meta, lambda r: (r[0], 0)
        )

    weight = da.blockwise(
        _weight_np,
        "tyx",
        part(6, f32),
        "tyx",
        flags,
        "tyx",
        surf,
        "tyx",
        scene,
        "tk",
        concatenate=True,
        dtype="float32",
        meta=f32,
    )
    columns = [column(0, "float32"), column(1, "bool"), column(2, "f4")]
    return [dark, surf, haze_dark, obscured, weight, *columns]


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
    swir_band = _swir_band(present)
    s2 = F.as_dask(s2)

    data = s2.data
    band_chunk = np.repeat(np.arange(len(data.chunks[1])), data.chunks[1])
    band_start = np.cumsum((0, *data.chunks[1]))
    f32 = np.empty((0, 0, 0), dtype=np.float32)
    plane_chunks: tuple[tuple[int, ...], ...] = (data.chunks[0], data.chunks[2], data.chunks[3])

    def located(name: str) -> tuple[int, int]:
        """The chunk of band ``name`` along the band axis and its place in that chunk."""
        i = present.index(name)
        return int(band_chunk[i]), i - int(band_start[band_chunk[i]])

    def plane(name: str) -> da.Array:
        """Band ``name`` (time, y, x) float32."""
        c, k = located(name)

        def index(r: tuple[int, ...]) -> tuple[int, ...]:
            return (r[0], c, r[1], r[2])

        return _per_block(f"haze-{name}", data, _band_of, k, plane_chunks, f32, index)

    has_b8, has_scl = "B08" in present, "SCL" in present
    names = [*VISIBLE, *([swir_band] if swir_band else []), *(["B08"] if has_b8 else [])]
    names += ["SCL"] if has_scl else []
    use_floor = swir_band is not None
    # The per-pixel work of a block in one call (_block_np).
    kw: dict[str, Any] = {
        "swir_band": swir_band,
        "has_b8": has_b8,
        "has_scl": has_scl,
        "window": window,
    }
    cm = F.as_dask(cloud_mask).data.rechunk(plane_chunks)
    scene_kw: dict[str, Any] = {
        "use_floor": use_floor,
        "min_clear_fraction": min_clear_fraction,
        "min_evidence_fraction": min_evidence_fraction,
    }
    outs: list[da.Array | None]
    if _holds_whole_planes(plane_chunks):
        # A block of dates holds its whole scene (a tile in one chunk per date), so its scene
        # figures and pixel weight need no reduction across chunks: all of its work in one
        # task, which reads its bands straight from the chunks of s2.
        outs = _whole_planes(data, cm, [located(b) for b in names], kw, scene_kw)
    else:
        outs = _in_chunks([plane(b) for b in names], cm, plane_chunks, window, kw, scene_kw)
    dark, surf, haze_dark, obscured, weight, clear_fraction, all_pixels, dcp = outs
    if haze_dark is None:
        haze_dark = dark

    yx = ("time", "y", "x")
    # s2's coordinates on (time, y, x) with their indexes as they are (none built again).
    keep = [k for k, v in s2.coords.variables.items() if set(v.dims) <= set(yx)]
    coords = xr.Coordinates(
        {k: s2.coords.variables[k] for k in keep},
        indexes={k: s2.xindexes[k] for k in keep if k in s2.xindexes},
    )
    ds = xr.Dataset(
        {
            "dark_channel": (yx, dark),
            "haze_dark_channel": (yx, haze_dark),
            "dcp_index": (("time",), dcp),
            "bright_surface": (yx, surf),
            "pixel_weight": (yx, weight),
            "clear_fraction": (("time",), clear_fraction),
            "all_pixels": (("time",), all_pixels),
            "obscured": (yx, obscured),
        },
        coords=coords,
    )
    ds["dark_channel"].attrs.update(units="8-bit true-colour scale (reflectance/0.3*255)")
    ds["haze_dark_channel"].attrs.update(
        units="8-bit true-colour scale",
        surface_correction="swir" if use_floor else "none (windowed dark channel)",
    )
    ds["dcp_index"].attrs.update(
        units="8-bit true-colour scale",
        window=1 if use_floor else window,
        surface="swir floor" if use_floor else "bright-surface weights",
    )
    ds.attrs.update({k: v for k, v in s2.attrs.items() if k in ("crs", "epsg")})
    return ds
