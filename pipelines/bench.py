"""``terrapipe bench``: throughput, I/O floor, orchestration overhead and memory, as JSON.

Every figure is a ratio against a baseline measured in the same process, because absolute times
on shared machines mean little:

- per stage: output Mpx/s on one bench tile with inputs in memory, and the ratio of its time to
  a streaming pass over the same input bytes (how far from memory bandwidth the stage is);
- the whole run (1 and 4 tiles, fresh LocalCluster each): wall time over its I/O floor (decoding
  the inputs plus encoding the outputs alone), orchestration overhead (wall / stage compute), and
  peak RSS per worker, which must not grow with the number of tiles.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

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


def bench_config(archive: str, store: str, n_tiles: int, tile_px: int = 1024):
    """A province config over ``n_tiles`` (1 or a square number) tiles in the archive centre."""
    import math

    from pyproj import Transformer
    from shapely.geometry import box, mapping, shape
    from shapely.ops import transform

    from pipelines.config import parse_config
    from pipelines.demo import archive_items, open_archive_info
    from pipelines.stages import list_stages

    info = open_archive_info(archive)
    items = {c: archive_items(archive, c) for c in ("sentinel-2-l2a", "sentinel-1-rtc")}
    crs = info["crs"]
    minx, miny, maxx, maxy = info["bbox"]
    size = 10.0 * tile_px
    side = math.isqrt(n_tiles)
    # Centre the tiles where every scene overlaps (orbits leave some scenes partial).
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform
    common = box(minx, miny, maxx, maxy)
    for features in items.values():
        for f in features:
            common = common.intersection(transform(to_crs, shape(f["geometry"])))
    centre = common.centroid
    lo_x = math.floor((centre.x - side * size / 2) / size) * size
    lo_y = math.floor((centre.y - side * size / 2) / size) * size
    inner = box(lo_x + 1, lo_y + 1, lo_x + side * size - 1, lo_y + side * size - 1)
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform
    dates = {c: [f["properties"]["datetime"][:10] for f in fs] for c, fs in items.items()}
    s1 = dates["sentinel-1-rtc"]
    # The window starts at the second SAR date, so that flood_change has a pre-event scene.
    first = s1[1] if len(s1) > 1 else min(dates["sentinel-2-l2a"])
    last = max(dates["sentinel-2-l2a"][-1], s1[-1])
    raw = {
        "province": f"bench{n_tiles}",
        "aoi": mapping(transform(to_wgs84, inner.buffer(-2 * 10.0))),
        "crs": crs,
        "tile_px": tile_px,
        "start": first,
        "end": last,
        "products": list_stages(),
        "stac": {"archive": archive, "max_cloud_cover": 100},
        "store": store,
        "dask": {"n_workers": 2, "threads_per_worker": 1, "gpu_workers": 0},
    }
    return parse_config(raw)


def bench_stages(plan: Any, store: str, tile_id: str) -> dict[str, Any]:
    """Per-stage throughput on one tile, inputs in memory, threaded scheduler (2 threads)."""
    import dask

    from pipelines.run import as_dataset, load_source
    from pipelines.stages.registry import resolve_order, source_inputs

    stages = resolve_order([n for g in plan.groups for n in g.stages])
    values: dict[str, Any] = {}
    with dask.config.set(scheduler="threads", num_workers=2):
        for source in source_inputs(stages):
            values[source] = load_source(plan, source, tile_id).persist()
        out: dict[str, Any] = {}
        for stage in stages:
            inputs = {k: values[k] for k in stage.inputs}
            raw_arrays = [v for k, v in inputs.items() if k in values and hasattr(v, "data")]

            def stream(arrays: list[Any] = raw_arrays) -> None:
                dask.compute(*[(a.data.astype("float32") + 0).sum() for a in arrays])

            def run(s: Any = stage, kw: dict[str, Any] = inputs) -> Any:
                return s.func(**kw).persist()

            t_stream = _timeit(stream)
            t_stage = _timeit(run)
            result = run()
            ds = as_dataset(stage.name, result)
            sizes = [ds[v].size for v in ds.data_vars if {"y", "x"} <= set(ds[v].dims)]
            mpx = max(sizes, default=0) / 1e6
            out[stage.name] = {
                "mpx": round(mpx, 3),
                "seconds": round(t_stage, 3),
                "mpx_s": round(mpx / t_stage, 3) if t_stage else None,
                "stream_seconds": round(t_stream, 4),
                "ratio_to_stream": round(t_stage / t_stream, 2) if t_stream else None,
            }
            values[stage.name] = result
    return out


def bench_run(config: Any) -> dict[str, Any]:
    """One whole run on a fresh LocalCluster: wall, I/O floor, overhead, peak RSS per worker."""
    from operators.dask_cluster import connect, start_cluster, stop_cluster
    from pipelines.plan import read_plan
    from pipelines.run import load_source, run_local

    handle = start_cluster(config.dask)
    try:
        client = connect(handle.address)
        client.wait_for_workers(config.dask.n_workers + config.dask.gpu_workers, timeout=120)
        summary = run_local(config, client, overwrite=True)
        peaks = client.run(_peak_rss_mb)
        # The I/O floor: decode every input of the run alone (no stages) on the same cluster...
        plan = read_plan(summary["plan_url"])
        t0 = time.perf_counter()
        for entry in plan.tiles:
            for source in {s for e in plan.tiles for s, ids in e["scenes"].items() if ids}:
                try:
                    arr = load_source(plan, source, entry["tile_id"])
                except Exception:  # a source without scenes on this tile reads nothing
                    continue
                client.compute((arr.data + 0).sum()).result()
        decode_s = time.perf_counter() - t0
        client.close()
    finally:
        stop_cluster(handle)
    floor = decode_s + summary["write_s"]  # ...plus encoding and writing the outputs alone
    return {
        "tiles": summary["tiles"] // max(len(plan.groups), 1),
        "wall_s": summary["wall_s"],
        "compute_s": summary["compute_s"],
        "decode_s": round(decode_s, 3),
        "encode_write_s": summary["write_s"],
        "ratio_to_io_floor": round(summary["wall_s"] / floor, 2) if floor else None,
        "orchestration_overhead": round(summary["wall_s"] / summary["compute_s"], 2)
        if summary["compute_s"]
        else None,
        "peak_rss_mb_per_worker": sorted(round(v, 1) for v in peaks.values()),
        "products_written": summary["written"],
    }


def run_bench(size: str = "bench", seed: int = 0, tile_px: int = 1024) -> dict[str, Any]:
    """The full bench: archive (built once), per-stage figures, 1- and 4-tile runs."""
    from pipelines.config import terrapipe_home
    from pipelines.demo import build_archive
    from pipelines.plan import make_plan
    from pipelines.run import stac_api_for

    archive = str(terrapipe_home() / "archive" / size)
    build_archive(archive, size=size, seed=seed)
    report: dict[str, Any] = {"archive": archive, "tile_px": tile_px, "threads": 2}
    with tempfile.TemporaryDirectory(prefix="terrapipe-bench-") as tmp:
        one = bench_config(archive, os.path.join(tmp, "store1"), 1, tile_px)
        with stac_api_for(one.stac) as api:
            plan = make_plan(one, api)
        report["stages"] = bench_stages(plan, one.store, plan.tiles[0]["tile_id"])
        report["run_1_tile"] = bench_run(one)
        four = bench_config(archive, os.path.join(tmp, "store4"), 4, tile_px)
        report["run_4_tiles"] = bench_run(four)
    p1 = max(report["run_1_tile"]["peak_rss_mb_per_worker"])
    p4 = max(report["run_4_tiles"]["peak_rss_mb_per_worker"])
    report["peak_rss_ratio_4_vs_1"] = round(p4 / p1, 3) if p1 else None
    report["bench_process_peak_rss_mb"] = round(_peak_rss_mb(), 1)
    results_path().parent.mkdir(parents=True, exist_ok=True)
    results_path().write_text(json.dumps(report, indent=1))
    return report


def bench(
    size: str = "bench",
    seed: int = 0,
    tile_px: int = 1024,
) -> None:
    """Benchmark the stages and a whole run; prints JSON."""
    print(json.dumps(run_bench(size=size, seed=seed, tile_px=tile_px)))
