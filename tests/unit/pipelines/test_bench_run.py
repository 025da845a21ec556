"""The I/O floor of a whole run in ``terrapipe bench``: what its two halves read and write."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from odc.geo.xr import xr_coords

from pipelines import bench
from pipelines.config import STORED_MANTISSA_BITS
from pipelines.engine.graph import product_spec
from pipelines.engine.plan import PlannedTile
from pipelines.errors import NoScenesError
from pipelines.grid import ProvinceGrid, TileGrid
from pipelines.products import (
    cog_url,
    init_cube,
    marker_url,
    quicklook_url,
    read_marker,
    write_tile_product,
)
from pipelines.stages.registry import StageGroup, get_stage

TILE_PX = 32
DATES = ["2024-05-01", "2024-05-13"]


class _Plan:
    """What the floor reads of a plan: tiles and their scenes, groups, dates and grids."""

    province = "demo"
    mantissa_bits = STORED_MANTISSA_BITS

    def __init__(self, pgrid: ProvinceGrid) -> None:
        self.pgrid = pgrid
        a, b = (t.tile_id for t in pgrid.tiles)
        self.tiles = (
            PlannedTile(a, 20, 400, {"s2": ("s2-1",), "s1": (), "dem": ("dem-1",)}),
            PlannedTile(b, 21, 400, {"s2": ("s2-2",), "s1": ("s1-1",), "dem": ("dem-1",)}),
        )
        self.tile_ids = [a, b]
        self.groups = [StageGroup("cpu0", ("water_mask",), {}, "default_pool")]
        self.by_id = dict(zip(self.tile_ids, pgrid.tiles, strict=True))

    def tile_dates(self, stage, tile_id):
        return DATES if tile_id == self.tile_ids[0] else DATES[1:]

    def stage_grid(self, stage):
        return self.pgrid, self.by_id.__getitem__


def _pgrid() -> ProvinceGrid:
    grid = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=TILE_PX)
    return ProvinceGrid(grid=grid, tiles=(grid.tile(20, 400), grid.tile(21, 400)))


def test_decode_reads_each_tiles_sources_in_one_computation_on_the_cluster(monkeypatch):
    from distributed import Client

    from pipelines.engine import graph

    plan = _Plan(_pgrid())
    loaded: list[tuple[str, str]] = []

    def load_source(plan, source, tile_id):
        loaded.append((source, tile_id))
        if source == "dem" and tile_id == plan.tile_ids[1]:
            raise NoScenesError("none of the items intersects the grid")
        return xr.DataArray(da.ones((2, 8, 8), chunks=(1, 8, 8)), dims=("time", "y", "x"))

    monkeypatch.setattr(graph, "load_source", load_source)
    cluster = {"n_workers": 1, "threads_per_worker": 2, "dashboard_address": ":0"}
    with Client(processes=False, set_as_default=False, **cluster) as client:
        submitted: list[int] = []
        compute = client.compute

        def counted(collections, **kw):
            submitted.append(len(collections))
            return compute(collections, **kw)

        monkeypatch.setattr(client, "compute", counted)
        assert bench.decode_inputs(plan, client) > 0  # type: ignore[arg-type]
    # s1 has no scene on tile a; a source whose items miss the tile reads nothing
    a, b = plan.tile_ids
    assert loaded == [("s2", a), ("dem", a), ("s2", b), ("s1", b), ("dem", b)]
    assert submitted == [2, 2]  # one computation per tile, every source of it at once


def test_encode_write_alone_writes_the_runs_products_again_byte_for_byte(tmp_path: Path):
    pgrid = _pgrid()
    plan = _Plan(pgrid)
    stage = get_stage("water_mask")
    store, scratch = str(tmp_path / "store"), str(tmp_path / "rewrite")
    classes = {"long_name": "water class", "flag_values": [0, 1, 2]}
    init_cube(store, "demo", "water_mask", pgrid, DATES, {"water_mask": ("uint8", 0, classes)})
    rng = np.random.default_rng(0)
    for tile_id in plan.tile_ids:  # the run's writes
        labels = plan.tile_dates(stage, tile_id)
        tile = plan.by_id[tile_id]
        coords = xr_coords(tile.geobox)
        values = rng.integers(0, 3, size=(len(labels), TILE_PX, TILE_PX), dtype="uint8")
        data = xr.Dataset(
            {"water_mask": (("time", "y", "x"), values)},
            coords={"time": pd.to_datetime(labels).values, "y": coords["y"], "x": coords["x"]},
        )
        write_tile_product(
            store,
            "demo",
            "water_mask",
            pgrid,
            tile,
            data,
            stage=stage,
            spec=product_spec(stage, plan.mantissa_bits),
        )

    assert bench.encode_write_alone(plan, store, scratch) > 0  # type: ignore[arg-type]
    for tile_id in plan.tile_ids:
        for label in plan.tile_dates(stage, tile_id):
            for url in (cog_url, quicklook_url):
                ran = Path(url(store, "demo", "water_mask", tile_id, label)).read_bytes()
                again = Path(url(scratch, "demo", "water_mask", tile_id, label)).read_bytes()
                assert again == ran, (tile_id, label, url.__name__)
            assert read_marker(marker_url(scratch, "demo", "water_mask", tile_id, label))


def test_the_driver_imports_its_plans_stage_modules_before_the_timed_runs():
    import sys

    plan = _Plan(_pgrid())
    assert bench.import_driver_modules(plan) >= 0  # type: ignore[arg-type]
    for name in [*bench.DRIVER_MODULES, "pipelines.stages.water"]:
        assert name in sys.modules


def test_the_floor_writes_a_tiles_products_at_once_as_the_run_does(tmp_path: Path, monkeypatch):
    """Two products of a tile are rewritten by two threads at once (each write waits for the
    other to start), tile after tile: the floor's write half as fast as the run's writer."""
    import threading

    from pipelines import products

    pgrid = _pgrid()
    plan = _Plan(pgrid)
    plan.groups = [StageGroup("cpu0", ("water_mask", "cloud_mask"), {}, "default_pool")]
    store, scratch = str(tmp_path / "store"), str(tmp_path / "rewrite")
    for name in ("water_mask", "cloud_mask"):
        init_cube(store, "demo", name, pgrid, DATES, {name: ("uint8", 0, {"long_name": name})})
    both = threading.Barrier(2, timeout=30)
    written: list[tuple[str, str]] = []

    def write(scratch, province, name, grid, tile, data, **kw):
        both.wait()  # BrokenBarrierError when the other product of the tile is not written too
        written.append((tile.tile_id, name))

    monkeypatch.setattr(products, "write_tile_product", write)
    assert bench.encode_write_alone(plan, store, scratch, threads=2) > 0  # type: ignore[arg-type]
    a, b = plan.tile_ids
    assert sorted(written) == sorted((t, n) for t in (a, b) for n in ("water_mask", "cloud_mask"))
    assert {t for t, _ in written[:2]} == {a}  # tile after tile


def test_a_run_on_a_running_cluster_starts_once_its_imports_are_done(monkeypatch):
    """The second 1-tile figure: the run starts only once the cluster's scheduler and workers
    have finished their preload; each figure says what its wall includes."""
    import operators.dask_cluster as dask_cluster
    from pipelines.config import DaskConfig
    from pipelines.engine import plan as plan_module
    from pipelines.engine import run

    calls: list[str] = []

    class Client:
        def wait_for_workers(self, n, timeout):
            calls.append("registered")

        def run(self, fn):
            return {"w1": 400.0}

        def close(self):
            pass

    class Config:
        dask = DaskConfig(n_workers=1, threads_per_worker=1, gpu_workers=0)
        store = "/nowhere"

    summary = {"plan_url": "u", "tiles": 1, "wall_s": 9.0, "compute_s": 3.0, "plan_s": 0.2}
    summary.update({"write_s": 4.0, "written": 12})
    plan = _Plan(_pgrid())
    plan.groups = [StageGroup("cpu0", ("water_mask",), {}, "default_pool")]
    monkeypatch.setattr(
        dask_cluster, "start_cluster", lambda config: dask_cluster.ClusterHandle("tcp:x")
    )
    monkeypatch.setattr(dask_cluster, "stop_cluster", lambda handle: calls.append("stopped"))
    monkeypatch.setattr(dask_cluster, "connect", lambda address: Client())
    monkeypatch.setattr(dask_cluster, "wait_prepared", lambda client: calls.append("prepared"))
    monkeypatch.setattr(run, "run_local", lambda *a, **k: calls.append("run") or summary)
    monkeypatch.setattr(plan_module, "read_plan", lambda url: plan)
    monkeypatch.setattr(bench, "decode_inputs", lambda plan, client: 2.0)
    monkeypatch.setattr(bench, "encode_write_alone", lambda plan, store, scratch: 4.0)

    @contextlib.contextmanager
    def task_stream(client):
        records: list[dict] = []
        yield records
        now = time.time()
        records.append({"startstops": [{"start": now - 2.0, "stop": now - 1.0}]})

    monkeypatch.setattr(bench, "task_stream", task_stream)

    running = bench.bench_run(Config(), running_cluster=True)  # type: ignore[arg-type]
    assert calls == ["registered", "prepared", "run", "stopped"]
    calls.clear()
    fresh = bench.bench_run(Config())  # type: ignore[arg-type]
    assert calls == ["registered", "run", "stopped"]
    assert running["ratio_to_io_floor"] == fresh["ratio_to_io_floor"] == 1.5
    assert running["wall_includes"] == bench.WALL_INCLUDES[True] != fresh["wall_includes"]
    assert "not included" in fresh["wall_includes"]
    assert fresh["first_task_s"] < fresh["last_task_s"]


def test_the_task_span_runs_from_the_first_start_to_the_last_stop():
    records = [
        {"startstops": [{"action": "compute", "start": 105.0, "stop": 107.5}]},
        {"startstops": [{"action": "transfer", "start": 103.0, "stop": 103.5}]},
        {"startstops": [{"action": "compute", "start": 104.0, "stop": 109.0}]},
    ]
    assert bench.task_span(records, since=100.0) == (3.0, 9.0)
    assert bench.task_span([], since=100.0) is None


@pytest.mark.slow
def test_the_rounds_bench_runs_a_seasons_flood_change_three_ways_to_the_same_cube(
    tiny_archive: Path, tmp_path: Path, monkeypatch
):
    """`terrapipe bench --only rounds`: the latest season's flood_change on one tile, against
    one event's reference and month by month, in rounds with the tile constants held,
    recomputed each round and in one round; the three cubes of each are the same to the bit,
    and a month's reference is held only from its first round to its last."""
    from pipelines.engine import run

    monkeypatch.setattr(run, "DATES_PER_ROUND", 4)  # the tiny archive's season in rounds
    report = bench.bench_rounds(str(tiny_archive), str(tmp_path), tile_px=128)
    assert report["pre_event_dates"] >= 2 and report["dates"] > 2 * report["dates_per_round"]
    assert report["window"][0] == "2025-03-31"  # the season's first S1 date + 30 days
    for mode in ("event", "months"):
        assert report[mode]["identical"] is True
        for way in ("held", "recomputed_each_round", "one_round"):
            assert report[mode][f"{way}_s"] > 0
    # One event's reference is read by every round, and held through all of them; a month's
    # reference only from the first round that reads it to the last.
    event, months = report["event"]["held_mib_by_round"], report["months"]["held_mib_by_round"]
    assert len(event) == math.ceil(report["dates"] / 4) and len(months) == len(event)
    assert set(event) == {report["event"]["shared_mib"]} and event[0] > 0
    assert 0 < max(months) < report["months"]["shared_mib"]


