"""Airflow DAG flood_event: triggered with an AOI config and an event date; finds the pre-
and post-event Sentinel-1 scenes itself and writes flood_change (and water_mask) products."""

from operators.production import build_production_dag

dag = build_production_dag(
    "flood_event",
    scheduled=False,
    doc=__doc__,
    params={
        "config": None,
        "store": None,
        "event_date": None,
        "start": None,
        "end": None,
        "overwrite": False,
        "products": "water_mask,flood_change",
    },
    tags=("terrapipe", "flood"),
)
