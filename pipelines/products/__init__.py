"""Product writing: Zarr v3 cubes by tile region, COGs, quicklooks, STAC items as commit markers.

Layout under a store URL (local directory or ``s3://bucket/prefix``), see :mod:`.layout`::

    <store>/<province>/catalog.json
    <store>/<province>/<product>/collection.json
    <store>/<province>/<product>/cube.zarr
    <store>/<province>/<product>/cog/<tile_id>/<label>.tif
    <store>/<province>/<product>/quicklook/<tile_id>/<label>.png
    <store>/<province>/<product>/items/<tile_id>/<label>.json   (written LAST: the commit marker)

Typical run: :func:`init_cube` once per product (serially), then :func:`write_tile_product` per
tile (in parallel), then :func:`build_catalog` once.

Reading, for consumers:

- the cube: ``open_product(store, province, product)`` (lazy, time-sorted; class rasters keep
  their integer dtype and nodata code, floats are NaN-masked), or any Zarr v3 reader with the
  ``xarray:open_kwargs`` of the collection's ``zarr`` asset;
- per tile and date: the item's ``cog`` asset (one band per variable, band descriptions = names)
  and ``zarr`` asset (``terrapipe:selection`` = time and pixel window of the tile in the cube);
- the catalog: ``pystac.Catalog.from_file(catalog_url(store, province))`` or any STAC browser.
"""

from pipelines.products.cog import write_cog
from pipelines.products.cube import (
    CubeVariable,
    RegionWrite,
    init_cube,
    open_product,
    write_tile,
    write_time_values,
)
from pipelines.products.layout import (
    catalog_url,
    cog_url,
    collection_url,
    cube_url,
    date_label,
    marker_url,
    product_url,
    province_url,
    quicklook_url,
)
from pipelines.products.quicklook import choropleth_png, write_quicklook
from pipelines.products.stac import (
    Provenance,
    build_catalog,
    is_done,
    product_item,
    read_marker,
    write_marker,
)
from pipelines.products.writer import ProductSpec, write_tile_product

__all__ = [
    "CubeVariable",
    "ProductSpec",
    "Provenance",
    "RegionWrite",
    "build_catalog",
    "catalog_url",
    "choropleth_png",
    "cog_url",
    "collection_url",
    "cube_url",
    "date_label",
    "init_cube",
    "is_done",
    "marker_url",
    "open_product",
    "product_item",
    "product_url",
    "province_url",
    "quicklook_url",
    "read_marker",
    "write_cog",
    "write_marker",
    "write_quicklook",
    "write_tile",
    "write_tile_product",
    "write_time_values",
]
