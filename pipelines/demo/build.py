"""Build the demo province archive: static layers, S2/S1/DEM COGs with STAC items, truth layers.

The generators (landscape, phenology, optical, sar) are pure numpy; this module plans the
acquisitions, fans the scenes out to worker processes and writes everything under the archive
root URL. ``archive.json`` is written last: an archive without it is incomplete.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from pyproj import Transformer

from pipelines import __version__, storage
from pipelines.classes import CloudClass, FloodClass, LandClass
from pipelines.demo import stac as stacb
from pipelines.demo.landscape import Landscape, build_landscape
from pipelines.demo.optical import BANDS_10M, s2_scene
from pipelines.demo.phenology import Phenology, build_phenology, county_yields
from pipelines.demo.sar import NODATA as S1_NODATA
from pipelines.demo.sar import s1_scene
from pipelines.demo.spec import CRS, EPSG, MGRS_TILE, SizeSpec, get_size
from pipelines.demo.writers import (
    dumps,
    feature_collection,
    raster_polygons,
    to_wgs84,
    write_cog,
    write_json,
)
from pipelines.errors import BadInputError
from pipelines.stages.terrain import height_above_drainage_np

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox

#: Version of the archive's encoding; an archive of an older format is built again. 2: the S2
#: items say ``earthsearch:boa_offset_applied: false`` (their pixels keep the offset), as Earth
#: Search means that flag (1 said true of the same pixels).
ARCHIVE_FORMAT = 2
TRUTH = {
    "landcover": "truth/landcover.tif",
    "parcels": "truth/parcels.tif",
    "parcel_polygons": "truth/parcels.geojson",
    "counties": "truth/counties.tif",
    "yields": "truth/yields.csv",
    "flood": "truth/flood.tif",
    "dem": "truth/dem.tif",
    "s2": "truth/s2.zarr",
}
TRUTH_DESCRIPTION = {
    "landcover": "uint8 LandClass (pipelines.classes) on the 10 m province grid",
    "parcels": "uint32 parcel id on the 10 m grid, 0 = not a parcel",
    "parcel_polygons": "WGS84 GeoJSON, one feature per parcel: parcel_id, crop, crop_code, "
    "county_id, area_ha",
    "counties": "uint16 county id on the 10 m grid",
    "yields": "CSV season,county_id,crop,yield,unit; yield in t/ha (cotton: lint)",
    "flood": "uint8 FloodClass of the flood event (dry / flooded / permanent water)",
    "dem": "float32 elevation (m) on the 10 m grid, the source of cop-dem-glo-30",
    "s2": "Zarr v3 (time, y, x) on the 10 m grid, one time per S2 item (coord item_id): "
    "cloud_class uint8 CloudClass, haze_density float32 optical depth d at 550 nm, "
    "B02/B03/B04/B08 uint16 clear (haze- and cloud-free) reflectance x 10000",
}
_STATE: dict[str, Any] = {}


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`build_archive` made (or found)."""

    url: str
    """Archive root URL (absolute local path or s3:// URL)."""
    size: str
    """Size name."""
    seed: int
    """Generator seed."""
    items: dict[str, int]
    """Item count per collection."""
    elapsed_s: float
    """Wall time of this call, seconds."""
    skipped: bool
    """True when a complete archive with the same size and seed was already there."""
    info: dict[str, Any] = field(default_factory=dict)
    """The content of archive.json."""


def default_out(size: str) -> str:
    """Default archive location: ``$TERRAPIPE_HOME/archive/<size>`` (absolute; ``./var`` when
    TERRAPIPE_HOME is unset)."""
    from pipelines.config import terrapipe_home

    return str(terrapipe_home() / "archive" / size)


