"""Crop calendar, labels, parcel tables and the few-shot crop model on small synthetic inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from shapely.geometry import box

from pipelines.agri.calendar import load_calendar, parse_calendar
from pipelines.agri.crop_type import (
    accept_unseeded_crops,
    calendar_crop_seeds,
    calendar_non_crop,
    choose_condition_bandwidth,
    condition_bandwidths,
    condition_offsets,
    crop_features,
    crop_maps,
    fit_crop_model,
    mean_label_distribution,
    predict_crops,
    refine_crops_em,
    spread_labels,
    transfer_row_labels,
)
from pipelines.agri.labels import (
    label_key,
    label_rows,
    label_windows,
    labels_to_parcels,
    read_labels,
)
from pipelines.agri.parcel_table import finish_table, merge_sums, parcel_sums, parcel_table
from pipelines.errors import BadInputError

CROPS = ("wheat", "corn", "rice", "cotton", "soybean")


def test_demo_calendar_templates_peak_in_their_windows():
    cal = load_calendar()
    assert cal.names == CROPS
    doy = np.arange(1, 366)
    for crop in CROPS:
        t = cal.template(crop, doy)
        st = cal.crops[crop]
        assert t[st.peak.start - 1 : st.peak.end].min() == pytest.approx(1.0)
        assert t[st.harvest.end + 5] == pytest.approx(0.0)
    assert cal.crops["wheat"].sow_doy().start < 0


def test_calendar_bad_window_names_field():
    with pytest.raises(BadInputError, match=r"crop_calendar\.crops\.corn\.peak"):
        parse_calendar(
            {"corn": {"sow": [150, 170], "peak": ["08-20", "07-01"], "harvest": [260, 280]}}
        )


def _fc(points):
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"crop": c},
                "geometry": {"type": "Point", "coordinates": xy},
            }
            for c, xy in points
        ],
    }


def test_read_labels_errors():
    aoi = box(114.0, 34.0, 115.0, 35.0)
    good = [(c, [114.5, 34.5]) for c in CROPS for _ in range(3)]
    gdf = read_labels(_fc(good), aoi, "EPSG:32650", CROPS)
    assert len(gdf) == 15 and gdf.crs.to_epsg() == 32650
    with pytest.raises(BadInputError, match=r"labels\.crop.*barley"):
        read_labels(_fc([*good, ("barley", [114.5, 34.5])]), aoi, "EPSG:32650", CROPS)
    with pytest.raises(BadInputError, match="outside"):
        read_labels(_fc([*good, ("corn", [120.0, 34.5])]), aoi, "EPSG:32650", CROPS)
    with pytest.raises(BadInputError, match=">= 3 labels"):
        read_labels(_fc(good[:-1]), aoi, "EPSG:32650", CROPS)


def _features(ids: np.ndarray, curves: dict[int, np.ndarray], doys: np.ndarray) -> xr.Dataset:
    ny, nx = ids.shape
    ndvi = np.zeros((len(doys), ny, nx), "float32")
    for pid, c in curves.items():
        ndvi[:, ids == pid] = c[:, None]
    refl = np.repeat(ndvi[:, None] * 0.3, 4, axis=1)
    sar = np.stack([ndvi * 5 - 14, ndvi * 8 - 22], axis=1)
    return xr.Dataset(
        {
            "ndvi": (("doy", "y", "x"), ndvi),
            "reflectance": (("doy", "band", "y", "x"), refl),
            "sar": (("doy", "pol", "y", "x"), sar.astype("float32")),
            "slope": (("y", "x"), np.ones((ny, nx), "float32")),
            "hillshade": (("y", "x"), np.full((ny, nx), 0.7, "float32")),
            "valid_fraction": (("y", "x"), np.ones((ny, nx), "float32")),
        },
        coords={
            "doy": doys,
            "band": ["B02", "B03", "B04", "B08"],
            "pol": ["VV", "VH"],
            "y": 5_000_000.0 - 10.0 * np.arange(ny) - 5.0,
            "x": 400_000.0 + 10.0 * np.arange(nx) + 5.0,
        },
    )


def test_parcel_table_means_and_tiles_merge():
    doys = np.arange(60, 331, 10)
    ids = np.zeros((8, 8), np.int64)
    ids[:4, :] = 1
    ids[4:, :6] = 2
    curves = {1: np.linspace(0.1, 0.8, len(doys)), 2: np.full(len(doys), 0.3)}
    feats = _features(ids, curves, doys)
    tab = parcel_table(feats, ids)
    assert list(tab.index) == [1, 2]
    assert tab.loc[1, "area_px"] == 32 and tab.loc[2, "area_px"] == 24
    assert tab.loc[1, "ndvi_d060"] == pytest.approx(0.1)
    assert tab.loc[1, "ndvi_max"] == pytest.approx(0.8)
    # centroids: the mean pixel centre in the grid's CRS (m), kept to the metre
    assert tab.loc[1, "centroid_x"] == pytest.approx(400_040.0, abs=1e-6)
    assert tab.loc[1, "centroid_y"] == pytest.approx(4_999_980.0, abs=1e-6)
    assert tab.loc[2, "centroid_x"] == pytest.approx(400_030.0, abs=1e-6)
    # two tiles, parcel 1 split by the tile edge
    parts = [
        parcel_sums(feats.isel(x=slice(0, 4)), ids[:, :4]),
        parcel_sums(feats.isel(x=slice(4, 8)), ids[:, 4:]),
    ]
    merged = finish_table(merge_sums(parts))
    pd.testing.assert_frame_equal(merged, tab)
    with pytest.raises(BadInputError, match="parcel_ids"):
        parcel_table(feats, ids[:4])


def _synthetic_table(n_per: int = 40, seed: int = 0) -> tuple[pd.DataFrame, dict[int, str]]:
    cal = load_calendar()
    rng = np.random.default_rng(seed)
    doys = np.arange(60, 331, 10)
    rows, truth = [], {}
    pid = 1
    for crop in (*CROPS, "forest"):
        for _ in range(n_per):
            if crop == "forest":
                nd = 0.5 + 0.35 * np.exp(-(((doys - 200) / 70.0) ** 2))
            else:
                nd = 0.16 + (0.7 + rng.normal(0, 0.03)) * cal.template(
                    crop, doys - rng.normal(0, 4)
                )
            nd = nd + rng.normal(0, 0.02, len(doys))
            vh = -22 + 8 * nd + (2.0 if crop == "corn" else 0.0) + rng.normal(0, 0.3, len(doys))
            if crop == "rice":
                vh[(doys >= 150) & (doys <= 190)] -= 6
            row = {f"ndvi_d{d:03d}": v for d, v in zip(doys, nd, strict=False)}
            row |= {f"vh_d{d:03d}": v for d, v in zip(doys, vh, strict=False)}
            row |= {f"vv_d{d:03d}": v + 7 for d, v in zip(doys, vh, strict=False)}
            row |= {"area_px": 100, "vh_early_min": vh[(doys >= 130) & (doys <= 200)].min()}
            rows.append(pd.Series(row, name=pid))
            truth[pid] = crop
            pid += 1
    return pd.DataFrame(rows).rename_axis("parcel_id"), truth


def _first_three_per_crop(truth: dict[int, str]) -> dict[int, str]:
    """The survey of the synthetic table: its first 3 parcels of every crop."""
    labels: dict[int, str] = {}
    for crop in CROPS:
        labels |= {k: crop for k in [k for k, v in truth.items() if v == crop][:3]}
    return labels


def test_few_shot_crop_model_on_synthetic_parcels():
    table, truth = _synthetic_table()
    cal = load_calendar()
    labels = _first_three_per_crop(truth)
    model = fit_crop_model(table, labels, cal)
    pred = predict_crops(model, table)
    p = pred[[f"p_{c}" for c in CROPS]].to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p.sum(axis=1), pred["cropland_probability"], atol=1e-5)
    true = pd.Series(truth)
    crops_ok = (pred["crop"] == true.where(true != "forest", "")).mean()
    assert crops_ok >= 0.9
    assert model.info["graph_neighbours"] == [8, 10, 12, 15]  # label distributions averaged
    one = fit_crop_model(table, labels, cal, n_neighbors=10)
    assert one.info["graph_neighbours"] == [10]
    with pytest.raises(BadInputError, match="n_neighbors"):
        fit_crop_model(table, labels, cal, n_neighbors=())

    ids = np.array([[1, 1, 0], [41, 41, 201]])
    maps = crop_maps(ids, pred)
    assert maps["crop_class"].dtype == np.uint8 and maps["crop_class"].values[0, 2] == 0


@pytest.mark.slow
def test_crop_model_does_not_depend_on_the_parcels_order():
    # over 10,000 parcels scikit-learn's gradient boosting would hold out a random tenth of
    # them, chosen by row position, to stop early: the crops then changed with the table's order
    table, truth = _synthetic_table(n_per=1700)
    cal = load_calendar()
    labels = _first_three_per_crop(truth)
    pred = predict_crops(fit_crop_model(table, labels, cal, n_neighbors=10), table)
    shuffled = table.iloc[np.random.default_rng(1).permutation(len(table))]
    again = predict_crops(fit_crop_model(shuffled, labels, cal, n_neighbors=10), table)
    pd.testing.assert_frame_equal(again, pred)


def test_label_distributions_are_averaged_over_the_graphs_that_reach_a_parcel():
    """A graph that leaves a parcel unreached (a row of zeros) casts no vote: a cluster that
    one neighbourhood size of two reaches keeps that size's confidence (np.mean halved it)."""
    one = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.8, 0.0]])
    two = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.6, 0.4]])
    out = mean_label_distribution([one, two])
    np.testing.assert_allclose(
        out, [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.7, 0.2]]
    )
    np.testing.assert_allclose(mean_label_distribution([one]), one)


