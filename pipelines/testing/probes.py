"""Probe stages for tests of task routing: they record where their tasks ran."""

from __future__ import annotations

import numpy as np
import xarray as xr


def _gpu_flag(block: np.ndarray) -> np.ndarray:
    from distributed import get_worker

    try:
        has_gpu = get_worker().state.total_resources.get("GPU", 0) > 0
    except ValueError:  # not on a distributed worker
        has_gpu = False
    return np.full(block.shape, 1 if has_gpu else 2, dtype="uint8")


def gpu_probe(s2: xr.DataArray) -> xr.DataArray:
    """(time, y, x) uint8: 1 where the task ran on a worker declaring GPU, 2 elsewhere."""
    first = s2.isel(band=0)
    return xr.DataArray(
        first.data.map_blocks(_gpu_flag, dtype="uint8"),
        dims=first.dims,
        coords={k: v for k, v in first.coords.items() if k in ("time", "y", "x")},
        name="gpu_probe",
    )