def _root(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise BadInputError("out", url, "a local directory or an s3:// URL")
    url = url.strip()
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        if not url.startswith("s3://"):
            raise BadInputError("out", url, "a local directory or an s3:// URL")
        return url.rstrip("/")
    return os.path.abspath(url).rstrip("/") or "/"


def open_archive_info(url: str, *, any_format: bool = False) -> dict[str, Any]:
    """The content of ``<url>/archive.json``; BadInputError when there is no complete archive,
    or (unless ``any_format``) one of an older format (:func:`check_archive_format`)."""
    import json

    root = _root(url)
    target = storage.join(root, "archive.json")
    try:
        info: dict[str, Any] = json.loads(storage.read_text(target))
    except FileNotFoundError as exc:
        raise BadInputError(
            "archive",
            url,
            "an archive root holding archive.json",
            "build one with `terrapipe demo-archive --out URL`",
        ) from exc
    if not any_format:
        check_archive_format(info, url)
    return info


def check_archive_format(info: dict[str, Any], url: str) -> None:
    """BadInputError when an archive's ``archive.json`` content says an older format than
    :data:`ARCHIVE_FORMAT` (its items would be read with the wrong radiometry)."""
    found = info.get("format")
    if isinstance(found, int) and found < ARCHIVE_FORMAT:
        raise BadInputError(
            "archive",
            url,
            f"a demo archive of format {ARCHIVE_FORMAT}",
            f"it is of format {found}; `terrapipe demo-archive` with its size and seed builds it "
            "again",
        )


def archive_items(url: str, collection: str) -> list[dict[str, Any]]:
    """The STAC item dicts of one collection of an archive, sorted by datetime."""
    import json

    path = storage.join(_root(url), "stac", "items", f"{collection}.json")
    features = json.loads(storage.read_text(path))["features"]
    return sorted(features, key=lambda f: f["properties"]["datetime"])


def archive_geobox(info: dict[str, Any]) -> GeoBox:
    """The province grid of an archive (the grid of its truth layers) from its ``archive.json``
    content (:func:`open_archive_info`)."""
    from odc.geo.geobox import GeoBox

    return GeoBox((info["height"], info["width"]), Affine(*info["transform"][:6]), info["crs"])


def demo_archive_url() -> str:
    """Root of the embedded demo archive: ``$TERRAPIPE_HOME/archive/demo`` (absolute)."""
    from pipelines.config import terrapipe_home

    return str(terrapipe_home() / "archive" / "demo")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise BadInputError("seed", seed, "an integer >= 0")
    return int(seed)


# ----------------------------------------------------------------------------------------------
# planning


def _wgs84_geometry(bounds: tuple[float, float, float, float]) -> dict[str, Any]:
    minx, miny, maxx, maxy = bounds
    ring = [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]
    return to_wgs84({"type": "Polygon", "coordinates": [ring]}, CRS)


def _bbox_of(geom: dict[str, Any]) -> list[float]:
    xs = [p[0] for ring in geom["coordinates"] for p in ring]
    ys = [p[1] for ring in geom["coordinates"] for p in ring]
    return [min(xs), min(ys), max(xs), max(ys)]


def _centre_lonlat(spec: SizeSpec) -> tuple[float, float]:
    minx, miny, maxx, maxy = spec.bounds
    tr = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform((minx + maxx) / 2, (miny + maxy) / 2)
    return float(lon), float(lat)


def _flood_window(spec: SizeSpec) -> tuple[dt.date, dt.date]:
    start = dt.date.fromisoformat(spec.flood_date)
    return start, start + dt.timedelta(days=spec.flood_days)


def plan_s2(spec: SizeSpec) -> list[dict[str, Any]]:
    """One task per S2 acquisition: index, date, id, platform, datetime."""
    tasks = []
    for t, (k, d) in enumerate(spec.s2_schedule()):
        platform = "sentinel-2a" if k % 2 == 0 else "sentinel-2b"
        when = dt.datetime.combine(d, dt.time(2, 58, 31, 24000)) + dt.timedelta(seconds=k % 7)
        item_id = f"S2{platform[-1].upper()}_{MGRS_TILE}_{d:%Y%m%d}_0_L2A"
        tasks.append(
            {
                "kind": "s2",
                "t": t,
                "k": k,
                "date": d,
                "when": when,
                "id": item_id,
                "platform": platform,
            }
        )
    return tasks


S1_REF = (dt.datetime(2025, 3, 11, 4, 42, 40), 58252)
S1_PERIOD_S = 12 * 86400 / 175


def plan_s1(spec: SizeSpec) -> list[dict[str, Any]]:
    """One task per S1 acquisition: ascending (10:24 UTC) and descending (22:09 UTC) alternate."""
    tasks = []
    for t, (k, d) in enumerate(spec.s1_schedule()):
        asc = k % 2 == 0
        start = dt.datetime.combine(d, dt.time(10, 24, 5) if asc else dt.time(22, 9, 40))
        start += dt.timedelta(microseconds=(k * 104729) % 1_000_000)
        end = start + dt.timedelta(seconds=25)
        abs_orbit = S1_REF[1] + math.floor((start - S1_REF[0]).total_seconds() / S1_PERIOD_S)
        rel = (abs_orbit - 73) % 175 + 1
        datatake = (abs_orbit * 2654435761) % 0xFFFFFF
        item_id = (
            f"S1A_IW_GRDH_1SDV_{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}_{abs_orbit:06d}"
            f"_{datatake:06X}_rtc"
        )
        tasks.append(
            {
                "kind": "s1",
                "t": t,
                "k": k,
                "date": d,
                "start": start,
                "end": end,
                "id": item_id,
                "orbit_state": "ascending" if asc else "descending",
                "abs_orbit": abs_orbit,
                "rel_orbit": rel,
                "datatake": datatake,
            }
        )
    return tasks


# ----------------------------------------------------------------------------------------------
# workers (state inherited through fork)


def _item_rng(seed: int, kind: int, k: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, kind, k])))