def test_a_parcel_no_graph_reaches_is_no_crop_by_default():
    """A row of zeros (a cluster with no labelled or seeded parcel) is no vote for the first
    crop: it is "other" with no confidence, left to the crops' typicality test."""
    dist = np.array([[0.1, 0.7, 0.2], [0.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    pseudo, conf = spread_labels(dist, np.array([0, 1, 2]), n_crops=2)
    np.testing.assert_array_equal(pseudo, [1, 2, 0])
    np.testing.assert_allclose(conf, [0.7, 0.0, 0.5])
    # without non-crop seeds the graph's classes are the crops only: "other" is still n_crops
    pseudo, _ = spread_labels(dist[:, :2], np.array([0, 1]), n_crops=2)
    np.testing.assert_array_equal(pseudo, [1, 2, 0])


def test_a_label_window_goes_to_a_parcel_of_its_own_area_first():
    """A cotton window in a weak area reads like a corn field far away; with centroids its label
    goes to the parcel most like it among those of its own area (within the narrowest
    crop-condition kernel), without them to the nearest in features across the season."""
    xy_parcels = np.array(
        [[0.0, 0.0], [100.0, 0.0]] + [[10_000.0 + 100 * i, 0.0] for i in range(8)]
    )
    x_parcels = np.array([[1.0, 0.0], [1.2, 0.0]] + [[0.86 + 0.01 * i, 0.0] for i in range(8)])
    ids = pd.Index(np.arange(10, 20))
    x_rows, xy_rows = np.array([[0.85, 0.0]]), np.array([[50.0, 0.0]])
    crops = pd.Series(["cotton"])
    assert transfer_row_labels(x_parcels, ids, x_rows, crops, {}) == {12: "cotton"}
    local = transfer_row_labels(
        x_parcels, ids, x_rows, crops, {}, xy_parcels=xy_parcels, xy_rows=xy_rows
    )
    assert local == {10: "cotton"}
    # its area's parcels taken by other labels: it looks across the season
    held = {10: "wheat", 11: "wheat"}
    assert transfer_row_labels(
        x_parcels, ids, x_rows, crops, held, xy_parcels=xy_parcels, xy_rows=xy_rows
    ) == {**held, 12: "cotton"}


def test_crop_model_bad_labels():
    table, _truth = _synthetic_table(n_per=5)
    cal = load_calendar()
    with pytest.raises(BadInputError, match=">= 3 labelled parcels"):
        fit_crop_model(table, {1: "wheat", 2: "wheat", 3: "wheat"}, cal)
    with pytest.raises(BadInputError, match=r"labels\.crop"):
        fit_crop_model(table, {1: "barley"}, cal)


def test_labels_to_parcels_points_and_polygons():
    import geopandas as gpd
    from affine import Affine
    from shapely.geometry import Point

    ids = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    tr = Affine(10, 0, 0, 0, -10, 30)
    gdf = gpd.GeoDataFrame(
        {"crop": ["corn", "rice", "wheat"]},
        geometry=[Point(5, 25), Point(25, 15), box(0, 0, 30, 10)],
        crs="EPSG:32650",
    )
    assert labels_to_parcels(gdf, ids, tr) == {1: "corn", 2: "rice", 3: "wheat"}


def test_label_windows_keep_to_the_labelled_field_of_a_merged_parcel():
    import geopandas as gpd
    from affine import Affine
    from shapely.geometry import Point

    ids = np.zeros((12, 12), np.int64)
    ids[:, :] = 7  # one parcel merged over two fields
    ids[:, 10:] = 0  # a road
    tr = Affine(10, 0, 0, 0, -10, 120)
    gdf = gpd.GeoDataFrame(
        {"crop": ["corn", "rice", "wheat", "cotton"]},
        geometry=[Point(25, 95), Point(115, 5), box(60, 0, 120, 20), Point(500, 500)],
        crs="EPSG:32650",
    )
    win = label_windows(gdf, ids, tr, radius_px=2)
    corn = win == 1  # the point at row 2, col 2: a disc of radius 2 px, all on parcel 7
    assert corn.sum() == 13 and corn[2, 2] and not corn[5, 2] and not corn[2, 5]
    assert not (win == 2).any()  # on the road (id 0): no window
    wheat = win == 3  # the polygon's pixels on parcels only: rows 10-11, cols 6-9
    assert wheat.sum() == 8 and not wheat[:, 10:].any()
    assert not (win == 4).any()  # outside the raster
    doys = np.arange(60, 331, 10)
    feats = _features(ids, {7: np.linspace(0.1, 0.8, len(doys))}, doys)
    rows = label_rows(feats, gdf, ids, tr)
    assert list(rows["crop"]) == ["corn", "wheat"]
    assert list(rows.index) == [
        label_key("corn", gdf.geometry[0]),
        label_key("wheat", gdf.geometry[2]),
    ]
    assert rows.loc[label_key("corn", gdf.geometry[0]), "area_px"] == 13  # 20 m at 10 m: 2 px
    assert label_key("corn", gdf.geometry[0]) != label_key("rice", gdf.geometry[0])


def test_row_labels_go_to_the_nearest_free_parcels():
    x_parcels = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.2, 5.0]])
    ids = pd.Index([10, 11, 12, 13])
    x_rows = np.array([[4.9, 5.0], [5.0, 5.1], [0.1, 0.0]])
    crops = pd.Series(["corn", "corn", "rice"])
    out = transfer_row_labels(x_parcels, ids, x_rows, crops, {10: "wheat"})
    # the first corn row takes parcel 12, the second the next free one (13); parcel 10 is
    # held by a whole-parcel label, so the rice row takes 11
    assert out == {10: "wheat", 12: "corn", 13: "corn", 11: "rice"}
    assert transfer_row_labels(x_parcels, ids, x_rows[:0], crops[:0], {}) == {}