@pytest.mark.slow
def test_the_gap_filling_rounds_bench_reads_what_one_round_reads(
    tiny_archive: Path, tmp_path: Path, monkeypatch
):
    """`terrapipe bench --only rounds` (``rounds_gapfill``): cloud_mask and ndvi_gapfilled
    on one tile over the latest months, in rounds and in one round: the same cubes, and the
    rounds read each date and band once, as one round does (the cloud mask held with the gap
    filling, not computed again in each round)."""
    from pipelines.engine import run

    monkeypatch.setattr(run, "DATES_PER_ROUND", 2)  # the tiny archive's months in rounds
    report = bench.bench_gapfill_rounds(str(tiny_archive), str(tmp_path), tile_px=128, months=3)
    assert report["products_written"] > 2 * 2 * report["dates_per_round"]
    assert report["identical"] is True
    assert report["rounds_s"] > 0 and report["one_round_s"] > 0
    assert report["rounds_block_reads"] == report["one_round_block_reads"] > 0


def test_cubes_differ_by_one_value_or_by_an_array(tmp_path: Path):
    import zarr

    def cube(path: Path, values: np.ndarray, extra: bool = False) -> str:
        group = zarr.open_group(str(path), mode="w")
        group.create_array("a", data=values)
        if extra:
            group.create_array("b", data=values)
        return str(path)

    base = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    tmp = tmp_path
    a = cube(tmp / "a", base)
    assert bench._cube_equal(a, cube(tmp / "same", base.copy()))
    assert not bench._cube_equal(a, cube(tmp / "changed", base + 1))
    assert not bench._cube_equal(a, cube(tmp / "extra", base, extra=True))
