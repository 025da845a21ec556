"""The runner's manifests (XCom of the mapped tasks) and the read-error classes it raises."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

from pipelines.engine.manifest import BatchManifest, TileResult, Totals, summarize
from pipelines.errors import BadInputError, TransientIOError
from pipelines.load import classify_read_error


def test_a_batch_manifest_sums_its_tiles_and_serialises_the_same_keys():
    results = [
        TileResult("t0", written={"a": ["d1", "d2"], "b": ["d1"]}, compute_s=1.23449),
        TileResult("t1", skipped={"a": ["d1"]}, no_scenes=["none"], bytes_written=7),
    ]
    manifest = BatchManifest.of("cpu0", 3, results)
    assert manifest.to_xcom() == {
        "group": "cpu0",
        "batch": 3,
        "tiles": 2,
        "written": 3,
        "skipped": 1,
        "no_scenes": 1,
        "bytes_written": 7,
        "compute_s": 1.234,
        "write_s": 0.0,
    }
    assert Totals.from_xcom(manifest.to_xcom()) == manifest.totals


def test_run_totals_read_any_batch_manifest():
    season_batch = {"batch": 0, "tiles": 2, "written": 1, "skipped": 1, "parcels": 40}
    production = BatchManifest.of("cpu0", 0, [TileResult("t", compute_s=0.5)]).to_xcom()
    totals = summarize([Totals.from_xcom(season_batch), Totals.from_xcom(production)])
    assert totals == Totals(tiles=3, written=1, skipped=1, compute_s=0.5)


def test_read_errors_are_classified_transient_or_bad_file():
    flaky = RuntimeError("RasterioIOError: Error opening 's3://b/x.tif': HTTP response code: 503")
    assert isinstance(classify_read_error(flaky), TransientIOError)
    corrupt = RuntimeError("Error opening '/data/red.tif': not recognized as a supported format")
    bad = classify_read_error(corrupt)
    assert isinstance(bad, BadInputError) and "/data/red.tif" in str(bad)
    other = ValueError("a bug")
    assert classify_read_error(other) is other


# ---- the runner's fixed costs: each product written as it is computed, graphs built once ----


class _Plan:
    """What the runner's write path reads of a plan: the province, grids, items and the
    mantissa bits of stored floats."""

    province = "p"
    mantissa_bits = 13

    def stage_grid(self, stage):
        return "grid", lambda tile_id: f"tile {tile_id}"

    def tile_scenes(self, tile_id):
        return {"s1": ("S1_VH",)}

    def items_for(self, source, tile_id):
        if source != "s1":
            return []
        props = {"datetime": "2024-05-03T00:00:00Z"}
        return [{"id": "S1_VH", "properties": props, "assets": {"vh": {"href": "/data/vh.tif"}}}]


def _dataset(label: str):
    import numpy as np
    import pandas as pd
    import xarray as xr

    time = pd.DatetimeIndex([label])
    return xr.Dataset({"v": (("time", "y", "x"), np.zeros((1, 2, 2), "float32"))}, {"time": time})


_FIRST_WRITTEN = threading.Event()


def _late():
    """A product that is computed only once the first one has been written."""
    if not _FIRST_WRITTEN.wait(30):
        raise RuntimeError("the first product was not written while this one computed")
    return _dataset("2024-05-02")


def _unreadable():
    raise RuntimeError("RasterioIOError: Error opening '/data/vh.tif': not a raster")


def test_each_product_is_written_while_the_cluster_computes_the_others(monkeypatch):
    """The first product done is written before the last is computed (the last waits for that
    write); a product whose read fails is recorded as failed, the others are written."""
    from distributed import Client

    from pipelines import products
    from pipelines.engine import run

    _FIRST_WRITTEN.clear()
    order: list[str] = []

    def write(store, province, name, grid, tile, ds, **kw):
        order.append(name)
        if name == "cloud_mask":
            _FIRST_WRITTEN.set()
        return {"written": [str(ds["time"].values[0])[:10]], "bytes_written": 10}

    monkeypatch.setattr(products, "write_tile_product", write)
    cluster = {"n_workers": 1, "threads_per_worker": 3, "dashboard_address": ":0"}
    with Client(processes=False, set_as_default=False, **cluster) as c:  # as terrapipe connects
        futures = {
            "haze_index": c.submit(_late, pure=False),
            "cloud_mask": c.submit(_dataset, "2024-05-01", pure=False),
            "water_mask": c.submit(_unreadable, pure=False),
        }
        pending = {"cloud_mask": ["2024-05-01"], "haze_index": ["2024-05-02"], "water_mask": ["x"]}
        result = TileResult("t")
        run.write_as_completed(_Plan(), "store", "t", futures, pending, result, False, 0.0)
    assert order == ["cloud_mask", "haze_index"]
    assert result.written == {"cloud_mask": ["2024-05-01"], "haze_index": ["2024-05-02"]}
    assert result.bytes_written == 20
    assert [(f.product, f.kind) for f in result.failed] == [("water_mask", "bad_input")]
    assert "item 'S1_VH'" in str(result.errors[0])  # the failed file's item, of the tile's scenes
    assert result.compute_s >= 0 and result.write_s >= 0


def test_two_products_of_a_tile_are_written_at_once(monkeypatch):
    """With two write threads, one product's write is still running when the other's starts
    (each waits for the other); a failed write is recorded as that product's failure."""
    from distributed import Client

    from pipelines import products
    from pipelines.engine import run

    started = {"cloud_mask": threading.Event(), "haze_index": threading.Event()}
    other = {"cloud_mask": "haze_index", "haze_index": "cloud_mask"}

    def write(store, province, name, grid, tile, ds, **kw):
        if name == "water_mask":
            raise OSError("disk full")
        started[name].set()
        if not started[other[name]].wait(30):
            raise RuntimeError(f"{name} was written alone")
        return {"written": [str(ds["time"].values[0])[:10]], "bytes_written": 5}

    monkeypatch.setattr(products, "write_tile_product", write)
    assert run.write_threads() >= 1
    with Client(processes=False, set_as_default=False, n_workers=1, dashboard_address=":0") as c:
        futures = {
            n: c.submit(_dataset, "2024-05-01", pure=False)
            for n in ("cloud_mask", "haze_index", "water_mask")
        }
        pending = {n: ["2024-05-01"] for n in futures}
        result = TileResult("t")
        run.write_as_completed(_Plan(), "s", "t", futures, pending, result, False, 0.0, threads=2)
    assert result.written == {"cloud_mask": ["2024-05-01"], "haze_index": ["2024-05-01"]}
    assert [(f.product, f.kind) for f in result.failed] == [("water_mask", "error")]
    assert result.write_s > 0 and result.compute_s >= 0


