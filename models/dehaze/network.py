"""The learned dehaze network: a small, fully convolutional, residual BGRN CNN.

Input (N, 4, h, w): Sentinel-2 B02, B03, B04, B08 reflectance (0..1, NaN-free). Output
(N, 4, h, w): haze-free reflectance of the same bands.

The scattering model ``I = J t + A (1 - t)`` inverts to ``J = I / t + A (1 - 1 / t)``: per pixel
and band, an affine map of the input whose gain and offset vary as smoothly as the haze. The
network therefore predicts a correction in that form, ``J = I + g * I + o`` with ``g`` and ``o``
(N, 4, h, w) from a stack of dilated 3 x 3 convolutions (a context of ``2 * radius + 1`` px
around each pixel, enough to see dark targets and the local airlight). The head starts at zero,
so the untrained network is the identity. No normalisation layer and no pooling over the image:
each output pixel depends only on the input within ``receptive_radius`` px, which ``HALO`` bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipelines.errors import BadInputError

__all__ = ["BANDS", "DEFAULT_HPARAMS", "HALO", "DehazeNet", "build_network", "receptive_radius"]

#: Input and output bands, in this order.
BANDS = ("B02", "B03", "B04", "B08")
#: Input pixels of context each output pixel needs (>= the receptive radius of any hparams).
HALO = 32
#: The hyper-parameters of the committed model.
DEFAULT_HPARAMS: dict = {"width": 32, "dilations": (1, 2, 4, 8, 8, 4, 2, 1)}
#: Reflectance centring of the inputs (typical land reflectance and spread).
_CENTRE, _SPREAD = 0.15, 0.1
#: Scale of the predicted offset in reflectance.
_OFFSET_SCALE = 0.1


def receptive_radius(dilations: Sequence[int]) -> int:
    """Receptive radius (px) of the network: 1 for the stem plus ``d`` per dilated 3 x 3 conv."""
    return 1 + int(sum(dilations))


class DehazeNet(nn.Module):
    """Residual dehaze CNN: ``forward(x)`` (N, 4, h, w) reflectance -> (N, 4, h, w) reflectance."""

    def __init__(self, width: int = 32, dilations: Sequence[int] = (1, 2, 4, 8, 8, 4, 2, 1)):
        super().__init__()
        self.width = int(width)
        self.dilations = tuple(int(d) for d in dilations)
        # inputs: the 4 bands and the per-pixel dark channel (min of B02-B04)
        self.stem = nn.Conv2d(len(BANDS) + 1, self.width, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, padding=d, dilation=d) for d in self.dilations
        )
        self.head = nn.Conv2d(self.width, 2 * len(BANDS), 1)
        assert self.head.bias is not None
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = x[:, :3].amin(dim=1, keepdim=True)
        feats = (torch.cat([x, dark], dim=1) - _CENTRE) / _SPREAD
        h = self.act(self.stem(feats))
        for conv in self.body:
            h = h + self.act(conv(h))
        gain, offset = self.head(h).chunk(2, dim=1)
        return x + gain * x + _OFFSET_SCALE * offset


def build_network(
    width: int = DEFAULT_HPARAMS["width"],
    dilations: Sequence[int] = DEFAULT_HPARAMS["dilations"],
) -> DehazeNet:
    """A :class:`DehazeNet` (``width`` channels, one dilated conv per entry of ``dilations``).

    Raises BadInputError when the receptive radius would exceed ``HALO``.
    """
    if int(width) < 1:
        raise BadInputError("width", width, "a positive number of channels")
    dilations = tuple(dilations)
    if not dilations or min(dilations) < 1:
        raise BadInputError("dilations", dilations, "a non-empty sequence of dilations >= 1")
    radius = receptive_radius(dilations)
    if radius > HALO:
        raise BadInputError(
            "dilations", dilations, f"dilations summing to at most {HALO - 1}", f"radius {radius}"
        )
    return DehazeNet(width=width, dilations=dilations)
