"""The yield step's reading of past county yields."""

from __future__ import annotations

import pytest

from pipelines.engine.season_yield import read_yield_history
from pipelines.errors import BadInputError


def test_history_is_read_with_its_four_columns(tmp_path):
    path = tmp_path / "yields.csv"
    path.write_text("season,county_id,crop,yield,unit\n2024,1,corn,6.5,t/ha\n")
    got = read_yield_history(str(path))
    assert list(got.columns) == ["season", "county_id", "crop", "yield"]
    assert got.iloc[0].tolist() == [2024, 1, "corn", 6.5]


def test_bad_history_is_refused_naming_the_field(tmp_path):
    with pytest.raises(BadInputError, match="yield_history") as e:
        read_yield_history(str(tmp_path / "missing.csv"))
    assert "missing.csv" in str(e.value)
    path = tmp_path / "yields.csv"
    path.write_text("year,county,crop,t_ha\n2024,1,corn,6.5\n")
    with pytest.raises(BadInputError, match="yield_history") as e:
        read_yield_history(str(path))
    assert "year" in str(e.value) and "season, county_id, crop, yield" in str(e.value)
