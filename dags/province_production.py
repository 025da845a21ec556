"""Airflow DAG province_production: Sentinel-1/2 + DEM -> stages -> Zarr, COG, STAC products.

Scheduled on monthly data intervals: each run processes its own month (or the ``start``/``end``
params). With ``TERRAPIPE_CONFIG_DIR`` set, one DAG per province config of that folder
(``province_production__<name>``), each scheduled for its province. Backfill past windows with
``terrapipe backfill CONFIG --start --end`` (or ``TERRAPIPE_CATCHUP=true``).
"""

from operators.production import production_dags

dags = production_dags(
    "province_production",
    doc=__doc__,
    params={"config": None, "store": None, "start": None, "end": None, "overwrite": False},
)
globals().update(dags)
dag = dags["province_production"]
