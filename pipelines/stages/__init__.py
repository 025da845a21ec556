"""Stages: pure functions on lazy xarray, declared in :mod:`pipelines.stages.registry`.

Every stage module is imported here so that its declarations run.
"""

from pipelines.stages.registry import Stage, get_stage, list_stages, register_stage, resolve_order

__all__ = ["Stage", "get_stage", "list_stages", "register_stage", "resolve_order"]
