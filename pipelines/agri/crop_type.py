"""Few-shot crop type from per-parcel season tables: calendar features + semi-supervised learning.

Method (trained on one season's :func:`pipelines.agri.parcel_table.parcel_table` of all parcels
and a handful of labelled parcels):

1. Features per parcel: the NDVI curve on the calendar (under cloud fused with the SAR date by
   date, :func:`fuse_ndvi_with_sar`), the VV/VH curves (dB, smoothed over three
   calendar steps against speckle), BGRN temporal means, early-season VH minimum (flooded
   paddies), VH - VV, slope/hillshade, per calendar crop the mean VV/VH over its peak window
   (canopy structure: corn is brighter than soybean) and the fit of the NDVI curve to the
   crop's template curve (best correlation over +/- ``MAX_SHIFT_DAYS``) — the expert calendar —
   and the season maxima of VV and VH (canopy backscatter level: structure differs by crop).
   Columns are robustly standardised over all parcels; each group weighs ``GROUP_WEIGHTS``
   over the square root of its column count (a DEMO constant, docs/agri.md).
2. Non-crop seeds from the calendar (expert knowledge, no labels needed): parcels never bare in
   the season (NDVI minimum above ``BARE_NDVI``: forest, perennial cover), never green (NDVI
   maximum below ``GREEN_NDVI``: urban, water, bare land; with SAR: VH rising less than
   ``CANOPY_VH_DB`` over the season, which also catches perennial grass and does not depend on
   how densely the optical dates sample the peak), or whose curve fits no crop's calendar (best
   template correlation below ``MIN_TEMPLATE_CORR``). Crop seeds from the calendar as well:
   parcels whose curve fits one crop's template (correlation >= ``CALENDAR_SEED_CORR``) and
   no other crop's (margin >= ``CALENDAR_SEED_MARGIN``), e.g. winter wheat among summer crops.
   In a cloudy season whose optical dates miss the wheat peak, the few labels alone left half
   of the wheat as "other"; the calendar knows a curve that only fits wheat is wheat.
3. Label spreading (``sklearn.semi_supervised.LabelSpreading``, k-nearest-neighbour graph) over
   the parcels of at least ``MIN_GRAPH_PX`` pixels, from the labelled crops and the non-crop
   seeds: each parcel gets a distribution over crops + "other", the mean over the graphs of
   ``GRAPH_NEIGHBOURS`` neighbours that reach it (no single neighbourhood size decides; a graph
   that leaves a parcel unreached casts no vote, :func:`mean_label_distribution`).
4. Crop or other, learned from the season's own crops (:func:`accept_unseeded_crops`): a parcel
   that label spreading left as "other" (or did not reach at all: a cluster without a labelled
   or seeded parcel) although no calendar rule rules it out joins its
   nearest crop on the crops' discriminant axes (the EM's Gaussians below) when it is as
   typical of that crop as ``CROP_ACCEPT_QUANTILE`` of the crop's own confident parcels (the
   thousands of non-crop seeds otherwise outweigh three labels per crop along the graph).
   Semi-supervised EM among the crops (:func:`refine_crops_em`): on the discriminant axes of
   the propagated crops, one Gaussian per crop with a covariance shared by all (LDA's model),
   labelled parcels fixed; the crop boundaries move to the density valleys instead of wherever
   three labels per crop put them. With parcel centroids, each parcel is read against the
   crop condition of its area (neighbours' residuals against their own crops, a kernel whose
   width the season's residuals choose by cross-validation): a thin corn canopy in a weak area
   reads like soybean elsewhere.
5. An inductive classifier (``HistGradientBoostingClassifier``) is fitted on the confidently
   propagated parcels (self-training) and predicts every parcel, small ones included.

Outputs: ``p_<crop>`` in [0, 1] (sum over crops = ``cropland_probability``), ``crop`` (the most
probable crop where cropland_probability >= 0.5, else ""), ``crop_code`` (LandClass code, 0 none).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from pipelines.agri.calendar import CropCalendar
from pipelines.agri.labels import MIN_PER_CROP
from pipelines.errors import BadInputError

#: Template curves may shift by this many days (sowing dates vary by a few weeks).
MAX_SHIFT_DAYS = 20
#: A parcel whose NDVI never falls below this is never bare: not an annual crop.
BARE_NDVI = 0.35
#: A parcel whose NDVI never exceeds this never carries a crop canopy.
GREEN_NDVI = 0.4
#: A seasonal rise of the (smoothed) VH backscatter of at least this many dB marks a growing canopy.
CANOPY_VH_DB = 3.0
#: A parcel whose NDVI curve correlates less than this with every crop template is not a crop.
MIN_TEMPLATE_CORR = 0.5
#: A parcel whose NDVI curve fits one crop's calendar template at least this well ...
CALENDAR_SEED_CORR = 0.9
#: ... and every other crop's by at least this much less seeds the propagation as that crop.
CALENDAR_SEED_MARGIN = 0.4
#: Parcels smaller than this (pixels) do not enter the propagation graph (noisy means).
MIN_GRAPH_PX = 20
#: Neighbourhood sizes of the label-spreading graph; each parcel's label distribution is the
#: mean over them. The size has no physical meaning, and with three labels per crop under cloud
#: a single one decided whether a crop's cluster was reached at all (DEMO 2024: rice recall
#: 0.79 / 0.78 / 0.83 / 0.92 at k = 8 / 10 / 12 / 15 alone, 0.945 with their mean).
GRAPH_NEIGHBOURS = (8, 10, 12, 15)
#: Propagated parcels with at least this probability train the inductive classifier.
MIN_CONFIDENCE = 0.6
#: Iterations of the crop mixture refinement (:func:`refine_crops_em`).
EM_MAX_ITER = 50
#: The refinement runs when every crop holds at least this many confident parcels.
EM_MIN_CLASS = 10
#: A parcel propagated to "other" that no calendar rule rules out joins its nearest crop when it
#: lies within this quantile of the crop's own confident parcels' distances (a 5 % test).
CROP_ACCEPT_QUANTILE = 0.95
#: The narrowest crop-condition kernel (:func:`condition_bandwidths`) is this many median
#: centroid spacings wide: its 1-sigma disc holds about 28 parcels (pi * 3^2), so a parcel's
#: immediate neighbours (a field's own pieces) never decide its offset alone.
CONDITION_MIN_SPACINGS = 3.0
#: Candidate kernels double this many times from the narrowest (x32: from a few fields to a
#: district); the season's own residuals choose one by leave-one-out cross-validation, or none.
CONDITION_DOUBLINGS = 5
#: Grid cells per bandwidth of the gridded kernel smoother (cell = bandwidth / this).
CONDITION_CELLS_PER_BANDWIDTH = 2
OTHER = "other"


@dataclass
class CropModel:
    """A fitted crop model (see module docstring)."""

    crops: tuple[str, ...]
    calendar: CropCalendar
    center: pd.Series
    scale: pd.Series
    weights: pd.Series
    classifier: Any
    classes: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def _curve_cols(table: pd.DataFrame, prefix: str) -> list[str]:
    return sorted(c for c in table.columns if c.startswith(f"{prefix}_d") and c[-3:].isdigit())


def _doys(cols: list[str]) -> np.ndarray:
    return np.array([int(c[-3:]) for c in cols])


def _fill_rows(a: np.ndarray) -> np.ndarray:
    """NaN -> row mean (then 0), so a missing date does not drop a parcel."""
    a = np.asarray(a, dtype="float64")
    finite = np.isfinite(a)
    count = finite.sum(axis=1, keepdims=True)
    total = np.where(finite, a, 0.0).sum(axis=1, keepdims=True)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return np.where(finite, a, mean)


def template_fit(ndvi: np.ndarray, doys: np.ndarray, calendar: CropCalendar) -> np.ndarray:
    """Best correlation (over shifts of +/- ``MAX_SHIFT_DAYS``) of each NDVI curve with each
    calendar crop template: float64 (parcel, crop). ``ndvi``: (parcel, doy)."""
    x = ndvi - ndvi.mean(axis=1, keepdims=True)
    xn = np.linalg.norm(x, axis=1)
    out = np.full((len(ndvi), len(calendar.names)), -1.0)
    for j, crop in enumerate(calendar.names):
        for s in range(-MAX_SHIFT_DAYS, MAX_SHIFT_DAYS + 1, 5):
            t = calendar.template(crop, doys - s)
            t = t - t.mean()
            tn = np.linalg.norm(t)
            if tn == 0:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                r = (x @ t) / (xn * tn)
            out[:, j] = np.maximum(out[:, j], np.nan_to_num(r, nan=-1.0))
    return out


def _sar_design(table: pd.DataFrame) -> np.ndarray | None:
    """(parcel, 2 x doy) VV and VH calendar curves (dB, row-filled), or None without SAR."""
    parts = []
    for pol in ("vv", "vh"):
        cols = _curve_cols(table, pol)
        if not cols or not np.isfinite(table[cols].to_numpy(dtype="float64")).any():
            return None
        parts.append(_fill_rows(table[cols].to_numpy()))
    return np.concatenate(parts, axis=1)


def fuse_ndvi_with_sar(table: pd.DataFrame, ndvi: np.ndarray) -> np.ndarray:
    """Each parcel's NDVI curve fused with an NDVI curve predicted from its SAR curves, date by
    date, weighted by how much of each date's NDVI clear observations measured: float64
    (parcel, doy).

    ``W[:, d]``: the parcel's mean ``ndvi_weight_dDDD``
    (:func:`pipelines.agri.features.optical_weight_by_date`: ``min(1, step / span)``, ``span``
    the interpolation gap of calendar date d); a table without those columns (written before
    them) spreads ``optical_weight(clear_dates, n_calendar)`` over every date. The fused curve
    is ``W * ndvi + (1 - W) * ndvi_sar``. ``ndvi_sar``: ridge regressions from the parcel's VV
    and VH calendar curves (dB, standardised) to its NDVI, one per calendar date, fitted on the
    season's parcels with sample weight ``W[:, d]`` (the parcels that observed date d teach it;
    data-driven within the season, no constant from elsewhere); a date observed by no more
    parcels than there are SAR predictors takes a ridge fitted to whole curves with the
    parcels' mean weight. Parcels with no clear date (NaN curves) then get the SAR's curve
    alone. Returns ``ndvi`` unchanged when the table has no ``clear_dates`` or no SAR, or when
    every weight is 1 (every value between clear dates at most one calendar step apart).
    """
    from pipelines.agri.features import optical_weight

    if "clear_dates" not in table:
        return ndvi
    n_doy = ndvi.shape[1]
    w = optical_weight(table["clear_dates"].to_numpy(dtype="float32"), n_doy)
    w = w.astype("float64")
    w_cols = _curve_cols(table, "ndvi_weight")
    if len(w_cols) == n_doy:
        by_date = table[w_cols].to_numpy(dtype="float64")
        by_date = np.clip(np.where(np.isfinite(by_date), by_date, w[:, None]), 0.0, 1.0)
    else:
        by_date = np.repeat(w[:, None], n_doy, axis=1)
    sar = _sar_design(table)
    if sar is None or (by_date >= 1.0).all() or not (w > 0).any():
        return ndvi
    from sklearn.linear_model import Ridge

    center = sar.mean(axis=0)
    scale = np.where(sar.std(axis=0) > 1e-9, sar.std(axis=0), 1.0)
    z = (sar - center) / scale
    seen = w > 0
    whole = Ridge(alpha=1.0).fit(z[seen], ndvi[seen], sample_weight=w[seen])
    predicted = whole.predict(z)
    for d in range(n_doy):
        seen_d = by_date[:, d] > 0
        if seen_d.sum() > z.shape[1]:
            fit = Ridge(alpha=1.0).fit(z[seen_d], ndvi[seen_d, d], sample_weight=by_date[seen_d, d])
            predicted[:, d] = fit.predict(z)
    predicted = np.clip(predicted, -1.0, 1.0)
    return by_date * ndvi + (1.0 - by_date) * predicted


def crop_features(table: pd.DataFrame, calendar: CropCalendar) -> pd.DataFrame:
    """Model features per parcel (raw, before standardisation); the column prefix is its group."""
    nd_cols = _curve_cols(table, "ndvi")
    if not nd_cols:
        raise BadInputError(
            "table", list(table.columns[:5]), "a parcel table with ndvi_dDDD columns"
        )
    doys = _doys(nd_cols)
    ndvi = fuse_ndvi_with_sar(table, _fill_rows(table[nd_cols].to_numpy()))
    feats: dict[str, np.ndarray] = {}
    for j, d in enumerate(doys):
        feats[f"ndvi|{d}"] = ndvi[:, j]
    for pol in ("vv", "vh"):
        cols = _curve_cols(table, pol)
        if cols and np.isfinite(table[cols].to_numpy()).any():
            sar = _fill_rows(table[cols].to_numpy())
            sm = np.apply_along_axis(lambda r: np.convolve(r, np.ones(3) / 3, mode="same"), 1, sar)
            sm[:, 0], sm[:, -1] = sar[:, :2].mean(axis=1), sar[:, -2:].mean(axis=1)
            for j, d in enumerate(_doys(cols)):
                feats[f"{pol}|{d}"] = sm[:, j]
    for name in ("b02_mean", "b03_mean", "b04_mean", "b08_mean"):
        if name in table:
            feats[f"refl|{name}"] = np.nan_to_num(table[name].to_numpy(dtype="float64"))
    for name in ("vh_early_min", "vh_minus_vv"):
        if name in table and np.isfinite(table[name].to_numpy(dtype="float64")).any():
            feats[f"sarstat|{name}"] = np.nan_to_num(table[name].to_numpy(dtype="float64"))
    for name in ("slope", "hillshade"):
        if name in table and np.isfinite(table[name].to_numpy(dtype="float64")).any():
            feats[f"terrain|{name}"] = np.nan_to_num(table[name].to_numpy(dtype="float64"))
    for pol in ("vv", "vh"):
        cols = _curve_cols(table, pol)
        if cols and np.isfinite(table[cols].to_numpy()).any():
            sar_doys = _doys(cols)
            sar = table[cols].to_numpy(dtype="float64")
            for crop, st in calendar.crops.items():
                win = (sar_doys >= st.peak.start - 10) & (sar_doys <= st.peak.end + 10)
                if win.any():
                    with np.errstate(all="ignore"):
                        v = np.nanmean(np.where(np.isfinite(sar[:, win]), sar[:, win], np.nan), 1)
                    feats[f"sarpeak|{pol}_{crop}"] = np.nan_to_num(v, nan=float(np.nanmean(v)))
    for pol in ("vv", "vh"):
        cols = _curve_cols(table, pol)
        if cols and np.isfinite(table[cols].to_numpy()).any():
            with np.errstate(all="ignore"):
                top = np.nanmax(table[cols].to_numpy(dtype="float64"), axis=1)
            feats[f"canopy|{pol}_max"] = np.nan_to_num(top, nan=float(np.nanmedian(top)))
    fit = template_fit(ndvi, doys, calendar)
    for j, crop in enumerate(calendar.names):
        feats[f"calendar|{crop}"] = fit[:, j]
    return pd.DataFrame(feats, index=table.index)


#: Relative weight of each feature group in the propagation distance. Set on the DEMO archive
#: (a DEMO constant): every group the same drops DEMO 2022 to 0.567, and weights learned from
#: the season's labels were tried and not kept (docs/agri.md, "Tried and not kept: feature
#: weights learned from the season's known crops").
GROUP_WEIGHTS = {
    "ndvi": 1.0,
    "vv": 0.5,
    "vh": 0.7,
    "sarpeak": 0.7,
    "refl": 0.3,
    "sarstat": 0.5,
    "terrain": 0.1,
    "calendar": 0.7,
    "canopy": 1.0,
}


def _standardise(feats: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    center = feats.median()
    scale = ((feats.quantile(0.9) - feats.quantile(0.1)) / 2.56).where(lambda s: s > 1e-9, 1.0)
    groups = pd.Series([c.split("|")[0] for c in feats.columns], index=feats.columns)
    size = groups.map(groups.value_counts())
    # np.sqrt of a Series is a Series (__array_ufunc__); numpy's stubs say ndarray
    weights = groups.map(GROUP_WEIGHTS).fillna(0.5) / cast(pd.Series, np.sqrt(size))
    return center, scale, weights


def _design(feats: pd.DataFrame, model: CropModel) -> np.ndarray:
    z = (feats[model.center.index] - model.center) / model.scale * model.weights
    return np.clip(z.to_numpy(dtype="float64"), -10, 10)


def calendar_rules(feats: pd.DataFrame) -> pd.DataFrame:
    """Each calendar rule's verdict per parcel (bool columns ``never_bare``, ``never_green``,
    ``no_template_fits``) from :func:`crop_features`: NDVI never below ``BARE_NDVI``; never
    green (NDVI never above ``GREEN_NDVI``; with SAR, smoothed VH rising by less than
    ``CANOPY_VH_DB`` over the season: with sparse optical dates the sampled NDVI may miss the
    peak, and a parcel whose VH rises grows a canopy); no crop template correlating at least
    ``MIN_TEMPLATE_CORR``."""
    nd = feats[[c for c in feats.columns if c.startswith("ndvi|")]].to_numpy()
    fit = feats[[c for c in feats.columns if c.startswith("calendar|")]].to_numpy()
    never_green = nd.max(axis=1) < GREEN_NDVI
    vh = feats[[c for c in feats.columns if c.startswith("vh|")]].to_numpy()
    if vh.shape[1]:
        never_green = vh.max(axis=1) - vh.min(axis=1) < CANOPY_VH_DB
    return pd.DataFrame(
        {
            "never_bare": nd.min(axis=1) > BARE_NDVI,
            "never_green": never_green,
            "no_template_fits": fit.max(axis=1) < MIN_TEMPLATE_CORR,
        },
        index=feats.index,
    )


def calendar_non_crop(table: pd.DataFrame, feats: pd.DataFrame) -> pd.Series:
    """Parcels the calendar rules out as annual crops (bool per row): any rule of
    :func:`calendar_rules` (never bare, never green, or no crop template fits)."""
    return calendar_rules(feats).any(axis=1)


def _confident_crops(
    pseudo: np.ndarray, conf: np.ndarray, labelled: np.ndarray, n_crops: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fit, present)``: the confident (or labelled) crop parcels and their crop indices; None
    with fewer than two crops or a crop under ``EM_MIN_CLASS`` confident parcels."""
    fit = (pseudo < n_crops) & ((conf >= MIN_CONFIDENCE) | (labelled >= 0))
    present = np.unique(pseudo[fit])
    counts = np.array([(pseudo[fit] == k).sum() for k in present])
    if len(present) < 2 or counts.min() < EM_MIN_CLASS:
        return None
    return fit, present