def _footprint_geometry(valid: np.ndarray, transform: Affine) -> dict[str, Any]:
    from rasterio import features
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    step = 8
    sub = valid[::step, ::step].astype(np.uint8)
    polys = [
        shape(g)
        for g, v in features.shapes(sub, mask=sub > 0, transform=transform @ Affine.scale(step))
        if v == 1
    ]
    geom = unary_union(polys).simplify(transform.a * step, preserve_topology=True)
    return to_wgs84(dict(mapping(geom)), CRS)


def _zarr_group() -> Any:
    import zarr

    grp = _STATE.get("zarr_group")
    if grp is None:
        url = _STATE["zarr_url"]
        store: zarr.storage.FsspecStore | zarr.storage.LocalStore
        if storage.is_remote(url):
            store = zarr.storage.FsspecStore.from_url(
                url, storage_options=storage.storage_options(url)
            )
        else:
            store = zarr.storage.LocalStore(url)
        grp = zarr.open_group(store, mode="r+", zarr_format=3)
        _STATE["zarr_group"] = grp
    return grp


def _run_s2(task: dict[str, Any]) -> dict[str, Any]:
    spec: SizeSpec = _STATE["spec"]
    land: Landscape = _STATE["land"]
    phen: Phenology = _STATE["phen"]
    root = _STATE["root"]
    seed = _STATE["seed"]
    d = task["date"]
    lon, lat = _STATE["centre"]
    sun = stacb.solar_position(task["when"], lat, lon)
    rng = _item_rng(seed, 10, task["k"])
    partial = bool(rng.random() < 0.12)
    f0, f1 = _flood_window(spec)
    scene = s2_scene(
        land,
        phen,
        d,
        rng,
        sun_azimuth=sun[0],
        sun_elevation=sun[1],
        flood_active=f0 <= d < f1,
        partial=partial,
    )
    base = storage.join(root, "data", stacb.S2, task["id"])
    tf10 = spec.transform
    tf20 = tf10 @ Affine.scale(2)
    for band, arr in scene.dn.items():
        key = stacb.S2_ASSETS[band][0]
        write_cog(
            storage.join(base, f"{key}.tif"),
            arr,
            transform=tf10 if arr.shape[0] == spec.width else tf20,
            crs=CRS,
            nodata=0,
        )
    write_cog(
        storage.join(base, "scl.tif"),
        scene.scl,
        transform=tf20,
        crs=CRS,
        nodata=0,
        resampling="nearest",
    )
    grp = _zarr_group()
    t = task["t"]
    grp["cloud_class"][t] = scene.cloud_class
    grp["haze_density"][t] = scene.haze
    for band in BANDS_10M:
        grp[band][t] = scene.clear[band]
    geometry = _footprint_geometry(scene.valid, tf10) if partial else _STATE["province_geometry"]
    item = stacb.s2_item(
        root_href=root,
        item_id=task["id"],
        when=task["when"],
        platform=task["platform"],
        epsg=EPSG,
        mgrs_tile=MGRS_TILE,
        shape10=(spec.width, spec.width),
        transform10=tf10,
        transform20=tf20,
        geometry=geometry,
        bbox=_bbox_of(geometry),
        sun=sun,
        stats=scene.stats,
        baseline="05.11" if d.year >= 2025 else "05.10",
        relative_orbit=32,
    )
    return item


