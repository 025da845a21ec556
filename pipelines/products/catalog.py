"""The static STAC catalog of a province, built from the tile markers present.

``<province>/catalog.json`` links one ``<product>/collection.json`` per product; each collection
links one catalog per month of its items (``<product>/months/<YYYY-MM>.json``, a label that is
not a date is a period of its own), and each month's catalog links its items where they lie
(``items/<tile_id>/<label>.json``), each link with the item's WGS84 bounding box
(``terrapipe:bbox``), so that a reader that places tiles need not open every item. Hrefs are
relative, so a province folder stays a valid self-contained catalog wherever it is copied.

A run rebuilds only the months it wrote (:func:`update_catalog`), each from every marker of that
month, whichever run wrote it; a collection's extent and summaries come from what its month
links record (``terrapipe:*`` fields of each child link), not from its items. So a run's
catalog step reads the markers of its own months, never the province's whole history
(a 1,681-tile province writes about 67,000 markers a month over five products of 8 dates).
:func:`build_catalog` rebuilds every month from the markers present.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pystac
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from pipelines.faults import fault_point
from pipelines.products.cube import cube_exists, open_cube, open_kwargs_hint
from pipelines.products.layout import (
    CATALOG_FILE,
    COLLECTION_FILE,
    PERIODS_DIR,
    catalog_period,
    catalog_url,
    check_name,
    collection_url,
    cube_url,
    marker_url,
    period_url,
    product_url,
    province_url,
    to_utc,
)
from pipelines.products.lock import store_lock
from pipelines.products.stac import read_marker
from pipelines.storage import concurrently, filesystem, join, remove, write_text

#: Seconds a catalog update waits for another run's (each takes seconds to a few minutes).
CATALOG_LOCK_WAIT_S = 1800.0


#: The field of a month catalog's item link that holds the item's bbox (WGS84, degrees).
LINK_BBOX = "terrapipe:bbox"


@dataclass(frozen=True)
class PeriodItem:
    """An item a period's catalog links: its tile, its label and, where the link records it
    (month catalogs written since the field exists), its WGS84 bounds."""

    tile_id: str
    label: str
    bbox: tuple[float, float, float, float] | None
    """(west, south, east, north), degrees; None where the link does not record it."""


@dataclass(frozen=True)
class PeriodSummary:
    """What a period's items span, recorded on the collection's link to its catalog."""

    period: str
    items: int
    bbox: tuple[float, float, float, float]
    """west, south, east, north (degrees)."""
    interval: tuple[str, str]
    """First and last item time (ISO, UTC)."""
    stage_versions: tuple[str, ...]
    proj_codes: tuple[str, ...]

    def link_fields(self) -> dict[str, Any]:
        return {
            "terrapipe:items": self.items,
            "terrapipe:bbox": list(self.bbox),
            "terrapipe:interval": list(self.interval),
            "terrapipe:stage_version": list(self.stage_versions),
            "terrapipe:proj_code": list(self.proj_codes),
        }

    @classmethod
    def from_link(cls, period: str, link: Mapping[str, Any]) -> PeriodSummary | None:
        """The summary the child link of ``period`` records; None for a link without one."""
        try:
            bbox = [float(v) for v in link["terrapipe:bbox"]]
            start, end = (str(v) for v in link["terrapipe:interval"])
            return cls(
                period=period,
                items=int(link["terrapipe:items"]),
                bbox=(bbox[0], bbox[1], bbox[2], bbox[3]),
                interval=(start, end),
                stage_versions=tuple(str(v) for v in link["terrapipe:stage_version"]),
                proj_codes=tuple(str(v) for v in link["terrapipe:proj_code"]),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def _folders(fs: Any, path: str) -> list[str]:
    """The names of the folders in ``path`` (one listing; none when it does not exist)."""
    try:
        entries = fs.ls(path.rstrip("/"), detail=True)
    except FileNotFoundError:
        return []
    return sorted(
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
    )


def _markers_of(
    store: str, province: str, product: str, periods: set[str] | None
) -> dict[str, list[tuple[str, str]]]:
    """{period: [(tile_id, label)]} of a product's markers of ``periods`` (None: every
    period): one listing of its tile folders, then one a tile, side by side."""
    fs, items_dir = filesystem(join(product_url(store, province, product), "items"))
    items_dir = items_dir.rstrip("/")

    def listed(tile: str) -> list[tuple[str, str]]:
        try:
            names = fs.ls(f"{items_dir}/{tile}", detail=False)
        except FileNotFoundError:
            return []
        labels = (str(n).rstrip("/").rsplit("/", 1)[-1] for n in names)
        return [(tile, lab.removesuffix(".json")) for lab in labels if lab.endswith(".json")]

    found: dict[str, list[tuple[str, str]]] = {}
    for markers in concurrently(listed, _folders(fs, items_dir), url=store):
        for tile, label in markers:
            period = catalog_period(label)
            if periods is None or period in periods:
                found.setdefault(period, []).append((tile, label))
    return {p: sorted(m) for p, m in found.items()}


def _read_items(
    store: str, province: str, product: str, markers: list[tuple[str, str]]
) -> list[tuple[str, str, dict]]:
    """(tile id, label, item) of the markers that read as STAC items (:func:`read_marker`: a
    truncated or removed one is left out), read side by side."""
    urls = [marker_url(store, province, product, tile, label) for tile, label in markers]
    read = concurrently(read_marker, urls, url=store)
    return [(t, lab, d) for (t, lab), d in zip(markers, read, strict=True) if d is not None]


def _write_period(
    store: str, province: str, product: str, period: str, items: list[tuple[str, str, dict]]
) -> PeriodSummary:
    """Write one period's catalog linking ``items`` (tile id, label, marker); its summary."""
    json_type = pystac.MediaType.JSON
    catalog = pystac.Catalog(
        id=f"{product}-{period}",
        description=f"{product} of {province}, {period}",
        title=f"{product} {period}",
    )
    catalog.links = [
        pystac.Link("root", f"../../{CATALOG_FILE}", json_type),
        pystac.Link("parent", f"../{COLLECTION_FILE}", json_type),
    ]
    for tile_id, label, d in items:
        catalog.links.append(
            pystac.Link(
                "item",
                f"../items/{tile_id}/{label}.json",
                pystac.MediaType.GEOJSON,
                title=d.get("id"),
                extra_fields={LINK_BBOX: [float(v) for v in d["bbox"][:4]]},
            )
        )
    doc = catalog.to_dict(include_self_link=False, transform_hrefs=False)
    write_text(period_url(store, province, product, period), json.dumps(doc, indent=1))
    bboxes = [d["bbox"] for _, _, d in items]
    times = []
    for _, _, d in items:
        p = d["properties"]
        for key in ("datetime", "start_datetime", "end_datetime"):
            if p.get(key):
                times.append(to_utc(p[key]))
    return PeriodSummary(
        period=period,
        items=len(items),
        bbox=(
            float(min(b[0] for b in bboxes)),
            float(min(b[1] for b in bboxes)),
            float(max(b[2] for b in bboxes)),
            float(max(b[3] for b in bboxes)),
        ),
        interval=(min(times).isoformat(), max(times).isoformat()),
        stage_versions=tuple(
            sorted({str(d["properties"].get("terrapipe:stage_version", "")) for _, _, d in items})
        ),
        proj_codes=tuple(
            sorted(
                {
                    str(d["properties"]["proj:code"])
                    for _, _, d in items
                    if d["properties"].get("proj:code")
                }
            )
        ),
    )


