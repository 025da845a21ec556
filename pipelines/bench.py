"""``terrapipe bench``: throughput, I/O floor, orchestration overhead and memory, as JSON.

Every figure is a ratio against a baseline measured in the same process, because absolute times
on shared machines mean little:

- per stage: output Mpx/s on one bench tile with inputs in memory, and the ratio of its time to
  a streaming pass over the same input bytes (how far from memory bandwidth the stage is);
  beside it, ``speed_vs_peer``: the time of a peer implementation of the same algorithm, written
  the common way with numpy, OpenCV and scikit-image on the same in-memory arrays (``PEERS``),
  over the stage's time (1 = as fast as the peer; above 1 faster), and ``speed_vs_stream``, the
  streaming pass's time over the stage's; for haze_index, water_mask and flood_change, which do
  more than their peer by design, also ``like_for_like_speed_vs_peer``: the peer's own
  algorithm built from the stage's kernels and graph, against the peer;
- the whole run (1 and 4 tiles, fresh LocalCluster each): wall time over its I/O floor (decoding
  each tile's inputs alone on the run's cluster, :func:`decode_inputs`, plus encoding and
  writing its outputs alone, :func:`encode_write_alone`), orchestration overhead (wall / stage
  compute), and peak RSS per worker, which must not grow with the number of tiles.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from distributed import Client

    from pipelines.config import ProvinceConfig
    from pipelines.engine.plan import RunPlan

#: Output Mpx/s per core used by ``terrapipe plan`` before any bench has run on this machine
#: (figures from a bench run on a 2-core development machine).
DEFAULT_THROUGHPUT = {
    "cloud_mask": 8.0,
    "haze_index": 4.0,
    "dehaze": 1.0,
    "water_mask": 4.0,
    "flood_change": 2.0,
}


def results_path() -> Path:
    """Where the last bench results are kept (read by ``terrapipe plan``)."""
    from pipelines.config import terrapipe_home

    return terrapipe_home() / "bench.json"


def measured_throughput() -> dict[str, float]:
    """Per-stage throughput (Mpx/s per core) from the last bench, else the defaults."""
    figures = dict(DEFAULT_THROUGHPUT)
    path = results_path()
    if path.exists():
        try:
            stages = json.loads(path.read_text()).get("stages", {})
            cores = max(json.loads(path.read_text()).get("threads", 1), 1)
            figures.update({k: v["mpx_s"] / cores for k, v in stages.items() if "mpx_s" in v})
        except (json.JSONDecodeError, AttributeError):
            pass
    return figures


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timeit(fn: Any, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


#: Rounds of :func:`best_in_turns` for the per-stage figures.
STAGE_ROUNDS = 5


def best_in_turns(fns: dict[str, Any], rounds: int = STAGE_ROUNDS) -> dict[str, float]:
    """Best time (s) of each callable over ``rounds`` rounds in which every callable runs once,
    in turn: a load spike on a shared machine hits the stage and its baselines alike instead of
    whichever happened to be timed then, so their ratios hold steadier than those of timings
    taken one after another."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


#: glibc's ceiling for its dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``,
#: 32 MiB): an array above the threshold is a fresh mapping (a page fault and a zeroed page per
#: 4 KiB on first touch), one below it comes from the heap, whose pages were touched before.
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def settle_allocator() -> bool:
    """Put glibc's allocator in the state a long-running process reaches, so that the stages
    and their peers are timed alike. glibc serves an array above its mmap threshold from a
    fresh mapping and raises the threshold to the size of the largest mapped block freed, up
    to :data:`GLIBC_MMAP_THRESHOLD_MAX`: an array's cost depended on what the process had freed
    before (the haze peer's 8 MiB arrays: 11.5-14.5 ms fresh, 6.2-7.8 ms once a larger block
    had been freed). This allocates and frees one mapped block a page below that ceiling: the
    threshold, which never goes down, is then at its ceiling whatever ran before, and every
    array below it comes from the heap, for the stages and the peers alike. Returns False
    (nothing done) where the C library is not glibc."""
    import ctypes
    import mmap

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
    except (OSError, AttributeError):
        return False
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # A mapped chunk is the request plus its 8-byte header rounded up to whole pages, and glibc
    # compares its size word, flags included, with the ceiling: two pages less than the ceiling
    # gives a chunk one page below it, the largest that raises the threshold.
    block = libc.malloc(GLIBC_MMAP_THRESHOLD_MAX - 2 * mmap.PAGESIZE)
    if not block:
        return False
    libc.free(block)
    return True


def bench_config(archive: str, store: str, n_tiles: int, tile_px: int = 1024) -> ProvinceConfig:
    """A province config over ``n_tiles`` (1 or a square number) tiles in the archive centre."""
    import math

    from shapely.geometry import box, mapping, shape
    from shapely.geometry.base import BaseGeometry

    from pipelines.config import parse_config
    from pipelines.demo import archive_items, open_archive_info
    from pipelines.grid import reproject_geometry

    info = open_archive_info(archive)
    items = {c: archive_items(archive, c) for c in ("sentinel-2-l2a", "sentinel-1-rtc")}
    crs = info["crs"]
    minx, miny, maxx, maxy = info["bbox"]
    size = 10.0 * tile_px
    side = math.isqrt(n_tiles)
    # Centre the tiles where every scene overlaps (orbits leave some scenes partial).
    common: BaseGeometry = box(minx, miny, maxx, maxy)
    for features in items.values():
        for f in features:
            footprint = reproject_geometry(shape(f["geometry"]), "EPSG:4326", crs)
            common = common.intersection(footprint)
    # Where no point is covered by every scene (the demo archive's S1 orbits), the archive centre.
    centre = (common if not common.is_empty else box(minx, miny, maxx, maxy)).centroid
    lo_x = math.floor((centre.x - side * size / 2) / size) * size
    lo_y = math.floor((centre.y - side * size / 2) / size) * size
    inner = box(lo_x + 1, lo_y + 1, lo_x + side * size - 1, lo_y + side * size - 1)
    dates = {c: [f["properties"]["datetime"][:10] for f in fs] for c, fs in items.items()}
    s1 = dates["sentinel-1-rtc"]
    # The window starts at the second SAR date, so that flood_change has a pre-event scene.
    first = s1[1] if len(s1) > 1 else min(dates["sentinel-2-l2a"])
    last = max(dates["sentinel-2-l2a"][-1], s1[-1])
    raw = {
        "province": f"bench{n_tiles}",
        "aoi": mapping(reproject_geometry(inner.buffer(-2 * 10.0), crs, "EPSG:4326")),
        "crs": crs,
        "tile_px": tile_px,
        "start": first,
        "end": last,
        "products": list(DEFAULT_THROUGHPUT),
        "stac": {"archive": archive, "max_cloud_cover": 100},
        "store": store,
        "dask": {"n_workers": 2, "threads_per_worker": 1, "gpu_workers": 0},
    }
    return parse_config(raw)


# --------------------------------------------------------------------------- peer implementations
#
# Each peer takes the stage's inputs as numpy arrays (time, band, y, x) with their band names and
# computes the same algorithm the way it is commonly written: whole arrays, OpenCV per date, no
# chunking, no NaN bookkeeping beyond what the algorithm needs. Parameters are the stages'
# defaults at 10 m pixels.


def _band(arr: np.ndarray, names: list[str], name: str) -> np.ndarray:
    return arr[:, names.index(name)]


def _disk(radius: int) -> np.ndarray:
    import numpy as np
    from skimage.morphology import disk

    return disk(radius).astype(np.uint8)


