"""The model part of ``terrapipe bench``: its input must hold data, or the throughput it reports
is that of a stage returning at once on empty pixels."""

from __future__ import annotations

import numpy as np

from pipelines import bench


def test_the_clearest_window_and_date_are_chosen():
    valid = np.zeros((3, 8, 8), bool)
    valid[1, 4:8, 0:4] = True  # date 1, the lower left window, all data
    valid[2, 0:4, 0:4] = True
    valid[2, 0, 0] = False  # date 2, the upper left window, one pixel short
    assert bench.clearest_window(valid, 4) == (1, 4, 0, 1.0)
    t, y0, x0, share = bench.clearest_window(valid[[0, 2]], 4)
    assert (t, y0, x0) == (1, 0, 0) and share == 15 / 16


def test_a_tile_without_data_where_the_bench_reads_is_named_not_measured(monkeypatch):
    """The first tile of the demo archive's bench config holds no S2 data in its corner
    window: the stage returned at once there, and the bench reported 35x the network's own
    throughput. Now the clearest window is taken, and a tile with none is refused by name."""
    import pytest
    import xarray as xr

    from pipelines.engine import graph
    from pipelines.errors import BadInputError

    values = np.full((2, 4, 8, 8), np.nan, "float32")
    values[1, :, 4:8, 4:8] = 0.1
    s2 = xr.DataArray(
        values,
        dims=("time", "band", "y", "x"),
        coords={"band": ["B02", "B03", "B04", "B08"]},
    )
    monkeypatch.setattr(graph, "load_source", lambda plan, source, tile_id: s2)
    window = bench._tile_bgrn(None, "x0_y0", 4)
    assert window.shape == (1, 4, 4, 4) and np.isfinite(window.values).all()
    assert window.attrs["valid_share"] == 1.0
    s2.values[1, 0, 5, 5] = np.nan
    s2.values[1, :, 4:8, 4:6] = np.nan
    with pytest.raises(BadInputError, match="x0_y0"):
        bench._tile_bgrn(None, "x0_y0", 4)
