"""The registered parcels stage (``pipelines.stages.registry``): a thin, pure wrapper.

``parcels_stage`` runs tile by tile like every stage. crop_type and yield are province-scope:
the season DAG fits them over every tile's parcels; their registry entries name the season's
steps (``pipelines.engine.season_crops.crop_type_step``, ``season_yield.yield_step``), which
call the pure functions of ``pipelines.agri.crop_type`` and ``pipelines.agri.yields``.
"""

from __future__ import annotations

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
