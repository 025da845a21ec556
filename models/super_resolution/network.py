"""The 4x super-resolution network: multi-date BGRN + Sentinel-1 guidance -> 4x BGRN.

Input: ONE tensor (N, C_IN, h, w) on the low-resolution grid, packed by :func:`pack_inputs`:

======  =====================================================================================
index   content
======  =====================================================================================
0-4     date 0 (the reference date): B02, B03, B04, B08 reflectance (0-1), validity flag (0/1)
5-9     date 1: the same five channels (zeros and flag 0 where the date or a pixel is missing)
10-14   date 2
15-19   date 3
20-21   Sentinel-1 VV, VH backscatter scaled from dB: ``(dB + 30) / 30`` (zeros when missing)
22      SAR-present flag (0/1 per pixel)
======  =====================================================================================

Output: (N, 4, 4h, 4w) BGRN reflectance of the reference date = bicubic upsampling of date 0 plus a
learned residual, corrected so that every 4x4 output block averages exactly to its block target:
the input pixel plus a symmetric zero-sum 5x5 filter of the input, the same for all bands
(:meth:`SuperResolutionNet.block_targets`; with ``block_kernel=0`` the target is the input pixel
itself; the filter is fitted by least squares on the training data, see ``train.linear_init``).
Flat areas and linear ramps keep the input values exactly: no tone or colour shift. Negative
values are clipped to 0 (only where a residual overshoots on very dark pixels). The network is
fully convolutional with a receptive radius of :attr:`SuperResolutionNet.receptive_radius` input
pixels (<= :data:`HALO`), so tiles with ``HALO`` pixels of context stitch seamlessly.

Architecture: a shared encoder turns every other date (with the reference beside it) into
features that are averaged over the valid dates per pixel; the reference date has its own encoder;
both are fused and refined by residual blocks. Sentinel-1 features gate the optical features per
pixel (``f * (1 + flag * (2 sigmoid(g) - 1))``: an identity where no SAR is present), an attention
computed from local SAR and optical features only. A pixel-shuffle head predicts the residual,
beside a linear 5x5 pixel-shuffle path from date 0 (the deblurring part: a least-squares fit on
real Sentinel-2 texture, held fixed in training, see ``train.fit_linear_path``; it pads by
repeating edge pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.errors import BadInputError

BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")
"""Optical bands in and out, in this order (blue, green, red, near infrared)."""
SCALE = 4
"""Output pixels per input pixel along each axis."""
MAX_DATES = 4
"""Dates the network takes; date 0 is the reference that is super-resolved."""
DATE_CHANNELS = len(BANDS) + 1
"""Channels per date: the bands, then the validity flag."""
SAR_OFFSET = MAX_DATES * DATE_CHANNELS
"""First SAR channel (VV, then VH, then the SAR-present flag)."""
C_IN = SAR_OFFSET + 3
"""Input channels: 4 dates x (4 bands + flag) + VV + VH + SAR flag = 23."""
HALO = 16
"""Input pixels of context every output pixel needs (>= the receptive radius of the defaults)."""
SAR_DB_OFFSET = 30.0
SAR_DB_SCALE = 30.0
"""SAR input scaling: ``(dB + SAR_DB_OFFSET) / SAR_DB_SCALE`` (-30 dB -> 0, 0 dB -> 1)."""
OPTICAL_GAIN = 5.0
"""Reflectance is multiplied by this inside the network (0.2 -> 1)."""
DEFAULT_HPARAMS: dict[str, int] = {
    "features": 32,
    "date_features": 16,
    "sar_features": 16,
    "blocks": 4,
    "block_kernel": 5,
}
"""The hyper-parameters of the shipped network."""


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2)


class _ResBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = _conv(features, features)
        self.conv2 = _conv(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def bicubic_upsample(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic upsampling (N, C, h, w) -> (N, C, h*scale, w*scale), pixel-area aligned."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def symmetric_zero_sum(kernel: torch.Tensor) -> torch.Tensor:
    """``kernel`` (k, k) averaged over the 8 flips/rotations of the square, minus its mean."""
    k = kernel
    variants = [k, k.flip(0), k.flip(1), k.flip(0, 1)]
    variants += [v.transpose(0, 1) for v in variants]
    sym = torch.stack(variants).mean(dim=0)
    return sym - sym.mean()


def match_block_mean(hr: torch.Tensor, lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """``hr`` (N, C, h*s, w*s) shifted per s x s block so each block averages to ``lr``."""
    offset = F.avg_pool2d(hr, scale) - lr
    return hr - F.interpolate(offset, scale_factor=scale, mode="nearest")


class SuperResolutionNet(nn.Module):
    """Multi-date, SAR-gated 4x super-resolution of Sentinel-2 BGRN (see the module docstring)."""

    def __init__(
        self,
        features: int = 40,
        date_features: int = 24,
        sar_features: int = 16,
        blocks: int = 4,
        block_kernel: int = 5,
    ) -> None:
        super().__init__()
        if block_kernel not in (0, 3, 5):
            raise BadInputError("block_kernel", block_kernel, "0 (exact block means), 3 or 5")
        nb = len(BANDS)
        self.date_encoder = nn.Sequential(
            _conv(2 * nb + 1, date_features), nn.ReLU(), _conv(date_features, date_features)
        )
        self.ref_encoder = nn.Sequential(
            _conv(nb + 1, features), nn.ReLU(), _conv(features, features)
        )
        self.fuse = _conv(features + date_features + 1, features, 1)
        self.sar_encoder = nn.Sequential(
            _conv(3, sar_features), nn.ReLU(), _conv(sar_features, sar_features), nn.ReLU()
        )
        n_gates = 2
        self.gates = nn.ModuleList(
            [_conv(sar_features + features, features, 1) for _ in range(n_gates)]
        )
        half = blocks // 2
        self.body1 = nn.Sequential(*[_ResBlock(features) for _ in range(half)])
        self.body2 = nn.Sequential(*[_ResBlock(features) for _ in range(blocks - half)])
        self.head = _conv(features, nb * SCALE * SCALE)
        # the deblurring filter pads by repeating edge pixels: zero padding would read the image
        # border as a drop to 0 reflectance and ring there
        self.linear = nn.Conv2d(nb, nb * SCALE * SCALE, 5, padding=2, padding_mode="replicate")
        self.shuffle = nn.PixelShuffle(SCALE)
        self.block_kernel = nn.Parameter(torch.zeros(max(block_kernel, 1), max(block_kernel, 1)))
        self.block_kernel.requires_grad_(block_kernel > 0)
        for conv in (self.head, self.linear):  # start from bicubic
            assert conv.bias is not None
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        # encoders 2 convs, body 2 per block, head 1 (the SAR encoder runs beside the encoders;
        # the linear path reaches 2 px, the block-mean target block_kernel // 2 px)
        self.receptive_radius = 2 + 2 * blocks + 1
        """Input pixels each output pixel depends on, on every side (bicubic needs 2)."""
        self.hparams = {
            "features": features,
            "date_features": date_features,
            "sar_features": sar_features,
            "blocks": blocks,
            "block_kernel": block_kernel,
        }

    def block_targets(self, ref: torch.Tensor) -> torch.Tensor:
        """What each 4x4 output block averages to: the input ``ref`` (N, 4, h, w) plus a learned
        symmetric zero-sum filter of it (the same for every band; zero when block_kernel is 0).

        The low-res pixels are sensor-blurred (Gaussian PSF), not 4x4 box means, so the box means
        of the true image are a slightly sharpened input; the filter has zero sum and zero first
        moments, so flat areas and linear ramps keep exactly the input values (no tone shift)."""
        k = self.block_kernel.shape[-1]
        if self.hparams["block_kernel"] == 0:
            return ref
        kern = symmetric_zero_sum(self.block_kernel).to(ref.dtype)
        n, c, h, w = ref.shape
        padded = F.pad(ref.reshape(n * c, 1, h, w), (k // 2,) * 4, mode="replicate")
        return ref + F.conv2d(padded, kern.view(1, 1, k, k)).reshape(n, c, h, w)

    def _gate(
        self, i: int, feat: torch.Tensor, sar: torch.Tensor, flag: torch.Tensor
    ) -> torch.Tensor:
        g = torch.sigmoid(self.gates[i](torch.cat([sar, feat], dim=1)))
        return feat * (1.0 + flag * (2.0 * g - 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_IN, h, w) packed inputs -> (N, 4, 4h, 4w) BGRN reflectance of date 0."""
        if x.ndim != 4 or x.shape[1] != C_IN:
            raise BadInputError("x", tuple(x.shape), f"a tensor (N, {C_IN}, h, w) from pack_inputs")
        nb = len(BANDS)
        ref = x[:, :nb]
        ref_in = x[:, :DATE_CHANNELS] * _gain(x.new_tensor, nb)
        feat = self.ref_encoder(ref_in)
        n = x.shape[0]
        others = x[:, DATE_CHANNELS:SAR_OFFSET].reshape(
            n, MAX_DATES - 1, DATE_CHANNELS, *x.shape[2:]
        )
        valid = others[:, :, nb : nb + 1]  # (N, D, 1, h, w)
        refs = (ref * OPTICAL_GAIN).unsqueeze(1).expand(-1, MAX_DATES - 1, -1, -1, -1)
        date_in = torch.cat([others[:, :, :nb] * OPTICAL_GAIN, valid, refs], dim=2)
        date_feat = self.date_encoder(date_in.flatten(0, 1)).reshape(
            n, MAX_DATES - 1, -1, *x.shape[2:]
        )
        count = valid.sum(dim=1)
        pooled = (date_feat * valid).sum(dim=1) / count.clamp(min=1.0)
        feat = self.fuse(torch.cat([feat, pooled, count / (MAX_DATES - 1)], dim=1))
        sar_in = x[:, SAR_OFFSET:]
        sar_flag = sar_in[:, 2:3]
        sar_feat = self.sar_encoder(sar_in)
        feat = self._gate(0, F.relu(feat), sar_feat, sar_flag)
        feat = self.body1(feat)
        feat = self._gate(1, feat, sar_feat, sar_flag)
        feat = self.body2(feat)
        sub = self.head(feat) + self.linear(ref * OPTICAL_GAIN)
        residual = self.shuffle(sub) / OPTICAL_GAIN
        out = match_block_mean(bicubic_upsample(ref) + residual, self.block_targets(ref))
        return out.clamp(min=0.0)  # reflectance: an overshoot below 0 (dark water) is cut