def test_labelled_rows_fit_like_labelled_parcels():
    """A label's own row (its window) is a labelled sample of the fit as a labelled parcel
    is: two soybean labels given as rows instead of parcels predict (almost) the same, and
    they count towards the minimum per crop; a row of an unknown crop is refused."""
    table, truth = _synthetic_table()
    cal = load_calendar()
    labels = _first_three_per_crop(truth)
    soy = [k for k, v in labels.items() if v == "soybean"][:2]
    as_parcels = predict_crops(fit_crop_model(table, labels, cal), table)["crop"]
    rows = table.loc[soy].assign(crop="soybean")
    rest = {k: v for k, v in labels.items() if k not in soy}
    model = fit_crop_model(table, rest, cal, labelled=rows)
    as_rows = predict_crops(model, table)["crop"]
    assert model.info["labels"] == len(labels)
    assert (as_rows == as_parcels).mean() >= 0.97
    true = pd.Series(truth)
    assert (as_rows[true == "soybean"] == "soybean").mean() >= 0.9
    with pytest.raises(BadInputError, match=">= 3 labelled parcels"):
        fit_crop_model(table, rest, cal, labelled=rows.iloc[:1])
    with pytest.raises(BadInputError, match=r"labels\.crop"):
        fit_crop_model(table, rest, cal, labelled=rows.assign(crop="barley"))


