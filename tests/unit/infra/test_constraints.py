"""infra/constraints.txt pins every dependency setup.cfg declares, within what setup.cfg admits."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]


def declared_requirements() -> list[Requirement]:
    """setup.cfg's install_requires and every extra's, terrapipe's own extras left out."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    blocks = [cfg["options"]["install_requires"], *cfg["options.extras_require"].values()]
    out = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line and canonicalize_name(Requirement(line).name) != "terrapipe":
                out.append(Requirement(line))
    return out


def pins(text: str) -> dict[str, Version]:
    """``name==version`` lines of a constraints file, by canonical name."""
    out: dict[str, Version] = {}
    for line in text.splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"infra/constraints.txt: {line!r} is not a name==version pin"
        key = canonicalize_name(name.split("[")[0])
        assert key not in out, f"infra/constraints.txt pins {key} twice"
        out[key] = Version(version.strip())
    return out


def unpinned_or_outside(requirements: list[Requirement], pinned: dict[str, Version]) -> list[str]:
    """Each declared requirement with no pin, or whose pin its specifier does not admit."""
    problems = []
    for req in requirements:
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: pinned {version}, setup.cfg admits {req.specifier}")
    return problems


def test_every_declared_dependency_is_pinned_within_its_specifier() -> None:
    pinned = pins((ROOT / "infra/constraints.txt").read_text())
    problems = unpinned_or_outside(declared_requirements(), pinned)
    assert not problems, "run `bash infra/dev.sh lock`: " + "; ".join(problems)


def test_torch_is_pinned_without_a_local_label() -> None:
    """The GPU image installs torch's CUDA build (2.13.0+cu126): a +cpu pin would refuse it."""
    torch = pins((ROOT / "infra/constraints.txt").read_text())["torch"]
    assert torch.local is None, torch


def test_the_check_sees_a_missing_and_an_outside_pin() -> None:
    requirements = [Requirement("zarr>=3.0.8,<4"), Requirement("typer>=0.12")]
    assert unpinned_or_outside(requirements, pins("zarr==3.1.0\ntyper==0.20.0")) == []
    assert unpinned_or_outside(requirements, pins("zarr==4.0.0\n")) == [
        "zarr: pinned 4.0.0, setup.cfg admits <4,>=3.0.8",
        "typer: not pinned",
    ]
    with pytest.raises(AssertionError, match="twice"):
        pins("Zarr==3.1.0\nzarr==3.1.1")


def test_setup_installs_with_the_constraints() -> None:
    script = (ROOT / "infra/dev.sh").read_text()
    assert 'CONSTRAINTS="$ROOT/infra/constraints.txt"' in script
    assert script.count('-c "$CONSTRAINTS"') == 2  # uv and the pip fallback
