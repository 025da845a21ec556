"""parcels: two-level segmentation, nesting, polygons, GeoParquet, evaluation figures."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine

from pipelines.agri.eval_parcels import (
    boundary_agreement,
    edge_inside_parcels,
    evaluate_parcels_real,
    match_parcels,
    nesting,
    tile_offsets,
)
from pipelines.agri.parcels import (
    border_strip_strength_np,
    cut_along_border_lines,
    parcels,
    parcels_np,
    temporal_edge_strength,
)
from pipelines.agri.polygons import parcel_polygons, read_geoparquet, write_geoparquet
from pipelines.errors import BadInputError
from tests.unit.pipelines.agri.ndvi_curves import DOYS, crop_curve, grass_curve


def _scene(seed: int = 0) -> tuple[xr.Dataset, np.ndarray]:
    """64 x 64 px: 6 fields behind 1-px grass borders, two of them the same crop side by side,
    and a bare (never green) strip (7 phenologies); returns the feature cube and the truth ids."""
    rng = np.random.default_rng(seed)
    ny = nx = 64
    grass = grass_curve()
    truth = np.zeros((ny, nx), dtype="int32")
    fields = {
        1: ((1, 20), (1, 30), crop_curve(108)),  # wheat-like
        2: ((1, 20), (31, 63), crop_curve(108, 0.8)),  # same crop, next field along
        3: ((21, 40), (1, 30), crop_curve(220)),  # summer crop
        4: ((21, 40), (31, 63), crop_curve(214, 0.79, 45)),
        5: ((41, 56), (1, 63), crop_curve(232, 0.86)),
    }
    cube = np.broadcast_to(grass[:, None, None], (len(DOYS), ny, nx)).copy()
    for pid, ((r0, r1), (c0, c1), curve) in fields.items():
        truth[r0:r1, c0:c1] = pid
        cube[:, r0:r1, c0:c1] = curve[:, None, None]
    cube[:, 57:, :] = 0.08  # bare ground / built-up: never green, not a parcel
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    ds = xr.Dataset(
        {"ndvi": (("doy", "y", "x"), da.from_array(cube, chunks=(len(DOYS), 32, 32)))},
        coords={
            "doy": DOYS,
            "y": 4_000_000.0 - 10.0 * (np.arange(ny) + 0.5),
            "x": 300_000.0 + 10.0 * (np.arange(nx) + 0.5),
        },
        attrs={"season": 2025},
    )
    return ds, truth


@pytest.fixture(scope="module")
def scene():
    ds, truth = _scene()
    return ds, truth, parcels(ds, min_parcel_px=10, n_clusters=5).compute()


def test_fine_parcels_match_every_field(scene):
    _ds, truth, out = scene
    fine = out["fine"].values
    assert out["fine"].dtype == np.int32 and out["fine"].dims == ("y", "x")
    figures = match_parcels(truth, fine)
    assert figures["matched_fraction"] == 1.0
    assert figures["n_pred"] == 5  # no parcel on grass borders or on the bare strip
    assert figures["under_segmentation"] == 0.0
    # ids are 1..n
    assert sorted(np.unique(fine)) == list(range(fine.max() + 1))
    # the bare strip and the one-pixel borders are not parcels
    assert (fine[57:, :] == 0).all()
    assert (fine[20, 1:63] == 0).mean() > 0.9


def test_coarse_parcels_nest_and_join_same_crop_neighbours(scene):
    _, _truth, out = scene
    fine, coarse = out["fine"].values, out["coarse"].values
    assert nesting(fine, coarse) == 1.0
    assert coarse.max() < fine.max()
    # fields 1 and 2 (same crop) share a coarse parcel; 3 and 5 (different crops) do not
    assert coarse[10, 10] == coarse[10, 50] != 0
    assert coarse[30, 10] != coarse[48, 10]


def test_edge_strength_marks_the_borders(scene):
    ds, _truth, out = scene
    edge = out["temporal_edge_strength"].values
    lazy = temporal_edge_strength(ds)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.compute().values, edge)
    assert np.median(edge[20, 5:25]) > 3 * np.median(edge[5:15, 5:25])


def test_border_strips_are_found_and_narrow_fields_are_not():
    """Columns: field A | 2-px grass strip | field B | 1-px strip | 3-px field | 1-px strip | A."""
    a, b, narrow = crop_curve(214, 0.79, 45), crop_curve(220), crop_curve(108)
    g = grass_curve()
    cols = [a] * 8 + [g] * 2 + [b] * 8 + [g] + [narrow] * 3 + [g] + [a] * 8
    cube = np.stack(cols, axis=1)[:, None, :].repeat(12, axis=1)  # (doy, 12, 31)
    strip = border_strip_strength_np(cube)[6]
    flagged = set(np.flatnonzero(strip >= 0.04).tolist())
    assert {8, 9, 18, 22} <= flagged  # every strip pixel
    assert flagged.isdisjoint({19, 20, 21})  # the narrow field keeps its pixels
    assert flagged.isdisjoint(set(range(0, 7)) | set(range(11, 17)) | set(range(24, 31)))


def test_narrow_fields_under_cloud_keep_their_rims():
    """Fields three pixels wide behind 1-px grass margins, every pixel's curve off by 0.3 on
    three of its 28 dates (interpolated over cloud gaps: RMS 0.1 from any mean, median
    difference unchanged). The rims lie on edge ridges and are as far from the field's mean
    curve as a border's; they are the field, not its border: each narrow field stays one
    parcel with its three columns (removing ridge pixels far from the mean left the centre
    column alone, IoU 1/3)."""
    rng = np.random.default_rng(0)
    ny, nx = 48, 40
    grass = grass_curve()
    wide_a, narrow_b, narrow_c, wide_d = (
        crop_curve(108),
        crop_curve(220),
        crop_curve(150, 0.8),
        crop_curve(232, 0.86),
    )
    cols = [wide_a] * 12 + [grass] + [narrow_b] * 3 + [grass] + [narrow_c] * 3 + [grass]
    cols += [wide_d] * 12
    cube = np.broadcast_to(grass[:, None, None], (len(DOYS), ny, nx)).copy()
    truth = np.zeros((ny, nx), dtype="int32")
    field = 0
    for i, curve in enumerate(cols):
        cube[:, 4:44, 3 + i] = curve[:, None]
        if curve is not grass:
            field += 1 if i == 0 or cols[i - 1] is grass else 0
            truth[4:44, 3 + i] = field
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    for _ in range(3):
        date = rng.integers(0, len(DOYS), (1, ny, nx))
        off = 0.3 * rng.choice([-1.0, 1.0], (1, ny, nx)).astype("float32")
        np.put_along_axis(cube, date, np.take_along_axis(cube, date, 0) + off, 0)
    fine, _coarse, _edge = parcels_np(cube, min_parcel_px=10, n_clusters=5)
    assert match_parcels(truth, fine)["matched_fraction"] == 1.0
    for x0 in (16, 20):  # the narrow fields: one parcel over their three columns
        ids = np.unique(fine[6:42, x0 : x0 + 3])
        assert len(ids) == 1 and ids[0] > 0
    assert (fine[6:42, [15, 19, 23]] == 0).mean() > 0.9  # the margins are still border


def test_grass_margin_beside_a_grass_like_crop_leaves_the_parcel():
    """Two cotton-like fields (broad summer hump, close to grass all season) behind a 2-px
    margin of mixed grass/cotton pixels (RMS 0.06 from the fields' curve): close to the fields'
    curve, the margin is found by the strip test, which removes it."""
    rng = np.random.default_rng(1)
    cotton = crop_curve(214, 0.79, 45)
    margin = 0.6 * grass_curve() + 0.4 * cotton
    cube = np.broadcast_to(grass_curve()[:, None, None], (len(DOYS), 48, 48)).copy()
    cube[:, 4:44, 4:22] = cotton[:, None, None]
    cube[:, 4:44, 22:24] = margin[:, None, None]
    cube[:, 4:44, 24:44] = cotton[:, None, None]
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    fine, _coarse, _edge = parcels_np(cube, min_parcel_px=10, n_clusters=4)
    assert (fine[6:42, 22:24] == 0).mean() > 0.9
    assert fine[20, 10] != fine[20, 30] and fine[20, 10] > 0 and fine[20, 30] > 0
    kept, _, _ = parcels_np(cube, min_parcel_px=10, n_clusters=4, strip_threshold=2.0)
    assert (kept[6:42, 22:24] > 0).mean() > 0.5  # without the strip test the margin stays


def test_parcels_is_lazy_and_keeps_the_grid():
    ds, _ = _scene(seed=1)
    out = parcels(ds)
    assert isinstance(out["fine"].data, da.Array)
    np.testing.assert_array_equal(out["x"].values, ds["x"].values)
    assert out.attrs["season"] == 2025


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"edge_threshold": 0.0}, "edge_threshold"),
        ({"strip_threshold": -1.0}, "strip_threshold"),
        ({"coarse_threshold": float("nan")}, "coarse_threshold"),
        ({"min_parcel_px": 0}, "min_parcel_px"),
        ({"n_clusters": 2.5}, "n_clusters"),
        ({"min_peak_ndvi": 3.0}, "min_peak_ndvi"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, field):
    ds, _ = _scene()
    with pytest.raises(BadInputError) as err:
        parcels(ds, **kwargs)
    assert err.value.field == field


def test_features_without_ndvi_is_bad_input():
    ds, _ = _scene()
    with pytest.raises(BadInputError) as err:
        parcels(ds.rename({"ndvi": "evi"}))
    assert err.value.field == "features"
    with pytest.raises(BadInputError):
        parcels(ds["ndvi"])


def test_match_parcels_figures():
    truth = np.zeros((4, 8), dtype="int32")
    truth[:, :4], truth[:, 4:] = 1, 2
    pred = np.zeros_like(truth)
    pred[:, :4] = 7  # exact
    pred[:2, 4:], pred[2:, 4:] = 8, 9  # split in two halves: IoU 0.5, not > 0.5
    fig = match_parcels(truth, pred)
    assert fig["matched_fraction"] == 0.5
    assert fig["n_true"] == 2 and fig["n_pred"] == 3
    assert fig["over_segmentation"] == 1.5
    assert fig["under_segmentation"] == 0.0
    merged = np.ones_like(truth)
    assert match_parcels(truth, merged)["under_segmentation"] == 1.0
    with pytest.raises(BadInputError):
        match_parcels(truth, pred[:2])


def test_edge_inside_parcels_leaves_the_borders_out():
    truth = np.zeros((6, 10), dtype="int32")
    truth[:, :5], truth[:, 5:] = 1, 2
    edge = np.full(truth.shape, 0.01, dtype="float32")
    edge[:, 4:6] = 0.5  # the border columns: never counted
    edge[2, 1] = 0.05  # one noisy pixel inside parcel 1
    fig = edge_inside_parcels(truth, edge, threshold=0.035)
    # inside: columns 0-3 and 6-9, every row (the 3 x 3 neighbourhood within the image is one
    # parcel); columns 4 and 5 touch the other parcel
    assert fig["n_px"] == 48
    assert fig["share_above_edge_threshold"] == round(1 / 48, 4)
    assert fig["median"] == pytest.approx(0.01, abs=0.0005) and fig["p90"] < 0.05
    assert edge_inside_parcels(np.zeros((4, 4), "int32"), np.zeros((4, 4)))["n_px"] == 0
    with pytest.raises(BadInputError):
        edge_inside_parcels(truth, edge[:2])


def test_boundary_agreement_counts_boundaries_within_the_tolerance():
    truth = np.ones((8, 12), dtype="int32")
    truth[:, 6:] = 2  # one vertical border between columns 5 and 6
    exact = boundary_agreement(truth, truth.copy())
    assert exact["precision"] == exact["recall"] == 1.0 and exact["true_px"] == 16
    shifted = np.ones_like(truth)
    shifted[:, 7:] = 2  # one pixel off: within the tolerance of 1 px
    assert boundary_agreement(truth, shifted)["precision"] == 1.0
    far = np.ones_like(truth)
    far[:, 10:] = 2  # four pixels off
    fig = boundary_agreement(truth, far)
    assert fig["precision"] == 0.0 and fig["recall"] == 0.0
    split = truth.copy()
    split[4:, :6] = 3  # an extra border the truth lacks: recall stays 1, precision drops
    fig = boundary_agreement(truth, split)
    assert fig["recall"] == 1.0 and 0.5 < fig["precision"] < 1.0
    none = boundary_agreement(truth, np.ones_like(truth))
    assert none["precision"] is None and none["recall"] == 0.0


def test_real_patch_texture_inside_the_raba_polygons(real_data):
    """REAL (eo-learn patch, 2017): inside the RABA polygons the temporal edge strength has a
    median about twice the DEMO fields' (0.013-0.016), and a third of it lies above the
    stage's edge threshold (0.4-2 % on the DEMO tiles): the figure docs/agri.md quotes."""
    fig = evaluate_parcels_real(real_data)["edge_inside_parcels"]
    assert fig["edge_threshold"] == 0.035 and fig["n_px"] > 5000
    assert 0.025 < fig["median"] < 0.035
    assert 0.25 < fig["share_above_edge_threshold"] < 0.45


def test_nesting_detects_a_fine_parcel_split_between_coarse_parcels():
    fine = np.array([[1, 1, 2, 2]])
    assert nesting(fine, np.array([[5, 5, 5, 5]])) == 1.0
    assert nesting(fine, np.array([[5, 6, 6, 6]])) == 0.5
    assert nesting(fine, np.array([[5, 5, 0, 0]])) == 0.5  # a fine parcel outside every coarse one


def test_tile_offsets():
    assert tile_offsets(1024, 1024, 512) == [(0, 0), (0, 512), (512, 0), (512, 512)]
    assert tile_offsets(1024, 1024, 512, max_tiles=2) == [(0, 0), (512, 512)]
    with pytest.raises(BadInputError):
        tile_offsets(1024, 1024, 512, max_tiles=0)


TRANSFORM = Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 4_000_000.0)


