"""cloud_mask_s2cloudless in a province run: real L1C scenes (the eo-learn patch) served as a
``sentinel-2-l1c`` STAC collection, planned through the ``s2_l1c`` input, loaded with their
declared scale and offset, and written as a product that agrees with eo-learn's CLM."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import box, mapping

from pipelines import products
from pipelines.config import parse_config
from pipelines.evaluate import EOLEARN, EOLEARN_ORIGIN, mask_agreement
from pipelines.testing.stac import s2_item, write_archive

pytestmark = pytest.mark.integration

CRS = "EPSG:32633"
#: The two scenes used: thin cloud (the one where methods differ) and a clear one.
DATES = ("2015-07-31", "2015-08-30")


def test_a_province_run_writes_s2cloudless_masks_from_l1c_items(real_data, tmp_path):
    folder = real_data / EOLEARN
    if not (folder / "REFERENCE_SCENES.npy").is_file():
        pytest.skip(f"no {folder / 'REFERENCE_SCENES.npy'}")
    meta = json.loads((folder / "REFERENCE_SCENES.dates.json").read_text())
    stamps = json.loads((folder / "TestEOPatch" / "timestamps.json").read_text())
    scenes = np.load(folder / "REFERENCE_SCENES.npy")  # (scene, y, x, band) TOA reflectance
    clm = np.load(folder / "TestEOPatch" / "mask" / "CLM.npy")[..., 0].astype(bool)
    picks = [
        k for k, s in enumerate(meta["scenes"]) if s["timestamp"][:10] in DATES
    ]  # scene indices
    assert len(picks) == len(DATES)
    ny, nx = scenes.shape[1:3]
    # The patch's corner snapped to the 10 m tile grid (a shift of under one pixel), so the
    # run's grid holds the scene's pixels unresampled.
    x0, y1 = (10 * round(v / 10) for v in EOLEARN_ORIGIN)
    geobox = GeoBox((ny, nx), Affine(10, 0, x0, 0, -10, y1), CRS)
    items = []
    for k in picks:
        # Earth Search's L1C encoding: DN = reflectance * 10000 + 1000 (baseline >= 04.00),
        # declared as scale 1e-4, offset -0.1.
        dn = {
            band: np.clip(np.round(scenes[k, ..., i] * 10000 + 1000), 1, 65535)
            for i, band in enumerate(meta["band_order"])
        }
        items.append(
            s2_item(
                tmp_path / "archive",
                f"S2_L1C_{k}",
                geobox,
                datetime.fromisoformat(meta["scenes"][k]["timestamp"]).replace(tzinfo=UTC),
                dn,
                collection="sentinel-2-l1c",
            )
        )
    archive = write_archive(tmp_path / "archive", {"sentinel-2-l1c": items})
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    (w, s), (e, n) = (
        to_wgs84.transform(x0 + 25, y1 - 10 * ny + 25),
        to_wgs84.transform(x0 + 10 * nx - 25, y1 - 25),
    )
    config = parse_config(
        {
            "province": "l1c",
            "aoi": mapping(box(w, s, e, n)),
            "crs": CRS,
            "tile_px": 128,
            "start": DATES[0],
            "end": DATES[1],
            "products": ["cloud_mask_s2cloudless"],
            "stac": {"archive": str(archive), "max_cloud_cover": 100},
            "store": str(tmp_path / "store"),
        }
    )
    from distributed import Client, LocalCluster

    from pipelines.engine.run import run_local

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        summary = run_local(config, client)
    assert summary["written"] > 0 and summary["no_scenes"] == 0, summary
    cube = products.open_product(config.store, "l1c", "cloud_mask_s2cloudless")
    assert set(cube.data_vars) >= {"cloud_mask", "cloud_probability"}
    written = cube["cloud_mask"].sel(x=geobox.coords["x"].values, y=geobox.coords["y"].values)
    assert written.sizes["time"] == len(DATES)
    for t, k in enumerate(picks):
        idx = stamps.index(meta["scenes"][k]["timestamp"])
        got = written.isel(time=t).values
        assert (got > 0).all()  # every pixel of the patch classified
        agreement = mask_agreement(got == 2, clm[idx])
        # Measured: 0.9997 per pixel on these scenes through the stage (docs/quality.md).
        assert agreement["accuracy"] >= 0.98, (meta["scenes"][k]["timestamp"], agreement)
