"""STAC items as commit markers, skip/resume checks, and the static catalog of a province.

A product item ``<product>/items/<tile_id>/<label>.json`` is written LAST, after the cube region,
the COG and the quicklook of that (product, tile, label): its presence means the three are complete.
It carries the provenance (software version, stage versions, input item ids, model checksums) and
its ``terrapipe:stage_version`` is part of the skip key (:func:`is_done`).

Hrefs inside items, collections and the catalog are relative, so a province folder stays a valid
self-contained STAC catalog wherever it is copied. Items carry ``proj:code`` (projection v2) and,
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

import pandas as pd
import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from pipelines import __version__
from pipelines.errors import BadInputError
from pipelines.grid import Tile
from pipelines.products.layout import (
    CATALOG_FILE,
    COLLECTION_FILE,
    catalog_url,
    check_name,
    collection_url,
    cube_url,
    marker_url,
    province_url,
    rel_from_item,
    to_utc,
)
from pipelines.storage import filesystem, join, read_text, write_text

log = logging.getLogger(__name__)

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"


class StageLike(Protocol):
    """What a marker needs from a stage (``pipelines.stages.registry.Stage`` fits)."""

    name: str
    version: str


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


def item_id(province: str, product: str, tile_id: str, label: str) -> str:
    """Unique id of a product item: ``<province>_<product>_<tile_id>_<label>``."""
    return f"{province}_{product}_{tile_id}_{label}"


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
    footprint = gbox.footprint("EPSG:4326", npoints=16)
    minx, miny, maxx, maxy = footprint.boundingbox
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
    try:
        json.dumps(props, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            "properties", properties, "JSON-serialisable values (no NaN: use None)"
        ) from exc
    item = pystac.Item(
        id=item_id(province, product, tile.tile_id, date_label),
        geometry=footprint.json,
        bbox=[minx, miny, maxx, maxy],
        datetime=when,
        start_datetime=None if start_datetime is None else to_utc(start_datetime).to_pydatetime(),
        end_datetime=None if end_datetime is None else to_utc(end_datetime).to_pydatetime(),
        properties=props,
        collection=product,
        stac_extensions=[PROCESSING_SCHEMA],
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = gbox.crs.epsg
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
        item.properties["proj:epsg"] = int(epsg)  # projection v1 readers (stackstac 0.5)
    else:
        proj.wkt2 = gbox.crs.to_wkt()
    proj.shape = [int(gbox.shape.y), int(gbox.shape.x)]
    proj.transform = [float(v) for v in list(gbox.affine)[:6]]
    proj.bbox = [float(v) for v in tile.bounds]
    for key, asset in assets.items():
        item.add_asset(key, asset.clone())
    if any("xarray:open_kwargs" in a.extra_fields for a in item.assets.values()):
        XarrayAssetsExtension.add_to(item)
    json_type = pystac.MediaType.JSON
    item.add_link(pystac.Link("collection", rel_from_item("collection", "", ""), json_type))
    item.add_link(pystac.Link("parent", rel_from_item("collection", "", ""), json_type))
    # No "root" link: the catalog appears only with build_catalog, and pystac resolves the root
    # link of an item it serialises; parent -> collection -> root leads there once it exists.
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
    """True when the marker of (product, tile, label) exists, parses, and has ``stage_version``."""
    d = read_marker(marker_url(store, province, product, tile_id, label))
    return d is not None and d["properties"].get("terrapipe:stage_version") == stage_version


def _marker_paths(store: str, province: str) -> dict[str, list[tuple[str, str, str]]]:
    """{product: [(tile_id, label, url)]} of the markers under a province, sorted."""
    root = province_url(store, province)
    fs, base = filesystem(root)
    base = base.rstrip("/")
    found: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted(fs.glob(f"{base}/*/items/*/*.json")):
        rel = path[len(base) :].lstrip("/").split("/")
        if len(rel) != 4:
            continue
        product, _, tile_id, name = rel
        found.setdefault(product, []).append((tile_id, name[: -len(".json")], join(root, *rel)))
    return found


def build_catalog(store: str, province: str, *, title: str | None = None) -> str:
    """Write ``catalog.json`` and each product's ``collection.json`` from the markers present.

    Items are linked where they lie (``items/<tile_id>/<label>.json``, never rewritten); markers
    that do not parse are left out. Deterministic: the same markers give the same files.
    Returns the catalog URL.
    """
    check_name("province", province)
    json_type = pystac.MediaType.JSON
    catalog = pystac.Catalog(
        id=province,
        description=f"terrapipe products of {province}",
        title=title or f"terrapipe {province}",
    )
    catalog.links = [pystac.Link("root", f"./{CATALOG_FILE}", json_type)]
    for product, markers in sorted(_marker_paths(store, province).items()):
        items = [(t, lab, read_marker(u)) for t, lab, u in markers]
        items = [(t, lab, d) for t, lab, d in items if d is not None]
        if not items:
            continue
        bboxes = [d["bbox"] for _, _, d in items]
        times: list[pd.Timestamp] = []
        for _, _, d in items:
            p = d["properties"]
            for key in ("datetime", "start_datetime", "end_datetime"):
                if p.get(key):
                    times.append(to_utc(p[key]))
        extent = pystac.Extent(
            pystac.SpatialExtent(
                [
                    [
                        min(b[0] for b in bboxes),
                        min(b[1] for b in bboxes),
                        max(b[2] for b in bboxes),
                        max(b[3] for b in bboxes),
                    ]
                ]
            ),
            pystac.TemporalExtent([[min(times).to_pydatetime(), max(times).to_pydatetime()]]),
        )
        from pipelines.products.cube import cube_exists, open_cube, open_kwargs_hint

        c_url = cube_url(store, province, product)
        hint = open_kwargs_hint(open_cube(c_url, raw=True)) if cube_exists(c_url) else {}
        stages = sorted({d["properties"].get("terrapipe:stage_version", "") for _, _, d in items})
        codes = sorted({d["properties"].get("proj:code") for _, _, d in items} - {None})
        collection = pystac.Collection(
            id=product,
            description=f"{product} of {province}: Zarr v3 cube, COGs and quicklooks per tile",
            extent=extent,
            title=product,
            license="other",
            summaries=pystac.Summaries(
                {"terrapipe:stage_version": stages, **({"proj:code": codes} if codes else {})}
            ),
            assets={
                "zarr": pystac.Asset(
                    href="./cube.zarr",
                    media_type=pystac.MediaType.ZARR,
                    roles=["data", "zarr"],
                    title="Product cube (Zarr v3)",
                    extra_fields={"xarray:open_kwargs": hint} if hint else {},
                )
            },
            stac_extensions=[XarrayAssetsExtension.get_schema_uri()],
        )
        collection.links = [
            pystac.Link("root", f"../{CATALOG_FILE}", json_type),
            pystac.Link("parent", f"../{CATALOG_FILE}", json_type),
        ]
        for tile_id, label, d in items:
            collection.links.append(
                pystac.Link(
                    "item",
                    f"./items/{tile_id}/{label}.json",
                    pystac.MediaType.GEOJSON,
                    title=d.get("id"),
                )
            )
        coll = collection.to_dict(include_self_link=False, transform_hrefs=False)
        write_text(collection_url(store, province, product), json.dumps(coll, indent=1))
        catalog.links.append(
            pystac.Link("child", f"./{product}/{COLLECTION_FILE}", json_type, title=product)
        )
    cat = catalog.to_dict(include_self_link=False, transform_hrefs=False)
    url = catalog_url(store, province)
    write_text(url, json.dumps(cat, indent=1))
    return url
