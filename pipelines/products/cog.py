"""Cloud-optimised GeoTIFF export of one tile and date, for GIS users."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
import xarray as xr
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from pipelines.errors import BadInputError
from pipelines.faults import fault_point
from pipelines.storage import put_file

#: An overview resampling method rio-cogeo accepts.
OverviewResampling = Literal[
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "gauss",
    "rms",
]
#: Overview resampling methods rio-cogeo accepts.
OVERVIEW_RESAMPLING: tuple[OverviewResampling, ...] = get_args(OverviewResampling)
COMPRESSIONS = ("deflate", "zstd", "lzw")
#: Deflate level of the COGs: the fastest. Float rasters, whose entropy is in their mantissas,
#: compress no better at GDAL's default level 6 (DEMO bench tile, bit-rounded dehaze BGRN:
#: 19.0 MB at both; haze index planes 3 % larger at level 1) in about twice the time; class
#: rasters grow by 3-5 % of a few kB.
DEFLATE_LEVEL = 1


def _band_names(data: xr.DataArray) -> list[str]:
    if data.ndim == 2:
        return [str(data.name) if data.name is not None else "band1"]
    dim = data.dims[0]
    if dim in data.coords:
        return [str(v) for v in data[dim].values]
    return [f"band{i + 1}" for i in range(data.shape[0])]


def write_cog(
    data: xr.DataArray,
    url: str,
    *,
    nodata: float | None = None,
    overview_resampling: OverviewResampling = "nearest",
    compress: str = "deflate",
    blocksize: int = 512,
    tags: Mapping[str, Any] | None = None,
) -> int:
    """Write ``data`` (``(band, y, x)`` or ``(y, x)``) to ``url`` as a COG; returns its bytes.

    Georeferencing comes from the coordinates (``y``/``x`` pixel centres and a ``spatial_ref``
    grid-mapping coordinate, as in the product cubes). Band descriptions are the values of the
    first dim (e.g. variable names) or ``data.name``. ``nodata``: the nodata value written to the
    file (``None``: NaN for floats, none for integers). ``overview_resampling``: ``"nearest"`` (or
    ``"mode"``) for class rasters, ``"average"`` for continuous values. Internal tiles of
    ``blocksize`` px (multiple of 16), ``compress`` ``"deflate"`` or ``"zstd"`` with a predictor,
    band interleaved. Written to a local temp file, then uploaded with ``put_file``.
    """
    if not isinstance(data, xr.DataArray) or data.ndim not in (2, 3):
        raise BadInputError(
            "data", getattr(data, "dims", type(data).__name__), "a DataArray (band, y, x) or (y, x)"
        )
    if tuple(data.dims[-2:]) != ("y", "x"):
        raise BadInputError("data.dims", data.dims, "(band, y, x) or (y, x)")
    if overview_resampling not in OVERVIEW_RESAMPLING:
        raise BadInputError(
            "overview_resampling", overview_resampling, f"one of {OVERVIEW_RESAMPLING}"
        )
    if compress.lower() not in COMPRESSIONS:
        raise BadInputError("compress", compress, f"one of {COMPRESSIONS}")
    if blocksize <= 0 or blocksize % 16:
        raise BadInputError("blocksize", blocksize, "a positive multiple of 16")
    gbox = data.odc.geobox
    if gbox is None or gbox.crs is None:
        raise BadInputError(
            "data.spatial_ref", None, "a georeferenced array (y/x coords and a CRS coordinate)"
        )
    arr = np.asarray(data.values)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.dtype == bool:
        arr = arr.astype("uint8")
    is_float = arr.dtype.kind == "f"
    if nodata is None and is_float:
        nodata = float("nan")
    names = _band_names(data)
    count, height, width = arr.shape

    profile = cog_profiles.get(compress.lower())
    profile.update(
        blockxsize=blocksize,
        blockysize=blocksize,
        interleave="band",
        predictor=3 if is_float else 2,
    )
    if compress.lower() == "deflate":
        profile.update(zlevel=DEFLATE_LEVEL)
    src_profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": arr.dtype.name,
        "crs": CRS.from_wkt(gbox.crs.to_wkt()),
        "transform": gbox.affine,
        "nodata": nodata,
    }
    fd, tmp = tempfile.mkstemp(suffix=".tif", prefix="terrapipe-cog-")
    os.close(fd)
    try:
        with MemoryFile() as mem:
            with mem.open(**src_profile) as dst:
                dst.write(arr)
                for i, name in enumerate(names, start=1):
                    dst.set_band_description(i, name)
                if tags:
                    dst.update_tags(**{k: str(v) for k, v in tags.items()})
            with mem.open() as src:
                cog_translate(
                    src,
                    tmp,
                    profile,
                    nodata=nodata,
                    overview_resampling=overview_resampling,
                    in_memory=True,
                    quiet=True,
                    config={"GDAL_NUM_THREADS": "1", "GDAL_TIFF_OVR_BLOCKSIZE": str(blocksize)},
                )
        fault_point("cog.write")
        size = os.path.getsize(tmp)
        put_file(tmp, url)
    finally:
        os.unlink(tmp)
    return size