def _run_s1(task: dict[str, Any]) -> dict[str, Any]:
    spec: SizeSpec = _STATE["spec"]
    root = _STATE["root"]
    rng = _item_rng(_STATE["seed"], 20, task["k"])
    partial = bool(rng.random() < 0.1)
    f0, f1 = _flood_window(spec)
    d = task["date"]
    scene = s1_scene(
        _STATE["land"], _STATE["phen"], d, rng, flood_active=f0 <= d < f1, partial=partial
    )
    base = storage.join(root, "data", stacb.S1, task["id"])
    for pol in ("vv", "vh"):
        write_cog(
            storage.join(base, f"{pol}.tif"),
            getattr(scene, pol),
            transform=spec.transform,
            crs=CRS,
            nodata=S1_NODATA,
        )
    geometry = (
        _footprint_geometry(scene.valid, spec.transform) if partial else _STATE["province_geometry"]
    )
    return stacb.s1_item(
        root_href=root,
        item_id=task["id"],
        start=task["start"],
        end=task["end"],
        epsg=EPSG,
        shape=(spec.width, spec.width),
        transform=spec.transform,
        proj_bbox=[float(v) for v in spec.bounds],
        geometry=geometry,
        bbox=_bbox_of(geometry),
        orbit_state=task["orbit_state"],
        abs_orbit=task["abs_orbit"],
        rel_orbit=task["rel_orbit"],
        datatake=task["datatake"],
    )


