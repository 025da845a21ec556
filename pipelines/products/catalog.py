"""The static STAC catalog of a province, built from the tile markers present.

``<province>/catalog.json`` links one ``<product>/collection.json`` per product, and each
collection links its items where they lie (``items/<tile_id>/<label>.json``). Hrefs are relative,
so a province folder stays a valid self-contained catalog wherever it is copied.
"""

from __future__ import annotations

import json

import pandas as pd
import pystac
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from pipelines.faults import fault_point
from pipelines.products.cube import cube_exists, open_cube, open_kwargs_hint
from pipelines.products.layout import (
    CATALOG_FILE,
    COLLECTION_FILE,
    catalog_url,
    check_name,
    collection_url,
    cube_url,
    province_url,
    to_utc,
)
from pipelines.products.stac import read_marker
from pipelines.storage import filesystem, join, write_text


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
        read = [(t, lab, read_marker(u)) for t, lab, u in markers]
        items = [(t, lab, d) for t, lab, d in read if d is not None]
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
    fault_point("catalog.write")
    url = catalog_url(store, province)
    write_text(url, json.dumps(cat, indent=1))
    return url