def accept_unseeded_crops(
    x: np.ndarray,
    pseudo: np.ndarray,
    conf: np.ndarray,
    labelled: np.ndarray,
    n_crops: int,
    *,
    quantile: float = CROP_ACCEPT_QUANTILE,
) -> np.ndarray:
    """Crop or other, decided by the season's own crops: parcels that label spreading made
    "other" but that are no non-crop seed join their nearest crop when they are typical of it.

    Label spreading decides crop against other by graph proximity: thousands of non-crop seeds
    (the calendar rules: grass, forest, built-up) against three labels per crop, so a cluster of
    one crop that lies fewer graph hops from grass seeds than from its labels goes to "other"
    although no rule rules it out (under cloud, 18-21 % of the pure cotton parcels of DEMO 2024).
    Here each crop is the model of :func:`refine_crops_em`: on the discriminant axes of the
    confident crop parcels, a mean per crop and one covariance pooled over the crops. A
    candidate joins the crop of smallest squared Mahalanobis distance relative to that crop's
    own ``quantile`` of its confident parcels' distances, when that ratio is at most 1 (a 5 %
    test against the crop's own distribution; no constant from elsewhere). Non-crop seeds
    (``labelled == n_crops``) and parcels typical of no crop stay "other". The axes are the
    crops' (``n_crops - 1`` of them): a parcel that differs from a crop only along a direction
    no pair of crops differs by is not told apart here; the calendar rules see those (a flat
    VH curve, no bare date, no crop template).
    ``x``: (parcel, feature) design; ``pseudo``: class per parcel (crops ``0..n_crops-1``,
    ``n_crops`` = other); ``labelled``: class of labelled or seeded parcels, -1 elsewhere.
    Returns the new class per parcel.
    """
    if not 0.0 < quantile < 1.0:
        raise BadInputError("quantile", quantile, "a probability strictly between 0 and 1")
    out = pseudo.copy()
    cand = (pseudo == n_crops) & (labelled != n_crops)
    if not cand.any():
        return out
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    crops = _confident_crops(pseudo, conf, labelled, n_crops)
    if crops is None:
        return out
    fit, present = crops
    z = LinearDiscriminantAnalysis().fit(x[fit], pseudo[fit]).transform(x)
    means = np.stack([z[fit & (pseudo == k)].mean(axis=0) for k in present])
    resid = np.concatenate([z[fit & (pseudo == k)] - means[i] for i, k in enumerate(present)])
    cov = resid.T @ resid / len(resid) + 1e-6 * np.eye(z.shape[1])
    prec = np.linalg.inv(cov)
    d2 = np.stack([np.einsum("ij,jk,ik->i", z - m, prec, z - m) for m in means], axis=1)
    typical = np.array(
        [np.quantile(d2[fit & (pseudo == k), i], quantile) for i, k in enumerate(present)]
    )
    ratio = d2 / np.maximum(typical, 1e-12)
    best = ratio.argmin(axis=1)
    accept = cand & (ratio.min(axis=1) <= 1.0)
    out[accept] = present[best[accept]]
    return out