def _collection_doc(store: str, province: str, product: str) -> dict[str, Any]:
    """A product's ``collection.json`` parsed (empty: none, or one that does not parse)."""
    fs, path = filesystem(collection_url(store, province, product))
    try:
        doc = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_collection(
    store: str, province: str, product: str, periods: Mapping[str, PeriodSummary]
) -> None:
    """Write a product's collection over its period summaries (at least one)."""
    summaries = [periods[p] for p in sorted(periods)]
    start = min(to_utc(s.interval[0]) for s in summaries).to_pydatetime()
    end = max(to_utc(s.interval[1]) for s in summaries).to_pydatetime()
    extent = pystac.Extent(
        pystac.SpatialExtent(
            [
                [
                    min(s.bbox[0] for s in summaries),
                    min(s.bbox[1] for s in summaries),
                    max(s.bbox[2] for s in summaries),
                    max(s.bbox[3] for s in summaries),
                ]
            ]
        ),
        pystac.TemporalExtent([[start.replace(tzinfo=dt.UTC), end.replace(tzinfo=dt.UTC)]]),
    )
    stages = sorted({v for s in summaries for v in s.stage_versions})
    codes = sorted({c for s in summaries for c in s.proj_codes})
    c_url = cube_url(store, province, product)
    hint = open_kwargs_hint(open_cube(c_url, raw=True)) if cube_exists(c_url) else {}
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
    json_type = pystac.MediaType.JSON
    collection.links = [
        pystac.Link("root", f"../{CATALOG_FILE}", json_type),
        pystac.Link("parent", f"../{CATALOG_FILE}", json_type),
    ]
    for s in summaries:
        collection.links.append(
            pystac.Link(
                "child",
                f"./{PERIODS_DIR}/{s.period}.json",
                json_type,
                title=s.period,
                extra_fields=s.link_fields(),
            )
        )
    doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    write_text(collection_url(store, province, product), json.dumps(doc, indent=1))


