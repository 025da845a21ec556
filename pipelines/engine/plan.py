"""Run planning: a province config -> tiles, tile batches, scenes per input, dates per product.

The plan is deterministic: the same config (and the same catalog content) gives the same tiles,
batches, dates and output paths. It is a small JSON document written to the store; Airflow tasks
pass its URL, never its content.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines import storage
from pipelines.config import ProvinceConfig
from pipelines.errors import BadInputError
from pipelines.grid import ProvinceGrid, Tile, TileGrid
from pipelines.stages.registry import (
    StageGroup,
    plan_groups,
    resolve_order,
    source_inputs,
    time_source,
)

#: Decoded bytes per pixel of each source input, per band (for the read estimate).
_BYTES_PER_PX = {"s2": 2, "s1": 4, "s1_pre": 4, "s1_post": 4, "dem": 4, "permanent_water": 1}
#: Bands read per source input by the classical stages.
_BANDS = {"s2": 5, "s1": 2, "s1_pre": 2, "s1_post": 2, "dem": 1, "permanent_water": 1}


@dataclass
class RunPlan:
    """Everything a run needs to know, JSON-serialisable."""

    province: str
    config: dict[str, Any]
    window: tuple[str, str]
    crs: str
    resolution: float
    tile_px: int
    tiles: list[dict[str, Any]]
    """Each: ``tile_id``, ``ix``, ``iy``, ``scenes`` ({input: [item ids]})."""
    batches: list[list[str]]
    """Tile ids per batch (one Airflow mapped task per batch and stage group)."""
    groups: list[StageGroup]
    stage_versions: dict[str, str]
    dates: dict[str, list[str]]
    """Output dates (YYYY-MM-DD) per stage."""
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """STAC items per source input (full dicts, so tasks need no second search)."""

    # ---- derived -------------------------------------------------------------------------

    @property
    def tile_grid(self) -> TileGrid:
        return TileGrid(self.crs, self.resolution, self.tile_px)

    @property
    def province_grid(self) -> ProvinceGrid:
        g = self.tile_grid
        return ProvinceGrid(g, tuple(g.tile(t["ix"], t["iy"]) for t in self.tiles))

    def tile(self, tile_id: str) -> Tile:
        for t in self.tiles:
            if t["tile_id"] == tile_id:
                return self.tile_grid.tile(t["ix"], t["iy"])
        raise KeyError(tile_id)

    def tile_scenes(self, tile_id: str) -> dict[str, list[str]]:
        for t in self.tiles:
            if t["tile_id"] == tile_id:
                return t["scenes"]
        raise KeyError(tile_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        raw = json.loads(text)
        raw["groups"] = [StageGroup(**g) for g in raw["groups"]]
        raw["window"] = tuple(raw["window"])
        return cls(**raw)


def batch_tiles(tile_ids: list[str], max_batches: int) -> list[list[str]]:
    """Consecutive tiles in at most ``max_batches`` batches of near-equal size."""
    if not tile_ids:
        return []
    size = math.ceil(len(tile_ids) / max_batches)
    return [tile_ids[i : i + size] for i in range(0, len(tile_ids), size)]


def search_windows(config: ProvinceConfig) -> dict[str, tuple[dt.date, dt.date] | None]:
    """Date window searched for each source input (None: no date filter)."""
    start, end = config.start, config.end
    event = config.flood.event_date
    post_start = max(start, event) if event else start
    pre_end = (event or start) - dt.timedelta(days=1)
    return {
        "s2": (start, end),
        "s1": (start, end),
        "s1_post": (post_start, end),
        "s1_pre": (pre_end - dt.timedelta(days=config.flood.pre_days - 1), pre_end),
        "dem": None,
        "permanent_water": None,
    }


def item_date(item: dict[str, Any]) -> str:
    """UTC date (YYYY-MM-DD) of a STAC item dict."""
    props = item["properties"]
    stamp = props.get("datetime") or props.get("start_datetime")
    return stamp[:10]


def make_plan(config: ProvinceConfig, stac_url: str) -> RunPlan:
    """Plan a run: tiles over the AOI, scenes found through ``stac_url``, dates per product."""
    from pyproj import Transformer
    from shapely.geometry import box, mapping, shape
    from shapely.ops import transform

    from pipelines.catalog.search import search

    stages = resolve_order(list(config.products))
    province_wide = [s.name for s in stages if s.scope != "tile"]
    if province_wide:
        raise BadInputError(
            "products",
            province_wide,
            "products made tile by tile",
            "crop_type and yield are fitted over the whole province: run the season_crop_yield "
            "DAG (`terrapipe season`)",
        )
    sources = source_inputs(stages)
    grid = TileGrid(config.crs, config.resolution, config.tile_px)
    aoi = config.aoi_projected()
    tiles = grid.tiles_for(aoi)
    windows = search_windows(config)
    aoi_wgs84 = config.aoi_geometry()

    items: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        collection_key = "s1" if source.startswith("s1") else source
        window = windows[source]
        found = search(
            stac_url,
            [config.stac.collections[collection_key]],
            intersects=mapping(aoi_wgs84),
            datetime=(window[0].isoformat(), window[1].isoformat()) if window else None,
            max_cloud_cover=config.stac.max_cloud_cover if source == "s2" else None,
        )
        items[source] = sorted(
            (i.to_dict(transform_hrefs=False) for i in found),
            key=lambda d: (d["properties"].get("datetime") or "", d["id"]),
        )

    to_crs = Transformer.from_crs("EPSG:4326", config.crs, always_xy=True).transform
    footprints = {
        source: [(d["id"], transform(to_crs, shape(d["geometry"]))) for d in dicts]
        for source, dicts in items.items()
    }
    # Footprints reprojected from WGS84 bulge by a fraction of a pixel: an overlap must cover at
    # least one pixel to count.
    min_area = config.resolution**2
    tile_entries = []
    for tile in tiles:
        tb = box(*tile.bounds)
        scenes = {
            source: [item_id for item_id, geom in fps if _overlaps(geom, tb, min_area)]
            for source, fps in footprints.items()
        }
        tile_entries.append(
            {"tile_id": tile.tile_id, "ix": tile.ix, "iy": tile.iy, "scenes": scenes}
        )

    dates: dict[str, list[str]] = {}
    for stage in stages:
        source = time_source(stage)
        if source is None:
            # Window products (one output per run window) are dated by the window's first day.
            dates[stage.name] = [config.start.isoformat()]
        else:
            dates[stage.name] = sorted({item_date(d) for d in items.get(source, [])})

    return RunPlan(
        province=config.province,
        config=config.model_dump(mode="json"),
        window=(config.start.isoformat(), config.end.isoformat()),
        crs=config.crs,
        resolution=config.resolution,
        tile_px=config.tile_px,
        tiles=tile_entries,
        batches=batch_tiles([t["tile_id"] for t in tile_entries], config.max_mapped_tasks),
        groups=plan_groups(stages),
        stage_versions={s.name: s.version for s in stages},
        dates=dates,
        items=items,
    )


def _overlaps(geom: Any, tile_box: Any, min_area: float) -> bool:
    return bool(geom.intersects(tile_box)) and geom.intersection(tile_box).area >= min_area


def plan_url(store: str, province: str, window: tuple[str, str], fingerprint: str) -> str:
    """Where the plan of a run is written (deterministic for the same config)."""
    return storage.join(
        store, province, "runs", f"{window[0]}_{window[1]}_{fingerprint}", "plan.json"
    )


def write_plan(plan: RunPlan, url: str) -> None:
    """Write the plan JSON to the store."""
    storage.write_text(url, plan.to_json())


def read_plan(url: str) -> RunPlan:
    """Read a plan written by :func:`write_plan`."""
    return RunPlan.from_json(storage.read_text(url))


def estimate(plan: RunPlan, throughput_mpx_s: dict[str, float]) -> dict[str, Any]:
    """Bytes to read and core-hours, from per-stage throughput (output Mpx/s per core)."""
    n = plan.tile_px * plan.tile_px
    read_bytes = 0
    for tile in plan.tiles:
        for source, ids in tile["scenes"].items():
            read_bytes += len(ids) * n * _BANDS.get(source, 1) * _BYTES_PER_PX.get(source, 4)
    core_seconds = 0.0
    for stage, dates in plan.dates.items():
        mpx = len(plan.tiles) * len(dates) * n / 1e6
        core_seconds += mpx / max(throughput_mpx_s.get(stage, 1.0), 1e-6)
    return {"bytes_to_read": read_bytes, "core_hours": round(core_seconds / 3600, 4)}