def condition_offsets(resid: np.ndarray, xy: np.ndarray, bandwidth_m: float) -> np.ndarray:
    """Each parcel's crop-condition offset: the Gaussian-kernel mean of the OTHER parcels'
    residuals around it (leave-one-out Nadaraya-Watson), float64 (parcel, axis).

    ``resid``: (parcel, axis) residuals against each parcel's crop mean; ``xy``: (parcel, 2)
    centroids (m, a projected CRS); ``bandwidth_m``: the kernel's standard deviation (m). The
    kernel runs on a grid of ``bandwidth_m / CONDITION_CELLS_PER_BANDWIDTH`` cells
    (``scipy.ndimage.gaussian_filter``, truncated at 3 sigma), so the cost grows with the area
    and the parcels, not with their pairs; a parcel's own weight on its cell is taken off. A
    parcel with no other parcel within reach gets no offset (0).
    """
    from scipy.ndimage import gaussian_filter

    if bandwidth_m <= 0:
        raise BadInputError("bandwidth_m", bandwidth_m, "a kernel width in metres > 0")
    cells = CONDITION_CELLS_PER_BANDWIDTH
    ij = np.floor((xy - xy.min(axis=0)) / (bandwidth_m / cells)).astype(np.int64)
    shape = (int(ij[:, 0].max()) + 1, int(ij[:, 1].max()) + 1)
    flat = np.ravel_multi_index((ij[:, 0], ij[:, 1]), shape)

    def smooth(values: np.ndarray) -> np.ndarray:
        grid = np.bincount(flat, weights=values, minlength=shape[0] * shape[1])
        out = gaussian_filter(grid.reshape(shape), sigma=cells, mode="constant", truncate=3.0)
        return np.asarray(out).ravel()[flat]

    delta = np.zeros((6 * cells + 1, 6 * cells + 1))
    delta[3 * cells, 3 * cells] = 1.0
    kernel = gaussian_filter(delta, sigma=cells, mode="constant", truncate=3.0)
    own = float(kernel[3 * cells, 3 * cells])
    weight = smooth(np.ones(len(xy))) - own
    reach = weight > 1e-9 * own
    out = np.zeros_like(resid, dtype="float64")
    for k in range(resid.shape[1]):
        total = smooth(resid[:, k]) - own * resid[:, k]
        out[reach, k] = total[reach] / weight[reach]
    return out