def test_products_pinned_to_workers_that_all_left_fail_as_transient(monkeypatch):
    """A product whose tasks are pinned to workers that are all gone waits for ever on the
    scheduler: it is failed as transient once the driver sees it (its future cancelled), while
    the products computed elsewhere are written."""
    from distributed import Client

    from pipelines import products
    from pipelines.engine import run
    from pipelines.errors import TransientIOError

    monkeypatch.setattr(run, "DONE_POLL_S", 0.2)
    monkeypatch.setattr(
        products,
        "write_tile_product",
        lambda *a, **kw: {"written": ["2024-05-01"], "bytes_written": 1},
    )
    gone = frozenset({"tcp://192.0.2.1:40001", "tcp://192.0.2.1:40002"})
    with Client(processes=False, set_as_default=False, n_workers=1, dashboard_address=":0") as c:
        here = frozenset(c.scheduler_info(n_workers=-1)["workers"])
        assert run.workers_left(c, [here]) is None
        assert run.workers_left(c, []) is None
        reason = run.workers_left(c, [here, gone])
        assert reason is not None and "all 2 Dask worker(s)" in reason and "40001" in reason
        futures = {
            "cloud_mask": c.submit(_dataset, "2024-05-01", pure=False),
            "water_mask": c.submit(
                _dataset, "2024-05-01", workers=sorted(gone), allow_other_workers=False, pure=False
            ),
        }
        pending = {n: ["2024-05-01"] for n in futures}
        result = TileResult("t")
        run.write_as_completed(
            _Plan(),
            "s",
            "t",
            futures,
            pending,
            result,
            False,
            0.0,
            stranded=lambda: run.workers_left(c, [gone]),
        )
        assert futures["water_mask"].cancelled()
    assert result.written == {"cloud_mask": ["2024-05-01"]}
    assert [(f.product, f.kind) for f in result.failed] == [("water_mask", "transient")]
    assert isinstance(result.errors[0], TransientIOError)


def test_a_product_leaves_the_cluster_before_it_is_written(monkeypatch):
    """The driver holds a product once fetched: the cluster forgets it before the write starts
    (the write is the long part), not after, so a tile computed ahead does not sit beside it
    on the workers."""
    import time

    from distributed import Client

    from pipelines import products
    from pipelines.engine import run

    seen: dict[str, bool] = {}

    with Client(processes=False, set_as_default=False, n_workers=1, dashboard_address=":0") as c:
        scheduler = c.cluster.scheduler
        futures = {"cloud_mask": c.submit(_dataset, "2024-05-01", pure=False)}
        key = futures["cloud_mask"].key

        def write(store, province, name, grid, tile, ds, **kw):
            deadline = time.monotonic() + 10
            while key in scheduler.tasks and time.monotonic() < deadline:
                time.sleep(0.01)
            seen[name] = key in scheduler.tasks
            return {"written": ["2024-05-01"], "bytes_written": 1}

        monkeypatch.setattr(products, "write_tile_product", write)
        result = TileResult("t")
        run.write_as_completed(
            _Plan(), "s", "t", futures, {"cloud_mask": ["2024-05-01"]}, result, False, 0.0
        )
    assert seen == {"cloud_mask": False}
    assert result.written == {"cloud_mask": ["2024-05-01"]}


def test_group_graphs_built_to_prepare_the_cubes_are_reused_by_their_tiles(monkeypatch, tmp_path):
    from pipelines import products
    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    own = StageGroup("cpu0", ("cloud_mask", "haze_index"), {}, "default_pool")
    reads_cube = StageGroup("cpu1", ("dehaze",), {}, "default_pool")  # haze_index from its cube
    assert run.self_contained(own) and not run.self_contained(reads_cube)

    class Plan(_Plan):
        def __init__(self):
            self.groups = [own, reads_cube]
            self.tile_ids = ["t0", "t1"]
            self.batches = [["t0", "t1"]]
            self.dates = {"cloud_mask": ["2024-05-01"], "haze_index": ["2024-05-01"], "dehaze": []}
            self.stage_versions = {"cloud_mask": "1", "haze_index": "1", "dehaze": "1"}

    built: list[tuple[str, str]] = []
    events: list[str] = []

    def build(plan, store, group, tile_id):
        built.append((group.name, tile_id))
        return {n: _dataset("2024-05-01") for n in group.stages}, {}

    monkeypatch.setattr(run, "build_group_graph", build)
    monkeypatch.setattr(products, "init_cube", lambda s, p, name, *a, **kw: events.append(name))
    graphs: run.GraphCache = {}

    def on_graph(group, tile_id):
        events.append(f"graph {group.name} {tile_id}")

    run.prepare_products(Plan(), str(tmp_path), graphs=graphs, on_graph=on_graph)
    assert built == [("cpu0", "t0"), ("cpu1", "t0")]
    # the run may start computing a kept graph's tile before the cubes are created
    assert events == ["graph cpu0 t0", "cloud_mask", "haze_index", "dehaze"]
    assert list(graphs) == [("cpu0", "t0")]  # not the group that reads a cube

    given: list[tuple[str, str, bool]] = []

    def submit(plan, store, group, tile_id, client, overwrite=False, graph=None, lock_wait_s=0):
        given.append((group.name, tile_id, graph is not None))
        return _submitted(tile_id)

    monkeypatch.setattr(run, "submit_tile", submit)
    monkeypatch.setattr(run, "finish_tile", lambda plan, store, sub, overwrite=False: sub.result)
    run.process_batch(Plan(), str(tmp_path), "cpu0", 0, None, graphs=graphs)  # type: ignore[arg-type]
    assert given == [("cpu0", "t0", True), ("cpu0", "t1", False)]
    assert graphs == {}  # each graph is used once


