"""County yield forecasts: season features from the crop map, a model of past seasons, baselines.

- :func:`county_features`: per (season, county, crop) from a parcel table and its crop
  predictions: crop area (ha), parcels, and area-weighted means over the crop's parcels of the
  peak NDVI (within the calendar's peak window +/- ``PEAK_MARGIN_DAYS``), the integrated NDVI over
  the crop's calendar season (NDVI x days), and VV/VH over the peak window (dB).
- :func:`history_features`: per (season, county, crop) from past yields only: last season's
  yield, the mean of past seasons, the county's linear trend extrapolated.
- :func:`baseline_forecast` ("trend + last season"): last season's yield times the crop's
  province-wide yearly trend factor (log-linear, fitted on past seasons with county effects).
- :func:`fit_yield_model` / :func:`forecast_yields`: a regression of log(yield) on the chosen
  features (crop as one-hot) — ridge (default) or gradient boosting — with a prediction interval
  from leave-one-season-out residuals; one code path serves the imagery features of the demo
  province and the trend features of the USDA backtest (:mod:`pipelines.agri.eval_yields`).
Yields are t/ha (cotton: lint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import BadInputError

#: The peak window of the calendar is widened by this many days each side.
PEAK_MARGIN_DAYS = 15
#: Central coverage of the forecast interval.
INTERVAL = 0.9
KEYS = ["season", "county_id", "crop"]
#: Features of the season yield model (columns of :func:`county_features`; validated on the demo
#: province: held-out 2025 trained on 2022-2024 with predicted crop maps).
SEASON_FEATURES = ("ndvi_integral", "ndvi_peak", "vh_peak", "season")
#: Regression of the season yield model ("hgb": gradient boosting, "ridge").
SEASON_METHOD = "hgb"
#: Features a yield cannot fall with (agronomic prior): a greener, longer or denser canopy, a
#: later season (the trend), a higher past yield. Gradient boosting is constrained to be
#: non-decreasing in them (with ~100 county rows the unconstrained trees followed noise: on the
#: demo province a 2024 forecast trained on two cloudy seasons fell to 1 - MAPE 0.62).
NON_DECREASING = frozenset(
    {
        "ndvi_peak",
        "ndvi_integral",
        "vh_peak",
        "vv_peak",
        "season",
        "log_last",
        "log_prior_mean",
        "log_trend",
    }
)


def check_yields(yields: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (*KEYS, "yield") if c not in yields.columns]
    if missing:
        raise BadInputError(
            "yields", list(yields.columns), "a table with season, county_id, crop, yield columns"
        )
    out = yields[[*KEYS, "yield"]].copy()
    out = out[np.isfinite(out["yield"]) & (out["yield"] > 0)]
    out["season"] = out["season"].astype(int)
    out["county_id"] = out["county_id"].astype(int)
    out["crop"] = out["crop"].astype(str)
    return out


# ---- features ----------------------------------------------------------------------------------


def county_features(
    table: pd.DataFrame,
    predictions: pd.DataFrame,
    calendar: Any,
    *,
    pixel_area_ha: float = 0.01,
) -> pd.DataFrame:
    """Season features per (season, county_id, crop) from a parcel table and its predictions.

    ``table``: parcel table with ``season`` and ``county_id`` columns (index parcel_id);
    ``predictions``: :func:`pipelines.agri.crop_type.predict_crops` output (``crop`` column);
    ``pixel_area_ha``: area of one pixel (0.01 ha at 10 m). Columns: crop_area_ha, parcels,
    ndvi_peak, ndvi_integral, vv_peak, vh_peak.
    """
    for col in ("season", "county_id"):
        if col not in table:
            raise BadInputError("table", list(table.columns[:5]), f"a parcel table with {col}")
    crop = predictions["crop"].reindex(table.index).fillna("")
    nd_cols = sorted(c for c in table.columns if c.startswith("ndvi_d") and c[-3:].isdigit())
    doys = np.array([int(c[-3:]) for c in nd_cols])
    ndvi = table[nd_cols].to_numpy(dtype="float64")
    vv = table[[f"vv_d{d:03d}" for d in doys]].to_numpy(dtype="float64")
    vh = table[[f"vh_d{d:03d}" for d in doys]].to_numpy(dtype="float64")
    step = float(np.median(np.diff(doys))) if len(doys) > 1 else 1.0
    rows = []
    for name in calendar.names:
        sel = (crop == name).to_numpy()
        if not sel.any():
            continue
        st = calendar.crops[name]
        lo, hi = st.peak.start - PEAK_MARGIN_DAYS, st.peak.end + PEAK_MARGIN_DAYS
        pk = (doys >= lo) & (doys <= hi)
        season_win = (doys >= st.sow_doy().start) & (doys <= st.harvest.end)
        if not pk.any() or not season_win.any():
            continue
        with np.errstate(all="ignore"):
            part = pd.DataFrame(
                {
                    "season": table["season"].to_numpy()[sel],
                    "county_id": table["county_id"].to_numpy()[sel],
                    "w": table["area_px"].to_numpy()[sel].astype("float64"),
                    "ndvi_peak": np.nanmax(ndvi[sel][:, pk], axis=1),
                    "ndvi_integral": np.nansum(ndvi[sel][:, season_win], axis=1) * step,
                    "vv_peak": np.nanmean(vv[sel][:, pk], axis=1),
                    "vh_peak": np.nanmean(vh[sel][:, pk], axis=1),
                }
            )
        part["crop"] = name
        rows.append(part)
    if not rows:
        return pd.DataFrame(columns=[*KEYS, "crop_area_ha", "parcels"])
    df = pd.concat(rows, ignore_index=True)
    df = df[df["county_id"] > 0]
    feats = ["ndvi_peak", "ndvi_integral", "vv_peak", "vh_peak"]

    def _agg(g: pd.DataFrame) -> pd.Series:
        w = g["w"].to_numpy()
        out = {"crop_area_ha": w.sum() * pixel_area_ha, "parcels": len(g)}
        for f in feats:
            v = g[f].to_numpy()
            ok = np.isfinite(v)
            out[f] = float(np.average(v[ok], weights=w[ok])) if ok.any() else np.nan
        return pd.Series(out)

    res = df.groupby(KEYS)[["w", *feats]].apply(_agg).reset_index()
    res["parcels"] = res["parcels"].astype(int)
    return res


def history_features(yields: pd.DataFrame, seasons: Sequence[int] | None = None) -> pd.DataFrame:
    """Per (season, county_id, crop) of ``seasons`` (default: every season of ``yields`` and the
    next one) from strictly earlier seasons: last_yield (the latest past season), prior_mean,
    trend_yield (county least-squares linear trend; prior_mean when fewer than 3 past seasons),
    past_seasons. Vectorised: one grouped sum of the past rows per target season."""
    y = check_yields(yields)
    if seasons is None:
        seasons = sorted({*y["season"], int(y["season"].max()) + 1})
    y = y.sort_values(["county_id", "crop", "season"])
    t0 = float(y["season"].mean()) if len(y) else 0.0
    y = y.assign(t=y["season"] - t0)
    y = y.assign(tt=y["t"] ** 2, ty=y["t"] * y["yield"])
    cols = [*KEYS, "last_yield", "prior_mean", "trend_yield", "past_seasons"]
    out = []
    for s in sorted({int(v) for v in seasons}):
        past = y[y["season"] < s]
        if past.empty:
            continue
        g = past.groupby(["county_id", "crop"], sort=False)
        agg = g[["t", "yield", "tt", "ty"]].sum()
        n = g.size().to_numpy().astype("float64")
        st, sy, stt, sty = (agg[c].to_numpy() for c in ("t", "yield", "tt", "ty"))
        den = n * stt - st**2
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(den > 0, (n * sty - st * sy) / np.where(den > 0, den, 1.0), 0.0)
        mean = sy / n
        trend = np.where(n >= 3, mean + slope * ((s - t0) - st / n), mean)
        out.append(
            pd.DataFrame(
                {
                    "season": s,
                    "county_id": agg.index.get_level_values(0).to_numpy(),
                    "crop": agg.index.get_level_values(1).to_numpy(),
                    "last_yield": g["yield"].last().to_numpy(),
                    "prior_mean": mean,
                    "trend_yield": np.maximum(trend, 1e-3),
                    "past_seasons": n.astype(int),
                }
            )
        )
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.concat(out, ignore_index=True)[cols]


def _trend_rate(yields: pd.DataFrame) -> dict[str, float]:
    """Yearly log-yield trend per crop, pooled over counties (county fixed effects)."""
    y = check_yields(yields)
    rates: dict[str, float] = {}
    for crop, g in y.groupby("crop"):
        ly = np.log(g["yield"].to_numpy())
        dm = ly - g.groupby("county_id")["yield"].transform(lambda v: np.log(v).mean()).to_numpy()
        ts = g["season"].to_numpy(dtype="float64")
        tc = ts - g.groupby("county_id")["season"].transform("mean").to_numpy()
        rates[str(crop)] = float((tc * dm).sum() / max((tc**2).sum(), 1e-9))
    return rates


def baseline_forecast(yields: pd.DataFrame, season: int) -> pd.DataFrame:
    """Trend + last season: each (county, crop)'s latest yield before ``season`` times
    exp(crop trend rate x years since). Columns season, county_id, crop, forecast."""
    y = check_yields(yields)
    past = y[y["season"] < season]
    if past.empty:
        raise BadInputError("season", season, "a season after at least one season of yields")
    rates = _trend_rate(past)
    last = past.sort_values("season").groupby(["county_id", "crop"]).tail(1)
    fc = last["yield"] * np.exp((season - last["season"]) * last["crop"].map(rates).fillna(0.0))
    return pd.DataFrame(
        {"season": season, "county_id": last["county_id"], "crop": last["crop"], "forecast": fc}
    ).reset_index(drop=True)


# ---- model -------------------------------------------------------------------------------------


@dataclass
class YieldModel:
    """A fitted yield model: regression of log(yield / crop level) on ``features`` (+ crop
    one-hot), the crop level being the geometric mean yield of the crop in the training rows
    (crops differ 5x in t/ha: the trees then model relative yields, and a split on an NDVI
    feature cannot mix the levels of two crops)."""

    features: tuple[str, ...]
    method: str
    estimator: Any
    crops: tuple[str, ...]
    log_interval: tuple[float, float]
    """Quantiles of held-out log residuals: forecast x exp(q) bounds the interval."""
    crop_log_level: dict[str, float] = field(default_factory=dict)
    """Mean log(yield) per crop of the training rows."""
    info: dict[str, Any] = field(default_factory=dict)


def _matrix(frame: pd.DataFrame, features: Sequence[str], crops: Sequence[str]) -> np.ndarray:
    cols = [frame[f].to_numpy(dtype="float64") for f in features]
    if len(crops) > 1:
        cols += [(frame["crop"] == c).to_numpy(dtype="float64") for c in crops]
    return np.column_stack(cols)


def _estimator(method: str, seed: int, monotonic: Sequence[int] | None = None) -> Any:
    """A scikit-learn regressor (scikit-learn has no type information)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 2, 21)))
    if method == "hgb":
        return HistGradientBoostingRegressor(
            max_iter=300,
            learning_rate=0.05,
            max_leaf_nodes=7,
            min_samples_leaf=5,
            l2_regularization=1.0,
            random_state=seed,
            monotonic_cst=None if monotonic is None else list(monotonic),
        )
    raise BadInputError("method", method, "'ridge' or 'hgb'")