def condition_bandwidths(xy: np.ndarray) -> tuple[float, ...]:
    """Candidate kernel widths (m) for parcels at ``xy`` (parcel, 2): ``CONDITION_MIN_SPACINGS``
    times the median distance between a parcel's centroid and its nearest neighbour's, doubled
    ``CONDITION_DOUBLINGS`` times (the scale follows the fields of the area, small or large)."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return ()
    dist, _ = cKDTree(xy).query(xy, k=2)
    spacing = float(np.median(np.asarray(dist)[:, 1]))
    if not spacing > 0:
        return ()
    first = CONDITION_MIN_SPACINGS * spacing
    return tuple(first * 2.0**i for i in range(CONDITION_DOUBLINGS + 1))


def choose_condition_bandwidth(resid: np.ndarray, xy: np.ndarray) -> float | None:
    """The bandwidth (m) of :func:`condition_bandwidths` whose leave-one-out offsets
    (:func:`condition_offsets`) predict the parcels' residuals best, or None when none predicts
    them better than no offset: residuals without a spatial structure get no condition model."""
    best_err, best = float((resid**2).sum(axis=1).mean()), None
    for bandwidth in condition_bandwidths(xy):
        err = float(((resid - condition_offsets(resid, xy, bandwidth)) ** 2).sum(axis=1).mean())
        if err < best_err:
            best_err, best = err, bandwidth
    return best


def refine_crops_em(
    x: np.ndarray,
    pseudo: np.ndarray,
    conf: np.ndarray,
    labelled: np.ndarray,
    n_crops: int,
    *,
    max_iter: int = EM_MAX_ITER,
    xy: np.ndarray | None = None,
) -> tuple[np.ndarray, int, float | None]:
    """Semi-supervised EM among the crops: move crop boundaries to the density valleys.

    The label-spreading graph runs in a space dominated by the NDVI curves, where crops of
    similar calendars (e.g. two summer crops) touch; its boundary then sits wherever the few
    labels put it. Here the parcels propagated to a crop are projected on the discriminant axes
    (``LinearDiscriminantAnalysis`` of the confident ones), one Gaussian per crop is fitted, and
    expectation-maximisation reassigns them (labelled parcels stay fixed) until no parcel moves.
    The Gaussians share one covariance: the discriminant axes are those of classes with a
    common covariance (LDA's model), and a crop whose propagated parcels are contaminated (a
    wider Gaussian) would otherwise swallow the edge of its neighbour's cloud: under cloud, the
    soybean Gaussian took a sixth of the corn parcels.

    Crop condition: with parcel centroids ``xy`` (m), each parcel's features are read relative
    to the condition of the crops around it. Soil, water and weather make every crop of an area
    thinner or denser alike, and a thinner canopy of one crop reads like another crop's (a weak
    corn canopy backscatters like soybean). Each iteration takes a parcel's offset as the
    kernel mean of its neighbours' residuals against their own crops' means
    (:func:`condition_offsets`, leave-one-out, the parcel itself never counts) and fits and
    assigns the crops on the features minus it; the bandwidth is chosen by leave-one-out
    cross-validation on the propagated crops' residuals (:func:`choose_condition_bandwidth`),
    and without spatial structure there is no offset.
    ``x``: (parcel, feature) design; ``pseudo``: class index per parcel (crops ``0..n_crops-1``,
    ``n_crops`` = other); ``labelled``: class index of labelled parcels, -1 elsewhere.
    Returns the refined class per parcel, how many parcels changed crop and the condition
    bandwidth (m; None: no condition offsets).
    """
    from scipy.stats import multivariate_normal
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    crop = pseudo < n_crops
    crops = _confident_crops(pseudo, conf, labelled, n_crops)
    if crops is None:
        return pseudo, 0, None
    fit, present = crops
    z = LinearDiscriminantAnalysis().fit(x[fit], pseudo[fit]).transform(x[crop])
    k_of = {int(k): i for i, k in enumerate(present)}
    start = np.array([k_of.get(int(k), -1) for k in pseudo[crop]])
    fixed = np.array([k_of.get(int(k), -1) for k in labelled[crop]])
    if (start < 0).any():  # a crop only in unconfident parcels: leave the propagation as is
        return pseudo, 0, None
    resp = np.eye(len(present))[start]
    bandwidth = None
    if xy is not None and np.isfinite(xy[crop]).all():
        xy_crop = xy[crop]
        means0 = (resp.T @ z) / resp.sum(axis=0)[:, None]
        bandwidth = choose_condition_bandwidth(z - resp @ means0, xy_crop)
    ridge = 1e-6 * np.eye(z.shape[1])
    offset = np.zeros_like(z)
    for _ in range(max_iter):
        logp = np.empty_like(resp)
        mass = resp.sum(axis=0)
        zc = z - offset
        means = (resp.T @ zc) / mass[:, None]
        # one covariance shared by the crops (the discriminant axes' own assumption)
        cov = ridge.copy()
        for j in range(len(present)):
            d = zc - means[j]
            cov += (resp[:, j, None] * d).T @ d / mass.sum()
        if bandwidth is not None:
            offset = condition_offsets(z - resp @ means, xy_crop, bandwidth)
            zc = z - offset
        for j in range(len(present)):
            prior = np.log(mass[j] / mass.sum())
            logp[:, j] = prior + multivariate_normal(means[j], cov).logpdf(zc)
        logp -= logp.max(axis=1, keepdims=True)
        new = np.exp(logp)
        new /= new.sum(axis=1, keepdims=True)
        new[fixed >= 0] = np.eye(len(present))[fixed[fixed >= 0]]
        moved = (new.argmax(axis=1) != resp.argmax(axis=1)).any()
        resp = new
        if not moved:
            break
    out = pseudo.copy()
    out[crop] = present[resp.argmax(axis=1)]
    return out, int((out != pseudo).sum()), bandwidth


def calendar_crop_seeds(feats: pd.DataFrame, crops: tuple[str, ...]) -> np.ndarray:
    """Class index (into ``crops``) of the parcels the calendar alone identifies, -1 elsewhere:
    best template correlation >= ``CALENDAR_SEED_CORR`` and ahead of the second best by
    ``CALENDAR_SEED_MARGIN``."""
    fit = feats[[f"calendar|{c}" for c in crops]].to_numpy()
    out = np.full(len(feats), -1)
    if fit.shape[1] < 2:
        return out
    ranked = np.sort(fit, axis=1)
    sure = (ranked[:, -1] >= CALENDAR_SEED_CORR) & (
        ranked[:, -1] - ranked[:, -2] >= CALENDAR_SEED_MARGIN
    )
    out[sure] = fit.argmax(axis=1)[sure]
    return out


def _check_labels(
    table: pd.DataFrame, labels_by_parcel: dict[int, str], crops: tuple[str, ...]
) -> None:
    unknown = sorted({str(v) for v in labels_by_parcel.values()} - set(crops))
    if unknown:
        raise BadInputError("labels.crop", unknown, f"crop names of the calendar: {list(crops)}")
    missing = [k for k in labels_by_parcel if k not in table.index]
    if missing:
        raise BadInputError(
            "labels", missing[:5], "labels on parcels of the table (inside the processed area)"
        )
    counts = Counter(labels_by_parcel.values())
    short = {c: counts.get(c, 0) for c in crops if counts.get(c, 0) < MIN_PER_CROP}
    if short:
        raise BadInputError(
            "labels",
            short,
            f">= {MIN_PER_CROP} labelled parcels for every crop of {list(crops)} "
            f"(got {len(labels_by_parcel)} labelled parcels)",
        )


def transfer_row_labels(
    x_parcels: np.ndarray,
    parcel_ids: pd.Index,
    x_rows: np.ndarray,
    crops: pd.Series,
    labels_by_parcel: dict[int, str],
    *,
    xy_parcels: np.ndarray | None = None,
    xy_rows: np.ndarray | None = None,
) -> dict[int, str]:
    """``labels_by_parcel`` plus, for each label row (design ``x_rows``, crop ``crops``), its
    crop on the nearest parcel (design ``x_parcels``) that no other label holds.

    A label's own window describes its field, but a window of a few dozen pixels is noisier
    than a parcel and falls outside the parcels' neighbourhood graph (no parcel counts it among
    its nearest neighbours, so label spreading carries nothing from it); the parcel most like
    it is a whole field of the same crop, inside the graph.

    With centroids (``xy_parcels``, ``xy_rows``: (n, 2) m), the parcel is sought among those of
    the window's own area first: within the narrowest crop-condition kernel
    (:func:`condition_bandwidths`, ``CONDITION_MIN_SPACINGS`` median centroid spacings). Crops
    of one area share its condition; across the season a window of a thin cotton canopy reads
    like corn elsewhere, and its label would teach cotton to a corn field. A window with no
    free parcel in its area looks across the season."""
    from scipy.spatial import cKDTree
    from sklearn.neighbors import NearestNeighbors

    out = dict(labels_by_parcel)
    if not len(x_rows) or not len(x_parcels):
        return out
    names = crops.astype(str).to_numpy()
    todo = np.ones(len(x_rows), dtype=bool)
    if xy_parcels is not None and xy_rows is not None and np.isfinite(xy_parcels).all():
        tree = cKDTree(xy_parcels)
        radius = condition_bandwidths(xy_parcels)[0] if len(xy_parcels) > 1 else 0.0
        for r in np.flatnonzero(np.isfinite(xy_rows).all(axis=1)):
            near = np.asarray(tree.query_ball_point(xy_rows[r], radius), dtype=int)
            near = near[[parcel_ids[i] not in out for i in near]] if len(near) else near
            if len(near):
                dist = np.linalg.norm(x_parcels[near] - x_rows[r], axis=1)
                out[parcel_ids[near[dist.argmin()]]] = names[r]
                todo[r] = False
    if not todo.any():
        return out
    k = min(len(x_parcels), int(todo.sum()) + len(out) + 1)
    _, nearest = NearestNeighbors(n_neighbors=k).fit(x_parcels).kneighbors(x_rows[todo])
    for candidates, crop in zip(nearest, names[todo], strict=True):
        for i in candidates:
            pid = parcel_ids[i]
            if pid not in out:
                out[pid] = crop
                break
    return out


def mean_label_distribution(dists: list[np.ndarray]) -> np.ndarray:
    """Mean of label-spreading distributions (parcel, class) over the graphs that reach each
    parcel.

    A graph of k nearest neighbours need not be connected: a cluster of parcels no labelled
    parcel reaches at that size comes out of label spreading with a row of zeros, which says
    nothing about its crop (it is not a vote for "none"). Averaged with the zeros, a cluster
    that one size of four reaches gets a quarter of its confidence and falls out of the
    self-training set, whatever the graphs that reach it say. Rows no graph reaches stay zero.
    """
    stack = np.asarray(dists, dtype="float64")
    reached = (stack.sum(axis=2) > 0).sum(axis=0)
    return stack.sum(axis=0) / np.maximum(reached, 1)[:, None]


def spread_labels(
    dist: np.ndarray, classes: np.ndarray, n_crops: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class and confidence per parcel from label distributions (parcel, class) whose columns
    are ``classes`` (crop indices, ``n_crops`` = other): the most probable class and its
    probability. A parcel no graph reaches (a cluster holding no labelled or seeded parcel)
    has a row of zeros, which is no vote for the first class: it is "other" with confidence
    0, so that only the crops' own typicality test (:func:`accept_unseeded_crops`) can make it
    a crop. Taken as the first crop, such a cluster went to whichever crop the EM found
    nearest and taught the classifier that crop: on the DEMO truth parcels a deciduous forest
    of 18 km2 became cotton or wheat."""
    pseudo = np.asarray(classes)[dist.argmax(axis=1)]
    pseudo[dist.sum(axis=1) <= 0] = n_crops
    return pseudo, dist.max(axis=1)


