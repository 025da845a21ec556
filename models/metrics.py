"""Image-quality metrics for restored multispectral reflectance (dehaze, super-resolution).

Every function takes ``pred`` and ``ref`` as (band, y, x) float arrays of the same shape
(reflectance, 0..1 unless stated) and an optional ``mask`` (y, x) bool of the pixels to score.
Pixels where any band of ``pred`` or ``ref`` is not finite are never scored. Each returns a
Python float; with no pixel left to score it returns NaN.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from pipelines.errors import BadInputError

__all__ = ["ergas", "ndvi", "ndvi_mae", "psnr", "sam_degrees", "ssim"]


def _prepare(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 copies of ``pred``/``ref`` (band, y, x) and the scored pixels (y, x) bool."""
    pred = np.asarray(pred, dtype="float64")
    ref = np.asarray(ref, dtype="float64")
    if pred.ndim != 3:
        raise BadInputError("pred", pred.shape, "a (band, y, x) array")
    if ref.shape != pred.shape:
        raise BadInputError("ref", ref.shape, f"the shape of pred {pred.shape}")
    ok = np.isfinite(pred).all(axis=0) & np.isfinite(ref).all(axis=0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != pred.shape[1:]:
            raise BadInputError("mask", mask.shape, f"a (y, x) bool array, shape {pred.shape[1:]}")
        ok &= mask.astype(bool)
    return pred, ref, ok


def psnr(
    pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0, *, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)`` over all bands."""
    if data_range <= 0:
        raise BadInputError("data_range", data_range, "a positive range (1.0: reflectance)")
    pred, ref, ok = _prepare(pred, ref, mask)
    if not ok.any():
        return float("nan")
    mse = float(np.mean((pred[:, ok] - ref[:, ok]) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    data_range: float = 1.0,
    mask: np.ndarray | None = None,
) -> float:
    """Mean structural similarity (Wang et al. 2004; ``skimage.metrics``, 7 px window) over bands.

    The SSIM map is computed on the whole image (non-finite values set to 0) and averaged over
    the scored pixels. Images smaller than 7 px use the largest odd window that fits (>= 3).
    """
    if data_range <= 0:
        raise BadInputError("data_range", data_range, "a positive range (1.0: reflectance)")
    pred, ref, ok = _prepare(pred, ref, mask)
    if not ok.any():
        return float("nan")
    side = min(pred.shape[1:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise BadInputError("pred", pred.shape, "an image at least 3 x 3 pixels for SSIM")
    _, smap = structural_similarity(
        np.nan_to_num(pred, nan=0.0, posinf=0.0, neginf=0.0),
        np.nan_to_num(ref, nan=0.0, posinf=0.0, neginf=0.0),
        data_range=data_range,
        channel_axis=0,
        win_size=win,
        full=True,
    )
    return float(smap[:, ok].mean())


def sam_degrees(pred: np.ndarray, ref: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Mean spectral angle (degrees) between ``pred`` and ``ref`` pixel spectra."""
    pred, ref, ok = _prepare(pred, ref, mask)
    if not ok.any():
        return float("nan")
    p, r = pred[:, ok], ref[:, ok]
    dot = (p * r).sum(axis=0)
    norm = np.linalg.norm(p, axis=0) * np.linalg.norm(r, axis=0)
    cos = np.clip(dot / np.maximum(norm, 1e-12), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())


def ergas(
    pred: np.ndarray, ref: np.ndarray, scale: float, *, mask: np.ndarray | None = None
) -> float:
    """ERGAS (Wald 2002): ``100 / scale * sqrt(mean_b (RMSE_b / mean(ref_b))**2)``.

    ``scale``: the resolution ratio of the restoration (4 for 10 m -> 2.5 m, 1 for a
    same-resolution restoration such as dehazing). Lower is better; 0 is perfect.
    """
    if scale <= 0:
        raise BadInputError("scale", scale, "a positive resolution ratio (1 for dehaze, 4 for 4x)")
    pred, ref, ok = _prepare(pred, ref, mask)
    if not ok.any():
        return float("nan")
    p, r = pred[:, ok], ref[:, ok]
    rmse = np.sqrt(np.mean((p - r) ** 2, axis=1))
    mean = np.maximum(np.abs(r.mean(axis=1)), 1e-12)
    return float(100.0 / scale * np.sqrt(np.mean((rmse / mean) ** 2)))


def ndvi(image: np.ndarray, red: int = 2, nir: int = 3) -> np.ndarray:
    """NDVI (y, x) of a (band, y, x) reflectance array from its ``red`` and ``nir`` band indices."""
    r = np.asarray(image[red], dtype="float64")
    n = np.asarray(image[nir], dtype="float64")
    return (n - r) / np.maximum(n + r, 1e-6)


def ndvi_mae(
    pred: np.ndarray,
    ref: np.ndarray,
    red: int = 2,
    nir: int = 3,
    *,
    mask: np.ndarray | None = None,
) -> float:
    """Mean absolute NDVI difference; ``red``/``nir`` are band indices (BGRN: 2 and 3)."""
    pred, ref, ok = _prepare(pred, ref, mask)
    for field, idx in (("red", red), ("nir", nir)):
        if not -pred.shape[0] <= idx < pred.shape[0]:
            raise BadInputError(field, idx, f"a band index below {pred.shape[0]}")
    if not ok.any():
        return float("nan")
    return float(np.abs(ndvi(pred, red, nir) - ndvi(ref, red, nir))[ok].mean())