def _submitted(tile_id: str, events: list[str] | None = None):
    """A submitted tile without computations; its lock's release is recorded in ``events``."""
    from contextlib import ExitStack

    from pipelines.engine import run

    lock = ExitStack()
    if events is not None:
        lock.callback(events.append, f"release {tile_id}")
    return run.SubmittedTile(tile_id, TileResult(tile_id), {}, {}, 0.0, lock)


def _pipeline_events(monkeypatch, busy: set[str] = frozenset()):  # type: ignore[assignment]
    """The runner with submit/finish recorded: a tile in ``busy`` has its lock held elsewhere
    (free again for a waiting submission)."""
    from pipelines.engine import run
    from pipelines.errors import BadInputError

    events: list[str] = []

    def submit(plan, store, group, tile_id, client, overwrite=False, graph=None, lock_wait_s=None):
        if tile_id in busy and lock_wait_s == 0:
            events.append(f"busy {tile_id}")
            raise BadInputError(f"lock tile-{tile_id}", "held by another run", "a free lock")
        events.append(
            f"submit {tile_id} wait={'default' if lock_wait_s is None else f'{lock_wait_s:g}'}"
        )
        return _submitted(tile_id, events)

    def finish(plan, store, submitted, overwrite=False):
        events.append(f"write {submitted.tile_id}")
        submitted.lock.close()
        return submitted.result

    monkeypatch.setattr(run, "submit_tile", submit)
    monkeypatch.setattr(run, "finish_tile", finish)
    return events


def test_each_tile_is_computed_while_the_one_before_it_is_written(monkeypatch):
    """The next tile is submitted (its lock taken without waiting) before the current one is
    written; one tile at most ahead; through batches when the run shares its pipeline."""
    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    events = _pipeline_events(monkeypatch)
    group = StageGroup("cpu0", ("cloud_mask",), {}, "default_pool")

    class Plan(_Plan):
        groups = (group,)
        batches = (("t0", "t1"), ("t2",))

    plan = Plan()
    with run.TilePipeline(plan, "s", group, None, ["t0", "t1", "t2"]) as pipe:  # type: ignore[arg-type]
        for index in range(2):
            run.process_batch(plan, "s", "cpu0", index, None, pipeline=pipe)  # type: ignore[arg-type]
    assert events == [
        "submit t0 wait=default",
        "submit t1 wait=0",
        "write t0",
        "release t0",
        "submit t2 wait=0",  # the next batch's tile, while this batch's last is written
        "write t1",
        "release t1",
        "write t2",
        "release t2",
    ]


def test_a_tile_locked_elsewhere_is_not_waited_for_ahead_but_in_its_turn(monkeypatch):
    """A run holding one tile never waits for a second (two runs cannot wait on each other);
    a tile left submitted ahead when the run stops is dropped, its lock released."""
    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    events = _pipeline_events(monkeypatch, busy={"t1"})
    group = StageGroup("cpu0", ("cloud_mask",), {}, "default_pool")
    with run.TilePipeline(_Plan(), "s", group, None, ["t0", "t1", "t2"]) as pipe:  # type: ignore[arg-type]
        pipe.process("t0")
        pipe.process("t1")
    assert events == [
        "submit t0 wait=default",
        "busy t1",
        "write t0",
        "release t0",
        "submit t1 wait=default",  # its own turn waits for the lock, as process_tile does
        "submit t2 wait=0",
        "write t1",
        "release t1",
        "release t2",  # submitted ahead, never written: dropped on close
    ]


_RELEASE = threading.Event()


def _held() -> bool:
    """A computation that runs until the test releases it."""
    return _RELEASE.wait(30)


def test_a_dropped_tile_cancels_its_computations_and_releases_its_lock(tmp_path):
    """SubmittedTile.cancel with a real tile lock: another run takes the tile at once after."""
    from distributed import Client

    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    class Plan(_Plan):
        def tile_dates(self, stage, tile_id):
            return []  # nothing to compute: the lock alone

    group = StageGroup("cpu0", ("cloud_mask",), {}, "default_pool")
    store = str(tmp_path)
    with Client(processes=False, set_as_default=False, n_workers=1, dashboard_address=":0") as c:
        submitted = run.submit_tile(Plan(), store, group, "t0", c, lock_wait_s=0.0)  # type: ignore[arg-type]
        slow = c.submit(_held, pure=False)
        submitted.futures = {"cloud_mask": slow}
        with pytest.raises(BadInputError):  # held: a second taker is refused at once
            run.submit_tile(Plan(), store, group, "t0", c, lock_wait_s=0.0)  # type: ignore[arg-type]
        submitted.cancel()
        _RELEASE.set()  # the worker thread (a cancelled task that runs finishes unheard)
        assert slow.cancelled()
        again = run.submit_tile(Plan(), store, group, "t0", c, lock_wait_s=0.0)  # type: ignore[arg-type]
        assert run.finish_tile(Plan(), store, again) == TileResult("t0", skipped={"cloud_mask": []})  # type: ignore[arg-type]


