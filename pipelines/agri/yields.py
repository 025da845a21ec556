"""County yield forecasts: season features from the crop map, a model of past seasons, baselines.

- :func:`county_features`: per (season, county, crop) from a parcel table and its crop
  predictions: crop area (ha), parcels, and the median over the crop's parcels of the peak NDVI
  (within the calendar's peak window +/- ``PEAK_MARGIN_DAYS``), the integrated NDVI over the
  crop's calendar season (NDVI x days), VV/VH over the peak window (dB) and the cross-polarised
  ratio VH - VV over the peak window (dB).
- :func:`history_features`: per (season, county, crop) from past yields only: last season's
  yield, the mean of past seasons, the county's linear trend extrapolated, and the county level:
  its past yields moved to the season along the crop's province-wide trend.
- :func:`baseline_forecast` ("trend + last season"): last season's yield times the crop's
  province-wide yearly trend factor (log-linear, fitted on past seasons with county effects).
- :func:`fit_yield_model` / :func:`forecast_yields`: a regression of log(yield / crop level) on
  the chosen features (crop as one-hot): ridge, monotone gradient boosting, or the mean of both
  ("ensemble"), with a prediction interval from leave-one-season-out residuals.
- :func:`select_yield_model`: the configuration (features, regression) among candidates that
  forecasts the held-out season best in leave-one-season-out cross-validation over the
  training seasons only, fitted on all of them. One code path serves the imagery candidates of a
  province (:data:`SEASON_CANDIDATES`) and the trend-only candidates of the USDA backtest
  (:data:`TREND_CANDIDATES`, :mod:`pipelines.agri.eval_yields`).
Yields are t/ha (cotton: lint).
"""

from __future__ import annotations

import warnings
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
#: Regressions of the yield model: ridge, monotone gradient boosting, the mean of both in log.
METHODS = ("ridge", "hgb", "ensemble")
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
        "xpol_peak",
        "season",
        "log_last",
        "log_prior_mean",
        "log_trend",
        "log_county_level",
    }
)


@dataclass(frozen=True)
class Candidate:
    """One configuration :func:`select_yield_model` may choose."""

    features: tuple[str, ...]
    """Columns of the training frame the regression reads (the crop one-hot is added)."""
    method: str
    """One of :data:`METHODS`."""

    @property
    def name(self) -> str:
        """``method:feature+feature``."""
        return f"{self.method}:{'+'.join(self.features)}"


def _grid(feature_sets: Sequence[tuple[str, ...]]) -> tuple[Candidate, ...]:
    return tuple(Candidate(f, m) for f in feature_sets for m in METHODS)