def _write_root(store: str, province: str, title: str | None) -> str:
    """Write ``catalog.json`` linking every product that has a collection; its URL."""
    fs, base = filesystem(province_url(store, province))
    base = base.rstrip("/")
    names = sorted(
        str(p)[len(base) :].strip("/").split("/")[0] for p in fs.glob(f"{base}/*/{COLLECTION_FILE}")
    )
    json_type = pystac.MediaType.JSON
    catalog = pystac.Catalog(
        id=province,
        description=f"terrapipe products of {province}",
        title=title or f"terrapipe {province}",
    )
    catalog.links = [pystac.Link("root", f"./{CATALOG_FILE}", json_type)]
    for name in names:
        catalog.links.append(
            pystac.Link("child", f"./{name}/{COLLECTION_FILE}", json_type, title=name)
        )
    cat = catalog.to_dict(include_self_link=False, transform_hrefs=False)
    fault_point("catalog.write")
    url = catalog_url(store, province)
    write_text(url, json.dumps(cat, indent=1))
    return url


def _period_files(store: str, province: str, product: str) -> set[str]:
    """The periods whose catalog files a product holds now."""
    fs, base = filesystem(join(product_url(store, province, product), PERIODS_DIR))
    try:
        names = fs.ls(base.rstrip("/"), detail=False)
    except FileNotFoundError:
        return set()
    return {
        str(n).rsplit("/", 1)[-1].removesuffix(".json") for n in names if str(n).endswith(".json")
    }


def _update_product(store: str, province: str, product: str, periods: set[str] | None) -> None:
    """Rebuild the catalogs of ``periods`` of a product from their markers (None: every period,
    those found and those with a catalog file), then its collection, removed when no period
    has an item; a period without markers loses its catalog."""
    doc = _collection_doc(store, province, product)
    if any(link.get("rel") == "item" for link in doc.get("links", [])):
        periods = None  # the layout before month catalogs: no month of its history has one yet
    found = _markers_of(store, province, product, periods)
    recorded: dict[str, PeriodSummary] = {}
    if periods is None:
        periods = set(found) | _period_files(store, province, product)
    else:
        for period, link in collection_periods(doc).items():
            if summary := PeriodSummary.from_link(period, link):
                recorded[period] = summary
    for period in sorted(periods):
        items = _read_items(store, province, product, found.get(period, []))
        if items:
            recorded[period] = _write_period(store, province, product, period, items)
            continue
        recorded.pop(period, None)
        remove(period_url(store, province, product, period))
    if recorded:
        _write_collection(store, province, product, recorded)
    else:
        remove(collection_url(store, province, product))


