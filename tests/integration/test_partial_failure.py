"""Partial failure keeps what can be done: one corrupt Sentinel-2 COG fails the S2 products of
the tiles it covers, their S1 products are still written, the catalog lists every marker, and a
rerun after the COG is restored completes only what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shapely.geometry import box, mapping
from typer.testing import CliRunner

from pipelines.config import parse_config
from pipelines.engine.manifest import BatchManifest
from pipelines.engine.plan import read_plan
from pipelines.engine.report import run_report
from pipelines.engine.run import run_local
from pipelines.errors import BadInputError
from pipelines.products import catalog_items
from pipelines.stages.registry import get_stage

pytestmark = pytest.mark.integration

S2_PRODUCTS, S1_PRODUCTS = ("cloud_mask",), ("water_mask", "flood_change")


def _corrupt_data_blocks(path: Path) -> bytes:
    """Overwrite every full-resolution data block of a tiled GeoTIFF (the header stays intact,
    so the file still opens); returns the original bytes."""
    import rasterio

    original = path.read_bytes()
    data = bytearray(original)
    with rasterio.open(path) as src:
        for (row, col), _ in src.block_windows(1):
            offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
            size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
            data[offset + 2 : offset + size - 2] = b"\xff" * (size - 4)
    path.write_bytes(bytes(data))
    return original


def _markers(store: Path, product: str) -> set[tuple[str, str]]:
    return {(p.parent.name, p.stem) for p in (store / "tiny" / product / "items").rglob("*.json")}


def test_a_corrupt_s2_cog_keeps_the_s1_products_and_the_catalog(
    tiny_archive, tmp_path, monkeypatch
):
    from distributed import Client, LocalCluster

    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root, ignore=shutil.ignore_patterns("truth"))
    for path in (root / "stac" / "items").glob("*.json"):
        path.write_text(path.read_text().replace(str(tiny_archive), str(root)))
    s2_file = root / "stac" / "items" / "sentinel-2-l2a.json"
    collection = json.loads(s2_file.read_text())
    victim = next(
        f for f in collection["features"] if f["properties"]["datetime"].startswith("2025-07-20")
    )
    # The victim scene's footprint cut to its western half: it covers some tiles, not all.
    west, south, east, north = victim["bbox"]
    victim["bbox"] = [west, south, (west + east) / 2, north]
    victim["geometry"] = mapping(box(*victim["bbox"]))
    s2_file.write_text(json.dumps(collection))
    href = Path(victim["assets"]["scl"]["href"])
    original = _corrupt_data_blocks(href)

    store = tmp_path / "store"
    raw_config = {
        "province": "tiny",
        "aoi": json.loads((root / "province.geojson").read_text()),
        "crs": json.loads((root / "archive.json").read_text())["crs"],
        "tile_px": 128,
        "start": "2025-07-15",
        "end": "2025-07-25",
        "products": [*S2_PRODUCTS, *S1_PRODUCTS],
        "stac": {"archive": str(root), "max_cloud_cover": 100},
        "store": str(store),
        "dask": {"n_workers": 1, "gpu_workers": 0, "memory_limit": "2GiB"},
    }
    config = parse_config(raw_config)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(json.dumps(raw_config))
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(BadInputError) as info:
            run_local(config, client)
        # the corrupt data block names the file (the header opened fine)
        assert str(href) in str(info.value) and "data block" in str(info.value)

        (plan_path,) = store.glob("tiny/runs/*/plan.json")
        plan = read_plan(str(plan_path))
        kept = [
            BatchManifest.from_xcom(json.loads(p.read_text()))
            for p in plan_path.parent.glob("failed/*.json")
        ]
        failed = [f for m in kept for f in m.failed]
        # only the S2 product failed, as bad input, on the tiles the victim covers
        assert failed and {f.product for f in failed} == set(S2_PRODUCTS)
        assert {f.kind for f in failed} == {"bad_input"} and str(href) in failed[0].message
        hit = {f.tile_id for f in failed}
        covered = {
            t for t in plan.tile_ids for i in plan.items_for("s2", t) if i["id"] == victim["id"]
        }
        assert hit == covered and 0 < len(hit) < len(plan.tile_ids)
        for name in S1_PRODUCTS:  # every S1 product is written, on the hit tiles too
            stage = get_stage(name)
            planned = {(t, lab) for t in plan.tile_ids for lab in plan.tile_dates(stage, t)}
            assert planned and _markers(store, name) == planned, name
        cloud = _markers(store, "cloud_mask")
        assert not any(t in hit for t, _ in cloud)

        # the run report: the hit tiles failed with their reason, the others are done
        report = run_report(str(plan_path))
        assert report.state == "failed" and report.outcome == "failed"
        assert {t for t, _ in report.failed()} == hit
        assert all(
            p.kind == "bad_input" and str(href) in str(p.message) for _, p in report.failed()
        )
        assert all(t.state == "done" for t in report.tiles if t.tile_id not in hit)
        assert all(t.bytes_written > 0 and t.seconds > 0 for t in report.tiles)
        shown = CliRunner().invoke(
            status_command(), [report.run_id, "--config", str(config_file), "--json"]
        )
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout.strip().splitlines()[-1])["counts"] == report.counts

        # the catalog lists every marker written, and only those
        catalog = json.loads((store / "tiny" / "catalog.json").read_text())
        written = {n for n in (*S2_PRODUCTS, *S1_PRODUCTS) if _markers(store, n)}
        assert written >= set(S1_PRODUCTS)
        assert written == {
            link["href"].split("/")[1] for link in catalog["links"] if link["rel"] == "child"
        }
        for name in written:
            items = catalog_items(str(store), "tiny", name)
            assert len(items) == len(_markers(store, name)), name

        # the COG restored, what `terrapipe redo RUN --failed` has the DAG do (its `tiles` param:
        # the failed tiles) completes them and only them: a product of another tile left
        # pending stays pending
        href.write_bytes(original)
        items = (store / "tiny" / "water_mask" / "items").rglob("*.json")
        left = sorted(p for p in items if p.parent.name not in hit)[0]
        other = left.parent.name
        left.unlink()
        pending = run_report(str(plan_path))
        assert {(t.tile_id, t.state) for t in pending.tiles if t.state == "pending"} == {
            (other, "pending")
        }
        assert report.failed_tiles() == sorted(hit, key=plan.tile_ids.index)
        params = {"config": str(config_file), "start": plan.window[0], "end": plan.window[1]}
        redone = _dag_tasks({**params, "tiles": ",".join(report.failed_tiles())}, cluster)
        assert redone["written"] == sum(len(f.labels) for f in failed)
        after = run_report(str(plan_path))
        assert not after.failed() and after.counts["pending"] == 1
        assert {(t.tile_id, t.state) for t in after.tiles if t.state != "done"} == {
            (other, "pending")
        }
        assert {t for t, _ in _markers(store, "cloud_mask")} >= hit

        # a plain rerun writes only what is left
        again = run_local(config, client)
    assert again["written"] == 1
    assert again["skipped"] == sum(len(_markers(store, n)) for n in S1_PRODUCTS) - 1 + len(
        _markers(store, "cloud_mask")
    )
    stage = get_stage("cloud_mask")
    assert _markers(store, "cloud_mask") == {
        (t, lab) for t in plan.tile_ids for lab in plan.tile_dates(stage, t)
    }
    assert not list(plan_path.parent.glob("failed/*.json"))
    done = run_report(str(plan_path))
    assert done.state == "done" and done.outcome == "success" and not done.failed()
    assert json.loads((plan_path.parent / "report.json").read_text())["state"] == "done"

    # after an upgrade of a stage, the report says why its products are pending again
    from dataclasses import replace

    from pipelines.stages import registry

    monkeypatch.setitem(registry._STAGES, "cloud_mask", replace(stage, version="9.9.9"))
    upgraded = run_report(str(plan_path))
    why = {
        p.outdated
        for t in upgraded.tiles
        for p in t.products
        if p.product == "cloud_mask" and p.labels
    }
    assert upgraded.state == "pending" and why == {(f"cloud_mask {stage.version} -> 9.9.9",)}


def _dag_tasks(params: dict[str, str], cluster) -> dict:
    """The province_production DAG's task bodies in their order, in this process, on
    ``cluster`` (no scheduler): plan, each stage group's pending batches, finalize; the
    finalize task's totals."""
    from operators.production import batches_task, finalize_task, plan_task, process_task

    info = plan_task(params, {})
    handle = {"address": cluster.scheduler_address, "pid": None}
    manifests = [
        process_task(batch, info, handle, group)
        for group in info["groups"]
        for batch in batches_task(info, group)
    ]
    return finalize_task(info, manifests)