def test_workers_start_importing_the_plans_stage_modules_without_the_run_waiting():
    import sys

    from pipelines import load
    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    class Plan(_Plan):
        groups = (StageGroup("cpu1", ("dehaze", "water_mask"), {}, "default_pool"),)

    modules = run.stage_modules(Plan())
    readers = len(load.READ_MODULES)
    assert modules[:readers] == ["pipelines.load", "stackstac", "rasterio", "pyflwdir"]
    # dehaze reads haze_index, which reads cloud_mask: every stage the plan runs or reads
    assert set(modules[readers:]) == {
        "pipelines.stages.cloud_mask",
        "pipelines.stages.haze",
        "pipelines.stages.dehaze",
        "pipelines.stages.water",
    }
    assert load.import_modules(["pipelines.stages.water"]) == 1
    assert "pipelines.stages.water" in sys.modules

    from distributed import Client

    cluster = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    with Client(processes=False, set_as_default=False, **cluster) as client:
        sender = run.warm_workers(client, modules)  # returns at once: sent from a thread
        sender.join(60)
        assert not sender.is_alive()  # the worker answered at once: it imports in a thread
        assert client.submit(lambda: 1).result() == 1


def test_the_scheduler_is_sent_the_plans_modules_too():
    """The scheduler unpickles each graph, importing its task functions' modules: it is sent
    the plan's stage and reader modules with the workers, from the warming thread."""
    from pipelines import load
    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    class Plan(_Plan):
        groups = (StageGroup("cpu1", ("water_mask",), {}, "default_pool"),)

    sent: list[tuple[str, object, list[str]]] = []

    class Client:
        def run(self, fn, modules, wait=True):
            sent.append(("workers", fn, modules))

        def run_on_scheduler(self, fn, modules):
            sent.append(("scheduler", fn, modules))

    modules = run.stage_modules(Plan())
    run.warm_workers(Client(), modules).join(60)  # type: ignore[arg-type]
    assert sent == [
        ("workers", load.import_in_background, modules),
        ("scheduler", load.import_in_background, modules),
    ]


def test_a_run_warms_the_cluster_with_its_products_modules_before_it_plans(monkeypatch):
    """``run_local`` sends the modules of the configured products (and of the stages they
    read, as the plan will run them) before taking its lock and planning."""
    from pipelines.engine import run

    order: list[object] = []

    class Config:
        products = ("dehaze",)

    monkeypatch.setattr(run, "warm_workers", lambda client, modules: order.append(modules))

    def plan_run(config, require):
        order.append("planned")
        raise RuntimeError("stop here")

    monkeypatch.setattr(run, "run_lock", lambda config, wait_s: contextlib.nullcontext())
    monkeypatch.setattr(run, "plan_run", plan_run)
    with pytest.raises(RuntimeError, match="stop here"):
        run.run_local(Config(), client=None)  # type: ignore[arg-type]
    assert order == [run.product_modules(["dehaze"]), "planned"]
    assert {"pipelines.stages.cloud_mask", "pipelines.stages.haze"} <= set(order[0])


def test_a_tile_started_early_is_computed_once_and_written_in_its_turn(monkeypatch):
    """run_local starts the first tile while the cubes are created (TilePipeline.start): its
    turn takes that submission instead of submitting it again."""
    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    events = _pipeline_events(monkeypatch)
    group = StageGroup("cpu0", ("cloud_mask",), {}, "default_pool")
    with run.TilePipeline(_Plan(), "s", group, None, ["t0", "t1"]) as pipe:  # type: ignore[arg-type]
        assert pipe.start("t0")
        assert pipe.start("t1") is False  # one tile ahead at most
        events.append("cubes created")
        pipe.process("t0")
        pipe.process("t1")
    assert events == [
        "submit t0 wait=0",
        "cubes created",
        "submit t1 wait=0",
        "write t0",
        "release t0",
        "write t1",
        "release t1",
    ]


def test_a_tiles_lock_waits_as_long_as_the_module_says_at_the_call(monkeypatch):
    """TILE_LOCK_WAIT_S is read when the lock is taken (a task or a test may lower it)."""
    from pipelines.engine import run
    from pipelines.products import lock

    asked: list[float] = []
    monkeypatch.setattr(lock, "store_lock", lambda *a, wait_s: asked.append(wait_s))
    monkeypatch.setattr(run, "TILE_LOCK_WAIT_S", 0.5)
    run.tile_lock("s", "p", "t0")
    run.tile_lock("s", "p", "t0", wait_s=0.0)
    assert asked == [0.5, 0.0]


def test_a_flood_date_lists_the_reference_scenes_of_its_own_track():
    """A flood_change marker lists the scenes its date was compared with: those of its own
    track in its reference window (both frames of a two-frame day), or all of them for a track
    without a reference scene of its own."""
    from pipelines.engine.plan import PlannedTile, RunPlan
    from pipelines.engine.run import provenance
    from pipelines.stages.registry import get_stage, plan_groups, resolve_order

    def item(item_id: str, day: str, track: int) -> dict[str, Any]:
        stamp = f"{day}T10:00:00Z"
        return {"id": item_id, "properties": {"datetime": stamp, "sat:relative_orbit": track}}

    pre = [item("a1", "2025-02-05", 1), item("a2", "2025-02-17", 1), item("a2b", "2025-02-17", 1)]
    pre += [item("b1", "2025-02-23", 2), item("old", "2025-01-20", 2)]
    post = [item("pb", "2025-03-05", 2), item("pa", "2025-03-11", 1), item("pc", "2025-03-17", 3)]
    stages = resolve_order(["flood_change"])
    ids = lambda items: tuple(d["id"] for d in items)  # noqa: E731
    plan = RunPlan(
        province="p",
        config={"province": "p"},
        window=("2025-03-01", "2025-03-31"),
        crs="EPSG:32650",
        resolution=10.0,
        tile_px=64,
        tiles=(PlannedTile("t", 0, 0, {"s1_pre": ids(pre), "s1_post": ids(post), "dem": ()}),),
        batches=[["t"]],
        groups=plan_groups(stages),
        stage_versions={s.name: s.version for s in stages},
        dates={"flood_change": ["2025-03-05", "2025-03-11", "2025-03-17"]},
        items={"s1_pre": pre, "s1_post": post, "dem": []},
    )
    listed = provenance(plan, get_stage("flood_change"), "t", plan.dates["flood_change"])
    assert listed.input_items == {
        "2025-03-05": ["b1", "pb"],
        "2025-03-11": ["a1", "a2", "a2b", "pa"],
        "2025-03-17": ["a1", "a2", "a2b", "b1", "pc"],
    }