def test_polygons_area_perimeter_and_parents():
    ids = np.zeros((6, 8), dtype="int32")
    ids[0:3, 0:3] = 1  # 3 x 3 px square
    ids[3:6, 0:8] = 2  # 3 x 8 px rectangle
    ids[0:2, 5:7] = 3
    coarse = np.where(ids == 3, 2, np.where(ids > 0, 1, 0)).astype("int32")
    gdf = parcel_polygons(ids, TRANSFORM, "EPSG:32650", "fine", parents=coarse)
    assert list(gdf.columns) == [
        "parcel_id",
        "level",
        "area_m2",
        "perimeter_m",
        "parent_id",
        "geometry",
    ]
    assert list(gdf["parcel_id"]) == [1, 2, 3]
    np.testing.assert_allclose(gdf["area_m2"], [900.0, 2400.0, 400.0])
    np.testing.assert_allclose(gdf["perimeter_m"], [120.0, 220.0, 80.0])
    assert list(gdf["parent_id"]) == [1, 1, 2]
    assert set(gdf["level"]) == {"fine"}
    assert gdf.crs.to_epsg() == 32650
    x0, y0, x1, y1 = gdf.geometry.iloc[0].bounds
    assert (x0, y1, x1, y0) == (300_000.0, 4_000_000.0, 300_030.0, 3_999_970.0)


