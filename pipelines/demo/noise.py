"""Spatially correlated random fields (pure numpy): fractal noise, upsampling, integer hashing."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0, cutoff: float = 0.0
) -> np.ndarray:
    """Gaussian random field with power spectrum ~ f**-beta, standardised (mean 0, std 1).

    ``cutoff`` (cycles per pixel) removes frequencies below it, which bounds the feature size.
    Returns float32 of ``shape``.
    """
    h, w = shape
    white = rng.standard_normal((h, w)).astype(np.float32)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    if cutoff > 0:
        amp[f < cutoff] = 0.0
    field = np.fft.irfft2(spec * amp, s=(h, w)).astype(np.float32)
    field -= field.mean()
    std = float(field.std())
    return field / (std if std > 0 else 1.0)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], factor: int = 4, beta: float = 3.0
) -> np.ndarray:
    """Fractal noise generated at 1/``factor`` resolution and bilinearly upsampled to ``shape``."""
    low = (max(2, -(-shape[0] // factor)), max(2, -(-shape[1] // factor)))
    coarse = fractal_noise(rng, low, beta=beta)
    return upsample(coarse, shape)


def upsample(
    arr: np.ndarray, shape: tuple[int, int], order: Literal[0, 1, 2, 3, 4, 5] = 1
) -> np.ndarray:
    """Resize ``arr`` to exactly ``shape`` (bilinear by default), keeping its dtype."""
    fy, fx = shape[0] / arr.shape[0], shape[1] / arr.shape[1]
    if order == 1 and fy == fx and float(fy).is_integer() and fy > 1:
        return _bilinear_int(_bilinear_int(arr, int(fy), 0), int(fx), 1)[: shape[0], : shape[1]]
    zoom = (shape[0] / arr.shape[0], shape[1] / arr.shape[1])
    out = ndimage.zoom(arr, zoom, order=order, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def _bilinear_int(arr: np.ndarray, f: int, axis: int) -> np.ndarray:
    """Bilinear upsampling by integer factor ``f`` along ``axis`` (pixel-centre aligned)."""
    a = np.moveaxis(arr, axis, 0)
    p = np.concatenate([a[:1], a, a[-1:]], axis=0)
    n = a.shape[0]
    out = np.empty((n * f, *a.shape[1:]), dtype=arr.dtype)
    for r in range(f):
        x = (r + 0.5) / f - 0.5
        i0 = int(np.floor(x))
        w = np.float32(x - i0)
        lo = p[1 + i0 : 1 + i0 + n]
        hi = p[2 + i0 : 2 + i0 + n]
        out[r::f] = lo + w * (hi - lo)
    return np.moveaxis(out, 0, axis)


def block_mean(arr: np.ndarray, k: int = 2) -> np.ndarray:
    """Mean over non-overlapping ``k x k`` blocks (10 m -> 20 m for k=2), float32."""
    h, w = arr.shape
    a = arr[: h - h % k, : w - w % k].astype(np.float32, copy=False)
    out = np.zeros(((h - h % k) // k, (w - w % k) // k), np.float32)
    for i in range(k):
        for j in range(k):
            out += a[i::k, j::k]
    out *= np.float32(1.0 / (k * k))
    return out


def shift(arr: np.ndarray, drow: int, dcol: int, fill: float = 0.0) -> np.ndarray:
    """``arr`` moved by (drow, dcol) pixels; uncovered pixels get ``fill``."""
    out = np.full_like(arr, fill)
    h, w = arr.shape
    if abs(drow) >= h or abs(dcol) >= w:
        return out
    src_r = slice(max(0, -drow), h - max(0, drow))
    dst_r = slice(max(0, drow), h - max(0, -drow))
    src_c = slice(max(0, -dcol), w - max(0, dcol))
    dst_c = slice(max(0, dcol), w - max(0, -dcol))
    out[dst_r, dst_c] = arr[src_r, src_c]
    return out


def hash_uniform(*keys: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """Uniform [0, 1) numbers from integer keys (splitmix64 mixing), vectorised and stateless."""
    with np.errstate(over="ignore"):
        h: np.ndarray = np.asarray(np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64))
        for k in keys:
            h = h ^ (np.asarray(k).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)
