"""A province run end to end on the tiny demo archive: local STAC API, Dask LocalCluster
(one worker declaring GPU=1), Zarr/COG/STAC products, skip/resume, S3, task routing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from operators.dask_cluster import connect, start_cluster, stop_cluster
from pipelines import products
from pipelines.config import DaskConfig, parse_config
from pipelines.engine.run import run_local

pytestmark = pytest.mark.integration

PRODUCTS = ["cloud_mask", "haze_index", "dehaze", "water_mask", "flood_change"]


def tiny_config(archive: Path, store: str, **changes):
    aoi = json.loads((archive / "province.geojson").read_text())
    info = json.loads((archive / "archive.json").read_text())
    raw = {
        "province": "tiny",
        "aoi": aoi,
        "crs": info["crs"],
        "tile_px": 128,
        "start": "2025-07-15",
        "end": "2025-07-25",
        "products": PRODUCTS,
        "stac": {"archive": str(archive), "max_cloud_cover": 100},
        "store": store,
    }
    raw.update(changes)
    return parse_config(raw)


@pytest.fixture(scope="module")
def client():
    handle = start_cluster(DaskConfig(n_workers=1, gpu_workers=1, memory_limit="3GiB"))
    c = connect(handle.address)
    c.wait_for_workers(2, timeout=120)
    yield c
    c.close()
    stop_cluster(handle)


@pytest.fixture(scope="module")
def first_run(tiny_archive, tmp_path_factory, client):
    store = str(tmp_path_factory.mktemp("store"))
    config = tiny_config(tiny_archive, store)
    summary = run_local(config, client)
    return config, summary


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def test_run_writes_every_product_with_markers_and_catalog(first_run):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    config, summary = first_run
    assert summary["written"] > 0 and summary["no_scenes"] == 0
    store = config.store
    for name in PRODUCTS:
        cube = products.open_product(store, "tiny", name)
        assert cube.sizes["time"] >= 1
        markers = list(Path(store, "tiny", name, "items").rglob("*.json"))
        assert markers, name
        item = json.loads(markers[0].read_text())
        props = item["properties"]
        assert props["terrapipe:stage"] == name
        assert props["terrapipe:software_version"]
        assert name in props["terrapipe:stage_versions"]
        assert props["terrapipe:input_items"]
        cogs = list(Path(store, "tiny", name, "cog").rglob("*.tif"))
        assert cogs
        valid, errors, _ = cog_validate(str(cogs[0]))
        assert valid, errors
        with rasterio.open(cogs[0]) as src:
            assert src.crs.to_epsg() == 32650 and all(src.descriptions)
    catalog = json.loads(Path(store, "tiny", "catalog.json").read_text())
    children = [link["href"] for link in catalog["links"] if link["rel"] == "child"]
    assert len(children) == len(PRODUCTS)


def test_cloud_mask_cube_holds_the_classes(first_run):
    config, _ = first_run
    cube = products.open_product(config.store, "tiny", "cloud_mask")
    values = np.unique(cube["cloud_mask"].values)
    assert set(values.tolist()) <= {0, 1, 2, 3, 4} and 1 in values


def test_second_run_skips_and_a_removed_marker_reruns_only_that(first_run, client):
    config, summary = first_run
    again = run_local(config, client)
    assert again["written"] == 0 and again["compute_s"] == 0
    assert again["skipped"] == summary["written"]

    markers = sorted(Path(config.store, "tiny", "dehaze", "items").rglob("*.json"))
    victim = markers[0]
    tile_id, label = victim.parent.name, victim.stem
    before = _tree_digest(config.store)
    victim.unlink()
    third = run_local(config, client)
    assert third["written"] == 1
    after = _tree_digest(config.store)
    changed = {k for k in before if before[k] != after.get(k)}
    # Only that tile's dehaze files (cube chunks of that tile, COG, quicklook, marker) and the
    # run bookkeeping may change.
    for path in changed:
        assert (tile_id in path and "dehaze" in path) or "/cube.zarr/" in path or "runs/" in path, (
            path
        )
    assert json.loads(victim.read_text())["properties"]["terrapipe:stage"] == "dehaze"
    assert label in victim.name


def test_run_on_s3_reads_back_equal(first_run, tiny_archive, s3_store, client):
    config, _ = first_run
    remote = tiny_config(tiny_archive, s3_store, products=["cloud_mask", "water_mask"])
    summary = run_local(remote, client)
    assert summary["written"] > 0
    for name in ("cloud_mask", "water_mask"):
        a = products.open_product(config.store, "tiny", name)[name].load()
        b = products.open_product(s3_store, "tiny", name)[name].load()
        np.testing.assert_array_equal(a.values, b.values)


def test_gpu_stage_tasks_run_only_on_the_gpu_worker(tiny_archive, tmp_path, client):
    from pipelines.engine.plan import plan_run
    from pipelines.engine.run import prepare_products, process_batch
    from pipelines.stages.registry import register_stage, unregister_stage

    register_stage(
        name="gpu_probe",
        function="pipelines.testing.probes:gpu_probe",
        inputs=("s2",),
        output="(time, y, x) uint8: 1 ran on a GPU worker, 2 elsewhere",
        version="1",
        resources={"GPU": 1},
    )
    try:
        config = tiny_config(tiny_archive, str(tmp_path), products=["cloud_mask", "gpu_probe"])
        plan = plan_run(config, require=None, write=False).plan
        assert [g.pool for g in plan.groups] == ["default_pool", "gpu"]
        prepare_products(plan, config.store)
        gpu_group = plan.groups[1].name
        for index in range(len(plan.batches)):
            process_batch(plan, config.store, gpu_group, index, client)
        flags = products.open_product(config.store, "tiny", "gpu_probe")["gpu_probe"].values
        written = flags[flags != 0]
        assert written.size > 0 and set(np.unique(written).tolist()) == {1}
    finally:
        unregister_stage("gpu_probe")


def test_airflow_dag_test_runs_the_province_and_then_skips(tiny_archive, tmp_path):
    """`terrapipe run` drives the province_production DAG with dag.test() on a fresh Airflow
    home (SQLite), a LocalCluster started by the run, and products written to the store."""
    import subprocess
    import sys

    import yaml

    cfg = {
        "province": "tiny",
        "aoi": str(tiny_archive / "province.geojson"),
        "crs": "EPSG:32650",
        "tile_px": 256,
        "start": "2025-07-18",
        "end": "2025-07-24",
        "products": ["cloud_mask", "water_mask"],
        "stac": {"archive": str(tiny_archive), "max_cloud_cover": 100},
        "store": str(tmp_path / "store"),
        "dask": {"n_workers": 1, "gpu_workers": 0, "memory_limit": "2GiB"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TERRAPIPE_HOME": str(tmp_path / "home")}
    env.pop("AIRFLOW_HOME", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(path)]
    results = []
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout))
    first, second = results
    assert first["state"] == "success" and first["summary"]["written"] > 0
    assert any(k.startswith("process_cpu") for k in first["task_seconds"])
    assert second["summary"]["written"] == 0
    # nothing left to do: every processing task is skipped (empty mapping), none ran
    process = {k: v for k, v in second["tasks"].items() if k.startswith("process_")}
    assert process and set(process.values()) == {"skipped"}, second["tasks"]
    assert (tmp_path / "store" / "tiny" / "catalog.json").exists()
    # the run's status, read from the store
    cmd = [sys.executable, "-m", "pipelines.cli", "status", "--config", str(path), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["state"] == "done" and run["outcome"] == "success" and run["failed"] == 0

    # Backfill: month windows through the same DAG; July 18-24 is already done.
    cmd = [sys.executable, "-m", "pipelines.cli", "backfill", str(path)]
    cmd += ["--start", "2025-07-18", "--end", "2025-08-06"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    backfilled = json.loads(proc.stdout)  # stdout carries the JSON result only
    assert backfilled == {
        "windows": 2,
        "failed": [],
        "no_scenes": [],
        "state": "success",
        "exit_code": 0,
    }
    august = list((tmp_path / "store" / "tiny" / "water_mask" / "items").rglob("2025-08-04.json"))
    assert august


def test_flood_event_plan_finds_pre_and_post_scenes_itself(tiny_archive, tmp_path):
    import yaml

    from operators.production import plan_task
    from pipelines.engine.plan import read_plan

    info = json.loads((tiny_archive / "archive.json").read_text())
    event = info["flood_event"]
    cfg = {
        "province": "tiny",
        "aoi": str(tiny_archive / "province.geojson"),
        "crs": "EPSG:32650",
        "tile_px": 256,
        "start": "2025-01-01",
        "end": "2025-01-02",
        "products": ["cloud_mask"],
        "stac": {"archive": str(tiny_archive), "max_cloud_cover": 100},
        "store": str(tmp_path / "store"),
    }
    path = tmp_path / "flood.yaml"
    path.write_text(yaml.safe_dump(cfg))
    params = {"config": str(path), "event_date": event["date"], "products": "flood_change"}
    manifest = plan_task(params, {})
    plan = read_plan(manifest["plan_url"])
    assert list(plan.stage_versions) == ["flood_change"]
    # S1 ids carry the acquisition start: S1A_IW_GRDH_1SDV_<YYYYMMDD>T...
    post_dates = sorted({i.split("_")[4][:8] for i in event["post"]})
    assert [d.replace("-", "") for d in plan.dates["flood_change"]] == post_dates
    pre_ids = {d["id"] for d in plan.items["s1_pre"]}
    # The 30 pre-event days (config flood.pre_days) hold the archive's last pre-event scenes.
    assert len(pre_ids) >= 2 and pre_ids <= set(event["pre"])
    assert all(d["properties"]["datetime"][:10] < event["date"] for d in plan.items["s1_pre"])
