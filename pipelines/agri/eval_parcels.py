"""Evaluation of the parcels stage against truth parcels.

- :func:`match_parcels`: matched fraction of true parcels (a predicted parcel with IoU > 0.5),
  precision of predicted parcels, over- and under-segmentation figures, for two id rasters.
- :func:`nesting`: the fraction of fine parcels that lie inside one coarse parcel (1.0 = nested).
- :func:`edge_inside_parcels`: the temporal edge strength inside the true parcels (the noise a
  segmentation must ride over) against the stage's edge threshold.
- :func:`boundary_agreement`: boundary precision and recall within a tolerance.
- :func:`evaluate_parcels`: the season feature cube and parcels of tiles of a demo archive
  against its ``truth/parcels.tif``.
- :func:`evaluate_parcels_real`: the eo-learn TestEOPatch (Slovenia, 100 x 101 px at 10 m): its
  68-date NDVI stack (clouds masked with its CLM mask) on the season calendar, parcels, and the
  RABA land-use polygons (``LULC.gpkg``) rasterised as truth.

Every figure is returned in a JSON-able dict. Tiles are processed one at a time (memory is bounded
by one tile's feature cube).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipelines.errors import BadInputError

__all__ = [
    "IOU_MATCH",
    "RealPatch",
    "boundary_agreement",
    "edge_inside_parcels",
    "evaluate_parcels",
    "evaluate_parcels_real",
    "load_real_patch",
    "match_parcels",
    "nesting",
    "tile_offsets",
]

#: IoU above which a predicted parcel matches a true parcel.
IOU_MATCH = 0.5


def _overlaps(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """(truth id, pred id, intersection px) of every overlapping pair (both > 0) and the areas."""
    t = np.asarray(truth).ravel().astype("int64")
    p = np.asarray(pred).ravel().astype("int64")
    area_t = np.bincount(t)
    area_p = np.bincount(p)
    sel = (t > 0) & (p > 0)
    base = int(p.max()) + 1
    pairs, inter = np.unique(t[sel] * base + p[sel], return_counts=True)
    return pairs // base, pairs % base, inter, area_t, area_p


def match_parcels(truth: np.ndarray, pred: np.ndarray, iou: float = IOU_MATCH) -> dict[str, Any]:
    """Agreement of two (y, x) id rasters (0 = not a parcel).

    Returns ``n_true``, ``n_pred``, ``matched_fraction`` (true parcels with a predicted parcel of
    IoU > ``iou``; the bar figure), ``precision`` (predicted parcels matching a true one),
    ``mean_best_iou``, ``over_segmentation`` (mean number of predicted parcels holding >= 10 % of a
    true parcel) and ``under_segmentation`` (fraction of predicted parcels holding >= 10 % of two or
    more true parcels).
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise BadInputError("pred", pred.shape, f"the truth shape {truth.shape}")
    ti, pi, inter, area_t, area_p = _overlaps(truth, pred)
    true_ids = np.flatnonzero(area_t[1:]) + 1
    pred_ids = np.flatnonzero(area_p[1:]) + 1 if len(area_p) > 1 else np.array([], "int64")
    out: dict[str, Any] = {"n_true": len(true_ids), "n_pred": len(pred_ids)}
    if len(true_ids) == 0:
        out.update(matched_fraction=float("nan"), precision=float("nan"))
        return out
    j = inter / (area_t[ti] + area_p[pi] - inter)
    best_t = np.zeros(len(area_t))
    np.maximum.at(best_t, ti, j)
    best_p = np.zeros(len(area_p))
    np.maximum.at(best_p, pi, j)
    share_t = inter / area_t[ti]  # part of the true parcel inside the predicted one
    pieces = np.bincount(ti[share_t >= 0.1], minlength=len(area_t))
    holders = np.bincount(pi[share_t >= 0.1], minlength=len(area_p))
    out.update(
        matched_fraction=float(np.mean(best_t[true_ids] > iou)),
        precision=float(np.mean(best_p[pred_ids] > iou)) if len(pred_ids) else float("nan"),
        mean_best_iou=float(np.mean(best_t[true_ids])),
        over_segmentation=float(np.mean(pieces[true_ids])),
        under_segmentation=float(np.mean(holders[pred_ids] >= 2)) if len(pred_ids) else 0.0,
    )
    return out


