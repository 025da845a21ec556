"""Airflow DAG season_crop_yield: parcels -> crop_type -> county yield for one province season.

Triggered per season (param ``season``, e.g. 2025) with a labels file (param ``labels``: GeoJSON
points or polygons with a ``crop`` property; default ``agri.labels`` of the config). Earlier
seasons run the same way build the history the yield forecast learns from.
"""

from operators.season import build_season_dag

dag = build_season_dag(
    "season_crop_yield",
    doc=__doc__,
    params={
        "config": None,
        "store": None,
        "season": None,
        "labels": None,
        "yield_history": None,
        "overwrite": False,
    },
)
