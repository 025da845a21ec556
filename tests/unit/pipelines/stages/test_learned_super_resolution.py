"""The super_resolution stage end to end on a real S2 mosaic larger than one inference tile: the
PSF is estimated once on the whole date-0 plane, so the tiles stitch into the whole-scene
result, and nodata stays NaN."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mosaic(real_data) -> np.ndarray:
    """(4, 100, 300) BGRN reflectance: the three clear eo-learn scenes side by side (REAL)."""
    from models.super_resolution import data as srdata

    scenes = list(srdata.load_real_scenes(real_data).values())
    return np.concatenate([scenes[0], scenes[1][:, :, ::-1], scenes[2]], axis=2)


def test_stage_tiles_equal_the_whole_scene_with_one_psf_estimate(real_data, one_thread):
    from models.serving import worker_model
    from models.super_resolution.network import pack_inputs
    from pipelines.stages.learned import super_resolution

    img = _mosaic(real_data)
    img[:, :10, :30] = np.nan  # a nodata corner
    s2 = xr.DataArray(
        img[None],
        dims=("time", "band", "y", "x"),
        coords={
            "time": pd.to_datetime(["2015-08-30"]).values,
            "band": ["B02", "B03", "B04", "B08"],
            "y": 5_000_000.0 - 10.0 * (np.arange(img.shape[1]) + 0.5),
            "x": 500_000.0 + 10.0 * (np.arange(img.shape[2]) + 0.5),
        },
    )
    with dask.config.set(scheduler="synchronous"):
        out = super_resolution(s2).values[0]  # 300 px: two 256 px inference tiles along x
    assert out.shape == (4, 400, 1200)
    assert np.isnan(out[:, :40, :120]).all() and np.isfinite(out[:, 40:, :]).all()

    net = worker_model("super_resolution")
    x = torch.from_numpy(pack_inputs([img]))[None]
    with torch.inference_mode():
        whole = net(x)[0].numpy()  # the estimate from the whole plane, no tiling
        per_window = net(x[..., :140])[0].numpy()  # an estimate from a part only
    keep = np.isfinite(out)
    np.testing.assert_allclose(out[keep], np.maximum(whole, 0)[keep], atol=2e-5)
    # the estimate is the scene's: one window alone would have restored its part differently
    assert np.abs(per_window[:, 40:, 200:440] - whole[:, 40:, 200:440]).max() > 1e-4
