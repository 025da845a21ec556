"""The province bench on a small province (about 20 tiles, one month): the structural bars of a
province-scale run hold (mapped tasks within the cap, small XComs, bounded tile graphs), the
STAC requests do not grow with the tiles, and each tile's scenes equal a pairwise overlap test
of the archive's footprints."""

from __future__ import annotations

import json

from shapely.geometry import box, shape

from pipelines.bench_province import BARS, ProvinceSpec, month_window, run_bench
from pipelines.grid import reproject_geometry


def test_a_small_province_plans_within_the_bars(tmp_path):
    spec = ProvinceSpec(area_km2=20 * 10.24**2, months=(6, 7))  # July and its pre-event June
    out = run_bench(spec, tmp_path, [month_window(spec.year, 7)], max_mapped_tasks=8,
                    sample_tiles=1)  # fmt: skip
    (run,) = out["runs"]
    assert 16 <= run["tiles"] <= 36
    assert run["checks"]["mapped_tasks"] and run["checks"]["xcom_bytes"]
    assert run["checks"]["graph_tasks"]
    assert 0 < run["mapped_tasks"]["cpu0"] <= 8 and run["tiles_per_batch"] <= 5
    assert all(0 < n < BARS["xcom_bytes"] for n in run["xcom_bytes"].values())
    sampled = run["graph_tasks"]["cpu0"]
    assert len(sampled) == 1 and all(0 < n < BARS["graph_tasks"] for n in sampled.values())
    # one search per distinct query (s1 and s1_post share one), one page each at this size
    assert run["stac_requests_by_path"]["POST /search"] == 4
    assert run["scenes"]["s1"] == run["scenes"]["s1_post"] > 0 and run["scenes"]["s2"] > 0
    assert run["rss_peak_bytes"] >= run["rss_before_bytes"] > 0
    # a batch's task reads its part of the plan, smaller than the whole
    read = run["plan_read"]
    assert 0 <= read["batch"] < run["mapped_tasks"]["cpu0"]
    assert 0 < read["items"] <= sum(run["scenes"].values())
    assert 0 < read["part_peak_bytes"] < read["whole_peak_bytes"]
    # a crop-map batch reads its tiles' parcels of the season's predictions, not the province's
    crops = run["crop_predictions"]
    assert 0 < crops["batch_rows"] < crops["parcels"]
    assert 0 < crops["part_peak_bytes"] < crops["whole_peak_bytes"]
    assert not list((tmp_path / "store").rglob("crop_predictions.parquet"))
    # resumed after its last batch failed: that batch alone is pending, and the markers the
    # bench wrote to find it are gone again
    resume = run["resume"]
    assert resume["pending_batches"] == 1 and resume["markers"] > run["tiles"]
    # the run's report read again for the unfinished tiles only: the last batch's
    assert 0 < run["tiles"] - resume["settled_tiles"] <= run["tiles_per_batch"]
    assert resume["settled_report_same"] and resume["report_s"] > 0
    assert not list((tmp_path / "store").rglob("items/*/*.json"))

    # the plan's scenes per tile equal a pairwise test of every archive footprint
    plan = json.loads(next((tmp_path / "store").rglob("plan.json")).read_text())
    size = spec.resolution * spec.tile_px
    wanted = {d["id"] for d in plan["items"]["s2"]}
    s2 = json.loads((tmp_path / "archive" / "stac" / "items" / "sentinel-2-l2a.json").read_text())
    footprints = [
        (f["id"], reproject_geometry(shape(f["geometry"]), "EPSG:4326", spec.crs))
        for f in s2["features"]
        if f["id"] in wanted
    ]
    order = {d["id"]: k for k, d in enumerate(plan["items"]["s2"])}
    for tile in plan["tiles"]:
        tb = box(tile["ix"] * size, tile["iy"] * size, (tile["ix"] + 1) * size,
                 (tile["iy"] + 1) * size)  # fmt: skip
        expect = sorted(
            (i for i, g in footprints if g.intersects(tb) and g.intersection(tb).area >= 100.0),
            key=order.__getitem__,
        )
        assert tile["scenes"]["s2"] == expect
