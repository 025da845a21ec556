"""water_mask and flood_change equal their pinned reference outputs on a synthetic scene.

The reference (``water_flood_reference.npz`` beside this file) holds the outputs of the stages
as they were before their kernels were fused and vectorised; the rewrite must not change the
method. The scene exercises every branch: sub-tiles cut by the array edge (200 px is not a
multiple of 64), chunks not aligned on the sub-tile grid, NaN holes, dark and bright water,
land-only dates, a hill (slope and height above drainage), flooded vegetation and a growing lake.
Run this module as a script to rewrite the reference (only when the method changes on purpose).
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.stages.flood import flood_change
from pipelines.stages.water import water_mask
from pipelines.testing.scenes import band_cube

N = 200
CHUNK = 96
BANDS = ("VV", "VH")
REFERENCE = Path(__file__).with_name("water_flood_reference.npz")
YY, XX = np.mgrid[0:N, 0:N].astype("float64")


def _speckled(vv: np.ndarray, vh: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(band=[VV, VH], y, x) dB with 4.4-look gamma speckle."""
    out = np.empty((2, N, N), dtype="float32")
    for b, db in enumerate((vv, vh)):
        lin = 10 ** (np.asarray(db, "float64") / 10) * rng.gamma(4.4, 1 / 4.4, (N, N))
        out[b] = 10 * np.log10(lin)
    return out


def _land(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crops, grass and dark bare soil (VH -13, -17, -21 dB) in 20 px fields."""
    vh = rng.choice([-13.0, -17.0, -21.0], size=(N // 20, N // 20)).repeat(20, 0).repeat(20, 1)
    return vh + 7.0, vh


def scenes() -> dict[str, np.ndarray]:
    """The synthetic S1 stacks (time, band, y, x) and DEM (y, x) of the reference."""
    rng = np.random.default_rng(13)
    vv_land, vh_land = _land(rng)
    lake = (YY - 60) ** 2 + (XX - 50) ** 2 < 35**2
    river = np.abs(YY - 0.4 * XX - 110) < 4
    flood = ((YY - 140) ** 2 + (XX - 150) ** 2 < 40**2) & ~lake
    canopy = (YY > 20) & (YY < 60) & (XX > 130) & (XX < 180)

    def date(water: np.ndarray, vv_extra: np.ndarray | float = 0.0) -> np.ndarray:
        vv = np.where(water, -22.0, vv_land + vv_extra)
        vh = np.where(water, -28.5, vh_land)
        return _speckled(vv, vh, rng)

    pre = np.stack([date(lake | river) for _ in range(3)])
    post = np.stack([date(lake | river | flood, np.where(canopy, 5.0, 0.0)), date(lake)])
    pre[1, :, 150:170, 10:60] = np.nan  # a gap in one pre date
    post[0, 0, 100:112, 100:190] = np.nan  # VV missing on a strip
    post[1, 1, :40, :40] = np.nan  # VH missing in a corner
    land_only = np.stack([_speckled(vv_land, vh_land, rng)])
    dem = (20.0 + 60.0 * np.exp(-((YY - 30) ** 2 + (XX - 180) ** 2) / 30.0**2)).astype("float32")
    dem[190:, :10] = np.nan
    return {"pre": pre, "post": post, "land_only": land_only, "dem": dem}


def outputs(chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """The stage outputs on :func:`scenes` (uint8 classes), inputs in ``chunk`` px chunks."""
    s = scenes()
    dem = xr.DataArray(da.from_array(s["dem"], chunks=chunk), dims=("y", "x"))
    given = np.where(XX < 30, np.nan, (XX > 150) & (YY > 120)).astype("float32")
    return {
        "water_post": water_mask(band_cube(s["post"], BANDS, chunk)).values,
        "water_post_vv": water_mask(band_cube(s["post"][:, :1], ("VV",), chunk)).values,
        "water_land_only": water_mask(band_cube(s["land_only"], BANDS, chunk)).values,
        "flood": flood_change(
            band_cube(s["pre"], BANDS, chunk), band_cube(s["post"], BANDS, chunk), dem
        ).values,
        "flood_vv": flood_change(
            band_cube(s["pre"][:, :1], ("VV",), chunk),
            band_cube(s["post"][:, :1], ("VV",), chunk),
            dem,
        ).values,
        "flood_given_water": flood_change(
            band_cube(s["pre"], BANDS, chunk),
            band_cube(s["post"], BANDS, chunk),
            dem,
            xr.DataArray(da.from_array(given, chunks=64), dims=("y", "x")),
            double_bounce=False,
            edge_px=0,
            mmu_ha=0.0,
        ).values,
    }


def test_outputs_equal_the_reference():
    ref = np.load(REFERENCE)
    got = outputs()
    assert sorted(got) == sorted(ref.files)
    for name, arr in got.items():
        expected = ref[name]
        assert arr.shape == expected.shape and arr.dtype == expected.dtype, name
        # Float32 rounding in the speckle filter may move a pixel sitting on a threshold
        # across it; nothing else may differ.
        differ = int((arr != expected).sum())
        assert differ <= max(2, arr.size // 10_000), (name, differ)
    # The reference itself is not trivial: every class occurs.
    assert set(np.unique(ref["water_post"])) == {0, 1, 2}
    assert set(np.unique(ref["flood"])) == {0, 1, 2, 3, 4}


def test_whole_planes_in_one_chunk_equal_the_reference():
    """Chunks holding whole planes take the fused block calls (classes and minimum mapping
    unit in one call); their outputs are the pinned ones too."""
    ref = np.load(REFERENCE)
    for name, arr in outputs(chunk=N).items():
        differ = int((arr != ref[name]).sum())
        assert differ <= max(2, arr.size // 10_000), (name, differ)


if __name__ == "__main__":
    np.savez_compressed(REFERENCE, **outputs())
    print({k: np.unique(v, return_counts=True) for k, v in np.load(REFERENCE).items()})
