"""The runner's manifests (XCom of the mapped tasks) and the read-error classes it raises."""

from __future__ import annotations

import threading

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
    """What the runner's write path reads of a plan: the province, grids and items."""

    province = "p"

    def stage_grid(self, stage):
        return "grid", lambda tile_id: f"tile {tile_id}"

    def items_for(self, source, tile_id):
        return []


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
    assert result.compute_s >= 0 and result.write_s >= 0


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

    def build(plan, store, group, tile_id):
        built.append((group.name, tile_id))
        return {n: _dataset("2024-05-01") for n in group.stages}, {}

    monkeypatch.setattr(run, "build_group_graph", build)
    monkeypatch.setattr(products, "init_cube", lambda *a, **kw: "cube")
    graphs: run.GraphCache = {}
    run.prepare_products(Plan(), str(tmp_path), graphs=graphs)
    assert built == [("cpu0", "t0"), ("cpu1", "t0")]
    assert list(graphs) == [("cpu0", "t0")]  # not the group that reads a cube

    given: list[tuple[str, str, bool]] = []

    def process(plan, store, group, tile_id, client, overwrite=False, graph=None):
        given.append((group.name, tile_id, graph is not None))
        return TileResult(tile_id)

    monkeypatch.setattr(run, "process_tile", process)
    run.process_batch(Plan(), str(tmp_path), "cpu0", 0, None, graphs=graphs)  # type: ignore[arg-type]
    assert given == [("cpu0", "t0", True), ("cpu0", "t1", False)]
    assert graphs == {}  # each graph is used once


def test_workers_start_importing_the_plans_stage_modules_without_the_run_waiting():
    import sys

    from pipelines.engine import run
    from pipelines.stages.registry import StageGroup

    class Plan(_Plan):
        groups = (StageGroup("cpu1", ("dehaze", "water_mask"), {}, "default_pool"),)

    modules = run.stage_modules(Plan())
    assert modules[:3] == ["pipelines.load", "stackstac", "rasterio"]
    # dehaze reads haze_index, which reads cloud_mask: every stage the plan runs or reads
    assert set(modules[3:]) == {
        "pipelines.stages.cloud_mask",
        "pipelines.stages.haze",
        "pipelines.stages.dehaze",
        "pipelines.stages.water",
    }
    assert run.import_modules(["pipelines.stages.water"]) == 1
    assert "pipelines.stages.water" in sys.modules

    from distributed import Client

    cluster = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    with Client(processes=False, set_as_default=False, **cluster) as client:
        sender = run.warm_workers(client, Plan())  # returns at once: sent from a thread
        sender.join(60)
        assert not sender.is_alive()  # the worker answered at once: it imports in a thread
        assert client.submit(lambda: 1).result() == 1


def test_a_local_clusters_workers_import_the_cpu_tile_stages_not_the_models():
    from operators import dask_cluster
    from pipelines.engine import run

    modules = run.worker_modules()
    assert modules[:3] == list(run.READ_MODULES)
    assert {"pipelines.stages.cloud_mask", "pipelines.stages.flood"} <= set(modules)
    assert "pipelines.stages.learned" not in modules  # GPU model stages
    assert "pipelines.engine.season_yield" not in modules  # province-scope stages
    assert dask_cluster.__name__ == dask_cluster.WORKER_PRELOAD
    assert callable(dask_cluster.dask_setup)
