"""Small scenes for tests: numpy arrays as the lazy cubes the stages take, and as the GeoTIFFs
``terrapipe stage`` reads. One builder for every test module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

#: Default upper-left corner (x, y) in metres of a projected CRS (UTM).
ORIGIN = (400_000.0, 5_000_000.0)


def band_cube(
    data: np.ndarray,
    bands: Sequence[str],
    chunk: int,
    *,
    pixel_m: float = 10.0,
    origin: tuple[float, float] = ORIGIN,
) -> xr.DataArray:
    """A lazy ``(time, band, y, x)`` float32 cube of ``data`` (time, band, y, x), chunked
    ``(1, all bands, chunk, chunk)``, with pixel-centre coordinates in metres and integer times."""
    t, b, ny, nx = data.shape
    return xr.DataArray(
        da.from_array(data.astype("float32"), chunks=(1, b, chunk, chunk)),
        dims=("time", "band", "y", "x"),
        coords={
            "time": np.arange(t),
            "band": list(bands),
            "y": origin[1] - pixel_m * (np.arange(ny) + 0.5),
            "x": origin[0] + pixel_m * (np.arange(nx) + 0.5),
        },
    )


#: Bands of :func:`hazy_fields`, in order.
HAZY_FIELD_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


def hazy_fields(
    seed: int, ny: int, nx: int, hazes: Sequence[tuple[float, float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fields of 8 px (0 dark vegetation, 1 bare soil, 2 mid crops) and a lake under haze that
    thickens from left to right: one date per ``(haze, airlight)`` of ``hazes`` (red-band haze
    depth 0-1, airlight reflectance), transmission scaled by wavelength^-1.3.

    Returns the reflectance (time, band, y, x) float64 in :data:`HAZY_FIELD_BANDS`, the field
    kinds (y, x) and the lake mask (y, x)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx].astype("float64")
    kinds = rng.integers(0, 3, size=(ny // 8, nx // 8)).repeat(8, 0).repeat(8, 1)
    surface = np.array(
        [
            [0.02, 0.04, 0.03, 0.35, 0.16, 0.08],  # vegetation
            [0.09, 0.13, 0.18, 0.25, 0.33, 0.28],  # bare soil
            [0.05, 0.08, 0.07, 0.28, 0.2, 0.12],  # crops
        ]
    )[kinds].transpose(2, 0, 1)
    lake = (yy - 36) ** 2 + (xx - 12) ** 2 < 8**2
    surface[:, lake] = np.array([0.04, 0.05, 0.03, 0.01, 0.005, 0.004])[:, None]
    surface *= rng.uniform(0.9, 1.1, surface.shape)
    wl = np.array([490.0, 560.0, 665.0, 842.0, 1610.0, 2190.0])
    dates = []
    for haze, a in hazes:
        t_red = 1.0 - haze * (0.3 + 0.7 * xx / nx)
        t = t_red[None] ** ((wl / 665.0) ** -1.3)[:, None, None]
        dates.append(surface * t + a * (1.0 - t))
    return np.stack(dates), kinds, lake


#: (VV, VH) dB of the land covers of :func:`sar_land_cover_fields`: forest, crops, grass, dry
#: bare soil, town. Typical C-band IW backscatter of each cover, for test scenes only (no stage
#: constant is set from them); dry bare soil is as dark in VH as rough water.
SAR_LAND_COVERS_DB = ((-7.5, -13.5), (-10.0, -16.5), (-11.5, -18.5), (-13.5, -22.0), (-4.0, -11.0))


def sar_land_cover_fields(
    seed: int,
    ny: int,
    nx: int,
    shares: Sequence[float],
    field_px: int = 16,
    covers: Sequence[tuple[float, float]] = SAR_LAND_COVERS_DB,
) -> tuple[np.ndarray, np.ndarray]:
    """VV, VH (y, x) float64 dB of land in square fields of ``field_px``, each a cover of
    ``covers`` ((VV, VH) dB; default :data:`SAR_LAND_COVERS_DB`) drawn with ``shares`` and
    offset in both channels by its own N(0, 1 dB) (no speckle: add it where the scene is
    made)."""
    rng = np.random.default_rng(seed)
    fy, fx = -(-ny // field_px), -(-nx // field_px)
    cover = rng.choice(len(covers), size=(fy, fx), p=np.asarray(shares))
    offset = rng.normal(0.0, 1.0, (fy, fx))
    fields = np.asarray(covers, dtype="float64")[cover] + offset[..., None]  # (fy, fx, 2)
    planes = fields.repeat(field_px, 0).repeat(field_px, 1)[:ny, :nx]
    return planes[..., 0], planes[..., 1]


def write_geotiff(
    path: Path,
    data: np.ndarray,
    names: Sequence[str],
    *,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = ORIGIN,
    pixel_m: float = 10.0,
) -> Path:
    """Write ``data`` (band, y, x) as a GeoTIFF whose band descriptions are ``names`` (the
    band naming ``terrapipe stage`` reads)."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=from_origin(*origin, pixel_m, pixel_m),
    ) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return path
