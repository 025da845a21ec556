"""Product writing against S3 (moto server on loopback): the same code as for a local store."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from pipelines.classes import CloudClass
from pipelines.config import STORED_MANTISSA_BITS
from pipelines.products import (
    ProductSpec,
    Provenance,
    build_catalog,
    catalog_items,
    catalog_url,
    cog_url,
    init_cube,
    is_done,
    marker_url,
    open_product,
    write_tile_product,
)
from pipelines.products.writer import round_mantissa
from pipelines.storage import exists, gdal_env, read_text, write_text
from tests.unit.pipelines.products.test_products import (
    PRODUCT,
    PROVINCE,
    VARIABLES,
    WINDOW_1,
    _stage,
    _tile_view,
    pgrid,  # noqa: F401  (fixture)
    tile_data,
)

pytestmark = pytest.mark.integration


def test_products_on_s3_parallel_tiles_markers_catalog(s3_store, pgrid):  # noqa: F811
    store = s3_store
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)  # idempotent on S3 too
    spec = ProductSpec(quicklook="classes", classes=CloudClass, blocksize=16)
    prov = Provenance(stage_versions={"load": "0.1.0"}, input_items=["S2B_X"])

    def run(i_tile):
        i, tile = i_tile
        data = tile_data(tile, WINDOW_1, seed=40 + i, scalars=True)
        return write_tile_product(
            store, PROVINCE, PRODUCT, pgrid, tile, data, stage=_stage(), spec=spec, provenance=prov
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        manifests = list(pool.map(run, enumerate(pgrid.tiles)))
    assert all(m["n_written"] == len(WINDOW_1) for m in manifests)
    json.dumps(manifests)

    ds = open_product(store, PROVINCE, PRODUCT).load()
    for i, tile in enumerate(pgrid.tiles):
        want = tile_data(tile, WINDOW_1, seed=40 + i).compute()
        got = _tile_view(ds, pgrid, tile)
        np.testing.assert_array_equal(got["cloud"].values, want["cloud"].values)
        np.testing.assert_array_equal(
            got["prob"].values, round_mantissa(want["prob"].values, STORED_MANTISSA_BITS)
        )

    tile = pgrid.tiles[2]
    url = cog_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0])
    # GDAL takes the credentials from the environment (rasterio.Env refuses them as options)
    options = {k: v for k, v in gdal_env(url).items() if "ACCESS_KEY" not in k}
    with rasterio.Env(**options), rasterio.open(url) as src:
        assert src.descriptions == ("cloud", "prob")
        assert tuple(src.transform)[:6] == tuple(tile.geobox.affine)[:6]
    assert cog_validate(url.replace("s3://", "/vsis3/", 1), config=options)[0]

    # skip / resume on S3: done is skipped, a truncated marker is redone
    marker = marker_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[1])
    assert is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[1], "1.0.0")
    write_text(marker, read_text(marker)[:100])
    assert not is_done(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[1], "1.0.0")
    again = run((2, tile))
    assert again["written"] == [WINDOW_1[1]] and again["n_skipped"] == 2

    build_catalog(store, PROVINCE)
    catalog = json.loads(read_text(catalog_url(store, PROVINCE)))
    assert [link["href"] for link in catalog["links"] if link["rel"] == "child"] == [
        f"./{PRODUCT}/collection.json"
    ]
    items = catalog_items(store, PROVINCE, PRODUCT)
    assert len(items) == len(pgrid.tiles) * len(WINDOW_1)
    assert all(exists(marker_url(store, PROVINCE, PRODUCT, *item)) for item in items)