def test_date_rounds_split_each_products_dates_in_order():
    from pipelines.engine.run import date_rounds
    from pipelines.errors import BadInputError

    pending = {"haze_index": ["d1", "d2", "d3", "d4", "d5"], "water_mask": ["s1", "s2"]}
    assert date_rounds(pending, 2) == [
        {"haze_index": ["d1", "d2"], "water_mask": ["s1", "s2"]},
        {"haze_index": ["d3", "d4"]},
        {"haze_index": ["d5"]},
    ]
    assert date_rounds(pending, 5) == [pending]
    assert date_rounds({}, 2) == [] and date_rounds({"x": []}, 2) == []
    with pytest.raises(BadInputError, match="size"):
        date_rounds(pending, 0)


@pytest.mark.slow
def test_a_whole_window_product_is_held_with_the_products_it_reads():
    """A tile in rounds holds the products whose dates are computed together (one time chunk)
    and the pending products of its group they read; not the others, and nothing when no
    whole-window product is pending."""
    import dask.array as da
    import xarray as xr

    from pipelines.engine import run

    def product(time_chunk: int) -> xr.Dataset:
        data = da.zeros((3, 2, 2), chunks=(time_chunk, 2, 2))
        return xr.Dataset({"v": (("time", "y", "x"), data)})

    outputs = {"cloud_mask": product(1), "water_mask": product(1), "ndvi_gapfilled": product(3)}
    pending = ["cloud_mask", "water_mask", "ndvi_gapfilled"]
    assert run.window_products(pending, outputs) == ["cloud_mask", "ndvi_gapfilled"]
    assert run.window_products(["water_mask", "ndvi_gapfilled"], outputs) == ["ndvi_gapfilled"]
    assert run.window_products(["cloud_mask", "water_mask"], outputs) == []


