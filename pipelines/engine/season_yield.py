"""The yield step of a season: county yield forecasts from this and earlier season runs.

:func:`yield_step` (the registry's ``yield``) builds per-county features from the parcel tables and
crop predictions each season run left in the store, trains on the seasons with official yields
(the model chosen among ``yields.SEASON_CANDIDATES`` by leave-one-season-out over those seasons)
and forecasts the season; it writes ``yield/<season>/forecast.{parquet,csv,png}`` and, last, the
season's STAC item ``yield/items/<season>.json``.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from pipelines import products, storage
from pipelines.agri.calendar import CropCalendar
from pipelines.engine.plan import RunPlan
from pipelines.engine.season import SeasonRun, read_counties, season_of
from pipelines.errors import BadInputError, NoScenesError

#: Files of a season's forecast, by asset key.
FORECAST_FILES = {"parquet": "forecast.parquet", "csv": "forecast.csv", "png": "forecast.png"}


def season_frames(store: str, province: str, season: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parcel tables and crop predictions a season run left in the store."""
    prefix = products.season_url(store, province, season, "tables")
    fs, base = storage.filesystem(prefix)
    urls = sorted(fs.glob(base.rstrip("/") + "/*.parquet")) if fs.exists(base) else []
    predictions_at = products.crop_predictions_url(store, province, season)
    if not urls or not storage.exists(predictions_at):
        raise NoScenesError(f"no season run of {season} in the store (tables and predictions)")
    tables = [products.read_table(storage.join(prefix, u.rsplit("/", 1)[-1])) for u in urls]
    return pd.concat(tables), products.read_table(predictions_at)


def read_yield_history(url: str) -> pd.DataFrame:
    """Past county yields: CSV ``season,county_id,crop,yield`` (t/ha)."""
    try:
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(url)))
    except FileNotFoundError:
        raise BadInputError("yield_history", url, "a CSV of past county yields") from None
    missing = [c for c in ("season", "county_id", "crop", "yield") if c not in frame.columns]
    if missing:
        raise BadInputError(
            "yield_history", list(frame.columns), "columns season, county_id, crop, yield (t/ha)"
        )
    return frame[["season", "county_id", "crop", "yield"]]


def forecast_season(
    plan: RunPlan,
    store: str,
    calendar: CropCalendar,
    counties_url: str | None = None,
    history_url: str | None = None,
) -> dict[str, Any]:
    """County yield forecast of the plan's season, trained on earlier season runs and their
    official yields; writes Parquet, CSV, a choropleth PNG and, last, the STAC item."""
    from pipelines.agri import yields as Y

    season = season_of(plan)
    if not history_url:
        raise BadInputError("yield_history", history_url, "a CSV of past county yields")
    history = read_yield_history(history_url)
    past = history[history["season"] < season]
    if past["season"].nunique() < 2:
        raise NoScenesError(
            f"the yield model needs official yields of at least 2 seasons before {season}; "
            f"{history_url} has {sorted(past['season'].unique().tolist())}"
        )
    features = []
    for s in sorted({*past["season"].unique().tolist(), season}):
        try:
            table, predictions = season_frames(store, plan.province, int(s))
        except NoScenesError:
            if s == season:
                raise
            continue
        features.append(Y.county_features(table, predictions, calendar))
    frame = pd.concat(features, ignore_index=True)
    train, current = Y.season_training_frame(frame, history, season)
    if train["season"].nunique() < 2:
        raise NoScenesError(
            f"the yield model needs at least 2 earlier season runs with yields; found "
            f"{sorted(train['season'].unique().tolist())}: run season_crop_yield for past seasons"
        )
    model = Y.select_yield_model(train, Y.SEASON_CANDIDATES, forecast=current)
    forecast = Y.forecast_yields(model, current)
    baseline = Y.baseline_forecast(past, season).rename(columns={"forecast": "baseline"})
    forecast = forecast.merge(baseline, on=Y.KEYS, how="left")
    counties = read_counties(counties_url)
    if counties:
        names_by_id = {
            int(f["properties"].get("county_id", i + 1)): f["properties"].get("name", "")
            for i, f in enumerate(counties.get("features", []))
        }
        forecast.insert(2, "county", forecast["county_id"].map(names_by_id))

    def url(kind: str) -> str:
        return products.season_file_url(store, plan.province, "yield", season, FORECAST_FILES[kind])

    urls = {"parquet": url("parquet"), "csv": url("csv")}
    products.write_table(forecast, urls["parquet"])
    storage.write_text(urls["csv"], forecast.to_csv(index=False, float_format="%.3f"))
    if counties:
        urls["png"] = url("png")
        storage.write_bytes(urls["png"], products.choropleth_png(forecast, counties))
    model_info = {k: v for k, v in model.info.items() if k != "seasons"}
    item = products.season_item(
        plan.province,
        "yield",
        season,
        plan.province_grid.geobox,
        plan.window,
        urls,
        {
            "terrapipe:units": "t/ha",
            "terrapipe:model": {
                "features": list(model.features),
                "method": model.method,
                **model_info,
            },
        },
    )
    products.write_marker(item, products.season_item_url(store, plan.province, "yield", season))
    return {
        "season": season,
        "rows": len(forecast),
        "train_seasons": sorted(int(s) for s in train["season"].unique()),
        "features": list(model.features),
        "method": model.method,
        "forecast": urls["parquet"],
    }


def yield_step(crop_type: SeasonRun) -> dict[str, Any]:
    """The province-scope yield step (registry ``yield``) of the season ``crop_type``, whose
    crop_type step has run: :func:`forecast_season` with the season's counties and past
    yields. Returns a small manifest (rows, training seasons, forecast URL)."""
    return forecast_season(
        crop_type.plan,
        crop_type.store,
        crop_type.calendar,
        counties_url=crop_type.counties,
        history_url=crop_type.yield_history,
    )
