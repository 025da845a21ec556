"""The one registry of stages.

A stage declares here, once, its name, inputs, output, version and resources. The runner,
the Dask annotations, the Airflow pools and the CLI are all derived from these declarations.

Inputs are names of loaded collections (``s2``, ``s1``, ``s1_pre``, ``s1_post``, ``dem``,
``permanent_water``) or of other stages' outputs. A stage function takes its inputs as keyword
arguments (lazy xarray objects), returns a lazy xarray object, and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pipelines.errors import BadInputError

#: Inputs that come from loading a STAC collection rather than from another stage.
SOURCE_INPUTS = ("s2", "s1", "s1_pre", "s1_post", "dem", "permanent_water")


@dataclass(frozen=True)
class Stage:
    """A registered stage."""

    name: str
    """Unique name; also the product name its output is written under."""
    func: Callable[..., Any]
    """Pure function: lazy xarray inputs as keywords -> lazy xarray output."""
    inputs: tuple[str, ...]
    """Source inputs (``SOURCE_INPUTS``) or names of other stages."""
    output: str
    """Short description of the output: dims, dtype, units or classes."""
    version: str
    """Bumped whenever the output for the same input changes; part of the skip key."""
    resources: Mapping[str, float] = field(default_factory=dict)
    """Dask worker resources per task, e.g. ``{"GPU": 1}`` for model inference."""
    per_date: bool = True
    """True when the output has a ``time`` dim matching the input dates."""
    time_from: str | None = None
    """Source input whose dates are the output's dates; None: derived (see ``time_source``)."""

    @property
    def gpu(self) -> bool:
        """True when the stage must run on GPU workers."""
        return self.resources.get("GPU", 0) > 0


_STAGES: dict[str, Stage] = {}


def register_stage(
    *,
    name: str,
    inputs: tuple[str, ...],
    output: str,
    version: str,
    resources: Mapping[str, float] | None = None,
    per_date: bool = True,
    time_from: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that declares a stage function in the registry."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in _STAGES and _STAGES[name].func is not func:
            raise ValueError(f"stage {name!r} is registered twice")
        _STAGES[name] = Stage(
            name=name,
            func=func,
            inputs=tuple(inputs),
            output=output,
            version=version,
            resources=MappingProxyType(dict(resources or {})),
            per_date=per_date,
            time_from=time_from,
        )
        return func

    return decorate


def _load_builtin_stages() -> None:
    # Importing the stage modules runs their @register_stage declarations.
    import pipelines.stages  # noqa: F401


def list_stages() -> list[str]:
    """Names of all registered stages, sorted."""
    _load_builtin_stages()
    return sorted(_STAGES)


def get_stage(name: str) -> Stage:
    """The stage registered under ``name``; a clear error names the valid ones otherwise."""
    _load_builtin_stages()
    try:
        return _STAGES[name]
    except KeyError:
        raise BadInputError("stage", name, f"one of {sorted(_STAGES)}") from None


def resolve_order(names: list[str] | tuple[str, ...]) -> list[Stage]:
    """Stages needed to produce ``names``, dependencies first, each once."""
    ordered: list[Stage] = []
    seen: set[str] = set()

    def visit(stage_name: str, chain: tuple[str, ...]) -> None:
        if stage_name in seen:
            return
        if stage_name in chain:
            raise ValueError(f"stage dependency cycle: {' -> '.join((*chain, stage_name))}")
        stage = get_stage(stage_name)
        for dep in stage.inputs:
            if dep not in SOURCE_INPUTS:
                visit(dep, (*chain, stage_name))
        seen.add(stage_name)
        ordered.append(stage)

    for n in names:
        visit(n, ())
    return ordered


#: Sources without a time axis of their own, or that only serve as a reference period.
_TIMELESS_OR_REFERENCE = ("dem", "permanent_water", "s1_pre")


def time_source(stage: Stage) -> str | None:
    """The source input whose dates become ``stage``'s output dates (None for timeless stages)."""
    if not stage.per_date:
        return None
    if stage.time_from is not None:
        return stage.time_from
    for name in stage.inputs:
        if name in SOURCE_INPUTS:
            if name not in _TIMELESS_OR_REFERENCE:
                return name
        else:
            upstream = time_source(get_stage(name))
            if upstream is not None:
                return upstream
    return None


def source_inputs(stages: list[Stage]) -> list[str]:
    """Source inputs (``SOURCE_INPUTS``) that ``stages`` read directly, in first-use order."""
    seen: list[str] = []
    for stage in stages:
        for name in stage.inputs:
            if name in SOURCE_INPUTS and name not in seen:
                seen.append(name)
    return seen
