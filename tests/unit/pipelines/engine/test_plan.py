"""Tile grid and run plan: deterministic tiles, chunk-aligned regions, batches within limits."""

from __future__ import annotations

import math

import pytest
from shapely.geometry import box

from pipelines.engine.plan import batch_tiles
from pipelines.grid import ProvinceGrid, TileGrid
from pipelines.stages.registry import Stage, registry_groups, stage_groups


def test_tiles_are_aligned_deterministic_and_cover_the_aoi():
    grid = TileGrid("EPSG:32650", 10.0, 1024)
    aoi = box(401_000, 3_801_000, 425_000, 3_822_000)
    tiles = grid.tiles_for(aoi)
    assert [t.tile_id for t in tiles] == [t.tile_id for t in grid.tiles_for(aoi)]
    union = box(*ProvinceGrid(grid, tuple(tiles)).bounds)
    assert union.contains(aoi)
    for t in tiles:
        assert t.bounds[0] % grid.tile_size == 0 and t.bounds[1] % grid.tile_size == 0
        assert t.geobox.shape == (1024, 1024)


def test_regions_are_disjoint_and_chunk_aligned():
    grid = TileGrid("EPSG:32650", 10.0, 64)
    tiles = grid.tiles_for(box(0, 0, 2000, 1300))
    province = ProvinceGrid(grid, tuple(tiles))
    h, w = province.shape
    seen = set()
    for t in tiles:
        ys, xs = province.region(t)
        assert ys.start % 64 == 0 and xs.start % 64 == 0
        assert ys.stop <= h and xs.stop <= w
        assert (ys.start, xs.start) not in seen
        seen.add((ys.start, xs.start))
    assert len(seen) == len(tiles) == (h // 64) * (w // 64)


def test_a_170000_km2_province_fits_airflow_mapping_limits():
    grid = TileGrid("EPSG:32650", 10.0, 1024)
    side = math.sqrt(170_000e6)
    tiles = grid.tiles_for(box(200_000, 3_500_000, 200_000 + side, 3_500_000 + side))
    assert len(tiles) > 1024
    batches = batch_tiles([t.tile_id for t in tiles], 1024)
    assert len(batches) <= 1024
    flat = [tile_id for batch in batches for tile_id in batch]
    assert flat == [t.tile_id for t in tiles]
    size = math.ceil(len(tiles) / 1024)
    assert all(len(b) == size for b in batches[:-1]) and 0 < len(batches[-1]) <= size


def test_stage_groups_split_on_resources():
    def fake(name, gpu=False):
        return Stage(name, lambda: None, (), "", "1", {"GPU": 1} if gpu else {})

    groups = stage_groups([fake("a"), fake("b"), fake("c", gpu=True), fake("d")])
    assert [g.stages for g in groups] == [("a", "b"), ("c",), ("d",)]
    assert [g.pool for g in groups] == ["default_pool", "gpu", "default_pool"]


def test_registry_groups_cover_every_tile_stage_and_keep_gpu_stages_together():
    from pipelines.stages import get_stage, list_stages

    groups = registry_groups()
    names = [n for g in groups for n in g.stages]
    assert sorted(names) == [n for n in list_stages() if get_stage(n).scope == "tile"]
    assert "crop_type" not in names and "yield" not in names
    gpu_groups = [g for g in groups if g.pool == "gpu"]
    assert len(gpu_groups) == 1
    assert set(gpu_groups[0].stages) == {"dehaze_learned", "super_resolution"}
    assert all(get_stage(n).gpu for n in gpu_groups[0].stages)


def test_province_scope_products_are_refused_by_the_tile_plan():
    from pipelines.config import parse_config
    from pipelines.engine.plan import make_plan
    from pipelines.errors import BadInputError
    from tests.unit.pipelines.test_config import _with

    config = parse_config(_with(products=["crop_type"]))
    with pytest.raises(BadInputError, match="season_crop_yield"):
        make_plan(config, "http://127.0.0.1:1")


def test_backfill_windows_are_calendar_months_clipped_to_the_span():
    import datetime as dt

    from pipelines.production_cli import month_windows

    d = dt.date.fromisoformat
    assert month_windows(d("2025-01-15"), d("2025-03-02")) == [
        (d("2025-01-15"), d("2025-01-31")),
        (d("2025-02-01"), d("2025-02-28")),
        (d("2025-03-01"), d("2025-03-02")),
    ]
    assert month_windows(d("2024-12-31"), d("2024-12-31")) == [(d("2024-12-31"), d("2024-12-31"))]


def synthetic_plan():
    """A two-tile plan without a catalog: S2 on both tiles, S1 on the second only."""
    from pipelines.engine.plan import PlannedTile, RunPlan
    from pipelines.stages.registry import plan_groups, resolve_order

    def item(item_id: str, day: str) -> dict:
        return {"id": item_id, "properties": {"datetime": f"{day}T10:00:00Z"}}

    stages = resolve_order(["cloud_mask", "water_mask"])
    return RunPlan(
        province="p",
        config={"province": "p"},
        window=("2025-07-01", "2025-07-10"),
        crs="EPSG:32650",
        resolution=10.0,
        tile_px=64,
        tiles=(
            PlannedTile("x0000_y0000", 0, 0, {"s2": ("a", "b"), "s1": ()}),
            PlannedTile("x0001_y0000", 1, 0, {"s2": ("b",), "s1": ("s",)}),
        ),
        batches=[["x0000_y0000", "x0001_y0000"]],
        groups=plan_groups(stages),
        stage_versions={s.name: s.version for s in stages},
        dates={"cloud_mask": ["2025-07-01", "2025-07-03"], "water_mask": ["2025-07-02"]},
        items={
            "s2": [item("a", "2025-07-01"), item("b", "2025-07-03")],
            "s1": [item("s", "2025-07-02")],
        },
    )


def test_plan_json_round_trips_with_tiles_as_plain_entries():
    import json

    from pipelines.engine.plan import RunPlan

    plan = synthetic_plan()
    text = plan.to_json()
    assert RunPlan.from_json(text) == plan
    assert RunPlan.from_json(text).to_json() == text
    doc = json.loads(text)
    assert doc["tiles"][1] == {"tile_id": "x0001_y0000", "ix": 1, "iy": 0,
                               "scenes": {"s2": ["b"], "s1": ["s"]}}  # fmt: skip
    assert doc["window"] == ["2025-07-01", "2025-07-10"]
    assert doc["groups"][0]["stages"] == ["cloud_mask", "water_mask"]


def test_tile_queries_are_methods_of_the_plan():
    from pipelines.stages.registry import get_stage

    plan = synthetic_plan()
    cloud, water = get_stage("cloud_mask"), get_stage("water_mask")
    assert plan.tile_ids == ["x0000_y0000", "x0001_y0000"]
    assert plan.tile("x0001_y0000").ix == 1
    assert [d["id"] for d in plan.items_for("s2", "x0000_y0000")] == ["a", "b"]
    assert plan.items_for("s1", "x0000_y0000") == []
    assert plan.tile_dates(cloud, "x0000_y0000") == ["2025-07-01", "2025-07-03"]
    assert plan.tile_dates(cloud, "x0001_y0000") == ["2025-07-03"]
    assert not plan.stage_available(water, "x0000_y0000")
    assert plan.tile_dates(water, "x0000_y0000") == []
    assert plan.tile_dates(water, "x0001_y0000") == ["2025-07-02"]
    grid, tile_on = plan.stage_grid(get_stage("super_resolution"))
    assert grid.shape == (4 * 64, 4 * 2 * 64)
    assert tile_on("x0001_y0000").geobox.shape == (256, 256)
    with pytest.raises(KeyError):
        plan.tile("x9999_y9999")


def test_a_batchs_part_of_the_plan_answers_its_tiles_as_the_whole_plan_does(tmp_path):
    import json
    from dataclasses import replace

    from pipelines.engine.plan import RunPlan, read_plan_part
    from pipelines.engine.season import tile_offset
    from pipelines.errors import BadInputError
    from pipelines.stages.registry import get_stage

    whole = replace(synthetic_plan(), batches=[["x0000_y0000"], ["x0001_y0000"]])
    url = tmp_path / "plan.json"
    url.write_text(whole.to_json())
    stages = [get_stage(n) for n in ("cloud_mask", "water_mask", "super_resolution")]
    kept = {0: {"s2": ["a", "b"], "s1": []}, 1: {"s2": ["b"], "s1": ["s"]}}
    for batch, (tile_id,) in enumerate(whole.batches):
        part = read_plan_part(str(url), batch)
        assert part == whole.batch_part(batch)
        assert RunPlan.from_json(part.to_json()) == part
        assert {k: [d["id"] for d in v] for k, v in part.items.items()} == kept[batch]
        for source in ("s2", "s1"):
            assert part.items_for(source, tile_id) == whole.items_for(source, tile_id)
        for stage in stages:
            assert part.tile_dates(stage, tile_id) == whole.tile_dates(stage, tile_id)
            assert part.stage_grid(stage)[0] == whole.stage_grid(stage)[0]
        # every tile keeps its place: the cubes' extent and the parcel ids across the province
        assert part.tile_ids == whole.tile_ids and part.batches == whole.batches
        assert tile_offset(part, tile_id) == tile_offset(whole, tile_id)
        other = whole.batches[1 - batch][0]
        assert part.tile(other) == whole.tile(other)
        with pytest.raises(ValueError, match=f"tile {other} is not in batch {batch}"):
            part.items_for("s2", other)
    with pytest.raises(BadInputError, match="batch"):
        read_plan_part(str(url), 2)
    # a plan written in the layout before the lines (one-space indent) gives the same part
    url.write_text(json.dumps(json.loads(whole.to_json()), indent=1, sort_keys=True))
    assert read_plan_part(str(url), 1) == whole.batch_part(1)


def test_the_plan_gives_its_configs_aoi_to_the_tasks_that_read_it():
    """The season's batch tasks take the AOI from the plan (or its batch's part), not from an
    XCom that every task pulls (a province's boundary can be megabytes)."""
    from dataclasses import replace

    from shapely.geometry import box, mapping

    square = box(114.0, 22.0, 114.5, 22.5)
    feature = {"type": "Feature", "properties": {}, "geometry": mapping(square)}
    plan = replace(synthetic_plan(), config={"province": "p", "aoi": feature})
    assert plan.aoi.equals(square) and plan.batch_part(0).aoi.equals(square)


def test_the_plan_says_how_many_mantissa_bits_stored_floats_keep():
    from dataclasses import replace

    from pipelines.config import STORED_MANTISSA_BITS
    from pipelines.engine.graph import product_spec
    from pipelines.stages.registry import get_stage

    plan = synthetic_plan()
    old = replace(plan, config={k: v for k, v in plan.config.items() if k != "mantissa_bits"})
    assert old.mantissa_bits == STORED_MANTISSA_BITS  # a plan written before the field
    for bits in (10, None):
        configured = replace(plan, config={**plan.config, "mantissa_bits": bits})
        assert configured.mantissa_bits == bits
        for name in ("dehaze", "water_mask", "haze_index"):
            spec = product_spec(get_stage(name), configured.mantissa_bits)
            assert spec.mantissa_bits == bits


def test_the_read_estimate_counts_each_inputs_bands_and_bytes():
    from pipelines.engine.plan import estimate

    est = estimate(synthetic_plan(), {"cloud_mask": 1.0, "water_mask": 1.0})
    # S2: 3 scene-tiles x 5 bands x 2 bytes; S1: 1 scene-tile x 2 bands x 4 bytes
    assert est["bytes_to_read"] == 64 * 64 * (3 * 5 * 2 + 1 * 2 * 4)


def test_a_plan_where_only_the_dem_has_scenes_has_no_scenes():
    import dataclasses

    from pipelines.engine.plan import PlannedTile, require_scenes
    from pipelines.errors import NoScenesError

    plan = synthetic_plan()
    require_scenes(plan)  # scenes of dated inputs: plannable
    dem = {"id": "d", "properties": {"datetime": "2021-01-01T00:00:00Z"}}
    only_dem = dataclasses.replace(
        plan,
        tiles=tuple(
            PlannedTile(t.tile_id, t.ix, t.iy, {"s2": (), "s1": (), "dem": ("d",)})
            for t in plan.tiles
        ),
        dates={"cloud_mask": [], "water_mask": []},
        items={"s2": [], "s1": [], "dem": [dem]},
    )
    with pytest.raises(NoScenesError, match="'dem': 1"):
        require_scenes(only_dem)
    with pytest.raises(NoScenesError):
        require_scenes(dataclasses.replace(plan, tiles=()))


def test_a_plan_names_the_sources_its_tiles_derive():
    from dataclasses import replace

    def plan_of(items: dict[str, list[dict]]):
        return replace(synthetic_plan(), items=items)

    dem = {"id": "DEM_A"}
    assert plan_of({"dem": [dem], "hand": []}).derived_sources() == {"hand": "dem"}
    assert plan_of({"dem": [dem], "hand": [{"id": "HAND_A"}]}).derived_sources() == {}
    assert plan_of({"dem": [], "hand": []}).derived_sources() == {}
    assert plan_of({"s1": [], "dem": [dem]}).derived_sources() == {}  # s1 is never derived
