"""cloud_mask_s2cloudless: the learned cloud mask (s2cloudless) beside the rules of ``cloud_mask``.

s2cloudless (Zupanc 2017, Sentinel Hub; one of the Pareto-optimal detectors of the CMIX
intercomparison, Skakun et al. 2022) is a LightGBM classifier of single pixels. Its model ships
inside the ``s2cloudless`` wheel: nothing is downloaded.

* **Input**: Sentinel-2 **L1C top-of-atmosphere** reflectance 0..1 (digital numbers / 10000; from
  processing baseline 04.00 on, after ESA's harmonisation offset) of the 10 bands
  :data:`MODEL_BANDS` (B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12) on one grid. The model was
  trained on 10 m pixels; it classifies single pixels, and Sentinel Hub runs it on 160 m pixels
  for its CLM/CLP layers, Earth Engine on 10 m pixels with every band upsampled bilinearly.
* **L2A**: refused. L2A is surface reflectance, which the model never saw, and L2A products carry
  no B10 (1.375 um cirrus band), one of its 10 features; there is no sound substitute. The second
  opinion on an L2A scene is this stage run on the L1C scene of the same date and tile (same
  sensing time, same grid), compared with the L2A's SCL mask (``cloud_mask``); see docs/cloud.md.
* **Processing cells**: the model sees the bands averaged over cells of ``processing_m``
  (default 60 m: 6 x 6 pixels at 10 m), one prediction per cell repeated onto its pixels. Cells
  start at multiples of their size in the CRS, so neighbouring tiles share them (and 60 m cells
  fall on the 60 m pixels of Sentinel-2 tiles, whose corners are multiples of 60 m). 60 m is the
  native pixel of three of its ten bands (B01, B09, B10), eo-learn's ``CloudMaskTask`` recommends
  downscaling before the classifier (speed, memory, noise) and Sentinel Hub's CLM uses 160 m
  cells. The model costs tens of microseconds per prediction:
  measured on the shared 2-core machine, 0.014 Mpx/s at every 10 m pixel, 0.30 Mpx/s with 60 m
  cells; on the real eo-learn scenes the 60 m mask agrees with the per-pixel one on 99.96 % of
  pixels (REAL). ``processing_m=None`` predicts every pixel, as the package does.
* **Post-processing** (as ``S2PixelCloudDetector.get_mask_from_prob``): the probability is
  averaged over a disk, thresholded (``> threshold``) and the mask dilated by a disk. The
  published defaults are threshold 0.4, ``average_over`` 4 px and ``dilation_size`` 2 px; the
  package states no resolution for them. Here they are taken at the model's training resolution,
  10 m (a 40 m averaging radius, a 20 m dilation radius), and converted to whole pixels of the
  input grid (20 m pixels: 2 px and 1 px). Sentinel Hub's precomputed CLM applies the same pixel
  counts to 160 m pixels (640 m, 320 m): pass those for a conservative mask.

Output: a Dataset of ``cloud_mask`` (time, y, x) uint8 :class:`~pipelines.classes.CloudClass`
(0 nodata, 1 clear, 2 cloud, 5 snow; s2cloudless has no shadow or cirrus class: cirrus it
detects is cloud; snow is ``cloud_mask``'s test, :func:`pipelines.stages.cloud_mask.snow_np`,
on the pixels the model calls clear, where the scene holds B03 beside the model's B04 and B11)
and ``cloud_probability`` (time, y, x) uint8 percent 0-100 before averaging (the mask is made
from the unrounded probability), 255 nodata
(the encoding of Earth Engine's ``S2_CLOUD_PROBABILITY``). A pixel is nodata where any model
band is NaN.
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import dask.array as da
import numpy as np
import xarray as xr
from skimage.morphology import disk

from pipelines.classes import CloudClass
from pipelines.errors import BadInputError
from pipelines.stages import filters as F
from pipelines.stages.cloud_mask import snow_np

__all__ = [
    "AVERAGE_OVER_M",
    "DILATION_M",
    "MODEL_BANDS",
    "PROBABILITY_NODATA",
    "PROCESSING_M",
    "THRESHOLD",
    "cloud_mask_s2cloudless",
    "cloud_probability",
]

#: The 10 L1C bands the s2cloudless model reads, in its feature order.
MODEL_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
#: s2cloudless's published defaults: probability threshold, and the averaging and dilation disk
#: radii (4 px and 2 px) taken at the model's 10 m training resolution, in metres.
THRESHOLD = 0.4
AVERAGE_OVER_M = 40.0
DILATION_M = 20.0
#: Cell size (m) the model sees by default (see the module docstring).
PROCESSING_M = 60.0
#: ``cloud_probability`` value of nodata pixels (valid values are 0-100 percent).
PROBABILITY_NODATA = 255

_LOCAL = threading.local()


def _booster() -> Any:
    """The s2cloudless LightGBM model, loaded once per thread (prediction on one Booster from
    several threads at once is not documented as safe)."""
    booster = getattr(_LOCAL, "booster", None)
    if booster is None:
        from s2cloudless import S2PixelCloudDetector

        booster = S2PixelCloudDetector().classifier.classifier
        _LOCAL.booster = booster
    return booster


def cloud_probability(bands: np.ndarray) -> np.ndarray:
    """s2cloudless cloud probability (0-1 float32) of ``bands`` (..., 10) in
    :data:`MODEL_BANDS` order, TOA reflectance 0..1; NaN where any band is NaN."""
    bands = np.asarray(bands, dtype="float32")
    if bands.shape[-1] != len(MODEL_BANDS):
        raise BadInputError(
            "bands", bands.shape, f"an array (..., {len(MODEL_BANDS)}) of {list(MODEL_BANDS)}"
        )
    pixels = bands.reshape(-1, bands.shape[-1])
    nodata = np.isnan(pixels).any(axis=1)
    prob = np.full(pixels.shape[0], np.nan, dtype="float32")
    if (~nodata).any():
        # One thread per call: Dask already runs one block per worker thread.
        prob[~nodata] = _booster().predict(pixels[~nodata], num_threads=1)
    return prob.reshape(bands.shape[:-1])


def _probability_block(*planes: np.ndarray) -> np.ndarray:
    """Probability (float32 0-1, NaN nodata) of one (time, y, x) block from its band planes."""
    return cloud_probability(np.stack(planes, axis=-1))


def _cell_offset(coord: xr.DataArray | None, factor: int) -> int:
    """Pixels between the first pixel and the start of its cell, for cells of ``factor`` pixels
    aligned to multiples of ``factor`` pixel sizes in the CRS (0 without a usable coordinate)."""
    if coord is None or coord.size < 2:
        return 0
    values = np.asarray(coord.values, dtype="float64")
    step = float(values[1] - values[0])
    if not (np.isfinite(step) and step != 0):
        return 0
    index = round((values[0] - step / 2) / step)  # CRS pixel index of the first pixel
    return int(index % factor)


def _coarse_probability(
    planes: list[da.Array], factor: int, offset: tuple[int, int] = (0, 0)
) -> da.Array:
    """Probability (float32 0-1) of the band ``planes`` (time, y, x) averaged over
    ``factor`` x ``factor`` cells (NaN ignored; edge cells hold what remains), predicted once per
    cell and repeated back onto every pixel of the cell. ``offset``: (y, x) pixels between the
    first pixel and the start of its cell."""
    ny, nx = planes[0].shape[1:]
    oy, ox = offset
    stack = da.stack(planes, axis=-1)
    pad = ((0, 0), (oy, -(ny + oy) % factor), (ox, -(nx + ox) % factor), (0, 0))
    stack = da.pad(stack, pad, mode="constant", constant_values=np.nan)
    size = [max(factor, (c // factor) * factor) for c in stack.chunksize[1:3]]
    stack = stack.rechunk({1: size[0], 2: size[1], 3: -1})
    coarse = da.coarsen(F.nanmean, stack, {1: factor, 2: factor})
    prob = coarse.map_blocks(cloud_probability, drop_axis=3, dtype="float32")
    prob = da.repeat(da.repeat(prob, factor, axis=1), factor, axis=2)[:, oy : oy + ny, ox : ox + nx]
    return prob.rechunk(planes[0].chunks)


def _percent_block(prob: np.ndarray) -> np.ndarray:
    """Probability in whole percent (uint8), :data:`PROBABILITY_NODATA` where NaN."""
    out = np.full(prob.shape, PROBABILITY_NODATA, dtype="uint8")
    ok = np.isfinite(prob)
    out[ok] = np.rint(prob[ok] * 100).astype("uint8")
    return out


def _mask_block(prob: np.ndarray, threshold: float, average_r: int, dilate_r: int) -> np.ndarray:
    """CloudClass of one (time, y, x) block (with halo) from its probability: disk mean (nodata
    counts as clear), threshold, disk dilation; nodata last."""
    nodata = np.isnan(prob)
    prob = np.where(nodata, np.float32(0.0), prob).astype("float32")
    out = np.empty(prob.shape, dtype="uint8")
    kernel = disk(average_r).astype("float32") if average_r > 0 else None
    dil = disk(dilate_r).astype("uint8") if dilate_r > 0 else None
    for i in np.ndindex(prob.shape[:-2]):
        plane = prob[i]
        if kernel is not None:
            plane = cv2.filter2D(plane, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
        cloud = (plane > threshold).astype("uint8")
        if dil is not None:
            cloud = cv2.dilate(cloud, dil)
        out[i] = np.where(cloud > 0, CloudClass.CLOUD, CloudClass.CLEAR)
    out[nodata] = CloudClass.NODATA
    return out


def _check_bands(s2: xr.DataArray) -> None:
    """Refuse an ``s2_l1c`` without the model's 10 L1C bands, naming the missing ones (and why an
    L2A scene cannot feed the model)."""
    if "band" not in s2.coords:
        raise BadInputError("s2_l1c.band", None, f"a 'band' coordinate holding {list(MODEL_BANDS)}")
    present = [str(b) for b in s2.coords["band"].values]
    missing = [b for b in MODEL_BANDS if b not in present]
    if not missing:
        return
    why = f"bands missing: {missing}; bands present: {present}"
    if "SCL" in present:
        why += (
            ". This looks like an L2A scene (it has SCL): L2A is surface reflectance and carries "
            "no B10, and s2cloudless was trained on L1C top-of-atmosphere reflectance. Give the "
            "L1C scene of the same date and tile, or use cloud_mask (SCL) on the L2A scene"
        )
    raise BadInputError(
        "s2_l1c.band", missing, f"the 10 Sentinel-2 L1C TOA bands {list(MODEL_BANDS)}", why
    )


def cloud_mask_s2cloudless(
    s2_l1c: xr.DataArray,
    *,
    threshold: float = THRESHOLD,
    average_over_m: float = AVERAGE_OVER_M,
    dilation_m: float = DILATION_M,
    processing_m: float | None = PROCESSING_M,
) -> xr.Dataset:
    """s2cloudless cloud classes and probability of each S2 L1C date, lazily.

    ``s2_l1c``: (time, band, y, x) float32 TOA reflectance 0..1 holding :data:`MODEL_BANDS` (other
    bands are ignored). ``threshold``: probability 0-1 above which the averaged probability is
    cloud. ``average_over_m`` / ``dilation_m``: disk radii in metres (0: no averaging / no
    dilation), converted with the pixel size of the ``x`` coordinate. ``processing_m``: size
    (m) of the cells the model sees, the bands averaged over whole pixels of the input grid
    (None or the pixel size: every pixel, as the package does). Returns a Dataset of
    ``cloud_mask`` and ``cloud_probability`` (module docstring).
    """
    s2 = F.require_dims(s2_l1c, "s2_l1c", ("time", "band", "y", "x"))
    _check_bands(s2)
    if not (np.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise BadInputError("threshold", threshold, "a probability strictly between 0 and 1")
    for name, value in (("average_over_m", average_over_m), ("dilation_m", dilation_m)):
        if not np.isfinite(value) or value < 0:
            raise BadInputError(name, value, "a finite distance >= 0 in metres")
    if processing_m is not None and not (np.isfinite(processing_m) and processing_m > 0):
        raise BadInputError("processing_m", processing_m, "None or a cell size > 0 in metres")
    pixel_m = F.pixel_size_m(s2)
    factor = 1 if processing_m is None else max(1, round(processing_m / pixel_m))
    average_r = F.pixels_for(average_over_m, pixel_m)
    dilate_r = F.pixels_for(dilation_m, pixel_m)
    s2 = F.as_dask(s2)
    data = s2.transpose("time", "band", "y", "x").data
    index = {str(b): i for i, b in enumerate(s2.coords["band"].values)}
    planes = [data[:, index[b]] for b in MODEL_BANDS]
    if factor == 1:
        prob_f = da.map_blocks(_probability_block, *planes, dtype="float32")
    else:
        nodata = da.stack([da.isnan(p) for p in planes]).any(axis=0)
        offset = (
            _cell_offset(s2.coords.get("y"), factor),
            _cell_offset(s2.coords.get("x"), factor),
        )
        prob_f = da.where(nodata, np.float32(np.nan), _coarse_probability(planes, factor, offset))
    percent = da.map_blocks(_percent_block, prob_f, dtype="uint8")
    classes = F.overlap(
        _mask_block,
        prob_f,
        depth=average_r + dilate_r,
        dtype="uint8",
        threshold=float(threshold),
        average_r=average_r,
        dilate_r=dilate_r,
    )
    coords = {k: v for k, v in s2.coords.items() if set(v.dims) <= {"time", "y", "x"}}
    if "B03" in index:
        snow = da.map_blocks(
            snow_np, data[:, index["B03"]], data[:, index["B04"]], data[:, index["B11"]], dtype=bool
        ).rechunk(classes.chunks)
        classes = da.where(
            snow & (classes == CloudClass.CLEAR), np.uint8(CloudClass.SNOW), classes
        ).astype("uint8")
    attrs = {k: v for k, v in s2.attrs.items() if k in ("crs", "epsg", "transform", "spatial_ref")}
    dims = ("time", "y", "x")
    mask = xr.DataArray(classes, dims=dims, coords=coords, attrs=dict(attrs), name="cloud_mask")
    mask.attrs.update(
        classes="0 nodata, 1 clear, 2 cloud, 5 snow",
        method="s2cloudless",
        threshold=float(threshold),
        average_over_m=float(average_over_m),
        dilation_m=float(dilation_m),
        processing_m=float(factor * pixel_m),
    )
    prob = xr.DataArray(
        percent, dims=dims, coords=coords, attrs=dict(attrs), name="cloud_probability"
    )
    prob.attrs.update(units="percent", nodata=PROBABILITY_NODATA, method="s2cloudless")
    return xr.Dataset({"cloud_mask": mask, "cloud_probability": prob})