def fit_crop_model(
    table: pd.DataFrame,
    labels_by_parcel: dict[int, str],
    calendar: CropCalendar,
    *,
    n_neighbors: int | tuple[int, ...] = GRAPH_NEIGHBOURS,
    alpha: float = 0.2,
    seed: int = 0,
    labelled: pd.DataFrame | None = None,
) -> CropModel:
    """Fit the few-shot crop model on a season's parcel table (all parcels) and its labels.

    ``labels_by_parcel``: parcel id -> crop name (e.g. from
    :func:`pipelines.agri.labels.labels_to_parcels`); ``n_neighbors``: the label-spreading
    graph's neighbourhood size, or sizes whose label distributions are averaged; ``labelled``:
    rows of the table's columns plus ``crop`` that describe labelled fields themselves
    (:func:`pipelines.agri.labels.label_rows`: a label's own window of its parcel). Each such
    row labels the parcel most like it (:func:`transfer_row_labels`). Together >=
    ``MIN_PER_CROP`` per calendar crop.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.semi_supervised import LabelSpreading

    crops = calendar.names
    n_parcels = len(table)
    rows = labelled if labelled is not None and len(labelled) else None
    if rows is not None:
        # negative ids: never a parcel's; the rows are standardised with the parcels
        extra = rows.drop(columns=["crop"]).set_axis(
            pd.RangeIndex(-len(rows), 0, name=table.index.name)
        )
        row_labels = dict(zip(extra.index, rows["crop"].astype(str), strict=True))
        _check_labels(pd.concat([table, extra]), {**labels_by_parcel, **row_labels}, crops)
        table = pd.concat([table, extra])
    else:
        _check_labels(table, labels_by_parcel, crops)
    feats = crop_features(table, calendar)
    center, scale, weights = _standardise(feats)
    classes = (*crops, OTHER)
    model = CropModel(crops, calendar, center, scale, weights, None, classes)
    x = _design(feats, model)
    # parcel (and label window) centroids, m: None for tables written before they existed
    xy = (
        table[["centroid_x", "centroid_y"]].to_numpy(dtype="float64")
        if {"centroid_x", "centroid_y"} <= set(table.columns)
        else None
    )
    if rows is not None:
        labels_by_parcel = transfer_row_labels(
            x[:n_parcels],
            table.index[:n_parcels],
            x[n_parcels:],
            rows["crop"],
            labels_by_parcel,
            xy_parcels=None if xy is None else xy[:n_parcels],
            xy_rows=None if xy is None else xy[n_parcels:],
        )
        table, feats, x = table.iloc[:n_parcels], feats.iloc[:n_parcels], x[:n_parcels]
        xy = None if xy is None else xy[:n_parcels]
    area = table["area_px"].to_numpy()
    y = np.full(len(table), -1)
    non_crop = calendar_non_crop(table, feats).to_numpy()
    y[non_crop] = len(crops)
    calendar_seeds = calendar_crop_seeds(feats, crops)
    seeded = (calendar_seeds >= 0) & ~non_crop
    y[seeded] = calendar_seeds[seeded]
    pos = table.index.get_indexer(pd.Index(list(labels_by_parcel)))
    y[pos] = [crops.index(labels_by_parcel[k]) for k in labels_by_parcel]
    graph = (area >= MIN_GRAPH_PX) | (y >= 0)
    graph[pos] = True
    sizes = (n_neighbors,) if isinstance(n_neighbors, int) else tuple(n_neighbors)
    if not sizes or min(sizes) < 1:
        raise BadInputError("n_neighbors", n_neighbors, "graph sizes of at least 1 neighbour")
    dists = []
    for k in sizes:  # one graph per neighbourhood size, their label distributions averaged
        spread = LabelSpreading(kernel="knn", n_neighbors=k, alpha=alpha, max_iter=100)
        spread.fit(x[graph], y[graph])
        dists.append(spread.label_distributions_)
    dist = mean_label_distribution(dists)
    pseudo, conf = spread_labels(dist, spread.classes_, len(crops))
    unreached = conf <= 0  # a row of zeros: no graph reaches the parcel
    labelled_in_graph = y[graph] >= 0
    accepted = accept_unseeded_crops(x[graph], pseudo, conf, y[graph], len(crops))
    n_accepted = int((accepted != pseudo).sum())
    conf = np.where(accepted != pseudo, np.maximum(conf, MIN_CONFIDENCE), conf)
    refined, changed, bandwidth = refine_crops_em(
        x[graph], accepted, conf, y[graph], len(crops), xy=None if xy is None else xy[graph]
    )
    conf = np.where(refined != pseudo, np.maximum(conf, MIN_CONFIDENCE), conf)
    pseudo = refined
    train = conf >= MIN_CONFIDENCE
    train |= labelled_in_graph
    pseudo[labelled_in_graph] = y[graph][labelled_in_graph]
    xt, yt = x[graph][train], pseudo[train]
    wt = np.where(labelled_in_graph[train], 5.0, conf[train])
    clf = HistGradientBoostingClassifier(
        max_iter=60,
        learning_rate=0.15,
        max_leaf_nodes=15,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )
    clf.fit(xt, yt, sample_weight=wt)
    model.classifier = clf
    model.info = {
        "labels": len(labels_by_parcel),
        "non_crop_seeds": int(non_crop.sum()),
        "calendar_crop_seeds": {
            crops[int(k)]: int(v)
            for k, v in zip(*np.unique(calendar_seeds[seeded], return_counts=True), strict=True)
        },
        "graph_parcels": int(graph.sum()),
        "unreached_parcels": int(unreached.sum()),
        "self_training_parcels": int(train.sum()),
        "accepted_as_crop": n_accepted,
        "em_relabelled": changed,
        "condition_bandwidth_m": bandwidth,
        "graph_neighbours": list(sizes),
        "pseudo_label_counts": {
            classes[int(k)]: int(v) for k, v in zip(*np.unique(yt, return_counts=True), strict=True)
        },
    }
    return model


def predict_crops(model: CropModel, table: pd.DataFrame) -> pd.DataFrame:
    """Crop probabilities per parcel of ``table`` (index parcel_id).

    Columns ``p_<crop>`` float32 in [0, 1], ``cropland_probability`` (their sum), ``crop`` (name,
    "" where cropland_probability < 0.5) and ``crop_code`` (LandClass code, 0 none).
    """
    from pipelines.classes import LandClass

    feats = crop_features(table, model.calendar)
    x = _design(feats, model)
    proba = np.zeros((len(table), len(model.classes)))
    got = model.classifier.predict_proba(x)
    for j, k in enumerate(model.classifier.classes_):
        proba[:, int(k)] = got[:, j]
    n = len(model.crops)
    out = pd.DataFrame(index=table.index)
    for j, crop in enumerate(model.crops):
        out[f"p_{crop}"] = proba[:, j].astype("float32")
    cropland = proba[:, :n].sum(axis=1)
    out["cropland_probability"] = np.clip(cropland, 0, 1).astype("float32")
    best = proba[:, :n].argmax(axis=1)
    names = np.asarray(model.crops, dtype=object)[best]
    names[cropland < 0.5] = ""
    out["crop"] = names.astype(str)
    codes = {c.name.lower(): int(c) for c in LandClass}
    out["crop_code"] = np.array([codes.get(c, 0) for c in out["crop"]], dtype="uint8")
    return out


def crop_maps(parcel_ids: np.ndarray, predictions: pd.DataFrame) -> xr.Dataset:
    """Rasterise parcel predictions: ``crop_class`` uint8 (y, x) LandClass code (0 none),
    ``p_<crop>`` and ``cropland`` float32 (y, x) in [0, 1] (0 outside parcels)."""
    ids = np.asarray(parcel_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise BadInputError("parcel_ids", getattr(ids, "shape", ids), "a (y, x) integer array")
    uniq, inv = np.unique(ids, return_inverse=True)
    inv = inv.reshape(ids.shape)
    pos = predictions.index.get_indexer(pd.Index(uniq))
    found = (pos >= 0) & (uniq > 0)

    def _lut(col: str, dtype: str) -> np.ndarray:
        lut = np.zeros(len(uniq), dtype=dtype)
        lut[found] = predictions[col].to_numpy()[pos[found]]
        return lut[inv]

    data = {"crop_class": (("y", "x"), _lut("crop_code", "uint8"))}
    for col in predictions.columns:
        if col.startswith("p_"):
            data[col] = (("y", "x"), _lut(col, "float32"))
    data["cropland"] = (("y", "x"), _lut("cropland_probability", "float32"))
    return xr.Dataset(data)
