"""The engine: a province config -> a plan -> lazy tile graphs -> written products.

``plan`` (config -> search -> tiles, scenes, dates), ``graph`` (one resolver from stages, tile
and plan to the lazy graph), ``run`` (tile batches, products, catalog) and ``season``,
``season_crops``, ``season_yield`` (the agriculture season on the same planning, layout and
writers). Airflow task bodies
(``operators``), the CLI and the bench drive these plain functions.
"""
