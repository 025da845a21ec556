"""The yield model on real data: a USDA county soybean backtest with trend features, and the
spread of the demo province's synthetic county yields against the USDA ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.agri.yields import (
    TREND_CANDIDATES,
    Candidate,
    baseline_forecast,
    check_yields,
    forecast_yields,
    score,
    select_yield_model,
    trend_frame,
)
from pipelines.errors import BadInputError

#: USDA soybean: bushels/acre -> t/ha (60 lb bushel).
SOY_BU_ACRE_TO_T_HA = 60 * 0.45359237 / 1000 / 0.40468564224
#: Default location of the USDA county soybean yields (shared real data).
USDA_DIR = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "us-county-soybean-yield"
)


def read_usda_yields(path: str | Path | None = None) -> pd.DataFrame:
    """USDA NASS county soybean yields: season, county_id (state*1000 + county FIPS), crop
    ("soybean"), yield (t/ha); rows without a positive yield are dropped."""
    path = Path(path) if path is not None else USDA_DIR / "yield_final.csv"
    if not path.exists():
        raise BadInputError(
            "usda",
            str(path),
            "the USDA yield_final.csv (no header: year, state_fips, county_fips, yield bu/acre)",
        )
    raw = pd.read_csv(path, header=None, names=["season", "state", "county", "bu_acre"])
    raw = raw[raw["bu_acre"] > 0]
    return pd.DataFrame(
        {
            "season": raw["season"].astype(int),
            "county_id": (raw["state"] * 1000 + raw["county"]).astype(int),
            "crop": "soybean",
            "yield": raw["bu_acre"] * SOY_BU_ACRE_TO_T_HA,
        }
    ).reset_index(drop=True)


def usda_backtest(
    path: str | Path | None = None,
    *,
    train_end: int = 2014,
    test_season: int = 2015,
    min_past: int = 3,
    candidates: Sequence[Candidate] = TREND_CANDIDATES,
    yields: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Fit the yield model on USDA county soybean yields up to ``train_end`` with trend features
    only (:func:`pipelines.agri.yields.select_yield_model` over ``candidates``, chosen by
    leave-one-season-out within the training seasons) and forecast ``test_season``; scores
    against the trend + last-season baseline. ``yields``: the table already read (default:
    :func:`read_usda_yields` of ``path``); rows need ``min_past`` earlier seasons."""
    if test_season <= train_end:
        raise BadInputError("test_season", test_season, f"a season after train_end {train_end}")
    y = read_usda_yields(path) if yields is None else check_yields(yields)
    y = y[y["season"] <= test_season]
    frame = trend_frame(y)
    frame = frame[frame["past_seasons"] >= min_past]
    train = frame[(frame["season"] <= train_end) & frame["yield"].notna()]
    test = frame[(frame["season"] == test_season) & frame["yield"].notna()]
    if train.empty or test.empty:
        raise BadInputError(
            "test_season",
            test_season,
            f"a season with yields after seasons with >= {min_past} past seasons each",
        )
    model = select_yield_model(train, candidates)
    fc = forecast_yields(model, test)
    base = baseline_forecast(y[y["season"] <= train_end], test_season)
    base = base.merge(test[["county_id", "crop"]], on=["county_id", "crop"])
    truth = y[y["season"] == test_season]
    return {
        "train_seasons": f"{int(train['season'].min())}-{train_end}",
        "test_season": test_season,
        "counties": len(fc),
        "model": score(fc, truth),
        "baseline_trend_last_season": score(base, truth),
        "method": model.method,
        "features": list(model.features),
        "selection": model.info["selection"],
    }


def usda_rolling_backtest(
    path: str | Path | None = None,
    *,
    test_seasons: Sequence[int] = tuple(range(2009, 2016)),
    min_past: int = 3,
    candidates: Sequence[Candidate] = TREND_CANDIDATES,
) -> dict[str, Any]:
    """:func:`usda_backtest` of each of ``test_seasons``, trained on every earlier season: one
    test season is one summer's weather, which no trend foresees, so the mean over several says
    more than any one. Returns per season the model's and the baseline's 1 - MAPE and the
    chosen candidate, and their means."""
    if not test_seasons:
        raise BadInputError("test_seasons", list(test_seasons), "at least one season")
    y = read_usda_yields(path)
    per = []
    for s in test_seasons:
        r = usda_backtest(
            train_end=int(s) - 1,
            test_season=int(s),
            min_past=min_past,
            candidates=candidates,
            yields=y,
        )
        per.append(
            {
                "test_season": int(s),
                "counties": r["counties"],
                "model": r["model"]["one_minus_mape"],
                "baseline_trend_last_season": r["baseline_trend_last_season"]["one_minus_mape"],
                "chosen": r["selection"]["chosen"],
            }
        )
    return {
        "seasons": per,
        "mean_model": round(float(np.mean([p["model"] for p in per])), 4),
        "mean_baseline_trend_last_season": round(
            float(np.mean([p["baseline_trend_last_season"] for p in per])), 4
        ),
        "model_beats_baseline": sum(p["model"] > p["baseline_trend_last_season"] for p in per),
    }


def calibration_check(synthetic: pd.DataFrame, usda: pd.DataFrame | None = None) -> dict[str, Any]:
    """Compare the spread of synthetic county yields with USDA county soybean yields.

    Figures (each for both): mean yield (t/ha) of soybean, the median over counties of the
    year-to-year coefficient of variation (after removing a linear trend), the median over years
    of the between-county CV, and the std of year-on-year log changes.
    """
    usda = read_usda_yields() if usda is None else check_yields(usda)

    def _spread(y: pd.DataFrame) -> dict[str, float | None]:
        y = check_yields(y)
        cv_year = []
        for _, g in y.groupby(["county_id", "crop"]):
            if len(g) < 4:
                continue
            s, v = g["season"].to_numpy(), g["yield"].to_numpy()
            res = v - np.polyval(np.polyfit(s, v, 1), s)
            cv_year.append(res.std(ddof=1) / v.mean())
        cv_county = y.groupby(["season", "crop"])["yield"].agg(lambda v: v.std() / v.mean())
        yy = y.sort_values("season")
        dlog = yy.groupby(["county_id", "crop"])["yield"].transform(lambda v: np.log(v).diff())
        soy = y[y["crop"] == "soybean"]["yield"]
        return {
            "soybean_mean_t_ha": round(float(soy.mean()), 3) if len(soy) else None,
            "cv_year_to_year": round(float(np.median(cv_year)), 4) if cv_year else None,
            "cv_between_counties": round(float(cv_county.median()), 4),
            "std_yoy_log_change": round(float(np.nanstd(dlog)), 4),
        }

    syn, real = _spread(synthetic), _spread(usda)
    ratio = (
        syn["cv_year_to_year"] / real["cv_year_to_year"]
        if syn["cv_year_to_year"] and real["cv_year_to_year"]
        else None
    )
    return {
        "synthetic": syn,
        "usda_soybean": real,
        "year_to_year_cv_ratio": round(ratio, 3) if ratio else None,
        "within_factor_2": bool(ratio is not None and 0.5 <= ratio <= 2.0),
    }