#: Bin width (NDVI) of the pooled histogram of edge strength inside the true parcels.
EDGE_BIN = 0.0005
_EDGE_BINS = np.arange(0.0, 2.0 + EDGE_BIN, EDGE_BIN)


def _interior_edge_histogram(truth: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Counts of the temporal edge strength (bins of :data:`EDGE_BIN`) of the pixels whose 3 x 3
    neighbourhood lies in one true parcel (> 0): the inside of the parcels, borders left out."""
    from scipy import ndimage as ndi

    truth = np.asarray(truth)
    inside = (truth > 0) & (ndi.minimum_filter(truth, 3) == ndi.maximum_filter(truth, 3))
    values = np.asarray(edge)[inside]
    return np.histogram(values[np.isfinite(values)], bins=_EDGE_BINS)[0]


def _edge_summary(counts: np.ndarray, threshold: float) -> dict[str, Any]:
    n = int(counts.sum())
    if n == 0:
        return {"n_px": 0}
    cum = np.cumsum(counts) / n
    upper = _EDGE_BINS[1:]
    return {
        "n_px": n,
        "median": round(float(upper[np.searchsorted(cum, 0.5)]), 4),
        "p90": round(float(upper[np.searchsorted(cum, 0.9)]), 4),
        "share_above_edge_threshold": round(
            float(counts[_EDGE_BINS[:-1] >= threshold - 1e-12].sum() / n), 4
        ),
        "edge_threshold": threshold,
    }


def edge_inside_parcels(
    truth: np.ndarray, edge: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """The temporal edge strength (NDVI) inside the true parcels of a (y, x) id raster: pixels
    whose 3 x 3 neighbourhood is one parcel. ``median`` and ``p90`` (to :data:`EDGE_BIN`), and
    ``share_above_edge_threshold``: how much of the inside cannot seed a parcel at
    ``threshold`` (default: the stage's ``edge_threshold``). The noise a segmentation must ride
    over: texture, misregistration and interpolation inside a field."""
    from pipelines.agri.parcels import EDGE_THRESHOLD

    if np.asarray(truth).shape != np.asarray(edge).shape:
        raise BadInputError("edge", np.asarray(edge).shape, f"the truth shape {truth.shape}")
    limit = EDGE_THRESHOLD if threshold is None else float(threshold)
    return _edge_summary(_interior_edge_histogram(truth, edge), limit)


def boundary_agreement(
    truth: np.ndarray, pred: np.ndarray, tolerance_px: int = 1
) -> dict[str, Any]:
    """Boundary precision and recall of two (y, x) id rasters: the share of the predicted
    boundary pixels within ``tolerance_px`` of a true boundary pixel, and the reverse.
    Boundaries are scikit-image's ``find_boundaries(mode="thick")`` (both sides of a change of
    id, 0 = not a parcel included), so removed border strips count as boundary."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise BadInputError("pred", pred.shape, f"the truth shape {truth.shape}")
    tb, pb = find_boundaries(truth, mode="thick"), find_boundaries(pred, mode="thick")
    near_t = ndi.distance_transform_edt(~tb) <= tolerance_px if tb.any() else np.zeros_like(tb)
    near_p = ndi.distance_transform_edt(~pb) <= tolerance_px if pb.any() else np.zeros_like(pb)
    counts = {
        "pred_px": int(pb.sum()),
        "pred_near_px": int(near_t[pb].sum()),
        "true_px": int(tb.sum()),
        "true_near_px": int(near_p[tb].sum()),
    }
    return _boundary_figures(counts, tolerance_px)


def _boundary_figures(counts: dict[str, int], tolerance_px: int) -> dict[str, Any]:
    """Precision and recall from :func:`boundary_agreement`'s pixel counts (None when a side has
    no boundary), with the counts (they pool over tiles by summing)."""
    pred, true = counts["pred_px"], counts["true_px"]
    return {
        "precision": round(counts["pred_near_px"] / pred, 4) if pred else None,
        "recall": round(counts["true_near_px"] / true, 4) if true else None,
        "tolerance_px": tolerance_px,
        **counts,
    }


def nesting(fine: np.ndarray, coarse: np.ndarray) -> float:
    """Fraction of fine parcels whose pixels all lie in one coarse parcel (> 0); 1.0 = nested."""
    fine, coarse = np.asarray(fine), np.asarray(coarse)
    if fine.shape != coarse.shape:
        raise BadInputError("coarse", coarse.shape, f"the fine shape {fine.shape}")
    ids = np.unique(fine[fine > 0])
    if len(ids) == 0:
        return 1.0
    sel = fine > 0
    pairs = np.unique(np.stack([fine[sel], coarse[sel]], axis=1), axis=0)
    n_parents = np.bincount(pairs[:, 0], minlength=int(ids.max()) + 1)[ids]
    zero_parent = np.zeros(int(ids.max()) + 1, dtype=bool)
    zero_parent[pairs[pairs[:, 1] == 0, 0]] = True
    return float(np.mean((n_parents == 1) & ~zero_parent[ids]))


def tile_offsets(
    height: int, width: int, tile_px: int, max_tiles: int | None = None
) -> list[tuple[int, int]]:
    """(row, col) pixel offsets of the tiles of a grid, row-major; ``max_tiles`` spread evenly."""
    if isinstance(tile_px, bool) or not isinstance(tile_px, int) or tile_px < 16:
        raise BadInputError("tile_px", tile_px, "an integer >= 16 pixels")
    offs = [(r, c) for r in range(0, height, tile_px) for c in range(0, width, tile_px)]
    if max_tiles is not None:
        if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1:
            raise BadInputError("max_tiles", max_tiles, "an integer >= 1 or None (all tiles)")
        if max_tiles < len(offs):
            pick = np.linspace(0, len(offs) - 1, max_tiles).round().astype(int)
            offs = [offs[i] for i in pick]
    return offs


def _season_items(items: list[dict[str, Any]], season: int) -> list[dict[str, Any]]:
    """Items dated in ``season`` or the month either side (anchors for the calendar ends)."""
    near = (f"{season - 1}-12", f"{season + 1}-01")
    out = []
    for it in items:
        when = str(it.get("properties", {}).get("datetime") or "")
        if when.startswith(str(season)) or when[:7] in near:
            out.append(it)
    return out


def evaluate_parcels(
    archive: str,
    *,
    season: int = 2025,
    tile_px: int = 512,
    max_tiles: int | None = None,
    with_s1: bool = True,
    **parcel_kwargs: Any,
) -> dict[str, Any]:
    """Parcels of tiles of a demo ``archive`` against its truth parcels.

    ``season``: the year whose S2 scenes make the feature cube; ``tile_px``: tile size (px);
    ``max_tiles``: evaluate this many tiles spread over the grid (None: every tile, the whole
    province); ``with_s1``: load S1 into the cube (the parcels weigh it under cloud, as the season
    run does; False: the optical segmentation alone);
    ``parcel_kwargs``: passed to :func:`pipelines.agri.parcels.parcels`. Returns per-tile figures
    and totals: ``fine`` and ``coarse`` :func:`match_parcels` figures pooled over tiles (true
    parcels cut by a tile edge count once per tile), ``nesting`` (min over tiles),
    ``edge_inside_parcels`` (:func:`edge_inside_parcels`) and ``fine_boundary`` (the fine
    level's :func:`boundary_agreement`), both pooled over tiles, seconds and Mpx/s of the
    features and parcels steps.
    """
    import dask
    import rasterio
    from rasterio.windows import Window

    from pipelines import storage
    from pipelines.agri.features import season_features
    from pipelines.agri.parcels import EDGE_THRESHOLD, parcels
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.load import load_dem, load_s1, load_s2

    info = open_archive_info(archive)
    if season not in info.get("seasons", [season]):
        raise BadInputError("season", season, f"one of the archive's seasons {info['seasons']}")
    geobox = archive_geobox(info)
    s2_items = _season_items(archive_items(archive, "sentinel-2-l2a"), season)
    if not s2_items:
        raise BadInputError("season", season, "a season with Sentinel-2 scenes in the archive")
    s1_items = _season_items(archive_items(archive, "sentinel-1-rtc"), season) if with_s1 else []
    dem_items = archive_items(archive, "cop-dem-glo-30")
    offsets = tile_offsets(info["height"], info["width"], tile_px, max_tiles)
    truth_url = storage.join(archive, "truth", "parcels.tif")
    tiles: list[dict[str, Any]] = []
    totals: dict[str, list[dict[str, Any]]] = {"fine": [], "coarse": []}
    t_load = t_feat = t_par = 0.0
    n_px = 0
    edge_counts = np.zeros(len(_EDGE_BINS) - 1, dtype="int64")
    edge_limit = float(parcel_kwargs.get("edge_threshold", EDGE_THRESHOLD))
    with dask.config.set(scheduler="threads", num_workers=2), storage.rasterio_env(truth_url):
        for r0, c0 in offsets:
            gb = geobox[r0 : r0 + tile_px, c0 : c0 + tile_px]
            h, w = gb.shape
            s2 = load_s2(
                s2_items,
                gb,
                bands=("B02", "B03", "B04", "B08", "B11", "B12"),
                with_scl=True,
                chunksize=tile_px,
            )
            s1 = load_s1(s1_items, gb, chunksize=tile_px) if s1_items else None
            dem = load_dem(dem_items, gb, chunksize=tile_px) if dem_items else None
            tl = time.perf_counter()
            s2, s1, dem = dask.compute(s2, s1, dem)  # the read, timed apart from the stages
            t0 = time.perf_counter()
            t_load += t0 - tl
            feats = season_features(s2, s1, dem, season).compute()
            t1 = time.perf_counter()
            ids = parcels(feats, **parcel_kwargs).compute()
            t2 = time.perf_counter()
            t_feat += t1 - t0
            t_par += t2 - t1
            n_px += h * w
            with rasterio.open(truth_url) as src:
                truth = src.read(1, window=Window(c0, r0, w, h)).astype("int64")
            fine, coarse = ids["fine"].values, ids["coarse"].values
            tile_edges = _interior_edge_histogram(truth, ids["temporal_edge_strength"].values)
            edge_counts += tile_edges
            row: dict[str, Any] = {
                "row": r0,
                "col": c0,
                "fine": match_parcels(truth, fine),
                "coarse": match_parcels(truth, coarse),
                "nesting": nesting(fine, coarse),
                "edge_inside_parcels": _edge_summary(tile_edges, edge_limit),
                "fine_boundary": boundary_agreement(truth, fine),
                "load_s": round(t0 - tl, 2),
                "features_s": round(t1 - t0, 2),
                "parcels_s": round(t2 - t1, 2),
            }
            tiles.append(row)
            for level in ("fine", "coarse"):
                totals[level].append(row[level])
    out: dict[str, Any] = {"archive": str(archive), "season": season, "tile_px": tile_px}
    for level in ("fine", "coarse"):
        rows = totals[level]
        n_true = sum(r["n_true"] for r in rows)
        n_pred = sum(r["n_pred"] for r in rows)
        pooled = {
            "n_true": n_true,
            "n_pred": n_pred,
            "matched_fraction": sum(r["matched_fraction"] * r["n_true"] for r in rows)
            / max(n_true, 1),
            "precision": sum(r.get("precision", 0.0) * r["n_pred"] for r in rows) / max(n_pred, 1),
            "over_segmentation": sum(r.get("over_segmentation", 0.0) * r["n_true"] for r in rows)
            / max(n_true, 1),
            "under_segmentation": sum(r.get("under_segmentation", 0.0) * r["n_pred"] for r in rows)
            / max(n_pred, 1),
        }
        out[level] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in pooled.items()}
    out["nesting"] = min(r["nesting"] for r in tiles) if tiles else 1.0
    out["edge_inside_parcels"] = _edge_summary(edge_counts, edge_limit)
    keys = ("pred_px", "pred_near_px", "true_px", "true_near_px")
    out["fine_boundary"] = _boundary_figures(
        {k: sum(r["fine_boundary"][k] for r in tiles) for k in keys}, 1
    )
    out["tiles"] = tiles
    out["load_s"] = round(t_load, 1)
    out["features_mpx_s"] = round(n_px / 1e6 / max(t_feat, 1e-9), 4)
    out["parcels_mpx_s"] = round(n_px / 1e6 / max(t_par, 1e-9), 4)
    return out