def peer_cloud_mask(s2: np.ndarray, names: list[str]) -> np.ndarray:
    """The cloud_mask rules in one numpy pass, OpenCV morphology per date."""
    import cv2
    import numpy as np

    out = np.ones((s2.shape[0], *s2.shape[2:]), dtype=np.uint8)
    if "SCL" in names:
        scl = _band(s2, names, "SCL")
        nodata = np.isnan(scl) | (scl == 0) | (scl == 1)
        cloud = (scl == 8) | (scl == 9)
        shadow, cirrus, snow = scl == 3, scl == 10, scl == 11
        cloud_r, search = 1, 0
    else:
        b2, b3, b4, b8, b11, b12 = (_band(s2, names, b) for b in SPECTRAL)
        nodata = np.isnan(s2[:, [names.index(b) for b in SPECTRAL]]).any(axis=1)
        mv = (b2 + b3 + b4) / 3
        white = (np.abs(b2 - mv) + np.abs(b3 - mv) + np.abs(b4 - mv)) / (mv + 1e-6)
        cloud = (
            (b12 > 0.03)
            & ((b3 - b11) / (b3 + b11 + 1e-6) < 0.8)
            & ((b8 - b4) / (b8 + b4 + 1e-6) < 0.8)
            & (white < 0.7)
            & (b2 - 0.5 * b4 - 0.08 > 0)
            & (b8 / (b11 + 1e-6) > 0.75)
        )
        shadow = (b8 < 0.16) & (b11 < 0.12) & ((b3 - b8) / (b3 + b8 + 1e-6) < 0)
        cirrus = _band(s2, names, "B10") > 0.012 if "B10" in names else np.zeros_like(cloud)
        snow = (b3 - b11 >= 0.4 * (b3 + b11)) & (b3 + b11 > 0) & (b4 >= 0.2) & ~nodata
        cloud_r, search = 4, 200
    for i in range(out.shape[0]):
        c = cloud[i].view(np.uint8)
        if search:
            c = cv2.morphologyEx(
                c, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT
            )
            near = cv2.dilate(c, np.ones((2 * search + 1, 2 * search + 1), np.uint8))
            sh = shadow[i].view(np.uint8) & near & (1 - c)
        else:
            sh = shadow[i].view(np.uint8)
        o = out[i]
        o[snow[i]] = 5
        o[cirrus[i]] = 4
        o[cv2.dilate(sh, _disk(2)) > 0] = 3
        o[cv2.dilate(c, _disk(cloud_r)) > 0] = 2
        o[nodata[i]] = 0
    return out


def _dark_channel(rgb_min: np.ndarray) -> np.ndarray:
    import cv2
    import numpy as np

    return cv2.erode(rgb_min, np.ones((15, 15), np.uint8))


def peer_haze_index(s2: np.ndarray, names: list[str]) -> np.ndarray:
    """OpenCV dark channel: erode 15 x 15 over min(B02, B03, B04), per date, and its mean."""
    import numpy as np

    b2, b3, b4 = (_band(s2, names, b) for b in ("B02", "B03", "B04"))
    rgb_min = np.minimum(np.minimum(b2, b3), b4)
    dark = np.stack([_dark_channel(rgb_min[i]) for i in range(s2.shape[0])])
    return np.nanmean(dark, axis=(1, 2))