def test_polygons_of_a_parcel_in_two_pieces_are_one_row():
    ids = np.zeros((3, 7), dtype="int32")
    ids[:, :2] = 4
    ids[:, 5:] = 4
    gdf = parcel_polygons(ids, TRANSFORM, "EPSG:32650", "coarse")
    assert len(gdf) == 1 and gdf.geometry.iloc[0].geom_type == "MultiPolygon"
    assert gdf["area_m2"].iloc[0] == 1200.0 and gdf["parent_id"].iloc[0] == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((np.zeros((2, 2), "float32"), TRANSFORM, "EPSG:32650", "fine"), "ids"),
        ((np.zeros((2, 2), "int32"), TRANSFORM, "EPSG:4326", "fine"), "crs"),
        ((np.zeros((2, 2), "int32"), TRANSFORM, "EPSG:32650", "medium"), "level"),
        ((np.zeros((2, 2), "int32"), "not a transform", "EPSG:32650", "fine"), "transform"),
    ],
)
def test_polygon_bad_input(args, field):
    with pytest.raises(BadInputError) as err:
        parcel_polygons(*args)
    assert err.value.field == field
    with pytest.raises(BadInputError) as err:
        parcel_polygons(
            np.ones((2, 2), "int32"), TRANSFORM, "EPSG:32650", "fine", np.ones((3, 3), "int32")
        )
    assert err.value.field == "parents"


