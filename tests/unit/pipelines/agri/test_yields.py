"""County yield model, baseline, USDA reading and map on small synthetic tables."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from pipelines.agri.eval_yields import SOY_BU_ACRE_TO_T_HA, read_usda_yields
from pipelines.agri.yields import (
    SEASON_FEATURES,
    SEASON_METHOD,
    baseline_forecast,
    fit_yield_model,
    forecast_yields,
    history_features,
    score,
    season_training_frame,
)
from pipelines.errors import BadInputError
from pipelines.products import choropleth_png


def _synthetic(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(2018, 2026):
        common = rng.normal(0, 0.1)
        for c in range(1, 13):
            for crop, base in (("corn", 6.5), ("soybean", 2.0)):
                v = common + rng.normal(0, 0.08)
                y = base * (1 + 0.012 * (s - 2018)) * (1 + v) * (1 + rng.normal(0, 0.01))
                rows.append((s, c, crop, y, 40 + 60 * v + rng.normal(0, 0.5)))
    return pd.DataFrame(rows, columns=["season", "county_id", "crop", "yield", "ndvi_integral"])


def test_model_beats_baseline_when_features_carry_the_signal():
    df = _synthetic()
    train, test = df[df.season < 2025], df[df.season == 2025]
    model = fit_yield_model(train, ["ndvi_integral", "season"], method="ridge")
    fc = forecast_yields(model, test.drop(columns="yield"))
    assert (fc["lower"] <= fc["forecast"]).all() and (fc["forecast"] <= fc["upper"]).all()
    s_model = score(fc, test)
    s_base = score(baseline_forecast(train, 2025), test)
    assert s_model["one_minus_mape"] > 0.95
    assert s_model["mape"] < s_base["mape"]


def test_history_features_use_only_past_seasons():
    df = pd.DataFrame(
        {
            "season": [2020, 2021, 2022, 2023],
            "county_id": 1,
            "crop": "corn",
            "yield": [5.0, 6.0, 7.0, 8.0],
        }
    )
    h = history_features(df).set_index("season")
    assert h.loc[2021, "last_yield"] == 5.0
    assert h.loc[2024, "last_yield"] == 8.0 and h.loc[2024, "trend_yield"] == pytest.approx(9.0)
    base = baseline_forecast(df, 2024)
    assert base["forecast"].iloc[0] == pytest.approx(8.0 * np.exp(np.log(8 / 5) / 3), rel=0.05)
    with pytest.raises(BadInputError, match="season"):
        baseline_forecast(df, 2020)


def test_fit_rejects_missing_columns():
    with pytest.raises(BadInputError, match="frame"):
        fit_yield_model(_synthetic(), ["peak_gvi"])


def test_usda_yields_in_t_ha(real_data):
    y = read_usda_yields(real_data / "us-county-soybean-yield" / "yield_final.csv")
    assert (y["yield"] > 0).all()
    iowa = y[(y.season == 2015) & (y.county_id // 1000 == 19)]["yield"].mean()
    assert iowa / SOY_BU_ACRE_TO_T_HA == pytest.approx(55.7, abs=1.0)


def test_choropleth_png():
    ring = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    gj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"county_id": 1},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }
    fc = pd.DataFrame({"season": [2025], "county_id": [1], "crop": ["corn"], "forecast": [6.0]})
    png = choropleth_png(fc, gj)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BadInputError, match="crop"):
        choropleth_png(fc, gj, crop="rice")


def test_history_features_match_per_group_fits():
    rng = np.random.default_rng(1)
    rows = [
        (s, c, crop, float(rng.uniform(1, 8)))
        for c in (1, 2, 3)
        for crop in ("corn", "soybean")
        for s in range(2015, 2022)
        if not (c == 3 and s == 2017)  # a gap in one county's record
    ]
    df = pd.DataFrame(rows, columns=["season", "county_id", "crop", "yield"])
    h = history_features(df, [2016, 2019, 2022]).set_index(["season", "county_id", "crop"])
    for (s, c, crop), row in h.iterrows():
        past = df[(df.county_id == c) & (df.crop == crop) & (df.season < s)].sort_values("season")
        assert row["past_seasons"] == len(past)
        assert row["last_yield"] == pytest.approx(past["yield"].iloc[-1])
        assert row["prior_mean"] == pytest.approx(past["yield"].mean())
        if len(past) >= 3:
            slope, icpt = np.polyfit(past["season"], past["yield"], 1)
            assert row["trend_yield"] == pytest.approx(max(slope * s + icpt, 1e-3))
    assert 2015 not in h.index.get_level_values(0)


def test_season_training_frame_uses_past_yields_only():
    df = _synthetic()
    feats = df.drop(columns="yield")
    train, current = season_training_frame(feats, df, 2025)
    assert set(train["season"]) == set(range(2018, 2025)) and train["yield"].notna().all()
    assert set(current["season"]) == {2025} and "yield" not in current
    assert {"log_last", "log_trend", "last_yield"} <= set(current.columns)
    last = df[(df.season == 2024)].set_index(["county_id", "crop"])["yield"]
    got = current.set_index(["county_id", "crop"])["last_yield"]
    pd.testing.assert_series_equal(got.sort_index(), last.sort_index(), check_names=False)
    model = fit_yield_model(train, ("ndvi_integral", "season"), method="ridge")
    assert len(forecast_yields(model, current)) == len(current)
    default = inspect.signature(fit_yield_model).parameters["method"].default
    assert default == SEASON_METHOD in ("ridge", "hgb")
    assert all(isinstance(f, str) for f in SEASON_FEATURES)
    with pytest.raises(BadInputError, match="history"):
        season_training_frame(feats, df, 2018)


def test_boosted_model_on_few_rows_keeps_crop_levels_and_rises_with_greenness():
    """Two training seasons, 12 counties, crops 3x apart in t/ha and the same NDVI range: the
    forecast stays at each crop's level and never falls as the NDVI integral rises."""
    df = _synthetic()
    train = df[df.season.isin([2023, 2024])]
    model = fit_yield_model(train, ["ndvi_integral", "season"], method="hgb")
    assert set(model.crop_log_level) == {"corn", "soybean"}
    grid = pd.DataFrame(
        {
            "season": 2025,
            "county_id": 1,
            "crop": np.repeat(["corn", "soybean"], 30),
            "ndvi_integral": np.tile(np.linspace(20, 60, 30), 2),
        }
    )
    fc = forecast_yields(model, grid)
    for crop, lo, hi in (("corn", 4.5, 9.0), ("soybean", 1.4, 2.8)):
        f = fc.loc[fc.crop == crop, "forecast"].to_numpy()
        assert lo < f.min() and f.max() < hi, crop
        assert (np.diff(f) >= -1e-9).all(), crop  # non-decreasing in greenness
    test = df[df.season == 2025]
    assert score(forecast_yields(model, test.drop(columns="yield")), test)["one_minus_mape"] > 0.9
    with pytest.raises(BadInputError, match="crop"):
        forecast_yields(model, grid.assign(crop="rice"))
