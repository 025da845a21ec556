"""Product writing: Zarr v3 cubes by tile region, COGs, quicklooks, STAC items as commit markers.

Layout under a store URL (local directory or ``s3://bucket/prefix``), see :mod:`.layout`::

    <store>/<province>/catalog.json
    <store>/<province>/<product>/collection.json
    <store>/<province>/<product>/months/<YYYY-MM>.json         (the items of a month)
    <store>/<province>/<product>/cube.zarr
    <store>/<province>/<product>/cog/<tile_id>/<label>.tif
    <store>/<province>/<product>/quicklook/<tile_id>/<label>.png
    <store>/<province>/<product>/items/<tile_id>/<label>.json   (written LAST: the commit marker)

plus a season run's tables (:mod:`.tables`: Parquet) and province-wide season items
(:func:`season_item`), laid out in :mod:`.layout`.

Typical run: :func:`init_cube` once per product (serially), then :func:`write_tile_product` per
tile (in parallel), then :func:`update_catalog` once for the months written
(:func:`build_catalog` rebuilds every month).

Reading, for consumers:

- the cube: ``open_product(store, province, product)`` (lazy, time-sorted; class rasters keep
  their integer dtype and nodata code, floats are NaN-masked), or any Zarr v3 reader with the
  ``xarray:open_kwargs`` of the collection's ``zarr`` asset;
- per tile and date: the item's ``cog`` asset (one band per variable, band descriptions = names)
  and ``zarr`` asset (``terrapipe:selection`` = time and pixel window of the tile in the cube);
- the catalog: ``pystac.Catalog.from_file(catalog_url(store, province))`` or any STAC browser.
"""

from pipelines.products.catalog import (
    LINK_BBOX,
    PeriodItem,
    build_catalog,
    catalog_items,
    collection_periods,
    period_items,
    period_links,
    update_catalog,
)
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
    catalog_period,
    catalog_url,
    cog_url,
    collection_url,
    crop_model_url,
    crop_predictions_url,
    cube_url,
    date_label,
    marker_url,
    period_url,
    product_url,
    province_url,
    quicklook_url,
    season_file_url,
    season_item_url,
    season_label_rows_url,
    season_table_url,
    season_url,
    vector_url,
)
from pipelines.products.quicklook import choropleth_png, write_quicklook
from pipelines.products.stac import (
    Provenance,
    is_done,
    outdated,
    product_item,
    read_marker,
    season_item,
    write_marker,
)
from pipelines.products.tables import RowRange, read_table, write_table
from pipelines.products.writer import ProductSpec, write_tile_product

__all__ = [
    "LINK_BBOX",
    "CubeVariable",
    "PeriodItem",
    "ProductSpec",
    "Provenance",
    "RegionWrite",
    "RowRange",
    "build_catalog",
    "catalog_items",
    "catalog_period",
    "catalog_url",
    "choropleth_png",
    "cog_url",
    "collection_periods",
    "collection_url",
    "crop_model_url",
    "crop_predictions_url",
    "cube_url",
    "date_label",
    "init_cube",
    "is_done",
    "marker_url",
    "open_product",
    "outdated",
    "period_items",
    "period_links",
    "period_url",
    "product_item",
    "product_url",
    "province_url",
    "quicklook_url",
    "read_marker",
    "read_table",
    "season_file_url",
    "season_item",
    "season_item_url",
    "season_label_rows_url",
    "season_table_url",
    "season_url",
    "update_catalog",
    "vector_url",
    "write_cog",
    "write_marker",
    "write_quicklook",
    "write_table",
    "write_tile",
    "write_tile_product",
    "write_time_values",
]
