"""haze_index's graph where a chunk holds whole planes (a tile): one task per block of dates,
outputs equal to the bit to the general (multi-chunk) graph on the same chunks."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.core import flatten

from pipelines.stages import haze as H
from pipelines.stages.haze import haze_index
from tests.unit.pipelines.stages.test_haze_reference import ALL_BANDS, CASES, VARIABLES, scene


def _inputs(band_chunk: int, time_chunk: int) -> tuple[xr.DataArray, xr.DataArray]:
    """The pinned reference scene with whole planes in each chunk: ``band_chunk`` bands and
    ``time_chunk`` dates per chunk."""
    s2, cm = scene()
    _, _, ny, nx = s2.shape
    cube = xr.DataArray(
        da.from_array(s2, chunks=(time_chunk, band_chunk, ny, nx)),
        dims=("time", "band", "y", "x"),
        coords={"band": list(ALL_BANDS), "y": -10.0 * np.arange(ny), "x": 10.0 * np.arange(nx)},
    )
    mask = xr.DataArray(da.from_array(cm, chunks=(time_chunk, ny, nx)), dims=("time", "y", "x"))
    return cube, mask


def _tasks(ds: xr.Dataset, *inputs: xr.DataArray) -> tuple[int, int]:
    """The tasks of ``ds``'s graph culled to its outputs, less those of the ``inputs``: all of
    them, and of them the block calls of a block of dates (the rest pick an output from a
    block call's tuple)."""
    graph = set(dict(ds.__dask_graph__().cull(set(flatten(ds.__dask_keys__())))))
    for arr in inputs:
        graph -= set(dict(arr.data.__dask_graph__()))
    calls = {k for k in graph if str(k[0]).startswith("haze-dates-")}
    return len(graph), len(calls)


@pytest.mark.parametrize(("band_chunk", "time_chunk"), [(1, 1), (3, 1), (7, 3)])
def test_one_task_per_block_of_dates(band_chunk: int, time_chunk: int) -> None:
    cube, mask = _inputs(band_chunk, time_chunk)
    blocks = 3 // time_chunk
    for bands, outputs in ((ALL_BANDS, 8), (("B02", "B03", "B04", "SCL"), 7)):
        s2 = cube.sel(band=list(bands))
        own, calls = _tasks(haze_index(s2, mask), s2, mask)
        # One call per block of dates; then one task per output (7 without SWIR, where the
        # surface-corrected dark channel is the dark channel) picking it from the call's tuple.
        assert calls == blocks
        assert own == blocks * (1 + outputs)


def test_fewer_tasks_than_the_general_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    cube, mask = _inputs(1, 1)
    own, _ = _tasks(haze_index(cube, mask), cube, mask)
    monkeypatch.setattr(H, "_holds_whole_planes", lambda chunks: False)
    general, calls = _tasks(haze_index(cube, mask), cube, mask)
    assert calls == 0
    # A date: 1 call and 8 picks, against 6 band planes, 1 call, 7 picks, the scene reduction,
    # 3 columns picked from it and the pixel weight.
    assert own == 27 and general == 57


@pytest.mark.parametrize(("band_chunk", "time_chunk"), [(1, 1), (7, 3)])
def test_outputs_equal_the_general_graph_to_the_bit(
    monkeypatch: pytest.MonkeyPatch, band_chunk: int, time_chunk: int
) -> None:
    cube, mask = _inputs(band_chunk, time_chunk)
    cases: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = dict(CASES)
    one_task = {
        name: haze_index(cube.sel(band=list(bands)), mask, **kw).compute()
        for name, (bands, kw) in cases.items()
    }
    monkeypatch.setattr(H, "_holds_whole_planes", lambda chunks: False)
    for name, (bands, kw) in cases.items():
        general = haze_index(cube.sel(band=list(bands)), mask, **kw).compute()
        for var in VARIABLES:
            got, expected = one_task[name][var], general[var]
            assert got.dtype == expected.dtype, (name, var)
            np.testing.assert_array_equal(got.values, expected.values, err_msg=f"{name} {var}")
            assert got.attrs == expected.attrs, (name, var)
    # Not trivially equal: the cases differ, and the mostly cloudy date is indexed over all land.
    assert one_task["b12_scl"]["all_pixels"].values.tolist() == [False, True, False]
    assert not np.array_equal(
        one_task["b12_scl"]["dcp_index"].values, one_task["rgb"]["dcp_index"].values
    )


def test_outputs_keep_the_chunks_of_the_inputs() -> None:
    cube, mask = _inputs(1, 1)
    ds = haze_index(cube, mask)
    for var in ("dark_channel", "haze_dark_channel", "bright_surface", "pixel_weight", "obscured"):
        assert ds[var].data.chunks == ((1, 1, 1), (48,), (64,)), var
    for var in ("dcp_index", "clear_fraction", "all_pixels"):
        assert ds[var].data.chunks == ((1, 1, 1),), var


@pytest.mark.parametrize("whole_planes", [True, False])
def test_strips_of_rows_give_the_whole_plane_result(
    monkeypatch: pytest.MonkeyPatch, whole_planes: bool
) -> None:
    """The per-pixel work in strips of 15 rows (the 48-row planes in four strips, the last of
    3 rows; blocks of 20 x 30 px with their halos in the general graph) equals it in one strip
    per plane: the window minimum reads its rows either side of each strip."""
    cube, mask = _inputs(1, 1)
    if not whole_planes:
        cube, mask = cube.chunk({"y": 20, "x": 30}), mask.chunk({"y": 20, "x": 30})
    cases: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = dict(CASES)

    def run() -> dict[str, xr.Dataset]:
        return {
            name: haze_index(cube.sel(band=list(bands)), mask, **kw).compute()
            for name, (bands, kw) in cases.items()
        }

    one_strip = run()
    assert H.strip_rows(64, 7) >= 48  # one strip a plane by default on this scene
    monkeypatch.setattr(H, "STRIP_PX", 1)
    assert H.strip_rows(64, 7) == 15
    strips = run()
    for name in cases:
        for var in VARIABLES:
            got, expected = strips[name][var].values, one_strip[name][var].values
            if got.ndim == 3:
                np.testing.assert_array_equal(got, expected, err_msg=f"{name} {var}")
            else:  # scene figures from float64 sums added strip by strip
                np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"{name} {var}")
