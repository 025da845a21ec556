"""Run planning: a province config -> tiles, tile batches, scenes per input, dates per product.

The plan is deterministic: the same config (and the same catalog content) gives the same tiles,
batches, dates and output paths. It is a JSON document written to the store; Airflow tasks
pass its URL, never its content, and a batch's task reads only its part (:func:`read_plan_part`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipelines import storage
from pipelines.config import (
    STORED_MANTISSA_BITS,
    FloodConfig,
    ProvinceConfig,
    SignMode,
    StacConfig,
    geojson_geometry,
    stac_signing,
)
from pipelines.errors import BadInputError, NoScenesError
from pipelines.grid import ProvinceGrid, Tile, TileGrid
from pipelines.inputs import get_input, item_orbit, reference_window
from pipelines.stages.registry import (
    Stage,
    StageGroup,
    get_stage,
    needed_sources,
    plan_groups,
    resolve_order,
    source_inputs,
    time_source,
)

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

log = logging.getLogger(__name__)

#: A STAC item as JSON (``pystac.Item.to_dict``), the form plans keep and loaders read.
StacItem = dict[str, Any]


@dataclass(frozen=True)
class PlannedTile:
    """One tile of a plan (id, column and row on the CRS grid) and the scenes that overlap it."""

    tile_id: str
    ix: int
    iy: int
    scenes: Mapping[str, tuple[str, ...]]
    """STAC item ids per source input that overlap the tile by at least one pixel."""

    def to_dict(self) -> dict[str, object]:
        """The tile's plan JSON entry."""
        return {
            "tile_id": self.tile_id,
            "ix": self.ix,
            "iy": self.iy,
            "scenes": {source: list(ids) for source, ids in self.scenes.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PlannedTile:
        """A tile from its plan JSON entry."""
        scenes = {str(source): tuple(ids) for source, ids in raw["scenes"].items()}
        return cls(str(raw["tile_id"]), int(raw["ix"]), int(raw["iy"]), scenes)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs to know, JSON-serialisable; every tile query is a method."""

    province: str
    config: dict[str, Any]
    """The province config as JSON (``ProvinceConfig.model_dump(mode="json")``)."""
    window: tuple[str, str]
    """First and last day (YYYY-MM-DD, inclusive) of the run."""
    crs: str
    resolution: float
    """Pixel size in CRS units (m)."""
    tile_px: int
    tiles: tuple[PlannedTile, ...]
    batches: list[list[str]]
    """Tile ids per batch (one Airflow mapped task per batch and stage group)."""
    groups: list[StageGroup]
    stage_versions: dict[str, str]
    dates: dict[str, list[str]]
    """Output dates (YYYY-MM-DD) per stage."""
    items: dict[str, list[StacItem]] = field(default_factory=dict)
    """STAC items per source input (full dicts, so tasks need no second search)."""
    left_out: tuple[str, ...] = ()
    """IDs of items the searches found and ``stac.exclude_items`` left out, sorted."""
    batch: int | None = None
    """The batch this plan is the part of (:meth:`batch_part`): only that batch's tiles keep
    their scenes and only the items on them are kept; None: the whole plan."""

    def to_json(self) -> str:
        """The plan document: one JSON object laid out in lines, so that a batch's task reads
        its part without parsing the rest (:func:`read_plan_part`). The first line holds every
        field but the tiles and the items (keys sorted); then a tile a line (``tile_id``,
        ``ix``, ``iy`` first, ``scenes`` last) and, per source input (sorted), an item a line
        (``id`` first). Any JSON reader reads it whole."""
        head: dict[str, Any] = {
            "province": self.province,
            "config": self.config,
            "window": list(self.window),
            "crs": self.crs,
            "resolution": self.resolution,
            "tile_px": self.tile_px,
            "batches": self.batches,
            "groups": [asdict(g) for g in self.groups],
            "stage_versions": self.stage_versions,
            "dates": self.dates,
        }
        if self.left_out:  # a plan without exclusions reads as before the field existed
            head["left_out"] = list(self.left_out)
        if self.batch is not None:
            head["batch"] = self.batch

        def listed(lines: list[str]) -> list[str]:
            return [line + "," for line in lines[:-1]] + lines[-1:]

        out = [json.dumps(head, sort_keys=True, default=str)[:-1] + ",", '"tiles": [']
        out += listed([json.dumps(t.to_dict()) for t in self.tiles])
        out += ["],", '"items": {']
        sources = sorted(self.items)
        for k, source in enumerate(sources):
            out.append(f"{json.dumps(source)}: [")
            out += listed(
                [json.dumps({"id": d["id"], **d}, default=str) for d in self.items[source]]
            )
            out.append("]," if k < len(sources) - 1 else "]")
        out.append("}}")
        return "\n".join(out) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        """A plan from the document :meth:`to_json` wrote."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunPlan:
        """A plan from its document parsed (:meth:`from_json`)."""
        return cls(
            province=raw["province"],
            config=raw["config"],
            window=(raw["window"][0], raw["window"][1]),
            crs=raw["crs"],
            resolution=raw["resolution"],
            tile_px=raw["tile_px"],
            tiles=tuple(PlannedTile.from_dict(t) for t in raw["tiles"]),
            batches=raw["batches"],
            groups=[StageGroup(**{**g, "stages": tuple(g["stages"])}) for g in raw["groups"]],
            stage_versions=raw["stage_versions"],
            dates=raw["dates"],
            items=raw["items"],
            left_out=tuple(raw.get("left_out", ())),
            batch=raw.get("batch"),
        )

    def batch_part(self, index: int) -> RunPlan:
        """The part of the plan a task of batch ``index`` reads (:func:`read_plan_part`): that
        batch's tiles with their scenes and the items on them. Every tile keeps its place on
        the grid (the cubes' extent, parcel ids across the province) and every batch its tile
        ids; the other tiles' scenes are dropped. Its size follows the batch, not the province.
        """
        if not 0 <= index < len(self.batches):
            raise BadInputError("batch", index, f"0..{len(self.batches) - 1}")
        keep = set(self.batches[index])
        tiles = tuple(t if t.tile_id in keep else replace(t, scenes={}) for t in self.tiles)
        items = {}
        for source, dicts in self.items.items():
            positions = self._item_positions.get(source, {})
            wanted = {i for t in keep for i in self.tile_scenes(t).get(source, ())}
            items[source] = [dicts[k] for k in sorted(k for i in wanted for k in positions[i])]
        return replace(self, tiles=tiles, items=items, batch=index)

    @property
    def aoi(self) -> BaseGeometry:
        """The province's AOI in WGS84, from the plan's config."""
        return geojson_geometry(self.config["aoi"])

    @property
    def tile_grid(self) -> TileGrid:
        """The province CRS grid the tiles are cut from."""
        return TileGrid(self.crs, self.resolution, self.tile_px)

    @property
    def mantissa_bits(self) -> int | None:
        """Mantissa bits the run's stored float rasters keep (the config's; a plan written
        before the config had the field: the default)."""
        bits = self.config.get("mantissa_bits", STORED_MANTISSA_BITS)
        return None if bits is None else int(bits)

    @property
    def signing(self) -> SignMode:
        """How the tiles sign the items' asset links before reading pixels (the config's
        ``stac.sign``, its default resolved by the STAC API URL; :func:`stac_signing`). The plan
        itself keeps the links unsigned: a token expires in about an hour."""
        return stac_signing(self.config.get("stac") or {})

    @property
    def province_grid(self) -> ProvinceGrid:
        """The grid of the province's product cubes (every planned tile)."""
        g = self.tile_grid
        return ProvinceGrid(g, tuple(g.tile(t.ix, t.iy) for t in self.tiles))

    @property
    def tile_ids(self) -> list[str]:
        """Ids of the planned tiles, in plan order."""
        return [t.tile_id for t in self.tiles]

    @functools.cached_property
    def _tiles_by_id(self) -> dict[str, PlannedTile]:
        return {t.tile_id: t for t in reversed(self.tiles)}  # the first entry wins

    @functools.cached_property
    def _item_positions(self) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for source, dicts in self.items.items():
            positions = out[source] = {}
            for k, d in enumerate(dicts):
                positions.setdefault(d["id"], []).append(k)
        return out

    def planned_tile(self, tile_id: str) -> PlannedTile:
        """The plan entry of ``tile_id`` (KeyError when the plan has none)."""
        return self._tiles_by_id[tile_id]

    def tile(self, tile_id: str) -> Tile:
        """The grid tile of ``tile_id``."""
        entry = self.planned_tile(tile_id)
        return self.tile_grid.tile(entry.ix, entry.iy)

    def tile_scenes(self, tile_id: str) -> Mapping[str, tuple[str, ...]]:
        """STAC item ids per source input on ``tile_id`` (a batch's part of the plan knows
        them for its own tiles alone: ValueError for another tile)."""
        if self.batch is not None and tile_id not in self.batches[self.batch]:
            raise ValueError(
                f"tile {tile_id} is not in batch {self.batch}, the only one this part of the "
                "plan holds the scenes of"
            )
        return self.planned_tile(tile_id).scenes

    def items_for(self, source: str, tile_id: str) -> list[StacItem]:
        """The STAC items of ``source`` that overlap ``tile_id``, in plan order."""
        wanted = set(self.tile_scenes(tile_id).get(source, ()))
        positions = self._item_positions.get(source, {})
        dicts = self.items.get(source, [])
        return [dicts[k] for k in sorted(k for i in wanted for k in positions.get(i, ()))]

    def derived_sources(self) -> dict[str, str]:
        """Sources the plan found no scenes of, derived on its tiles from another source's
        scenes (:attr:`pipelines.inputs.InputSpec.derived_from`): name -> that source."""
        out: dict[str, str] = {}
        for source, found in self.items.items():
            origin = get_input(source).derived_from
            if not found and origin is not None and self.items.get(origin):
                out[source] = origin
        return out

    def stage_available(self, stage: Stage, tile_id: str) -> bool:
        """True when every source ``stage`` needs (through upstream stages) has scenes on the
        tile; optional sources may be missing."""
        scenes = self.tile_scenes(tile_id)
        chain = resolve_order([stage.name])
        optional = {src for st in chain for src in st.optional}
        return all(scenes.get(src) for src in source_inputs(chain) if src not in optional)

    def tile_dates(self, stage: Stage, tile_id: str) -> list[str]:
        """Output labels of ``stage`` on ``tile_id``: dates with scenes on the tile, or the
        window; none when a source it needs has no scene on the tile."""
        if not self.stage_available(stage, tile_id):
            return []
        source = time_source(stage)
        if source is None:
            return list(self.dates[stage.name])
        labels = sorted({item_date(d) for d in self.items_for(source, tile_id)})
        pre = reference_sources(stage)
        if not pre:
            return labels
        # A date is compared with a reference: none without a scene of the tile in it.
        pool = sorted(
            {item_date(d) for src in (*pre, source) for d in self.items_for(src, tile_id)}
        )
        return [lab for lab in labels if _any_between(pool, *self.reference_window(lab))]

    def reference_window(self, label: str) -> tuple[str, str]:
        """Dates (YYYY-MM-DD, inclusive) of the pre-event reference a post-event date
        ``label`` is compared with (:func:`pipelines.inputs.reference_window`, from the plan's
        window and its config's ``flood``)."""
        import datetime as dt

        flood = self.config.get("flood") or {}
        event = flood.get("event_date")
        lo, hi = reference_window(
            dt.date.fromisoformat(label),
            dt.date.fromisoformat(self.window[0]),
            dt.date.fromisoformat(str(event)) if event else None,
            int(flood.get("pre_days", FloodConfig().pre_days)),
        )
        return lo.isoformat(), hi.isoformat()

    def stage_grid(self, stage: Stage) -> tuple[ProvinceGrid, Callable[[str], Tile]]:
        """The province grid of ``stage``'s product (``stage.scale`` times finer) and a
        function from tile id to its tile on that grid."""
        grid = self.province_grid.scaled(stage.scale)
        return grid, lambda tile_id: self.tile(tile_id).scaled(stage.scale)


def reference_sources(stage: Stage) -> list[str]:
    """The pre-event reference inputs ``stage`` reads, itself or upstream (``s1_pre`` for
    flood_change; none for most stages)."""
    return [
        src
        for src in source_inputs(resolve_order([stage.name]))
        if get_input(src).window == "pre_event"
    ]


def _any_between(sorted_dates: Sequence[str], lo: str, hi: str) -> bool:
    """True when some ISO date of ``sorted_dates`` lies in ``[lo, hi]``."""
    import bisect

    k = bisect.bisect_left(sorted_dates, lo)
    return k < len(sorted_dates) and sorted_dates[k] <= hi


def batch_tiles(tile_ids: list[str], max_batches: int) -> list[list[str]]:
    """Consecutive tiles in at most ``max_batches`` batches of near-equal size."""
    if not tile_ids:
        return []
    size = math.ceil(len(tile_ids) / max_batches)
    return [tile_ids[i : i + size] for i in range(0, len(tile_ids), size)]


def item_date(item: StacItem) -> str:
    """UTC date (YYYY-MM-DD) of a STAC item dict."""
    props = item["properties"]
    stamp = props.get("datetime") or props.get("start_datetime")
    return stamp[:10]


def make_plan(config: ProvinceConfig, stac_url: str) -> RunPlan:
    """Plan a run: tiles over the AOI, scenes found through ``stac_url``, dates per product."""
    import numpy as np
    import shapely
    from pyproj import Transformer
    from shapely.geometry import box, mapping, shape

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
    aoi_wgs84 = config.aoi_geometry()

    items: dict[str, list[StacItem]] = {}
    # Inputs that search the same collection, window and filter (s1 and s1_post without an
    # event) share one search.
    searched: dict[tuple[object, ...], list[StacItem]] = {}
    query_of: dict[str, tuple[object, ...]] = {}
    needed = needed_sources(stages)
    excluded = frozenset(config.stac.exclude_items)
    left_out: set[str] = set()
    for source in sources:
        spec = get_input(source)
        if spec.collection not in config.stac.collections:
            if source in needed:
                raise BadInputError(
                    f"stac.collections.{spec.collection}",
                    None,
                    f"the catalog's collection id of {source} (products "
                    f"{[st.name for st in stages if source in st.inputs]} read it); "
                    f"configured: {sorted(config.stac.collections)}",
                )
            items[source] = []  # an optional input without a collection: read by no stage
            continue
        flood = config.flood
        window = spec.search_window(config.start, config.end, flood.event_date, flood.pre_days)
        query = (
            config.stac.collections[spec.collection],
            (window[0].isoformat(), window[1].isoformat()) if window else None,
            config.stac.max_cloud_cover if spec.cloud_filter else None,
        )
        if query not in searched:
            found = search(
                stac_url,
                [query[0]],
                intersects=mapping(aoi_wgs84),
                datetime=query[1],
                max_cloud_cover=query[2],
            )
            dicts = [i.to_dict(transform_hrefs=False) for i in found]
            left_out.update(d["id"] for d in dicts if d["id"] in excluded)
            searched[query] = sorted(
                (d for d in dicts if d["id"] not in excluded),
                key=lambda d: (d["properties"].get("datetime") or "", d["id"]),
            )
            if spec.loader == "s1":  # uncalibrated GRD refused here, not in every tile task
                from pipelines.load import check_s1_items

                check_s1_items(searched[query], spec.bands)
        items[source] = list(searched[query])
        query_of[source] = query

    if excluded:
        log.info(
            "%s: %d scene(s) left out by stac.exclude_items; named there and not found by the "
            "searches: %s",
            config.province,
            len(left_out),
            sorted(excluded - left_out) or "none",
        )
    to_crs = Transformer.from_crs("EPSG:4326", config.crs, always_xy=True)

    def project(lonlat: np.ndarray) -> np.ndarray:
        """(n, 2) lon/lat in degrees -> (n, 2) x/y in the config's CRS, metres."""
        return np.column_stack(to_crs.transform(lonlat[:, 0], lonlat[:, 1]))

    tile_boxes = [box(*tile.bounds) for tile in tiles]
    by_query: dict[tuple[object, ...], list[list[int]]] = {}
    footprints: dict[tuple[object, ...], list[Any]] = {}
    for key, dicts in searched.items():
        footprints[key] = list(shapely.transform([shape(d["geometry"]) for d in dicts], project))
        by_query[key] = tile_overlaps(tile_boxes, footprints[key], config.resolution**2)
    overlapping = {source: by_query[query_of[source]] for source in query_of}
    tile_entries = []
    passes_left_out = 0
    for index, tile in enumerate(tiles):
        scenes: dict[str, tuple[str, ...]] = {}
        for source in items:
            picked = overlapping[source][index] if source in overlapping else []
            if picked and get_input(source).loader == "s1":
                kept = one_pass_a_day(
                    items[source], picked, footprints[query_of[source]], tile_boxes[index]
                )
                passes_left_out += len(picked) - len(kept)
                picked = kept
            scenes[source] = tuple(items[source][k]["id"] for k in picked)
        tile_entries.append(PlannedTile(tile.tile_id, tile.ix, tile.iy, scenes))
    if passes_left_out:
        log.info(
            "%s: %d S1 scene(s) of tiles left out: another track's pass covers more of the "
            "tile the same UTC day (one viewing geometry a date)",
            config.province,
            passes_left_out,
        )

    dates: dict[str, list[str]] = {}
    for stage in stages:
        dated_by = time_source(stage)
        if dated_by is None:
            # Window products (one output per run window) are dated by the window's first day.
            dates[stage.name] = [config.start.isoformat()]
        else:
            dates[stage.name] = sorted({item_date(d) for d in items.get(dated_by, [])})

    plan = RunPlan(
        province=config.province,
        config=config.model_dump(mode="json"),
        window=(config.start.isoformat(), config.end.isoformat()),
        crs=config.crs,
        resolution=config.resolution,
        tile_px=config.tile_px,
        tiles=tuple(tile_entries),
        batches=batch_tiles([t.tile_id for t in tile_entries], config.max_mapped_tasks),
        groups=plan_groups(stages),
        stage_versions={s.name: s.version for s in stages},
        dates=dates,
        items=items,
        left_out=tuple(sorted(left_out)),
    )
    # A date compared with a reference is a product date where some tile has a reference
    # scene for it: a month of a long window with none anywhere adds no empty plane.
    compared = {s.name: s for s in stages if reference_sources(s)}
    written = {
        name: {d for t in plan.tile_ids for d in plan.tile_dates(stage, t)}
        for name, stage in compared.items()
    }
    return replace(
        plan,
        dates={
            k: [d for d in v if d in written[k]] if k in written else v for k, v in dates.items()
        },
    )


def one_pass_a_day(
    items: Sequence[StacItem], picked: Sequence[int], footprints: Sequence[Any], tile_box: Any
) -> list[int]:
    """Of the S1 scenes ``picked`` on a tile (indexes into ``items``, whose ``footprints`` are
    in the tile's CRS), those of one track (``sat:relative_orbit``) each UTC day: where a day
    has scenes of several (an ascending and a descending pass, 12 hours apart), the track
    whose scenes cover most of ``tile_box``, the earlier pass on a tie. The loader mosaics a
    day's scenes into one date, and a date must be one viewing geometry: backscatter of land
    differs between tracks by several dB, which a change against the date reads as change.
    Scenes without a track count as one track of their own."""
    import shapely

    by_day: dict[str, dict[Any, list[int]]] = {}
    for k in picked:
        by_day.setdefault(item_date(items[k]), {}).setdefault(item_orbit(items[k]), []).append(k)

    def cover(scenes: Sequence[int]) -> float:
        union = shapely.union_all([footprints[k] for k in scenes])
        return float(shapely.area(shapely.intersection(union, tile_box)))

    kept: list[int] = []
    for tracks in by_day.values():
        passes: list[list[int]] = list(tracks.values())
        best = passes[0] if len(passes) == 1 else max(passes, key=lambda p: (cover(p), -min(p)))
        kept.extend(best)
    return sorted(kept)


def tile_overlaps(
    tile_boxes: Sequence[Any], footprints: Sequence[Any], min_area: float
) -> list[list[int]]:
    """Per tile box, the indexes (ascending) of the footprints that overlap it by at least
    ``min_area`` (CRS units squared): footprints reprojected from WGS84 bulge by a fraction of
    a pixel, so an overlap must cover at least one pixel to count.

    One spatial-index query and one vectorised intersection for all pairs, not one per tile
    and footprint (a province has ~1,700 tiles and thousands of scenes)."""
    import numpy as np
    import shapely

    out: list[list[int]] = [[] for _ in tile_boxes]
    if not len(tile_boxes) or not len(footprints):
        return out
    boxes = np.asarray(tile_boxes, dtype=object)
    geoms = np.asarray(footprints, dtype=object)
    tile_idx, geom_idx = shapely.STRtree(geoms).query(boxes, predicate="intersects")
    # A footprint covering the whole tile overlaps it by the tile's area (>= one pixel).
    keep = shapely.covers(geoms[geom_idx], boxes[tile_idx])
    part = ~keep
    area = shapely.area(shapely.intersection(geoms[geom_idx[part]], boxes[tile_idx[part]]))
    keep[part] = area >= min_area
    for t, g in sorted(zip(tile_idx[keep].tolist(), geom_idx[keep].tolist(), strict=True)):
        out[t].append(g)
    return out


def plan_url(store: str, province: str, window: tuple[str, str], fingerprint: str) -> str:
    """Where the plan of a run is written (deterministic for the same config)."""
    return storage.join(
        store, province, "runs", f"{window[0]}_{window[1]}_{fingerprint}", "plan.json"
    )


def config_plan_url(config: ProvinceConfig) -> str:
    """The plan URL of ``config``'s run: its store, province, window and fingerprint."""
    window = (config.start.isoformat(), config.end.isoformat())
    return plan_url(config.store, config.province, window, config.fingerprint())


def write_plan(plan: RunPlan, url: str) -> None:
    """Write the plan JSON to the store."""
    storage.write_text(url, plan.to_json())


def read_plan(url: str) -> RunPlan:
    """Read a plan written by :func:`write_plan`."""
    return RunPlan.from_json(storage.read_text(url))


#: Where a tile's line of the plan document has its scenes (:meth:`RunPlan.to_json`).
_SCENES_KEY = ', "scenes": '


def read_plan_part(url: str, batch: int) -> RunPlan:
    """The part of the plan at ``url`` that batch ``batch``'s tasks read
    (:meth:`RunPlan.batch_part`), streamed line by line: only that batch's tiles and the items
    on them are parsed and kept, the other tiles' places on the grid read from their lines'
    first fields. A task's memory follows its batch, where the whole plan of a province's year
    is a hundred megabytes of JSON. A plan in the layout before the lines is read whole."""
    lines = storage.read_lines(url)
    first = next(lines)
    if not first.rstrip().endswith(","):  # the one-space-indent layout before the lines
        return RunPlan.from_json("".join([first, *lines])).batch_part(batch)
    head = json.loads(first.rstrip()[:-1] + "}")
    batches = head["batches"]
    if not 0 <= batch < len(batches):
        raise BadInputError("batch", batch, f"0..{len(batches) - 1}")
    keep = set(batches[batch])
    tiles: list[dict[str, Any]] = []
    items: dict[str, list[StacItem]] = {}
    wanted: dict[str, set[str]] = {}
    decoder = json.JSONDecoder()
    section = source = None
    for raw in lines:
        line = raw.rstrip().removesuffix(",")
        if line in ('"tiles": [', '"items": {'):
            section = line[1:6]
        elif line in ("]", "}}"):
            continue
        elif section == "tiles":
            cut = line.index(_SCENES_KEY)
            tile = json.loads(line[:cut] + "}")
            if tile["tile_id"] in keep:
                tile = json.loads(line)
                for src, ids in tile["scenes"].items():
                    wanted.setdefault(src, set()).update(ids)
            else:
                tile["scenes"] = {}
            tiles.append(tile)
        elif line.endswith(": ["):
            source = json.loads(line[:-3])
            items[source] = []
        elif source is not None:
            item_id = decoder.raw_decode(line, len('{"id": '))[0]
            if item_id in wanted.get(source, ()):
                items[source].append(json.loads(line))
    return RunPlan.from_dict({**head, "tiles": tiles, "items": items, "batch": batch})


def estimate(plan: RunPlan, throughput_mpx_s: dict[str, float]) -> dict[str, float]:
    """Bytes to read and core-hours, from per-stage throughput (output Mpx/s per core)."""
    n = plan.tile_px * plan.tile_px
    read_bytes = 0
    for tile in plan.tiles:
        for source, ids in tile.scenes.items():
            spec = get_input(source)
            read_bytes += len(ids) * n * spec.estimate_bands * spec.bytes_per_px
    core_seconds = 0.0
    for stage, dates in plan.dates.items():
        mpx = len(plan.tiles) * len(dates) * n / 1e6
        core_seconds += mpx / max(throughput_mpx_s.get(stage, 1.0), 1e-6)
    return {"bytes_to_read": read_bytes, "core_hours": round(core_seconds / 3600, 4)}


# ---- config -> STAC API -> plan -> plan URL ----------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """A planned run: the plan and where it is (or would be) written."""

    plan: RunPlan
    url: str
    """The plan's URL in the store (:func:`plan_url`)."""


@contextlib.contextmanager
def stac_api_for(stac: StacConfig) -> Iterator[str]:
    """The STAC API URL of a config's ``stac`` section; the archive is served for the duration
    when no URL is configured (embedded default)."""
    if stac.url:
        yield stac.url
        return
    from pipelines.catalog.server import shared_server

    assert stac.archive is not None  # StacConfig requires url or archive
    # shared by concurrent runs, stopped by the last; a detached `terrapipe stac serve` is kept
    with shared_server(stac.archive) as server:
        yield server.url


def require_scenes(plan: RunPlan) -> None:
    """Raise :class:`NoScenesError` when the plan has no tile, or no stage has an output on any
    tile: a dated input without scenes is no scenes, even where a timeless one (the DEM) has."""
    n_scenes = {k: len(v) for k, v in plan.items.items()}
    stages = [get_stage(name) for name in plan.stage_versions]
    if not any(plan.tile_dates(s, t.tile_id) for s in stages for t in plan.tiles):
        raise NoScenesError(
            f"no scenes for {plan.province} in {plan.window[0]}..{plan.window[1]}: {n_scenes}"
        )


def plan_run(
    config: ProvinceConfig,
    *,
    require: Callable[[RunPlan], None] | None = require_scenes,
    write: bool = True,
) -> PlannedRun:
    """Plan a run: search the config's STAC API, plan, check, and write the plan to its URL.

    ``require`` raises when the plan cannot run (before anything is written; None: no check);
    ``write=False`` plans without writing (a dry run).
    """
    with stac_api_for(config.stac) as api_url:
        plan = make_plan(config, api_url)
    if require is not None:
        require(plan)
    url = config_plan_url(config)
    if write:
        write_plan(plan, url)
    return PlannedRun(plan, url)
