"""County yield model, its selection, features, baseline, USDA reading and map on small
synthetic tables."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.agri.calendar import parse_calendar
from pipelines.agri.eval_yields import SOY_BU_ACRE_TO_T_HA, read_usda_yields
from pipelines.agri.yields import (
    DEFAULT_CANDIDATE,
    METHODS,
    SEASON_CANDIDATES,
    TREND_CANDIDATES,
    Candidate,
    baseline_forecast,
    county_features,
    fit_yield_model,
    forecast_yields,
    history_features,
    score,
    season_training_frame,
    select_yield_model,
    trend_frame,
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
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # the caller's (a notebook's would be an interactive one)
    try:
        png = choropleth_png(fc, gj)
        assert matplotlib.get_backend() == "svg"  # left as it was
    finally:
        matplotlib.use(backend)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size[0] > 300  # a map with its colorbar
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
    assert {c.method for c in SEASON_CANDIDATES} == set(METHODS)
    assert DEFAULT_CANDIDATE in SEASON_CANDIDATES
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


# ---- selection -----------------------------------------------------------------------------


def _signal_frame(shape: str, seed: int = 0, seasons: range = range(2018, 2025)) -> pd.DataFrame:
    """County rows of two crops 3x apart whose relative yield follows ``signal`` through
    ``shape`` ("linear" or "step"), a season-wide shock included; ``noise`` carries nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in seasons:
        common = rng.normal(0, 0.5)
        for c in range(1, 16):
            for crop, base in (("corn", 6.0), ("soybean", 2.0)):
                x = common + rng.normal(0, 1.0)
                rel = 0.08 * x if shape == "linear" else np.where(x > 0.3, 0.12, -0.12)
                y = base * np.exp(rel + rng.normal(0, 0.01))
                rows.append((s, c, crop, float(y), x, rng.normal(0, 1.0)))
    return pd.DataFrame(rows, columns=["season", "county_id", "crop", "yield", "signal", "noise"])


def test_selection_picks_the_feature_that_carries_the_signal_and_beats_the_baseline():
    df = _signal_frame("linear")
    train, test = df[df.season < 2024], df[df.season == 2024]
    cands = (Candidate(("noise",), "ridge"), Candidate(("signal",), "ridge"))
    model = select_yield_model(train, cands)
    sel = model.info["selection"]
    assert sel["chosen"] == "ridge:signal" and model.features == ("signal",)
    assert sel["cv_one_minus_mape"]["ridge:signal"] > sel["cv_one_minus_mape"]["ridge:noise"]
    assert sel["cv_seasons"] == list(range(2018, 2024)) and sel["cv_rows"] == len(train)
    fc = forecast_yields(model, test.drop(columns="yield"))
    s_model, s_base = score(fc, test), score(baseline_forecast(train, 2024), test)
    assert s_model["one_minus_mape"] > 0.97 > s_base["one_minus_mape"]


def test_selection_picks_boosting_for_a_step_and_ridge_for_a_line():
    """The same two methods on one feature: a yield that jumps at a canopy threshold is
    forecast better by monotone trees, a yield proportional to the feature by ridge."""
    cands = (Candidate(("signal",), "ridge"), Candidate(("signal",), "hgb"))
    step = select_yield_model(_signal_frame("step", seed=1), cands)
    assert step.info["selection"]["chosen"] == "hgb:signal"
    line = select_yield_model(_signal_frame("linear", seed=2), cands)
    assert line.info["selection"]["chosen"] == "ridge:signal"


def test_selection_scores_every_candidate_on_the_same_rows():
    """A history feature has no value in the first season: that season scores nobody, so the
    imagery candidate is not judged on rows its rival never forecast."""
    df = _signal_frame("linear", seasons=range(2019, 2024))
    frame = df.merge(
        trend_frame(df[["season", "county_id", "crop", "yield"]]).drop(columns="yield")
    )
    assert frame.loc[frame.season == 2019, "log_county_level"].isna().all()
    cands = (Candidate(("signal",), "ridge"), Candidate(("signal", "log_county_level"), "ridge"))
    sel = select_yield_model(frame, cands).info["selection"]
    assert sel["cv_seasons"] == [2020, 2021, 2022, 2023]
    assert sel["cv_rows"] == (frame.season > 2019).sum()


def test_single_training_season_falls_back_to_the_first_candidate():
    df = _signal_frame("linear", seasons=range(2020, 2021))
    cands = (Candidate(("noise",), "ridge"), Candidate(("signal",), "ridge"))
    model = select_yield_model(df, cands)
    assert model.info["selection"]["chosen"] == "ridge:noise"
    assert "no season to hold out" in model.info["selection"]["reason"]


def test_candidates_whose_features_the_forecast_rows_lack_are_left_out():
    """Training seasons with a SAR feature, a forecast season without S1: the forecast still
    covers every row, from a candidate that does not read the missing feature."""
    df = _signal_frame("linear", seed=4).rename(columns={"signal": "xpol_peak"})
    df["ndvi_peak"] = df["xpol_peak"] + np.random.default_rng(5).normal(0, 0.5, len(df))
    train, current = df[df.season < 2024], df[df.season == 2024].drop(columns="yield")
    current = current.assign(xpol_peak=np.nan)
    cands = (Candidate(("xpol_peak",), "ridge"), Candidate(("ndvi_peak",), "ridge"))
    assert select_yield_model(train, cands).features == ("xpol_peak",)
    model = select_yield_model(train, cands, forecast=current)
    assert model.features == ("ndvi_peak",)
    assert model.info["selection"]["left_out_for_forecast"] == ["ridge:xpol_peak"]
    assert len(forecast_yields(model, current)) == len(current)
    with pytest.raises(BadInputError, match="forecast"):
        select_yield_model(train, cands[:1], forecast=current)


