"""Learned 4x super-resolution of Sentinel-2 BGRN from up to 4 dates and Sentinel-1 guidance.

``network.build_network`` / ``network.pack_inputs`` (the model and its input layout),
``data`` (Wald's protocol degradation, demo and real data), ``train.train_super_resolution``,
``evaluate.evaluate_super_resolution``.
"""

from __future__ import annotations

from models.super_resolution.network import (
    BANDS,
    C_IN,
    DEFAULT_HPARAMS,
    HALO,
    SCALE,
    build_network,
    pack_inputs,
)

__all__ = ["BANDS", "C_IN", "DEFAULT_HPARAMS", "HALO", "SCALE", "build_network", "pack_inputs"]