def _gain(new_tensor: Callable[[list[float]], torch.Tensor], nb: int) -> torch.Tensor:
    """Per-channel input gain of one date block: reflectance x OPTICAL_GAIN, flag x 1."""
    return new_tensor([OPTICAL_GAIN] * nb + [1.0]).view(1, -1, 1, 1)


def build_network(**hparams: int) -> SuperResolutionNet:
    """The super-resolution network with ``hparams`` over :data:`DEFAULT_HPARAMS`."""
    unknown = set(hparams) - set(DEFAULT_HPARAMS)
    if unknown:
        raise BadInputError("hparams", sorted(unknown), f"keys among {sorted(DEFAULT_HPARAMS)}")
    return SuperResolutionNet(**{**DEFAULT_HPARAMS, **hparams})


def pack_inputs(dates: Sequence[np.ndarray], sar: np.ndarray | None = None) -> np.ndarray:
    """Pack 1-4 dates of BGRN and optional S1 into the network input (C_IN, h, w) float32.

    ``dates``: (4, h, w) float arrays of B02, B03, B04, B08 reflectance (0-1), the reference date
    first; NaN marks missing pixels (zeroed, flag 0). ``sar``: (2, h, w) VV, VH backscatter in dB
    on the same grid, NaN where missing, or None. Missing dates and SAR are zero channels with
    flag 0.
    """
    if isinstance(dates, np.ndarray):
        dates = [dates] if dates.ndim == 3 else list(dates)
    if not 1 <= len(dates) <= MAX_DATES:
        raise BadInputError(
            "dates", f"{len(dates)} dates", f"1 to {MAX_DATES} dates, reference first"
        )
    shape: tuple[int, ...] | None = None
    out: np.ndarray | None = None
    for i, d in enumerate(dates):
        d = np.asarray(d)
        field = f"dates[{i}]"
        if d.ndim != 3 or d.shape[0] != len(BANDS):
            raise BadInputError(field, d.shape, f"a ({len(BANDS)}, y, x) array of {BANDS}")
        if not np.issubdtype(d.dtype, np.floating):
            raise BadInputError(
                f"{field} dtype", str(d.dtype), "float reflectance 0-1 (divide L2A DN by 10000)"
            )
        if shape is None:
            shape = d.shape[1:]
            out = np.zeros((C_IN, *shape), np.float32)
        elif d.shape[1:] != shape:
            raise BadInputError(
                field, d.shape, f"the grid of dates[0]: (4, {shape[0]}, {shape[1]})"
            )
        finite = np.isfinite(d).all(axis=0)
        vals = np.where(finite, d, 0.0)
        if np.abs(vals).max(initial=0.0) > 2.0:
            raise BadInputError(
                field, f"max {np.abs(vals).max():.4g}", "reflectance 0-1 (divide L2A DN by 10000)"
            )
        assert out is not None
        base = i * DATE_CHANNELS
        out[base : base + len(BANDS)] = vals
        out[base + len(BANDS)] = finite
    assert out is not None and shape is not None
    if sar is not None:
        sar = np.asarray(sar)
        if sar.ndim != 3 or sar.shape[0] != 2:
            raise BadInputError("sar", sar.shape, "a (2, y, x) array of VV, VH in dB")
        if not np.issubdtype(sar.dtype, np.floating):
            raise BadInputError("sar dtype", str(sar.dtype), "float backscatter in dB")
        if sar.shape[1:] != shape:
            raise BadInputError(
                "sar", sar.shape, f"the grid of the dates: (2, {shape[0]}, {shape[1]})"
            )
        finite = np.isfinite(sar).all(axis=0)
        scaled = (np.where(finite, sar, -SAR_DB_OFFSET) + SAR_DB_OFFSET) / SAR_DB_SCALE
        out[SAR_OFFSET : SAR_OFFSET + 2] = np.clip(scaled, -1.0, 2.0) * finite
        out[SAR_OFFSET + 2] = finite
    return out
