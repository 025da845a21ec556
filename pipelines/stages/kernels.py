"""Compiled per-pixel kernels of the stages (numba): one pass over a plane where numpy needs one
pass per operation.

Each kernel is written operation for operation as the numpy formula it replaces, in float32
with float32 constants (no fast-math, numpy's error model: x / 0 is inf or NaN, no exception),
so its planes equal numpy's to the bit; NaN follows numpy's rules (``np.minimum`` propagates
NaN and keeps its second argument on a tie, ``np.clip`` keeps NaN, ``np.fmax`` ignores it).

numba is imported and the kernels compiled on first use, not on import (importing numba takes
about a second): :func:`haze_dark8`, :func:`haze_pixels`, :func:`haze_weight`, the Lee
filter's :func:`lee_square`, :func:`lee_weights`, :func:`lee_means` and :func:`lee_recover`,
the sub-tile histograms' :func:`square_counts` and
flood_change's :func:`flood_pixels` and :func:`steep`, and the height above drainage's
:func:`hand_along_paths` compile once per process and cache the
machine code (``cache=True``: beside this file in ``__pycache__``, or numba's user cache
directory when that is read-only, or ``NUMBA_CACHE_DIR``), so a fresh worker loads them
instead of compiling. Every argument has one fixed type (2-D C-contiguous planes, absent bands as a
1 x 1 stand-in plane), so each kernel has one machine-code version.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "B11_AS_B12",
    "RATIO_EPS",
    "SUMS",
    "SURFACE_GATE",
    "SURFACE_REDNESS",
    "SWIR_RATIO_LOW",
    "SWIR_RATIO_WIDTH",
    "flood_pixels",
    "hand_along_paths",
    "haze_dark8",
    "haze_pixels",
    "haze_weight",
    "lee_means",
    "lee_recover",
    "lee_square",
    "lee_weights",
    "square_counts",
    "steep",
    "warm",
]

_F0, _F1 = np.float32(0.0), np.float32(1.0)
_NAN, _INF = np.float32(np.nan), np.float32(np.inf)
#: haze_index's constants (pipelines.stages.haze, which reads the public ones from here for its
#: numpy formulas): the 8-bit true-colour scale (reflectance 0.3 -> 255), the brightness gate
#: (0.04 reflectance and its width), the redness at score 1, the SWIR ratio's lower end and
#: width, B11 read as 0.6 x B12, the denominators' epsilon.
_TC, _W255 = np.float32(0.3), np.float32(255.0)
SURFACE_GATE, SURFACE_REDNESS = np.float32(0.04), np.float32(0.15)
SWIR_RATIO_LOW, SWIR_RATIO_WIDTH, B11_AS_B12 = np.float32(1.2), np.float32(0.8), np.float32(0.6)
RATIO_EPS = np.float32(1e-6)
#: The Lee filter's floor on the recovered linear power (pipelines.stages.filters): -100 dB,
#: below any backscatter a SAR sensor measures (Sentinel-1's noise floor is about -25 dB).
_LEE_FLOOR = np.float32(1e-10)
#: A window's weight at or below which it is empty (pipelines.stages.filters' box means):
#: float64 1e-12 as numpy compares it with a float32 plane, i.e. rounded to float32.
_EMPTY = np.float32(1e-12)

#: The partial sums of :func:`haze_pixels`, in order: land and clear-land pixel counts, the
#: value summed over land and over clear land and, when weighted, the weight over each.
SUMS = 6


def _haze_dark8_py(b2: Any, b3: Any, b4: Any, out: Any) -> None:
    """Per-pixel dark channel on the 8-bit scale: ``clip(min(B02, B03, B04) / 0.3, 0, 1) * 255``
    (NaN-propagating minimum), +inf where it is NaN (the window minimum then ignores it)."""
    ny, nx = out.shape
    for y in range(ny):
        r2, r3, r4, o = b2[y], b3[y], b4[y], out[y]
        for x in range(nx):
            m = r2[x]
            v = r3[x]
            m = m if (m < v or m != m) else v
            v = r4[x]
            m = m if (m < v or m != m) else v
            d = m / _TC
            d = _F0 if d < _F0 else d
            d = _F1 if d > _F1 else d
            o[x] = _INF if m != m else d * _W255


def _haze_pixels_for(swir_mode: int) -> Callable[..., None]:
    """haze_index's per-pixel kernel for ``swir_mode`` (0 without SWIR, 1 B12, 2 B11, read as
    0.6 B12 in the ratio), a constant of the function it returns: compiled once per mode, its
    tests of the mode folded away, so that each loop body stays free of branches."""
    weighted = swir_mode == 0  # the three-band index: the value weighted, the weight summed

    def haze_pixels_of_mode(
        b2: Any,
        b3: Any,
        b4: Any,
        cm: Any,
        swir: Any,
        b8: Any,
        scl: Any,
        windowed: Any,
        top: int,
        left: int,
        swir_floor: Any,
        has_b8: bool,
        has_scl: bool,
        scl_water: Any,
        codes: Any,
        bits: Any,
        dark: Any,
        surf: Any,
        haze_dark: Any,
        weight: Any,
        flags: Any,
        obscured: Any,
        sums: Any,
    ) -> None:
        """The per-pixel work of haze_index on one plane (see pipelines.stages.haze).

        Inputs (B02, B03, B04, cloud classes, SWIR, B08, SCL, the window minimum of the 8-bit dark
        channel) cover the plane with its halo: the output pixel (y, x) reads (y + top, x + left).
        ``swir_floor``: the visible floor per unit of that band. Writes the windowed dark channel,
        the bright-surface score, the surface-corrected dark channel (SWIR only), the haze evidence
        of clear land (``1 - score`` where the flags say clear land, else 0), the flags, the
        obscured mask (NaN / obscured where a visible band is NaN) and ``sums`` (:data:`SUMS`,
        float64; the value is the surface-corrected dark channel with SWIR, else the windowed dark
        channel weighted by ``1 - score``).

        Each row in four loops with selects only, which the compiler vectorises: the float
        fields; water and the flags (by comparisons: the flags of pipelines.stages.haze's two
        lookup tables, ``codes`` the cloud classes nodata, clear, cloud and shadow, ``bits`` the
        flags' bits valid, land, clear land and obscured) with the weight, land and clear land
        kept for the row (uint8); the counts (int32 lanes); the float64 sums. Lanes of one
        width per loop: with the counts and sums in the flags' loop, it ran 0.6-0.7 ms slower
        on a 1024 px plane. Without SWIR, ``haze_dark`` is a 1 x 1 stand-in plane."""
        ny, nx = dark.shape
        invalid = np.empty(nx, dtype=np.uint8)
        land_row = np.empty(nx, dtype=np.uint8)
        clear_row = np.empty(nx, dtype=np.uint8)
        nodata, clear, cloud, shadow = codes[0], codes[1], codes[2], codes[3]
        valid_bit, land_bit, clear_bit, obscured_bit = bits[0], bits[1], bits[2], bits[3]
        # Column sums (float64, one per pixel column): each row adds to them element by element,
        # which the compiler vectorises; they are summed at the end.
        cols = np.zeros((4, nx), dtype=np.float64)
        c_vl, c_vc, c_wl, c_wc = cols[0], cols[1], cols[2], cols[3]
        xs = slice(left, left + nx)
        zero = np.uint8(0)
        # Per-column pixel counts (int32: a column holds at most ny pixels), summed at the end.
        k_land = np.zeros(nx, dtype=np.int32)
        k_clear = np.zeros(nx, dtype=np.int32)
        for y in range(ny):
            yy = y + top
            r2, r3, r4, rw = b2[yy, xs], b3[yy, xs], b4[yy, xs], windowed[yy, xs]
            r_dark, r_surf, r_hd = dark[y], surf[y], haze_dark[y if swir_mode != 0 else 0]
            rs = swir[yy, xs] if swir_mode != 0 else r2
            for x in range(nx):
                p2 = r2[x]
                p4 = r4[x]
                m = p2
                v = r3[x]
                m = m if (m < v or m != m) else v
                m = m if (m < p4 or m != m) else p4
                bad = m != m
                invalid[x] = bad
                r_dark[x] = _NAN if bad else rw[x]
                gate = (m - SURFACE_GATE) / SURFACE_GATE
                gate = _F0 if gate < _F0 else gate
                gate = _F1 if gate > _F1 else gate
                score = (p4 - p2) / ((p4 + p2) + RATIO_EPS) / SURFACE_REDNESS
                score = _F0 if score < _F0 else score
                score = _F1 if score > _F1 else score
                if swir_mode != 0:  # a constant of the variant, as ``weighted`` below
                    sw = rs[x]
                    num = sw * B11_AS_B12 if swir_mode == 2 else sw
                    ratio = (num / (m + RATIO_EPS) - SWIR_RATIO_LOW) / SWIR_RATIO_WIDTH
                    ratio = _F0 if ratio < _F0 else ratio
                    ratio = _F1 if ratio > _F1 else ratio
                    ratio = _F0 if ratio != ratio else ratio
                    score = score if score > ratio else ratio  # np.fmax, ratio never NaN
                    floor = sw * swir_floor
                    floor = _F0 if floor != floor else floor  # no SWIR: no floor taken
                    hd = (m - floor) / _TC
                    hd = _F0 if hd < _F0 else hd
                    hd = _F1 if hd > _F1 else hd
                    r_hd[x] = hd * _W255  # NaN where invalid
                r_surf[x] = _NAN if bad else gate * score
            values = r_hd if swir_mode != 0 else r_dark
            rm, r_flags, r_obs, r_weight = cm[yy, xs], flags[y], obscured[y], weight[y]
            r8 = b8[yy, xs] if has_b8 else r2
            rc = scl[yy, xs] if has_scl else r2
            for x in range(nx):
                # Bitwise & and | on the tests, uint8 flags (never `and`, `or`, `if` in the body):
                # one branch-free body of narrow lanes, which the compiler vectorises.
                p3 = r3[x]
                p8 = r8[x]
                wet = has_b8 & ((p3 - p8) / ((p3 + p8) + RATIO_EPS) > _F0)  # NDWI water
                wet = wet | (has_scl & (rc[x] == scl_water))
                c = rm[x]
                bad = invalid[x] != 0
                ok = not (bad | wet)
                is_land = (c != nodata) & ok
                is_clear = (c == clear) & ok
                obs = (c == cloud) | (c == shadow) | (c == nodata) | bad
                r_flags[x] = (
                    (land_bit if is_land else zero)
                    | (clear_bit if is_clear else zero)
                    | (obscured_bit if obs else zero)
                    | (zero if bad else valid_bit)
                )
                r_obs[x] = obs
                land_row[x] = is_land
                clear_row[x] = is_clear
                w = _F1 - r_surf[x]
                r_weight[x] = w if is_clear else _F0
            for x in range(nx):
                k_land[x] += land_row[x]
                k_clear[x] += clear_row[x]
            for x in range(nx):
                is_land = land_row[x] != 0
                is_clear = clear_row[x] != 0
                u = values[x]
                if weighted:  # a constant of the compiled variant: no branch in the loop
                    w = _F1 - r_surf[x]
                    u = u * w
                    c_wl[x] += w if is_land else _F0
                    c_wc[x] += w if is_clear else _F0
                c_vl[x] += u if is_land else _F0
                c_vc[x] += u if is_clear else _F0
        sums[0] = k_land.sum()
        sums[1] = k_clear.sum()
        for k in range(4):
            total = 0.0
            for x in range(nx):
                total += cols[k, x]
            sums[2 + k] = total

    return haze_pixels_of_mode


def _haze_weight_py(flags: Any, surf: Any, bit: Any, out: Any) -> None:
    """Haze evidence per pixel of a (time, y, x) block: ``1 - surf`` where ``flags & bit[t]``,
    else 0."""
    nt, ny, nx = out.shape
    for t in range(nt):
        b = bit[t]
        for y in range(ny):
            for x in range(nx):
                out[t, y, x] = _F1 - surf[t, y, x] if flags[t, y, x] & b else _F0


def _lee_square_py(lin: Any, sq: Any) -> bool:
    """``sq = lin * lin`` per pixel of a plane (y, x); whether ``lin`` holds a NaN."""
    ny, nx = lin.shape
    nan = False
    for y in range(ny):
        r, o = lin[y], sq[y]
        for x in range(nx):
            v = r[x]
            o[x] = v * v
            nan |= v != v
    return nan


def _lee_weights_py(lin: Any, sq: Any, w: Any, src: Any) -> None:
    """For the NaN-aware box means of a plane (y, x) holding NaN: window weights ``w`` (1, 0
    where ``lin`` is NaN), ``src`` = ``lin`` and ``sq`` (its square) with 0 where NaN."""
    ny, nx = lin.shape
    for y in range(ny):
        r, rs, rw, ro = lin[y], sq[y], w[y], src[y]
        for x in range(nx):
            v = r[x]
            bad = v != v
            rw[x] = _F0 if bad else _F1
            ro[x] = _F0 if bad else v
            rs[x] = _F0 if bad else rs[x]


def _lee_means_py(mean: Any, var: Any, den: Any) -> None:
    """The box sums of the power (``mean``) and of its square (``var``) divided in place by
    the box mean of the weights ``den``; NaN where ``den`` <= 1e-12 (an empty window)."""
    ny, nx = mean.shape
    for y in range(ny):
        rm, rv, rd = mean[y], var[y], den[y]
        for x in range(nx):
            d = rd[x]
            empty = d <= _EMPTY
            rm[x] = _NAN if empty else rm[x] / d
            rv[x] = _NAN if empty else rv[x] / d


def _lee_recover_py(lin: Any, mean: Any, var: Any, cu2: Any) -> None:
    """The Lee filter's per-pixel recovery in place on ``lin`` (linear power, plane (y, x)),
    from the window mean and the window mean of squares ``var`` (overwritten by the local
    variance): ``var = max(var - mean^2, 0)``, the signal variance
    ``var_x = max((var - mean^2 cu2) / (1 + cu2), 0)``, ``k = var_x / var`` (0 where ``var``
    is not > 0), ``lin = max(mean + k (lin - mean), 1e-10)``; NaN stays NaN in every max, as
    numpy's ``np.clip``. ``cu2`` is 1 / ENL (float32)."""
    ny, nx = lin.shape
    den = _F1 + cu2
    for y in range(ny):
        r, rm, rv = lin[y], mean[y], var[y]
        for x in range(nx):
            m = rm[x]
            t = m * m
            v = rv[x] - t
            v = _F0 if v < _F0 else v
            rv[x] = v
            t = t * cu2
            t = v - t
            t = t / den
            t = _F0 if t < _F0 else t
            t = t / v
            k = t if v > _F0 else _F0
            u = r[x] - m
            u = u * k
            u = u + m
            r[x] = _LEE_FLOOR if u < _LEE_FLOOR else u


def _square_counts_py(
    v: Any,
    block_px: int,
    n_x: int,
    scale: Any,
    offset: Any,
    near_limit: Any,
    ncol: int,
    counts: Any,
    nonfinite: Any,
    near: Any,
) -> int:
    """Per-square bin columns of a float32 plane (y, x) cut into ``block_px`` squares (``n_x``
    squares a row, square ``(y // block_px) n_x + x // block_px``), the arithmetic of
    pipelines.stages.filters' float32 fast path operation for operation: the position
    ``v * scale - offset`` (float32; 0.5 where it is not finite, and the value counted in
    ``nonfinite`` of its square where the value itself is not finite), clipped to
    ``0 .. ncol - 1``, its column by truncation. A position whose distance to the middle of
    its column exceeds ``near_limit`` lies near an edge: its flat index goes to ``near`` (its
    column is to be taken exactly) and it is not counted; every other value adds 1 to
    ``counts[square * ncol + column]``. Returns how many indices went to ``near``."""
    ny, nx = v.shape
    top = np.float32(ncol - 1)
    half = np.float32(0.5)
    n_near = 0
    for y in range(ny):
        row = v[y]
        square = (y // block_px) * n_x
        # Square by square along the row (no integer division per pixel).
        for x0 in range(0, nx, block_px):
            at = square * ncol
            for x in range(x0, min(nx, x0 + block_px)):
                value = row[x]
                pos = value * scale
                pos = pos - offset
                if not np.isfinite(pos):
                    pos = half
                    if not np.isfinite(value):
                        nonfinite[square] += 1
                pos = _F0 if pos < _F0 else pos
                pos = top if pos > top else pos
                col = np.int32(pos)
                frac = pos - np.float32(col)
                frac = frac - half
                frac = -frac if frac < _F0 else frac
                if frac > near_limit:
                    near[n_near] = y * nx + x
                    n_near += 1
                else:
                    counts[at + col] += 1
            square += 1
    return n_near


def _flood_pixels_py(
    vv: Any,
    vh: Any,
    sure: Any,
    thr: Any,
    ref_vv: Any,
    ref_vh: Any,
    state: Any,
    by_vh: bool,
    double_bounce: bool,
    limits: Any,
    codes: Any,
    code: Any,
    flooded: Any,
) -> None:
    """flood_change's classes of one post date (pipelines.stages.flood) in one pass over the
    plane (y, x), comparison for comparison as its numpy formula.

    Filtered post VV and VH dB (``vh`` a 1 x 1 stand-in plane without VH), the sure-water mask
    (uint8, where VH alone decides: no VV check; a 1 x 1 stand-in without VH), the date's threshold
    ``thr`` on the deciding polarisation (VH when ``by_vh``), the filtered reference VV, VH
    and the reference state (uint8 bits 0 valid, 1 permanent water, 2 may flood).
    ``limits`` (float32): minus the change in dB, the upper end of the deciding
    polarisation's water range, that of VV, the double-bounce VV rise and ratio rise;
    ``codes`` (uint8): the classes nodata, dry, flooded, permanent water, flooded vegetation.
    Writes the class (uint8) and ``flooded`` (bool: flooded or flooded vegetation, the minimum
    mapping unit's mask)."""
    ny, nx = code.shape
    neg_change, primary_hi, vv_hi, bounce_db, ratio_db = (
        limits[0],
        limits[1],
        limits[2],
        limits[3],
        limits[4],
    )
    c_nodata, c_dry, c_flooded, c_permanent, c_vegetation = (
        codes[0],
        codes[1],
        codes[2],
        codes[3],
        codes[4],
    )
    one = np.uint8(1)
    for y in range(ny):
        r_vv, r_rvv, r_state, r_code, r_flooded = vv[y], ref_vv[y], state[y], code[y], flooded[y]
        r_vh = vh[y] if by_vh or double_bounce else vv[y]
        r_sure = sure[y] if by_vh else sure[0]
        r_rvh = ref_vh[y] if by_vh or double_bounce else ref_vv[y]
        r_p = r_vh if by_vh else r_vv
        r_rp = r_rvh if by_vh else r_rvv
        for x in range(nx):
            a = r_vv[x]
            p = r_p[x]
            s = r_state[x]
            ok = not (a != a or p != p) and (s & one) != 0
            change = p - r_rp[x]
            water = p < thr
            water = water or (change <= neg_change and p < primary_hi)
            if by_vh:
                water = water and (a < vv_hi or r_sure[x] != 0)
            keep = ((s >> np.uint8(2)) & one) != 0 and ok
            water = water and keep
            c = c_dry if ok else c_nodata
            if ok and ((s >> one) & one) != 0:
                c = c_permanent
            wet = water
            if double_bounce:
                diff_vv = a - r_rvv[x]
                diff_vh = change if by_vh else r_vh[x] - r_rvh[x]
                ratio = diff_vv - diff_vh
                vegetation = diff_vv >= bounce_db and ratio >= ratio_db and keep and not water
                if vegetation:
                    c = c_vegetation
                wet = water or vegetation
            if water:
                c = c_flooded
            r_code[x] = c
            r_flooded[x] = wet


def _steep_py(z: Any, limit: Any, margin: Any, steep: Any, near: Any) -> int:
    """flood_change's slope test of a float32 DEM plane (y, x), both sides at least 2 px
    (pipelines.stages.terrain.steep_np), operation for operation: twice the central difference
    along y and x (twice the one-sided difference at the plane's edge), the squared gradient
    ``dy^2 + dx^2`` (float32) against ``limit``; ``steep`` (bool) where it exceeds it. The
    flat indices of the pixels whose squared gradient lies within ``margin`` (float32, times
    the limit) of it, or whose difference is infinite, go to ``near`` (decided again in
    float64 by the caller); returns their number."""
    ny, nx = z.shape
    two = np.float32(2.0)
    n_near = 0
    for y in range(ny):
        r, up, dn = z[y], z[y - 1 if y > 0 else 0], z[y + 1 if y < ny - 1 else ny - 1]
        edge_y = y == 0 or y == ny - 1
        r_steep = steep[y]
        for x in range(nx):
            dy = dn[x] - up[x]
            dy = dy * two if edge_y else dy
            if x == 0:
                dx = (r[1] - r[0]) * two
            elif x == nx - 1:
                dx = (r[nx - 1] - r[nx - 2]) * two
            else:
                dx = r[x + 1] - r[x - 1]
            infinite = np.isinf(dy) or np.isinf(dx)
            sq = dy * dy
            sq = sq + dx * dx
            r_steep[x] = sq > limit
            off = sq - limit
            off = -off if off < _F0 else off
            if off <= margin or infinite:
                near[n_near] = y * nx + x
                n_near += 1
    return n_near


def _hand_along_paths_py(idxs_ds: Any, seq: Any, drain: Any, elevtn: Any, hand: Any) -> None:
    """Height above nearest drainage along D8 flow paths, operation for operation as pyflwdir's
    ``dem.height_above_nearest_drain`` (a Python loop there): ``seq`` the flat cell indices
    from down- to upstream (int), ``idxs_ds`` each cell's downstream cell (int), ``drain``
    (bool) and ``elevtn`` (float64) flat; ``hand`` (float64, filled with the caller's nodata)
    gets 0 on the drainage and the outlets and, upstream, the downstream cell's height plus the
    drop to it."""
    for k in range(seq.size):
        hand[seq[k]] = 0.0
    for k in range(seq.size):
        idx0 = seq[k]
        if not drain[idx0]:
            idx_ds = idxs_ds[idx0]
            hand[idx0] = hand[idx_ds] + (elevtn[idx0] - elevtn[idx_ds])


_LOCK = threading.Lock()
_COMPILED: dict[str, Callable[..., Any]] = {}


def _kernel(name: str, py: Callable[..., Any]) -> Callable[..., Any]:
    """``py`` compiled by numba (once per process; machine code cached on disk)."""
    fn = _COMPILED.get(name)
    if fn is None:
        with _LOCK:
            fn = _COMPILED.get(name)
            if fn is None:
                import numba

                try:
                    fn = numba.njit(cache=True, nogil=True, error_model="numpy")(py)
                except RuntimeError:  # no writable cache directory: compile in memory
                    fn = numba.njit(cache=False, nogil=True, error_model="numpy")(py)
                _COMPILED[name] = fn
    return fn


def haze_dark8(b2: np.ndarray, b3: np.ndarray, b4: np.ndarray, out: np.ndarray) -> np.ndarray:
    """8-bit dark channel of one plane (y, x) into ``out``, +inf where a band is NaN; float32
    C-contiguous planes of one shape."""
    _kernel("haze_dark8", _haze_dark8_py)(b2, b3, b4, out)
    return out


def haze_pixels(*args: Any) -> None:
    """The per-pixel work of haze_index on one plane: the arguments of the kernel of
    :func:`_haze_pixels_for`, with ``swir_mode`` (0, 1 or 2) after ``left``; one compiled
    kernel per mode."""
    mode = int(args[10])
    _kernel(f"haze_pixels_{mode}", _haze_pixels_for(mode))(*args[:10], *args[11:])


def haze_weight(flags: np.ndarray, surf: np.ndarray, bit: np.ndarray, out: np.ndarray) -> None:
    """Haze evidence of a (time, y, x) block into ``out`` (float32): ``1 - surf`` where
    ``flags & bit[t]`` (uint8 flags, float32 score, bit per time), else 0."""
    _kernel("haze_weight", _haze_weight_py)(flags, surf, bit, out)


def lee_square(lin: np.ndarray, sq: np.ndarray) -> bool:
    """``sq = lin * lin`` (float32 C-contiguous planes (y, x) of one shape); whether ``lin``
    holds a NaN."""
    return bool(_kernel("lee_square", _lee_square_py)(lin, sq))


def lee_weights(lin: np.ndarray, sq: np.ndarray, w: np.ndarray, src: np.ndarray) -> None:
    """Window weights ``w`` (1, 0 where ``lin`` is NaN) and ``src`` = ``lin`` with 0 where
    NaN; ``sq`` set to 0 where ``lin`` is NaN. Float32 C-contiguous planes (y, x)."""
    _kernel("lee_weights", _lee_weights_py)(lin, sq, w, src)


def lee_means(mean: np.ndarray, var: np.ndarray, den: np.ndarray) -> None:
    """``mean`` and ``var`` (box sums, or box means of the NaN-zeroed planes) divided in place
    by ``den`` (the box mean of the weights), NaN where ``den`` <= 1e-12. Float32
    C-contiguous planes (y, x)."""
    _kernel("lee_means", _lee_means_py)(mean, var, den)


def lee_recover(lin: np.ndarray, mean: np.ndarray, var: np.ndarray, cu2: np.float32) -> None:
    """The Lee filter's recovery in place on ``lin`` (linear power) from the window mean and
    the window mean of squares ``var`` (overwritten by the local variance); float32
    C-contiguous planes (y, x) of one shape, ``cu2`` = 1 / ENL (float32)."""
    _kernel("lee_recover", _lee_recover_py)(lin, mean, var, np.float32(cu2))


def square_counts(
    v: np.ndarray,
    block_px: int,
    n_x: int,
    scale: np.float32,
    offset: np.float32,
    near_limit: np.float32,
    ncol: int,
    counts: np.ndarray,
    nonfinite: np.ndarray,
    near: np.ndarray,
) -> int:
    """Bin columns of each ``block_px`` square of a float32 C-contiguous plane (y, x) added to
    ``counts`` (flat int64, square * ``ncol`` + column) and its non-finite values to
    ``nonfinite`` (int64 per square); the flat indices of values near an edge (not counted)
    into ``near`` (int64, the plane's size); returns their number
    (:func:`_square_counts_py`)."""
    fn = _kernel("square_counts", _square_counts_py)
    return int(fn(v, block_px, n_x, scale, offset, near_limit, ncol, counts, nonfinite, near))


def flood_pixels(
    vv: np.ndarray,
    vh: np.ndarray,
    sure: np.ndarray,
    thr: np.float32,
    ref_vv: np.ndarray,
    ref_vh: np.ndarray,
    state: np.ndarray,
    by_vh: bool,
    double_bounce: bool,
    limits: np.ndarray,
    codes: np.ndarray,
    code: np.ndarray,
    flooded: np.ndarray,
) -> None:
    """flood_change's classes of one post date into ``code`` (uint8) and its flooded mask into
    ``flooded`` (bool): float32 C-contiguous planes (y, x), :func:`_flood_pixels_py`."""
    fn = _kernel("flood_pixels", _flood_pixels_py)
    fn(vv, vh, sure, thr, ref_vv, ref_vh, state, by_vh, double_bounce, limits, codes, code, flooded)


def steep(z: np.ndarray, limit: np.float32, margin: np.float32, out: np.ndarray) -> np.ndarray:
    """The squared-gradient slope test of a float32 C-contiguous DEM plane (y, x), both sides
    at least 2 px, into ``out`` (bool); returns the flat indices (int64) of the pixels to
    decide again in float64 (:func:`_steep_py`)."""
    near = np.empty(z.size, dtype=np.int64)
    n = _kernel("steep", _steep_py)(z, limit, margin, out, near)
    return near[:n]


def hand_along_paths(
    idxs_ds: np.ndarray, seq: np.ndarray, drain: np.ndarray, elevtn: np.ndarray
) -> np.ndarray:
    """Height above nearest drainage (float64, flat, -9999 off the paths) of a flow direction
    raster's downstream indices ``idxs_ds`` and down-to-upstream order ``seq`` (int64), its
    ``drain`` mask (bool) and ``elevtn`` (float64), all flat (:func:`_hand_along_paths_py`)."""
    hand = np.full(drain.size, -9999.0, dtype=np.float64)
    _kernel("hand_along_paths", _hand_along_paths_py)(
        np.ascontiguousarray(idxs_ds, dtype=np.int64),
        np.ascontiguousarray(seq, dtype=np.int64),
        np.ascontiguousarray(drain, dtype=np.bool_),
        np.ascontiguousarray(elevtn, dtype=np.float64),
        hand,
    )
    return hand


def warm() -> float:
    """Import numba and load every kernel now (compiled, or its machine code from the cache)
    by calling it on 1 x 1 planes of the types the stages pass; the seconds it took. A fresh
    process pays this once, on its first call of a kernel otherwise: a worker's preload can
    call it so that the first chunk does not wait for it."""
    import time

    t0 = time.perf_counter()
    one = np.zeros((1, 1), dtype=np.float32)
    u8 = np.zeros((1, 1), dtype=np.uint8)
    haze_dark8(one, one, one, one.copy())
    for swir_mode in (0, 1, 2):  # without SWIR, B12, B11
        haze_pixels(
            *(one, one, one, u8, one, one, one, one, 0, 0, swir_mode, _F0, True, True, _F0),
            *(np.zeros(4, dtype=np.uint8), np.zeros(4, dtype=np.uint8)),
            *(one.copy(), one.copy(), one.copy(), one.copy(), u8.copy()),
            *(np.zeros((1, 1), dtype=np.bool_), np.zeros(SUMS, dtype=np.float64)),
        )
    haze_weight(
        np.zeros((1, 1, 1), np.uint8),
        np.zeros((1, 1, 1), np.float32),
        np.zeros(1, np.uint8),
        np.zeros((1, 1, 1), np.float32),
    )
    lee_square(one, one.copy())
    lee_weights(one, one.copy(), one.copy(), one.copy())
    lee_means(one.copy(), one.copy(), one)
    lee_recover(one.copy(), one.copy(), one.copy(), _F1)
    i64 = np.zeros(4, dtype=np.int64)
    square_counts(one, 1, 1, _F1, _F0, _F0, 2, i64, i64.copy(), i64.copy())
    steep(np.zeros((2, 2), dtype=np.float32), _F1, _F0, np.zeros((2, 2), dtype=np.bool_))
    hand_along_paths(
        np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.bool_), np.zeros(1)
    )
    flood_pixels(
        *(one, one, u8, _F0, one, one, u8, True, True, np.zeros(5, dtype=np.float32)),
        *(np.zeros(5, dtype=np.uint8), u8.copy(), np.zeros((1, 1), dtype=np.bool_)),
    )
    return time.perf_counter() - t0
