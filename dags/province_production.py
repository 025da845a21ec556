"""Airflow DAG province_production: Sentinel-1/2 + DEM -> stages -> Zarr, COG, STAC products.

Scheduled monthly: each run processes its data interval (or the ``start``/``end`` params).
Backfill past windows with ``terrapipe backfill CONFIG --start --end``.
"""

from operators.production import build_production_dag

dag = build_production_dag(
    "province_production",
    schedule="@monthly",
    doc=__doc__,
    params={"config": None, "store": None, "start": None, "end": None, "overwrite": False},
)