def _products(store: str, province: str) -> list[str]:
    """The province's products: folders holding tile markers or a collection."""
    fs, base = filesystem(province_url(store, province))
    base = base.rstrip("/")
    return [
        n
        for n in _folders(fs, base)
        if fs.exists(f"{base}/{n}/items") or fs.exists(f"{base}/{n}/{COLLECTION_FILE}")
    ]


def update_catalog(
    store: str,
    province: str,
    periods: Iterable[str],
    *,
    products: Iterable[str] | None = None,
    title: str | None = None,
) -> str:
    """Rebuild the catalogs of ``periods`` (:func:`catalog_period` of the labels a run wrote)
    of ``products`` (default: every product of the province) from every marker of those
    periods, whichever run wrote it, then the products' collections and ``catalog.json``;
    returns the catalog URL. A collection of the layout before month catalogs is rebuilt whole.
    One update at a time per province (the store lock ``catalog``)."""
    check_name("province", province)
    wanted = {check_name("period", p) for p in periods}
    with store_lock(store, province, "catalog", wait_s=CATALOG_LOCK_WAIT_S):
        names = _products(store, province) if products is None else sorted(set(products))
        for product in names:
            _update_product(store, province, check_name("product", product), wanted)
        return _write_root(store, province, title)


def build_catalog(store: str, province: str, *, title: str | None = None) -> str:
    """Rebuild the whole catalog from the markers present: every period of every product;
    catalogs of periods without markers are removed. Deterministic: the same markers give the
    same files. Returns the catalog URL."""
    check_name("province", province)
    with store_lock(store, province, "catalog", wait_s=CATALOG_LOCK_WAIT_S):
        for product in _products(store, province):
            _update_product(store, province, product, None)
        return _write_root(store, province, title)


def collection_periods(collection: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The period links of a product collection (a parsed ``collection.json``): period ->
    its child link, whose ``terrapipe:*`` fields summarise the period's items."""
    out = {}
    for link in collection.get("links", []):
        href = str(link.get("href", "")).removeprefix("./")
        if link.get("rel") == "child" and href.startswith(f"{PERIODS_DIR}/"):
            out[href.removeprefix(f"{PERIODS_DIR}/").removesuffix(".json")] = dict(link)
    return out


def period_links(store: str, province: str, product: str, period: str) -> list[PeriodItem]:
    """Every item a period's catalog links, with the bounds its link records (none: no such
    catalog)."""
    fs, path = filesystem(period_url(store, province, product, period))
    try:
        doc = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return []
    out = []
    for link in doc.get("links", []):
        parts = str(link.get("href", "")).split("/")
        if link.get("rel") == "item" and len(parts) == 4 and parts[:2] == ["..", "items"]:
            box = link.get(LINK_BBOX)
            bbox = None
            if isinstance(box, list) and len(box) == 4:
                west, south, east, north = (float(v) for v in box)
                bbox = (west, south, east, north)
            out.append(PeriodItem(parts[2], parts[3].removesuffix(".json"), bbox))
    return out


def period_items(store: str, province: str, product: str, period: str) -> list[tuple[str, str]]:
    """(tile id, label) of every item a period's catalog links (none: no such catalog)."""
    return [(i.tile_id, i.label) for i in period_links(store, province, product, period)]


def catalog_items(store: str, province: str, product: str) -> list[tuple[str, str]]:
    """(tile id, label) of every item the product's catalog links, through its periods."""
    return [
        item
        for period in collection_periods(_collection_doc(store, province, product))
        for item in period_items(store, province, product, period)
    ]