def _crop_log_level(frame: pd.DataFrame) -> dict[str, float]:
    return {
        str(k): float(v) for k, v in np.log(frame["yield"]).groupby(frame["crop"]).mean().items()
    }


def _relative_log_yield(frame: pd.DataFrame, level: dict[str, float]) -> np.ndarray:
    return np.log(frame["yield"].to_numpy()) - frame["crop"].map(level).to_numpy(dtype="float64")


def _fit_one(
    frame: pd.DataFrame, features: Sequence[str], crops: Sequence[str], method: str, seed: int
) -> tuple[Any, dict[str, float]]:
    """Estimator of log(yield / crop level) fitted on ``frame``, with that level."""
    level = _crop_log_level(frame)
    monotonic = [1 if f in NON_DECREASING else 0 for f in features]
    monotonic += [0] * (len(crops) if len(crops) > 1 else 0)
    est = _estimator(method, seed, monotonic)
    est.fit(_matrix(frame, features, crops), _relative_log_yield(frame, level))
    return est, level


def _predict_log(
    est: Any,
    level: dict[str, float],
    frame: pd.DataFrame,
    features: Sequence[str],
    crops: Sequence[str],
) -> np.ndarray:
    base = frame["crop"].map(level).to_numpy(dtype="float64")
    return est.predict(_matrix(frame, features, crops)) + base