@pytest.mark.slow
def test_a_tile_computed_in_rounds_of_dates_writes_what_one_round_writes(
    monkeypatch, tiny_archive, tmp_path, caplog
):
    """A tile's dates in rounds of one (each round submitted and written in turn, the lock
    taken again for each) give the same markers and pixels as the whole window in one round;
    the result sums the rounds. A product whose dates are computed together (the gap filling
    fits one regression on all of a tile's dates) is computed once for all rounds, as in one
    round, not once a round; so is the part of a product that no date changes (flood_change's
    pre-event reference, a tile constant), and so is each date of what the gap filling reads
    (the cloud mask)."""
    import json

    import numpy as np
    import zarr
    from distributed import Client, LocalCluster

    from pipelines.config import parse_config
    from pipelines.engine import run

    def config(store: Path) -> Any:
        return parse_config(
            {
                "province": "tiny",
                "aoi": json.loads((tiny_archive / "province.geojson").read_text()),
                "crs": json.loads((tiny_archive / "archive.json").read_text())["crs"],
                "tile_px": 128,
                "start": "2025-07-10",
                "end": "2025-07-31",
                "products": ["cloud_mask", "water_mask", "ndvi_gapfilled", "flood_change"],
                "stac": {"archive": str(tiny_archive), "max_cloud_cover": 100},
                "store": str(store),
                "dask": {"n_workers": 1, "gpu_workers": 0, "memory_limit": "2GiB"},
            }
        )

    results: list[Any] = []
    finish = run.finish_tile

    def recorded(*args: Any, **kw: Any) -> Any:
        out = finish(*args, **kw)
        results.append(out)
        return out

    monkeypatch.setattr(run, "finish_tile", recorded)
    from pipelines.stages import gapfill

    log = tmp_path / "fills.txt"  # the task runs a pickled copy of this function: count in a file
    fill, fit = gapfill._fill_block, gapfill._fit_model

    def counted(red: Any, *args: Any, **kw: Any) -> Any:
        if red.size:  # not dask's call on empty arrays for the output's type
            with open(log, "a") as f:
                f.write(f"{red.shape[0]}\n")
        return fill(red, *args, **kw)

    def counted_fit(*args: Any, **kw: Any) -> Any:
        with open(log, "a") as f:
            f.write("fit\n")
        return fit(*args, **kw)

    def fits() -> list[int | str]:
        calls = log.read_text().split() if log.exists() else []
        return sorted(calls.count("fit") * ["fit"]) + sorted(int(n) for n in calls if n != "fit")

    from pipelines.stages import flood

    references = tmp_path / "references.txt"
    reference = flood._reference_np

    def counted_reference(pre: Any, *args: Any, **kw: Any) -> Any:
        if pre.size:
            with open(references, "a") as f:
                f.write("x\n")
        return reference(pre, *args, **kw)

    def reference_calls() -> int:
        return references.read_text().count("x") if references.exists() else 0

    from pipelines.stages import cloud_mask as cloud_stage

    masks = tmp_path / "masks.txt"
    classes_block = cloud_stage._scl_classes_block

    def counted_mask(scl: Any, *args: Any, **kw: Any) -> Any:
        if scl.size:
            with open(masks, "a") as f:
                f.write(f"{scl.shape[0]}\n")
        return classes_block(scl, *args, **kw)

    def mask_dates() -> int:
        return sum(int(n) for n in masks.read_text().split()) if masks.exists() else 0

    monkeypatch.setattr(cloud_stage, "_scl_classes_block", counted_mask)
    monkeypatch.setattr(gapfill, "_fill_block", counted)
    monkeypatch.setattr(gapfill, "_fit_model", counted_fit)
    # Blocks of 64 px (2 x 2 a 128 px tile) for the window's 3 dates: a tile is filled in blocks.
    monkeypatch.setattr(gapfill, "MAX_BLOCK_DATE_PX", 3 * 64 * 64)
    monkeypatch.setattr(flood, "_reference_np", counted_reference)
    sent: list[tuple[int, int, bool]] = []  # tasks sent, tasks needed, optimize_graph

    def recorded_send(method: Any) -> Any:
        def send(self: Any, collections: Any, **kw: Any) -> Any:
            sent.append((*_sent_and_needed(collections), kw.get("optimize_graph", True)))
            return method(self, collections, **kw)

        return send

    monkeypatch.setattr(Client, "compute", recorded_send(Client.compute))
    monkeypatch.setattr(Client, "persist", recorded_send(Client.persist))
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        run.run_local(config(tmp_path / "whole"), client)
        whole = list(results)
        whole_fits = fits()
        whole_references = reference_calls()
        whole_masks = mask_dates()
        log.unlink()
        references.unlink()
        masks.unlink()
        results.clear()
        monkeypatch.setattr(run, "DATES_PER_ROUND", 1)
        caplog.set_level("INFO", logger=run.__name__)
        caplog.set_level("INFO", logger="distributed.scheduler")  # the handler keeps INFO
        run.run_local(config(tmp_path / "rounds"), client)
    # Every graph went to the cluster with exactly the tasks its keys need (engine.submit),
    # persisted constants and held products as much as each round's products.
    assert len(sent) > 4 and all(n == k and not opt for n, k, opt in sent), sent
    # The held constants' keys are the only keys the rounds share with their persisted graph
    # (a held product's lineage has keys of its own: submit.private_lineage).
    assert not [r for r in caplog.records if "Detected different `run_spec`" in r.getMessage()]
    # Each round of a tile says which it is and its dates.
    starts = [r.getMessage() for r in caplog.records if ": round " in r.getMessage()]
    assert any(": round 1 of " in m for m in starts) and any(": round 2 of " in m for m in starts)
    assert all(" (1)" in m for m in starts)  # rounds of one date of each product
    # One fit a tile, and its blocks filled on all their dates, in rounds as in one round.
    assert whole_fits and fits() == whole_fits
    tiles = len(whole)
    assert whole_fits.count("fit") == tiles and len(whole_fits) == 5 * tiles
    assert max(n for n in whole_fits if n != "fit") >= 2
    # Each date's cloud mask computed once, in rounds as in one round: the gap filling reads
    # every date of it, so it is held with the gap filling for the window (window_products).
    assert whole_masks and mask_dates() == whole_masks
    # One pre-event reference a tile, in rounds as in one round.
    assert whole_references and reference_calls() == whole_references
    # Several dates a tile, so that rounds of one are several rounds.
    assert max(len(r.written.get("cloud_mask", [])) for r in whole) >= 2
    by_tile = {r.tile_id: r for r in whole}
    assert whole and sorted(r.tile_id for r in results) == sorted(by_tile)
    for r in results:
        assert r.written == by_tile[r.tile_id].written
        assert not r.failed
    assert max(len(r.written.get("flood_change", [])) for r in whole) >= 2
    for product in ("cloud_mask", "water_mask", "ndvi_gapfilled", "flood_change"):
        markers = {
            p.relative_to(tmp_path / "whole" / "tiny" / product)
            for p in (tmp_path / "whole" / "tiny" / product / "items").rglob("*.json")
        }
        assert markers and markers == {
            p.relative_to(tmp_path / "rounds" / "tiny" / product)
            for p in (tmp_path / "rounds" / "tiny" / product / "items").rglob("*.json")
        }
        a = zarr.open_group(str(tmp_path / "whole" / "tiny" / product / "cube.zarr"), mode="r")
        b = zarr.open_group(str(tmp_path / "rounds" / "tiny" / product / "cube.zarr"), mode="r")
        for name, arr in a.arrays():
            if arr.ndim == 3:
                np.testing.assert_array_equal(arr[:], b[name][:], err_msg=f"{product} {name}")


def _sent_and_needed(collections: Any) -> tuple[int, int]:
    """How many tasks the graphs of ``collections`` (one or a list) hold together, and how
    many of them their keys need."""
    import dask.array as da
    from dask.core import flatten
    from dask.optimization import cull

    arrays = []
    for c in collections if isinstance(collections, list) else [collections]:
        arrays += [c] if isinstance(c, da.Array) else [v.data for v in c.variables.values()]
    arrays = [a for a in arrays if isinstance(a, da.Array)]
    graph = {k: v for a in arrays for k, v in dict(a.__dask_graph__()).items()}
    keys = [k for a in arrays for k in flatten(a.__dask_keys__())]
    return len(graph), len(cull(graph, keys)[0])


def _counted_plane(block: Any, log: str) -> Any:
    if block.size:  # not dask's call on empty arrays for the output's type
        with open(log, "a") as f:
            f.write("x\n")
    return block.mean(axis=0)


