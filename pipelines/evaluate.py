"""Quality of the classical stages against a demo archive's truth layers.

``terrapipe eval classical [ARCHIVE]`` prints JSON. Each stage runs on the archive's own grid
(truth and imagery share it), over every scene, and is compared with the truth:

- cloud_mask: F1 of cloud (cloud + cirrus) against ``truth/s2.zarr:cloud_class``, pooled over
  all valid pixels of all scenes;
- haze_index: Spearman rank correlation across scenes between ``dcp_index`` and the true mean
  haze optical depth, over scenes that are mostly clear (the index is defined on clear land;
  cloud-covered scenes are ranked on top by design, see ``pipelines.stages.haze``);
- dehaze: on hazy scenes (mean optical depth over clear pixels >= 0.1), PSNR of the output and
  of the hazy input against the clean reflectance, over clear pixels; the share of scenes where
  dehazing raised PSNR, and the NDVI mean absolute errors;
- flood_change: IoU of the flooded classes (open and flooded vegetation) against
  ``truth/flood.tif`` on the first post-event date; demo data only (labelled ``DEMO``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
import typer

from pipelines.classes import CloudClass, FloodClass

#: Scenes count as hazy from this mean optical depth (550 nm) over their clear pixels.
HAZY_DEPTH = 0.1
#: Scenes enter the haze-index ranking when at least this share of their pixels is clear.
MIN_CLEAR_FOR_RANKING = 0.5


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    return (nir - red) / np.maximum(nir + red, 1e-6)


def evaluate_optical(archive: str) -> dict[str, Any]:
    """cloud_mask F1, haze_index Spearman, dehaze PSNR gains on every S2 scene of ``archive``."""
    import dask
    import xarray as xr
    from scipy.stats import spearmanr

    from pipelines import storage
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.inputs import get_input
    from pipelines.load import load_s2
    from pipelines.stages.cloud_mask import cloud_mask
    from pipelines.stages.dehaze import dehaze
    from pipelines.stages.haze import haze_index

    info = open_archive_info(archive)
    geobox = archive_geobox(info)
    items = archive_items(archive, "sentinel-2-l2a")
    truth = xr.open_zarr(storage.join(archive, info["truth"]["s2"]), consolidated=False)
    by_id = {str(v): i for i, v in enumerate(truth["item_id"].values)}
    tp = fp = fn = 0
    ranking: list[tuple[float, float]] = []
    gains: list[dict[str, float]] = []
    with dask.config.set(scheduler="threads", num_workers=2):
        for item in items:
            s2 = load_s2([item], geobox, bands=get_input("s2").bands, with_scl=True, chunksize=1024)
            mask = cloud_mask(s2)
            hz = haze_index(s2, mask)
            clear = dehaze(s2, hz)
            s2_v, mask_v, index_v, clear_v = dask.compute(
                s2.isel(time=0), mask.isel(time=0), hz["dcp_index"].isel(time=0), clear.isel(time=0)
            )
            t = truth.isel(time=by_id[item["id"]]).load()
            true_class = t["cloud_class"].values
            valid = true_class != CloudClass.NODATA
            pred_cloud = np.isin(mask_v.values, (CloudClass.CLOUD, CloudClass.CIRRUS)) & valid
            true_cloud = np.isin(true_class, (CloudClass.CLOUD, CloudClass.CIRRUS)) & valid
            tp += int((pred_cloud & true_cloud).sum())
            fp += int((pred_cloud & ~true_cloud).sum())
            fn += int((~pred_cloud & true_cloud).sum())
            clear_px = true_class == CloudClass.CLEAR
            if clear_px.sum() < 0.05 * valid.size:
                continue
            depth = float(t["haze_density"].values[clear_px].mean())
            if clear_px.mean() >= MIN_CLEAR_FOR_RANKING:
                ranking.append((float(index_v), depth))
            if depth < HAZY_DEPTH:
                continue
            bands = ("B02", "B03", "B04", "B08")
            ref = np.stack([t[b].values.astype("float32") / 10000 for b in bands])
            hazy = np.stack([s2_v.sel(band=b).values for b in bands])
            out = np.stack([clear_v.sel(band=b).values for b in bands])
            ok = clear_px & np.all(np.isfinite(hazy), axis=0) & np.all(np.isfinite(out), axis=0)
            gains.append(
                {
                    "psnr_hazy": _psnr(hazy[:, ok], ref[:, ok]),
                    "psnr_dehazed": _psnr(out[:, ok], ref[:, ok]),
                    "ndvi_mae_hazy": float(
                        np.abs(_ndvi(hazy[2], hazy[3]) - _ndvi(ref[2], ref[3]))[ok].mean()
                    ),
                    "ndvi_mae_dehazed": float(
                        np.abs(_ndvi(out[2], out[3]) - _ndvi(ref[2], ref[3]))[ok].mean()
                    ),
                }
            )
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    rho = float(spearmanr([r[0] for r in ranking], [r[1] for r in ranking]).statistic)
    improved = [g["psnr_dehazed"] > g["psnr_hazy"] for g in gains]
    return {
        "scenes": len(items),
        "cloud_f1": round(f1, 4),
        "cloud_precision": round(tp / max(tp + fp, 1), 4),
        "cloud_recall": round(tp / max(tp + fn, 1), 4),
        "haze_spearman": round(rho, 4),
        "haze_ranked_scenes": len(ranking),
        "hazy_scenes": len(gains),
        "dehaze_improved_fraction": round(float(np.mean(improved)), 4) if gains else None,
        "dehaze_psnr_hazy_mean": round(float(np.mean([g["psnr_hazy"] for g in gains])), 2)
        if gains
        else None,
        "dehaze_psnr_mean": round(float(np.mean([g["psnr_dehazed"] for g in gains])), 2)
        if gains
        else None,
        "ndvi_mae_hazy": round(float(np.mean([g["ndvi_mae_hazy"] for g in gains])), 4)
        if gains
        else None,
        "ndvi_mae_dehazed": round(float(np.mean([g["ndvi_mae_dehazed"] for g in gains])), 4)
        if gains
        else None,
    }


def evaluate_flood(archive: str) -> dict[str, Any]:
    """flood_change IoU (flooded class) on the archive's flood event, first post date."""
    import dask
    import rasterio

    from pipelines import storage
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.load import load_dem, load_s1
    from pipelines.stages.flood import flood_change

    info = open_archive_info(archive)
    event = info["flood_event"]
    geobox = archive_geobox(info)
    s1 = {i["id"]: i for i in archive_items(archive, "sentinel-1-rtc")}
    pre = [s1[i] for i in event["pre"]]
    post = [s1[event["post"][0]]]
    dem = archive_items(archive, "cop-dem-glo-30")
    with dask.config.set(scheduler="threads", num_workers=2):
        out = (
            flood_change(load_s1(pre, geobox), load_s1(post, geobox), load_dem(dem, geobox))
            .isel(time=0)
            .values
        )
    with storage.rasterio_env(archive), rasterio.open(storage.join(archive, event["truth"])) as src:
        truth = src.read(1)
    # The truth's flooded class holds open and under-canopy flooding alike.
    pred = np.isin(out, (FloodClass.FLOODED, FloodClass.FLOODED_VEGETATION))
    true = truth == FloodClass.FLOODED
    iou = float((pred & true).sum() / max((pred | true).sum(), 1))
    perm_pred = out == FloodClass.PERMANENT_WATER
    perm_true = truth == FloodClass.PERMANENT_WATER
    return {
        "flood_iou": round(iou, 4),
        "flooded_px_true": int(true.sum()),
        "flooded_px_pred": int(pred.sum()),
        "flooded_vegetation_px_pred": int((out == FloodClass.FLOODED_VEGETATION).sum()),
        "flood_data": "DEMO: synthetic SAR of the demo archive (no labelled real S1 here)",
        "permanent_water_iou": round(
            float((perm_pred & perm_true).sum() / max((perm_pred | perm_true).sum(), 1)), 4
        ),
    }


