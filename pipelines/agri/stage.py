"""Registered agriculture stages (``pipelines.stages.registry``): thin, pure wrappers.

``parcels_stage`` runs tile by tile like every stage. ``crop_type_stage`` and ``yield_stage`` are
province-scope: the season DAG fits them over every tile's parcels (``pipelines.agri.season``);
here they run on what they are handed (one raster, one table), which is how ``terrapipe stage``
uses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipelines.errors import BadInputError


def season_year(s2: xr.DataArray) -> int:
    """The season of a stack of S2 dates: the year most of its dates fall in."""
    if "time" not in s2.dims or s2.sizes["time"] == 0:
        raise BadInputError("s2", tuple(s2.dims), "a (time, band, y, x) stack of a season's dates")
    years = pd.DatetimeIndex(s2["time"].values).year
    return int(pd.Series(years).mode().iloc[0])


def parcels_stage(
    s2: xr.DataArray, s1: xr.DataArray | None = None, dem: xr.DataArray | None = None
) -> xr.Dataset:
    """Parcels of one season: ``fine`` and ``coarse`` (y, x) int32 ids, 0 = not a parcel.

    ``s2``: (time, band, y, x) reflectance of the season; ``s1``: (time, band=[VV, VH], y, x) dB
    or None; ``dem``: (y, x) metres or None.
    """
    from pipelines.agri.features import season_features
    from pipelines.agri.parcels import parcels

    return parcels(season_features(s2, s1, dem, season_year(s2)))


def crop_type_stage(
    features: xr.Dataset, parcel_ids: np.ndarray, labels: dict[int, str], calendar: Any
) -> tuple[xr.Dataset, pd.DataFrame]:
    """Crop maps of one area from its computed season features, parcel ids (y, x) and labels
    (parcel id -> crop name): the few-shot model is fitted over the parcels of this area."""
    from pipelines.agri.crop_type import crop_maps, fit_crop_model, predict_crops
    from pipelines.agri.parcel_table import parcel_table

    table = parcel_table(features, parcel_ids)
    model = fit_crop_model(table, labels, calendar)
    predictions = predict_crops(model, table)
    maps = crop_maps(parcel_ids, predictions)
    return maps.assign_coords(y=features["y"].values, x=features["x"].values), predictions


def yield_stage(history: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """County yield forecasts of the current season from county features of past seasons
    (with their yields) and of the current one."""
    from pipelines.agri.yields import forecast_yields

    return forecast_yields(history, current)