#: Candidates of the season model (features of :func:`county_features` and
#: :func:`trend_frame`), simplest first (a tie goes to the earlier one). Each set is a physical
#: reading of the canopy over the crop's own calendar:
#: - ``xpol_peak``: C-band cross-polarised ratio VH - VV (dB) over the peak window, volume
#:   scattering of the canopy; VV and VH share the soil-moisture and incidence terms, which
#:   the ratio largely cancels (Veloso et al. 2017, RSE 199; Vreugdenhil et al. 2018, Remote
#:   Sens. 10(9) 1396: VH/VV follows vegetation water content and LAI of cereals and maize),
#:   and radar samples the season whatever the clouds;
#: - ``ndvi_peak`` / ``ndvi_integral``: optical greenness at the peak and its integral over the
#:   season (Monteith 1977: production follows the absorbed light, fAPAR ~ NDVI); measured
#:   only as often as clear dates allow;
#: - ``log_county_level``: the county's own record (soils, management), as the baseline has it.
SEASON_CANDIDATES = _grid(
    (
        ("xpol_peak",),
        ("xpol_peak", "ndvi_peak"),
        ("ndvi_peak", "ndvi_integral"),
        ("xpol_peak", "log_county_level"),
    )
)
#: Candidates with yield history only (the USDA backtest, a province without imagery).
TREND_CANDIDATES = _grid(
    (
        ("log_county_level",),
        ("log_county_level", "log_last"),
        ("log_last", "log_prior_mean", "log_trend", "season"),
    )
)
#: Configuration used when the training frame has a single season (no fold to select on).
DEFAULT_CANDIDATE = SEASON_CANDIDATES[0]


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

    ``table``: parcel table with ``season``, ``county_id``, ``area_px`` and the calendar curves
    ``ndvi_dDDD`` (and ``vv_dDDD``, ``vh_dDDD`` in dB where S1 was loaded; index parcel_id);
    ``predictions``: :func:`pipelines.agri.crop_type.predict_crops` output (``crop`` column);
    ``pixel_area_ha``: area of one pixel (0.01 ha at 10 m). Columns: crop_area_ha (sum over the
    crop's parcels), parcels, and per parcel, then the median over the county's parcels of the
    crop: ndvi_peak (max over the peak window), ndvi_integral (NDVI x days over
    sowing..harvest), vv_peak, vh_peak, xpol_peak (VH - VV, dB, mean over the peak window; the
    SAR ones NaN when the table has no ``vv_dDDD`` / ``vh_dDDD`` curves).

    The median, not the area-weighted mean: every field of a county shares its season, and a
    segment the crop model got wrong counts as one vote whatever its size (on the demo province
    one forest segment of 1,793 ha, predicted wheat in 2025, was 60 % of a county's wheat area).
    """
    for col in ("season", "county_id", "area_px"):
        if col not in table:
            raise BadInputError("table", list(table.columns[:5]), f"a parcel table with {col}")
    if "crop" not in predictions:
        raise BadInputError(
            "predictions", list(predictions.columns[:5]), "crop predictions with a crop column"
        )
    crop = predictions["crop"].reindex(table.index).fillna("")
    nd_cols = sorted(c for c in table.columns if c.startswith("ndvi_d") and c[-3:].isdigit())
    if not nd_cols:
        raise BadInputError("table", list(table.columns[:5]), "calendar curves ndvi_dDDD")
    doys = np.array([int(c[-3:]) for c in nd_cols])
    ndvi = table[nd_cols].to_numpy(dtype="float64")

    def _sar(pol: str) -> np.ndarray:  # NaN without S1: the SAR features are then NaN
        cols = [f"{pol}_d{d:03d}" for d in doys]
        if not all(c in table for c in cols):
            return np.full(ndvi.shape, np.nan)
        return table[cols].to_numpy(dtype="float64")

    vv, vh = _sar("vv"), _sar("vh")
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
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN parcels: NaN, no vote
            part = pd.DataFrame(
                {
                    "season": table["season"].to_numpy()[sel],
                    "county_id": table["county_id"].to_numpy()[sel],
                    "w": table["area_px"].to_numpy()[sel].astype("float64"),
                    "ndvi_peak": np.nanmax(ndvi[sel][:, pk], axis=1),
                    "ndvi_integral": np.nansum(ndvi[sel][:, season_win], axis=1) * step,
                    "vv_peak": np.nanmean(vv[sel][:, pk], axis=1),
                    "vh_peak": np.nanmean(vh[sel][:, pk], axis=1),
                    "xpol_peak": np.nanmean(vh[sel][:, pk] - vv[sel][:, pk], axis=1),
                }
            )
        part["crop"] = name
        rows.append(part)
    feats = ["ndvi_peak", "ndvi_integral", "vv_peak", "vh_peak", "xpol_peak"]
    if not rows:
        return pd.DataFrame(columns=[*KEYS, "crop_area_ha", "parcels", *feats])
    df = pd.concat(rows, ignore_index=True)
    df = df[df["county_id"] > 0]
    g = df.groupby(KEYS)
    res = g[feats].median()  # NaN-skipping: a parcel never observed has no vote
    res.insert(0, "parcels", g.size().astype(int))
    res.insert(0, "crop_area_ha", g["w"].sum() * pixel_area_ha)
    return res.reset_index()


def history_features(yields: pd.DataFrame, seasons: Sequence[int] | None = None) -> pd.DataFrame:
    """Per (season, county_id, crop) of ``seasons`` (default: every season of ``yields`` and the
    next one) from strictly earlier seasons: last_yield (the latest past season), prior_mean,
    trend_yield (county least-squares linear trend; prior_mean when fewer than 3 past seasons),
    county_level (geometric mean of the county's past yields, each moved to the season along
    the crop's province-wide log trend: county effects with one shared trend, far less noisy
    than a trend line per county), past_seasons. Vectorised: one grouped sum of the past rows
    per target season."""
    y = check_yields(yields)
    if seasons is None:
        seasons = sorted({*y["season"], int(y["season"].max()) + 1})
    y = y.sort_values(["county_id", "crop", "season"])
    t0 = float(y["season"].mean()) if len(y) else 0.0
    y = y.assign(t=y["season"] - t0)
    y = y.assign(tt=y["t"] ** 2, ty=y["t"] * y["yield"])
    cols = [*KEYS, "last_yield", "prior_mean", "trend_yield", "county_level", "past_seasons"]
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
        rate = past["crop"].map(_trend_rate(past)).to_numpy(dtype="float64")
        moved = np.log(past["yield"].to_numpy()) + rate * (s - past["season"].to_numpy())
        level = pd.Series(moved).groupby([past["county_id"].to_numpy(), past["crop"].to_numpy()])
        level_at = np.exp(level.mean().reindex(agg.index).to_numpy())
        out.append(
            pd.DataFrame(
                {
                    "season": s,
                    "county_id": agg.index.get_level_values(0).to_numpy(),
                    "crop": agg.index.get_level_values(1).to_numpy(),
                    "last_yield": g["yield"].last().to_numpy(),
                    "prior_mean": mean,
                    "trend_yield": np.maximum(trend, 1e-3),
                    "county_level": level_at,
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
    ly = pd.Series(np.log(y["yield"].to_numpy()), index=y.index)
    ts = y["season"].astype("float64")
    by = [y["county_id"], y["crop"]]
    dm = ly - ly.groupby(by).transform("mean")
    tc = ts - ts.groupby(by).transform("mean")
    num = (tc * dm).groupby(y["crop"]).sum()
    den = (tc**2).groupby(y["crop"]).sum()
    return {str(k): float(num[k] / max(float(den[k]), 1e-9)) for k in num.index}


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
    (crops differ 5x in t/ha: the regression then models relative yields, and a split on an
    NDVI feature cannot mix the levels of two crops)."""

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


class _Ensemble:
    """Mean of fitted regressions' predictions (log space): ridge and monotone boosting."""

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Ensemble:
        for m in self.members:
            m.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.mean([m.predict(x) for m in self.members], axis=0))


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
    if method == "ensemble":
        return _Ensemble([_estimator("ridge", seed), _estimator("hgb", seed, monotonic)])
    raise BadInputError("method", method, f"one of {list(METHODS)}")


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
    return np.asarray(est.predict(_matrix(frame, features, crops))) + base


def _complete(frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """Rows of ``frame`` with every feature and a positive yield."""
    missing = [f for f in (*features, *KEYS, "yield") if f not in frame.columns]
    if missing:
        raise BadInputError("frame", list(frame.columns), f"columns including {missing}")
    data = frame.dropna(subset=[*features, "yield"])
    return data[data["yield"] > 0]


def _held_out(data: pd.DataFrame, features: Sequence[str], method: str, seed: int) -> pd.DataFrame:
    """Leave-one-season-out forecasts of ``data``'s rows: KEYS, log_forecast, log_yield (each
    season predicted by a fit on the others; none with a single season)."""
    crops = tuple(sorted(data["crop"].unique()))
    seasons = sorted(data["season"].unique())
    out = []
    for s in seasons if len(seasons) > 1 else []:
        tr, te = data[data["season"] != s], data[data["season"] == s]
        te = te[te["crop"].isin(set(tr["crop"]))]
        if te.empty or len(tr) < len(features) + 2:
            continue
        est, level = _fit_one(tr, features, crops, method, seed)
        out.append(
            te[KEYS].assign(
                log_forecast=_predict_log(est, level, te, features, crops),
                log_yield=np.log(te["yield"].to_numpy()),
            )
        )
    if not out:
        return pd.DataFrame(columns=[*KEYS, "log_forecast", "log_yield"])
    return pd.concat(out, ignore_index=True)


def _fit(
    data: pd.DataFrame,
    features: tuple[str, ...],
    method: str,
    seed: int,
    held_out: pd.DataFrame,
) -> YieldModel:
    """The model fitted on every row of ``data``, its interval from ``held_out`` residuals
    (in-sample residuals when there are none)."""
    if len(data) < len(features) + 2:
        raise BadInputError("frame", len(data), f"at least {len(features) + 2} complete rows")
    crops = tuple(sorted(data["crop"].unique()))
    est, level = _fit_one(data, features, crops, method, seed)
    if len(held_out):
        r = (held_out["log_yield"] - held_out["log_forecast"]).to_numpy(dtype="float64")
    else:
        r = np.log(data["yield"].to_numpy()) - _predict_log(est, level, data, features, crops)
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
            "seasons": sorted(int(s) for s in data["season"].unique()),
            "cv_mape": float(np.mean(np.abs(np.expm1(r)))),
        },
    )


