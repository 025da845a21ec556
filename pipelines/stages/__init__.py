"""Stages: pure functions on lazy xarray, declared in :mod:`pipelines.stages.registry`.

Every stage module is imported here so that its declarations run.
"""

from pipelines.stages import cloud_mask as _cloud_mask  # noqa: F401
from pipelines.stages import dehaze as _dehaze  # noqa: F401
from pipelines.stages import flood as _flood  # noqa: F401
from pipelines.stages import haze as _haze  # noqa: F401
from pipelines.stages import water as _water  # noqa: F401
from pipelines.stages.registry import Stage, get_stage, list_stages, register_stage, resolve_order

__all__ = ["Stage", "get_stage", "list_stages", "register_stage", "resolve_order"]
