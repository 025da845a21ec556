"""SAR-optical fusion for cloudy seasons: multi-temporal speckle filter, optical weight by clear
dates, SAR in the parcel merging and splitting, SAR-fused NDVI curves in the crop features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipelines.agri.calendar import load_calendar
from pipelines.agri.crop_type import fit_crop_model, fuse_ndvi_with_sar, predict_crops
from pipelines.agri.eval_parcels import match_parcels
from pipelines.agri.features import (
    multitemporal_filter_np,
    optical_weight,
    optical_weight_by_date,
)
from pipelines.agri.parcels import (
    UNIMODAL_MERGE_D,
    UNIMODAL_SPLIT_D,
    ashman_d,
    curve_separation,
    group_calm_markers,
    merge_one_population,
    merge_weight,
    parcels,
    parcels_np,
    split_by_sar,
)
from pipelines.errors import BadInputError
from tests.unit.pipelines.agri.ndvi_curves import DOYS, crop_curve, grass_curve

CROPS = ("wheat", "corn", "rice", "cotton", "soybean")


def _speckle(db: np.ndarray, rng: np.random.Generator, enl: float = 4.4) -> np.ndarray:
    lin = np.power(10.0, db / 10.0) * rng.standard_gamma(enl, db.shape) / enl
    return (10.0 * np.log10(lin)).astype("float32")


def test_multitemporal_filter_keeps_levels_and_one_pixel_structure_and_cuts_speckle():
    rng = np.random.default_rng(0)
    n_t, ny, nx = 15, 40, 40
    truth = np.full((n_t, ny, nx), -15.0, dtype="float32")
    truth += np.linspace(-3.0, 3.0, n_t, dtype="float32")[:, None, None]  # a seasonal rise
    truth[:, :, 20] += 4.0  # a one-pixel-wide stripe, stable over the season
    noisy = _speckle(truth, rng)
    noisy[3, :5, :5] = np.nan  # outside one date's footprint
    out = multitemporal_filter_np(noisy)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert np.isnan(out[3, :5, :5]).all() and np.isfinite(out[4, :5, :5]).all()
    inside = np.s_[:, 5:35, 5:15]
    # speckle: ENL 4.4 per date gives ~2.2 dB; N dates of it ~ 2.2 / sqrt(15) dB
    assert noisy[inside].std(axis=(1, 2)).mean() > 1.8
    assert out[inside].std(axis=(1, 2)).mean() < 0.9
    # each date's level (a linear mean, as the filter keeps it) and the one-pixel stripe stay
    lin_mean = 10 * np.log10(np.power(10.0, out[inside] / 10.0).mean(axis=(1, 2)))
    np.testing.assert_allclose(lin_mean, truth[inside].mean(axis=(1, 2)), atol=0.5)
    contrast = np.median(out[:, 5:35, 20] - out[:, 5:35, 10])
    assert 2.5 < contrast < 4.5


def test_multitemporal_filter_is_the_quegan_formula_over_each_dates_observed_pixels():
    """J_k = E[I_k] / N * sum_i I_i / E[I_i], E the box mean of the date's observed pixels
    (reflected border): a NaN or an infinite dB enters no neighbour's local mean."""
    rng = np.random.default_rng(1)
    db = _speckle(np.full((4, 12, 12), -12.0, dtype="float32"), rng)
    db[1, 6, 6] = np.nan
    db[2, 3, 3] = -np.inf  # log of a zero power
    out = multitemporal_filter_np(db, window=5)
    ok = np.isfinite(db)
    lin = np.where(ok, np.power(10.0, db.astype("float64") / 10.0), 0.0)
    pad = np.pad(lin, ((0, 0), (2, 2), (2, 2)), mode="symmetric")
    cnt = np.pad(ok.astype("float64"), ((0, 0), (2, 2), (2, 2)), mode="symmetric")
    win = np.lib.stride_tricks.sliding_window_view
    local = win(pad, (5, 5), axis=(1, 2)).sum(axis=(-2, -1)) / win(cnt, (5, 5), axis=(1, 2)).sum(
        axis=(-2, -1)
    )
    ratio = np.where(ok, lin / local, np.nan)
    expected = 10 * np.log10(local * np.nanmean(ratio, axis=0))
    expected[~ok] = np.nan
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4, equal_nan=True)


