"""Tiled, batched inference of fully convolutional networks, seamless by construction.

Each output tile is computed from an input window that carries ``halo`` pixels of real context on
every side that is not the image border; windows near the border slide inward instead of being
padded, so the network sees exactly what it would see on the whole image. Neighbouring tiles
overlap by ``blend`` pixels and are averaged with linear ramps, so any residual difference fades
instead of showing as a seam. The result equals ``net(x)`` on the whole image within float error
when the network's receptive radius is <= ``halo``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from models.device import pick_device
from pipelines.errors import BadInputError

#: Bytes of activations per input pixel and batch sample, a conservative figure for our networks.
ACTIVATION_BYTES_PER_PX = 4 * 256
#: Activation memory one batch may use on CPU (bytes); on CUDA a third of the free memory.
CPU_BATCH_BYTES = 512 * 2**20


def _layout(size: int, tile: int, blend: int) -> tuple[int, list[int]]:
    """Core length and start offsets covering ``[0, size)`` with as few cores of at most
    ``tile`` pixels as possible, neighbours overlapping by at least ``blend`` pixels."""
    if size <= tile:
        return size, [0]
    n = math.ceil((size - blend) / (tile - blend))
    core = min(size, math.ceil((size + (n - 1) * blend) / n))
    return core, sorted({round(i * (size - core) / (n - 1)) for i in range(n)})


def _ramp(length: int, blend: int, at_start: bool, at_end: bool) -> np.ndarray:
    """Weights along one axis of a core: 1 inside, linear ramps over ``blend`` px at inner edges."""
    w = np.ones(length, np.float32)
    if blend > 0:
        ramp = (np.arange(blend, dtype=np.float32) + 0.5) / blend
        if not at_start:
            w[:blend] = np.minimum(w[:blend], ramp)
        if not at_end:
            w[-blend:] = np.minimum(w[-blend:], ramp[::-1])
    return w


def auto_batch_size(window_px: int, scale: int, device: torch.device) -> int:
    """Samples per batch that keep activations within the device's memory budget."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 3
    else:
        budget = CPU_BATCH_BYTES
    per_sample = window_px * max(scale, 1) ** 2 * ACTIVATION_BYTES_PER_PX
    return int(max(1, min(64, budget // max(per_sample, 1))))


def predict_tiled(
    net: torch.nn.Module,
    x: np.ndarray,
    *,
    scale: int = 1,
    halo: int = 16,
    tile: int = 256,
    blend: int = 16,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    forward_kwargs: Mapping[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Run ``net`` on ``x`` (C, H, W) float32 tile by tile; returns (C_out, H*scale, W*scale).

    ``tile``: output core size in input pixels; ``halo``: context pixels added on each side;
    ``blend``: overlap between neighbouring cores (averaged with linear ramps);
    ``forward_kwargs``: tensors passed by name to every call of ``net`` (moved to the device),
    the same for every tile: what the network would otherwise compute from the whole image
    (a scene-level estimate) is computed once by the caller, so tiles stay seamless.
    """
    if x.ndim != 3:
        raise BadInputError("x", x.shape, "an array (channel, y, x)")
    if not np.issubdtype(x.dtype, np.floating):
        raise BadInputError("x dtype", str(x.dtype), "float32 (reflectance or scaled values)")
    if tile <= 2 * blend:
        raise BadInputError("tile", tile, f"more than twice blend ({blend}) pixels")
    if not np.all(np.isfinite(x)):
        raise BadInputError("x", "NaN or inf values", "finite values (fill nodata first)")
    dev = pick_device(device)
    _, height, width = x.shape
    core_h, starts_y = _layout(height, tile, blend)
    core_w, starts_x = _layout(width, tile, blend)
    win_h, win_w = min(height, core_h + 2 * halo), min(width, core_w + 2 * halo)
    cores = [(y0, x0) for y0 in starts_y for x0 in starts_x]
    if batch_size is None:
        batch_size = auto_batch_size(win_h * win_w, scale, dev)
    out: np.ndarray | None = None
    weight = np.zeros((height * scale, width * scale), np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    s = scale
    extra = {k: v.to(dev) for k, v in (forward_kwargs or {}).items()}
    with torch.inference_mode():
        for b0 in range(0, len(cores), batch_size):
            batch_cores = cores[b0 : b0 + batch_size]
            windows = []
            for y0, x0 in batch_cores:
                wy = min(max(y0 - halo, 0), height - win_h)
                wx = min(max(x0 - halo, 0), width - win_w)
                windows.append((wy, wx))
            batch = torch.stack([xt[:, wy : wy + win_h, wx : wx + win_w] for wy, wx in windows])
            pred = net(batch.to(dev), **extra).float().cpu().numpy()
            if out is None:
                out = np.zeros((pred.shape[1], height * s, width * s), np.float32)
            for (y0, x0), (wy, wx), p in zip(batch_cores, windows, pred, strict=True):
                oy, ox = (y0 - wy) * s, (x0 - wx) * s
                piece = p[:, oy : oy + core_h * s, ox : ox + core_w * s]
                wgt = np.outer(
                    _ramp(core_h * s, blend * s, y0 == 0, y0 + core_h == height),
                    _ramp(core_w * s, blend * s, x0 == 0, x0 + core_w == width),
                )
                ys, xs = slice(y0 * s, (y0 + core_h) * s), slice(x0 * s, (x0 + core_w) * s)
                out[:, ys, xs] += piece * wgt
                weight[ys, xs] += wgt
    assert out is not None
    return out / weight
