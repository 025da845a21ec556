"""dehaze equals its pinned reference outputs on a synthetic scene.

The reference (``dehaze_reference.npz`` beside this file) holds the stage's outputs as they were
before its per-chunk work was fused into one block call per chunk; the rewrite must not change
the method. The scene exercises every branch: chunks not aligned on anything (20 px chunks of a
48 x 64 px scene, halos cut by the array edge), NaN holes in one band, in every band and in the
SWIR band alone, an opaque cloud kept as it is, a mostly cloudy date (``all_pixels``), water
(NDWI > 0, no SWIR evidence), dark and bright fields under haze that thickens across the scene;
with SWIR and without, small windows (halos between chunks) and the defaults (one chunk: the
halo would span the scene). Run this module as a script to rewrite the reference (only when the
method changes on purpose).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage as ndi

from pipelines.stages.dehaze import dehaze
from pipelines.stages.haze import TRUE_COLOUR_MAX
from pipelines.testing.scenes import HAZY_FIELD_BANDS, band_cube, hazy_fields

NY, NX = 48, 64
CHUNK = 20
BANDS = HAZY_FIELD_BANDS
REFERENCE = Path(__file__).with_name("dehaze_reference.npz")
YY, XX = np.mgrid[0:NY, 0:NX].astype("float64")
#: Keyword arguments of each pinned output.
CASES: dict[str, dict[str, object]] = {
    "swir_small_windows": {"radius_m": 60.0, "window": 7, "swir_window": 11},
    "no_swir_small_windows": {"radius_m": 60.0, "window": 7, "use_swir": False},
    "defaults": {},
    "given_airlight": {
        "radius_m": 60.0,
        "window": 7,
        "swir_window": 11,
        "airlight": {"B02": 0.35, "B03": 0.33, "B04": 0.32, "B08": 0.3},
    },
}


def scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The synthetic hazy S2 stack (time, band, y, x) and the haze_index variables dehaze reads
    (dark channel on the 0..255 scale, pixel weight, obscured, all_pixels)."""
    refl, kinds, lake = hazy_fields(7, NY, NX, ((0.55, 0.34), (0.3, 0.38)))
    s2 = refl.astype("float32")
    cloud = (YY - 12) ** 2 + (XX - 48) ** 2 < 11**2
    s2[0][:, cloud] = 0.6  # an opaque cloud
    s2[0, 1, 30:34, 40:48] = np.nan  # B03 missing on a strip
    s2[1, :, :6, :9] = np.nan  # every band missing in a corner
    s2[1, 5, 20:40, 55:60] = np.nan  # SWIR missing: no floor there

    rgb_min = np.fmin(np.fmin(s2[:, 0], s2[:, 1]), s2[:, 2])
    dark = ndi.minimum_filter(np.where(np.isnan(rgb_min), np.inf, rgb_min), size=(1, 15, 15))
    dark = np.clip(dark / TRUE_COLOUR_MAX * 255.0, 0.0, 255.0)
    dark[np.isnan(rgb_min)] = np.nan
    weight = np.where(kinds == 1, 0.2, 1.0)[None].repeat(2, 0)
    weight[:, lake] = 0.0
    weight[0][cloud] = 1.0  # read as haze evidence: without SWIR, t falls below t_opaque
    weight[np.isnan(rgb_min)] = np.nan
    obscured = np.zeros((2, NY, NX), dtype=bool)
    obscured[0][cloud] = True
    obscured[np.isnan(rgb_min)] = True
    obscured[1, :, 30:] = True  # the second date is mostly cloudy (thin): all_pixels
    hz = {
        "dark_channel": dark.astype("float32"),
        "pixel_weight": weight.astype("float32"),
        "obscured": obscured,
        "all_pixels": np.array([False, True]),
    }
    return s2, hz


def _haze_index(hz: dict[str, np.ndarray], chunk: int) -> xr.Dataset:
    yx = ("time", "y", "x")
    return xr.Dataset(
        {name: (("time",), v) if v.ndim == 1 else (yx, v) for name, v in hz.items()}
    ).chunk({"time": 1, "y": chunk, "x": chunk})


def outputs(chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """dehaze of :func:`scene` for each of :data:`CASES`, inputs in ``chunk`` px chunks."""
    s2, hz = scene()
    cube = band_cube(s2, BANDS, chunk)
    index = _haze_index(hz, chunk)
    return {name: dehaze(cube, index, **kw).values for name, kw in CASES.items()}  # type: ignore[arg-type]


def _check(got: dict[str, np.ndarray], ref: np.lib.npyio.NpzFile) -> None:
    assert sorted(got) == sorted(ref.files)
    for name, arr in got.items():
        expected = ref[name]
        assert arr.shape == expected.shape and arr.dtype == expected.dtype, name
        assert (np.isnan(arr) == np.isnan(expected)).all(), name
        # Float32 rounding (box sums, guided filter) only; reflectance 0..1.
        np.testing.assert_allclose(arr, expected, rtol=0, atol=2e-5, equal_nan=True, err_msg=name)


def test_outputs_equal_the_reference():
    ref = np.load(REFERENCE)
    _check(outputs(), ref)
    s2, _ = scene()
    # The reference itself is not trivial: haze removed (the hazy blue darkens), the opaque
    # cloud kept, the NaN holes kept.
    out = ref["swir_small_windows"]
    assert np.nanmean(out[:, 0]) < np.nanmean(s2[:, 0]) - 0.05
    cloud = (YY - 12) ** 2 + (XX - 48) ** 2 < 3**2
    kept = ref["no_swir_small_windows"][0][:, cloud]
    np.testing.assert_array_equal(kept, s2[0, :4, cloud].T)
    assert np.isnan(out[0, 1, 30:34, 40:48]).all() and np.isnan(out[1, :, :6, :9]).all()
    assert not np.allclose(ref["swir_small_windows"], ref["no_swir_small_windows"], equal_nan=True)


def test_whole_planes_in_one_chunk_equal_the_reference():
    """The result does not depend on the chunking: one chunk per plane gives the pinned
    outputs too."""
    _check(outputs(chunk=max(NY, NX)), np.load(REFERENCE))


if __name__ == "__main__":
    np.savez_compressed(REFERENCE, **outputs())
    print({k: (v.shape, float(np.nanmean(v))) for k, v in np.load(REFERENCE).items()})
