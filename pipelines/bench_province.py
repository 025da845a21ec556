"""``terrapipe bench-province``: plan and schedule a synthetic province, as JSON. No pixels.

A square province (170,000 km2 by default: about 1,700 tiles of 1024 px at 10 m) in UTM zone 50
gets a year of synthetic STAC items, written as an archive the embedded STAC API serves
(:mod:`pipelines.catalog.server`): Sentinel-2 L2A on the MGRS grid (109.8 km tiles cut by 290 km
swaths; two satellites, each orbit every 5 days: about 6 dates a month, twice that where swaths
overlap), Sentinel-1 IW slices (250 km swaths, ascending and descending, every 6 days) and
Copernicus DEM 1 degree tiles. Assets point at files that do not exist: planning never opens
them, and the tile graphs are built lazily without reading them.

The bench then measures, in one process, what the Airflow DAG's scheduling side does with that
province: ``plan_run`` on the real code path (seconds, STAC requests counted on the client's
HTTP session, peak RSS of the process while planning, plan JSON bytes), the XCom each task
would push (the plan task's :class:`~operators.production.RunManifest` and every batch's
:class:`~pipelines.engine.manifest.BatchManifest`, serialised by their own ``to_xcom``), the
number of mapped task instances per stage group against the configured cap, and the Dask tasks
of the real tile graph (``build_group_graph``) for a few tiles, counted without computing. It
also times what a batch's task reads of the plan (its part) and of the season's crop
predictions (its parcels' rows of a SYNTHETIC table at the DEMO parcel density), against the
whole of each.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import importlib
import json
import math
import os
import resource
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from pipelines.config import ProvinceConfig

#: The bars of the issue "Classical stages at the speed of the field's fastest implementations":
#: Airflow's default ``max_map_length`` (1,024 mapped instances per task), XCom kept small (the
#: rows live in the metadata database), and a tile graph the Dask scheduler handles in well
#: under a second (its per-task overhead is ~200 us: 5,000 tasks ~ 1 s).
BARS = {"plan_s": 60.0, "mapped_tasks": 1024, "xcom_bytes": 64 * 1024, "graph_tasks": 5000}

#: Sentinel-2: 290 km swath, 143 relative orbits a 10-day cycle per satellite; two satellites
#: half a cycle apart revisit each orbit every 5 days (ESA Sentinel-2 User Handbook).
S2_SWATH_M = 290_000.0
S2_ORBITS = 143
S2_REVISIT_DAYS = 5
#: MGRS 100 km squares; Sentinel-2 tiles are 109.8 km (9.8 km overlap with their neighbours).
MGRS_SQUARE_M = 100_000.0
S2_TILE_M = 109_800.0
#: Sentinel-1 IW: 250 km swath, 175 relative orbits a 12-day cycle per satellite; S1A and S1C
#: half a cycle apart: each orbit every 6 days; products sliced every ~25 s (~170 km).
S1_SWATH_M = 250_000.0
S1_ORBITS = 175
S1_REVISIT_DAYS = 6
S1_SLICE_M = 170_000.0
#: Angle of a sun-synchronous ground track from the meridian near 34 degrees latitude.
TRACK_TILT_DEG = 12.0
EQUATOR_M = 40_075_017.0


@dataclass(frozen=True)
class ProvinceSpec:
    """A synthetic province: a square in a UTM zone, a year of scenes over it."""

    area_km2: float = 170_000.0
    """Area of the square AOI (km2)."""
    centre: tuple[float, float] = (117.0, 34.0)
    """(lon, lat) of its centre, degrees (the default: the North China Plain, UTM zone 50)."""
    year: int = 2025
    months: tuple[int, int] = (1, 12)
    """First and last month of the year with scenes."""
    tile_px: int = 1024
    resolution: float = 10.0
    seed: int = 0

    @property
    def zone(self) -> int:
        """UTM zone of the centre."""
        return int((self.centre[0] + 180) // 6) + 1

    @property
    def crs(self) -> str:
        """The province CRS (UTM, northern hemisphere)."""
        return f"EPSG:{32600 + self.zone}"

    @property
    def days(self) -> range:
        """Days (from 1 January, 0-based) of the year that have scenes."""
        first = dt.date(self.year, self.months[0], 1)
        last = dt.date(self.year + self.months[1] // 12, self.months[1] % 12 + 1, 1)
        origin = dt.date(self.year, 1, 1)
        return range((first - origin).days, (last - origin).days)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the AOI square in the province CRS (m)."""
        from pyproj import Transformer

        x, y = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True).transform(*self.centre)
        half = math.sqrt(self.area_km2) * 1000 / 2
        return (x - half, y - half, x + half, y + half)


# ---- synthetic STAC items ----------------------------------------------------------------------


