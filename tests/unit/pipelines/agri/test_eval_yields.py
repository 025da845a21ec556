"""USDA county backtests of the yield model on a small synthetic file in the USDA layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.agri.eval_yields import usda_backtest, usda_rolling_backtest
from pipelines.agri.yields import TREND_CANDIDATES
from pipelines.errors import BadInputError


def _usda_csv(path: Path, seed: int = 0) -> Path:
    """No header: year, state_fips, county_fips, bu/acre. Counties keep their own level (soils)
    on a shared 1 %/year trend; each year adds a small common shock and 8 % county noise."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(30, 55, 40)
    lines = []
    for year in range(2003, 2013):
        shock = rng.normal(0, 0.03)
        for c, lv in enumerate(level):
            bu = lv * 1.01 ** (year - 2003) * (1 + shock) * (1 + rng.normal(0, 0.08))
            lines.append(f"{year},19,{2 * c + 1},{bu:.1f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_backtest_beats_trend_and_last_season_when_counties_keep_their_level(tmp_path):
    csv = _usda_csv(tmp_path / "yield_final.csv")
    r = usda_backtest(csv, train_end=2011, test_season=2012)
    assert r["counties"] == 40 and r["train_seasons"] == "2006-2011"
    assert r["selection"]["chosen"] in {c.name for c in TREND_CANDIDATES}
    assert r["selection"]["cv_seasons"] == list(range(2006, 2012))  # never the test season
    assert r["model"]["one_minus_mape"] > r["baseline_trend_last_season"]["one_minus_mape"]


def test_rolling_backtest_scores_each_season_on_earlier_ones_only(tmp_path):
    csv = _usda_csv(tmp_path / "yield_final.csv", seed=1)
    ridge = tuple(c for c in TREND_CANDIDATES if c.method == "ridge")
    r = usda_rolling_backtest(csv, test_seasons=(2010, 2011, 2012), candidates=ridge)
    assert [p["test_season"] for p in r["seasons"]] == [2010, 2011, 2012]
    assert r["mean_model"] == pytest.approx(np.mean([p["model"] for p in r["seasons"]]), abs=1e-4)
    assert r["mean_model"] > r["mean_baseline_trend_last_season"]
    assert r["model_beats_baseline"] >= 2
    assert all(p["chosen"].startswith("ridge:") for p in r["seasons"])


def test_backtests_reject_bad_input_naming_the_field(tmp_path):
    csv = _usda_csv(tmp_path / "yield_final.csv")
    with pytest.raises(BadInputError, match="test_season") as e:
        usda_backtest(csv, train_end=2012, test_season=2012)
    assert "2012" in str(e.value)
    with pytest.raises(BadInputError, match="test_season"):
        usda_backtest(csv, train_end=2019, test_season=2020)  # no yields that season
    with pytest.raises(BadInputError, match="usda"):
        usda_backtest(tmp_path / "missing.csv")
    with pytest.raises(BadInputError, match="test_seasons"):
        usda_rolling_backtest(csv, test_seasons=())
