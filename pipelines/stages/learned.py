"""Learned stages: the dehaze CNN and the 4x super-resolution CNN (``models/``), run per tile.

Both are declared ``gpu=1`` in the registry: their Dask tasks reach only GPU workers, where the
network is loaded once per worker (``models.serving``). Inside a block the image is cut into
overlapping windows and blended (``models.tiling.predict_tiled``), so no seam shows and the result
equals whole-image inference. Inputs are reflectance (unitless, 0-1) with NaN nodata; outputs keep
NaN wherever the input (the reference date) had none. Both need the ``ml`` extra (torch): without
it they raise :class:`pipelines.errors.MissingExtraError` when the graph is built.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from pipelines.errors import BadInputError, require_extra
from pipelines.stages.gapfill import nearest_sar

BGRN = ("B02", "B03", "B04", "B08")
SAR_POLS = ("VV", "VH")
#: Window core (input px) of the dehaze CNN: large enough that its 32 px halo costs little.
DEHAZE_TILE_PX = 512
#: Other S2 dates a super-resolved date may draw on: the nearest, at most this far in time.
SR_MAX_DATES = 4
SR_MAX_DAYS = 30
#: An S1 acquisition guides a date when it is at most this many days away.
SR_SAR_MAX_DAYS = 6


def _check_bands(arr: xr.DataArray, wanted: tuple[str, ...], field: str) -> xr.DataArray:
    if "band" not in arr.dims:
        raise BadInputError(field, tuple(arr.dims), "dims (time, band, y, x)")
    have = [str(b) for b in arr["band"].values]
    missing = [b for b in wanted if b not in have]
    if missing:
        raise BadInputError(f"{field} bands", have, f"bands including {list(wanted)}")
    out = arr.sel(band=list(wanted))
    if not np.issubdtype(out.dtype, np.floating):
        raise BadInputError(
            f"{field} dtype", str(out.dtype), "float reflectance (load_s2 / terrapipe GeoTIFFs)"
        )
    return out.astype("float32")


def _whole_tile(arr: xr.DataArray) -> da.Array:
    """The array with one chunk per (time) step and the whole tile in y and x."""
    data = arr.data if isinstance(arr.data, da.Array) else da.asarray(arr.data)
    chunks = {i: (1 if d == "time" else -1) for i, d in enumerate(arr.dims)}
    return data.rechunk(chunks)


def _dehaze_block(block: np.ndarray) -> np.ndarray:
    from models.registry import model_spec
    from models.serving import worker_model
    from models.tiling import predict_tiled

    spec = model_spec("dehaze")
    net = worker_model("dehaze")
    out = np.full(block.shape, np.nan, np.float32)
    for t in range(block.shape[0]):
        x = block[t]
        valid = np.all(np.isfinite(x), axis=0)
        if not valid.any():
            continue
        filled = np.where(valid, x, 0.0).astype("float32")
        pred = predict_tiled(net, filled, halo=spec.halo, tile=DEHAZE_TILE_PX)
        out[t] = np.where(valid, np.maximum(pred, 0.0), np.nan)
    return out


def dehaze_learned(s2: xr.DataArray) -> xr.DataArray:
    """Haze-free BGRN reflectance from the dehaze CNN.

    ``s2``: (time, band, y, x) float32 reflectance with B02, B03, B04, B08 (other bands ignored).
    Returns (time, band=[B02, B03, B04, B08], y, x) float32, NaN where the input had nodata.
    Needs the ``ml`` extra (torch).
    """
    require_extra("ml")
    bgrn = _check_bands(s2, BGRN, "s2")
    bgrn = bgrn.transpose("time", "band", "y", "x")
    out = da.map_blocks(_dehaze_block, _whole_tile(bgrn), dtype=np.float32)
    result = xr.DataArray(out, coords=bgrn.coords, dims=bgrn.dims)
    result.attrs = {"units": "reflectance", "long_name": "haze-free reflectance (dehaze CNN)"}
    return result


# ---- super-resolution ----------------------------------------------------------------------


def sr_date_choice(times: np.ndarray, index: int) -> list[int]:
    """Indices of the dates that super-resolve date ``index``: itself first, then the nearest
    others (at most ``SR_MAX_DATES`` in all, within ``SR_MAX_DAYS``)."""
    t = times.astype("datetime64[s]").astype("int64") / 86400.0
    gaps = np.abs(t - t[index])
    order = [int(i) for i in np.argsort(gaps, kind="stable") if i != index]
    near = [i for i in order if gaps[i] <= SR_MAX_DAYS]
    return [index, *near[: SR_MAX_DATES - 1]]


def _sr_block(block: np.ndarray, n_dates: int, has_sar: bool) -> np.ndarray:
    from models.registry import model_spec
    from models.serving import worker_model
    from models.super_resolution.network import pack_inputs, predict_scene

    spec = model_spec("super_resolution")
    s = spec.scale
    dates = [block[4 * k : 4 * k + 4] for k in range(n_dates)]
    sar = block[4 * n_dates : 4 * n_dates + 2] if has_sar else None
    valid = np.all(np.isfinite(dates[0]), axis=0)
    out = np.full((4, block.shape[1] * s, block.shape[2] * s), np.nan, np.float32)
    if not valid.any():
        return out[None]
    packed = pack_inputs(dates, sar)
    # the PSF is the sensor's: estimated once on the whole date-0 plane, the same for every tile
    pred = predict_scene(worker_model("super_resolution"), packed, halo=spec.halo)
    keep = np.repeat(np.repeat(valid, s, axis=0), s, axis=1)
    out[:] = np.where(keep, np.maximum(pred, 0.0), np.nan)
    return out[None]


def _fine_coords(coord: np.ndarray, scale: int) -> np.ndarray:
    """Pixel centres of a grid ``scale`` times finer than the one with centres ``coord``."""
    step = (coord[1] - coord[0]) if coord.size > 1 else 1.0
    start = coord[0] - step / 2
    return start + (np.arange(coord.size * scale) + 0.5) * step / scale


def super_resolution(s2: xr.DataArray, s1: xr.DataArray | None = None) -> xr.DataArray:
    """BGRN reflectance on a 4x finer grid (10 m -> 2.5 m) from the super-resolution CNN.

    ``s2``: (time, band, y, x) reflectance with B02, B03, B04, B08; each date is super-resolved
    with up to 3 other dates of ``s2`` (the nearest within 30 days) and, when ``s1`` (time, band
    [VV, VH], y, x, dB, same grid) has an acquisition within 6 days, its VV/VH as guidance.
    Returns (time, band, y, x) float32 with y/x the pixel centres of the 4x grid. The sensor's
    PSF and noise are estimated once per date on its whole block and shared by every inference
    tile (:func:`models.super_resolution.network.predict_scene`), so tiles stitch seamlessly;
    where a date's detail is its noise, the output there is bicubic.
    Needs the ``ml`` extra (torch).
    """
    require_extra("ml")
    from models.registry import model_spec

    scale = model_spec("super_resolution").scale
    bgrn = _check_bands(s2, BGRN, "s2").transpose("time", "band", "y", "x")
    sar = None
    if s1 is not None:
        sar = _check_bands(s1, SAR_POLS, "s1").transpose("time", "band", "y", "x")
        for dim in ("y", "x"):
            step = (
                abs(float(bgrn[dim].values[1] - bgrn[dim].values[0])) if bgrn.sizes[dim] > 1 else 1
            )
            if sar.sizes[dim] != bgrn.sizes[dim] or not np.allclose(
                sar[dim].values, bgrn[dim].values, rtol=0, atol=1e-3 * step
            ):
                raise BadInputError(
                    f"s1.{dim}",
                    sar.sizes[dim],
                    f"the S2 grid ({bgrn.sizes[dim]} pixels with the same centres)",
                )
    times = bgrn["time"].values
    s2_data = _whole_tile(bgrn)
    s1_data = _whole_tile(sar) if sar is not None else None
    per_date = []
    for i in range(len(times)):
        chosen = sr_date_choice(times, i)
        parts = [s2_data[j] for j in chosen]
        k = (
            nearest_sar(times[i : i + 1], sar["time"].values, SR_SAR_MAX_DAYS)[0]
            if sar is not None
            else None
        )
        if k is not None and s1_data is not None:
            parts.append(s1_data[k])
        stacked = da.concatenate(parts, axis=0).rechunk({0: -1})
        per_date.append(
            stacked.map_blocks(
                _sr_block,
                n_dates=len(chosen),
                has_sar=k is not None,
                dtype=np.float32,
                chunks=((1,), (4,), (stacked.shape[1] * scale,), (stacked.shape[2] * scale,)),
                new_axis=0,
            )
        )
    data = da.concatenate(per_date, axis=0)
    coords: dict[str, Any] = {
        "time": bgrn["time"].values,
        "band": list(BGRN),
        "y": _fine_coords(bgrn["y"].values, scale),
        "x": _fine_coords(bgrn["x"].values, scale),
    }
    result = xr.DataArray(data, coords=coords, dims=("time", "band", "y", "x"))
    result.attrs = {"units": "reflectance", "long_name": "4x super-resolved reflectance (CNN)"}
    import rioxarray  # noqa: F401  (the .rio accessor)

    if bgrn.rio.crs is not None:
        result = result.rio.write_crs(bgrn.rio.crs)
    return result