def test_em_refinement_moves_a_misplaced_boundary_to_the_valley():
    rng = np.random.default_rng(0)
    a = rng.normal([0.0, 0.0], 0.5, (300, 2))
    b = rng.normal([3.0, 0.0], 0.5, (300, 2))
    x = np.vstack([a, b])
    truth = np.r_[np.zeros(300, int), np.ones(300, int)]
    pseudo = (x[:, 0] > 0.4).astype(int)  # a boundary too close to class 0
    labelled = np.full(600, -1)
    labelled[[0, 1, 2, 300, 301, 302]] = truth[[0, 1, 2, 300, 301, 302]]
    conf = np.full(600, 0.9)
    out, changed, _ = refine_crops_em(x, pseudo, conf, labelled, 2)
    assert (pseudo != truth).sum() > 30
    assert changed > 0 and (out != truth).sum() < 10
    other = pseudo.copy()
    other[:5] = 2  # "other" parcels are left alone
    out2, _, _ = refine_crops_em(x, other, conf, labelled, 2)
    assert (out2[:5] == 2).all()


def test_em_refinement_keeps_a_contaminated_wide_crop_off_its_neighbour():
    # crop 1's propagated parcels include a wide spread of mixed ones around it: a Gaussian of
    # its own would be wide enough to take the tail of crop 0; the shared covariance does not
    rng = np.random.default_rng(0)
    a = rng.normal([0.0, 0.0], 0.5, (300, 2))
    b = rng.normal([3.0, 0.0], 0.5, (300, 2))
    mixed = rng.normal([3.0, 0.0], 2.5, (150, 2))
    x = np.vstack([a, b, mixed])
    pseudo = np.r_[np.zeros(300, int), np.ones(450, int)]
    labelled = np.full(750, -1)
    labelled[[0, 1, 2, 300, 301, 302]] = pseudo[[0, 1, 2, 300, 301, 302]]
    out, _, _ = refine_crops_em(x, pseudo, np.full(750, 0.9), labelled, 2)
    assert (out[:300] == 1).sum() <= 2
    assert (out[300:600] == 0).sum() <= 5