def _guided(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al. (2010) guided filter with cv2.boxFilter (cv2.ximgproc.guidedFilter's maths)."""
    import cv2

    k = (2 * radius + 1, 2 * radius + 1)
    mean_g, mean_p = cv2.boxFilter(guide, -1, k), cv2.boxFilter(src, -1, k)
    var_g = cv2.boxFilter(guide * guide, -1, k) - mean_g * mean_g
    a = (cv2.boxFilter(guide * src, -1, k) - mean_g * mean_p) / (var_g + eps)
    b = mean_p - a * mean_g
    return cv2.boxFilter(a, -1, k) * guide + cv2.boxFilter(b, -1, k)


def peer_dehaze(s2: np.ndarray, names: list[str]) -> np.ndarray:
    """He et al. (2009) dark-channel prior on B02, B03, B04, B08 with the guided filter."""
    import numpy as np

    img = np.nan_to_num(s2[:, [names.index(b) for b in ("B02", "B03", "B04", "B08")]])
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        bands = img[i]
        dark = _dark_channel(np.min(bands[:3], axis=0))
        n = max(1, dark.size // 1000)
        top = np.argpartition(dark.ravel(), -n)[-n:]
        airlight = np.maximum(bands.reshape(4, -1)[:, top].mean(axis=1), 0.3)
        norm = np.min(bands[:3] / airlight[:3, None, None], axis=0)
        t = 1.0 - 0.95 * _dark_channel(norm.astype(np.float32))
        t = np.maximum(_guided(bands[0], t.astype(np.float32), 40, 1e-3), 0.1)
        out[i] = (bands - airlight[:, None, None]) / t + airlight[:, None, None]
    return out


def _lee_otsu(db: np.ndarray) -> np.ndarray:
    """Lee filter (5 x 5, 4 looks) from box means, then one global Otsu split: water."""
    import cv2
    import numpy as np
    from skimage.filters import threshold_otsu

    lin = np.power(10.0, np.nan_to_num(db, nan=-30.0) / 10.0).astype(np.float32)
    mean = cv2.blur(lin, (5, 5))
    var = np.maximum(cv2.blur(lin * lin, (5, 5)) - mean * mean, 0)
    var_x = np.maximum((var - mean * mean / 4.0) / 1.25, 0)
    k = np.divide(var_x, var, out=np.zeros_like(var), where=var > 0)
    filt = 10.0 * np.log10(np.maximum(mean + k * (lin - mean), 1e-10))
    return filt < threshold_otsu(filt[np.isfinite(db)])


def peer_water_mask(s1: np.ndarray, names: list[str]) -> np.ndarray:
    """Lee + global Otsu on VH (VV without VH), per date."""
    import numpy as np

    db = _band(s1, names, "VH" if "VH" in names else "VV")
    return np.stack([_lee_otsu(db[i]) for i in range(db.shape[0])])


def peer_flood_change(pre: np.ndarray, post: np.ndarray, names: list[str]) -> np.ndarray:
    """Lee + global Otsu on the last pre-event date and each post-event date; new water."""
    before = peer_water_mask(pre[-1:], names)[0]
    return peer_water_mask(post, names) & ~before


SPECTRAL = ("B02", "B03", "B04", "B08", "B11", "B12")


def _peer_call(name: str, inputs: Any) -> Any:
    """The peer of stage ``name`` as a no-argument callable on numpy copies of its inputs (None
    for a stage without a peer)."""
    import numpy as np

    def arr(key: str) -> tuple[np.ndarray, list[str]]:
        value = inputs[key]
        names = [str(b) for b in value.coords["band"].values] if "band" in value.coords else []
        return np.ascontiguousarray(value.values, dtype=np.float32), names

    if name in ("cloud_mask", "haze_index", "dehaze"):
        s2, names = arr("s2")
        fn = {"cloud_mask": peer_cloud_mask, "haze_index": peer_haze_index}.get(name, peer_dehaze)
        return lambda: fn(s2, names)
    if name == "water_mask":
        s1, names = arr("s1")
        return lambda: peer_water_mask(s1, names)
    if name == "flood_change":
        (pre, names), (post, _) = arr("s1_pre"), arr("s1_post")
        return lambda: peer_flood_change(pre, post, names)
    return None


def _water_kernels(s1: Any) -> Any:
    """The water peer's algorithm (Lee, then one global Otsu split of each date, on VH, else VV)
    with water_mask's own kernels and chunked graph (Lee filter at the peer's 4 looks, exact
    histogram, Otsu of the histogram): lazy (time, y, x) bool."""
    import dask.array as da
    import numpy as np

    from pipelines.stages import filters as F
    from pipelines.stages.water import HIST_BINS_DB, speckle_filter

    bands = [str(b) for b in s1.coords["band"].values]
    db = speckle_filter(s1.sel(band="VH" if "VH" in bands else "VV", drop=True), enl=4.0).data
    hist = F.hist_per_time(db, da.isfinite(db), HIST_BINS_DB).rechunk({0: 1, 1: -1})

    def otsu(h: np.ndarray) -> np.ndarray:
        return np.array([F.otsu_from_hist(row, HIST_BINS_DB) for row in h], dtype="float32")

    thr = da.map_blocks(otsu, hist, drop_axis=1, dtype="float32")
    return db < thr[:, None, None]


def _haze_kernels(s2: Any, window: int = 15) -> Any:
    """The haze peer's algorithm (the minimum of B02-B04, its ``window`` square minimum, the
    mean of each date) with haze_index's own kernels and chunked graph (the window minimum in
    OpenCV with a halo from the neighbouring chunks, float64 partial sums per chunk, one
    reduction per date): lazy (time,) float64."""
    import dask.array as da
    import numpy as np

    from pipelines.stages import filters as F

    planes = [F.as_dask(s2.sel(band=b, drop=True)).data for b in ("B02", "B03", "B04")]

    def dark(b2: np.ndarray, b3: np.ndarray, b4: np.ndarray) -> np.ndarray:
        rgb_min = np.minimum(b2, b3, out=F.work_buffer("bench_rgb_min", b2.shape, np.float32))
        np.minimum(rgb_min, b4, out=rgb_min)
        return F.min_filter_into(rgb_min, window, np.empty(b2.shape, dtype=np.float32))

    def partial(d: np.ndarray) -> np.ndarray:
        finite = np.isfinite(d)
        out = np.empty((d.shape[0], 1, 1, 2), dtype=np.float64)
        out[:, 0, 0, 0] = np.sum(d, axis=(1, 2), where=finite, dtype=np.float64)
        out[:, 0, 0, 1] = np.count_nonzero(finite, axis=(1, 2))
        return out

    dc = F.overlap(dark, *planes, depth=window // 2, dtype="float32")
    ny, nx = len(dc.chunks[1]), len(dc.chunks[2])
    sums = da.map_blocks(
        partial,
        dc,
        new_axis=3,
        chunks=(dc.chunks[0], (1,) * ny, (1,) * nx, (2,)),
        dtype="float64",
        meta=np.empty((0, 0, 0, 0), dtype=np.float64),
    ).sum(axis=(1, 2))
    return sums[:, 0] / sums[:, 1]


def _like_for_like_call(name: str, inputs: Any) -> Any:
    """For a stage that does more than its peer by design (haze_index: cloud and water flags,
    bright-surface score, SWIR floor, weighted scene sums, pixel weight; water_mask,
    flood_change: VV filter and veto, sub-tile split thresholds, minimum mapping unit;
    reference median, terrain and flooded vegetation), the peer's algorithm built from the
    stage's own kernels, as a no-argument callable (None for the other stages): its time over
    the stage's kernels' time is the like-for-like ratio."""
    import dask

    if name == "haze_index":
        return lambda: dask.compute(_haze_kernels(inputs["s2"]))
    if name == "water_mask":
        return lambda: dask.persist(_water_kernels(inputs["s1"]))
    if name == "flood_change":

        def flood() -> Any:
            before = _water_kernels(inputs["s1_pre"].isel(time=[-1]))[0]
            return dask.persist(_water_kernels(inputs["s1_post"]) & ~before)

        return flood
    return None


#: The stages that have a peer in this bench.
PEERS = ("cloud_mask", "haze_index", "dehaze", "water_mask", "flood_change")


def bench_stages(plan: RunPlan, store: str, tile_id: str) -> dict[str, dict[str, float | None]]:
    """Per-stage throughput on one tile, inputs in memory, threaded scheduler (2 threads); the
    stage, its streaming pass and its peer timed in turns (:func:`best_in_turns`), the allocator
    settled first (:func:`settle_allocator`) so that none of them finds its arrays in fresh
    mappings because of what ran before it."""
    import cv2
    import dask

    settle_allocator()

    from pipelines.engine.graph import (
        StageValue,
        StageValues,
        as_dataset,
        call_stage,
        resolve_stages,
        tile_sources,
    )
    from pipelines.stages.registry import Stage, resolve_order

    stages = resolve_order([n for g in plan.groups for n in g.stages])
    out: dict[str, dict[str, float | None]] = {}

    def timed(stage: Stage, inputs: StageValues) -> StageValue:
        """Time the stage against a streaming pass over its inputs; its output, in memory."""
        raw_arrays = [v for v in inputs.values() if v is not None and hasattr(v, "data")]

        def stream(arrays: list[Any] = raw_arrays) -> None:
            dask.compute(*[(a.data.astype("float32") + 0).sum() for a in arrays])

        def run() -> StageValue:
            return call_stage(stage, inputs).persist()

        timers: dict[str, Any] = {"stream": stream, "stage": run}
        peer = _peer_call(stage.name, inputs)
        if peer is not None:

            def peer_on_two_threads(fn: Any = peer) -> None:
                threads = cv2.getNumThreads()
                cv2.setNumThreads(2)  # the stage's two threads
                try:
                    fn()
                finally:
                    cv2.setNumThreads(threads)

            timers["peer"] = peer_on_two_threads
            kernels = _like_for_like_call(stage.name, inputs)
            if kernels is not None:
                timers["kernels"] = kernels
        best = best_in_turns(timers)
        t_stream, t_stage = best["stream"], best["stage"]
        result = run()
        ds = as_dataset(stage.name, result)
        sizes = [ds[v].size for v in ds.data_vars if {"y", "x"} <= set(ds[v].dims)]
        mpx = max(sizes, default=0) / 1e6
        figures: dict[str, float | None] = {
            "mpx": round(mpx, 3),
            "seconds": round(t_stage, 3),
            "mpx_s": round(mpx / t_stage, 3) if t_stage else None,
            "stream_seconds": round(t_stream, 4),
            "ratio_to_stream": round(t_stage / t_stream, 2) if t_stream else None,
            "speed_vs_stream": round(t_stream / t_stage, 3) if t_stage else None,
        }
        if "peer" in best:
            t_peer = best["peer"]
            figures["peer_seconds"] = round(t_peer, 4)
            figures["peer_mpx_s"] = round(mpx / t_peer, 3) if t_peer else None
            figures["speed_vs_peer"] = round(t_peer / t_stage, 3) if t_stage else None
        if "kernels" in best:
            t_kernels = best["kernels"]
            figures["kernels_seconds"] = round(t_kernels, 4)
            figures["like_for_like_speed_vs_peer"] = (
                round(best["peer"] / t_kernels, 3) if t_kernels else None
            )
        out[stage.name] = figures
        return result

    with dask.config.set(scheduler="threads", num_workers=2):
        sources = tile_sources(plan, stages, tile_id)
        in_memory = {k: v.persist() if v is not None else None for k, v in sources.items()}
        resolve_stages(stages, in_memory, timed)
    return out


#: Least share of a model bench input's pixels that must hold data: a stage returns at once on
#: pixels without data, and its throughput would then say nothing of the network.
MIN_MODEL_INPUT_VALID = 0.9


def clearest_window(valid: Any, size: int) -> tuple[int, int, int, float]:
    """(date index, y0, x0, valid share) of the ``size`` x ``size`` px window (on a grid of
    ``size`` steps) and date whose pixels hold data most often; ``valid``: (time, y, x) bool."""
    import numpy as np

    h, w = valid.shape[1:]
    best = (0, 0, 0, -1.0)
    for y0 in range(0, max(h - size, 0) + 1, size):
        for x0 in range(0, max(w - size, 0) + 1, size):
            shares = valid[:, y0 : y0 + size, x0 : x0 + size].mean(axis=(1, 2))
            i = int(np.argmax(shares))
            if shares[i] > best[3]:
                best = (i, y0, x0, float(shares[i]))
    return best


def _tile_bgrn(plan: RunPlan, tile_id: str, size: int) -> Any:
    """The clearest ``size`` px window and S2 date of a bench tile (:func:`clearest_window`),
    BGRN, in memory; refused when under :data:`MIN_MODEL_INPUT_VALID` of it holds data."""
    import dask
    import numpy as np

    from pipelines.engine.graph import load_source
    from pipelines.errors import BadInputError

    with dask.config.set(scheduler="threads", num_workers=2):
        s2 = load_source(plan, "s2", tile_id).sel(band=["B02", "B03", "B04", "B08"]).compute()
    t, y0, x0, share = clearest_window(np.isfinite(s2.values).all(axis=1), size)
    if share < MIN_MODEL_INPUT_VALID:
        raise BadInputError(
            "bench tile",
            tile_id,
            f"a tile with a {size} px window of which at least {MIN_MODEL_INPUT_VALID:.0%} holds "
            "S2 data on one date (a larger archive: --size bench)",
            f"its best window holds data on {share:.0%}",
        )
    window = s2.isel(time=[t], y=slice(y0, y0 + size), x=slice(x0, x0 + size))
    window.attrs["valid_share"] = round(share, 4)
    return window


def bench_models(plan: RunPlan, tile_id: str, tile_px: int) -> dict[str, Any]:
    """Per model: CPU inference throughput of its stage (output Mpx/s, 2 threads, tiled with
    halos and blending) beside the same network on one in-memory batch (the ceiling), and the
    training wall time recorded in its model card."""
    import dask
    import numpy as np
    import torch

    from models.registry import get_model, list_models, model_spec
    from models.weights import read_card
    from pipelines.stages.learned import dehaze_learned, super_resolution

    torch.set_num_threads(2)
    out: dict[str, Any] = {}
    for name in list_models():
        spec = model_spec(name)
        try:
            net = get_model(name, device="cpu")
            card = read_card(name)
        except Exception as exc:  # weights not trained on this checkout
            out[name] = {"skipped": str(exc)}
            continue
        size = tile_px if spec.scale == 1 else tile_px // spec.scale
        s2 = _tile_bgrn(plan, tile_id, size)
        stage = dehaze_learned if name == "dehaze" else super_resolution

        def run_stage(arr: Any = s2, fn: Any = stage) -> Any:
            with dask.config.set(scheduler="threads", num_workers=2):
                return fn(arr).compute()

        if name == "dehaze":
            batch = np.nan_to_num(s2.values[0])
        else:
            from models.super_resolution.network import pack_inputs

            batch = pack_inputs([s2.values[0]], None)
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype="float32"))[None]

        def run_batch(x: Any = tensor, model: Any = net) -> Any:
            with torch.inference_mode():
                return model(x)

        run_batch()  # warm-up (allocations, kernel selection)
        t_stage = _timeit(run_stage)
        t_batch = _timeit(run_batch)
        mpx = (size * spec.scale) ** 2 / 1e6
        training = card["properties"].get("terrapipe:training", {})
        out[name] = {
            "input_valid_share": s2.attrs.get("valid_share"),
            "output_mpx": round(mpx, 3),
            "stage_mpx_s": round(mpx / t_stage, 3),
            "single_batch_mpx_s": round(mpx / t_batch, 3),
            "ratio_to_single_batch": round(t_batch / t_stage, 3),
            "training_wall_s": training.get("seconds"),
            "parameters": card["properties"].get("mlm:total_parameters"),
        }
    return out


def decode_inputs(plan: RunPlan, client: Any) -> float:
    """Seconds to decode every input of every tile of ``plan`` alone (no stages) on ``client``'s
    cluster: the decode half of a run's I/O floor.

    Each tile's inputs are read the way the run reads them: the same lazy sources (same items,
    grid and chunks, :func:`pipelines.engine.graph.load_source`), all of a tile's sources in one
    computation, tile after tile; each source is reduced on the workers (nothing is sent back).
    A source without scenes on a tile reads nothing.
    """
    from pipelines.engine.graph import load_source
    from pipelines.errors import NoScenesError

    t0 = time.perf_counter()
    for entry in plan.tiles:
        reads = []
        for source, ids in entry.scenes.items():
            if not ids:
                continue
            try:
                arr = load_source(plan, source, entry.tile_id)
            except NoScenesError:
                continue
            reads.append((arr.data + 0).sum())
        if reads:
            client.gather(client.compute(reads))
    return time.perf_counter() - t0


def encode_write_alone(
    plan: RunPlan, store: str, scratch: str, threads: int | None = None
) -> float:
    """Seconds to encode and write every product a run wrote, alone (nothing else running):
    the encode/write half of its I/O floor.

    Each (product, tile) is read back from the run's cube into memory (not timed) and written
    again by the run's own writer (:func:`pipelines.products.write_tile_product`: cube region,
    COGs, quicklooks, markers) into empty cubes under ``scratch``; a tile's products are
    written at once by up to ``threads`` threads, as the run writes them (default
    :func:`pipelines.engine.run.write_threads`). Measured apart because the run writes a
    tile's products while the cluster computes the others, where its write seconds are slowed
    by that computation."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines import products
    from pipelines.engine.graph import product_spec
    from pipelines.engine.run import write_threads
    from pipelines.products.cube import SPATIAL_DIMS, open_cube, variable_names
    from pipelines.stages.registry import get_stage

    cubes: dict[str, tuple[Any, list[str]]] = {}
    for name in [n for g in plan.groups for n in g.stages]:
        stage = get_stage(name)
        cube = open_cube(products.cube_url(store, plan.province, name), raw=True)
        rasters = variable_names(cube, SPATIAL_DIMS)
        variables = {
            n: products.CubeVariable(
                cube[n].dtype.name,
                cube[n].attrs.get("_FillValue", 0),
                {k: v for k, v in cube[n].attrs.items() if k not in ("_FillValue", "grid_mapping")},
            )
            for n in rasters
        }
        products.init_cube(
            scratch,
            plan.province,
            name,
            plan.stage_grid(stage)[0],
            times=cube["time"].values,
            variables=variables,
        )
        cubes[name] = (cube, rasters)

    def rewrite(name: str, tile_id: str, labels: list[str], data: Any) -> None:
        stage = get_stage(name)
        grid, tile_on = plan.stage_grid(stage)
        products.write_tile_product(
            scratch,
            plan.province,
            name,
            grid,
            tile_on(tile_id),
            data,
            stage=stage,
            spec=product_spec(stage, plan.mantissa_bits),
            labels=labels,
            overwrite=True,
        )

    seconds = 0.0
    for tile_id in plan.tile_ids:
        jobs = []
        for name, (cube, rasters) in cubes.items():
            stage = get_stage(name)
            labels = plan.tile_dates(stage, tile_id)
            if not labels:
                continue
            grid, tile_on = plan.stage_grid(stage)
            ys, xs = grid.region(tile_on(tile_id))
            have = [products.date_label(t) for t in cube["time"].values]
            region = cube[rasters].isel(time=[have.index(lab) for lab in labels], y=ys, x=xs)
            jobs.append(
                (name, tile_id, labels, region.drop_vars("spatial_ref", errors="ignore").load())
            )
        if not jobs:
            continue
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, threads or write_threads())) as pool:
            for done in [pool.submit(rewrite, *job) for job in jobs]:
                done.result()
        seconds += time.perf_counter() - t0
    return seconds


#: Modules a run's driver imports on first use, beside its stages' modules.
DRIVER_MODULES = ("pipelines.engine.run", "pipelines.load", "stackstac", "rasterio", "zarr")


def import_driver_modules(plan: RunPlan) -> float:
    """Seconds to import, in this process, the modules a run's driver imports on first use:
    :data:`DRIVER_MODULES` and the module of every stage the plan runs."""
    import importlib

    from pipelines.stages.registry import resolve_order

    stages = resolve_order([n for g in plan.groups for n in g.stages])
    own = [s.function.partition(":")[0] for s in stages if isinstance(s.function, str)]
    t0 = time.perf_counter()
    for name in [*DRIVER_MODULES, *own]:
        importlib.import_module(name)
    return time.perf_counter() - t0


#: What a run's ``wall_s`` includes, by whether the cluster was running before the run.
WALL_INCLUDES = {
    False: (
        "run_local from its run lock to its catalog (planning with the archive's STAC server"
        " started, cube creation, compute, writes, catalog) on a LocalCluster the bench started"
        " just before: its start and its workers' registration are not included (reported"
        " apart as cluster_start_s: with dask.worker_start forkserver, the stages' imports"
        " happen there, in the fork server, once), the imports its scheduler and workers still"
        " do after registering are"
    ),
    True: (
        "run_local from its run lock to its catalog (as the other figure) on a LocalCluster"
        " whose scheduler and workers had finished importing the stages and readers before the"
        " run: a long-running cluster, as Airflow tasks use in production"
    ),
}


def task_span(records: list[dict[str, Any]], since: float) -> tuple[float, float] | None:
    """Seconds from ``since`` (epoch seconds) to the start of the first task and to the end of
    the last one of a Dask task stream's ``records`` (their ``startstops``: compute and
    transfers); None when no task ran."""
    spans = [(s["start"], s["stop"]) for r in records for s in r.get("startstops", ())]
    if not spans:
        return None
    return min(a for a, _ in spans) - since, max(b for _, b in spans) - since


@contextlib.contextmanager
def task_stream(client: Any) -> Iterator[list[dict[str, Any]]]:
    """The records of every task ``client``'s cluster runs inside the block (Dask's task
    stream), filled in when the block ends."""
    from distributed import get_task_stream

    records: list[dict[str, Any]] = []
    with get_task_stream(client=client) as stream:
        yield records
    records.extend(stream.data)


def bench_run(config: ProvinceConfig, running_cluster: bool = False) -> dict[str, Any]:
    """One whole run on a fresh LocalCluster: wall, I/O floor, overhead, peak RSS per worker,
    and when the cluster's first and last tasks ran (seconds from the run's start).

    ``running_cluster``: the run starts only once the cluster's scheduler and workers have
    finished their preload (:func:`operators.dask_cluster.wait_prepared`), as on a cluster
    that was running before the run; else as soon as the workers have registered. What the
    wall includes is reported as ``wall_includes`` (:data:`WALL_INCLUDES`)."""
    from operators.dask_cluster import connect, start_cluster, stop_cluster, wait_prepared
    from pipelines.engine.plan import read_plan
    from pipelines.engine.run import run_local

    started = time.perf_counter()
    handle = start_cluster(config.dask)
    try:
        client = connect(handle.address)
        client.wait_for_workers(config.dask.n_workers + config.dask.gpu_workers, timeout=120)
        cluster_start_s = time.perf_counter() - started
        if running_cluster:
            wait_prepared(client)
        since = time.time()
        with task_stream(client) as records:
            summary = run_local(config, client, overwrite=True)
        span = task_span(records, since)
        peaks = client.run(_peak_rss_mb)
        # The I/O floor: decode every input of the run alone (no stages) on the same cluster...
        plan = read_plan(str(summary["plan_url"]))
        decode_s = decode_inputs(plan, client)
        client.close()
    finally:
        stop_cluster(handle)
    # ...plus encoding and writing the outputs alone (the cluster stopped)
    write_s = encode_write_alone(plan, config.store, config.store.rstrip("/") + "-rewrite")
    wall_s, compute_s = float(summary["wall_s"]), float(summary["compute_s"])
    floor = decode_s + write_s
    return {
        "tiles": int(summary["tiles"]) // max(len(plan.groups), 1),
        "wall_includes": WALL_INCLUDES[running_cluster],
        "wall_s": summary["wall_s"],
        # The cluster's own start (process, scheduler, workers registered), outside the wall
        "cluster_start_s": round(cluster_start_s, 3),
        "worker_start": config.dask.worker_start,
        "plan_s": summary["plan_s"],
        "compute_s": summary["compute_s"],
        "decode_s": round(decode_s, 3),
        "encode_write_s": round(write_s, 3),
        "run_write_s": summary["write_s"],
        # Where the wall goes: the cluster's first task and its last, from the run's start
        "first_task_s": round(span[0], 3) if span else None,
        "last_task_s": round(span[1], 3) if span else None,
        "ratio_to_io_floor": round(wall_s / floor, 2) if floor else None,
        "orchestration_overhead": round(wall_s / compute_s, 2) if compute_s else None,
        "peak_rss_mb_per_worker": sorted(round(v, 1) for v in peaks.values()),
        "products_written": summary["written"],
    }


def _cube_equal(a: str, b: str) -> bool:
    """Whether two product cubes (Zarr groups) hold the same arrays, to the bit."""
    import numpy as np
    import zarr

    left = dict(zarr.open_group(a, mode="r").arrays())
    right = dict(zarr.open_group(b, mode="r").arrays())
    if sorted(left) != sorted(right):
        return False
    return all(np.array_equal(left[n][...], right[n][...], equal_nan=True) for n in left)


@contextlib.contextmanager
def warm_cluster(config: ProvinceConfig) -> Iterator[Client]:
    """A client of a cluster started with ``config``'s Dask settings (2 single-threaded workers
    by default), on which ``config`` has run once (the workers' imports and first reads), so
    that the runs timed on it start alike; the cluster is stopped on leaving."""
    from operators.dask_cluster import connect, start_cluster, stop_cluster
    from pipelines.engine import run

    handle = start_cluster(config.dask)
    try:
        client = connect(handle.address)
        client.wait_for_workers(config.dask.n_workers, timeout=120)
        run.run_local(config, client, overwrite=True)
        yield client
        client.close()
    finally:
        stop_cluster(handle)


def bench_rounds(archive: str, workdir: str, tile_px: int = 1024) -> dict[str, Any]:
    """flood_change over the archive's latest season on one tile (a long window: every S1
    date from the season's first plus the pre-event days), in rounds of
    ``engine.run.DATES_PER_ROUND`` dates, with the event date at the window's start (every
    date against one reference: ``event``) and without one (each month against the scenes
    before it: ``months``). Three ways each: the tile constants that several rounds read
    held on the cluster (``held``), computed again in each round (``recomputed_each_round``)
    and every date in one round (``one_round``); best wall of two turns each on one cluster (2
    single-threaded workers), the cubes of a mode compared to the bit."""
    import datetime as dt
    from unittest import mock

    from pipelines.demo import archive_items
    from pipelines.engine import run
    from pipelines.inputs import get_input

    s1 = sorted(f["properties"]["datetime"][:10] for f in archive_items(archive, "sentinel-1-rtc"))
    season = [d for d in s1 if d[:4] == s1[-1][:4]]

    def config(name: str, event: bool = False) -> ProvinceConfig:
        base = bench_config(archive, os.path.join(workdir, name), 1, tile_px)
        start = dt.date.fromisoformat(season[0]) + dt.timedelta(days=base.flood.pre_days)
        flood = base.flood.model_copy(update={"event_date": start if event else None})
        update = {"products": ("flood_change",), "flood": flood}
        return base.model_copy(update=update).with_window(start, base.end)

    # MiB of tile constants the cluster holds while each round of the held way runs (the
    # last turn's), read as each round takes what it reads and lets go of what no round from
    # it on reads.
    held_mib: dict[str, list[float]] = {}
    shared_mib: dict[str, float] = {}
    for_round = run.HeldConstants.for_round

    def mib(arrays: Any) -> float:
        return round(sum(a.nbytes for a in arrays) / 2**20, 1)

    def recorded(mode: str) -> AbstractContextManager[Any]:
        held_mib[mode] = []

        def counting(self: Any, k: int, client: Any, **placement: Any) -> bool:
            changed = for_round(self, k, client, **placement)
            held_mib[mode].append(mib(self.arrays.values()))
            shared_mib[mode] = mib(self.shared.values())
            return changed

        return mock.patch.object(run.HeldConstants, "for_round", counting)

    ways: dict[str, Callable[[str], AbstractContextManager[Any]]] = {
        "held": recorded,
        "recomputed_each_round": lambda _: mock.patch.object(
            run, "hold_tile_constants", lambda *a, **k: run.HeldConstants()
        ),
        "one_round": lambda _: mock.patch.object(run, "DATES_PER_ROUND", 10**6),
    }
    modes = {"event": True, "months": False}
    dates = 0
    with warm_cluster(config("warm")) as client:

        def once(mode: str, way: str) -> Any:
            def go() -> None:
                nonlocal dates
                with ways[way](mode):
                    summary = run.run_local(
                        config(f"{mode}-{way}", modes[mode]), client, overwrite=True
                    )
                dates = int(summary["written"])

            return go

        best = best_in_turns(
            {f"{mode}/{way}": once(mode, way) for mode in modes for way in ways}, rounds=2
        )
    first = config("held")
    pre = get_input("s1_pre").search_window(first.start, first.end, None, first.flood.pre_days)
    report: dict[str, Any] = {
        "product": "flood_change",
        "window": [str(first.start), str(first.end)],
        "pre_event_dates": sum(pre[0] <= dt.date.fromisoformat(d) <= pre[1] for d in s1)
        if pre
        else None,
        "dates": dates,
        "dates_per_round": run.DATES_PER_ROUND,
    }
    for mode in modes:
        cubes = {
            way: os.path.join(workdir, f"{mode}-{way}", first.province, "flood_change", "cube.zarr")
            for way in ways
        }
        report[mode] = {
            **{f"{way}_s": round(best[f"{mode}/{way}"], 3) for way in ways},
            "speed_vs_recomputed": round(
                best[f"{mode}/recomputed_each_round"] / best[f"{mode}/held"], 3
            ),
            "ratio_to_one_round": round(best[f"{mode}/held"] / best[f"{mode}/one_round"], 3),
            "identical": all(_cube_equal(cubes["held"], cubes[w]) for w in ways if w != "held"),
            "held_mib_by_round": held_mib.get(mode, []),
            "shared_mib": shared_mib.get(mode, 0.0),
        }
    return report


def bench_gapfill_rounds(
    archive: str, workdir: str, tile_px: int = 1024, months: int = 6
) -> dict[str, Any]:
    """``cloud_mask`` and ``ndvi_gapfilled`` on one tile over the archive's latest ``months``
    months of S2 (a long window: several rounds of ``engine.run.DATES_PER_ROUND`` dates), in
    rounds (``rounds``: the gap filling computed once for the window and held with the cloud
    mask it reads, :func:`pipelines.engine.run.window_products`) and every date in one round
    (``one_round``); best wall of two turns each on one cluster (2 single-threaded workers),
    the block reads of each way's last turn (one a date and band, counted at the loader's
    radiometry step, :func:`pipelines.load._radiometry_block`) and the cubes compared to the
    bit."""
    import datetime as dt
    from unittest import mock

    from pipelines import load
    from pipelines.demo import archive_items
    from pipelines.engine import run

    s2 = sorted(f["properties"]["datetime"][:10] for f in archive_items(archive, "sentinel-2-l2a"))
    end = dt.date.fromisoformat(s2[-1])
    first = end.year * 12 + end.month - 1 - (months - 1)  # the window's first month
    start = dt.date(first // 12, first % 12 + 1, 1)
    products = ("cloud_mask", "ndvi_gapfilled")

    def config(name: str) -> ProvinceConfig:
        base = bench_config(archive, os.path.join(workdir, name), 1, tile_px)
        return base.model_copy(update={"products": products}).with_window(start, end)

    radiometry = load._radiometry_block

    def reads_log(way: str) -> str:
        """Where a way's block reads are counted, a line a block (dates x bands)."""
        return os.path.join(workdir, f"{way}-reads.txt")

    def counted(way: str) -> Any:
        log = reads_log(way)

        def read(raw: Any, table: Any, block_info: Any = None) -> Any:
            if raw.size:  # not dask's call on empty arrays for the output's type
                with open(log, "a") as f:
                    f.write(f"{raw.shape[0] * raw.shape[1]}\n")
            return radiometry(raw, table, block_info=block_info)

        return read

    ways: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "rounds": contextlib.nullcontext,
        "one_round": lambda: mock.patch.object(run, "DATES_PER_ROUND", 10**6),
    }
    written = 0
    with warm_cluster(config("warm")) as client:

        def once(way: str) -> Any:
            def go() -> None:
                nonlocal written
                if os.path.exists(reads_log(way)):
                    os.remove(reads_log(way))
                with ways[way](), mock.patch.object(load, "_radiometry_block", counted(way)):
                    summary = run.run_local(config(way), client, overwrite=True)
                written = int(summary["written"])

            return go

        best = best_in_turns({way: once(way) for way in ways}, rounds=2)

    def reads(way: str) -> int:
        with open(reads_log(way)) as f:
            return sum(int(n) for n in f.read().split())

    cubes = {
        way: {p: os.path.join(workdir, way, config(way).province, p, "cube.zarr") for p in products}
        for way in ways
    }
    return {
        "products": list(products),
        "window": [str(start), str(end)],
        "products_written": written,
        "dates_per_round": run.DATES_PER_ROUND,
        **{f"{way}_s": round(best[way], 3) for way in ways},
        "ratio_to_one_round": round(best["rounds"] / best["one_round"], 3),
        **{f"{way}_block_reads": reads(way) for way in ways},
        "identical": all(_cube_equal(cubes["rounds"][p], cubes["one_round"][p]) for p in products),
    }


