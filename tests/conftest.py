"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins: list[str] = ["tests.fixtures.stac", "tests.fixtures.s3"]

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(
    os.environ.get("TERRAPIPE_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real")
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the real EO test data (../shared/data/real); tests skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder not found: {REAL_DATA}")
    return REAL_DATA