def test_condition_offsets_are_the_other_parcels_kernel_mean():
    # two groups 50 km apart: each parcel's offset is the mean of the others of its group,
    # its own residual never counts; a parcel alone in reach gets none
    rng = np.random.default_rng(0)
    near = rng.uniform(0, 50, (40, 2))
    xy = np.vstack([near, rng.uniform(0, 50, (40, 2)) + 50_000, [[0, 25_000]]])
    resid = np.r_[np.full(40, 1.0), np.full(40, -2.0), [5.0]][:, None] + 0.0
    resid[0, 0] = 100.0
    off = condition_offsets(resid, xy, 1000.0)
    assert off[1, 0] == pytest.approx((100.0 + 38 * 1.0) / 39, rel=0.02)
    assert off[0, 0] == pytest.approx(1.0, abs=1e-9)  # not its own 100
    assert np.allclose(off[40:80, 0], -2.0)
    assert off[80, 0] == 0.0
    with pytest.raises(BadInputError, match="bandwidth_m"):
        condition_offsets(resid, xy, 0.0)


def test_condition_bandwidths_follow_the_parcel_spacing():
    yy, xx = np.mgrid[0:20, 0:20]
    xy = np.c_[xx.ravel(), yy.ravel()] * 100.0  # parcels 100 m apart
    assert condition_bandwidths(xy) == pytest.approx((300.0, 600.0, 1200.0, 2400.0, 4800.0, 9600.0))
    assert condition_bandwidths(xy[:1]) == ()


def test_condition_bandwidth_only_for_residuals_with_spatial_structure():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 20_000, (2000, 2))
    noise = rng.normal(0, 1, (2000, 2))
    assert choose_condition_bandwidth(noise, xy) is None
    smooth = np.c_[np.sin(xy[:, 0] / 3000.0), np.cos(xy[:, 1] / 3000.0)] * 2 + noise
    assert choose_condition_bandwidth(smooth, xy) is not None