@dataclass(frozen=True)
class RealPatch:
    """The eo-learn TestEOPatch on the season calendar (:func:`load_real_patch`)."""

    features: xr.Dataset
    """``ndvi`` (doy, y, x) calendar NDVI (NaN never observed) and ``clear_dates`` (y, x), as
    :func:`pipelines.agri.features.season_features` gives them; ``doy`` an int coordinate."""
    truth: np.ndarray
    """(y, x) int32: the RABA polygon of each pixel (1-based index into ``polygons``), 0 none."""
    polygons: Any
    """The RABA land-use polygons (GeoDataFrame; ``LULC_ID``, ``LULC_NAME``)."""
    season: int
    """The year whose dates were used."""
    clear_dates_in_season: float
    """Clear observations of the year, in whole-patch dates."""


def load_real_patch(
    root: str | Path | None = None, *, season: int | None = None, step_days: int = 10
) -> RealPatch:
    """The eo-learn TestEOPatch's 68-date NDVI stack on the season calendar (DOY 60-330 every
    ``step_days``) and its RABA polygons rasterised by pixel centre.

    ``root``: the real data folder (``shared/data/real``; default: ``TERRAPIPE_REAL_DATA`` or
    ``../shared/data/real`` beside the repository). ``season``: the year of the NDVI dates used
    (default: the year with the most clear observations); dates masked by ``mask/CLM.npy`` or
    outside ``mask/IS_DATA.npy`` are gaps."""
    import geopandas as gpd
    import pandas as pd
    from affine import Affine
    from rasterio.features import rasterize

    from pipelines.agri.features import calendar_doys, interp_calendar
    from pipelines.config import real_data_dir

    base = Path(root) if root is not None else real_data_dir()
    patch = base / "eolearn-testeopatch" / "TestEOPatch"
    if not patch.is_dir():
        raise BadInputError("root", str(base), "the real data folder holding eolearn-testeopatch")
    ndvi = np.load(patch / "data" / "NDVI.npy")[..., 0].astype("float32")  # (t, y, x)
    clm = np.load(patch / "mask" / "CLM.npy")[..., 0].astype(bool)
    is_data = np.load(patch / "mask" / "IS_DATA.npy")[..., 0].astype(bool)
    stamps = pd.DatetimeIndex(json.loads((patch / "timestamps.json").read_text()))
    obs = np.where(is_data & ~clm, ndvi, np.nan)
    clear_per_year = pd.Series(np.isfinite(obs).mean(axis=(1, 2)), index=stamps.year)
    clear_per_year = clear_per_year.groupby(level=0).sum()
    if season is None:
        season = int(clear_per_year.index[int(clear_per_year.argmax())])
    if season not in clear_per_year.index:
        raise BadInputError("season", season, f"one of {sorted(clear_per_year.index)}")
    doys = calendar_doys(60, 330, step_days)
    t_obs = np.asarray(
        ((stamps - pd.Timestamp(year=season, month=1, day=1)) / pd.Timedelta(days=1)) + 1.0,
        dtype="float64",
    )
    near = (t_obs >= doys[0] - 45) & (t_obs <= doys[-1] + 45)
    series = np.moveaxis(obs[near], 0, -1)  # (y, x, t)
    cal = np.moveaxis(interp_calendar(series, t_obs[near], doys.astype("float64")), -1, 0)

    bbox = json.loads((patch / "bbox.geojson").read_text())
    coords = np.asarray(
        bbox["coordinates"][0] if "coordinates" in bbox else bbox["geometry"]["coordinates"][0]
    )
    ny, nx = cal.shape[1:]
    x0, y1 = float(coords[:, 0].min()), float(coords[:, 1].max())
    res_x = (float(coords[:, 0].max()) - x0) / nx
    res_y = (y1 - float(coords[:, 1].min())) / ny
    transform = Affine(res_x, 0.0, x0, 0.0, -res_y, y1)
    gdf = gpd.read_file(patch / "vector_timeless" / "LULC.gpkg")
    truth = rasterize(
        ((geom, i + 1) for i, geom in enumerate(gdf.geometry)),
        out_shape=(ny, nx),
        transform=transform,
        fill=0,
        dtype="int32",
    )
    # clear dates within the calendar per pixel, as season_features counts them
    in_cal = (t_obs >= doys[0]) & (t_obs < doys[-1] + 1)
    clear = np.isfinite(obs[in_cal]).sum(axis=0).astype("float32")
    feats = xr.Dataset(
        {"ndvi": (("doy", "y", "x"), cal), "clear_dates": (("y", "x"), clear)},
        coords={
            "doy": doys,
            "y": y1 - res_y * (np.arange(ny) + 0.5),
            "x": x0 + res_x * (np.arange(nx) + 0.5),
        },
    )
    return RealPatch(feats, truth, gdf, season, round(float(clear_per_year.loc[season]), 1))