def fit_yield_model(
    frame: pd.DataFrame,
    features: Sequence[str],
    *,
    method: str = "ensemble",
    seed: int = 0,
) -> YieldModel:
    """Fit log(yield) ~ ``features`` + crop on ``frame`` (rows of past seasons with a ``yield``).

    The interval is set from leave-one-season-out residuals (``INTERVAL`` central coverage; from
    in-sample residuals when the frame has a single season).
    """
    if method not in METHODS:
        raise BadInputError("method", method, f"one of {list(METHODS)}")
    features = tuple(features)
    data = _complete(frame, features)
    return _fit(data, features, method, seed, _held_out(data, features, method, seed))


def _one_minus_mape(held_out: pd.DataFrame) -> float:
    ape = np.abs(np.expm1(held_out["log_forecast"] - held_out["log_yield"]))
    return float(1.0 - ape.mean())


def select_yield_model(
    frame: pd.DataFrame,
    candidates: Sequence[Candidate] = SEASON_CANDIDATES,
    *,
    seed: int = 0,
    forecast: pd.DataFrame | None = None,
) -> YieldModel:
    """The candidate that forecasts best out of season, fitted on every row of ``frame``.

    Leave-one-season-out over the training seasons of ``frame`` only (a forecast season never
    enters): each season's rows are forecast by each candidate fitted on the other seasons, and
    each candidate is scored by 1 - MAPE over the rows every candidate forecast (a candidate
    reading yield history has no rows in the first season; those rows then score nobody).
    The highest score wins; a tie goes to the earlier candidate. A candidate with fewer complete
    rows than its features + 2 is skipped; with a single training season there is nothing to
    hold out and the first candidate that can be fitted is used. ``forecast``: the rows to be
    forecast; candidates reading a feature some of them lack (a season without S1 has no SAR
    feature) are left out first, so that every row gets a forecast. ``model.info["selection"]``:
    the chosen name, every candidate's score, the rows and seasons scored, the candidates left
    out for the forecast rows.
    """
    if not candidates:
        raise BadInputError("candidates", [], "at least one Candidate(features, method)")
    left_out: list[str] = []
    if forecast is not None:
        able = [
            c
            for c in candidates
            if all(f in forecast for f in c.features)
            and bool(forecast[list(c.features)].notna().all().all())
        ]
        if not able:
            raise BadInputError(
                "forecast",
                list(forecast.columns),
                "rows with every feature of at least one candidate: "
                f"{[c.name for c in candidates]}",
            )
        left_out = [c.name for c in candidates if c not in able]
        candidates = able
    for c in candidates:
        if c.method not in METHODS:
            raise BadInputError("method", c.method, f"one of {list(METHODS)}")
    need = sorted({f for c in candidates for f in c.features} - set(frame.columns))
    if need:
        raise BadInputError("frame", list(frame.columns), f"columns including {need}")
    data = {c.name: _complete(frame, c.features) for c in candidates}
    usable = [c for c in candidates if len(data[c.name]) >= len(c.features) + 2]
    if not usable:
        raise BadInputError(
            "frame", len(frame), "enough complete rows for at least one candidate's features"
        )
    held = {c.name: _held_out(data[c.name], c.features, c.method, seed) for c in usable}
    scored = [c for c in usable if len(held[c.name])]
    common: pd.MultiIndex | None = None
    for c in scored:
        idx = pd.MultiIndex.from_frame(held[c.name][KEYS])
        common = idx if common is None else common.intersection(idx)
    scores: dict[str, float] = {}
    if common is not None and len(common):
        for c in scored:
            h = held[c.name].set_index(KEYS).loc[common]
            scores[c.name] = round(_one_minus_mape(h), 4)
        chosen = max(scored, key=lambda c: scores[c.name])  # first of equals: the simplest
        reason = "highest leave-one-season-out 1 - MAPE"
    else:
        chosen = usable[0]
        reason = "no season to hold out: the first candidate"
    model = _fit(data[chosen.name], chosen.features, chosen.method, seed, held[chosen.name])
    model.info["selection"] = {
        "chosen": chosen.name,
        "reason": reason,
        "cv_one_minus_mape": scores,
        "cv_rows": 0 if common is None else len(common),
        "cv_seasons": sorted({int(s) for s in common.get_level_values("season")})
        if common is not None
        else [],
        "left_out_for_forecast": left_out,
    }
    return model


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


def trend_frame(yields: pd.DataFrame, seasons: Sequence[int] | None = None) -> pd.DataFrame:
    """history_features + their logs, joined with the observed yields where known."""
    h = history_features(yields, seasons)
    h["log_last"] = np.log(h["last_yield"])
    h["log_prior_mean"] = np.log(h["prior_mean"])
    h["log_trend"] = np.log(h["trend_yield"])
    h["log_county_level"] = np.log(h["county_level"])
    return h.merge(check_yields(yields), on=KEYS, how="left")
