"""Where model inference runs: CUDA when present, CPU otherwise (chosen at run time)."""

from __future__ import annotations

import os

import torch

from pipelines.errors import BadInputError

#: Environment variable that forces a device (``cpu``, ``cuda``, ``cuda:1``).
DEVICE_ENV = "TERRAPIPE_DEVICE"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else $TERRAPIPE_DEVICE, else CUDA when available, else CPU."""
    wanted = device if device is not None else os.environ.get(DEVICE_ENV) or None
    if wanted is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(wanted)
    except RuntimeError:
        raise BadInputError("device", wanted, "'cpu', 'cuda' or 'cuda:N'") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device", wanted, "'cpu' (no CUDA device on this machine)")
    return chosen
