"""flood_change: flood classes of each post-event S1 date against a pre-event reference.

Every constant is physical or published; ``docs/water.md`` lists them with their sources.
Method (backscatter in dB, Lee speckle filter as in :mod:`pipelines.stages.water`):

* **Reference**: per-pixel median of the pre-event dates (VV, VH), then a ``speckle_size``
  spatial median instead of the Lee filter: the temporal median has already removed much of
  the speckle, and the spatial median keeps step edges where the Lee filter smears a narrow
  river or lake into bright neighbours (a lost water edge would read as flooded). Which dates
  a post date is compared with: all of ``s1_pre``, or, where ``s1_post`` carries reference
  windows (a run's loader gives them: :func:`pipelines.inputs.reference_window`), the scenes
  of both acquired in its window: each month of a long window against the month before it
  (:func:`reference_groups`), also on a tile without a scene before the window (``s1_pre``
  None), whose first month has no reference and no decision. Where the scenes carry their
  track (``relative_orbit``: the viewing geometry), a date's change is measured against the
  reference scenes of its own track, all of them where its track has none; what is water in
  the reference is read from all of them (calm water is dark from any track).
* **Water** in the reference and in each post date: :func:`pipelines.stages.water.water_from_db`
  (VH primary, split-based Kittler-Illingworth threshold, VV check under the noise floor).
* **Change**: log ratio ``post - reference`` of the primary polarisation (VH, else VV). A
  decrease of ``>= change_db`` (3 dB: half the power) that ends inside the published open-water
  range (``WATER_DB``, same VV check) is flooding that the scene threshold alone misses
  (wind-roughened or partly flooded water, Matgen et al. 2011; Giustarini et al. 2013).
* **Flooded** (class 2) = (water in post OR that decrease) AND not permanent water AND terrain
  allows flooding.
* **Flooded vegetation** (class 4, ``double_bounce=True``, needs VH): water under a canopy or
  between walls adds a double-bounce path that brightens the co-polarised channel, so VV rises
  by ``>= double_bounce_db`` (3 dB; Pulvirenti et al. 2011, Tsyganskaya et al. 2018) AND rises
  by ``>= ratio_db`` (3 dB) more than VH (the VV/VH ratio): crop growth raises VV but raises VH
  as much or more (volume scattering), so growing fields keep their ratio and stay dry. Without
  VH the double-bounce evidence is not used.
* **Permanent water** (class 3) = water in the reference that is still water (within
  ``edge_px``, 2 px, the reach of the 5 x 5 filter) on the latest pre-event date, or the
  optional ``permanent_water`` input. Seasonal water of the reference period that has gone by
  the event (irrigated paddies before the canopy closes) is land, and floods like land.
* **Terrain** (from ``dem``): height above drainage > ``max_hand_m`` (15 m; Twele et al. 2016,
  the ASF HydroSAR default) or slope > ``max_slope_deg`` (5 degrees: a floodwater surface is
  level, and over one 30 m DEM cell a 5 degree slope rises 2.6 m, more than a typical
  inundation depth) cannot flood. Height above drainage is the ``hand`` input where given
  (height above nearest drainage, the quantity the 15 m limit is published for: a run gives
  the catalog's product, such as ASF's Global HAND from GLO-30, or derives it from the tile's
  DEM and a 1 km margin, :func:`pipelines.load.load_height_above_drainage`), else derived by
  the same recipe from ``dem`` alone (:func:`height_above_drainage_of`). Where the DEM or the
  height is NaN, it is not used to exclude. The post-event
  thresholds are learned on the terrain that may flood only (the rest is no sample of their
  histograms): radar shadow on a slope poses as calm water in its sub-tiles, and its split
  would decide the flood on the plain.
* **Minimum mapping unit**: flooded 8-connected components (classes 2 and 4 together) smaller
  than ``mmu_ha`` (0.5 ha, about 11 IW GRDH resolution cells) become dry.

Classes (:class:`~pipelines.classes.FloodClass`): 0 nodata (post or reference backscatter
missing), 1 dry, 2 flooded, 3 permanent water, 4 flooded vegetation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.classes import FloodClass
from pipelines.errors import BadInputError
from pipelines.inputs import REFERENCE_COORDS, TRACK_COORD, same_track
from pipelines.stages import filters as F
from pipelines.stages import kernels as K
from pipelines.stages import terrain as T
from pipelines.stages import water as W
from pipelines.stages.water import (
    ENL_IW_GRDH,
    MMU_HA,
    WATER_DB,
    min_pixels,
    threshold_of,
    validate_s1,
)

__all__ = ["flood_change", "height_above_drainage_of", "terrain_ok_np"]


class _FloodParams(NamedTuple):
    pol: str
    change_db: float
    double_bounce: bool
    double_bounce_db: float
    ratio_db: float


# Bit positions of the reference state (y, x) shared by every post date (the compiled
# kernels.flood_pixels reads them as bits 0, 1, 2).
_REF_VALID, _REF_PERMANENT, _REF_KEEP = 0, 1, 2
#: The classes kernels.flood_pixels writes: nodata, dry, flooded, permanent water, flooded
#: vegetation.
_CLASSES = np.array(
    [
        FloodClass.NODATA,
        FloodClass.DRY,
        FloodClass.FLOODED,
        FloodClass.PERMANENT_WATER,
        FloodClass.FLOODED_VEGETATION,
    ],
    dtype=np.uint8,
)
#: Stands for an absent VH plane in the compiled kernel (never read).
_ABSENT = np.zeros((1, 1), dtype=np.float32)
#: The sure-water stand-in without VH (the kernel reads it only when VH decides).
_NO_SURE = np.zeros((1, 1), dtype=np.uint8)


def _c32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _reference_np(pre: np.ndarray, size: int) -> np.ndarray:
    """Pre-event reference of a (time, band, y, x) dB block: per-pixel median of the dates,
    then a ``size`` px spatial median reading NaN as 40 dB (far above any water threshold;
    NaN stays NaN). float32 (1, band, y, x)."""
    # One date is its own median (the spatial median copies it).
    med = pre if pre.shape[0] == 1 else F.nanmedian_np(pre)
    return F.median_filter_np(med.astype("float32", copy=False), size, 40.0)


def _still_water_np(*blocks: np.ndarray, pol: str, edge_px: int) -> np.ndarray:
    """Water of the latest pre-event date grown by ``edge_px``, or no data there: filtered
    (1, y, x) VV (and VH and its sure-water mask) dB and the date's threshold (1, 1, 1) ->
    bool (1, y, x)."""
    vv, vh, sure, thr = blocks if len(blocks) == 4 else (blocks[0], None, None, blocks[1])
    code = W.water_code(vv, vh, sure, thr, pol)
    still = F.dilate_np(code == W.WATER_WATER, edge_px)
    still |= code == W.WATER_NODATA
    return still


def _reference_state_np(
    ref_vv: np.ndarray,
    ref_vh: np.ndarray | None,
    ref_sure: np.ndarray | None,
    ref_thr: np.ndarray,
    still_water: np.ndarray,
    terrain_ok: np.ndarray,
    given: np.ndarray | None,
    pol: str,
) -> np.ndarray:
    """What every post date shares, per pixel (uint8 bits, y, x): reference valid, permanent
    water (reference water still there before the event, or ``given``: None for none), and
    not permanent water on terrain that may flood. Filtered reference dB (y, x), its
    sure-water mask (None without VH) and threshold (1,)."""
    ref_primary = ref_vh if pol == "VH" else ref_vv
    assert ref_primary is not None
    valid_ref = ~(np.isnan(ref_vv) | np.isnan(ref_primary))
    permanent = W.dark_np(ref_primary, ref_vv, pol, ref_thr[0], ref_sure)
    permanent &= valid_ref
    permanent &= still_water
    if given is not None:
        permanent |= given
    keep = terrain_ok & ~permanent
    state = valid_ref.view(np.uint8) << np.uint8(_REF_VALID)
    state |= permanent.view(np.uint8) << np.uint8(_REF_PERMANENT)
    state |= keep.view(np.uint8) << np.uint8(_REF_KEEP)
    return state


def _flood_code_np(
    vv: np.ndarray,
    vh: np.ndarray | None,
    sure: np.ndarray | None,
    thr: np.ndarray,
    ref_vv: np.ndarray,
    ref_vh: np.ndarray | None,
    state: np.ndarray,
    params: _FloodParams,
    min_px: int,
) -> np.ndarray:
    """FloodClass of a block: filtered post (time, y, x) dB and its sure-water mask (None
    without VH), per-date thresholds (time,), the filtered reference (y, x) dB and the
    reference state (y, x, :func:`_reference_state_np`). With
    ``min_px`` > 1 (the block holds whole planes) the minimum mapping unit too.

    Per date one compiled pass (:func:`pipelines.stages.kernels.flood_pixels`): valid where
    VV and the deciding polarisation are present and so is the reference; open water below
    the date's threshold, or a decrease of ``change_db`` that ends inside the water range
    (when VH decides and the pixel is not sure water, VV inside its water range too, as
    :func:`pipelines.stages.water.dark_np`);
    water only where the state lets the pixel flood; permanent water from the state; flooded
    vegetation where VV rises by ``double_bounce_db`` and by ``ratio_db`` more than VH."""
    pol = params.pol
    bounce = params.double_bounce and vh is not None and ref_vh is not None
    shape = np.shape(vv)
    code = np.empty(shape, dtype=np.uint8)
    flooded = F.work_buffer("flood_flooded", shape, bool)
    # float32 as numpy compares the float32 planes with these Python numbers.
    limits = np.array(
        [
            -params.change_db,
            WATER_DB[pol][1],
            WATER_DB["VV"][1],
            params.double_bounce_db,
            params.ratio_db,
        ],
        dtype=np.float32,
    )
    vv32, vh32 = _c32(vv), _c32(vh) if vh is not None else _ABSENT
    sure8 = np.ascontiguousarray(sure, dtype=np.uint8) if sure is not None else _NO_SURE
    rvv, rvh = _c32(ref_vv), _c32(ref_vh) if ref_vh is not None else _ABSENT
    ref_state = np.ascontiguousarray(state, dtype=np.uint8)
    thr32 = np.asarray(thr, dtype=np.float32).reshape(-1)
    for t in range(shape[0]):
        vh_t, sure_t = (vh32[t], sure8[t]) if vh is not None else (vh32, sure8)
        K.flood_pixels(
            *(vv32[t], vh_t, sure_t, thr32[t], rvv, rvh, ref_state),
            *(pol == "VH", bounce, limits, _CLASSES, code[t], flooded[t]),
        )
    if min_px > 1:
        # The minimum mapping unit counts flooded land of either kind together.
        np.copyto(code, np.uint8(FloodClass.DRY), where=F.small_components_np(flooded, min_px))
    return code


def _whole_planes(*arrays: da.Array | None) -> bool:
    """True when every array holds its (y, x) plane in one chunk (its last two axes)."""
    return all(a is None or all(len(c) == 1 for c in a.chunks[-2:]) for a in arrays)


def terrain_ok_np(
    dem: np.ndarray,
    hand: np.ndarray,
    *,
    pixel_m: float,
    max_slope_deg: float,
    max_hand_m: float,
) -> np.ndarray:
    """Terrain that may flood, for a (1, y, x) float32 DEM block and the (1, y, x) height above
    nearest drainage ``hand`` (m) of the same pixels: slope at most ``max_slope_deg`` and
    height at most ``max_hand_m`` (NaN in ``hand`` excludes nothing); bool (1, y, x)."""
    z = np.asarray(dem, dtype=np.float32)
    out = np.asarray(hand, dtype=np.float32) > max_hand_m
    out[0] |= T.steep_np(z[0], pixel_m, max_slope_deg)
    np.logical_not(out, out=out)
    return out


def height_above_drainage_of(dem: da.Array, pixel_m: float) -> da.Array:
    """The height above nearest drainage (m) of a (1, y, x) float32 DEM, lazily, on its own
    chunks, derived from the whole plane in one task
    (:func:`pipelines.stages.terrain.height_above_drainage_of_plane`): for ``flood_change``
    called without a ``hand`` input."""
    plane = dem.rechunk({0: 1, 1: -1, 2: -1})
    hand = plane.map_blocks(
        _height_above_drainage_block,
        dtype="float32",
        meta=np.empty((0, 0, 0), "float32"),
        pixel_m=pixel_m,
    )
    return hand.rechunk(dem.chunks)


def _height_above_drainage_block(dem: np.ndarray, pixel_m: float) -> np.ndarray:
    """:func:`pipelines.stages.terrain.height_above_drainage_of_plane` of a (1, y, x) block."""
    return T.height_above_drainage_of_plane(dem[0], pixel_m)[None]


@dataclass(frozen=True)
class ReferenceGroup:
    """Post-event dates that share a reference."""

    positions: np.ndarray
    """Their positions in ``s1_post``, ascending."""
    scenes: da.Array | None
    """The reference scenes they are compared with, (time, band, y, x) dB; None: no scene."""
    times: np.ndarray
    """The acquisition times of ``scenes``."""
    window: tuple[da.Array, np.ndarray] | None = None
    """Every scene of their reference window and its times, where ``scenes`` are those of
    their own track only (None: ``scenes`` are the whole window)."""


def reference_groups(pre: xr.DataArray | None, post: xr.DataArray) -> list[ReferenceGroup]:
    """``post``'s dates by the pre-event reference each is compared with, in the order of
    their first date. Without the (time,) coordinates ``reference_from`` and
    ``reference_until`` on ``post`` (a run's loader adds them:
    :func:`pipelines.inputs.reference_window`), a date's candidates are all of ``pre``. With
    them, they are the scenes of ``pre`` (None: no scene before the run's window) and of
    ``post`` itself acquired in its window (``from <= time < until``): a window of several
    months compares each month with the scenes before it. Where the scenes carry their tracks
    (``relative_orbit``, :func:`pipelines.load.load_s1`), a date is compared with the
    candidates of its own track when there are any (:func:`pipelines.inputs.same_track`)."""
    windows = all(c in post.coords for c in REFERENCE_COORDS)
    if not windows and pre is None:
        raise BadInputError(
            "s1_pre",
            None,
            f"pre-event scenes, or s1_post with reference windows ({', '.join(REFERENCE_COORDS)}"
            " coordinates)",
        )
    same_bands = pre is None or [str(b) for b in pre.coords["band"].values] == [
        str(b) for b in post.coords["band"].values
    ]
    pool = ([] if pre is None else [pre]) + ([post] if windows and same_bands else [])
    times = np.concatenate([p.coords["time"].values.astype("datetime64[ns]") for p in pool])
    tracked = all(TRACK_COORD in p.coords for p in (*pool, post))
    tracks = np.concatenate([p.coords[TRACK_COORD].values for p in pool]) if tracked else None
    n = post.sizes["time"]
    if windows:
        lo, hi = (post.coords[c].values.astype("datetime64[ns]") for c in REFERENCE_COORDS)
    # Dates by the scenes they are compared with: (own track's, whole window's) positions.
    by_scenes: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for k in range(n):
        inside = (
            np.flatnonzero((times >= lo[k]) & (times < hi[k])) if windows else np.arange(times.size)
        )
        own = inside
        if tracks is not None and inside.size:
            track = int(post.coords[TRACK_COORD].values[k])
            own = inside[same_track(track, tracks[inside].tolist())]
        by_scenes.setdefault((tuple(own.tolist()), tuple(inside.tolist())), []).append(k)

    def scenes_at(positions: tuple[int, ...]) -> da.Array:
        if pre is not None and positions == tuple(range(pre.sizes["time"])):
            return pre.data  # all of ``pre``, as given
        return da.concatenate([p.data for p in pool], axis=0)[list(positions)]

    groups: list[ReferenceGroup] = []
    for (own_positions, window_positions), dates in by_scenes.items():
        positions = np.array(dates)
        if not own_positions:
            groups.append(ReferenceGroup(positions, None, times[:0]))
            continue
        window = None
        if own_positions != window_positions:
            window = (scenes_at(window_positions), times[list(window_positions)])
        own_scenes = scenes_at(own_positions)
        groups.append(ReferenceGroup(positions, own_scenes, times[list(own_positions)], window))
    return groups


def _time_index(positions: np.ndarray, n: int) -> slice | np.ndarray:
    """``positions`` (ascending) of ``n`` dates as an index: a slice where they are a run."""
    if positions.size and positions[-1] - positions[0] == positions.size - 1:
        return slice(None) if positions.size == n else slice(positions[0], positions[-1] + 1)
    return positions


def flood_change(
    s1_pre: xr.DataArray | None,
    s1_post: xr.DataArray,
    dem: xr.DataArray,
    permanent_water: xr.DataArray | None = None,
    hand: xr.DataArray | None = None,
    *,
    change_db: float = 3.0,
    max_slope_deg: float = W.MAX_SLOPE_DEG,
    max_hand_m: float = 15.0,
    mmu_ha: float = MMU_HA,
    double_bounce: bool = True,
    double_bounce_db: float = 3.0,
    ratio_db: float = 3.0,
    speckle_size: int = 5,
    enl: float = ENL_IW_GRDH,
    edge_px: int = 2,
    block_px: int = 64,
) -> xr.DataArray:
    """Flood classes of each ``s1_post`` date, lazily.

    ``s1_pre``, ``s1_post``: (time, band, y, x) float32 dB with VV (and VH); ``s1_pre`` may
    be None where ``s1_post`` carries reference windows (:func:`reference_groups`); ``dem``:
    (y, x) float32 metres; ``permanent_water``: optional (y, x) bool/uint8 (non-zero = water);
    ``hand``: optional (y, x) float32 height above nearest drainage (m); without it, it is
    derived from ``dem`` (:func:`height_above_drainage_of`). All on the same grid. Returns
    (time, y, x) uint8 FloodClass with the post dates as ``time``.
    """
    pre = None if s1_pre is None else validate_s1(s1_pre, "s1_pre")
    post = validate_s1(s1_post, "s1_post")
    dem = F.require_dims(dem, "dem", ("y", "x"))
    # The grid every input shares: s1_pre's, or s1_post's where the references come from it.
    anchor, anchor_name = (post, "s1_post") if pre is None else (pre, "s1_pre")
    for name, arr in (("s1_post", post), ("dem", dem)):
        for dim in ("y", "x"):
            if arr.sizes[dim] != anchor.sizes[dim]:
                raise BadInputError(
                    f"{name}.{dim}", arr.sizes[dim], f"{anchor.sizes[dim]} (as in {anchor_name})"
                )

    def plane_of(arr: xr.DataArray | None, name: str) -> xr.DataArray | None:
        """An optional (y, x) input in (y, x) order, on the anchor's grid."""
        if arr is None:
            return None
        arr = F.require_dims(arr, name, ("y", "x"))
        if arr.shape != tuple(anchor.sizes[d] for d in ("y", "x")):
            raise BadInputError(name, arr.shape, f"the (y, x) shape of {anchor_name}")
        return arr

    permanent_water = plane_of(permanent_water, "permanent_water")
    hand = plane_of(hand, "hand")
    if mmu_ha < 0 or max_slope_deg <= 0 or max_hand_m <= 0:
        raise BadInputError(
            "mmu_ha/max_slope_deg/max_hand_m",
            (mmu_ha, max_slope_deg, max_hand_m),
            "mmu_ha >= 0 and positive slope and height limits",
        )
    pixel_m = F.pixel_size_m(post)
    post_bands = [str(b) for b in post.coords["band"].values]
    # The bands of the reference scenes: s1_pre's (s1_post's join them only when the same).
    pre_bands = post_bands if pre is None else [str(b) for b in pre.coords["band"].values]
    both_vh = "VH" in pre_bands and "VH" in post_bands
    pol = "VH" if both_vh else "VV"

    def lee(data: da.Array) -> da.Array:
        return F.lee_filter(data.astype("float32"), size=speckle_size, enl=enl)

    def bands(data: da.Array, names: list[str]) -> tuple[da.Array, da.Array | None]:
        """VV and VH (None without VH) of (..., band, y, x) dask data as (..., y, x)."""
        return (
            data[..., names.index("VV"), :, :],
            data[..., names.index("VH"), :, :] if both_vh else None,
        )

    def sure_of(vh: da.Array) -> da.Array:
        """Where the filtered VH alone decides (:func:`pipelines.stages.water.sure_water`)."""
        return W.sure_water(vh, W.SURE_WATER_REACH_PX)

    def primary(vv: da.Array, vh: da.Array | None) -> da.Array:
        """The deciding polarisation: VH when present, else VV."""
        return vh if vh is not None else vv

    # Terrain that may flood, in one block call: slope and height above drainage decided
    # against their limits without their float planes. It, each reference and its state are
    # the same for every post date they serve: tile constants, computed once for a tile's
    # rounds of dates.
    dem_data = F.as_dask(dem).data.astype("float32")[None]
    hand_data = (
        height_above_drainage_of(dem_data, pixel_m)
        if hand is None
        else F.as_dask(hand).data.astype("float32")[None]
    )
    terrain_ok = F.tile_constant(
        F.overlap(
            terrain_ok_np,
            dem_data,
            hand_data,
            depth=1,  # the slope reads one pixel around
            dtype=bool,
            pixel_m=pixel_m,
            max_slope_deg=max_slope_deg,
            max_hand_m=max_hand_m,
        )[0]
    )
    given = F.as_dask(permanent_water).fillna(0).data != 0 if permanent_water is not None else None

    def planes_of(scenes: da.Array, constant: bool) -> tuple[da.Array, da.Array | None]:
        """Filtered reference VV and VH (None without VH) of the (time, band, y, x) dB
        ``scenes``: the per-pixel median of the dates, then a spatial median (one block call
        per chunk); tile constants where post dates read them (the state reads them too: a
        key of both the state's and the rounds' graphs must be a constant's own)."""
        ref = F.overlap(
            _reference_np,
            scenes.rechunk({0: -1}),
            depth=speckle_size // 2,
            dtype="float32",
            size=speckle_size,
        )
        ref_vv, ref_vh = bands(ref[0], pre_bands)
        if not constant:
            return ref_vv, ref_vh
        return F.tile_constant(ref_vv), None if ref_vh is None else F.tile_constant(ref_vh)

    def state_of(
        ref_vv: da.Array, ref_vh: da.Array | None, scenes: da.Array, times: np.ndarray
    ) -> da.Array:
        """The reference state (:func:`_reference_state_np`) of the (time, band, y, x) dB
        ``scenes`` acquired at ``times``, whose filtered planes are ``ref_vv``, ``ref_vh``."""
        ref_thr = threshold_of(
            primary(ref_vv, ref_vh)[None],
            pol,
            block_px,
            vv=ref_vv[None] if ref_vh is not None else None,
        )
        # Water right before the event: the latest reference date (its own Lee filter), grown
        # by ``edge_px`` to forgive the filter's smearing of water edges; unknown where it has
        # no data.
        last = int(np.lexsort((times,))[-1])
        last_vv, last_vh = bands(scenes[last : last + 1], pre_bands)
        last_vv, last_vh = lee(last_vv), None if last_vh is None else lee(last_vh)
        still_water = F.overlap(
            _still_water_np,
            *([last_vv] if last_vh is None else [last_vv, last_vh, sure_of(last_vh)]),
            depth=edge_px,
            dtype=bool,
            per_time=(
                threshold_of(
                    primary(last_vv, last_vh),
                    pol,
                    block_px,
                    vv=last_vv if last_vh is not None else None,
                ),
            ),
            pol=pol,
            edge_px=edge_px,
        )[0]
        ref_sure = sure_of(ref_vh[None])[0] if ref_vh is not None else None
        state = da.blockwise(
            _reference_state_np,
            "yx",
            *W.blockwise_args(ref_vv, ref_vh, ref_sure, index="yx"),
            ref_thr,
            "r",
            still_water,
            "yx",
            terrain_ok,
            "yx",
            *W.blockwise_args(given, index="yx"),
            pol=pol,
            dtype="uint8",
            meta=np.empty((0, 0), dtype=np.uint8),
            align_arrays=True,
            concatenate=True,
        )
        return F.tile_constant(state)

    post_vv, post_vh = bands(post.data, post_bands)
    post_vv, post_vh = lee(post_vv), None if post_vh is None else lee(post_vh)
    params = _FloodParams(
        pol=pol,
        change_db=change_db,
        double_bounce=double_bounce and both_vh,
        double_bounce_db=double_bounce_db,
        ratio_db=ratio_db,
    )
    min_px = min_pixels(mmu_ha, pixel_m)
    post_sure = sure_of(post_vh) if post_vh is not None else None
    post_thr = threshold_of(
        da.where(
            terrain_ok.rechunk(post_vv.chunks[1:])[None],
            primary(post_vv, post_vh),
            np.float32(np.nan),
        ),
        pol,
        block_px,
        vv=post_vv if post_vh is not None else None,
    )
    codes = []
    # Whole planes in every block: the minimum mapping unit in the same call.
    post_whole = _whole_planes(post_vv, post_vh, post_sure)
    fused = True
    groups = reference_groups(pre, post)
    for group in groups:
        positions, scenes, times = group.positions, group.scenes, group.times
        dates = _time_index(positions, post.sizes["time"])

        def part(a: da.Array | None, dates: slice | np.ndarray = dates) -> da.Array | None:
            whole = isinstance(dates, slice) and dates == slice(None)
            return a if a is None or whole else a[dates]

        if scenes is None:  # no reference scene: no decision (the plan writes no such date)
            shape, chunks = post_vv.shape[1:], post_vv.chunks[1:]
            codes.append(da.zeros((positions.size, *shape), dtype="uint8", chunks=(1, *chunks)))
            continue
        # The change is measured against the date's own track; what is water in the
        # reference, against every scene of its window (calm water is dark from any track,
        # and more looks steady the median).
        ref_vv, ref_vh = planes_of(scenes, constant=True)
        if group.window is None:
            state = state_of(ref_vv, ref_vh, scenes, times)
        else:
            window, window_times = group.window
            state = state_of(*planes_of(window, constant=False), window, window_times)
        whole = post_whole and _whole_planes(ref_vv, ref_vh, state)
        fused = fused and whole
        codes.append(
            da.blockwise(
                _flood_code_np,
                "tyx",
                *W.blockwise_args(part(post_vv), part(post_vh), part(post_sure)),
                part(post_thr),
                "t",
                *W.blockwise_args(ref_vv, ref_vh, index="yx"),
                state,
                "yx",
                params=params,
                min_px=min_px if whole else 0,
                dtype="uint8",
                meta=np.empty((0, 0, 0), dtype=np.uint8),
                align_arrays=True,
                concatenate=True,
            )
        )
    code = codes[0] if len(codes) == 1 else da.concatenate(codes, axis=0)
    order = np.concatenate([group.positions for group in groups])
    if np.any(np.diff(order) < 0):  # dates of interleaved tracks: back into date order
        code = code[np.argsort(order, kind="stable")]
    if min_px > 1 and not fused:
        # The minimum mapping unit counts flooded land of either kind together.
        code = F.overlap(
            W.drop_small_classes,
            code,
            depth=min_px,
            dtype="uint8",
            min_px=min_px,
            classes=(FloodClass.FLOODED, FloodClass.FLOODED_VEGETATION),
            into=FloodClass.DRY,
        )
    out = xr.DataArray(
        code,
        dims=("time", "y", "x"),
        coords={
            k: v
            for k, v in post.coords.items()
            if set(v.dims) <= {"time", "y", "x"} and k not in REFERENCE_COORDS
        },
    )
    out.name = "flood_change"
    out.attrs["classes"] = "0 nodata, 1 dry, 2 flooded, 3 permanent water, 4 flooded vegetation"
    out.attrs.update({k: v for k, v in post.attrs.items() if k in ("crs", "epsg")})
    return out
