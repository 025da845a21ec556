"""Stages: pure functions on lazy xarray, declared once in :mod:`pipelines.stages.registry`.

Importing this package is light: stage modules (xarray, dask, scipy) load on first use.
"""

from pipelines.stages.registry import Stage, get_stage, list_stages, register_stage, resolve_order

__all__ = ["Stage", "get_stage", "list_stages", "register_stage", "resolve_order"]