def fit_yield_model(
    frame: pd.DataFrame,
    features: Sequence[str],
    *,
    method: str = SEASON_METHOD,
    seed: int = 0,
) -> YieldModel:
    """Fit log(yield) ~ ``features`` + crop on ``frame`` (rows of past seasons with a ``yield``).

    The interval is set from leave-one-season-out residuals (``INTERVAL`` central coverage; from
    in-sample residuals when the frame has a single season).
    """
    features = tuple(features)
    missing = [f for f in (*features, *KEYS, "yield") if f not in frame.columns]
    if missing:
        raise BadInputError("frame", list(frame.columns), f"columns including {missing}")
    data = frame.dropna(subset=[*features, "yield"])
    data = data[data["yield"] > 0]
    if len(data) < len(features) + 2:
        raise BadInputError("frame", len(data), f"at least {len(features) + 2} complete rows")
    crops = tuple(sorted(data["crop"].unique()))
    resid = []
    seasons = sorted(data["season"].unique())
    for s in seasons if len(seasons) > 1 else []:
        tr, te = data[data["season"] != s], data[data["season"] == s]
        te = te[te["crop"].isin(set(tr["crop"]))]
        if te.empty:
            continue
        est, level = _fit_one(tr, features, crops, method, seed)
        resid.append(np.log(te["yield"].to_numpy()) - _predict_log(est, level, te, features, crops))
    est, level = _fit_one(data, features, crops, method, seed)
    if not resid:
        resid = [np.log(data["yield"].to_numpy()) - _predict_log(est, level, data, features, crops)]
    r = np.concatenate(resid)
    a = (1 - INTERVAL) / 2
    q = (float(np.quantile(r, a)), float(np.quantile(r, 1 - a)))
    return YieldModel(
        features,
        method,
        est,
        crops,
        q,
        level,
        {
            "rows": len(data),
            "seasons": [int(s) for s in seasons],
            "cv_mape": float(np.mean(np.abs(np.expm1(r)))),
        },
    )