#: Real Copernicus DEM tiles (1 arcsec) of ``shared/data/real/copdem-tiles`` for the terrain check.
REAL_DEM_TILES = {"rome": "Rome-30m-DEM.tif", "los_angeles": "los_angeles_dem_geoid.tif"}


def evaluate_flood_terrain_real(root: str) -> dict[str, Any]:
    """REAL data: where flood_change's terrain masks allow flooding on real Copernicus DEM tiles.

    Per tile: the floodable share (slope <= 5 degrees and height above drainage <= 15 m) of the
    whole tile, of its lowest tenth of elevations (valley floors: should be mostly floodable)
    and of its highest tenth (hills: should not be), with flood_change's default limits.
    ``root``: the real data folder. Empty when the tiles are absent.
    """
    import inspect
    from pathlib import Path

    import rasterio
    import xarray as xr

    from pipelines.stages.flood import flood_change, terrain_masks

    folder = Path(root) / "copdem-tiles"
    if not all((folder / name).is_file() for name in REAL_DEM_TILES.values()):
        return {}
    defaults = inspect.signature(flood_change).parameters
    max_slope = defaults["max_slope_deg"].default
    max_hand = defaults["max_hand_m"].default
    window = defaults["hand_window_m"].default
    out: dict[str, Any] = {"flood_terrain_data": "REAL: Copernicus DEM tiles (terrain only)"}
    for key, name in REAL_DEM_TILES.items():
        with rasterio.open(folder / name) as src:
            z = src.read(1).astype("float32")
            if src.nodata is not None:
                z[z == src.nodata] = np.nan
            t = src.transform
        # Degrees to metres at the tile's central latitude (1 arcsec: ~31 m north, less east).
        lat = t.f + t.e * z.shape[0] / 2
        pixel_m = float(np.sqrt(abs(t.a) * 111_320 * np.cos(np.radians(lat)) * abs(t.e) * 110_574))
        slope, hand = terrain_masks(xr.DataArray(z, dims=("y", "x")), pixel_m, window)
        ok = ~((slope.values > max_slope) | (hand.values > max_hand)) & np.isfinite(z)
        low, high = np.nanquantile(z, [0.1, 0.9])
        out[f"flood_terrain_floodable_{key}"] = {
            "tile": round(float(ok[np.isfinite(z)].mean()), 3),
            "lowest_tenth": round(float(ok[z <= low].mean()), 3),
            "highest_tenth": round(float(ok[z >= high].mean()), 3),
        }
    return out


def eval_classical(
    archive: Annotated[
        str | None, typer.Argument(help="Demo archive root (default: the embedded demo archive).")
    ] = None,
    real_data: Annotated[
        str | None,
        typer.Option(
            envvar="TERRAPIPE_REAL_DATA",
            help="Real data folder (shared/data/real) for the REAL terrain figures.",
        ),
    ] = None,
) -> None:
    """Quality of the classical stages against a demo archive's truth; prints JSON."""
    from pipelines.demo import demo_archive_url

    archive = archive or demo_archive_url()
    print(
        json.dumps(
            {
                "archive": archive,
                **evaluate_optical(archive),
                **evaluate_flood(archive),
                **(evaluate_flood_terrain_real(real_data) if real_data else {}),
            }
        )
    )
