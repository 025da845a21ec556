"""The learned dehaze model: network, training pairs, training and held-out evaluation."""

from models.dehaze.network import BANDS, DEFAULT_HPARAMS, HALO, build_network

__all__ = ["BANDS", "DEFAULT_HPARAMS", "HALO", "build_network"]