def _gapfill_peak(n_dates: int, tile_px: int, blocked: bool, out: Any) -> None:
    """In a fresh process: ndvi_gapfilled on a SYNTHETIC ``tile_px`` tile of ``n_dates`` dates
    (NDVI curves with speckled VH; 40 % of the dates clouded in stripes), threads scheduler, 2
    workers. Puts (peak RSS above the inputs in MB, wall s, gap MAE) on ``out``; ``blocked``
    False makes the whole tile one block, as every window was before ndvi_gapfilled 1.1.0."""
    import dask
    import numpy as np
    import xarray as xr

    from pipelines.classes import CloudClass
    from pipelines.stages import gapfill
    from pipelines.testing.scenes import band_cube

    if not blocked:
        gapfill.MAX_BLOCK_DATE_PX = n_dates * tile_px * tile_px
    rng = np.random.default_rng(0)
    shape = (n_dates, tile_px, tile_px)
    season = 0.5 + 0.3 * np.sin(np.arange(n_dates) / n_dates * np.pi)[:, None, None]
    truth = np.clip(season + rng.normal(0, 0.05, (1, tile_px, tile_px)), 0, 0.95)
    truth = truth.astype(np.float32)
    nir = np.full(shape, 0.3, np.float32)
    red = (nir * (1 - truth) / (1 + truth)).astype(np.float32)
    stripes = rng.random((n_dates, 1, tile_px)) > 0.6
    cloud = np.where(stripes, CloudClass.CLOUD, CloudClass.CLEAR).astype(np.uint8)
    cloud = np.broadcast_to(cloud, shape)
    times = np.datetime64("2025-01-01") + np.arange(n_dates) * np.timedelta64(3, "D")
    s2 = band_cube(np.stack([red, nir], 1), ["B04", "B08"], chunk=tile_px)
    s2 = s2.assign_coords(time=times)
    vh = (-25 + 14 * truth + rng.normal(0, 1, shape)).astype(np.float32)
    s1 = band_cube(np.stack([vh + 7, vh], 1), ["VV", "VH"], chunk=tile_px)
    s1 = s1.assign_coords(time=times)
    del red, nir, vh
    coords = {"time": times, "y": s2.y, "x": s2.x}
    mask = xr.DataArray(cloud, dims=("time", "y", "x"), coords=coords).chunk({"time": 1})
    before = _peak_rss_mb()
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        filled = gapfill.ndvi_gapfilled(s2, mask, s1)["ndvi"].values
    wall = time.perf_counter() - start
    gaps = cloud == CloudClass.CLOUD
    out.put((_peak_rss_mb() - before, wall, float(np.abs(filled - truth)[gaps].mean())))


