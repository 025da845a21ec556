"""Height above nearest drainage from a DEM (pyflwdir, ASF's Global HAND recipe)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from pipelines.errors import BadInputError
from pipelines.stages.terrain import (
    HAND_DRAIN_AREA_M2,
    height_above_drainage_np,
    height_above_drainage_of_plane,
)

#: 10 m pixels, metres.
GRID = Affine(10.0, 0.0, 0.0, 0.0, -10.0, 2000.0)


def _valley(rows: int = 120, cols: int = 101) -> np.ndarray:
    """A V-shaped valley along column 50: sides rising 0.5 m a pixel, the floor falling 0.01 m a
    pixel southward (y down)."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (0.5 * np.abs(xx - 50) + 0.01 * (rows - yy)).astype("float32")


def test_height_is_the_drop_to_the_valley_floor_where_the_floor_drains():
    z = _valley()
    hand = height_above_drainage_np(z, GRID, latlon=False)
    assert hand.dtype == np.float32 and hand.shape == z.shape
    # The floor is drainage once 0.09 km2 (900 cells of 100 m2) drain to it: from row 30 on
    # (the sides reach the floor diagonally, one row down for each column across).
    # The path to the floor may run diagonally: the floor's own fall over as many rows adds
    # up to 0.01 m a pixel of distance to the rise of the side. (Rows from 70 on may leave
    # the grid southward first: the edge is an outlet.)
    distance = np.abs(np.arange(z.shape[1]) - 50)
    inside = hand[30:70]
    rise = np.broadcast_to(0.5 * distance, inside.shape)
    assert (inside >= rise - 1e-3).all()
    assert (inside <= rise + 0.01 * distance + 1e-3).all()
    # The head of the valley drains too little: its floor stands above the drainage below it,
    # by the floor's fall of 0.01 m a row.
    np.testing.assert_allclose(hand[:30, 50], 0.01 * (30 - np.arange(30)), atol=1e-4)
    # Four times the area to start a channel: 3,600 cells drain to the floor from row 60 on.
    sparse = height_above_drainage_np(z, GRID, latlon=False, drain_area_m2=4 * HAND_DRAIN_AREA_M2)
    np.testing.assert_allclose(sparse[:60, 50], 0.01 * (60 - np.arange(60)), atol=1e-4)


def test_nan_cells_stay_nan_and_drain_nowhere():
    z = _valley()
    z[30:40, 10:20] = np.nan
    hand = height_above_drainage_np(z, GRID, latlon=False)
    assert np.isnan(hand[30:40, 10:20]).all()
    assert np.isfinite(hand[~np.isnan(z)]).all()


def test_geographic_grid_counts_the_area_in_square_metres():
    # 1 arcsec at the equator: about 30.9 m x 30.7 m, so 0.09 km2 are about 95 cells.
    z = _valley(rows=60)
    grid = Affine(1 / 3600, 0.0, 10.0, 0.0, -1 / 3600, 0.01)
    hand = height_above_drainage_np(z, grid, latlon=True)
    metric = height_above_drainage_np(z, Affine(30.8, 0, 0, 0, -30.8, 0), latlon=False)
    np.testing.assert_allclose(hand, metric, atol=1e-4)


def test_a_dem_without_a_valid_cell_or_of_one_cell_has_nothing_to_route():
    hand = height_above_drainage_np(np.full((5, 5), np.nan, "float32"), GRID, latlon=False)
    assert hand.dtype == np.float32 and np.isnan(hand).all()
    one = height_above_drainage_np(np.array([[12.0]], "float32"), GRID, latlon=False)
    assert one.dtype == np.float32 and one.tolist() == [[0.0]]


def test_a_dem_must_be_two_dimensional():
    with pytest.raises(BadInputError, match="dem"):
        height_above_drainage_np(np.zeros((2, 4, 4), "float32"), GRID, latlon=False)


def test_the_compiled_path_loop_is_pyflwdirs_hand_to_the_bit():
    """K.hand_along_paths against pyflwdir's own FlwdirRaster.hand (its Python loop): rough
    SYNTHETIC terrain with pits, flats and NaN holes."""
    import pyflwdir

    rng = np.random.default_rng(4)
    z = rng.normal(size=(90, 110)).cumsum(axis=0).cumsum(axis=1).astype("float32")
    z[20:30, 40:60] = z[20:30, 40:60].min()  # a flat
    z[60:64, 10:14] = np.nan
    filled = np.where(np.isnan(z), np.float32(-9999.0), z)
    flw = pyflwdir.from_dem(filled, nodata=-9999.0, transform=GRID, latlon=False)
    drain = flw.upstream_area(unit="m2") > HAND_DRAIN_AREA_M2
    peer = flw.hand(drain=drain, elevtn=filled.astype("float64"))
    ours = height_above_drainage_np(z, GRID, latlon=False)
    valid = ~np.isnan(z)
    np.testing.assert_array_equal(ours[valid], peer[valid].astype("float32"))
    assert np.isnan(ours[~valid]).all()


def test_a_plane_on_a_finer_grid_is_routed_at_the_dems_own_spacing():
    """height_above_drainage_of_plane: a 30 m V valley sampled on a 10 m grid (each 30 m cell
    repeated 3 x 3, less a row and a column, so that the last blocks are not full) reads the
    30 m routing of that valley, upsampled; NaN stays NaN."""
    coarse = _valley(rows=60)
    hand30 = height_above_drainage_np(coarse, Affine(30.0, 0, 0, 0, -30.0, 0), latlon=False)
    # Drainage (0.09 km2: 100 cells of 30 m) on the lower floor, none at the valley's head.
    assert (hand30[40:, 50] == 0).all() and (hand30[:5, 50] > 0).all()
    fine = np.repeat(np.repeat(coarse, 3, axis=0), 3, axis=1)[:-1, :-1]
    got = height_above_drainage_of_plane(fine, 10.0)
    assert got.dtype == np.float32 and got.shape == fine.shape
    # The centre of each 30 m block (fine pixel 3k + 1) reads its block's height.
    np.testing.assert_allclose(got[1::3, 1::3], hand30, atol=1e-4)
    holes = fine.copy()
    holes[30:36, 9:15] = np.nan
    with_holes = height_above_drainage_of_plane(holes, 10.0)
    assert np.isnan(with_holes[30:36, 9:15]).all()
    assert np.isfinite(with_holes[:20]).all()
