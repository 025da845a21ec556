"""STAC items as commit markers, and the skip/resume checks that read them.

A product item ``<product>/items/<tile_id>/<label>.json`` is written LAST, after the cube region,
the COG and the quicklook of that (product, tile, label): its presence means the three are complete.
It carries the provenance (software version, stage versions, input item ids, model checksums) and
its ``terrapipe:stage_version`` is part of the skip key (:func:`is_done`).

A province-wide product of a season (the county yield table) has one item per season,
``<product>/items/<season>.json`` (:func:`season_item`), with absolute hrefs to its files.

Hrefs inside tile items are relative, so a province folder stays a valid self-contained STAC
catalog (:mod:`.catalog`) wherever it is copied. Items carry ``proj:code`` (projection v2) and,
for readers of projection v1 such as stackstac 0.5, the equivalent ``proj:epsg``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pystac
from odc.geo.geobox import GeoBox
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from pipelines import __version__
from pipelines.errors import BadInputError
from pipelines.faults import fault_point
from pipelines.grid import Tile
from pipelines.products.layout import check_name, marker_url, rel_from_item, to_utc
from pipelines.storage import filesystem, read_text, write_text

log = logging.getLogger(__name__)

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"


class StageLike(Protocol):
    """What a marker needs from a stage (``pipelines.stages.registry.Stage`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


@dataclass(frozen=True)
class Provenance:
    """Where a product came from; copied into every item of a (product, tile) write."""

    stage_versions: Mapping[str, str] = field(default_factory=dict)
    """``{stage name: version}`` of every upstream stage (this one included or added)."""
    input_items: Sequence[str] | Mapping[str, Sequence[str]] = ()
    """Input STAC item ids: one list for every label, or ``{label: ids}``."""
    model_checksums: Mapping[str, str] = field(default_factory=dict)
    """``{weights name: "sha256:<hex>"}`` of the models used; empty for baselines."""
    software_version: str = __version__
    """terrapipe version that wrote the product."""

    def inputs_for(self, label: str) -> list[str]:
        """Input item ids for ``label``."""
        if isinstance(self.input_items, Mapping):
            return [str(i) for i in self.input_items.get(label, ())]
        return [str(i) for i in self.input_items]


#: Points per side of a grid's outline reprojected to WGS84 (item geometry and bbox).
FOOTPRINT_POINTS = 16


def item_id(province: str, product: str, tile_id: str, label: str) -> str:
    """Unique id of a product item: ``<province>_<product>_<tile_id>_<label>``."""
    return f"{province}_{product}_{tile_id}_{label}"


def footprint_wgs84(geobox: GeoBox) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON geometry and ``[west, south, east, north]`` bbox (degrees) of a pixel grid's
    outline in WGS84, each side densified to :data:`FOOTPRINT_POINTS` points."""
    footprint = geobox.footprint("EPSG:4326", npoints=FOOTPRINT_POINTS)
    minx, miny, maxx, maxy = footprint.boundingbox
    return footprint.json, [minx, miny, maxx, maxy]


def cog_asset(
    tile_id: str, label: str, bands: Sequence[str], dtype: str, nodata: float | None
) -> pystac.Asset:
    """The ``cog`` asset of an item (relative href)."""
    nodata_json: Any = nodata
    if isinstance(nodata, float) and nodata != nodata:
        nodata_json = "nan"
    return pystac.Asset(
        href=rel_from_item("cog", tile_id, label),
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title="Cloud-optimised GeoTIFF",
        extra_fields={
            "bands": [
                {
                    "name": b,
                    "data_type": dtype,
                    **({"nodata": nodata_json} if nodata_json is not None else {}),
                }
                for b in bands
            ]
        },
    )


def quicklook_asset(tile_id: str, label: str) -> pystac.Asset:
    """The ``quicklook`` asset of an item (relative href)."""
    return pystac.Asset(
        href=rel_from_item("quicklook", tile_id, label),
        media_type=pystac.MediaType.PNG,
        roles=["overview", "visual"],
        title="Quicklook",
    )


def cube_asset(
    time: Any,
    y: tuple[int, int],
    x: tuple[int, int],
    variables: Sequence[str],
    open_kwargs: Mapping[str, Any],
) -> pystac.Asset:
    """The ``zarr`` asset: the province cube, where this tile and date sit in it, and how to open
    it (``xarray:open_kwargs`` for ``xarray.open_dataset``)."""
    asset = pystac.Asset(
        href=rel_from_item("cube", "", ""),
        media_type=pystac.MediaType.ZARR,
        roles=["data", "zarr"],
        title="Product cube (Zarr v3, time/y/x, one chunk per tile and date)",
        extra_fields={
            "terrapipe:selection": {
                "time": to_utc(time).isoformat(),
                "y": [int(y[0]), int(y[1])],
                "x": [int(x[0]), int(x[1])],
            },
            "terrapipe:variables": list(variables),
            "xarray:open_kwargs": dict(open_kwargs),
        },
    )
    return asset


def product_item(
    province: str,
    product: str,
    tile: Tile,
    date_label: str,
    stage: StageLike,
    assets: Mapping[str, pystac.Asset],
    provenance: Provenance,
    properties: Mapping[str, Any] | None = None,
    *,
    datetime: Any = None,
    start_datetime: Any = None,
    end_datetime: Any = None,
) -> pystac.Item:
    """The STAC item of one (product, tile, label), with provenance; not yet written.

    ``datetime`` defaults to ``date_label`` read as a date; window products give
    ``start_datetime``/``end_datetime`` too. ``properties`` are stage summaries (e.g.
    ``terrapipe:dcp_index``) and must be JSON-serialisable.
    """
    check_name("province", province)
    check_name("product", product)
    check_name("label", date_label)
    when = to_utc(date_label if datetime is None else datetime).to_pydatetime()
    gbox = tile.geobox
    geometry, bbox = footprint_wgs84(gbox)
    stage_versions = {**dict(provenance.stage_versions), stage.name: stage.version}
    props: dict[str, Any] = {
        "terrapipe:province": province,
        "terrapipe:product": product,
        "terrapipe:tile_id": tile.tile_id,
        "terrapipe:label": date_label,
        "terrapipe:software_version": provenance.software_version,
        "terrapipe:stage": stage.name,
        "terrapipe:stage_version": stage.version,
        "terrapipe:stage_versions": dict(sorted(stage_versions.items())),
        "terrapipe:input_items": provenance.inputs_for(date_label),
        "terrapipe:model_checksums": dict(sorted(provenance.model_checksums.items())),
        "processing:software": {"terrapipe": provenance.software_version},
        "processing:lineage": (
            f"{stage.name} {stage.version} from {len(provenance.inputs_for(date_label))} input"
            " items; see terrapipe:input_items and terrapipe:stage_versions"
        ),
        "processing:datetime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for key, value in (properties or {}).items():
        props[key] = value
    check_json_properties(props, properties)
    item = pystac.Item(
        id=item_id(province, product, tile.tile_id, date_label),
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        start_datetime=None if start_datetime is None else to_utc(start_datetime).to_pydatetime(),
        end_datetime=None if end_datetime is None else to_utc(end_datetime).to_pydatetime(),
        properties=props,
        collection=product,
        stac_extensions=[PROCESSING_SCHEMA],
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    crs = gbox.crs
    if crs is None:  # a Tile's grid always has its CRS
        raise BadInputError("tile", tile.tile_id, "a tile on a grid with a CRS")
    if crs.epsg is not None:
        proj.code = f"EPSG:{crs.epsg}"
        item.properties["proj:epsg"] = int(crs.epsg)  # projection v1 readers (stackstac 0.5)
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [int(gbox.shape.y), int(gbox.shape.x)]
    proj.transform = [float(v) for v in list(gbox.affine)[:6]]
    proj.bbox = [float(v) for v in tile.bounds]
    for key, asset in assets.items():
        item.add_asset(key, asset.clone())
    if any("xarray:open_kwargs" in a.extra_fields for a in item.assets.values()):
        XarrayAssetsExtension.add_to(item)
    json_type = pystac.MediaType.JSON
    item.add_link(pystac.Link("collection", rel_from_item("collection", "", ""), json_type))
    # The month catalog that links the item (pipelines.products.catalog).
    parent = rel_from_item("period", tile.tile_id, date_label)
    item.add_link(pystac.Link("parent", parent, json_type))
    # No "root" link: the catalog appears only with the run's catalog step, and pystac resolves
    # the root link of an item it serialises; parent -> root leads there once it exists.
    return item


#: Media types of the files of a province-wide table product, by asset key (file kind).
TABLE_MEDIA_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
    "png": pystac.MediaType.PNG.value,
}


def table_asset(kind: str, href: str) -> pystac.Asset:
    """The asset of one file of a table product: ``parquet`` and ``csv`` are data, ``png`` (a
    map of the table) an overview."""
    if kind not in TABLE_MEDIA_TYPES:
        raise BadInputError("asset kind", kind, f"one of {sorted(TABLE_MEDIA_TYPES)}")
    return pystac.Asset(
        href=href,
        media_type=TABLE_MEDIA_TYPES[kind],
        roles=["overview" if kind == "png" else "data"],
    )


def season_item(
    province: str,
    product: str,
    season: int,
    geobox: GeoBox,
    window: tuple[str, str],
    hrefs: Mapping[str, str],
    properties: Mapping[str, Any],
) -> pystac.Item:
    """The STAC item of a province-wide product of one season (e.g. the county yield table).

    Id ``<province>-<product>-<season>``; footprint of the province grid ``geobox``; no single
    datetime but the season ``window`` (first and last day, ``YYYY-MM-DD``, whole days); one
    :func:`table_asset` per ``{kind: href}``; ``properties`` (JSON) follow
    ``terrapipe:product`` and ``terrapipe:season``.
    """
    check_name("province", province)
    check_name("product", product)
    geometry, bbox = footprint_wgs84(geobox)
    props: dict[str, Any] = {
        "datetime": None,
        "start_datetime": f"{window[0]}T00:00:00Z",
        "end_datetime": f"{window[1]}T23:59:59Z",
        "terrapipe:product": product,
        "terrapipe:season": int(season),
        **properties,
    }
    check_json_properties(props, properties)
    item = pystac.Item(
        id=f"{province}-{product}-{season}",
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        properties=props,
    )
    for kind, href in hrefs.items():
        item.add_asset(kind, table_asset(kind, href))
    return item


def item_json(item: pystac.Item) -> str:
    """The marker text of ``item`` (relative hrefs kept, no self link)."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    return json.dumps(d, indent=1, sort_keys=False)


def write_marker(item: pystac.Item, url: str) -> int:
    """Write ``item`` to ``url`` atomically (full JSON or nothing); returns bytes written.

    Locally a temp file is renamed into place; on S3 a single PUT is atomic.
    """
    text = item_json(item)
    json.loads(text)  # never commit something that does not parse back
    fault_point("stac.marker")
    write_text(url, text)
    return len(text.encode("utf-8"))


def remove_marker(url: str) -> None:
    """Delete the marker at ``url`` if present (un-commit before a label is rewritten)."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def read_marker(url: str) -> dict[str, Any] | None:
    """The marker at ``url`` as a dict, or None when it is missing, truncated or not an item."""
    try:
        d = json.loads(read_text(url))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        log.warning("marker %s is not valid JSON; treated as not done", url)
        return None
    if not isinstance(d, dict) or d.get("type") != "Feature" or "properties" not in d:
        log.warning("marker %s is not a STAC item; treated as not done", url)
        return None
    return d


def is_done(
    store: str, province: str, product: str, tile_id: str, label: str, stage_version: str
) -> bool:
    """True when the marker of (product, tile, label) exists, parses, has ``stage_version``, and
    nothing it was made from has changed since (:func:`stale_upstream`): a product made from an
    older cloud mask, or by older model weights, is not done once they changed."""
    return outdated(store, province, product, tile_id, label, stage_version) == []


def outdated(
    store: str, province: str, product: str, tile_id: str, label: str, stage_version: str
) -> list[str] | None:
    """What changed since the item of (product, tile, label) was made, as ``name recorded ->
    now``: its own stage version, then :func:`stale_upstream`; empty when it is done, None when
    it has no readable marker."""
    d = read_marker(marker_url(store, province, product, tile_id, label))
    if d is None:
        return None
    made = d["properties"].get("terrapipe:stage_version")
    own = [] if made == stage_version else [f"{product} {made} -> {stage_version}"]
    return own + stale_upstream(d["properties"], product)


def stale_upstream(properties: Mapping[str, Any], product: str) -> list[str]:
    """What a marker's ``properties`` record that holds no more, as ``name recorded -> now``:
    each upstream stage (``terrapipe:stage_versions``; ``product`` itself left out) whose
    registered version differs now, and each model (``terrapipe:model_checksums``) whose
    committed weights differ now. A stage or model no longer registered is not compared."""
    from pipelines.stages.registry import get_stage, list_stages

    stages = set(list_stages())
    stale = []
    for name, version in sorted((properties.get("terrapipe:stage_versions") or {}).items()):
        if name != product and name in stages and get_stage(name).version != version:
            stale.append(f"{name} {version} -> {get_stage(name).version}")
    checksums = properties.get("terrapipe:model_checksums") or {}
    if checksums:  # a learned product: the committed cards say which weights ship now
        from models.weights import committed_sha256

        for name, checksum in sorted(checksums.items()):
            committed = committed_sha256(name)
            if committed is None:
                continue
            now = f"sha256:{committed}"
            if now != checksum:
                stale.append(f"{name} {checksum} -> {now}")
    return stale


def check_json_properties(props: Mapping[str, Any], given: Any) -> None:
    """Refuse item properties a STAC item cannot hold (not JSON, or NaN); ``given`` is what the
    caller passed, named in the error."""
    try:
        json.dumps(props, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            "properties", given, "JSON-serialisable values (no NaN: use None)"
        ) from exc