def test_optical_weight_counts_clear_dates_against_the_calendar():
    w = optical_weight(np.array([0, 7, 14, 28, 40, np.nan]), 28)
    np.testing.assert_allclose(w, [0.0, 0.25, 0.5, 1.0, 1.0, 0.0])
    assert w.dtype == np.float32
    for bad in (0, 2.5, True):
        with pytest.raises(BadInputError, match="n_calendar"):
            optical_weight(np.zeros(3), bad)


def test_optical_weight_by_date_is_one_over_the_interpolation_gap_in_steps():
    t_obs = np.array([50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0])
    cal = np.arange(60.0, 121.0, 10.0)
    clear = np.ones((3, len(t_obs)), dtype=bool)
    clear[1, 2:6] = False  # a cloud gap: clear on day 60, then on 110 (50 days)
    clear[2] = False  # never clear
    w = optical_weight_by_date(clear, t_obs, cal, 10.0)
    assert w.shape == (3, len(cal)) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0], 1.0)  # a clear date every calendar step
    np.testing.assert_allclose(w[1], [1.0, 0.2, 0.2, 0.2, 0.2, 1.0, 1.0])
    np.testing.assert_array_equal(w[2], 0.0)
    # a value held beyond the last clear date is no observation of it
    late = optical_weight_by_date(np.array([True, True, False]), [60.0, 70.0, 80.0], [70, 80], 10)
    np.testing.assert_allclose(late, [1.0, 0.0])
    # a 15-day revisit on a 10-day calendar: each value interpolated over 15 days
    mid = optical_weight_by_date(np.ones(3, bool), [60.0, 75.0, 90.0], [65.0, 70.0, 80.0], 10)
    np.testing.assert_allclose(mid, 10 / 15)
    with pytest.raises(BadInputError, match="step_days"):
        optical_weight_by_date(clear, t_obs, cal, 0.0)
    with pytest.raises(BadInputError, match="clear"):
        optical_weight_by_date(clear[:, :3], t_obs, cal, 10.0)


def test_merge_weight_is_the_optical_boundary_when_dense_and_sar_can_only_add():
    assert merge_weight(0.02, 3.0, 1.0, 0.035, 1.0) == pytest.approx(0.02)
    assert merge_weight(0.02, float("nan"), 0.0, 0.035, 1.0) == pytest.approx(0.02)
    assert merge_weight(0.02, 2.0, 0.0, 0.035, 1.0) == pytest.approx(0.07)
    assert merge_weight(0.02, 2.0, 0.5, 0.035, 1.0) == pytest.approx(0.035)
    # a strong optical boundary is never weakened by agreeing SAR
    assert merge_weight(0.2, 0.0, 0.0, 0.035, 1.0) == pytest.approx(0.2)


def _two_field_sar(rng: np.random.Generator, step_db: float) -> np.ndarray:
    """(2 x 28, 30, 40) SAR curves: left and right halves differ by ``step_db`` in VH during the
    summer, speckled as after the multi-temporal filter (~0.6 dB)."""
    base = np.where((DOYS > 160) & (DOYS < 260), -14.0, -21.0).astype("float32")
    cube = np.empty((2 * len(DOYS), 30, 40), dtype="float32")
    cube[: len(DOYS)] = base[:, None, None] + 7.0
    cube[len(DOYS) :] = base[:, None, None]
    summer = np.flatnonzero((DOYS > 160) & (DOYS < 260)) + len(DOYS)
    cube[summer, :, 20:] += step_db
    return cube + rng.normal(0.0, 0.6, cube.shape).astype("float32")


def test_ashman_d_of_one_normal_population_split_in_two_is_the_unimodal_value():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 1))
    part = x[:, 0] > 0
    assert ashman_d(x, part) == pytest.approx(UNIMODAL_SPLIT_D, abs=0.03)


def test_split_by_sar_separates_two_fields_under_cloud_only():
    rng = np.random.default_rng(2)
    labels = np.ones((30, 40), dtype="int64")
    edge = np.full((30, 40), 0.01, dtype="float32")
    edge[:, 19:21] = 0.03  # the grass margin the clouds weakened below the edge threshold
    sar = _two_field_sar(rng, 3.0)
    cloudy = np.full((30, 40), 0.25, dtype="float32")
    out = split_by_sar(labels, edge, sar, cloudy)
    assert len(np.unique(out)) == 2
    left, right = np.unique(out[:, :19]), np.unique(out[:, 21:])
    assert len(left) == 1 and len(right) == 1 and left[0] != right[0]
    # fully observed: the NDVI curve decides alone, nothing splits
    np.testing.assert_array_equal(split_by_sar(labels, edge, sar, np.ones_like(cloudy)), labels)
    # one field (no SAR step), no optical data at all: speckle alone does not split it
    flat = _two_field_sar(rng, 0.0)
    np.testing.assert_array_equal(split_by_sar(labels, edge, flat, np.zeros_like(cloudy)), labels)


