"""Bad input gives a clear error (field, value, what is valid), a non-zero exit, and leaves
everything already written unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.cli import EXIT_BAD_INPUT, EXIT_NO_SCENES, EXIT_TRANSIENT, main
from pipelines.errors import BadInputError
from tests.fixtures.http import local_http, local_url
from tests.fixtures.processes import stop_process

pytestmark = pytest.mark.integration


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _config(tmp_path: Path, archive: Path, **changes) -> Path:
    raw = {
        "province": "tiny",
        "aoi": str(archive / "province.geojson"),
        "crs": "EPSG:32650",
        "tile_px": 128,
        "start": "2025-07-15",
        "end": "2025-07-25",
        "products": ["cloud_mask"],
        "stac": {"archive": str(archive), "max_cloud_cover": 100},
        "store": str(tmp_path / "store"),
    }
    raw.update(changes)
    path = tmp_path / "province.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def archive_copy(tiny_archive: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny archive (hrefs rewritten) that a test may damage."""
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root, ignore=shutil.ignore_patterns("truth"))
    for path in (root / "stac" / "items").glob("*.json"):
        path.write_text(path.read_text().replace(str(tiny_archive), str(root)))
    return root


def test_malformed_config_exits_2_naming_the_field(tmp_path, tiny_archive, capsys):
    path = _config(tmp_path, tiny_archive, tile_px="large")
    assert main(["plan", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "tile_px" in err and "large" in err
    path.write_text("province: [")
    assert main(["run", str(path)]) == EXIT_BAD_INPUT
    assert "valid YAML" in capsys.readouterr().err


def test_unknown_product_names_the_registered_ones(tmp_path, tiny_archive, capsys):
    path = _config(tmp_path, tiny_archive, products=["cloud_mask", "yield_magic"])
    assert main(["run", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "yield_magic" in err and "cloud_mask" in err


def test_aoi_outside_every_scene_exits_3(tmp_path, tiny_archive, capsys):
    far = {
        "type": "Polygon",
        "coordinates": [
            [[116.0, 36.0], [116.1, 36.0], [116.1, 36.1], [116.0, 36.1], [116.0, 36.0]]
        ],
    }
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    path = _config(tmp_path, tiny_archive, aoi=str(tmp_path / "far.geojson"))
    assert main(["plan", str(path)]) == EXIT_NO_SCENES
    assert "no scenes" in capsys.readouterr().err


def test_a_window_where_only_the_dem_matches_exits_3(tmp_path, tiny_archive, capsys):
    path = _config(tmp_path, tiny_archive, start="1990-07-01", end="1990-07-10")
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "products": ["flood_change"]}))
    assert main(["plan", str(path)]) == EXIT_NO_SCENES
    err = capsys.readouterr().err
    assert "no scenes" in err and "'dem': 1" in err and "'s1_post': 0" in err


def test_unreachable_stac_api_exits_4_naming_the_url(tmp_path, tiny_archive, capsys):
    path = _config(tmp_path, tiny_archive, stac={"url": "http://127.0.0.1:9/"})
    assert main(["plan", str(path)]) == EXIT_TRANSIENT
    assert "127.0.0.1:9" in capsys.readouterr().err


def _run_local(path: Path):
    from distributed import Client, LocalCluster

    from pipelines.config import load_config
    from pipelines.engine.run import run_local

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        return run_local(load_config(path), client)


def test_missing_asset_and_corrupt_cog_fail_clearly_and_keep_products(
    tmp_path, archive_copy, capsys
):
    path = _config(tmp_path, archive_copy, products=["dehaze"])
    first = _run_local(path)
    assert first["written"] > 0
    store = tmp_path / "store"
    # catalog.json, collection.json and the month catalogs are rebuilt over the markers
    # present, even after a failure
    rebuilt = ("catalog.json", "collection.json")
    before = {
        k: v
        for k, v in _digest(store).items()
        if "/runs/" not in k and "/months/" not in k and not k.endswith(rebuilt)
    }

    # An item without its red band asset: BadInputError naming the item, band and assets.
    items_path = archive_copy / "stac" / "items" / "sentinel-2-l2a.json"
    fc = json.loads(items_path.read_text())
    victim = next(f for f in fc["features"] if f["properties"]["datetime"].startswith("2025-07-20"))
    original = json.loads(json.dumps(victim))
    del victim["assets"]["red"]
    items_path.write_text(json.dumps(fc))
    for marker in (store / "tiny" / "dehaze" / "items").rglob("2025-07-20.json"):
        marker.unlink()
    before = {k: v for k, v in before.items() if not k.endswith("2025-07-20.json")}
    with pytest.raises(BadInputError) as info:
        _run_local(path)
    assert victim["id"] in str(info.value) and "B04" in str(info.value)
    assert "stac.exclude_items" in str(info.value)
    after = _digest(store)
    assert all(after.get(k) == v for k, v in before.items())

    # A corrupt COG: BadInputError naming the file and its item, products of other dates
    # untouched.
    fc["features"][fc["features"].index(victim)] = original
    items_path.write_text(json.dumps(fc))
    href = original["assets"]["red"]["href"]
    Path(href).write_bytes(b"not a tiff" * 100)
    with pytest.raises(BadInputError) as info:
        _run_local(path)
    assert "red.tif" in str(info.value) and "Cloud-Optimized GeoTIFF" in str(info.value)
    assert info.value.value == href  # the file alone, however the worker's error arrived
    assert f"item {original['id']!r}" in str(info.value)
    assert "stac.exclude_items" in str(info.value)
    after = _digest(store)
    assert all(after.get(k) == v for k, v in before.items())
    # `terrapipe status RUN` names the scene at fault with its tiles, and what to write
    from pipelines.config import load_config
    from pipelines.engine.plan import config_plan_url

    run_id = config_plan_url(load_config(path)).rsplit("/", 2)[-2]
    capsys.readouterr()
    assert main(["status", run_id, "--config", str(path)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out.strip().splitlines()[-1])
    assert (
        list(report["failed_scenes"]) == [original["id"]]
        and report["failed_scenes"][original["id"]]
    )
    assert f"exclude_items: [{original['id']}]" in " ".join(printed.err.split())

    # The scene listed under stac.exclude_items, as the failure says: the run goes through
    # without it, and writes nothing more (the date had no other scene).
    stac = {"archive": str(archive_copy), "max_cloud_cover": 100, "exclude_items": [victim["id"]]}
    others = [f for f in fc["features"] if f["properties"]["datetime"].startswith("2025-07-20")]
    assert others == [original]
    excluded = _run_local(_config(tmp_path, archive_copy, products=["dehaze"], stac=stac))
    assert excluded["written"] == 0, excluded
    after = _digest(store)
    assert all(after.get(k) == v for k, v in before.items())
    assert not list((store / "tiny" / "dehaze" / "items").rglob("2025-07-20.json"))


def test_stage_cli_rejects_geotiff_without_band_names(tmp_path, capsys):
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "noname.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=4,
        dtype="uint16",
        crs="EPSG:32650",
        transform=from_origin(300000, 3800000, 10, 10),
    ) as dst:
        dst.write(np.full((4, 8, 8), 1000, dtype="uint16"))
    code = main(["stage", "cloud_mask", "--s2", str(path), "--out", str(tmp_path / "o.tif")])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--s2" in err and "description" in err
    assert not (tmp_path / "o.tif").exists()
    assert os.listdir(tmp_path) == ["noname.tif"]


def test_a_run_that_fails_in_airflow_exits_1_with_its_json_result_alone(tmp_path, tiny_archive):
    """`terrapipe run` whose plan task fails (a STAC API answering garbage): exit 1, and stdout
    is the one JSON result saying so; Airflow's own output goes to stderr."""
    import http.server
    import subprocess
    import sys

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"<garbage>")

        def log_message(self, *args: object) -> None:
            pass

    with local_http(Garbage) as server:
        path = _config(tmp_path, tiny_archive, stac={"url": local_url(server) + "/"})
        env = {**os.environ, "TERRAPIPE_HOME": str(tmp_path / "home")}
        env.pop("AIRFLOW_HOME", None)
        cmd = [sys.executable, "-m", "pipelines.cli", "run", str(path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert (result["state"], result["exit_code"]) == ("failed", 1)
    assert result["tasks"]["plan"] == "failed"


def test_uncalibrated_s1_grd_is_refused_when_the_run_is_planned(tmp_path, real_data, capsys):
    """REAL Planetary Computer sentinel-1-grd item (VV+VH digital numbers in radar geometry)
    behind a local STAC API: `terrapipe plan` of a water product refuses it by name before any
    tile would read it as backscatter."""
    from pipelines.testing import stac as builder

    grd = real_data / "stac-json" / "items" / "mpc" / "sentinel-1-grd"
    items = []
    for f in sorted(grd.glob("*_1SDV_*.json")):
        d = json.loads(f.read_text())
        d["links"] = []
        items.append(d)
    assert items, f"no dual-polarisation GRD item in {grd}"
    archive = builder.write_archive(tmp_path / "grd", {"sentinel-1-grd": items})
    inside = {  # inside the item's footprint (central Tunisia)
        "type": "Polygon",
        "coordinates": [[[9.5, 33.5], [9.52, 33.5], [9.52, 33.52], [9.5, 33.52], [9.5, 33.5]]],
    }
    (tmp_path / "aoi.geojson").write_text(json.dumps(inside))
    date = items[0]["properties"]["datetime"][:10]
    path = _config(
        tmp_path,
        archive,
        aoi=str(tmp_path / "aoi.geojson"),
        crs="EPSG:32632",
        start=date,
        end=date,
        products=["water_mask"],
        stac={"archive": str(archive), "collections": {"s1": "sentinel-1-grd"}},
    )
    assert main(["plan", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert items[0]["id"] in err and "sentinel-1-grd" in err and "RTC collection" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))


@contextlib.contextmanager
def _external_cluster() -> Iterator[str]:
    """A Dask scheduler and one worker started as their own processes with ``dask scheduler``
    and ``dask worker`` (a cluster no run starts or stops: its worker outlives every run), in
    this process's environment; the scheduler's address."""
    from distributed import Client

    exe = Path(sys.executable).parent / "dask"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen(
        [str(exe), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [str(exe), "worker", address, "--nthreads", "1", "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        stop_process(worker)
        stop_process(scheduler)


def test_a_scene_file_put_back_is_read_by_the_redo_on_a_cluster_that_outlives_runs(
    tiny_archive, s3_store, tmp_path, monkeypatch
):
    """The tiny archive on a local S3 server, a cluster started apart from the runs. A scene's
    red band missing from the bucket fails the run as bad input, naming the file and its item;
    once the file is back, the same run again, on the same worker, reads it and writes the
    products. GDAL answers a link it once found missing as missing for the life of a process:
    without the redo's ``forget_before_retry`` the worker failed the second run too, and so it
    did when the workers were asked only as each batch's turn came, after the run had started
    computing the first tile (while it creates the cubes, here made to take 3 s more)."""
    import time

    from distributed import Client

    from pipelines import storage
    from pipelines.config import load_config
    from pipelines.engine import run as engine_run
    from pipelines.engine.run import run_local

    prepare = engine_run.prepare_products

    def slow_prepare(*args, **kwargs):
        out = prepare(*args, **kwargs)
        time.sleep(3.0)  # the first tile, started meanwhile, reads its scenes
        return out

    monkeypatch.setattr(engine_run, "prepare_products", slow_prepare)

    local = tmp_path / "archive"
    shutil.copytree(tiny_archive, local, ignore=shutil.ignore_patterns("truth"))
    archive = s3_store + "/archive"
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        if path.parent.name == "items" and path.suffix == ".json":
            text = path.read_text().replace(str(tiny_archive), archive)
            storage.write_text(storage.join(archive, str(path.relative_to(local))), text)
        else:
            storage.put_file(str(path), storage.join(archive, str(path.relative_to(local))))
    fc = json.loads((local / "stac" / "items" / "sentinel-2-l2a.json").read_text())
    victim = next(f for f in fc["features"] if f["properties"]["datetime"].startswith("2025-07-20"))
    red = victim["assets"]["red"]["href"].replace(str(tiny_archive), archive)
    saved = storage.read_bytes(red)
    storage.remove(red)
    stac = {"archive": archive, "max_cloud_cover": 100}
    config = load_config(_config(tmp_path, tiny_archive, products=["dehaze"], stac=stac))

    with _external_cluster() as address, Client(address) as client:
        with pytest.raises(BadInputError) as info:
            run_local(config, client)
        assert info.value.value == red and info.value.scene == victim["id"]
        storage.write_bytes(red, saved)
        redo = run_local(config, client)
    assert redo["written"] > 0, redo
    store = Path(config.store) / "tiny" / "dehaze" / "items"
    assert list(store.rglob("2025-07-20.json"))
