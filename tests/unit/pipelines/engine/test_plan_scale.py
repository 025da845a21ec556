"""Planning at province scale: the tile x scene overlap test, plan lookups, shared searches."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from pipelines.engine.plan import PlannedTile, RunPlan, tile_overlaps


def _brute_force(boxes, geoms, min_area):
    return [
        [k for k, g in enumerate(geoms) if g.intersects(b) and g.intersection(b).area >= min_area]
        for b in boxes
    ]


def test_tile_overlaps_equal_the_pairwise_test():
    rng = np.random.default_rng(3)
    boxes = [box(x, y, x + 100, y + 100) for y in range(0, 1000, 100) for x in range(0, 1000, 100)]
    geoms = []
    for _ in range(60):
        cx, cy = rng.uniform(-100, 1100, 2)
        w, h = rng.uniform(5, 400, 2)
        a, b = rng.uniform(-50, 50, 2)  # a parallelogram spanned by (w, a) and (b, h)
        geoms.append(
            Polygon([(cx, cy), (cx + w, cy + a), (cx + w + b, cy + a + h), (cx + b, cy + h)])
        )
    # Edge cases: touching a tile edge only, a sliver under one pixel, a footprint covering all.
    geoms += [box(100, 100, 200, 150).buffer(0), box(300, 0, 300.5, 100), box(-1, -1, 1001, 1001)]
    boxes += [box(2000, 2000, 2100, 2100)]  # overlaps nothing
    got = tile_overlaps(boxes, geoms, min_area=1.0)
    assert got == _brute_force(boxes, geoms, 1.0)
    assert got[-1] == [] and all(len(geoms) - 1 in g for g in got[:-1])
    assert tile_overlaps([], geoms, 1.0) == [] and tile_overlaps(boxes, [], 1.0) == [[]] * 101


def _plan(tiles, items):
    return RunPlan(
        province="p",
        config={},
        window=("2025-07-01", "2025-07-31"),
        crs="EPSG:32650",
        resolution=10.0,
        tile_px=64,
        tiles=tuple(tiles),
        batches=[[t.tile_id for t in tiles]],
        groups=[],
        stage_versions={},
        dates={},
        items=items,
    )


#: A footprint over the whole test AOI, and the AOI (EPSG:4326).
FOOTPRINT = {"type": "Polygon", "coordinates": [[[116, 34], [118, 34], [118, 36], [116, 34]]]}
AOI = {"type": "Polygon", "coordinates": [[[117, 35], [117.1, 35], [117.1, 35.1], [117, 35]]]}


def _scene(item_id: str, when: str):
    """A pystac item over :data:`FOOTPRINT` at ``when`` (ISO), 1 % cloud."""
    import pystac

    when_dt = pystac.utils.str_to_datetime(when)
    return pystac.Item(item_id, FOOTPRINT, [116, 34, 118, 36], when_dt, {"eo:cloud_cover": 1.0})


def _province(products: list[str], **stac):
    """A July 2025 config of :data:`AOI` searching a STAC API at a closed port."""
    from pipelines.config import parse_config

    return parse_config(
        {
            "province": "p",
            "aoi": AOI,
            "crs": "EPSG:32650",
            "start": "2025-07-01",
            "end": "2025-07-31",
            "products": products,
            "stac": {"url": "http://127.0.0.1:1", **stac},
            "store": "/tmp/unused",
        }
    )


def test_plan_lookups_keep_plan_order_and_the_first_entry():
    items = {"s2": [{"id": i, "properties": {}} for i in ("c", "a", "b", "a2")]}
    first = PlannedTile("x0000_y0000", 0, 0, {"s2": ("a", "b", "c", "zz")})
    shadow = PlannedTile("x0000_y0000", 9, 9, {"s2": ()})
    plan = _plan([first, shadow, PlannedTile("x0001_y0000", 1, 0, {})], items)
    assert plan.planned_tile("x0000_y0000") is first
    # plan order (the items' order), unknown ids ignored
    assert [d["id"] for d in plan.items_for("s2", "x0000_y0000")] == ["c", "a", "b"]
    assert plan.items_for("s1", "x0000_y0000") == []
    assert plan.items_for("s2", "x0001_y0000") == []
    with pytest.raises(KeyError):
        plan.planned_tile("x0005_y0005")


def test_inputs_with_the_same_query_share_one_search(monkeypatch):
    """s1 and s1_post search the same collection and window when no event is given: one
    search, the same items under both inputs."""
    from pipelines.catalog import search as search_module
    from pipelines.engine.plan import make_plan

    calls = []

    def fake_search(url, collections, **kwargs):
        calls.append((tuple(collections), kwargs["datetime"]))
        return [_scene(f"{collections[0]}-1", "2025-07-03T03:00:00Z")]

    monkeypatch.setattr(search_module, "search", fake_search)
    config = _province(["water_mask", "flood_change"])
    plan = make_plan(config, "http://127.0.0.1:1")
    assert plan.items["s1"] == plan.items["s1_post"] and plan.items["s1"]
    s1_searches = [c for c in calls if c[0] == ("sentinel-1-rtc",)]
    assert len(s1_searches) == 2  # the run window (s1, s1_post) and the pre-event window
    assert len({c[1] for c in s1_searches}) == 2
    assert all(t.scenes["s1"] == t.scenes["s1_post"] for t in plan.tiles)


def test_an_optional_input_without_a_collection_is_not_searched(monkeypatch):
    """A catalog configured without a DEM collection: water_mask (whose DEM is optional) is
    planned without it; flood_change (which needs it) is refused, naming the missing key."""
    import pystac

    from pipelines.catalog import search as search_module
    from pipelines.config import parse_config
    from pipelines.engine.plan import make_plan
    from pipelines.errors import BadInputError
    from pipelines.stages import get_stage

    searched = []

    def fake_search(url, collections, **kwargs):
        searched.append(collections[0])
        geom = {"type": "Polygon", "coordinates": [[[116, 34], [118, 34], [118, 36], [116, 34]]]}
        when = pystac.utils.str_to_datetime("2025-07-03T03:00:00Z")
        return [pystac.Item(f"{collections[0]}-1", geom, [116, 34, 118, 36], when, {})]

    monkeypatch.setattr(search_module, "search", fake_search)
    aoi = {"type": "Polygon", "coordinates": [[[117, 35], [117.1, 35], [117.1, 35.1], [117, 35]]]}

    def config(products: list[str]):
        return parse_config(
            {
                "province": "p",
                "aoi": aoi,
                "crs": "EPSG:32650",
                "start": "2025-07-01",
                "end": "2025-07-31",
                "products": products,
                "stac": {"url": "http://127.0.0.1:1", "collections": {"s1": "sentinel-1-rtc"}},
                "store": "/tmp/unused",
            }
        )

    plan = make_plan(config(["water_mask"]), "http://127.0.0.1:1")
    assert searched == ["sentinel-1-rtc"]
    assert plan.items["dem"] == [] and all(t.scenes["dem"] == () for t in plan.tiles)
    assert plan.dates["water_mask"] == ["2025-07-03"]
    assert all(plan.stage_available(get_stage("water_mask"), t.tile_id) for t in plan.tiles)
    with pytest.raises(BadInputError, match=r"stac\.collections\.dem"):
        make_plan(config(["water_mask", "flood_change"]), "http://127.0.0.1:1")


def test_a_tile_gets_one_track_of_s1_scenes_a_day(monkeypatch, caplog):
    """One UTC day, two passes: a descending one (track 69, 03:00) over the west of the
    province and an ascending one (track 142, 15:00) over all of it. A tile gets the scenes of
    one track that day, the one covering more of it, the earlier on a tie: the descending pass
    in the west, the ascending one elsewhere; a day of one pass is left as it is."""
    import pystac

    from pipelines.catalog import search as search_module
    from pipelines.config import parse_config
    from pipelines.engine.plan import make_plan, one_pass_a_day

    def item(item_id: str, lon: tuple[float, float], when: str, track: int) -> pystac.Item:
        (w, e), (s, n) = lon, (34.0, 36.0)
        geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        props = {"sat:relative_orbit": track}
        return pystac.Item(item_id, geom, [w, s, e, n], pystac.utils.str_to_datetime(when), props)

    scenes = {
        "sentinel-1-rtc": [
            item("desc", (116.0, 117.05), "2025-07-03T03:00:00Z", 69),
            item("asc", (116.0, 118.0), "2025-07-03T15:00:00Z", 142),
            item("asc_later", (116.0, 118.0), "2025-07-15T15:00:00Z", 142),
        ],
        "cop-dem-glo-30": [item("dem", (116.0, 118.0), "2021-04-22T00:00:00Z", 0)],
    }
    monkeypatch.setattr(search_module, "search", lambda url, c, **kw: scenes[c[0]])
    aoi = {"type": "Polygon", "coordinates": [[[117, 35], [117.1, 35], [117.1, 35.1], [117, 35]]]}
    config = parse_config(
        {
            "province": "p",
            "aoi": aoi,
            "crs": "EPSG:32650",
            "tile_px": 256,
            "start": "2025-07-01",
            "end": "2025-07-31",
            "products": ["water_mask"],
            "stac": {"url": "http://127.0.0.1:1"},
            "store": "/tmp/unused",
        }
    )
    caplog.set_level("INFO", logger="pipelines.engine.plan")
    plan = make_plan(config, "http://127.0.0.1:1")
    got = {t.scenes["s1"] for t in plan.tiles}
    assert got == {("desc", "asc_later"), ("asc", "asc_later")}
    west = [t for t in plan.tiles if t.scenes["s1"][0] == "desc"]
    assert west and all(t.ix < u.ix for t in west for u in plan.tiles if u.scenes["s1"][0] == "asc")
    assert plan.dates["water_mask"] == ["2025-07-03", "2025-07-15"]
    # One scene left out on each tile that both passes overlap: the west and the seam.
    import re

    left_out = int(re.search(r"(\d+) S1 scene\(s\) of tiles left out", caplog.text)[1])
    assert len(west) < left_out < len(plan.tiles)
    # Scenes without a track are one track of their own; a tie goes to the earlier pass.
    from shapely.geometry import box

    bare = [{"properties": {"datetime": "2025-07-03T03:00:00Z"}} for _ in range(3)]
    bare[2]["properties"]["sat:relative_orbit"] = 7
    tile, whole = box(0, 0, 10, 10), box(-5, -5, 15, 15)
    assert one_pass_a_day(bare, [0, 1, 2], [whole, box(0, 0, 2, 2), whole], tile) == [0, 1]
    assert one_pass_a_day(bare, [2], [whole] * 3, tile) == [2]


def test_items_named_by_exclude_items_are_left_out_of_every_search(monkeypatch, caplog):
    """A scene broken where it is stored, listed under stac.exclude_items: planned on no tile,
    its date gone where it was the date's only scene; the log counts it and names an ID that
    no search found (a typo, or a scene of another window)."""
    import logging

    from pipelines.catalog import search as search_module
    from pipelines.engine.plan import make_plan

    def fake_search(url, collections, **kwargs):
        return [_scene(f"S2_{day}", f"2025-07-{day}T03:00:00Z") for day in ("03", "08", "13")]

    monkeypatch.setattr(search_module, "search", fake_search)

    def plan_excluding(*ids: str) -> RunPlan:
        config = _province(["cloud_mask"], exclude_items=list(ids))
        return make_plan(config, "http://127.0.0.1:1")

    assert plan_excluding().dates["cloud_mask"] == ["2025-07-03", "2025-07-08", "2025-07-13"]
    with caplog.at_level(logging.INFO, logger="pipelines.engine.plan"):
        plan = plan_excluding("S2_08", "S2_99")
    assert [d["id"] for d in plan.items["s2"]] == ["S2_03", "S2_13"]
    assert all("S2_08" not in t.scenes["s2"] and t.scenes["s2"] for t in plan.tiles)
    assert plan.dates["cloud_mask"] == ["2025-07-03", "2025-07-13"]
    assert "1 scene(s) left out by stac.exclude_items" in caplog.text
    assert "['S2_99']" in caplog.text
    assert plan.config["stac"]["exclude_items"] == ["S2_08", "S2_99"]  # the plan records it
    assert plan.left_out == ("S2_08",) and RunPlan.from_json(plan.to_json()) == plan
    assert "left_out" not in plan_excluding().to_json()  # as before the field existed