def test_geoparquet_round_trip(tmp_path):
    ids = np.array([[1, 1, 2], [1, 1, 2]], dtype="int32")
    gdf = parcel_polygons(ids, TRANSFORM, "EPSG:32650", "fine")
    url = str(tmp_path / "parcels" / "fine.parquet")
    assert write_geoparquet(gdf, url) == url
    back = read_geoparquet(url)
    assert list(back["parcel_id"]) == [1, 2]
    assert back.crs.to_epsg() == 32650
    assert back.geometry.iloc[0].equals(gdf.geometry.iloc[0])
    with pytest.raises(BadInputError):
        write_geoparquet(gdf.drop(columns="geometry"), url)


def test_geoparquet_on_s3(s3_store):
    ids = np.array([[1, 2]], dtype="int32")
    gdf = parcel_polygons(ids, TRANSFORM, "EPSG:32650", "fine")
    url = f"{s3_store}/parcels/fine.parquet"
    write_geoparquet(gdf, url)
    assert list(read_geoparquet(url)["area_m2"]) == [100.0, 100.0]


@pytest.mark.slow
def test_evaluate_parcels_on_the_tiny_archive(tiny_archive):
    from pipelines.agri.eval_parcels import evaluate_parcels

    result = evaluate_parcels(str(tiny_archive), season=2025, tile_px=128, max_tiles=1)
    assert result["nesting"] == 1.0
    assert result["fine"]["n_true"] > 10
    assert result["fine"]["matched_fraction"] >= 0.7
    assert len(result["tiles"]) == 1 and result["tiles"][0]["row"] == 0
    with pytest.raises(BadInputError) as err:
        evaluate_parcels(str(tiny_archive), season=2019)
    assert err.value.field == "season"


