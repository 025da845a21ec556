"""The bench's peer implementations compute the same algorithm as the stages they time."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipelines import bench
from pipelines.stages.cloud_mask import cloud_mask
from pipelines.stages.haze import haze_index


def _cube(data: np.ndarray, names: list[str]) -> xr.DataArray:
    n = data.shape[-1]
    return xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={"band": names, "x": np.arange(n) * 10.0, "y": -np.arange(n) * 10.0},
    )


def _s2(seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    names = ["B02", "B03", "B04", "B08", "B11", "B12"]
    data = rng.uniform(0.0, 0.3, size=(2, 6, 48, 48)).astype("float32")
    data[:, :4, 10:20, 10:22] = 0.5  # a bright, white, cloud-like block
    data[:, 3:, 30:36, 30:40] = 0.05  # dark in NIR/SWIR: shadow candidates
    return data, names


def test_cloud_peer_matches_the_stage_on_both_paths() -> None:
    data, names = _s2(0)
    stage = cloud_mask(_cube(data, names)).values
    np.testing.assert_array_equal(bench.peer_cloud_mask(data, names), stage)
    scl = np.random.default_rng(1).integers(0, 12, size=(2, 1, 48, 48)).astype("float32")
    scl[0, 0, :3, :3] = np.nan
    with_scl = np.concatenate([data, scl], axis=1)
    stage = cloud_mask(_cube(with_scl, [*names, "SCL"])).values
    np.testing.assert_array_equal(bench.peer_cloud_mask(with_scl, [*names, "SCL"]), stage)


def test_haze_peer_is_the_stage_dark_channel() -> None:
    data, names = _s2(2)
    s2 = _cube(data, names)
    dark = haze_index(s2, cloud_mask(s2))["dark_channel"].values
    refl = dark / 255.0 * 0.3  # the stage's 8-bit scale; the peer works in reflectance
    peer = bench.peer_haze_index(np.clip(data, 0.0, 0.3), names)
    np.testing.assert_allclose(peer, refl.mean(axis=(1, 2)), rtol=1e-5)


def test_water_and_flood_peers_find_new_dark_water() -> None:
    rng = np.random.default_rng(3)
    pre = (10 * np.log10(rng.gamma(4.0, 0.1 / 4.0, size=(2, 2, 64, 64)))).astype("float32")
    pre[:, :, :12, :] -= 15.0  # a lake: open water is specular, ~15 dB darker
    post = pre.copy()
    post[:, :, 24:56, 16:48] -= 15.0  # the flood
    new = bench.peer_flood_change(pre, post, ["VV", "VH"])
    assert new[:, 28:52, 20:44].mean() > 0.95
    assert new[:, :10, :].mean() < 0.05  # the lake was water before
    assert new[:, 14:20, :].mean() < 0.05
    flat = np.full((1, 4, 64, 64), 0.1, dtype="float32")
    assert bench.peer_dehaze(flat, ["B02", "B03", "B04", "B08"]).shape == flat.shape


def test_like_for_like_water_is_the_peer_algorithm_on_the_stage_kernels() -> None:
    from pipelines.testing.scenes import band_cube

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:96, 0:96]
    water = (yy - 40) ** 2 + (xx - 50) ** 2 < 25**2
    db = np.where(water, -27.0, -15.0)
    data = np.stack(
        [10 * np.log10(10 ** (db / 10) * rng.gamma(4.4, 1 / 4.4, (2, 96, 96))) for _ in "ab"],
        axis=1,
    ).astype("float32")
    peer = bench.peer_water_mask(data, ["VV", "VH"])
    mine = bench._water_kernels(band_cube(data, ("VV", "VH"), 48)).compute()
    assert mine.shape == peer.shape
    # Same filter and split rule; the Otsu histograms differ (256 image bins vs 0.05 dB bins)
    # and so do the borders of the box means: a few pixels at most.
    assert (mine == peer).mean() > 0.995
    assert mine[:, water].mean() > 0.9 and not mine[:, ~water].mean() > 0.1
    calls = bench._like_for_like_call(
        "flood_change",
        {"s1_pre": band_cube(data, ("VV", "VH"), 48), "s1_post": band_cube(data, ("VV", "VH"), 48)},
    )
    (new,) = calls()
    np.testing.assert_array_equal(new.shape, peer.shape)
    assert (np.asarray(new) == bench.peer_flood_change(data, data, ["VV", "VH"])).mean() > 0.995
    assert bench._like_for_like_call("cloud_mask", {}) is None


def test_like_for_like_haze_is_the_peer_algorithm_on_the_stage_kernels() -> None:
    from pipelines.testing.scenes import band_cube

    data, names = _s2(5)
    peer = bench.peer_haze_index(data, names)
    # 20 px chunks of 48 px: halos between chunks, cut by the array edge.
    mine = bench._haze_kernels(band_cube(data, names, 20)).compute()
    np.testing.assert_allclose(mine, peer, rtol=1e-6)
    assert (peer > 0).all()  # not trivial: the bright block lifts the window minima
    # A NaN hole is ignored by the window and by the mean, as the stage does.
    holed = data.copy()
    holed[:, 0, :5, :5] = np.nan
    mean = bench._haze_kernels(band_cube(holed, names, 20)).compute()
    assert np.isfinite(mean).all() and not np.allclose(mean, peer)
    (again,) = bench._like_for_like_call("haze_index", {"s2": band_cube(data, names, 20)})()
    np.testing.assert_array_equal(again, mine)


_MAPPED_30_MIB = """
import ctypes, sys
from pipelines import bench
settled = bench.settle_allocator() if sys.argv[1] == "settle" else None
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost")
                .split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
block = libc.malloc(30 << 20)
print(settled, libc.mallinfo2().hblks - before)
libc.free(block)
"""


def test_settled_allocator_serves_arrays_below_32_mib_from_the_heap() -> None:
    """In a fresh process a 30 MiB block is a fresh mapping (glibc's first mmap threshold is
    128 KiB); once the allocator is settled, it comes from the heap, as in a process that has
    freed such a block before."""
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 (glibc 2.33 and later)
    except AttributeError:
        pytest.skip("not glibc")

    def mapped(mode: str) -> list[str]:
        run = [sys.executable, "-c", _MAPPED_30_MIB, mode]
        return subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()

    assert mapped("fresh") == ["None", "1"]
    assert mapped("settle") == ["True", "0"]
