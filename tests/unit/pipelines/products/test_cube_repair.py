"""A cube torn by a kill while it was created or extended: the next init_cube recovers it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipelines.errors import BadInputError
from pipelines.grid import ProvinceGrid, TileGrid
from pipelines.products import cube as cube_module
from pipelines.products import cube_url, init_cube, marker_url, open_product, write_tile
from pipelines.products.cube import cube_exists, cube_problems
from tests.unit.pipelines.products.test_products import (
    PRODUCT,
    PROVINCE,
    TILE_PX,
    VARIABLES,
    WINDOW_1,
    WINDOW_2,
    tile_data,
)


class Killed(Exception):
    """Stands for the kill (an exception: zarr's I/O thread must survive it in-process)."""


@pytest.fixture
def pgrid() -> ProvinceGrid:
    grid = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=TILE_PX)
    return ProvinceGrid(grid=grid, tiles=tuple(grid.tile(ix, 400) for ix in (20, 21)))


def _write(store: str, pgrid: ProvinceGrid, times: list[str]) -> None:
    for k, tile in enumerate(pgrid.tiles):
        write_tile(store, PROVINCE, PRODUCT, pgrid, tile, tile_data(tile, times, seed=k))


def _clean(tmp_path: Path, pgrid: ProvinceGrid) -> xr.Dataset:
    """The store of runs that were never killed: window 1, then windows 1 and 2."""
    store = str(tmp_path / "clean")
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, WINDOW_1)
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    _write(store, pgrid, WINDOW_2)
    return open_product(store, PROVINCE, PRODUCT).load()


def _mark(store: str, pgrid: ProvinceGrid) -> None:
    """A committed marker of the product (only its existence matters to the repair)."""
    path = Path(marker_url(store, PROVINCE, PRODUCT, pgrid.tiles[0].tile_id, "20240501"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def _tear_extension(url: str) -> None:
    """What a kill mid-append leaves: one variable of 5 dates, the ``time`` coordinate of 3."""
    group = zarr.open_group(url, mode="r+")
    cloud = group["cloud"]
    cloud.resize((5, *cloud.shape[1:]))


def _rerun(store: str, pgrid: ProvinceGrid) -> xr.Dataset:
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    _write(store, pgrid, WINDOW_2)
    return open_product(store, PROVINCE, PRODUCT).load()


def test_torn_extension_with_markers_is_repaired_keeping_written_chunks(tmp_path, pgrid):
    clean = _clean(tmp_path, pgrid)
    store = str(tmp_path / "store")
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, WINDOW_1)
    _mark(store, pgrid)
    url = cube_url(store, PROVINCE, PRODUCT)
    _tear_extension(url)
    assert cube_problems(url) == ["cloud has 5 times, the cube 3"]
    with pytest.raises(ValueError, match="conflicting sizes for dimension 'time'"):
        open_product(store, PROVINCE, PRODUCT)

    chunk = os.path.join(url, "prob", "c", "0", "0", "0")
    written = os.stat(chunk).st_mtime_ns
    xr.testing.assert_identical(_rerun(store, pgrid), clean)
    assert os.stat(chunk).st_mtime_ns == written  # window 1 was kept, not rewritten
    assert cube_problems(url) == []


def test_torn_creation_without_markers_is_recreated(tmp_path, pgrid):
    """A cube of the old, non-atomic creation: ``y`` missing, a variable longer than ``time``."""
    clean = _clean(tmp_path, pgrid)
    store = str(tmp_path / "store")
    url = init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _tear_extension(url)
    group = zarr.open_group(url, mode="r+")
    del group["y"]
    assert len(cube_problems(url)) == 2

    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, WINDOW_1)
    xr.testing.assert_identical(_rerun(store, pgrid), clean)


def test_failure_between_array_extensions_then_rerun(tmp_path, pgrid, monkeypatch):
    """The append dies after extending its first array, as a kill would leave it."""
    clean = _clean(tmp_path, pgrid)
    store = str(tmp_path / "store")
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, WINDOW_1)
    _mark(store, pgrid)
    calls = []
    resize = zarr.Array.resize

    def dying_resize(self, *args, **kwargs):
        if calls:
            raise Killed("killed")
        calls.append(self.name)
        return resize(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Array, "resize", dying_resize)
    with pytest.raises(Killed):
        init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    monkeypatch.setattr(zarr.Array, "resize", resize)
    assert cube_problems(cube_url(store, PROVINCE, PRODUCT))

    xr.testing.assert_identical(_rerun(store, pgrid), clean)


def test_failure_while_creating_leaves_no_cube(tmp_path, pgrid, monkeypatch):
    """Creation is published only once complete: a kill before that leaves no cube at all."""
    store = str(tmp_path / "store")

    def killed(*args, **kwargs):
        raise Killed("killed")

    monkeypatch.setattr(cube_module.os, "replace", killed)
    with pytest.raises(Killed):
        init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    monkeypatch.undo()
    url = cube_url(store, PROVINCE, PRODUCT)
    assert not cube_exists(url)
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    assert open_product(store, PROVINCE, PRODUCT).sizes["time"] == 3


def test_lost_time_coordinate_with_markers_needs_overwrite(tmp_path, pgrid):
    store = str(tmp_path / "store")
    url = init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)
    _write(store, pgrid, WINDOW_1)
    _mark(store, pgrid)
    del zarr.open_group(url, mode="r+")["time"]
    with pytest.raises(BadInputError, match="--overwrite"):
        init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES)

    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1, VARIABLES, overwrite=True)
    assert cube_problems(url) == []
    assert not os.path.exists(
        marker_url(store, PROVINCE, PRODUCT, pgrid.tiles[0].tile_id, "20240501")
    )
    assert int(np.asarray(open_product(store, PROVINCE, PRODUCT)["cloud"]).max()) == 0
