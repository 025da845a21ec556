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