def evaluate_parcels_real(
    root: str | Path | None = None,
    *,
    season: int | None = None,
    step_days: int = 10,
    **parcel_kwargs: Any,
) -> dict[str, Any]:
    """Parcels on the eo-learn TestEOPatch against its RABA land-use polygons.

    ``root``, ``season``, ``step_days``: as :func:`load_real_patch`. ``parcel_kwargs`` go to
    :func:`pipelines.agri.parcels.parcels`. Returns :func:`match_parcels` figures for both levels
    (truth: every RABA polygon rasterised by pixel centre), the nesting check and the edge
    strength inside the polygons (:func:`edge_inside_parcels`); ``fine_boundary``: the fine
    level's :func:`boundary_agreement`, and ``removed_px``: pixels in no fine parcel.
    """
    from pipelines.agri.parcels import EDGE_THRESHOLD, parcels

    patch = load_real_patch(root, season=season, step_days=step_days)
    truth = patch.truth
    ids = parcels(patch.features, **parcel_kwargs).compute()
    fine, coarse = ids["fine"].values, ids["coarse"].values
    edge_limit = float(parcel_kwargs.get("edge_threshold", EDGE_THRESHOLD))
    return {
        "source": "eo-learn TestEOPatch NDVI (68 dates) + RABA LULC.gpkg",
        "season": patch.season,
        "clear_dates_in_season": patch.clear_dates_in_season,
        "n_polygons": len(patch.polygons),
        "fine": match_parcels(truth, fine),
        "coarse": match_parcels(truth, coarse),
        "nesting": nesting(fine, coarse),
        "edge_inside_parcels": edge_inside_parcels(
            truth, ids["temporal_edge_strength"].values, edge_limit
        ),
        "fine_boundary": boundary_agreement(truth, fine),
        "removed_px": int((fine == 0).sum()),
    }
