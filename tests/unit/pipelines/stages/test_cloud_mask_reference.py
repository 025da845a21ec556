"""cloud_mask equals its pinned reference outputs on a synthetic scene.

The reference (``cloud_mask_reference.npz`` beside this file) holds the outputs of the stage
before its per-chunk work was fused into one block call; the rewrite must not change a pixel.
The scene exercises both paths and every rule: SCL codes (cloud, shadow, cirrus, nodata code
and NaN), spectral clouds (thick, thin, small bright roofs the opening drops), shadows near and
far from a cloud, cirrus from B10, NaN holes in one band, chunks not aligned on the scene
(300 x 270 px in 128 px chunks) and buffers and search distances that reach across chunks.
Run this module as a script to rewrite the reference (only when the method changes on purpose).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.stages.cloud_mask import cloud_mask
from pipelines.testing.scenes import band_cube

NY, NX = 300, 270
CHUNK = 128
REFERENCE = Path(__file__).with_name("cloud_mask_reference.npz")
YY, XX = np.mgrid[0:NY, 0:NX].astype("float64")
SPECTRAL = ("B02", "B03", "B04", "B08", "B10", "B11", "B12")


def _blobs(rng: np.random.Generator, n: int, rmin: float, rmax: float) -> np.ndarray:
    """``n`` random discs of radius ``rmin``..``rmax`` px."""
    out = np.zeros((NY, NX), dtype=bool)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, NY), rng.uniform(0, NX), rng.uniform(rmin, rmax)
        out |= (YY - cy) ** 2 + (XX - cx) ** 2 < r * r
    return out


def scl_scene() -> np.ndarray:
    """(time, band=[SCL], y, x): vegetation and soil with clouds, shadows, cirrus, nodata."""
    rng = np.random.default_rng(21)
    out = np.empty((2, 1, NY, NX), dtype="float32")
    for t in range(2):
        scl = np.where(rng.random((NY, NX)) < 0.7, 4.0, 5.0)
        scl[_blobs(rng, 6, 3, 25)] = 9.0
        scl[_blobs(rng, 5, 2, 12)] = 8.0
        scl[_blobs(rng, 6, 2, 10)] = 3.0
        scl[_blobs(rng, 3, 5, 30)] = 10.0
        scl[rng.random((NY, NX)) < 0.003] = 3.0  # isolated shadow pixels
        scl[_blobs(rng, 2, 4, 15)] = 0.0
        scl[rng.random((NY, NX)) < 0.002] = np.nan
        out[t, 0] = scl
    out[1, 0, 200:230, :] = np.nan  # a missing strip
    return out


def spectral_scene() -> np.ndarray:
    """(time, band=SPECTRAL, y, x) reflectance: clear land, thick and thin clouds, bright roofs,
    dark shadows near and far from clouds, high cirrus, NaN holes in one band."""
    rng = np.random.default_rng(22)
    clear = np.array([0.04, 0.07, 0.05, 0.30, 0.002, 0.18, 0.09])
    cloud = np.array([0.45, 0.44, 0.43, 0.48, 0.004, 0.35, 0.25])
    thin = np.array([0.16, 0.17, 0.15, 0.35, 0.004, 0.20, 0.10])
    roof = np.array([0.35, 0.33, 0.30, 0.40, 0.002, 0.30, 0.20])
    dark = np.array([0.02, 0.03, 0.02, 0.08, 0.002, 0.05, 0.03])
    out = np.empty((2, len(SPECTRAL), NY, NX), dtype="float32")
    for t in range(2):
        img = clear[:, None, None] * rng.uniform(0.8, 1.2, (1, NY, NX))
        for mask, spec in (
            (_blobs(rng, 4, 8, 30), cloud),
            (_blobs(rng, 3, 5, 20), thin),
            (rng.random((NY, NX)) < 0.002, roof),
            (_blobs(rng, 8, 3, 12), dark),
        ):
            img = np.where(mask[None], spec[:, None, None], img)
        img[4][_blobs(rng, 2, 10, 30)] = 0.03  # cirrus
        out[t] = img * rng.uniform(0.97, 1.03, img.shape)
    out[0, SPECTRAL.index("B11"), 50:70, 100:160] = np.nan
    out[1, SPECTRAL.index("B02")][rng.random((NY, NX)) < 0.001] = np.nan
    return out


def outputs() -> dict[str, np.ndarray]:
    """The stage outputs on the scenes (uint8 classes)."""
    scl, spec = scl_scene(), spectral_scene()
    no_b10 = [b for b in SPECTRAL if b != "B10"]
    return {
        "scl": cloud_mask(band_cube(scl, ["SCL"], CHUNK)).values,
        "scl_buffers": cloud_mask(
            band_cube(scl, ["SCL"], CHUNK), cloud_buffer_m=60.0, shadow_buffer_m=40.0
        ).values,
        "scl_one_chunk": cloud_mask(band_cube(scl, ["SCL"], NY)).values,
        "spectral": cloud_mask(band_cube(spec, SPECTRAL, CHUNK), shadow_search_m=600.0).values,
        "spectral_no_b10": cloud_mask(
            band_cube(spec[:, [SPECTRAL.index(b) for b in no_b10]], no_b10, CHUNK),
            shadow_search_m=300.0,
            cloud_buffer_m=20.0,
        ).values,
        "spectral_default": cloud_mask(band_cube(spec, SPECTRAL, NY)).values,
    }


def test_outputs_equal_the_reference():
    ref = np.load(REFERENCE)
    got = outputs()
    assert sorted(got) == sorted(ref.files)
    for name, arr in got.items():
        assert arr.shape == ref[name].shape and arr.dtype == ref[name].dtype, name
        np.testing.assert_array_equal(arr, ref[name], err_msg=name)
    # The reference itself is not trivial: every class occurs on both paths.
    assert set(np.unique(ref["scl"])) == {0, 1, 2, 3, 4}
    assert set(np.unique(ref["spectral"])) == {0, 1, 2, 3, 4}


if __name__ == "__main__":
    np.savez_compressed(REFERENCE, **outputs())
    print({k: np.unique(v, return_counts=True) for k, v in np.load(REFERENCE).items()})