def mgrs_square(zone: int, lat: float, easting: float, northing: float) -> str:
    """The MGRS 100 km square id (e.g. ``50SKE``) holding (easting, northing) of UTM ``zone``
    in the northern hemisphere, ``lat`` (degrees) giving its latitude band."""
    band = "CDEFGHJKLMNPQRSTUVWXX"[int((lat + 80) // 8)]
    column = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(easting // 100_000) - 1]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(northing // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def _swaths(
    bounds: tuple[float, float, float, float], swath: float, spacing: float, margin: float
) -> list[tuple[int, BaseGeometry]]:
    """(track number, swath polygon) of ground tracks ``spacing`` apart, tilted from north,
    that reach ``bounds`` (projected metres)."""
    from shapely.geometry import Polygon

    minx, miny, maxx, maxy = bounds
    lo_y, hi_y = miny - margin, maxy + margin
    slope = math.tan(math.radians(TRACK_TILT_DEG))
    mid_y = (lo_y + hi_y) / 2
    first = math.floor((minx - margin - swath) / spacing)
    last = math.ceil((maxx + margin + swath) / spacing)
    out: list[tuple[int, BaseGeometry]] = []
    for k in range(first, last + 1):
        c = k * spacing
        ring = [
            (c - swath / 2 + slope * (lo_y - mid_y), lo_y),
            (c + swath / 2 + slope * (lo_y - mid_y), lo_y),
            (c + swath / 2 + slope * (hi_y - mid_y), hi_y),
            (c - swath / 2 + slope * (hi_y - mid_y), hi_y),
        ]
        out.append((k, Polygon(ring)))
    return out


def _wgs84(geom: BaseGeometry, crs: str) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON geometry (WGS84, 7 decimals, vertices every <= 10 km) and its bbox."""
    from shapely.geometry import mapping

    from pipelines.demo.writers import to_wgs84

    out = to_wgs84(dict(mapping(geom.segmentize(10_000.0))), crs)
    xs = [p[0] for ring in out["coordinates"] for p in ring]
    ys = [p[1] for ring in out["coordinates"] for p in ring]
    return out, [min(xs), min(ys), max(xs), max(ys)]


def _s2_stats(rng: Any) -> dict[str, float]:
    cloud = float(round(100 * rng.beta(0.6, 0.9), 6))
    clear = 100 - cloud
    stats = {
        "eo:cloud_cover": cloud,
        "s2:nodata_pixel_percentage": 0.0,
        "s2:saturated_defective_pixel_percentage": 0.0,
        "s2:dark_features_percentage": round(0.02 * clear, 6),
        "s2:cloud_shadow_percentage": round(0.1 * cloud, 6),
        "s2:vegetation_percentage": round(0.6 * clear, 6),
        "s2:not_vegetated_percentage": round(0.3 * clear, 6),
        "s2:water_percentage": round(0.05 * clear, 6),
        "s2:unclassified_percentage": round(0.03 * clear, 6),
        "s2:medium_proba_clouds_percentage": round(0.4 * cloud, 6),
        "s2:high_proba_clouds_percentage": round(0.5 * cloud, 6),
        "s2:thin_cirrus_percentage": round(0.1 * cloud, 6),
        "s2:snow_ice_percentage": 0.0,
    }
    return stats


def s2_items(spec: ProvinceSpec, root_href: str) -> list[dict[str, Any]]:
    """Sentinel-2 L2A items over the province for the year: one per (MGRS tile, orbit, date)
    whose swath covers at least 1 % of the tile, footprint = tile x swath."""
    import numpy as np
    from affine import Affine
    from pyproj import Transformer
    from shapely.geometry import box

    from pipelines.demo import stac as stacb

    rng = np.random.default_rng(spec.seed)
    minx, miny, maxx, maxy = spec.bounds
    lat_of = Transformer.from_crs(spec.crs, "EPSG:4326", always_xy=True).transform
    lat = lat_of((minx + maxx) / 2, (miny + maxy) / 2)[1]
    spacing = EQUATOR_M * math.cos(math.radians(lat)) / S2_ORBITS
    swaths = _swaths(spec.bounds, S2_SWATH_M, spacing, S2_TILE_M)
    squares = []
    for col in range(math.floor(minx / MGRS_SQUARE_M), math.ceil(maxx / MGRS_SQUARE_M)):
        for row in range(math.floor(miny / MGRS_SQUARE_M), math.ceil(maxy / MGRS_SQUARE_M)):
            e, n = col * MGRS_SQUARE_M, row * MGRS_SQUARE_M
            tile = box(e, n + MGRS_SQUARE_M - S2_TILE_M, e + S2_TILE_M, n + MGRS_SQUARE_M)
            name = mgrs_square(spec.zone, lat_of(e + 50_000, n + 50_000)[1], e, n)
            squares.append((name, tile))
    items = []
    for name, tile in squares:
        x0, y0, x1, y1 = tile.bounds
        ulx, uly = x0, y1
        for track, swath in swaths:
            cover = tile.intersection(swath)
            if cover.area < 0.01 * tile.area:
                continue
            geometry, bbox = _wgs84(cover, spec.crs)
            lon, tlat = lat_of((x0 + x1) / 2, (y0 + y1) / 2)
            orbit = track % S2_ORBITS + 1
            for day in range((track * 3) % S2_REVISIT_DAYS, spec.days.stop, S2_REVISIT_DAYS):
                if day < spec.days.start:
                    continue
                when = dt.datetime(spec.year, 1, 1, 2, 50) + dt.timedelta(days=day)
                when += dt.timedelta(seconds=int((uly - spec.bounds[3]) / 7_000))
                platform = "sentinel-2b" if (day // S2_REVISIT_DAYS) % 2 else "sentinel-2c"
                item_id = f"S2{platform[-1].upper()}_{name}_{when:%Y%m%d}_0_L2A"
                items.append(
                    stacb.s2_item(
                        root_href=root_href,
                        item_id=item_id,
                        when=when,
                        platform=platform,
                        epsg=int(spec.crs.split(":")[1]),
                        mgrs_tile=name,
                        shape10=(10980, 10980),
                        transform10=Affine(10, 0, ulx, 0, -10, uly),
                        transform20=Affine(20, 0, ulx, 0, -20, uly),
                        geometry=geometry,
                        bbox=bbox,
                        sun=stacb.solar_position(when, tlat, lon),
                        stats=_s2_stats(rng),
                        baseline="05.11",
                        relative_orbit=orbit,
                    )
                )
    return _unique_ids(items)


def _unique_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items with ids made unique (same tile and day from two orbits: ``_0``, ``_1``)."""
    seen: Counter[str] = Counter()
    for item in items:
        base = item["id"]
        if seen[base]:
            item["id"] = base.replace("_0_L2A", f"_{seen[base]}_L2A")
        seen[base] += 1
    return items


def s1_items(spec: ProvinceSpec, root_href: str) -> list[dict[str, Any]]:
    """Sentinel-1 IW slices over the province for the year: ascending and descending tracks,
    each every 6 days, cut into ~170 km slices along track."""
    from affine import Affine
    from pyproj import Transformer
    from shapely.geometry import box

    from pipelines.demo import stac as stacb

    minx, miny, maxx, maxy = spec.bounds
    lat = Transformer.from_crs(spec.crs, "EPSG:4326", always_xy=True).transform(
        (minx + maxx) / 2, (miny + maxy) / 2
    )[1]
    spacing = EQUATOR_M * math.cos(math.radians(lat)) / S1_ORBITS
    items = []
    for direction, offset in (("ascending", 0.0), ("descending", spacing / 2)):
        swaths = _swaths((minx + offset, miny, maxx + offset, maxy), S1_SWATH_M, spacing, 0.0)
        for track, swath in swaths:
            rel_orbit = track % S1_ORBITS + 1
            n_slices = math.ceil((maxy - miny) / S1_SLICE_M)
            for day in range(track % S1_REVISIT_DAYS, spec.days.stop, S1_REVISIT_DAYS):
                if day < spec.days.start:
                    continue
                hour = 10 if direction == "ascending" else 22
                for s in range(n_slices):
                    lo = miny + s * S1_SLICE_M
                    part = swath.intersection(box(minx - S1_SWATH_M, lo, maxx + S1_SWATH_M,
                                                  lo + S1_SLICE_M))  # fmt: skip
                    if part.is_empty:
                        continue
                    start = dt.datetime(spec.year, 1, 1, hour, 5) + dt.timedelta(
                        days=day, seconds=25 * s
                    )
                    end = start + dt.timedelta(seconds=25)
                    x0, y0, x1, y1 = part.bounds
                    shape = (round((y1 - y0) / 10), round((x1 - x0) / 10))
                    geometry, bbox = _wgs84(part, spec.crs)
                    abs_orbit = 58_000 + day * S1_ORBITS // 12 + track
                    item_id = (
                        f"S1A_IW_GRDH_1SDV_{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}"
                        f"_{abs_orbit:06d}_{rel_orbit:03d}{s:02d}_rtc"
                    )
                    items.append(
                        stacb.s1_item(
                            root_href=root_href,
                            item_id=item_id,
                            start=start,
                            end=end,
                            epsg=int(spec.crs.split(":")[1]),
                            shape=shape,
                            transform=Affine(10, 0, x0, 0, -10, y1),
                            proj_bbox=[x0, y0, x1, y1],
                            geometry=geometry,
                            bbox=bbox,
                            orbit_state=direction,
                            abs_orbit=abs_orbit,
                            rel_orbit=rel_orbit,
                            datatake=abs_orbit * 7 % 400_000,
                        )
                    )
    return items


def dem_items(spec: ProvinceSpec, root_href: str) -> list[dict[str, Any]]:
    """Copernicus DEM GLO-30 1 x 1 degree tiles covering the province."""
    from affine import Affine
    from shapely.geometry import box, mapping

    from pipelines.demo import stac as stacb
    from pipelines.grid import reproject_geometry

    west, south, east, north = reproject_geometry(box(*spec.bounds), spec.crs, "EPSG:4326").bounds
    items = []
    for lat in range(math.floor(south), math.ceil(north)):
        for lon in range(math.floor(west), math.ceil(east)):
            ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
            item_id = f"Copernicus_DSM_COG_10_{ns}{abs(lat):02d}_00_{ew}{abs(lon):03d}_00_DEM"
            cell = box(lon, lat, lon + 1, lat + 1)
            items.append(
                stacb.dem_item(
                    root_href=root_href,
                    item_id=item_id,
                    shape=(3600, 3600),
                    transform=Affine(1 / 3600, 0, lon, 0, -1 / 3600, lat + 1),
                    geometry=dict(mapping(cell)),
                    bbox=[float(v) for v in cell.bounds],
                )
            )
    return items


def province_aoi(spec: ProvinceSpec) -> dict[str, Any]:
    """The province AOI: the square as a WGS84 GeoJSON polygon (vertices every 10 km)."""
    from shapely.geometry import box

    return _wgs84(box(*spec.bounds), spec.crs)[0]


def write_province_archive(spec: ProvinceSpec, root: str | os.PathLike[str]) -> dict[str, int]:
    """Write the province's items as an archive the embedded STAC API serves
    (``stac/collections/<c>.json``, ``stac/items/<c>.json``) and its AOI
    (``province.geojson``); assets point under ``root`` at files that are never written.
    Returns the number of items per collection."""
    from pipelines.demo import stac as stacb

    base = Path(root)
    href = base.resolve().as_uri()
    by_collection = {
        stacb.S2: s2_items(spec, href),
        stacb.S1: s1_items(spec, href),
        stacb.DEM: dem_items(spec, href),
    }
    (base / "stac" / "collections").mkdir(parents=True, exist_ok=True)
    (base / "stac" / "items").mkdir(parents=True, exist_ok=True)
    aoi = province_aoi(spec)
    xs = [p[0] for p in aoi["coordinates"][0]]
    ys = [p[1] for p in aoi["coordinates"][0]]
    origin = dt.datetime(spec.year, 1, 1)
    interval: list[str | None] = [
        stacb.iso(origin + dt.timedelta(days=spec.days.start)),
        stacb.iso(origin + dt.timedelta(days=spec.days.stop) - dt.timedelta(seconds=1)),
    ]
    for cid, items in by_collection.items():
        coll = stacb.collection(
            cid,
            root_href=href,
            bbox=[min(xs) - 1, min(ys) - 1, max(xs) + 1, max(ys) + 1],
            interval=interval,
        )
        (base / "stac" / "collections" / f"{cid}.json").write_text(json.dumps(coll))
        (base / "stac" / "items" / f"{cid}.json").write_text(
            json.dumps({"type": "FeatureCollection", "features": items})
        )
    (base / "province.geojson").write_text(json.dumps(aoi))
    return {cid: len(items) for cid, items in by_collection.items()}


def province_config(
    spec: ProvinceSpec,
    *,
    stac_url: str,
    store: str,
    window: tuple[dt.date, dt.date],
    products: Sequence[str] = ("cloud_mask", "haze_index", "dehaze", "water_mask", "flood_change"),
    max_mapped_tasks: int = 256,
) -> ProvinceConfig:
    """The province config over the synthetic archive's STAC API."""
    from pipelines.config import parse_config

    return parse_config(
        {
            "province": f"synthetic{round(spec.area_km2)}",
            "aoi": province_aoi(spec),
            "crs": spec.crs,
            "resolution": spec.resolution,
            "tile_px": spec.tile_px,
            "start": window[0].isoformat(),
            "end": window[1].isoformat(),
            "products": list(products),
            "stac": {"url": stac_url, "max_cloud_cover": 80},
            "store": store,
            "flood": {"pre_days": 30},
            "max_mapped_tasks": max_mapped_tasks,
        }
    )


# ---- measuring ---------------------------------------------------------------------------------


@contextlib.contextmanager
def counted_requests() -> Iterator[Counter[str]]:
    """Count the HTTP requests this process sends through ``requests`` (pystac-client's
    transport), by method and path."""
    from urllib.parse import urlsplit

    import requests

    counts: Counter[str] = Counter()
    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        counts[f"{request.method} {urlsplit(request.url).path}"] += 1
        return original(self, request, **kwargs)

    requests.Session.send = send  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        requests.Session.send = original  # type: ignore[method-assign]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss(interval_s: float = 0.02) -> Iterator[dict[str, int]]:
    """Peak resident memory of this process while the block runs (sampled), and before it."""
    out = {"before": _rss_bytes(), "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], _rss_bytes())
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], _rss_bytes())


def xcom_bytes(payload: Any) -> int:
    """Bytes of an XCom value as Airflow's JSON serialisation stores it (compact JSON)."""
    return len(json.dumps(payload, separators=(",", ":"), default=str).encode())


def graph_tasks(plan: Any, store: str, tile_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Dask tasks of each stage group's graph per tile, as a batch task submits it (the first
    round of the pending labels, :func:`pipelines.engine.run.date_rounds`, selected; graph
    optimised for CPU groups), built lazily and never computed."""
    from dask.base import collections_to_expr

    from pipelines.engine.graph import build_group_graph, select_labels
    from pipelines.engine.run import date_rounds
    from pipelines.errors import NoScenesError
    from pipelines.stages.registry import get_stage

    out: dict[str, dict[str, int]] = {}
    for group in plan.groups:
        per_tile = {}
        for tile_id in tile_ids:
            try:
                views, _ = build_group_graph(plan, store, group, tile_id)
            except NoScenesError:
                continue
            pending = {n: plan.tile_dates(get_stage(n), tile_id) for n in views}
            rounds = date_rounds(pending)
            if not rounds:
                continue
            selected = [select_labels(views[n], labels) for n, labels in rounds[0].items()]
            # What Client.compute sends the scheduler: one expression, optimised.
            expr = collections_to_expr(selected, optimize_graph=not group.resources).optimize()
            per_tile[tile_id] = len(expr.__dask_graph__())
        out[group.name] = per_tile
    return out


@dataclass(frozen=True)
class ResumeBench:
    """The plan task of a run resumed after one batch failed: the markers of every other batch
    are in the store, and the task reads them to find the batch left to do."""

    markers: int
    """Markers in the store, each read by the check."""
    write_s: float
    """Seconds to write them (the bench's own set-up, side by side)."""
    pending_s: float
    """Seconds of the plan task's check (``operators.production.pending_batches``: batches read
    side by side)."""
    one_by_one_s: float
    """Seconds of the same reads one batch after another, in this process (the baseline: the
    plan task before it read batches side by side)."""
    pending_batches: int
    """Batches found pending (the one left without markers)."""
    report_s: float
    """Seconds of the run's report (``terrapipe status``, the web page's run view) reading every
    tile's markers."""
    report_settled_s: float
    """Seconds of the same report given the tiles the first found finished (the run view's
    answers between its full reads: only the other tiles' markers are read)."""
    settled_tiles: int
    """Tiles the first report found finished."""
    settled_report_same: bool
    """The second report equals the first (the store did not change between them)."""


def _marker_triples(plan: Any, batches: Sequence[Sequence[str]]) -> list[tuple[Any, str, str]]:
    """(stage, tile id, label) of every product a run of ``plan`` makes on ``batches``."""
    from pipelines.stages.registry import get_stage

    return [
        (stage, tile_id, label)
        for group in plan.groups
        for stage in (get_stage(n) for n in group.stages)
        for batch in batches
        for tile_id in batch
        for label in plan.tile_dates(stage, tile_id)
    ]


def measure_resume(plan: Any, store: str, plan_url: str) -> ResumeBench:
    """Write a marker for every product of every batch but the last, then time the plan
    task's pending check against the same reads one batch after another, and the run's report
    (at ``plan_url``) reading every tile against reading only the unfinished ones. The markers
    are removed afterwards."""
    from operators.production import pending_batches
    from pipelines import storage
    from pipelines.engine.report import run_report
    from pipelines.products import is_done, marker_url

    done = _marker_triples(plan, plan.batches[:-1])
    bodies = {
        stage.name: json.dumps(
            {"type": "Feature", "properties": {"terrapipe:stage_version": stage.version}}
        )
        for stage, _, _ in done
    }

    def url(triple: tuple[Any, str, str]) -> str:
        stage, tile_id, label = triple
        return marker_url(store, plan.province, stage.name, tile_id, label)

    t0 = time.perf_counter()
    storage.concurrently(lambda t: storage.write_text(url(t), bodies[t[0].name]), done, url=store)
    write_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        pending = pending_batches(plan, store, overwrite=False)
        pending_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for batch in plan.batches:
            any(
                not is_done(store, plan.province, stage.name, tile_id, label, stage.version)
                for stage, tile_id, label in _marker_triples(plan, [batch])
            )
        one_by_one_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = run_report(plan_url, store, plan=plan)
        report_s = time.perf_counter() - t0
        settled = full.settled_tiles()
        t0 = time.perf_counter()
        again = run_report(plan_url, store, plan=plan, settled=settled)
        report_settled_s = time.perf_counter() - t0
    finally:
        storage.concurrently(lambda t: storage.remove(url(t)), done, url=store)
    return ResumeBench(
        markers=len(done),
        write_s=round(write_s, 3),
        pending_s=round(pending_s, 3),
        one_by_one_s=round(one_by_one_s, 3),
        pending_batches=sum(len(v) for v in pending.values()),
        report_s=round(report_s, 3),
        report_settled_s=round(report_settled_s, 3),
        settled_tiles=len(settled),
        settled_report_same=again == full,
    )


@dataclass(frozen=True)
class PlanReadBench:
    """What a batch's task reads of the plan: its part, streamed (:func:`read_plan_part`),
    against the whole plan it read before, in the same process."""

    batch: int
    """The batch with the most items on its tiles."""
    items: int
    """Items of that batch's part (the whole plan's: :attr:`ProvinceBench.scenes`)."""
    part_s: float
    whole_s: float
    part_peak_bytes: int
    """Peak of the memory Python allocated during the read (tracemalloc, a second read)."""
    whole_peak_bytes: int


def _timed_reads(reads: Mapping[str, Callable[[], object]]) -> dict[str, tuple[float, int]]:
    """Each read timed, then run again under tracemalloc: (seconds, peak bytes allocated)."""
    import tracemalloc

    out = {}
    for name, read in reads.items():
        gc.collect()
        t0 = time.perf_counter()
        read()
        seconds = time.perf_counter() - t0
        gc.collect()
        tracemalloc.start()
        try:
            read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        out[name] = (seconds, peak)
    return out


def measure_plan_read(url: str) -> PlanReadBench:
    """Read the part of the batch with the most items of the plan written at ``url``, and the
    whole plan: each timed, then read again under tracemalloc for its peak allocation."""
    from pipelines.engine.plan import read_plan, read_plan_part

    whole = read_plan(url)
    counts = [
        sum(len({i for t in b for i in whole.tile_scenes(t).get(s, ())}) for s in whole.items)
        for b in whole.batches
    ]
    batch = max(range(len(counts)), key=counts.__getitem__)
    del whole
    out = _timed_reads(
        {"part": lambda: read_plan_part(url, batch), "whole": lambda: read_plan(url)}
    )
    return PlanReadBench(
        batch=batch,
        items=counts[batch],
        part_s=round(out["part"][0], 3),
        whole_s=round(out["whole"][0], 3),
        part_peak_bytes=out["part"][1],
        whole_peak_bytes=out["whole"][1],
    )


#: Parcels per km2 of the DEMO season (7,535 true parcels on 16 tiles of 512 px at 10 m).
DEMO_PARCELS_PER_KM2 = 7535 / (16 * 5.12**2)


@dataclass(frozen=True)
class PredictionsReadBench:
    """What a crop-map batch reads of the season's crop predictions (one row a parcel of the
    province, SYNTHETIC at :data:`DEMO_PARCELS_PER_KM2`): its tiles' rows
    (:func:`~pipelines.engine.season.parcel_rows`), against the whole table it read before."""

    parcels: int
    file_bytes: int
    batch_rows: int
    part_s: float
    whole_s: float
    part_peak_bytes: int
    whole_peak_bytes: int


def synthetic_predictions(plan: Any, crops: Sequence[str], seed: int = 0) -> Any:
    """A crop predictions table (as the season's fit writes it) for every tile of ``plan``, at
    :data:`DEMO_PARCELS_PER_KM2`, with the parcel ids the parcels step gives."""
    import numpy as np
    import pandas as pd

    from pipelines.engine.season import tile_offset

    km2 = (plan.tile_px * plan.resolution / 1000.0) ** 2
    per_tile = max(1, round(DEMO_PARCELS_PER_KM2 * km2))
    local = np.arange(1, per_tile + 1)
    ids = np.concatenate([tile_offset(plan, t) + local for t in plan.tile_ids])
    rng = np.random.default_rng(seed)
    n = len(ids)
    frame = pd.DataFrame(
        {f"p_{c}": rng.random(n, dtype="float32") for c in crops},
        index=pd.Index(ids, name="parcel_id"),
    )
    frame["cropland_probability"] = rng.random(n, dtype="float32")
    frame["crop"] = np.asarray(crops, dtype=object)[rng.integers(0, len(crops), n)]
    frame["crop_code"] = rng.integers(0, 16, n).astype("uint8")
    frame["county_id"] = rng.integers(0, 120, n).astype("int64")
    return frame


def measure_predictions_read(plan: Any, store: str) -> PredictionsReadBench:
    """Write a synthetic crop predictions table for ``plan``'s province where the season's fit
    writes it (:func:`synthetic_predictions`, the demo calendar's crops), read batch 0's rows
    and the whole table, each timed and under tracemalloc; the table is removed afterwards."""
    from pipelines import products, storage
    from pipelines.agri.calendar import DEMO_CALENDAR, load_calendar
    from pipelines.engine.season import parcel_rows
    from pipelines.engine.season_crops import write_predictions

    frame = synthetic_predictions(plan, load_calendar(DEMO_CALENDAR).names)
    url = products.crop_predictions_url(store, plan.province, int(plan.window[0][:4]))
    file_bytes = write_predictions(frame, url)
    parcels = len(frame)
    del frame
    rows = parcel_rows(plan, plan.batches[0])
    try:
        batch_rows = len(products.read_table(url, rows))
        out = _timed_reads(
            {
                "part": lambda: products.read_table(url, rows),
                "whole": lambda: products.read_table(url),
            }
        )
    finally:
        storage.remove(url)
    return PredictionsReadBench(
        parcels=parcels,
        file_bytes=file_bytes,
        batch_rows=batch_rows,
        part_s=round(out["part"][0], 3),
        whole_s=round(out["whole"][0], 3),
        part_peak_bytes=out["part"][1],
        whole_peak_bytes=out["whole"][1],
    )


@dataclass(frozen=True)
class ProvinceBench:
    """What :func:`measure` found for one plan."""

    window: tuple[str, str]
    tiles: int
    scenes: dict[str, int]
    """Items per source input in the plan."""
    plan_s: float
    """Seconds of ``plan_run`` (search, tiles, scenes per tile, checks, plan written)."""
    plan_cpu_s: float
    """CPU seconds of this process in ``plan_run`` (the STAC server's are not counted): on a
    shared machine, what planning costs without waiting for a core."""
    stac_requests: int
    stac_requests_by_path: dict[str, int]
    plan_bytes: int
    """Bytes of the plan JSON written to the store."""
    plan_read: PlanReadBench
    """What a batch's task reads of the plan (its part) against the whole plan."""
    crop_predictions: PredictionsReadBench
    """What a crop-map batch reads of the season's crop predictions against the whole table."""
    rss_before_bytes: int
    rss_peak_bytes: int
    """Peak resident memory of the process while planning (sampled every 20 ms)."""
    manifest_s: float
    """Seconds to build the plan task's XCom (pending batches read from the store's markers;
    the store is empty: every batch is pending)."""
    xcom_bytes: dict[str, int]
    """Largest XCom per task: plan, batches_<group>, process_<group> (every batch serialised)."""
    max_mapped_tasks: int
    """The config's cap on mapped instances per task."""
    mapped_tasks: dict[str, int]
    """Mapped instances per stage group's process task."""
    tiles_per_batch: int
    graph_tasks: dict[str, dict[str, int]]
    """Dask tasks per stage group and sampled tile."""
    graph_s: float
    resume: ResumeBench | None = None
    """The plan task of the same run resumed after one batch failed (:func:`measure_resume`);
    None when not measured."""

    def checks(self) -> dict[str, bool]:
        """Each bar of the issue, passed or not."""
        graph = [n for per_tile in self.graph_tasks.values() for n in per_tile.values()]
        return {
            "plan_s": self.plan_s < BARS["plan_s"],
            "mapped_tasks": all(
                n <= min(self.max_mapped_tasks, BARS["mapped_tasks"])
                for n in self.mapped_tasks.values()
            ),
            "xcom_bytes": all(n < BARS["xcom_bytes"] for n in self.xcom_bytes.values()),
            "graph_tasks": bool(graph) and max(graph) < BARS["graph_tasks"],
        }


def measure(
    config: ProvinceConfig, *, sample_tiles: int = 3, resume: bool = False
) -> ProvinceBench:
    """Plan ``config`` through its STAC API and measure what the DAG's tasks would carry;
    ``resume``: also the plan task of the run resumed after one batch failed
    (:func:`measure_resume`)."""
    from operators.production import RunManifest
    from pipelines.engine.manifest import BatchManifest, TileResult
    from pipelines.engine.plan import plan_run
    from pipelines.stages.registry import get_stage

    with counted_requests() as counts, peak_rss() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        planned = plan_run(config)
        plan_s, plan_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    plan = planned.plan
    importlib.import_module("pipelines.engine.run")  # its import (xarray, zarr) is not timed
    t0 = time.perf_counter()
    run_xcom = RunManifest.of(planned, config, overwrite=False).to_xcom()
    manifest_s = time.perf_counter() - t0
    sizes = {"plan": xcom_bytes(run_xcom)}
    mapped = {}
    for group in plan.groups:
        pending = run_xcom["pending"][group.name]  # type: ignore[index]
        mapped[group.name] = len(pending)
        sizes[f"batches_{group.name}"] = xcom_bytes(list(pending))
        largest = 0
        stages = [get_stage(n) for n in group.stages]
        for index in pending:
            results = []
            for tile_id in plan.batches[index]:
                # Every pending output written: the largest manifest a successful batch pushes.
                result = TileResult(tile_id)
                for stage in stages:
                    result.written[stage.name] = plan.tile_dates(stage, tile_id)
                results.append(result)
            largest = max(
                largest, xcom_bytes(BatchManifest.of(group.name, index, results).to_xcom())
            )
        sizes[f"process_{group.name}"] = largest
    step = max(1, len(plan.tiles) // max(1, sample_tiles))
    sampled = [t.tile_id for t in plan.tiles[::step]][:sample_tiles]
    t0 = time.perf_counter()
    graphs = graph_tasks(plan, config.store, sampled)
    graph_s = time.perf_counter() - t0
    return ProvinceBench(
        window=plan.window,
        tiles=len(plan.tiles),
        scenes={k: len(v) for k, v in plan.items.items()},
        plan_s=round(plan_s, 3),
        plan_cpu_s=round(plan_cpu_s, 3),
        stac_requests=sum(counts.values()),
        stac_requests_by_path=dict(sorted(counts.items())),
        plan_bytes=len(plan.to_json().encode()),
        plan_read=measure_plan_read(planned.url),
        crop_predictions=measure_predictions_read(plan, config.store),
        rss_before_bytes=rss["before"],
        rss_peak_bytes=rss["peak"],
        manifest_s=round(manifest_s, 3),
        xcom_bytes=sizes,
        max_mapped_tasks=config.max_mapped_tasks,
        mapped_tasks=mapped,
        tiles_per_batch=max((len(b) for b in plan.batches), default=0),
        graph_tasks=graphs,
        graph_s=round(graph_s, 3),
        resume=measure_resume(plan, config.store, planned.url) if resume else None,
    )


def month_window(year: int, month: int) -> tuple[dt.date, dt.date]:
    """First and last day of a calendar month."""
    last = (dt.date(year + month // 12, month % 12 + 1, 1)) - dt.timedelta(days=1)
    return dt.date(year, month, 1), last


#: Longest window (days) whose resumed plan task is measured: a month writes some 60,000
#: markers for a 1,700-tile province, a year twelve times as many.
RESUME_MAX_DAYS = 31


def run_bench(
    spec: ProvinceSpec,
    workdir: str | os.PathLike[str],
    windows: Sequence[tuple[dt.date, dt.date]],
    *,
    max_mapped_tasks: int = 256,
    sample_tiles: int = 3,
    store: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Write the archive under ``workdir``, serve it, plan each window and measure it, with the
    store at ``store`` (default: under ``workdir``); ``resume``: also the plan task of a
    resumed run, for windows of at most :data:`RESUME_MAX_DAYS` days."""
    from pipelines.catalog.server import start_server, stop_server

    root = Path(workdir)
    t0 = time.perf_counter()
    counts = write_province_archive(spec, root / "archive")
    archive_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    server = start_server(str(root / "archive"))
    server_s = time.perf_counter() - t0
    runs = []
    try:
        for window in windows:
            config = province_config(
                spec,
                stac_url=server.url,
                store=store or str(root / "store"),
                window=window,
                max_mapped_tasks=max_mapped_tasks,
            )
            days = (window[1] - window[0]).days + 1
            result = measure(
                config, sample_tiles=sample_tiles, resume=resume and days <= RESUME_MAX_DAYS
            )
            runs.append({**asdict(result), "checks": result.checks()})
    finally:
        stop_server(server)
    return {
        "province": {**asdict(spec), "crs": spec.crs, "bounds": spec.bounds},
        "archive_items": counts,
        "archive_s": round(archive_s, 3),
        "server_start_s": round(server_s, 3),
        "bars": BARS,
        "runs": runs,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def bench_province(
    area_km2: float = 170_000.0,
    window: str = "month,year",
    max_mapped_tasks: int = 256,
    sample_tiles: int = 3,
    workdir: str | None = None,
    store: str | None = None,
    resume: bool = True,
) -> None:
    """Plan and schedule a synthetic province (no pixels): planning time, STAC requests, plan
    size, what a batch's task reads of it and of the season's crop predictions, XCom bytes per
    task, mapped tasks, Dask tasks per
    tile graph, memory, and the plan task of a monthly run resumed after one batch failed
    (JSON).

    ``--window``: ``month`` (July: a scheduled monthly run), ``year`` (the whole year in one
    plan), or both, comma-separated. ``--store``: the store to plan into and read markers from
    (e.g. an S3 prefix, to time the resumed plan task on your object store; the bench writes
    under its province ``synthetic<area>`` and removes the markers it wrote); default a
    temporary folder. ``--no-resume``: skip the resumed run.
    """
    from pipelines.errors import BadInputError

    spec = ProvinceSpec(area_km2=area_km2)
    windows = []
    for name in window.split(","):
        if name == "month":
            windows.append(month_window(spec.year, 7))
        elif name == "year":
            windows.append((dt.date(spec.year, 1, 1), dt.date(spec.year, 12, 31)))
        else:
            raise BadInputError("window", name, "month, year, or both comma-separated")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="terrapipe-bench-"))
        result = run_bench(
            spec,
            workdir,
            windows,
            max_mapped_tasks=max_mapped_tasks,
            sample_tiles=sample_tiles,
            store=store,
            resume=resume,
        )
    print(json.dumps(result, indent=1))


__all__ = [
    "BARS",
    "DEMO_PARCELS_PER_KM2",
    "PlanReadBench",
    "PredictionsReadBench",
    "ProvinceBench",
    "ProvinceSpec",
    "ResumeBench",
    "bench_province",
    "counted_requests",
    "dem_items",
    "graph_tasks",
    "measure",
    "measure_plan_read",
    "measure_predictions_read",
    "measure_resume",
    "mgrs_square",
    "month_window",
    "peak_rss",
    "province_aoi",
    "province_config",
    "run_bench",
    "s1_items",
    "s2_items",
    "synthetic_predictions",
    "write_province_archive",
    "xcom_bytes",
]