def test_tile_constants_are_computed_once_for_a_tiles_rounds(tmp_path, caplog):
    """A part of a product's graph marked as a tile constant (filters.tile_constant: the same
    for every date) is persisted once for a tile's rounds of dates; each round's product is
    built on it and equals the product computed whole. No key is sent to the scheduler with
    two different tasks (a constant read by another constant and by the rounds)."""
    import dask.array as da
    import numpy as np
    import xarray as xr
    from distributed import Client, LocalCluster

    from pipelines.engine import run
    from pipelines.stages import filters as F

    log = tmp_path / "calls.txt"
    rng = np.random.default_rng(0)
    pre = da.from_array(rng.random((3, 8, 8), dtype=np.float32), chunks=(3, 4, 4))
    post = da.from_array(rng.random((6, 8, 8), dtype=np.float32), chunks=(1, 4, 4))
    ref = F.tile_constant(
        da.map_blocks(_counted_plane, pre, str(log), drop_axis=0, dtype=np.float32)
    )
    view = ref[None][0]  # read by the rounds and by another constant
    state = F.tile_constant(view * 2)
    times = np.arange(6).astype("datetime64[D]").astype("datetime64[ns]")
    change = post - view[None] - state[None]
    out = xr.Dataset({"change": (("time", "y", "x"), change)}, coords={"time": times})
    plain = xr.Dataset({"other": (("time", "y", "x"), post * 2)}, coords={"time": times})
    assert set(run.tile_constants(out)) == {ref.name, state.name}
    assert run.tile_constants(plain) == {}
    expected = out.compute(scheduler="sync")
    log.unlink()
    labels = [f"1970-01-0{d}" for d in range(1, 7)]
    rounds = [{"change": labels[k : k + 2], "other": labels[k : k + 2]} for k in (0, 2, 4)]
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        caplog.set_level("WARNING", logger="distributed.scheduler")
        outputs = {"change": out, "other": plain}
        held = run.hold_tile_constants(outputs, rounds, client).build(outputs)
        assert list(held) == ["change"]  # a product without constants is left as it is
        rounds = [
            client.compute(held["change"].isel(time=slice(k, k + 2))).result()
            for k in range(0, 6, 2)
        ]
    assert log.read_text().count("x") == 4  # once per chunk of the constant, not per round
    xr.testing.assert_equal(xr.concat(rounds, "time"), expected)
    assert not [r for r in caplog.records if "Detected different `run_spec`" in r.getMessage()]


def _failing_plane(block: Any) -> Any:
    if block.size:
        raise OSError("pre-event scene unreadable")
    return block.mean(axis=0)


def test_a_held_tile_constant_that_fails_fails_each_round_with_its_error():
    """A pre-event read that fails while the constants are persisted fails every round of the
    products built on them with that error (recorded per label by the writer), and nothing else."""
    import dask.array as da
    import numpy as np
    import xarray as xr
    from distributed import Client, LocalCluster

    from pipelines.engine import run
    from pipelines.stages import filters as F

    pre = da.ones((3, 8, 8), chunks=(3, 4, 4), dtype=np.float32)
    post = da.ones((4, 8, 8), chunks=(1, 4, 4), dtype=np.float32)
    ref = F.tile_constant(da.map_blocks(_failing_plane, pre, drop_axis=0, dtype=np.float32))
    times = np.arange(4).astype("datetime64[D]").astype("datetime64[ns]")
    out = xr.Dataset({"change": (("time", "y", "x"), post - ref[None])}, coords={"time": times})
    other = xr.Dataset({"twice": (("time", "y", "x"), post * 2)}, coords={"time": times})
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        rounds = [{"change": ["1970-01-01", "1970-01-02"]}, {"change": ["1970-01-03"]}]
        outputs = {"change": out, "other": other}
        held = run.hold_tile_constants(outputs, rounds, client).build(outputs)
        for k in (0, 2):
            with pytest.raises(OSError, match="pre-event scene unreadable"):
                client.compute(held["change"].isel(time=slice(k, k + 2))).result()
        assert float(client.compute(other["twice"].sum()).result()) == 4 * 64 * 2


def _three_references() -> tuple[list[Any], Any, list[str]]:
    """A product of six dates, each pair read against its own reference (a tile constant: a
    long window's months): the references, the product and its date labels."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    from pipelines.stages import filters as F

    pre = da.ones((3, 8, 8), chunks=(3, 4, 4), dtype=np.float32)
    post = da.ones((6, 8, 8), chunks=(1, 4, 4), dtype=np.float32)
    refs = [F.tile_constant(pre.mean(axis=0) + k) for k in range(3)]
    change = da.concatenate([post[2 * k : 2 * k + 2] - refs[k][None] for k in range(3)])
    times = np.arange(6).astype("datetime64[D]").astype("datetime64[ns]")
    out = xr.Dataset({"change": (("time", "y", "x"), change)}, coords={"time": times})
    labels = [f"1970-01-0{d}" for d in range(1, 7)]
    return refs, out, labels


def test_a_tile_constant_is_held_from_its_first_round_to_its_last():
    """Three references, each read by two dates, in rounds of three, two and one date: the
    second is read by rounds 1-2 and the third by rounds 2-3. The cluster holds the second in
    round 1, both in round 2 and the third alone in round 3, whose dates are computed on it;
    nothing once the tile is done."""
    import time
    from contextlib import ExitStack

    import xarray as xr
    from distributed import Client, LocalCluster

    from pipelines.engine import run
    from pipelines.engine.manifest import TileResult
    from pipelines.stages.registry import StageGroup

    refs, out, labels = _three_references()
    rounds = [{"change": labels[:3]}, {"change": labels[3:5]}, {"change": labels[5:]}]
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):

        def held(expected: set[int]) -> set[int]:
            """Which references the scheduler holds, once the client's news has reached it."""
            for _ in range(100):
                keys = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
                names = {k[0] if isinstance(k, tuple) else k for k in keys}
                found = {k for k, r in enumerate(refs) if r.name in names}
                if found == expected:
                    break
                time.sleep(0.05)
            return found

        outputs = {"change": out}
        group = StageGroup("cpu0", ("change",), {}, "default_pool")
        constants = run.hold_tile_constants(outputs, rounds, client)
        assert constants.rounds == {refs[1].name: (0, 1), refs[2].name: (1, 2)}
        submitted = run.SubmittedTile(
            "t", TileResult("t"), {}, {"change": labels[:3]}, 0.0, ExitStack(),
            graph=(outputs, {}), held=constants.build(outputs), constants=constants,
        )  # fmt: skip
        assert held({1}) == {1}
        run._hold_for_round(submitted, 1, group, client)
        assert held({1, 2}) == {1, 2}
        run._hold_for_round(submitted, 2, group, client)
        assert held({2}) == {2}
        last = client.compute(submitted.held["change"].isel(time=[5])).result()
        graph = submitted.held["change"]["change"].data.__dask_graph__()
        assert not graph.dependencies[refs[2].name]  # the held one
        del graph, constants  # they hold the persisted parts too
        submitted.held.clear()
        submitted.constants = run.HeldConstants()  # as finish_tile ends
        assert held(set()) == set()
    xr.testing.assert_equal(last, out.isel(time=[5]).compute(scheduler="sync"))


