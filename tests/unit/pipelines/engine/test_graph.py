"""The one resolver: sources gathered once, stages called on their declared inputs in order."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from pipelines.engine.graph import (
    as_dataset,
    call_stage,
    gather_sources,
    product_view,
    resolve_stages,
    select_labels,
)
from pipelines.errors import BadInputError
from pipelines.stages.registry import Stage


def _lazy(value: float = 1.0) -> xr.DataArray:
    return xr.DataArray(da.full((4, 4), value, chunks=2), dims=("y", "x"))


def _brighter(s2: xr.DataArray) -> xr.DataArray:
    return s2 + 1


def _ratio(brighter: xr.DataArray, s1: xr.DataArray | None = None) -> xr.DataArray:
    return brighter / (2 if s1 is None else s1)


BRIGHTER = Stage("brighter", _brighter, ("s2",), "(y, x)", "1")
RATIO = Stage("ratio", _ratio, ("brighter", "s1"), "(y, x)", "1", optional=("s1",))


def test_stages_resolve_in_order_on_their_declared_inputs():
    outputs = resolve_stages([BRIGHTER, RATIO], {"s2": _lazy(3.0), "s1": None})
    assert set(outputs) == {"brighter", "ratio"}
    assert float(outputs["ratio"].max()) == 2.0  # (3 + 1) / 2: s1 absent
    assert isinstance(outputs["ratio"].data, da.Array)  # lazy: nothing computed


def test_a_custom_apply_sees_each_stage_once_with_its_inputs():
    seen: list[tuple[str, tuple[str, ...]]] = []

    def apply(stage, inputs):
        seen.append((stage.name, tuple(inputs)))
        return call_stage(stage, inputs)

    resolve_stages([BRIGHTER, RATIO], {"s2": _lazy(), "s1": _lazy(4.0)}, apply)
    assert seen == [("brighter", ("s2",)), ("ratio", ("brighter", "s1"))]


def test_sources_are_gathered_once_optional_ones_as_none_and_needed_ones_refused():
    reads: list[str] = []

    def read(source: str) -> xr.DataArray | None:
        reads.append(source)
        return _lazy() if source == "s2" else None

    def missing(source: str) -> Exception:
        return BadInputError(source, None, "scenes")

    assert gather_sources([BRIGHTER, RATIO], read, missing)["s1"] is None
    assert reads == ["s2", "s1"]
    needs_s1 = Stage("needs_s1", _ratio, ("brighter", "s1"), "(y, x)", "1")
    with pytest.raises(BadInputError, match="s1"):
        gather_sources([BRIGHTER, needs_s1], read, missing)


def test_gpu_stages_are_annotated_with_their_resources():
    gpu = Stage("brighter", _brighter, ("s2",), "(y, x)", "1", {"GPU": 1})
    layers = call_stage(gpu, {"s2": _lazy()}).data.__dask_graph__().layers
    assert {"resources": {"GPU": 1}} in [layer.annotations for layer in layers.values()]
    plain = call_stage(BRIGHTER, {"s2": _lazy()}).data.__dask_graph__().layers
    assert all(not layer.annotations for layer in plain.values())


def test_outputs_become_product_datasets():
    bands = xr.DataArray(np.zeros((2, 3, 3)), dims=("band", "y", "x"), coords={"band": ["a", "b"]})
    assert sorted(as_dataset("x", bands).data_vars) == ["a", "b"]
    assert list(as_dataset("x", _lazy()).data_vars) == ["x"]
    picky = Stage("x", _brighter, ("s2",), "", "1", product_vars=("a",))
    assert list(product_view(picky, bands).data_vars) == ["a"]


def test_labels_select_time_steps_by_day():
    times = np.array(["2025-07-01T10:00", "2025-07-03T10:00"], dtype="datetime64[ns]")
    ds = xr.Dataset({"v": ("time", [1, 2])}, coords={"time": times})
    assert select_labels(ds, ["2025-07-03"])["v"].values.tolist() == [2]
    assert select_labels(ds.isel(time=0, drop=True), []) is not None  # no time dim: as it is


def test_a_tile_reads_signed_links_while_the_plan_keeps_them_unsigned(real_data, sas_endpoint):
    """load_source reads with the signing reader as the plan's config says (Planetary
    Computer's API: by default): the workers sign as they open the files; the plan, its JSON
    (XComs, the run's files), its items and the read graph stay unsigned."""
    import copy
    import json
    from dataclasses import replace

    from stackstac.rio_reader import AutoParallelRioReader

    from pipelines.engine.graph import load_source
    from pipelines.engine.plan import PlannedTile, RunPlan
    from pipelines.signed_reads import SigningRioReader
    from tests.fixtures.sas import graph_readers

    folder = real_data / "stac-json/items/mpc/sentinel-1-rtc"
    items = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    items = [i for i in items if i["properties"]["proj:epsg"] == 32633]
    tile_id = "x0195_y1485"  # 2.56 km of UTM 33N inside the 2024-04-19 frames
    plan = RunPlan(
        province="p",
        config={
            "province": "p",
            "stac": {"url": "https://planetarycomputer.microsoft.com/api/stac/v1"},
        },
        window=("2024-04-19", "2024-04-19"),
        crs="EPSG:32633",
        resolution=10.0,
        tile_px=256,
        tiles=(PlannedTile(tile_id, 195, 1485, {"s1": tuple(i["id"] for i in items)}),),
        batches=[[tile_id]],
        groups=[],
        stage_versions={},
        dates={},
        items={"s1": items},
    )
    before = copy.deepcopy(plan.items)
    text = plan.to_json()

    def graph_urls(arr: xr.DataArray) -> set[str]:
        tables = [v for v in dict(arr.__dask_graph__()).values() if isinstance(v, np.ndarray)]
        return {str(u) for t in tables if t.dtype.names for u in t["url"].ravel()}

    signed = load_source(plan, "s1", tile_id)
    urls = graph_urls(signed)
    assert urls and not any("?" in u for u in urls)
    assert graph_readers(signed) == {SigningRioReader}
    assert plan.items == before and plan.to_json() == text and "sig=" not in text
    unsigned_plan = replace(
        plan, config={**plan.config, "stac": {**plan.config["stac"], "sign": "none"}}
    )
    unsigned = load_source(unsigned_plan, "s1", tile_id)
    assert graph_urls(unsigned) == urls
    assert graph_readers(unsigned) == {AutoParallelRioReader}
    assert sas_endpoint.requests == []  # no token asked for while a graph is built


def test_a_tile_without_hand_scenes_derives_them_from_its_dem(tmp_path):
    """flood_change's height above drainage: the catalog's HAND scenes of the tile where it has
    some, else derived from the tile's DEM scenes (read with a margin around the tile)."""
    from odc.geo.geobox import GeoBox

    from pipelines.engine.graph import derived_on, load_source, tile_sources
    from pipelines.engine.plan import PlannedTile, RunPlan
    from pipelines.load import load_dem, load_height_above_drainage
    from pipelines.stages import get_stage
    from pipelines.testing.stac import dem_item

    tile_id = "x0195_y1485"

    def plan_of(items: dict[str, list[dict]]) -> RunPlan:
        scenes = {k: tuple(i["id"] for i in v) for k, v in items.items()}
        return RunPlan(
            province="p",
            config={"province": "p", "stac": {"archive": str(tmp_path)}},
            window=("2024-04-19", "2024-04-19"),
            crs="EPSG:32633",
            resolution=10.0,
            tile_px=64,
            tiles=(PlannedTile(tile_id, 195, 1485, scenes),),
            batches=[[tile_id]],
            groups=[],
            stage_versions={},
            dates={},
            items=items,
        )

    tile = plan_of({}).tile(tile_id).geobox
    west, south, east, north = tile.boundingbox
    wide = GeoBox.from_bbox(
        (west - 2000, south - 2000, east + 2000, north + 2000), crs="EPSG:32633", resolution=30
    )
    yy, xx = np.mgrid[0 : wide.shape[0], 0 : wide.shape[1]]
    heights = (np.abs(xx - wide.shape[1] // 2) + 0.02 * yy).astype("float32")
    dem = dem_item(tmp_path, "DEM_A", wide, heights)
    product = dem_item(tmp_path, "HAND_A", wide, heights / 2, collection="glo-30-hand")

    plan = plan_of({"dem": [dem]})
    assert derived_on(plan, "hand", tile_id) and not derived_on(plan, "dem", tile_id)
    expected = load_height_above_drainage([dem], tile, chunksize=64).values
    np.testing.assert_array_equal(load_source(plan, "hand", tile_id).values, expected)
    # A stage reading both, as flood_change's terrain does, gets the derived height.
    terrain = Stage(
        "terrain_probe", lambda dem, hand=None: dem, ("dem", "hand"), "", "1", optional=("hand",)
    )
    sources = tile_sources(plan, [terrain], tile_id)
    assert sources["dem"] is not None and sources["hand"] is not None
    np.testing.assert_array_equal(sources["hand"].values, expected)
    assert get_stage("flood_change").optional == ("s1_pre", "hand")

    with_product = plan_of({"dem": [dem], "hand": [product]})
    assert not derived_on(with_product, "hand", tile_id)
    np.testing.assert_array_equal(
        load_source(with_product, "hand", tile_id).values, load_dem([product], tile).values
    )
    assert not derived_on(plan_of({}), "hand", tile_id)  # no DEM on the tile: nothing to derive
