"""GeoTIFF inputs for running one stage by hand (``terrapipe stage``).

Bands are named by their band descriptions (``B02``, ``B03``, ... ``SCL``; ``VV``, ``VH``; a DEM
has one band); Earth Engine's unpadded names (``B2``, ``B8``) are read as ``B02``, ``B08``.
Integer Sentinel-2 bands are reflectance x 10000, float bands are reflectance; SAR is
backscatter in dB; a DEM is metres. Every file of one call must share one grid.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pipelines.errors import BadInputError

#: Chunk edge (pixels) of the lazy arrays read from GeoTIFFs.
CHUNK_PX = 1024
#: Most pixels (width x height) one input may have: a stage by hand computes it in memory.
MAX_PIXELS = 16384 * 16384
#: Attribute naming the file an input array was read from (grid errors name it).
SOURCE_ATTR = "terrapipe_source"


def _open(path: str | Path, field: str, *, any_crs: bool = False) -> xr.DataArray:
    """A GeoTIFF as a lazy (band, y, x) array, its header checked: a projected CRS in metres
    (unless ``any_crs``: a comparison of pixels with pixels needs no grid) and at most
    :data:`MAX_PIXELS` pixels."""
    import rasterio
    import rioxarray

    try:
        with warnings.catch_warnings():
            # Per-band scales and offsets are read by _declared_scaling, not from these attrs.
            warnings.filterwarnings("ignore", message="(Scales|Offsets) differ across bands")
            da = rioxarray.open_rasterio(path, chunks={"x": CHUNK_PX, "y": CHUNK_PX}, masked=False)
    except (rasterio.errors.RasterioIOError, OSError) as exc:
        raise BadInputError(field, str(path), "a readable GeoTIFF", str(exc)) from None
    assert isinstance(da, xr.DataArray)
    # Checked on the header, before any pixel is read.
    crs = da.rio.crs
    if crs is None and not any_crs:
        raise BadInputError(field, str(path), "a georeferenced GeoTIFF (it has no CRS)")
    if crs is not None and not crs.is_projected and not any_crs:
        raise BadInputError(
            field,
            str(path),
            "a GeoTIFF in a projected CRS in metres (e.g. a UTM zone EPSG:326xx)",
            f"it is in {crs}; reproject it, e.g. `gdalwarp -t_srs EPSG:32650 IN OUT`",
        )
    height, width = da.rio.shape
    if height * width > MAX_PIXELS:
        raise BadInputError(
            field,
            str(path),
            f"a GeoTIFF of at most {MAX_PIXELS:,} pixels",
            f"it has {width} x {height} = {width * height:,}; cut it into smaller windows",
        )
    return da


#: A Sentinel-2 band name with or without the zero padding (``B2``, ``B02``, ``b8a``).
_S2_BAND = re.compile(r"B0*(\d{1,2})(A?)")


def canonical_band(name: str) -> str:
    """A band description as the stages name it: upper case, Sentinel-2 bands zero-padded
    (Earth Engine's ``B2`` -> ``B02``, ``B8A`` stays); anything else (``VV``, ``SCL``) as is."""
    upper = str(name).strip().upper()
    match = _S2_BAND.fullmatch(upper)
    if match is None:
        return upper
    return f"B{int(match[1])}A" if match[2] else f"B{int(match[1]):02d}"


def parse_band_names(value: str, field: str) -> tuple[str, ...]:
    """Band names given on the command line, in the file's band order (``B02,B03,B04,B08``;
    Earth Engine's ``B2`` and lower case read as the stages name them): for GeoTIFFs whose
    bands have no descriptions, or descriptions that name them otherwise."""
    names = tuple(canonical_band(n) for n in value.split(","))
    if not value.strip() or any(not n for n in names):
        raise BadInputError(
            field, value, "band names in the file's band order, comma-separated: B02,B03,B04,B08"
        )
    if len(set(names)) != len(names):
        raise BadInputError(field, value, "each band named once", f"it reads as {list(names)}")
    return names


def _band_names(
    da: xr.DataArray, path: str | Path, field: str, given: Sequence[str] | None = None
) -> list[str]:
    """The stages' names of ``da``'s bands: ``given`` (:func:`parse_band_names`, one per band in
    the file's order) or the file's band descriptions."""
    if given is not None:
        if len(given) != da.sizes["band"]:
            raise BadInputError(
                field,
                str(path),
                f"a GeoTIFF of {len(given)} bands, one for each given name {list(given)}",
                f"it has {da.sizes['band']} bands",
            )
        return list(given)
    names = da.attrs.get("long_name")
    if isinstance(names, str):
        names = [names]
    if not names or any(not n for n in names) or len(names) != da.sizes["band"]:
        raise BadInputError(
            field,
            str(path),
            "a GeoTIFF whose bands have descriptions naming them (B02, B03, B04, B08, SCL; VV, VH)",
            "set them with e.g. `rio edit-info --bidx 1 --description B02 FILE`, or name the "
            "bands in order where the command takes band names",
        )
    canonical = [canonical_band(n) for n in names]
    if len(set(canonical)) != len(canonical):
        raise BadInputError(
            field,
            str(path),
            "a GeoTIFF whose band descriptions name each band once",
            f"its descriptions {list(names)} read as {canonical}",
        )
    return canonical


def _time_of(da: xr.DataArray, index: int) -> np.datetime64:
    stamp = da.attrs.get("TIFFTAG_DATETIME")
    if stamp:
        try:
            return pd.Timestamp(stamp.replace(":", "-", 2)).as_unit("ns").to_datetime64()
        except ValueError:
            pass
    return np.datetime64("2000-01-01", "ns") + np.timedelta64(index, "D")


def grid_differences(ref: xr.DataArray, other: xr.DataArray) -> list[str]:
    """How ``other``'s grid differs from ``ref``'s: its crs, shape and transform where each
    differs (empty when they share one grid)."""
    found = []
    if ref.rio.crs != other.rio.crs:
        found.append(f"crs {other.rio.crs} instead of {ref.rio.crs}")
    if ref.rio.shape != other.rio.shape:
        found.append(f"shape {other.rio.shape} instead of {ref.rio.shape}")
    a, b = tuple(ref.rio.transform())[:6], tuple(other.rio.transform())[:6]
    if not np.allclose(a, b):
        found.append(f"transform {b} instead of {a}")
    return found


def _check_grid(
    ref: xr.DataArray, other: xr.DataArray, field: str, path: str | Path, first: str
) -> None:
    differences = grid_differences(ref, other)
    if differences:
        raise BadInputError(
            field,
            str(path),
            f"the same grid as {first} (crs, shape and transform)",
            "it has " + "; ".join(differences),
        )


def _declared_scaling(path: str | Path) -> tuple[list[float], list[float]] | None:
    """The band scales and offsets a GeoTIFF declares (GDAL band metadata), or None when it
    declares none (every scale 1 and offset 0)."""
    import rasterio

    with rasterio.open(path) as src:
        scales = [1.0 if v is None else float(v) for v in src.scales]
        offsets = [0.0 if v is None else float(v) for v in src.offsets]
    if all(v == 1.0 for v in scales) and all(v == 0.0 for v in offsets):
        return None
    return scales, offsets


def _read_dated(
    paths: Sequence[str | Path],
    field: str,
    what: str,
    scale_integers: bool,
    *,
    any_crs: bool = False,
    band_names: Sequence[str] | None = None,
) -> xr.DataArray:
    """One GeoTIFF per date -> (time, band, y, x) float32 (NaN nodata), on one grid (in any CRS,
    or none, with ``any_crs``); bands named by ``band_names`` when given, else by their
    descriptions."""
    if not paths:
        raise BadInputError(field, [], f"at least one {what} GeoTIFF")
    arrays = []
    ref = None
    for i, path in enumerate(paths):
        da = _open(path, field, any_crs=any_crs)
        names = _band_names(da, path, field, band_names)
        if ref is None:
            ref = da
        else:
            _check_grid(ref, da, field, path, str(paths[0]))
        nodata = da.rio.nodata
        da = da.assign_coords(band=names)
        values = da.astype("float32")
        if nodata is not None:
            values = values.where(da != nodata)
        declared = _declared_scaling(path) if scale_integers else None
        if declared is not None:
            # The file's own band scales and offsets (GDAL band metadata, as `gdal_edit.py
            # -scale 0.0001 -offset -0.1` sets them for processing baseline 04.00 and later);
            # SCL holds class codes, never scaled.
            scales = [1.0 if n == "SCL" else v for n, v in zip(names, declared[0], strict=True)]
            offsets = [0.0 if n == "SCL" else v for n, v in zip(names, declared[1], strict=True)]
            scale = xr.DataArray(scales, dims="band", coords={"band": names})
            offset = xr.DataArray(offsets, dims="band", coords={"band": names})
            values = (values * scale + offset).astype("float32")
        elif scale_integers and np.issubdtype(da.dtype, np.integer):
            # Integer reflectance is x 10000; SCL holds class codes and is never scaled.
            is_scl = xr.DataArray([n == "SCL" for n in names], dims="band", coords={"band": names})
            values = xr.where(is_scl, values, values / 10000.0, keep_attrs=True)
        values = values.expand_dims(time=[_time_of(da, i)])
        arrays.append(values.drop_vars("spatial_ref", errors="ignore"))
    if len({tuple(a["band"].values) for a in arrays}) > 1:
        raise BadInputError(field, [str(p) for p in paths], "the same bands in every date")
    assert ref is not None
    out = xr.concat(arrays, dim="time").astype("float32")
    if ref.rio.crs is not None:
        out = out.rio.write_crs(ref.rio.crs)
    out.attrs[SOURCE_ATTR] = str(paths[0])
    return out


def read_optical(
    paths: Sequence[str | Path],
    field: str = "--s2",
    *,
    any_crs: bool = False,
    band_names: Sequence[str] | None = None,
) -> xr.DataArray:
    """Sentinel-2 GeoTIFFs, one per date -> (time, band, y, x) float32 reflectance. A float
    file holding digital numbers is refused (:func:`check_reflectance`). ``any_crs``: accept a
    geographic CRS or none (for pixel-to-pixel comparisons; the stages need metres).
    ``band_names``: the files' bands in order (:func:`parse_band_names`), for files whose
    descriptions do not name them."""
    out = _read_dated(
        paths, field, "Sentinel-2", scale_integers=True, any_crs=any_crs, band_names=band_names
    )
    for path in paths:
        check_reflectance(path, field, band_names)
    return out


#: Side (px) of the decimated reads that check a GeoTIFF's units.
UNITS_CHECK_PX = 256
#: A float S2 GeoTIFF whose median over its reflectance bands exceeds this holds digital
#: numbers, not reflectance: snow and bright cloud reach about 1, no whole scene's median does.
MAX_MEDIAN_REFLECTANCE = 1.5


def _decimated(
    path: str | Path, *, floats_only: bool = False
) -> tuple[np.ndarray, list[str]] | None:
    """A decimated read (at most :data:`UNITS_CHECK_PX` px a side) of every band as float64 with
    NaN at nodata, and the band descriptions; None when the pixels are unreadable (the stage's
    own read then names the file and the damage) or, with ``floats_only``, when the file's
    data type is not a float one (nothing read)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            if floats_only and not np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
                return None
            shape = (src.count, min(src.height, UNITS_CHECK_PX), min(src.width, UNITS_CHECK_PX))
            sample = src.read(out_shape=shape, masked=True).astype("float64").filled(np.nan)
            return sample, [canonical_band(d or "") for d in src.descriptions]
    except rasterio.errors.RasterioError:
        return None


def check_reflectance(
    path: str | Path, field: str, band_names: Sequence[str] | None = None
) -> None:
    """Refuse a float Sentinel-2 GeoTIFF whose reflectance bands (all but SCL) have a median
    above :data:`MAX_MEDIAN_REFLECTANCE` (checked on a decimated read): digital numbers written
    as floats, which would read as reflectance thousands of times too bright. Integer files are
    digital numbers by definition and are scaled. ``band_names``: the bands' names in order
    where the descriptions do not give them."""
    read = _decimated(path, floats_only=True)
    if read is None:
        return
    sample, names = read
    names = list(band_names) if band_names is not None else names
    keep = [i for i, n in enumerate(names) if n != "SCL"] or list(range(sample.shape[0]))
    values = sample[keep][np.isfinite(sample[keep])]
    if values.size and np.median(values) > MAX_MEDIAN_REFLECTANCE:
        raise BadInputError(
            field,
            str(path),
            "Sentinel-2 reflectance (floats about 0-1) or digital numbers as integers",
            f"its float values have a median of {np.median(values):.4g}: digital numbers; "
            "divide by 10000 (and add the -0.1 offset from processing baseline 04.00) or "
            "write them as integers",
        )


def check_decibels(path: str | Path, field: str) -> None:
    """Refuse a Sentinel-1 GeoTIFF whose values are all >= 0 (checked on a decimated read of
    at most :data:`UNITS_CHECK_PX` px a side): backscatter in dB is negative over most of any scene
    (land VV about -10 dB, VH about -17 dB, water below -15 dB), while linear power and
    amplitude (ASF HyP3's default RTC scale, for one) never are; read as dB they would put
    every pixel above every water threshold."""
    read = _decimated(path)
    if read is None:
        return
    sample = read[0]
    values = sample[np.isfinite(sample)]
    if values.size and values.min() >= 0:
        raise BadInputError(
            field,
            str(path),
            "Sentinel-1 backscatter in dB (VV, VH)",
            f"its values are all >= 0 (min {values.min():.3g}, median {np.median(values):.3g}): "
            "linear power or amplitude; convert with 10 * log10(power) or 20 * log10(amplitude)",
        )


def read_sar(
    paths: Sequence[str | Path],
    field: str = "--s1",
    *,
    band_names: Sequence[str] | None = None,
) -> xr.DataArray:
    """Sentinel-1 GeoTIFFs (VV, VH in dB), one per date -> (time, band, y, x) float32 dB. A
    file in linear units is refused (:func:`check_decibels`). ``band_names``: the files' bands
    in order (:func:`parse_band_names`), for files whose descriptions do not name them."""
    out = _read_dated(paths, field, "Sentinel-1", scale_integers=False, band_names=band_names)
    for path in paths:
        check_decibels(path, field)
    return out


def read_dem(path: str | Path, field: str = "--dem") -> xr.DataArray:
    """A one-band DEM GeoTIFF -> (y, x) float32 metres."""
    da = _open(path, field)
    if da.sizes["band"] != 1:
        raise BadInputError(field, str(path), "a one-band DEM GeoTIFF")
    values = da.isel(band=0, drop=True).astype("float32")
    if da.rio.nodata is not None:
        values = values.where(da.isel(band=0, drop=True) != da.rio.nodata)
    out = values.drop_vars("spatial_ref", errors="ignore").rio.write_crs(da.rio.crs)
    out.attrs[SOURCE_ATTR] = str(path)
    return out


def check_same_grid(arrays: dict[str, xr.DataArray]) -> None:
    """All inputs of one stage call must share one grid (crs, shape, transform); an error
    names the file (and the input) that differs, and how."""
    items = list(arrays.items())
    if not items:
        return
    first, ref = items[0]
    first_file = f"{ref.attrs.get(SOURCE_ATTR, 'the first input')} (--{first.replace('_', '-')})"
    for name, da in items[1:]:
        path = da.attrs.get(SOURCE_ATTR, name)
        _check_grid(ref, da, f"--{name.replace('_', '-')}", path, first_file)