@pytest.mark.slow
def test_flood_change_over_two_months_writes_what_the_months_write_apart(tiny_archive, tmp_path):
    """Without an event date, a window of April and May compares May with April's scenes, as
    May's own run does: the products (pixels and listed input scenes) are those of the two
    months run apart. So does a window that starts with the archive's first S1 scene (1 March):
    March has no reference and no product, April and May have theirs."""
    import json

    import numpy as np
    import zarr
    from distributed import Client, LocalCluster

    from pipelines.config import parse_config
    from pipelines.engine import run
    from pipelines.products import read_marker

    def config(store: Path, start: str, end: str) -> Any:
        return parse_config(
            {
                "province": "tiny",
                "aoi": json.loads((tiny_archive / "province.geojson").read_text()),
                "crs": json.loads((tiny_archive / "archive.json").read_text())["crs"],
                "tile_px": 256,
                "start": start,
                "end": end,
                "products": ["flood_change"],
                "stac": {"archive": str(tiny_archive), "max_cloud_cover": 100},
                "store": str(store),
                "dask": {"n_workers": 1, "gpu_workers": 0, "memory_limit": "2GiB"},
            }
        )

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        run.run_local(config(tmp_path / "window", "2025-04-01", "2025-05-31"), client)
        run.run_local(config(tmp_path / "first", "2025-03-01", "2025-05-31"), client)
        for start, end in (("2025-04-01", "2025-04-30"), ("2025-05-01", "2025-05-31")):
            run.run_local(config(tmp_path / "months", start, end), client)

    def product(store: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
        root = store / "tiny" / "flood_change"
        cube = zarr.open_group(str(root / "cube.zarr"), mode="r")
        days = [str(np.datetime64(int(t), "s"))[:10] for t in cube["time"][...]]
        pixels = dict(zip(days, cube["flood_change"][...], strict=True))
        markers = {
            p.stem: read_marker(str(p))["properties"]["terrapipe:input_items"]
            for p in (root / "items").rglob("*.json")
        }
        return pixels, markers

    window, months = product(tmp_path / "window"), product(tmp_path / "months")
    assert sorted(window[0]) == sorted(months[0]) and any(d[:7] == "2025-05" for d in window[0])
    for longer in (window, product(tmp_path / "first")):
        assert sorted(longer[0]) == sorted(months[0])
        for day, pixels in longer[0].items():
            np.testing.assert_array_equal(pixels, months[0][day], err_msg=day)
        assert longer[1] == months[1]
    may = next(ids for day, ids in window[1].items() if day.startswith("2025-05"))
    assert any("202504" in i for i in may) and not any("202503" in i for i in may)


def test_only_tile_constants_that_several_rounds_read_are_held():
    """Three references, each read by two dates (a long window's months): rounds that keep each
    reference's dates together hold none (each round computes its own); rounds that split them
    hold the references that two rounds read, and only those."""
    import xarray as xr
    from distributed import Client, LocalCluster

    from pipelines.engine import run

    refs, out, labels = _three_references()
    constants = run.tile_constants(out)
    assert set(constants) == {r.name for r in refs}
    assert run.constants_read(out.isel(time=[1, 2]), constants) == {refs[0].name, refs[1].name}
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        apart = [{"change": labels[k : k + 2]} for k in (0, 2, 4)]
        assert run.hold_tile_constants({"change": out}, apart, client).arrays == {}
        split = [{"change": labels[:3]}, {"change": labels[3:]}]  # the second reference spans both
        held = run.hold_tile_constants({"change": out}, split, client).build({"change": out})
        graph = held["change"]["change"].data.__dask_graph__()
        assert len(graph.layers[refs[1].name]) == 4 and not graph.dependencies[refs[1].name]
        assert graph.dependencies[refs[0].name]  # computed in its round, as before
        result = [
            client.compute(held["change"].isel(time=s)).result() for s in (slice(0, 3), slice(3, 6))
        ]
    xr.testing.assert_equal(xr.concat(result, "time"), out.compute(scheduler="sync"))


def test_a_batch_that_failed_on_its_input_has_its_workers_forget_remote_files(tmp_path):
    """A batch run again after a product failed as bad input (a scene file missing, perhaps
    put right since) first has every worker drop GDAL's memory of remote files; a batch
    without such a failure, or whose failures were transient, does not ask."""
    import json

    from pipelines.engine.manifest import failures_url
    from pipelines.engine.run import forget_before_retry

    class Workers:
        def __init__(self) -> None:
            self.ran: list[object] = []

        def run(self, fn):
            self.ran.append(fn)
            return {"tcp://a:1": 2, "tcp://b:1": 1}

    plan_url = str(tmp_path / "runs" / "r" / "plan.json")

    def kept(exc: Exception) -> None:
        result = TileResult("t")
        result.fail("dehaze", ["2025-07-20"], exc)
        manifest = BatchManifest.of("cpu", 0, [result])
        path = Path(failures_url(plan_url, "cpu", 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest.to_xcom()))

    client = Workers()
    batches = [("cpu", 0), ("cpu", 1), ("gpu", 0)]
    assert not forget_before_retry(client, plan_url, batches) and client.ran == []
    assert not forget_before_retry(client, plan_url, []) and client.ran == []
    kept(TransientIOError("reset"))
    assert not forget_before_retry(client, plan_url, batches) and client.ran == []
    kept(BadInputError("scene asset", "https://x/B04.tif", "a file the storage holds"))
    assert not forget_before_retry(client, plan_url, [("cpu", 1)]) and client.ran == []
    assert forget_before_retry(client, plan_url, batches)  # one ask, whichever batch failed
    assert [getattr(fn, "__name__", "") for fn in client.ran] == ["forget_remote_files"]