def test_em_reads_each_crop_relative_to_the_condition_of_its_area():
    # the western half grows every crop thinner (all features lower): its bright crop reads
    # like the dark crop of the east. Without centroids the EM sends most of the western bright
    # crop to the dark one; with them each parcel is read against its neighbours' condition
    rng = np.random.default_rng(2)
    n = 1600
    xy = rng.uniform(0, 20_000, (n, 2))
    truth = rng.integers(0, 2, n)
    cond = np.where(xy[:, 0] < 10_000, -2.0, 0.0)
    x = np.c_[2.0 * truth + cond, 1.0 * truth + 0.5 * cond] + rng.normal(0, 0.35, (n, 2))
    pseudo = (x[:, 0] > 1.0).astype(int)  # a first pass that ignores the condition
    labelled = np.full(n, -1)
    east = np.flatnonzero(xy[:, 0] > 10_000)
    for k in (0, 1):
        labelled[east[truth[east] == k][:3]] = k
    conf = np.full(n, 0.9)
    west_bright = (xy[:, 0] < 10_000) & (truth == 1)
    plain, _, none = refine_crops_em(x, pseudo, conf, labelled, 2)
    assert none is None
    assert (plain[west_bright] == 1).mean() < 0.3
    out, _, bandwidth = refine_crops_em(x, pseudo, conf, labelled, 2, xy=xy)
    assert bandwidth is not None
    assert (out[west_bright] == 1).mean() > 0.9
    assert (out == truth).mean() > 0.95


def test_a_crop_mix_that_differs_by_area_is_no_crop_condition():
    # the west grows mostly crop 0, the east mostly crop 1, every crop alike everywhere: the
    # residuals are taken against each parcel's own crop, so the mix itself moves nothing
    rng = np.random.default_rng(3)
    n = 1600
    xy = rng.uniform(0, 20_000, (n, 2))
    west = xy[:, 0] < 10_000
    truth = np.where(rng.random(n) < 0.9, np.where(west, 0, 1), np.where(west, 1, 0))
    x = np.c_[2.0 * truth, 1.0 * truth] + rng.normal(0, 0.5, (n, 2))
    pseudo = (x[:, 0] > 1.0).astype(int)
    labelled = np.full(n, -1)
    for k in (0, 1):
        labelled[np.flatnonzero(truth == k)[:3]] = k
    conf = np.full(n, 0.9)
    plain, _, _ = refine_crops_em(x, pseudo, conf, labelled, 2)
    out, _, _ = refine_crops_em(x, pseudo, conf, labelled, 2, xy=xy)
    assert (out == truth).mean() >= (plain == truth).mean() - 0.01
    assert (out[west] == 0).mean() == pytest.approx((truth[west] == 0).mean(), abs=0.02)


def test_unseeded_parcels_left_other_join_the_crop_they_are_typical_of():
    # crop 1 has a cluster the propagation sent to "other" (nearer the non-crop seeds in the
    # graph); those parcels lie inside crop 1's own spread and join it. Non-crop seeds stay
    # other, and so do unseeded parcels typical of no crop (grass away from the three crops)
    rng = np.random.default_rng(0)
    centres = ([0.0, 0.0], [4.0, 0.0], [2.0, 3.5])
    crops = [rng.normal(c, 0.5, (300, 2)) for c in centres]
    lost = rng.normal(centres[1], 0.5, (60, 2))
    seeds = rng.normal([9.0, 9.0], 0.5, (200, 2))
    grass = rng.normal([-3.0, 4.0], 0.5, (60, 2))
    x = np.vstack([*crops, lost, seeds, grass])
    pseudo = np.r_[np.zeros(300, int), np.ones(300, int), np.full(300, 2), np.full(320, 3)]
    labelled = np.full(len(x), -1)
    first = [0, 1, 2, 300, 301, 302, 600, 601, 602]
    labelled[first] = pseudo[first]
    labelled[960:1160] = 3  # the calendar's non-crop seeds
    conf = np.full(len(x), 0.9)
    out = accept_unseeded_crops(x, pseudo, conf, labelled, 3)
    assert (out[900:960] == 1).mean() >= 0.9
    assert (out[960:] == 3).all()
    assert (out[:900] == pseudo[:900]).all()
    with pytest.raises(BadInputError, match="quantile"):
        accept_unseeded_crops(x, pseudo, conf, labelled, 3, quantile=1.5)


def test_canopy_rise_in_sar_keeps_sparsely_observed_crops_off_the_non_crop_seeds():
    table, truth = _synthetic_table(n_per=5)
    cal = load_calendar()
    feats = crop_features(table, cal)
    crop_rows = [k for k, v in truth.items() if v != "forest"]
    assert not calendar_non_crop(table, feats).loc[crop_rows].any()
    flat = table.copy()
    vh_cols = [c for c in table.columns if c.startswith("vh_d")]
    flat[vh_cols] = -15.0  # no canopy growth in VH: perennial cover or built-up
    assert calendar_non_crop(flat, crop_features(flat, cal)).all()


