"""Where inference runs: the device given, else $TERRAPIPE_DEVICE, else CUDA when present, else
CPU; a device this machine lacks or a name torch does not know is refused by name."""

from __future__ import annotations

import pytest
import torch

from models.device import DEVICE_ENV, pick_device
from pipelines.errors import BadInputError


def test_the_device_follows_the_argument_then_the_environment_then_the_machine(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    machine = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == machine
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "")
    assert pick_device().type == machine


def test_an_unknown_or_absent_device_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "tpu:7")
    with pytest.raises(BadInputError, match="'cpu', 'cuda' or 'cuda:N'") as info:
        pick_device()
    assert info.value.field == "device" and info.value.value == "tpu:7"
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="no CUDA device") as info:
            pick_device("cuda:1")
        assert info.value.value == "cuda:1"