def forecast_yields(model: YieldModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Forecast per row of ``frame``: season, county_id, crop, forecast, lower, upper (t/ha)."""
    missing = [f for f in (*model.features, *KEYS) if f not in frame.columns]
    if missing:
        raise BadInputError("frame", list(frame.columns), f"columns including {missing}")
    data = frame.dropna(subset=list(model.features))
    unknown = sorted(set(data["crop"]) - set(model.crop_log_level))
    if unknown:
        raise BadInputError("crop", unknown, f"crops the model was fitted on: {list(model.crops)}")
    pred = np.exp(
        _predict_log(model.estimator, model.crop_log_level, data, model.features, model.crops)
    )
    return pd.DataFrame(
        {
            "season": data["season"].to_numpy(),
            "county_id": data["county_id"].to_numpy(),
            "crop": data["crop"].to_numpy(),
            "forecast": pred,
            "lower": pred * np.exp(model.log_interval[0]),
            "upper": pred * np.exp(model.log_interval[1]),
        }
    )


def score(forecast: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """1 - MAPE (and MAPE, RMSE, n, interval coverage) of ``forecast`` rows against ``truth``."""
    m = forecast.merge(check_yields(truth), on=KEYS, how="inner")
    if m.empty:
        raise BadInputError("forecast", len(forecast), "rows matching the truth's seasons/counties")
    ape = np.abs(m["forecast"] - m["yield"]) / m["yield"]
    out = {
        "n": len(m),
        "one_minus_mape": round(float(1 - ape.mean()), 4),
        "mape": round(float(ape.mean()), 4),
        "rmse": round(float(np.sqrt(((m["forecast"] - m["yield"]) ** 2).mean())), 4),
    }
    if {"lower", "upper"} <= set(m.columns):
        inside = (m["yield"] >= m["lower"]) & (m["yield"] <= m["upper"])
        out["interval_coverage"] = round(float(inside.mean()), 4)
    return out


def season_training_frame(
    features: pd.DataFrame, history: pd.DataFrame, season: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and forecast frames of the yield model for ``season``.

    ``features``: :func:`county_features` rows of ``season`` and earlier seasons; ``history``:
    official yields (season, county_id, crop, yield t/ha). Both frames carry the
    :func:`trend_frame` history columns computed from strictly earlier seasons; ``train`` holds
    the rows before ``season`` with a known ``yield``, ``current`` the rows of ``season``.
    """
    missing = [c for c in KEYS if c not in features.columns]
    if missing:
        raise BadInputError("features", list(features.columns), f"columns including {missing}")
    past = check_yields(history)
    past = past[past["season"] < season]
    if past.empty:
        raise BadInputError("history", season, "yields of seasons before the forecast season")
    feats = features[features["season"] <= season].drop(columns=["yield"], errors="ignore")
    seasons = sorted(int(v) for v in feats["season"].unique())
    hist = trend_frame(past, seasons).drop(columns=["yield"])
    frame = feats.merge(hist, on=KEYS, how="left")
    train = frame[frame["season"] < season].merge(past, on=KEYS, how="inner")
    current = frame[frame["season"] == season].reset_index(drop=True)
    return train.reset_index(drop=True), current


#: Trend-only features of the USDA backtest (and of any province without imagery).
TREND_FEATURES = ("log_last", "log_prior_mean", "log_trend", "season")


def trend_frame(yields: pd.DataFrame, seasons: Sequence[int] | None = None) -> pd.DataFrame:
    """history_features + their logs, joined with the observed yields where known."""
    h = history_features(yields, seasons)
    h["log_last"] = np.log(h["last_yield"])
    h["log_prior_mean"] = np.log(h["prior_mean"])
    h["log_trend"] = np.log(h["trend_yield"])
    return h.merge(check_yields(yields), on=KEYS, how="left")