def test_calendar_seeds_winter_wheat_but_not_look_alike_summer_crops():
    table, truth = _synthetic_table(n_per=8)
    cal = load_calendar()
    seeds = calendar_crop_seeds(crop_features(table, cal), cal.names)
    by_crop = pd.Series(seeds, index=table.index).groupby(pd.Series(truth)).agg(list)
    wheat = cal.names.index("wheat")
    assert np.mean(np.array(by_crop["wheat"]) == wheat) >= 0.75  # its curve fits wheat only
    for crop in ("corn", "soybean", "cotton", "forest"):  # summer calendars overlap: no seeds
        assert set(by_crop[crop]) <= {-1}, crop
    wrong = [s >= 0 and cal.names[s] != truth[k] for k, s in zip(table.index, seeds, strict=True)]
    assert not any(wrong)


def test_calendar_seeds_enter_the_propagation():
    table, truth = _synthetic_table()
    cal = load_calendar()
    labels = _first_three_per_crop(truth)
    model = fit_crop_model(table, labels, cal)
    n_wheat = sum(v == "wheat" for v in truth.values())
    assert model.info["calendar_crop_seeds"].get("wheat", 0) >= 0.75 * n_wheat
    assert set(model.info["calendar_crop_seeds"]) <= {"wheat", "rice"}


@pytest.mark.slow
def test_evaluate_crop_type_teaches_each_label_through_its_own_window(
    tiny_archive, tmp_path, monkeypatch
):
    """``terrapipe eval crop_type`` fits the model as the season run does: each label through
    its own window (written in the same pass over the tiles as the parcel table)."""
    from pipelines.agri.eval_crops import evaluate_crop_type, season_tables

    monkeypatch.setenv("TERRAPIPE_CACHE", str(tmp_path))
    result = evaluate_crop_type(str(tiny_archive), season=2025)
    assert result["labels"] >= 15
    assert result["labels_on_own_window"] >= 0.8 * result["labels"]
    assert 0.0 <= result["min_crop_precision_recall"] <= 1.0
    # the table alone (no labels) comes from the same cache, with no rows
    table, rows = season_tables(str(tiny_archive), 2025)
    assert len(table) == result["parcels"] and rows.empty
    # the crop model's spatial context: centroids in the grid's CRS (metres)
    assert table[["centroid_x", "centroid_y"]].notna().all().all()


def test_calendar_rules_on_the_real_land_use_polygons(real_data, tmp_path):
    # REAL (eo-learn, Slovenia, 2017, no SAR): the optical calendar rules leave every forest
    # polygon a crop candidate. The forest's NDVI falls to 0.19 (top of atmosphere) in March,
    # leaf-off or snow, so it is not "never bare", and its seasonal rise fits the maize
    # template (r 0.70). What rules forest out is the SAR canopy rule, which this patch cannot
    # measure. The cultivated land is never ruled out.
    from pipelines.agri.crop_type import BARE_NDVI, GREEN_NDVI
    from pipelines.agri.eval_crops import evaluate_calendar_rules_real

    got = evaluate_calendar_rules_real(real_data)
    assert got["season"] == 2017 and got["calendar"] == "central_europe_crops.yaml"
    classes = got["classes"]
    assert classes["cultivated land"]["ruled_out_share"] == 0.0
    forest = classes["forest"]
    assert forest["pixels"] == 7601 and forest["ruled_out_share"] <= 0.05
    assert forest["ndvi_min_median"] < BARE_NDVI < GREEN_NDVI < forest["ndvi_max_median"]
    for figures in classes.values():
        shares = [figures[f"{r}_share"] for r in ("never_bare", "never_green", "no_template_fits")]
        assert max(shares) <= figures["ruled_out_share"] <= min(1.0, sum(shares))
    # A calendar whose one crop grows in late winter fits none of the patch's summer curves.
    winter = tmp_path / "winter.yaml"
    winter.write_text(
        "crops:\n  kale:\n    sow: ['01-01', '01-10']\n    peak: ['02-01', '03-01']\n"
        "    harvest: ['03-10', '03-20']\n"
    )
    other = evaluate_calendar_rules_real(real_data, calendar=winter)["classes"]
    assert other["forest"]["no_template_fits_share"] == 1.0