def test_evaluate_parcels_real(real_data):
    from pipelines.agri.eval_parcels import evaluate_parcels_real

    result = evaluate_parcels_real(real_data)
    assert result["n_polygons"] == 88
    assert result["fine"]["n_true"] > 50
    assert 0.0 <= result["fine"]["matched_fraction"] <= 1.0
    assert result["nesting"] == 1.0


def test_thin_bridges_between_two_bodies_are_cut_and_other_markers_kept():
    from pipelines.agri.parcels import split_thin_bridges

    markers = np.zeros((12, 24), dtype="int64")
    markers[2:9, 1:8] = 1  # two bodies of 49 px joined through one pixel of a border
    markers[5, 8:16] = 1
    markers[2:9, 16:23] = 1
    out = split_thin_bridges(markers, min_body_px=20)
    # (an opening by the cross drops a square's corners: they are left to the watershed too)
    assert len(np.unique(out[3:8, 2:7])) == 1 and len(np.unique(out[3:8, 17:22])) == 1
    assert out[5, 4] != out[5, 19] and out[5, 4] > 0 and out[5, 19] > 0
    assert (out[5, 9:15] == 0).all()  # the bridge is left to the watershed
    # a body with a one-pixel tail, a bridge three pixels wide and bodies smaller than a
    # parcel stay one marker each
    tail = np.zeros((12, 24), dtype="int64")
    tail[2:9, 1:8] = 1
    tail[5, 8:20] = 1
    wide = markers.copy()
    wide[4:7, 8:16] = 1
    small = np.zeros((12, 24), dtype="int64")
    small[4:7, 1:4] = 1
    small[5, 4:8] = 1
    small[4:7, 8:11] = 1
    for kept in (tail, wide, small):
        np.testing.assert_array_equal(split_thin_bridges(kept, min_body_px=20), kept)
    # pixels whose curves clear dates observed at every calendar step are never cut
    observed = np.ones(markers.shape, dtype=bool)
    np.testing.assert_array_equal(split_thin_bridges(markers, 20, observed), markers)
    observed[:, 8:16] = False  # the bridge under cloud: cut
    assert (
        split_thin_bridges(markers, 20, observed)[5, 4]
        != split_thin_bridges(markers, 20, observed)[5, 19]
    )