def _run_task(task: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    fn = _run_s2 if task["kind"] == "s2" else _run_s1
    return task["kind"], task["t"], fn(task)


# ----------------------------------------------------------------------------------------------
# static layers


def _write_truth(spec: SizeSpec, land: Landscape, phen: Phenology, root: str, seed: int) -> None:
    tf = spec.transform
    write_cog(
        storage.join(root, TRUTH["landcover"]),
        land.landcover,
        transform=tf,
        crs=CRS,
        nodata=None,
        resampling="nearest",
    )
    write_cog(
        storage.join(root, TRUTH["parcels"]),
        land.parcels,
        transform=tf,
        crs=CRS,
        nodata=None,
        resampling="nearest",
    )
    write_cog(
        storage.join(root, TRUTH["counties"]),
        land.counties,
        transform=tf,
        crs=CRS,
        nodata=0,
        resampling="nearest",
    )
    write_cog(
        storage.join(root, TRUTH["flood"]),
        land.flood,
        transform=tf,
        crs=CRS,
        nodata=0,
        resampling="nearest",
    )
    write_cog(storage.join(root, TRUTH["dem"]), land.dem, transform=tf, crs=CRS, nodata=None)
    rows = county_yields(land, phen, seed)
    csv = "season,county_id,crop,yield,unit\n" + "".join(
        f"{s},{c},{crop},{y:.3f},{u}\n" for s, c, crop, y, u in rows
    )
    storage.write_text(storage.join(root, TRUTH["yields"]), csv)

    polys = raster_polygons(land.parcels, tf, CRS)
    feats = []
    for pid, geom in polys.items():
        code = int(land.parcel_crop[pid])
        feats.append(
            {
                "type": "Feature",
                "id": pid,
                "properties": {
                    "parcel_id": pid,
                    "crop": LandClass(code).name.lower(),
                    "crop_code": code,
                    "county_id": int(land.parcel_county[pid]),
                    "area_ha": round(float(land.parcel_area_ha[pid]), 2),
                },
                "geometry": geom,
            }
        )
    write_json(
        storage.join(root, TRUTH["parcel_polygons"]), feature_collection(feats), compact=True
    )

    cpolys = raster_polygons(land.counties, tf, CRS, simplify_m=spec.resolution / 2)
    area = np.bincount(land.counties.ravel()) * spec.resolution**2 / 1e6
    cfeats = [
        {
            "type": "Feature",
            "id": cid,
            "properties": {
                "county_id": cid,
                "name": land.county_names[cid - 1],
                "area_km2": round(float(area[cid]), 3),
            },
            "geometry": geom,
        }
        for cid, geom in cpolys.items()
    ]
    write_json(storage.join(root, "counties.geojson"), feature_collection(cfeats))


def _write_dem(spec: SizeSpec, land: Landscape, root: str) -> list[dict[str, Any]]:
    """Reproject the 10 m DEM to a Copernicus-like 1 arcsec EPSG:4326 grid and compute its
    height above nearest drainage over the whole grid (as ASF's Global HAND is computed from
    GLO-30); return the DEM item and the HAND item."""
    from rasterio.warp import Resampling, reproject

    pad = 64
    dem = np.pad(land.dem, pad, mode="reflect")
    src_tf = spec.transform @ Affine.translation(-pad, -pad)
    west, south, east, north = _bbox_of(_wgs84_geometry(spec.bounds))
    px = 1.0 / 3600.0
    margin = 0.003
    lon0 = math.floor((west - margin) * 3600) / 3600 - px / 2
    lat0 = math.ceil((north + margin) * 3600) / 3600 + px / 2
    w = math.ceil((east + margin - lon0) / px)
    h = math.ceil((lat0 - (south - margin)) / px)
    dst_tf = Affine(px, 0.0, lon0, 0.0, -px, lat0)
    out = np.zeros((h, w), np.float32)
    reproject(
        dem,
        out,
        src_transform=src_tf,
        src_crs=CRS,
        dst_transform=dst_tf,
        dst_crs="EPSG:4326",
        resampling=Resampling.bilinear,
        num_threads=1,
    )
    lat_i, lon_i = math.floor(south), math.floor(west)
    item_id = (
        f"Copernicus_DSM_COG_10_{'N' if lat_i >= 0 else 'S'}{abs(lat_i):02d}_00_"
        f"{'E' if lon_i >= 0 else 'W'}{abs(lon_i):03d}_00_DEM"
    )
    hand = height_above_drainage_np(out, dst_tf, latlon=True)
    ids = {stacb.DEM: item_id, stacb.HAND: item_id.removesuffix("_DEM") + "_HAND"}
    for cid, data in ((stacb.DEM, out), (stacb.HAND, hand)):
        write_cog(
            storage.join(root, "data", cid, ids[cid], "data.tif"),
            data,
            transform=dst_tf,
            crs="EPSG:4326",
            nodata=None,
        )
    bounds = (lon0, lat0 - h * px, lon0 + w * px, lat0)
    ring = [
        [bounds[0], bounds[1]],
        [bounds[2], bounds[1]],
        [bounds[2], bounds[3]],
        [bounds[0], bounds[3]],
        [bounds[0], bounds[1]],
    ]
    geom = {"type": "Polygon", "coordinates": [[[round(x, 9), round(y, 9)] for x, y in ring]]}
    return [
        stacb.dem_item(
            root_href=root,
            item_id=ids[cid],
            shape=(h, w),
            transform=dst_tf,
            geometry=geom,
            bbox=[round(b, 9) for b in bounds],
            collection=cid,
        )
        for cid in (stacb.DEM, stacb.HAND)
    ]


def _create_truth_cube(spec: SizeSpec, tasks: list[dict[str, Any]], url: str) -> None:
    import dask.array as da
    import pandas as pd
    import xarray as xr
    import zarr.codecs

    n, nt = spec.width, len(tasks)
    c = min(n, 1024)
    x = spec.x0 + (np.arange(n) + 0.5) * spec.resolution
    y = spec.y0 - (np.arange(n) + 0.5) * spec.resolution
    times = pd.DatetimeIndex([t["when"] for t in tasks]).as_unit("ns")
    chunks = (1, c, c)

    def empty(dtype: str) -> Any:
        return da.zeros((nt, n, n), dtype=dtype, chunks=chunks)

    ds = xr.Dataset(
        {
            "cloud_class": (
                ("time", "y", "x"),
                empty("uint8"),
                {"long_name": "CloudClass (0 nodata, 1 clear, 2 cloud, 3 shadow, 4 cirrus)"},
            ),
            "haze_density": (
                ("time", "y", "x"),
                empty("float32"),
                {"long_name": "haze optical depth d at 550 nm", "units": "1"},
            ),
            **{
                b: (
                    ("time", "y", "x"),
                    empty("uint16"),
                    {"long_name": f"clear surface reflectance {b}", "units": "reflectance x 1e4"},
                )
                for b in BANDS_10M
            },
        },
        coords={
            "time": ("time", times),
            "item_id": ("time", np.array([t["id"] for t in tasks], dtype=object)),
            "y": ("y", y, {"units": "m"}),
            "x": ("x", x, {"units": "m"}),
        },
        attrs={
            "crs": CRS,
            "resolution_m": spec.resolution,
            "transform": [float(v) for v in tuple(spec.transform)[:6]],
        },
    )
    comp = zarr.codecs.ZstdCodec(level=1)
    enc: dict[Hashable, Any] = {v: {"chunks": chunks, "compressors": (comp,)} for v in ds.data_vars}
    enc["time"] = {"units": "milliseconds since 1970-01-01", "dtype": "int64"}
    ds.to_zarr(
        url,
        mode="w",
        compute=False,
        zarr_format=3,
        consolidated=False,
        encoding=enc,
        storage_options=storage.storage_options(url) or None,
    )


def _clean(root: str) -> None:
    for sub in (
        "archive.json",
        "stac",
        "truth",
        f"data/{stacb.S2}",
        f"data/{stacb.S1}",
        f"data/{stacb.DEM}",
        f"data/{stacb.HAND}",
    ):
        fs, path = storage.filesystem(storage.join(root, sub))
        if fs.exists(path):
            fs.rm(path, recursive=True)


# ----------------------------------------------------------------------------------------------
# entry points


def build_archive(
    out_url: str | None = None,
    *,
    size: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
    processes: int = 2,
    progress: bool = True,
) -> ArchiveInfo:
    """Generate the demo province archive at ``out_url`` (default ``./var/archive/<size>``).

    Deterministic: the same ``size`` and ``seed`` give byte-identical COGs and STAC JSON.
    A complete archive with the same size and seed is left alone unless ``overwrite`` or it was
    written in an older format (:data:`ARCHIVE_FORMAT`), which is built again.
    """
    t0 = time.perf_counter()
    spec = get_size(size)
    seed = _check_seed(seed)
    if not isinstance(processes, int) or processes < 1:
        raise BadInputError("processes", processes, "an integer >= 1")
    root = _root(out_url if out_url is not None else default_out(size))
    storage.ensure_writable(root, field="out")
    marker = storage.join(root, "archive.json")
    if storage.exists(marker):
        existing = open_archive_info(root, any_format=True)
        same = existing.get("seed") == seed and existing.get("size") == size
        if same and existing.get("format") != ARCHIVE_FORMAT:
            overwrite = True  # the same archive in an older encoding: built again
        if same and not overwrite:
            return ArchiveInfo(
                root,
                size,
                seed,
                dict(existing.get("collections", {})),
                time.perf_counter() - t0,
                True,
                existing,
            )
        if not overwrite:
            raise BadInputError(
                "out",
                root,
                "an empty location or an archive of the same size and seed",
                f"it holds size={existing.get('size')!r} seed={existing.get('seed')!r}; "
                "pass --overwrite to replace it",
            )
    _clean(root)

    land = build_landscape(spec, seed)
    phen = build_phenology(land, spec.seasons, seed)
    s2_tasks, s1_tasks = plan_s2(spec), plan_s1(spec)
    province_geometry = _wgs84_geometry(spec.bounds)
    _write_truth(spec, land, phen, root, seed)
    dem_item, hand_item = _write_dem(spec, land, root)
    zarr_url = storage.join(root, TRUTH["s2"])
    _create_truth_cube(spec, s2_tasks, zarr_url)

    _STATE.clear()
    _STATE.update(
        spec=spec,
        land=land,
        phen=phen,
        root=root,
        seed=seed,
        zarr_url=zarr_url,
        centre=_centre_lonlat(spec),
        province_geometry=province_geometry,
    )
    tasks = _interleave(s2_tasks, s1_tasks)
    results: dict[str, dict[int, dict[str, Any]]] = {"s2": {}, "s1": {}}
    try:
        scenes = _execute(tasks, processes, str(root))
        for kind, t, item in _progress(scenes, len(tasks), size, progress):
            results[kind][t] = item
    finally:
        _STATE.clear()

    s2_items = [results["s2"][i] for i in range(len(s2_tasks))]
    s1_items = [results["s1"][i] for i in range(len(s1_tasks))]
    bbox_wgs84 = _bbox_of(province_geometry)
    by_coll = {
        stacb.S2: s2_items,
        stacb.S1: s1_items,
        stacb.DEM: [dem_item],
        stacb.HAND: [hand_item],
    }
    for cid, items in by_coll.items():
        times = sorted(i["properties"]["datetime"] for i in items)
        write_json(
            storage.join(root, "stac", "collections", f"{cid}.json"),
            stacb.collection(
                cid,
                root_href=root,
                bbox=bbox_wgs84,
                interval=[times[0], times[-1]] if items else [None, None],
            ),
        )
        write_json(storage.join(root, "stac", "items", f"{cid}.json"), feature_collection(items))
    write_json(
        storage.join(root, "province.geojson"),
        feature_collection(
            [
                {
                    "type": "Feature",
                    "id": "province",
                    "properties": {"name": f"demo-{size}"},
                    "geometry": province_geometry,
                }
            ]
        ),
    )

    f0, f1 = _flood_window(spec)
    pre = [t["id"] for t in s1_tasks if f0 - dt.timedelta(days=36) <= t["date"] < f0]
    post = [t["id"] for t in s1_tasks if f0 <= t["date"] < f1]
    info: dict[str, Any] = {
        "format": ARCHIVE_FORMAT,
        "seed": seed,
        "size": size,
        "crs": CRS,
        "width": spec.width,
        "height": spec.width,
        "transform": [float(v) for v in tuple(spec.transform)[:6]],
        "bbox": [float(v) for v in spec.bounds],
        "bbox_wgs84": bbox_wgs84,
        "resolution_m": spec.resolution,
        "seasons": list(spec.seasons),
        "collections": {cid: len(items) for cid, items in by_coll.items()},
        "stac": {
            "collections": {cid: f"stac/collections/{cid}.json" for cid in by_coll},
            "items": {cid: f"stac/items/{cid}.json" for cid in by_coll},
        },
        "acquisitions": {
            stacb.S2: _cadence_text(5 * spec.s2_step, spec.s2_window, spec)
            if not spec.s2_dates
            else "explicit dates",
            stacb.S1: _cadence_text(6 * spec.s1_step, spec.s1_window, spec)
            if not spec.s1_dates
            else "explicit dates",
        },
        "flood_event": {
            "date": spec.flood_date,
            "end": f1.isoformat(),
            "pre": pre,
            "post": post,
            "truth": TRUTH["flood"],
            "flooded_km2": round(
                float(np.sum(land.flood == FloodClass.FLOODED)) * spec.resolution**2 / 1e6, 3
            ),
        },
        "truth": dict(TRUTH),
        "truth_description": dict(TRUTH_DESCRIPTION),
        "classes": {
            "LandClass": {c.name.lower(): int(c) for c in LandClass},
            "CloudClass": {c.name.lower(): int(c) for c in CloudClass},
            "FloodClass": {c.name.lower(): int(c) for c in FloodClass},
        },
        "counties": {str(i + 1): n for i, n in enumerate(land.county_names)},
        "n_parcels": land.n_parcels,
        "yield_unit": "t/ha",
        "software_version": __version__,
    }
    storage.write_text(marker, dumps(info))
    return ArchiveInfo(root, size, seed, info["collections"], time.perf_counter() - t0, False, info)


def _cadence_text(days: int, window: tuple[str, str], spec: SizeSpec) -> str:
    text = f"every {days} days from {window[0]} to {window[1]} in {max(spec.seasons)}"
    if len(spec.seasons) > 1:
        text += f", every {days * spec.early_step_factor} days in earlier seasons"
    return text


def _interleave(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ia = ib = 0
    while ia < len(a) or ib < len(b):
        if ia < len(a) and (ib >= len(b) or ia * len(b) <= ib * len(a)):
            out.append(a[ia])
            ia += 1
        else:
            out.append(b[ib])
            ib += 1
    return out


#: Free bytes under which a build whose worker died is said to have run out of disk: a demo
#: archive scene is written in pieces of up to a few hundred MiB (a worker writing into a
#: full disk through a memory map dies like one killed for memory).
LOW_DISK_BYTES = 1 << 30


def _execute(
    tasks: list[dict[str, Any]], processes: int, root: str | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """The scenes of ``tasks``, written under ``root`` by ``processes`` worker processes (in
    this one when 1), as each completes; a full disk is reported as such, naming ``root``."""
    try:
        yield from _execute_tasks(tasks, processes, root)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = _free_bytes(root)
        left = "" if free is None else f" ({free / 2**20:.0f} MiB left on its disk)"
        raise _full_disk(root, f"{exc}{left}") from exc


def _full_disk(root: str | None, why: object) -> BadInputError:
    """The error of a build that ran out of room on the archive's disk."""
    return BadInputError(
        "out",
        root,
        "a folder on a disk with room for the archive (free some space or build it "
        "elsewhere: terrapipe demo-archive --out DIR, or TERRAPIPE_HOME)",
        str(why),
    )


def _execute_tasks(
    tasks: list[dict[str, Any]], processes: int, root: str | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    if processes == 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task(task)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # an executor, not a Pool: a worker killed by the kernel (out of memory) breaks the
    # executor and ends the build with an error instead of leaving it waiting forever
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(_run_task, task) for task in tasks]
        try:
            for done in as_completed(futures):
                yield done.result()
        except BrokenProcessPool as exc:
            for future in futures:
                future.cancel()
            free = _free_bytes(root)
            if free is not None and free < LOW_DISK_BYTES:
                raise _full_disk(
                    root, f"a worker process died with {free / 2**20:.0f} MiB left on its disk"
                ) from exc
            raise BadInputError(
                "processes",
                processes,
                "fewer worker processes (each holds a scene in memory; try --processes 1)",
                f"a worker process died: {exc}",
            ) from exc


def _free_bytes(root: str | None) -> int | None:
    """Free bytes on the disk of local folder ``root`` (None: no local folder to ask)."""
    import shutil

    if root is None or "://" in root:
        return None
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return None


def _progress(
    it: Iterator[tuple[str, int, dict[str, Any]]], total: int, size: str, show: bool
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    if not show:
        yield from it
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"demo-archive [{size}] scenes",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        job = bar.add_task("scenes", total=total)
        for res in it:
            bar.advance(job)
            yield res