def test_redo_failed_runs_the_failed_tiles_of_the_run(monkeypatch, tmp_path):
    """``terrapipe redo RUN --failed`` hands the DAG the failed tiles of the run's report
    (its ``tiles`` param), in the run's window."""
    import typer

    from pipelines import production_cli
    from pipelines.engine.report import ProductStatus, RunReport, TileStatus

    failed = ProductStatus("cloud_mask", "failed", 1, 0, "bad_input", "x", "corrupt")
    done = ProductStatus("cloud_mask", "done", 1, 1)
    report = RunReport(
        "r1",
        "/s/tiny/runs/r1/plan.json",
        "tiny",
        ("2025-07-15", "2025-07-25"),
        "failed",
        "failed",
        None,
        {"failed": 2, "done": 1, "pending": 0, "no_scenes": 0},
        (
            TileStatus("t0", "failed", (failed,), 1.0, 1),
            TileStatus("t1", "done", (done,), 1.0, 1),
            TileStatus("t2", "failed", (failed, done), 1.0, 1),
        ),
    )
    calls = []
    monkeypatch.setattr(production_cli, "_run_window", lambda *a: calls.append(a) or {})
    monkeypatch.setattr(production_cli, "print_result", lambda result: None)
    monkeypatch.setattr(production_cli, "raise_for", lambda result: None)
    monkeypatch.setattr("pipelines.engine.report.plan_url_of", lambda *a: report.plan_url)
    monkeypatch.setattr("pipelines.engine.report.run_report", lambda *a: report)
    monkeypatch.setattr(
        "pipelines.engine.plan.read_plan",
        lambda url: type("Plan", (), {"window": report.window})(),
    )
    monkeypatch.setattr("pipelines.engine.plan.config_plan_url", lambda cfg: report.plan_url)

    class Config:  # what redo reads of the run's config
        store, province = "/s", "tiny"

        def model_copy(self, update: dict) -> Config:
            return self

    monkeypatch.setattr("pipelines.config.load_config", lambda *a, **k: Config())
    app = typer.Typer()
    app.command()(production_cli.redo)
    result = CliRunner().invoke(app, ["r1", "--failed"])
    assert result.exit_code == 0, result.output
    ((_, _, _, _, start, end, tiles),) = calls
    assert (start, end, list(tiles)) == ("2025-07-15", "2025-07-25", ["t0", "t2"])
    # without --failed: every tile left undone (no tile filter)
    assert CliRunner().invoke(app, ["r1"]).exit_code == 0
    assert list(calls[1][6]) == []


def status_command():
    """``terrapipe status`` as a one-command typer app."""
    import typer

    from pipelines.production_cli import status

    app = typer.Typer()
    app.command()(status)
    return app


def test_independent_parts_share_no_source_and_no_upstream_stage():
    from pipelines.engine.run import independent_parts
    from pipelines.stages.registry import StageGroup

    names = ("cloud_mask", "water_mask", "haze_index", "flood_change", "dehaze")
    group = StageGroup("cpu0", names, {}, "default_pool")
    # water_mask may read the DEM flood_change needs: an optional input joins no parts, so an
    # unreadable pre-event scene of flood_change cannot fail water_mask.
    assert set(independent_parts(list(names), group)) == {
        ("water_mask",),
        ("flood_change",),
        ("cloud_mask", "haze_index", "dehaze"),
    }