def bench_gapfill(tile_px: int = 1024, dates: tuple[int, ...] = (48, 96)) -> dict[str, Any]:
    """Peak memory of ndvi_gapfilled by window length: in blocks of every date (the stage)
    against the whole tile in one block, each in a fresh process (a process's peak RSS only
    grows), on the same SYNTHETIC tile (:func:`_gapfill_peak`)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    report: dict[str, Any] = {"tile_px": tile_px}
    for n_dates in dates:
        figures = {}
        for way, blocked in (("blocks", True), ("one_block", False)):
            queue = context.Queue()
            child = context.Process(target=_gapfill_peak, args=(n_dates, tile_px, blocked, queue))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"ndvi_gapfilled bench ({way}, {n_dates} dates) failed")
            added_mb, wall, mae = queue.get()
            figures[way] = {
                "added_rss_mb": round(added_mb, 1),
                "wall_s": round(wall, 2),
                "gap_mae": round(mae, 4),
            }
        figures["rss_ratio_blocks_vs_one_block"] = round(
            figures["blocks"]["added_rss_mb"] / max(figures["one_block"]["added_rss_mb"], 1e-9), 3
        )
        report[f"{n_dates}_dates"] = figures
    return report


def peer_write_cog(data: Any, path: str, **options: Any) -> int:
    """:func:`pipelines.products.write_cog`'s peer: the same COG (same arguments, a local
    ``path``) through rio-cogeo's ``cog_translate``, as the COGs were written before
    (a WarpedVRT over the in-memory GeoTIFF, copied window by window into a second one that
    gets the overviews). Returns the file's bytes."""
    from rasterio.io import MemoryFile
    from rio_cogeo.cogeo import cog_translate

    from pipelines.products.cog import cog_source

    tags = {k: str(v) for k, v in (options.pop("tags", None) or {}).items()}
    source = cog_source(data, **options)
    with MemoryFile() as mem:
        with mem.open(**source.source_profile) as dst:
            dst.write(source.pixels)
            for i, name in enumerate(source.names, start=1):
                dst.set_band_description(i, name)
            if tags:
                dst.update_tags(**tags)
        with mem.open() as src:
            cog_translate(
                src,
                path,
                {"driver": "GTiff", **source.cog_options},
                nodata=source.nodata,
                overview_resampling=source.overview_resampling,
                in_memory=True,
                quiet=True,
                config={
                    "GDAL_NUM_THREADS": "1",
                    "GDAL_TIFF_OVR_BLOCKSIZE": str(source.blocksize),
                },
            )
    return os.path.getsize(path)