def test_ensemble_is_the_mean_of_ridge_and_boosting_and_never_falls_with_the_signal():
    df = _signal_frame("linear", seed=3)
    grid = pd.DataFrame(
        {"season": 2025, "county_id": 1, "crop": "corn", "signal": np.linspace(-3, 3, 25)}
    )
    logs = {
        m: np.log(forecast_yields(fit_yield_model(df, ["signal"], method=m), grid)["forecast"])
        for m in METHODS
    }
    np.testing.assert_allclose(logs["ensemble"], (logs["ridge"] + logs["hgb"]) / 2, rtol=1e-9)
    assert (np.diff(logs["ensemble"]) >= -1e-12).all()


def test_selection_and_fit_reject_bad_input_naming_the_field():
    df = _signal_frame("linear")
    with pytest.raises(BadInputError, match="method") as e:
        select_yield_model(df, (Candidate(("signal",), "forest"),))
    assert "forest" in str(e.value) and "ridge" in str(e.value)
    with pytest.raises(BadInputError, match="method"):
        fit_yield_model(df, ["signal"], method="lasso")
    with pytest.raises(BadInputError, match="frame") as e:
        select_yield_model(df, (Candidate(("xpol_peak",), "ridge"),))
    assert "xpol_peak" in str(e.value)
    with pytest.raises(BadInputError, match="candidates"):
        select_yield_model(df, ())
    with pytest.raises(BadInputError, match="frame"):
        select_yield_model(df.head(3), (Candidate(("signal", "noise"), "ridge"),))


def test_trend_candidates_read_only_history():
    hist = {"log_last", "log_prior_mean", "log_trend", "log_county_level", "season"}
    assert all(set(c.features) <= hist for c in TREND_CANDIDATES)


# ---- features --------------------------------------------------------------------------------


CALENDAR = parse_calendar(
    {"crops": {"corn": {"sow": [150, 160], "peak": [200, 220], "harvest": [270, 280]}}}
)


def _parcel_table(n: int, county: int, ndvi: float, vh: float, vv: float, area: int = 100):
    doys = range(140, 300, 10)
    cols: dict[str, object] = {"season": 2025, "county_id": county, "area_px": area}
    for d in doys:
        cols[f"ndvi_d{d:03d}"] = ndvi if 190 <= d <= 230 else 0.2
        cols[f"vh_d{d:03d}"] = vh
        cols[f"vv_d{d:03d}"] = vv
    return pd.DataFrame([cols] * n)


def test_county_features_median_is_not_taken_over_by_one_huge_wrong_segment():
    """Ten corn fields and one forest segment 50x their total area, predicted corn: the median
    stays the fields' value where an area-weighted mean would be the forest's."""
    fields = _parcel_table(10, 1, ndvi=0.8, vh=-15.0, vv=-10.0)
    forest = _parcel_table(1, 1, ndvi=0.5, vh=-12.0, vv=-8.0, area=50_000)
    table = pd.concat([fields, forest], ignore_index=True)
    feats = county_features(table, pd.DataFrame({"crop": "corn"}, index=table.index), CALENDAR)
    row = feats.iloc[0]
    assert row["parcels"] == 11 and row["crop_area_ha"] == pytest.approx(510.0)
    assert row["ndvi_peak"] == pytest.approx(0.8)
    assert row["xpol_peak"] == pytest.approx(-5.0)  # VH - VV over the peak window, dB
    assert row["vh_peak"] == pytest.approx(-15.0)


def test_county_features_without_sar_have_nan_sar_columns_and_bad_tables_are_named():
    table = _parcel_table(4, 2, ndvi=0.7, vh=-15.0, vv=-10.0)
    optical = table.drop(columns=[c for c in table if c.startswith(("vh_", "vv_"))])
    feats = county_features(optical, pd.DataFrame({"crop": "corn"}, index=table.index), CALENDAR)
    assert feats["xpol_peak"].isna().all() and feats["ndvi_peak"].iloc[0] == pytest.approx(0.7)
    with pytest.raises(BadInputError, match="table") as e:
        county_features(
            table.drop(columns="area_px"),
            pd.DataFrame({"crop": "corn"}, index=table.index),
            CALENDAR,
        )
    assert "area_px" in str(e.value)
    with pytest.raises(BadInputError, match="predictions"):
        county_features(table, pd.DataFrame({"label": "corn"}, index=table.index), CALENDAR)


def test_county_level_moves_each_past_yield_along_the_crop_trend():
    """Two counties 2x apart on one 2 %/year log trend: the county level is the exact
    projection, where a per-county trend line would be too."""
    rate = np.log(1.02)
    rows = [
        (s, c, "corn", lvl * np.exp(rate * (s - 2015)))
        for s in range(2015, 2021)
        for c, lvl in ((1, 4.0), (2, 8.0))
    ]
    df = pd.DataFrame(rows, columns=["season", "county_id", "crop", "yield"])
    h = history_features(df, [2021]).set_index("county_id")
    for c, lvl in ((1, 4.0), (2, 8.0)):
        assert h.loc[c, "county_level"] == pytest.approx(lvl * np.exp(rate * 6), rel=1e-9)