def test_two_fields_joined_through_a_gap_in_their_border_stay_two_parcels():
    """Under cloud, a patch of the grass border between two fields of one crop can read like
    the fields: its middle row then has no edge, the fields' markers join through it, and only
    the border's other pixels tell the fields apart."""
    rng = np.random.default_rng(3)
    crop = crop_curve(220)
    grass = grass_curve()
    cube = np.broadcast_to(grass[:, None, None], (len(DOYS), 40, 60)).copy()
    truth = np.zeros((40, 60), dtype="int32")
    truth[1:39, 1:29], truth[1:39, 32:59] = 1, 2  # a border three pixels wide between them
    cube[:, truth > 0] = crop[:, None]
    cube[:, 19:22, 29:32] = crop[:, None, None]  # a patch of it alike to the fields
    cube += rng.normal(0.0, 0.01, cube.shape).astype("float32")
    # 8 clear dates for 28 calendar dates: the curves are interpolated over cloud gaps
    fine, _, _ = parcels_np(cube, clear_dates=np.full((40, 60), 8.0, dtype="float32"))
    assert match_parcels(truth, fine)["matched_fraction"] == 1.0
    # every calendar step observed: the similarity is measured, the segmentation the optical one
    dense, _, _ = parcels_np(cube, clear_dates=np.full((40, 60), 40.0, dtype="float32"))
    np.testing.assert_array_equal(dense, parcels_np(cube)[0])


def _two_fields_one_parcel(angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 60 x 80 px parcel holding two fields split by a straight, tilted border line; the
    line's strip strength is strong along 12 px of every 18 and weak (0.6 x) between."""
    yy, xx = np.mgrid[0:60, 0:80].astype(float)
    labels = np.zeros((60, 80), np.int64)
    labels[5:55, 5:75] = 1
    offset = (yy - 30) - np.tan(np.radians(angle_deg)) * (xx - 40)
    on_line = np.abs(offset) < 0.5
    strip = np.where(labels > 0, 0.005, 0.0)
    strong_part = xx % 18 < 12
    strip[on_line & strong_part] = 0.06
    strip[on_line & ~strong_part] = 0.024
    return labels, strip, on_line


@pytest.mark.parametrize("angle", [0.0, 12.0])
def test_a_border_seen_along_part_of_its_length_cuts_the_parcel_along_its_whole_line(angle):
    from scipy import ndimage
    from skimage import measure

    labels, strip, on_line = _two_fields_one_parcel(angle)
    # the gaps alone keep it one piece
    assert measure.label(np.where(strip >= 0.04, 0, labels), connectivity=1).max() == 1
    out = cut_along_border_lines(labels, strip, 0.04, 20)
    assert measure.label(out, background=0, connectivity=1).max() == 2  # two fields
    cut = (labels > 0) & (out == 0)
    assert cut.sum() >= 50 and not (cut & ~ndimage.binary_dilation(on_line)).any()


def test_a_strip_ending_inside_the_field_or_scattered_texture_leaves_it_whole():
    labels, strip, on_line = _two_fields_one_parcel(0.0)
    cols = np.mgrid[0:60, 0:80][1]
    part = np.where(on_line & (cols >= 30), 0.01, strip)  # the strip ends a third in
    part[on_line & (cols < 30)] = 0.06
    assert (cut_along_border_lines(labels, part, 0.04, 20) == labels).all()
    rng = np.random.default_rng(0)
    texture = np.where(labels > 0, rng.uniform(0.0, 0.03, labels.shape), 0.0)
    texture[rng.random(labels.shape) < 0.02] = 0.05
    assert (cut_along_border_lines(labels, texture, 0.04, 20) == labels).all()


def test_eval_parcels_scores_the_real_patch_alone(real_data, capsys):
    """REAL: ``terrapipe eval parcels --no-demo`` needs no demo archive and labels its figures
    with their data source; with nothing to score it exits 2."""
    from pipelines.cli import EXIT_BAD_INPUT, main

    assert main(["eval", "parcels", "--no-demo", "--real-data", str(real_data)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(report) == ["eolearn"]
    real = report["eolearn"]
    assert real["data"] == "real: eolearn-testeopatch" and real["n_polygons"] == 88
    assert 0.0 < real["fine_boundary"]["precision"] < real["fine_boundary"]["recall"] < 1.0
    assert main(["eval", "parcels", "--no-demo", "--no-real"]) == EXIT_BAD_INPUT
    assert "--no-demo" in capsys.readouterr().err