def _cog_tile(tile_px: int, kind: str, seed: int, bands: int = 0, noise: bool = False) -> Any:
    """A SYNTHETIC product tile for the COG bench: ``"float"``, ``bands`` (default 4) bands
    of smooth fields with noise and NaN corners (dehaze-like, average overviews);
    ``"classes"``, ``bands`` (default 1) uint8 bands of blobs (cloud_mask-like, mode
    overviews, nodata 255). ``noise``: uniform noise instead (floats in [0, 1), classes 0-4),
    which compresses little. Returns (data, write options)."""
    import numpy as np
    import xarray as xr
    from odc.geo.xr import xr_coords

    from pipelines.grid import TileGrid

    gbox = TileGrid(crs="EPSG:32633", resolution=10.0, tile_px=tile_px).tile(50, 400).geobox
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:tile_px, 0:tile_px] / max(tile_px, 1)
    coords = xr_coords(gbox, crs_coord_name="spatial_ref")
    shape = (bands or (4 if kind == "float" else 1), tile_px, tile_px)
    if kind == "float":
        if noise:
            pixels = rng.random(shape, dtype="float32")
        else:
            pixels = np.stack(
                [
                    (0.1 + 0.05 * b + 0.03 * np.sin(6 * x + b) * np.cos(5 * y)).astype("float32")
                    + rng.normal(0, 0.005, shape[1:]).astype("float32")
                    for b in range(shape[0])
                ]
            )
            pixels[:, : tile_px // 8, : tile_px // 8] = np.nan
        names = [f"band{b}" for b in range(shape[0])]
        data = xr.DataArray(pixels, dims=("band", "y", "x"), coords={"band": names, **coords})
        return data, {"overview_resampling": "average"}
    if noise:
        classes = (rng.random(shape) * 5).astype("uint8")
    else:
        blobs = [
            (np.sin(9 * x + b) * np.cos(7 * y) + rng.normal(0, 0.3, shape[1:])) * 2 + 2
            for b in range(shape[0])
        ]
        classes = np.clip(np.stack(blobs), 0, 4).astype("uint8")
    names = [f"class{b}" for b in range(shape[0])]
    data = xr.DataArray(classes, dims=("band", "y", "x"), coords={"band": names, **coords})
    return data, {"overview_resampling": "mode", "nodata": 255}


def _cog_writes(peer: bool, threads: int, writes: int, tile_px: int, out: Any) -> None:
    """One process of :func:`bench_cog`'s concurrent part: ``threads`` threads each writing
    ``writes`` COGs, a float tile of 2 bands and a class tile of 3 in turn, both of noise;
    puts (writes, failures, first failure)."""
    import threading

    from pipelines.products import write_cog

    write = peer_write_cog if peer else write_cog
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="terrapipe-bench-cog-") as tmp:

        def work(k: int) -> None:
            for i in range(writes):
                # A new array each write, as a run's writer loads each date's bands.
                kind, bands = (("float", 2), ("classes", 3))[(k + i) % 2]
                data, options = _cog_tile(tile_px, kind, k * writes + i, bands=bands, noise=True)
                try:
                    write(data, os.path.join(tmp, f"{k}-{i % 4}.tif"), **options)
                except Exception as exc:  # counted: what the bench measures
                    failures.append(f"{type(exc).__name__}: {exc} <- {exc.__cause__!r}")

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    out.put((threads * writes, len(failures), failures[0] if failures else None))