def test_dense_optical_parcels_are_unchanged_by_sar():
    rng = np.random.default_rng(3)
    cube = np.broadcast_to(crop_curve(220)[:, None, None], (len(DOYS), 40, 60)).copy()
    cube[:, :, 30:] = crop_curve(110)[:, None, None]
    cube[:, :, 29] = 0.3  # grass margin
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    sar = rng.normal(-15.0, 3.0, (2 * len(DOYS), 40, 60)).astype("float32")  # wild SAR
    dense = np.full((40, 60), len(DOYS), dtype="float32")
    kw = {"min_parcel_px": 10, "n_clusters": 4}
    base = parcels_np(cube, **kw)
    fused = parcels_np(cube, sar, dense, **kw)
    for a, b in zip(base, fused, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cloud_merged_fields_are_parted_by_their_sar_curves():
    rng = np.random.default_rng(4)
    # a corn and a cotton field whose NDVI differs only behind a cloud gap: the interpolated
    # curves are the same, and no margin shows between them
    cube = np.broadcast_to(crop_curve(215)[:, None, None], (len(DOYS), 30, 40)).copy()
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    sar = _two_field_sar(rng, 3.0)
    truth = np.where(np.arange(40) < 20, 1, 2)[None, :].repeat(30, axis=0)
    kw = {"min_parcel_px": 10, "n_clusters": 4}
    optical_only = parcels_np(cube, **kw)[0]
    assert match_parcels(truth, optical_only)["matched_fraction"] == 0.0
    cloudy = np.full((30, 40), 6.0, dtype="float32")  # 6 clear dates for 28 calendar dates
    fine = parcels_np(cube, sar, cloudy, **kw)[0]
    assert match_parcels(truth, fine)["matched_fraction"] == 1.0
    # the xarray stage passes the cube's sar and clear_dates through
    ds = xr.Dataset(
        {
            "ndvi": (("doy", "y", "x"), cube),
            "sar_filtered": (("doy", "pol", "y", "x"), np.stack([sar[:28], sar[28:]], axis=1)),
            "clear_dates": (("y", "x"), cloudy),
        },
        coords={"doy": DOYS, "pol": ["VV", "VH"]},
    )
    lazy = parcels(ds.chunk({"y": 15}), **kw)
    assert match_parcels(truth, lazy["fine"].values)["matched_fraction"] == 1.0


def _moments(x: np.ndarray) -> tuple[float, np.ndarray]:
    return float(len(x)), x.sum(axis=0)


def test_curve_separation_reads_one_field_below_two_and_two_fields_above():
    rng = np.random.default_rng(5)
    n_f = 56  # two polarisations on 28 calendar dates

    # curves whose dates are correlated, as a field's pixels' are (a level shared by the dates)
    def pixels(n: int, mean: np.ndarray) -> np.ndarray:
        return mean + rng.normal(0, 0.8, (n, 1)) + rng.normal(0, 0.6, (n, n_f))

    base = np.zeros(n_f)
    a, b = pixels(30, base), pixels(25, base)  # two small pieces of one field
    within = (np.cov(a.T) * 29 + np.cov(b.T) * 24) / 53
    d_one = curve_separation(*_moments(a), *_moments(b), within)
    # over 56 dates two pieces of one field differ by chance on every date: without taking
    # that expectation off, their distance alone would be sqrt(56 (1/30 + 1/25)) ~ 2 sd
    assert d_one < 1.0 < UNIMODAL_MERGE_D
    shifted = base.copy()
    shifted[20:40] += 1.5  # another crop: 1.5 dB apart over its summer dates
    c = pixels(25, shifted)
    within = (np.cov(a.T) * 29 + np.cov(c.T) * 24) / 53
    assert curve_separation(*_moments(a), *_moments(c), within) > UNIMODAL_MERGE_D
    # symmetric, and an empty region is infinitely far
    assert curve_separation(*_moments(c), *_moments(a), within) == pytest.approx(
        curve_separation(*_moments(a), *_moments(c), within)
    )
    assert curve_separation(0.0, np.zeros(n_f), *_moments(a), within) == np.inf


def test_calm_pieces_of_one_field_join_again_and_two_fields_stay_apart():
    """One marker over two fields joined through a gap in their border; the left field's calm
    area is itself in two pieces. Only the pieces' curves decide, not the edge along a cut."""
    rng = np.random.default_rng(6)
    ny, nx, n_f = 20, 40, 56
    markers = np.ones((ny, nx), dtype="int64")
    calm = np.zeros((ny, nx), dtype="int64")
    calm[1:9, 1:18], calm[11:19, 1:18] = 1, 2  # left field, cut across by a noisy row
    calm[1:19, 23:39] = 3  # right field
    edge = np.full((ny, nx), 0.01, dtype="float32")
    edge[9:11, :20] = 0.2  # the cut across the left field reads strong: it must not matter
    edge[:, 19:23] = 0.03
    level = np.where(np.arange(nx) < 20, 0.0, 2.0)[None, :]
    feats = (
        -15.0 + level[None] + rng.normal(0, 0.6, (n_f, ny, nx)) + rng.normal(0, 0.3, (1, ny, nx))
    ).astype("float32")
    feats[:20] -= 2.0 * level[None]  # the fields differ on some dates only
    out, apart = group_calm_markers(markers, calm, edge, feats)
    assert out[4, 5] == out[15, 5] > 0  # the left field's pieces: one marker again
    assert out[10, 30] != out[4, 5] and out[10, 30] > 0
    assert set(np.unique(out)) == {1, 2}  # every pixel of the marker keeps a marker
    assert apart == {(1, 2)}  # the two fields: kept apart by the region merging too
    # a marker with one calm piece, and markers without any, are kept as they are
    single = np.where(calm == 3, 3, 0)
    two = np.where(np.arange(nx)[None, :] < 20, 1, 2).repeat(ny, axis=0)
    for pieces in (single, np.zeros_like(two)):
        kept, none = group_calm_markers(two, pieces, edge, feats)
        np.testing.assert_array_equal(kept, two)
        assert none == set()


def test_pieces_of_one_field_without_a_border_strip_merge_and_fields_do_not():
    """Four regions side by side: a field in two pieces (0 and 1), then two fields of other SAR
    populations; only the two pieces merge, and only when no border strip separates them and
    their NDVI curves are in part interpolated."""
    rng = np.random.default_rng(8)
    ny, nx, n_f = 20, 48, 56
    labels = np.repeat(np.arange(nx)[None, :] // 12 + 1, ny, axis=0)
    level = np.array([0.0, 0.0, 0.0, 1.5, -1.5])[labels]  # regions 3 and 4: other fields
    sar = -15.0 + rng.normal(0, 0.6, (n_f, ny, nx)) + rng.normal(0, 0.3, (1, ny, nx))
    sar[20:40] += level[None]
    sar = sar.astype("float32")
    cloudy = np.full((ny, nx), 0.3, dtype="float32")
    no_strip = np.zeros((2, ny, nx), dtype=bool)
    out = merge_one_population(labels, sar, cloudy, no_strip)
    assert out[5, 3] == out[5, 15] and len(np.unique(out)) == 3
    # a border strip anywhere along their boundary: a border, whatever the curves say
    strip = no_strip.copy()
    strip[1, 7, 11] = True  # a strip across x, the axis of the pairs across this boundary
    assert len(np.unique(merge_one_population(labels, sar, cloudy, strip))) == 4
    with pytest.raises(BadInputError, match="strip"):
        merge_one_population(labels, sar, cloudy, no_strip[0])
    # observed curves: the optical boundary decides, no region merges here
    observed = np.ones((ny, nx), dtype="float32")
    assert len(np.unique(merge_one_population(labels, sar, observed, no_strip))) == 4


def _crop_fields_in_grass(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (doy, y, x) NDVI cube: one crop curve where ``truth`` > 0, grass elsewhere; and the
    crop curve."""
    crop = crop_curve(220)
    grass = grass_curve()
    cube = np.broadcast_to(grass[:, None, None], (len(DOYS), *truth.shape)).copy()
    cube[:, truth > 0] = crop[:, None]
    return cube, crop


def test_two_fields_of_one_crop_joined_through_a_wide_gap_part_by_their_sar():
    """Under cloud a gap in the grass border between two fields reads like the fields and joins
    their markers; the calm pieces of the two fields differ in their SAR curves by 0.6 dB over
    the summer (Ashman's D ~3: too little for the SAR split of one region, whose D is weighted
    by the cloud share) and stay two parcels, the region merging not rejoining them through the
    weak gap; with every calendar step observed the segmentation is the optical one."""
    rng = np.random.default_rng(10)
    ny, nx = 40, 62
    truth = np.zeros((ny, nx), dtype="int32")
    truth[1:39, 1:29], truth[1:39, 33:61] = 1, 2  # a border four pixels wide between them
    cube, crop = _crop_fields_in_grass(truth)
    cube[:, 16:24, 29:33] = crop[:, None, None]  # a gap of it alike to the fields
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    base = np.where((DOYS > 160) & (DOYS < 260), -14.0, -21.0).astype("float32")
    sar = np.empty((2 * len(DOYS), ny, nx), dtype="float32")
    sar[: len(DOYS)] = base[:, None, None] + 7.0
    sar[len(DOYS) :] = base[:, None, None]
    summer = np.flatnonzero((DOYS > 160) & (DOYS < 260)) + len(DOYS)
    sar[np.ix_(summer, np.arange(ny), np.arange(31, nx))] += 0.6  # another variety
    sar += rng.normal(0.0, 0.6, sar.shape).astype("float32")
    kw = {"min_parcel_px": 20, "n_clusters": 4}
    cloudy = np.full((ny, nx), 8.0, dtype="float32")
    fine = parcels_np(cube, sar, cloudy, **kw)[0]
    assert match_parcels(truth, fine)["matched_fraction"] == 1.0
    dense = np.full((ny, nx), 40.0, dtype="float32")
    np.testing.assert_array_equal(parcels_np(cube, sar, dense, **kw)[0], parcels_np(cube, **kw)[0])


def test_a_field_whose_calm_marker_narrows_to_one_pixel_stays_one_parcel_under_cloud():
    """Two strip fields 8 px wide; across the upper one a cloud artefact 4 px wide (its pixels'
    curves interpolated over other gaps: noisy) leaves one calm row through it, a bridge one
    pixel wide. With SAR the bridge is cut among the calm pieces, which one SAR population
    joins again: one parcel. Cut at the marker level first (as before), the two halves were
    two markers that nothing joined (matched 0.5)."""
    rng = np.random.default_rng(0)
    ny, nx = 24, 70
    truth = np.zeros((ny, nx), dtype="int32")
    truth[2:10, 2:68], truth[12:20, 2:68] = 1, 2
    cube, _ = _crop_fields_in_grass(truth)
    artefact = rng.normal(0.0, 0.08, (len(DOYS), 8, 4)).astype("float32")
    artefact[:, 3:6] = 0.0
    artefact[:, 3], artefact[:, 5] = 0.025, 0.025  # alike to the calm row, unlike the rest
    cube[:, 2:10, 34:38] += artefact
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    base = np.where((DOYS > 160) & (DOYS < 260), -14.0, -21.0).astype("float32")
    sar = np.empty((2 * len(DOYS), ny, nx), dtype="float32")
    sar[: len(DOYS)] = base[:, None, None] + 7.0
    sar[len(DOYS) :] = base[:, None, None]
    sar += rng.normal(0.0, 0.6, sar.shape).astype("float32")
    cloudy = np.full((ny, nx), 8.0, dtype="float32")
    fine = parcels_np(cube, sar, cloudy, min_parcel_px=20, n_clusters=4)[0]
    assert match_parcels(truth, fine)["matched_fraction"] == 1.0


def _table(seed: int = 0, n_per: int = 30) -> tuple[pd.DataFrame, dict[int, str]]:
    """Synthetic parcel table: NDVI from the calendar templates, VH/VV that follow the canopy
    with a crop-specific level, all parcels densely observed (28 clear dates)."""
    cal = load_calendar()
    rng = np.random.default_rng(seed)
    level = {"wheat": -2.0, "corn": 2.0, "rice": 0.0, "cotton": 0.0, "soybean": -1.0}
    rows, truth = [], {}
    for pid, crop in enumerate((c for c in CROPS for _ in range(n_per)), start=1):
        nd = 0.16 + 0.7 * cal.template(crop, DOYS - rng.normal(0, 4))
        nd = nd + rng.normal(0, 0.02, len(DOYS))
        vh = -22 + 8 * nd + level[crop] + rng.normal(0, 0.3, len(DOYS))
        if crop == "rice":
            vh[(DOYS >= 150) & (DOYS <= 190)] -= 6
        row = {f"ndvi_d{d:03d}": v for d, v in zip(DOYS, nd, strict=True)}
        row |= {f"vh_d{d:03d}": v for d, v in zip(DOYS, vh, strict=True)}
        row |= {f"vv_d{d:03d}": v + 7 for d, v in zip(DOYS, vh, strict=True)}
        row |= {"area_px": 100, "clear_dates": float(len(DOYS))}
        row |= {"vh_early_min": vh[(DOYS >= 130) & (DOYS <= 200)].min()}
        rows.append(pd.Series(row, name=pid))
        truth[pid] = crop
    return pd.DataFrame(rows).rename_axis("parcel_id"), truth


def test_fused_ndvi_keeps_dense_parcels_and_fills_unobserved_ones_from_sar():
    table, truth = _table()
    cols = [f"ndvi_d{d:03d}" for d in DOYS]
    ndvi = table[cols].to_numpy(dtype="float64")
    # every parcel fully observed: nothing changes
    np.testing.assert_array_equal(fuse_ndvi_with_sar(table, ndvi), ndvi)
    blind = [k for k, v in truth.items() if v == "corn"][-5:]
    table.loc[blind, "clear_dates"] = 0.0
    fused = fuse_ndvi_with_sar(table, ndvi)
    dense = ~table.index.isin(blind)
    np.testing.assert_array_equal(fused[dense], ndvi[dense])
    pos = table.index.get_indexer(blind)
    # a parcel with no clear date takes the NDVI curve its SAR predicts (the corn curve)
    assert np.abs(fused[pos] - ndvi[pos]).mean() < 0.05


def test_fused_ndvi_replaces_only_the_dates_a_cloud_gap_interpolated():
    table, _ = _table(seed=3)
    cols = [f"ndvi_d{d:03d}" for d in DOYS]
    true_ndvi = table[cols].to_numpy(dtype="float64")
    weights = pd.DataFrame(1.0, index=table.index, columns=[f"ndvi_weight_d{d:03d}" for d in DOYS])
    table = pd.concat([table, weights], axis=1)
    # every value observed: nothing changes, whatever clear_dates says
    table["clear_dates"] = 10.0
    np.testing.assert_array_equal(fuse_ndvi_with_sar(table, true_ndvi), true_ndvi)
    # a third of the parcels under a 60-day cloud gap (days 150..210): the optical curve is a
    # straight line there, the rest of the curve is measured
    gap = (DOYS > 150) & (DOYS < 210)
    cloudy = table.index[table.index % 3 == 0]
    seen = true_ndvi.copy()
    pos = table.index.get_indexer(cloudy)
    for i in pos:
        seen[i, gap] = np.interp(DOYS[gap], [150, 210], true_ndvi[i, [9, 15]])
        table.iloc[i, table.columns.get_indexer(weights.columns[gap])] = 10 / 60
    fused = fuse_ndvi_with_sar(table, seen)
    # measured dates stay exactly as measured, parcels without a gap stay whole
    np.testing.assert_array_equal(fused[:, ~gap], seen[:, ~gap])
    clear_rows = ~table.index.isin(cloudy)
    np.testing.assert_array_equal(fused[clear_rows], seen[clear_rows])
    # inside the gap the SAR brings the curve back towards the truth
    err_line = np.abs(seen[pos][:, gap] - true_ndvi[pos][:, gap]).mean()
    err_fused = np.abs(fused[pos][:, gap] - true_ndvi[pos][:, gap]).mean()
    assert err_fused < 0.5 * err_line


def test_a_parcel_with_no_clear_date_is_classified_from_sar():
    table, truth = _table(seed=5)
    cols = [f"ndvi_d{d:03d}" for d in DOYS]
    blind = {k: v for k, v in truth.items() if k % 10 == 7}  # a few parcels of every crop
    table.loc[list(blind), cols] = np.nan
    table.loc[list(blind), "clear_dates"] = 0.0
    labels: dict[int, str] = {}
    for crop in CROPS:
        labels |= {k: crop for k in [k for k, v in truth.items() if v == crop][:3]}
    model = fit_crop_model(table, labels, load_calendar())
    pred = predict_crops(model, table)
    got = pred.loc[list(blind), "crop"]
    assert (got == pd.Series(blind)).mean() >= 0.9


def test_season_features_count_clear_dates_and_filter_the_sar_for_the_segmentation():
    import dask.array as da

    from pipelines.agri.features import BGRN, season_features
    from pipelines.classes import SCL_CLOUD_HIGH, SCL_VEGETATION

    ny = nx = 12
    coords = {
        "y": 4_000_000.0 - 10.0 * (np.arange(ny) + 0.5),
        "x": 300_000.0 + 10.0 * (np.arange(nx) + 0.5),
    }
    dates = pd.DatetimeIndex(["2025-03-01", "2025-03-11", "2025-03-21", "2025-03-31"])
    s2 = np.zeros((4, 5, ny, nx), dtype="float32")
    s2[:, :4] = np.array([0.05, 0.08, 0.05, 0.4], dtype="float32")[None, :, None, None]
    s2[:, 4] = SCL_VEGETATION
    s2[2, 4] = SCL_CLOUD_HIGH  # 21 March cloudy
    s2_da = xr.DataArray(
        da.from_array(s2, chunks=(1, 5, 6, 6)),
        dims=("time", "band", "y", "x"),
        coords={"time": dates.values, "band": [*BGRN, "SCL"], **coords},
    )
    rng = np.random.default_rng(6)
    s1 = _speckle(np.full((4, 2, ny, nx), -15.0, dtype="float32"), rng)
    s1_da = xr.DataArray(
        da.from_array(s1, chunks=(1, 2, 6, 6)),
        dims=("time", "band", "y", "x"),
        coords={"time": dates.values, "band": ["VV", "VH"], **coords},
    )
    ds = season_features(s2_da, s1_da, None, 2025, start_doy=60, end_doy=90, step_days=5)
    ds = ds.compute()
    np.testing.assert_allclose(ds["clear_dates"].values, 3.0)
    # days 60, 70, 90 clear: 65 lies in a 10-day gap, 75..85 in a 20-day one (5-day steps)
    assert ds["ndvi_weight"].dims == ("doy", "y", "x")
    np.testing.assert_allclose(
        ds["ndvi_weight"].values[:, 3, 3], [1.0, 0.5, 1.0, 0.25, 0.25, 0.25, 1.0]
    )
    assert ds["sar_filtered"].dims == ("doy", "pol", "y", "x")
    # the unfiltered SAR is the calendar interpolation of the input; the filtered one is smoother
    np.testing.assert_allclose(ds["sar"].values[0], s1[0], atol=1e-5)
    assert ds["sar_filtered"].values.std() < 0.6 * ds["sar"].values.std()


def test_the_borders_a_cut_across_a_field_meets_at_its_ends_do_not_keep_its_pieces_apart():
    """A field 10 px wide along x, cut across at x = 24 into two regions, between two fields of
    other SAR populations; its long sides are border strips (rows 4 and 15, strips across y),
    which touch the cut at both ends. The pieces merge: a pair across the cut (along x) counts
    only strips across x. A strip across x along the cut keeps them apart."""
    rng = np.random.default_rng(3)
    ny, nx, n_f = 20, 48, 56
    labels = np.zeros((ny, nx), dtype="int64")
    labels[:4], labels[16:] = 3, 4  # the fields beside it
    labels[4:16, :24], labels[4:16, 24:] = 1, 2  # the field's two pieces, its borders included
    level = np.array([0.0, 0.0, 0.0, 1.5, -1.5])[labels]
    sar = -15.0 + rng.normal(0, 0.6, (n_f, ny, nx)) + rng.normal(0, 0.3, (1, ny, nx))
    sar[20:40] += level[None]
    sar = sar.astype("float32")
    cloudy = np.full((ny, nx), 0.3, dtype="float32")
    strip = np.zeros((2, ny, nx), dtype=bool)
    strip[0, [4, 15], :] = True  # the field's long sides: strips across y
    out = merge_one_population(labels, sar, cloudy, strip)
    assert out[10, 3] == out[10, 40] and len(np.unique(out)) == 3
    assert out[1, 3] != out[10, 3] and out[18, 3] != out[10, 3]
    # the same strips, with no axis told apart (both axes): the ends of the cut keep it
    assert len(np.unique(merge_one_population(labels, sar, cloudy, strip | strip[::-1]))) == 4
    # a strip across x along the cut: a border
    cut = strip.copy()
    cut[1, 4:16, 23] = True
    assert len(np.unique(merge_one_population(labels, sar, cloudy, cut))) == 4
