"""SYNTHETIC NDVI curves shared by the agri tests: one season sampled every 10 days."""

from __future__ import annotations

import numpy as np

DOYS = np.arange(60, 331, 10)
"""Days of year of the synthetic calendar (60 to 330, every 10 days: 28 steps)."""


def crop_curve(peak_doy: float, peak: float = 0.85, width: float = 30.0) -> np.ndarray:
    """A crop's NDVI on :data:`DOYS`: a Gaussian green-up of ``width`` days to ``peak`` at
    ``peak_doy`` over bare soil (0.16); float32, (doy,)."""
    return (0.16 + (peak - 0.16) * np.exp(-(((DOYS - peak_doy) / width) ** 2))).astype("float32")


def grass_curve() -> np.ndarray:
    """Grass margins' NDVI on :data:`DOYS`: green most of the season (0.22 + a broad 0.45
    bump at day 205); float32, (doy,)."""
    return (0.22 + 0.45 * np.exp(-(((DOYS - 205) / 60.0) ** 2))).astype("float32")