def bench_cog(
    tile_px: int = 1024, processes: int = 3, threads: int = 8, writes: int = 200
) -> dict[str, Any]:
    """COG writing, :func:`pipelines.products.write_cog` against its peer
    (:func:`peer_write_cog`, rio-cogeo's ``cog_translate``):

    - one write at a time, on a SYNTHETIC ``tile_px`` tile of each kind (:func:`_cog_tile`):
      best of 3 turns each way (:func:`best_in_turns`), ``speed_vs_peer`` (the peer's time
      over ours) and whether the two files are the same bytes;
    - many at once, as a run's writers and the processes of a worker's tasks write:
      ``processes`` processes (spawned) of ``threads`` threads, each writing ``writes`` COGs of
      256 px, for each writer; the writes that failed, and the first failure."""
    import hashlib
    import multiprocessing

    from pipelines.products import write_cog

    report: dict[str, Any] = {"tile_px": tile_px}
    with tempfile.TemporaryDirectory(prefix="terrapipe-bench-cog-") as tmp:
        for seed, kind in enumerate(("float", "classes")):
            data, options = _cog_tile(tile_px, kind, seed)
            ours, peer = (
                os.path.join(tmp, f"ours-{kind}.tif"),
                os.path.join(tmp, f"peer-{kind}.tif"),
            )
            best = best_in_turns(
                {
                    "ours": lambda: write_cog(data, ours, **options),  # noqa: B023 (called here)
                    "peer": lambda: peer_write_cog(data, peer, **options),  # noqa: B023
                },
                rounds=3,
            )
            t_ours, t_peer = best["ours"], best["peer"]
            digests = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in (ours, peer)}
            report[kind] = {
                "write_s": round(t_ours, 4),
                "peer_write_s": round(t_peer, 4),
                "speed_vs_peer": round(t_peer / t_ours, 3),
                "bytes": os.path.getsize(ours),
                "same_bytes_as_peer": len(digests) == 1,
            }
    context = multiprocessing.get_context("spawn")
    concurrent: dict[str, Any] = {"processes": processes, "threads": threads}
    for name, through_peer in (("ours", False), ("peer", True)):
        queue = context.Queue()
        children = [
            context.Process(target=_cog_writes, args=(through_peer, threads, writes, 256, queue))
            for _ in range(processes)
        ]
        t0 = time.perf_counter()
        for child in children:
            child.start()
        results = [queue.get() for _ in children]
        for child in children:
            child.join()
        first = next((r[2] for r in results if r[2]), None)
        concurrent[name] = {
            "writes": sum(r[0] for r in results),
            "failed": sum(r[1] for r in results),
            "first_failure": first,
            "wall_s": round(time.perf_counter() - t0, 2),
        }
    report["concurrent"] = concurrent
    return report


