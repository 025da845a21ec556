"""haze_index equals its pinned reference outputs on a synthetic scene.

The reference (``haze_reference.npz`` beside this file) holds every output of the stage as it
was before its per-chunk work was fused into one block call per chunk; the rewrite must not
change the method. The scene exercises every branch: chunks aligned on nothing (20 px chunks of
a 48 x 64 px scene, and 6 px chunks, thinner than the 15 px window's halo), NaN holes in one
visible band, in every band and in the SWIR band alone, every cloud class (nodata, cloud,
shadow, cirrus), water by NDWI and by SCL, dark and bright fields under haze that thickens
across the scene, and a mostly cloudy date (``all_pixels``); with B12, with B11 only, without
SWIR, with and without SCL and B08. Run this module as a script to rewrite the reference (only
when the method changes on purpose).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from pipelines.classes import SCL_WATER, CloudClass
from pipelines.stages.haze import haze_index
from pipelines.testing.scenes import band_cube, hazy_fields

NY, NX = 48, 64
CHUNK = 20
ALL_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12", "SCL")
REFERENCE = Path(__file__).with_name("haze_reference.npz")
YY, XX = np.mgrid[0:NY, 0:NX].astype("float64")
#: Bands and keyword arguments of each pinned output.
CASES: dict[str, tuple[tuple[str, ...], dict[str, object]]] = {
    "b12_scl": (ALL_BANDS, {}),
    "b11_only": (("B02", "B03", "B04", "B08", "B11"), {}),
    "rgb_b08": (("B02", "B03", "B04", "B08"), {"window": 7}),
    "rgb_scl": (("B02", "B03", "B04", "SCL"), {}),
    "rgb": (("B02", "B03", "B04"), {"min_evidence_fraction": 0.5}),
}
VARIABLES = (
    "dark_channel",
    "haze_dark_channel",
    "dcp_index",
    "bright_surface",
    "pixel_weight",
    "clear_fraction",
    "all_pixels",
    "obscured",
)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic hazy S2 stack (time, band, y, x) in :data:`ALL_BANDS` (SCL as numbers) and
    its cloud mask (time, y, x) uint8 CloudClass."""
    refl, _, lake = hazy_fields(11, NY, NX, ((0.55, 0.34), (0.3, 0.38), (0.1, 0.3)))
    cloud = (YY - 12) ** 2 + (XX - 48) ** 2 < 11**2
    refl[0][:, cloud] = 0.6  # an opaque cloud
    refl[0, 1, 30:34, 40:48] = np.nan  # B03 missing on a strip
    refl[1, :, :6, :9] = np.nan  # every band missing in a corner
    refl[1, 5, 20:40, 55:60] = np.nan  # B12 missing: no floor there
    refl[2, 4, 10:20, 0:30] = np.nan  # B11 missing
    scl = np.where(lake, SCL_WATER, 4).astype("float64")[None].repeat(3, 0)
    scl[2, 40:, 40:] = SCL_WATER  # a river SCL sees and NDWI does not
    s2 = np.concatenate([refl, scl[:, None]], axis=1).astype("float32")

    cm = np.full((3, NY, NX), CloudClass.CLEAR, dtype="uint8")
    cm[0][cloud] = CloudClass.CLOUD
    cm[0, 40:, 50:] = CloudClass.SHADOW
    cm[0, :4, :] = CloudClass.CIRRUS
    cm[1, :, 2:] = CloudClass.CLOUD  # mostly cloudy: all_pixels
    cm[1, :6, :9] = CloudClass.NODATA
    cm[2, 20:28, 20:44] = CloudClass.NODATA
    return s2, cm


def outputs(chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """haze_index of :func:`scene` for each of :data:`CASES`, inputs in ``chunk`` px chunks:
    ``{case}__{variable}``."""
    s2, cm = scene()
    cube = band_cube(s2, ALL_BANDS, chunk)
    mask = xr.DataArray(cm, dims=("time", "y", "x")).chunk({"time": 1, "y": chunk, "x": chunk})
    out = {}
    for name, (bands, kw) in CASES.items():
        ds = haze_index(cube.sel(band=list(bands)), mask, **kw).compute()  # type: ignore[arg-type]
        out.update({f"{name}__{v}": ds[v].values for v in VARIABLES})
    return out


def _check(got: dict[str, np.ndarray], ref: np.lib.npyio.NpzFile) -> None:
    assert sorted(got) == sorted(ref.files)
    for name, arr in got.items():
        expected = ref[name]
        assert arr.shape == expected.shape and arr.dtype == expected.dtype, name
        if arr.dtype == bool:
            np.testing.assert_array_equal(arr, expected, err_msg=name)
            continue
        assert (np.isnan(arr) == np.isnan(expected)).all(), name
        if arr.ndim == 1:
            # Scene sums: float64 partial sums of float32 values, in another order when the
            # chunking changes; 0..255 scale.
            np.testing.assert_allclose(arr, expected, rtol=1e-6, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(arr, expected, err_msg=name)


def test_outputs_equal_the_reference():
    ref = np.load(REFERENCE)
    _check(outputs(), ref)
    # The reference itself is not trivial: the mostly cloudy date is indexed over all land, the
    # hazier dates score above the clearest, the NaN holes stay NaN, SWIR changes the index, SCL
    # water is not counted.
    assert ref["b12_scl__all_pixels"].tolist() == [False, True, False]
    idx = ref["b12_scl__dcp_index"]
    assert min(idx[:2]) > idx[2] + 30
    assert np.isnan(ref["b12_scl__dark_channel"][1, :6, :9]).all()
    assert np.isnan(ref["rgb__bright_surface"][0, 30:34, 40:48]).all()
    assert ref["b12_scl__obscured"][1, :6, :9].all()
    assert not np.allclose(ref["b12_scl__dcp_index"], ref["rgb__dcp_index"])
    assert (ref["b12_scl__pixel_weight"][2, 40:, 40:] == 0).all()
    assert (ref["rgb_b08__pixel_weight"][2, 40:, 40:] > 0).any()


def test_thin_chunks_equal_the_reference():
    """Chunks thinner than the window's halo (merged by map_overlap) give the pinned outputs
    too."""
    _check(outputs(chunk=6), np.load(REFERENCE))


def test_whole_planes_in_one_chunk_equal_the_reference():
    """The result does not depend on the chunking: one chunk per plane gives the pinned
    outputs too."""
    _check(outputs(chunk=max(NY, NX)), np.load(REFERENCE))


if __name__ == "__main__":
    np.savez_compressed(REFERENCE, **outputs())
    print({k: (v.shape, float(np.nanmean(v))) for k, v in np.load(REFERENCE).items()})
