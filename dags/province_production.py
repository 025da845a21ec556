"""Airflow DAG province_production: Sentinel-1/2 + DEM -> stages -> Zarr, COG, STAC products.

Triggered with a ``config`` param (and ``start``/``end``). With ``TERRAPIPE_CONFIG_DIR`` set,
one DAG per province config of that folder (``province_production__<name>``), each scheduled on
monthly data intervals for its province: each run processes its own month. Backfill past windows
with ``terrapipe backfill CONFIG --start --end`` (or ``TERRAPIPE_CATCHUP=true``).
``products`` (comma-separated) narrows the config's product list, ``tiles`` (comma-separated tile
ids of the plan) the tiles processed (``terrapipe redo RUN --failed``).
"""

from operators.production import production_dags

dags = production_dags(
    "province_production",
    doc=__doc__,
    params={
        "config": None,
        "store": None,
        "start": None,
        "end": None,
        "overwrite": False,
        "products": None,
        "tiles": None,
    },
)
globals().update(dags)
dag = dags["province_production"]
