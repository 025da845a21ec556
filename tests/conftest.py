"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures.stac",
    "tests.fixtures.s3",
    "tests.fixtures.sas",
    "tests.fixtures.blob",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Band order of the real eo-learn L1C scenes (REFERENCE_SCENES.npy, last axis).
L1C_BANDS = [
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
]

REAL_DATA = Path(
    os.environ.get("TERRAPIPE_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real")
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the real EO test data (../shared/data/real); tests skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder not found: {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session", autouse=True)
def own_terrapipe_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test session (each parallel worker) its own TERRAPIPE_HOME unless one is given: no
    embedded Airflow DB, STAC server or cache is shared with the user's or another worker's."""
    if not os.environ.get("TERRAPIPE_HOME"):
        os.environ["TERRAPIPE_HOME"] = str(tmp_path_factory.mktemp("terrapipe-home"))
    return Path(os.environ["TERRAPIPE_HOME"])
