"""The model registry: which networks terrapipe ships, how to build them, where their weights are.

``get_model(name)`` builds the network, verifies the committed weights against the sha256 in the
model card and loads them on the run-time device; loading never touches the network.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models import weights as weights_io
from models.device import pick_device
from pipelines.errors import BadInputError


@dataclass(frozen=True)
class ModelSpec:
    """One shipped network: builder, hyper-parameters, weights and how it maps pixels."""

    name: str
    build: str
    """``module:function`` returning an ``nn.Module`` from ``hparams``."""
    hparams: dict[str, Any] = field(default_factory=dict)
    scale: int = 1
    """Output pixels per input pixel along each axis (4 for super-resolution)."""
    halo: int = 16
    """Input pixels of context every output pixel depends on (>= the receptive radius)."""
    in_bands: tuple[str, ...] = ()
    out_bands: tuple[str, ...] = ()
    description: str = ""

    @property
    def weights(self) -> Path:
        return weights_io.weights_path(self.name)

    @property
    def card(self) -> Path:
        return weights_io.card_path(self.name)

    def build_network(self) -> torch.nn.Module:
        module, _, func = self.build.partition(":")
        return getattr(importlib.import_module(module), func)(**self.hparams)


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (one name, one network)."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; a clear error names the registered models otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise BadInputError("model", name, f"one of {list_models()}") from None


def expected_sha256(spec: ModelSpec, weights: str | Path | None) -> str:
    """Checksum a weights file must have: its ``.sha256`` sidecar, else the model card's."""
    if weights is not None:
        sidecar = Path(str(weights) + ".sha256")
        if sidecar.is_file():
            return sidecar.read_text().split()[0]
    return weights_io.card_sha256(weights_io.read_card(spec.name))


def get_model(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """The network ``name`` with verified weights, in eval mode, on ``device`` (CUDA if present)."""
    spec = model_spec(name)
    path = Path(weights) if weights is not None else spec.weights
    state = weights_io.load_state(path, expected_sha256(spec, weights))
    net = spec.build_network()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise BadInputError(
            "weights", str(path), f"a state dict of the {name!r} network", str(exc)[:300]
        ) from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval().to(pick_device(device))


def model_checksum(name: str) -> str:
    """The sha256 of ``name``'s committed weights (recorded in product provenance)."""
    return weights_io.card_sha256(weights_io.read_card(name))


# ---- the shipped models ----------------------------------------------------------------------

register_model(
    ModelSpec(
        name="dehaze",
        build="models.dehaze.network:build_network",
        scale=1,
        halo=32,
        in_bands=("B02", "B03", "B04", "B08"),
        out_bands=("B02", "B03", "B04", "B08"),
        description="BGRN dehaze CNN: hazy surface reflectance -> haze-free reflectance",
    )
)
register_model(
    ModelSpec(
        name="super_resolution",
        build="models.super_resolution.network:build_network",
        scale=4,
        halo=16,
        in_bands=("B02", "B03", "B04", "B08", "VV", "VH"),
        out_bands=("B02", "B03", "B04", "B08"),
        description="4x BGRN super-resolution from 1-4 S2 dates and optional S1 VV/VH guidance",
    )
)