def _catalog_store(store: str, tiles: int, months: int, dates_per_month: int) -> list[str]:
    """A SYNTHETIC province ``bench`` of one product (``cloud_mask``) with a marker for every
    tile and date (real markers: :func:`~pipelines.products.stac.product_item`, with the
    provenance of a run); its months (``YYYY-MM``)."""
    import pandas as pd

    from pipelines.grid import TileGrid
    from pipelines.products import Provenance, catalog_period, marker_url
    from pipelines.products.stac import product_item, write_marker
    from pipelines.stages import get_stage

    grid = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=1024)
    side = math.ceil(math.sqrt(tiles))
    start = pd.Timestamp("2024-01-01")
    labels = [
        (start + pd.DateOffset(months=m) + pd.Timedelta(days=5 * k)).strftime("%Y-%m-%d")
        for m in range(months)
        for k in range(dates_per_month)
    ]
    stage = get_stage("cloud_mask")
    prov = Provenance(
        stage_versions={stage.name: stage.version},
        input_items={lab: [f"S2A_MSIL2A_{lab.replace('-', '')}_R032_T50QKM"] for lab in labels},
    )
    for i in range(tiles):
        tile = grid.tile(20 + i % side, 400 + i // side)
        for label in labels:
            item = product_item("bench", "cloud_mask", tile, label, stage, {}, prov)
            write_marker(item, marker_url(store, "bench", "cloud_mask", tile.tile_id, label))
    return sorted({catalog_period(lab) for lab in labels})


def _catalog_turns(store: str, periods: list[str], rounds: int) -> dict[str, float]:
    """Best seconds of the last month's update and of the whole rebuild (after one whole
    rebuild, so that both find the catalog of the current layout)."""
    from pipelines.products import build_catalog, update_catalog

    build_catalog(store, "bench")
    return best_in_turns(
        {
            "month": lambda: update_catalog(store, "bench", periods[-1:]),
            "whole": lambda: build_catalog(store, "bench"),
        },
        rounds=rounds,
    )


def bench_catalog(
    tiles: int = 300, months: int = 12, dates_per_month: int = 6, s3_tiles: int = 100
) -> dict[str, Any]:
    """A run's catalog step on a province with a year of markers (SYNTHETIC): the catalogs of
    the run's last month rebuilt (:func:`~pipelines.products.update_catalog`, what a run's
    finalize does) against the whole catalog rebuilt from every marker
    (:func:`~pipelines.products.build_catalog`, what a run did before), on a local store of
    ``tiles`` x ``months`` x ``dates_per_month`` markers (best of 3 turns; whether the two leave
    the same files) and on a local S3 server (moto) holding ``s3_tiles`` x ``months`` x 4."""
    from pipelines.products import update_catalog
    from pipelines.storage import filesystem
    from pipelines.testing.s3 import s3_server

    report: dict[str, Any] = {"data": "SYNTHETIC"}
    with tempfile.TemporaryDirectory(prefix="terrapipe-bench-catalog-") as store:
        periods = _catalog_store(store, tiles, months, dates_per_month)
        root = Path(store, "bench")

        def files() -> dict[str, bytes]:
            paths = [root / "catalog.json", *root.glob("*/collection.json")]
            paths += list(root.glob("*/months/*.json"))
            return {str(f.relative_to(root)): f.read_bytes() for f in sorted(paths)}

        best = _catalog_turns(store, periods, rounds=3)
        whole = files()
        update_catalog(store, "bench", periods[-1:])
        report["local"] = {
            "markers": tiles * months * dates_per_month,
            "markers_of_the_month": tiles * dates_per_month,
            "update_month_s": round(best["month"], 3),
            "rebuild_whole_s": round(best["whole"], 3),
            "speed_vs_whole": round(best["whole"] / best["month"], 1),
            "same_files": files() == whole,
        }
    with (
        tempfile.TemporaryDirectory(prefix="terrapipe-bench-catalog-s3-") as local,
        s3_server("terrapipe-bench") as server,
    ):
        periods = _catalog_store(local, s3_tiles, months, 4)
        store = f"s3://{server.bucket}/store"
        fs, path = filesystem(store)
        fs.put(f"{local}/bench", f"{path}/bench", recursive=True)
        best = _catalog_turns(store, periods, rounds=1)
        report["s3"] = {
            "server": "moto on this machine",
            "markers": s3_tiles * months * 4,
            "update_month_s": round(best["month"], 2),
            "rebuild_whole_s": round(best["whole"], 2),
            "speed_vs_whole": round(best["whole"] / best["month"], 1),
        }
    return report


#: Parts of the bench, in the order they run (``terrapipe bench --only models,agri``).
PARTS = ("stages", "models", "agri", "runs", "rounds", "gapfill", "cog", "catalog")


def run_bench(
    size: str = "bench", seed: int = 0, tile_px: int = 1024, only: tuple[str, ...] = PARTS
) -> dict[str, Any]:
    """The bench: archive (built once), then the parts asked for; results merge into the last
    bench file so parts can be re-measured alone."""
    from pipelines.config import terrapipe_home
    from pipelines.demo import build_archive
    from pipelines.engine.plan import plan_run
    from pipelines.errors import BadInputError

    unknown = [p for p in only if p not in PARTS]
    if unknown or not only:
        raise BadInputError("only", ",".join(only), f"a comma-separated subset of {PARTS}")
    archive = str(terrapipe_home() / "archive" / size)
    build_archive(archive, size=size, seed=seed)
    report: dict[str, Any] = {}
    if results_path().exists():
        try:
            report = json.loads(results_path().read_text())
        except json.JSONDecodeError:
            report = {}
    report.update({"archive": archive, "tile_px": tile_px, "threads": 2})
    with tempfile.TemporaryDirectory(prefix="terrapipe-bench-") as tmp:
        one = bench_config(archive, os.path.join(tmp, "store1"), 1, tile_px)
        plan = plan_run(one, require=None, write=False).plan
        tile_id = plan.tile_ids[0]
        if "stages" in only:
            report["stages"] = bench_stages(plan, one.store, tile_id)
        if "models" in only:
            report["models"] = bench_models(plan, tile_id, tile_px)
        if "agri" in only:
            from pipelines.agri.bench import bench_agri

            report["agri"] = bench_agri(plan, tile_id, archive)
        if "runs" in only:
            # Both runs start from a process that has imported what a run's driver imports
            # (timed apart): else the first run alone would pay this process's imports.
            report["driver_import_s"] = round(import_driver_modules(plan), 3)
            report["run_1_tile"] = bench_run(one)
            # A second 1-tile figure, never replacing the first: the same run on a cluster
            # whose processes have imported the stages (production's long-running cluster).
            again = bench_config(archive, os.path.join(tmp, "store1-running"), 1, tile_px)
            report["run_1_tile_running_cluster"] = bench_run(again, running_cluster=True)
            four = bench_config(archive, os.path.join(tmp, "store4"), 4, tile_px)
            report["run_4_tiles"] = bench_run(four)
            p1 = max(report["run_1_tile"]["peak_rss_mb_per_worker"])
            p4 = max(report["run_4_tiles"]["peak_rss_mb_per_worker"])
            report["peak_rss_ratio_4_vs_1"] = round(p4 / p1, 3) if p1 else None
        if "rounds" in only:
            # A long window needs many dates: the demo archive (every S1 date of four seasons).
            demo = str(terrapipe_home() / "archive" / "demo")
            build_archive(demo, size="demo", seed=seed)
            report["rounds"] = bench_rounds(demo, os.path.join(tmp, "rounds"), tile_px)
            report["rounds_gapfill"] = bench_gapfill_rounds(
                demo, os.path.join(tmp, "rounds-gapfill"), tile_px
            )
        if "gapfill" in only:
            report["gapfill"] = bench_gapfill(tile_px)
        if "cog" in only:
            report["cog"] = bench_cog(tile_px)
        if "catalog" in only:
            report["catalog"] = bench_catalog()
    report["bench_process_peak_rss_mb"] = round(_peak_rss_mb(), 1)
    results_path().parent.mkdir(parents=True, exist_ok=True)
    results_path().write_text(json.dumps(report, indent=1))
    return report


def bench(
    size: str = "bench",
    seed: int = 0,
    tile_px: int = 1024,
    only: str = ",".join(PARTS),
) -> None:
    """Benchmark stages, models, agriculture stages and whole runs; prints JSON."""
    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    print(json.dumps(run_bench(size=size, seed=seed, tile_px=tile_px, only=parts)))
