"""The one registry of stages.

Each stage is declared here, once: its name, the function (imported lazily, so listing stages and
parsing DAGs stays light), inputs, output, version and resources. The runner, the Dask
annotations, the Airflow tasks and pools, and the CLI are all derived from these declarations.

Inputs are names of source inputs (the table of :mod:`pipelines.inputs`) or of other stages'
outputs. A stage function takes its inputs as keyword arguments (lazy xarray objects), returns a
lazy xarray object, and does no I/O. The declared inputs are checked against the function's
signature when the function is first resolved (:attr:`Stage.func`, :func:`check_stage_signatures`).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pipelines.errors import BadInputError
from pipelines.inputs import SOURCE_INPUTS, get_input


@dataclass(frozen=True)
class Stage:
    """A registered stage."""

    name: str
    """Unique name; also the product name its output is written under."""
    function: str | Callable[..., Any]
    """``"module:function"`` (imported on first use) or the function itself."""
    inputs: tuple[str, ...]
    """Source inputs (:data:`pipelines.inputs.SOURCE_INPUTS`) or names of other stages."""
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
    product_vars: tuple[str, ...] | None = None
    """Output variables written as the product (None: all); the rest are intermediates that
    only stages of the same graph see."""
    quicklook: str = "continuous"
    """Quicklook rendering: ``"continuous"``, ``"classes"`` or ``"truecolor"``."""
    classes: Mapping[int, str] | None = None
    """Class codes and names of a class raster (legend of ``"classes"`` quicklooks)."""
    optional: tuple[str, ...] = ()
    """Source inputs the stage can do without (passed as None where a tile has no scenes)."""
    models: tuple[str, ...] = ()
    """Registered models (``models.registry``) the stage runs; their checksums go in provenance."""
    scale: int = 1
    """Output pixels per input pixel along each axis (4: a 4x finer product grid)."""
    scope: str = "tile"
    """``"tile"``: runs tile by tile in the production DAGs; ``"province"``: needs every tile's
    result first (a model fitted over the province), run by the season DAG."""

    @property
    def func(self) -> Callable[..., Any]:
        """The stage function (imported from ``function`` on first use; its signature is checked
        against the declared inputs then, see :func:`check_signature`)."""
        if callable(self.function):
            func = self.function
        else:
            module, _, name = self.function.partition(":")
            func = getattr(importlib.import_module(module), name)
        if _CHECKED.get(self.name) is not self:
            check_signature(self, func)
            _CHECKED[self.name] = self
        return func

    @property
    def gpu(self) -> bool:
        """True when the stage must run on GPU workers."""
        return self.resources.get("GPU", 0) > 0


_STAGES: dict[str, Stage] = {}
#: Stages whose function signature has been checked (by name; the very declaration checked).
_CHECKED: dict[str, Stage] = {}


def _may_be_none(func: Callable[..., Any], param: inspect.Parameter) -> bool:
    """True when ``param`` of ``func`` has a default or its type admits None."""
    if param.default is not inspect.Parameter.empty:
        return True
    try:
        hint = typing.get_type_hints(func).get(param.name)
    except (NameError, TypeError):  # an annotation that does not resolve says nothing
        return False
    return type(None) in typing.get_args(hint)


def check_signature(stage: Stage, func: Callable[..., Any]) -> None:
    """Refuse a stage whose declared inputs do not match its function's signature.

    Every declared input must be a keyword parameter of ``func``, every required parameter of
    ``func`` a declared input, and every optional input (``Stage.optional``) a declared input
    whose parameter has a default or is typed to take None (the engine passes None for an
    optional input without scenes).
    """
    params = inspect.signature(func).parameters
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    problems = []
    for name in stage.inputs:
        param = params.get(name)
        if param is None or param.kind not in keyword_kinds:
            problems.append(f"declared input {name!r} is not a keyword parameter of the function")
    for param in params.values():
        required = param.default is inspect.Parameter.empty and param.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        if required and param.name not in stage.inputs:
            problems.append(f"required parameter {param.name!r} is not a declared input")
    for name in stage.optional:
        if name not in stage.inputs:
            problems.append(f"optional input {name!r} is not a declared input")
        elif name in params and not _may_be_none(func, params[name]):
            problems.append(
                f"optional input {name!r} has no default in the function and does not take None"
            )
    if problems:
        where = stage.function if isinstance(stage.function, str) else func.__qualname__
        raise BadInputError(
            f"stage {stage.name!r} declaration",
            {"inputs": stage.inputs, "optional": stage.optional},
            f"inputs matching {where}{inspect.signature(func)}",
            "; ".join(problems),
        )


def check_stage_signatures(names: Iterable[str] | None = None) -> None:
    """Check the declared inputs of the stages ``names`` (default: every registered stage)
    against their functions' signatures (imports each stage's module)."""
    for name in list_stages() if names is None else names:
        stage = get_stage(name)
        check_signature(stage, stage.func)


def register_stage(
    *,
    name: str,
    function: str | Callable[..., Any],
    inputs: tuple[str, ...],
    output: str,
    version: str,
    resources: Mapping[str, float] | None = None,
    per_date: bool = True,
    time_from: str | None = None,
    product_vars: tuple[str, ...] | None = None,
    quicklook: str = "continuous",
    classes: Mapping[int, str] | None = None,
    optional: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
    scale: int = 1,
    scope: str = "tile",
) -> Stage:
    """Declare a stage (the built-in ones are declared below; plugins may add their own).

    A function given itself (not as ``"module:function"``) is checked against the declared
    inputs at once (:func:`check_signature`); a lazily imported one when first resolved.
    """
    stage = Stage(
        name=name,
        function=function,
        inputs=tuple(inputs),
        output=output,
        version=version,
        resources=MappingProxyType(dict(resources or {})),
        per_date=per_date,
        time_from=time_from,
        product_vars=product_vars,
        quicklook=quicklook,
        classes=MappingProxyType(dict(classes)) if classes else None,
        optional=tuple(optional),
        models=tuple(models),
        scale=int(scale),
        scope=scope,
    )
    if name in _STAGES and _STAGES[name] != stage:
        raise ValueError(f"stage {name!r} is registered twice with different declarations")
    if callable(function):
        check_signature(stage, function)
    _STAGES[name] = stage
    return stage


def unregister_stage(name: str) -> None:
    """Remove a stage (tests and plugins)."""
    _STAGES.pop(name, None)
    _CHECKED.pop(name, None)


# ---- the built-in stages -------------------------------------------------------------------

register_stage(
    name="cloud_mask",
    function="pipelines.stages.cloud_mask:cloud_mask",
    inputs=("s2",),
    output=(
        "(time, y, x) uint8 CloudClass: 0 nodata, 1 clear, 2 cloud, 3 shadow, 4 cirrus, 5 snow"
    ),
    version="1.2.0",
    quicklook="classes",
    classes={0: "nodata", 1: "clear", 2: "cloud", 3: "shadow", 4: "cirrus", 5: "snow"},
)
register_stage(
    name="cloud_mask_s2cloudless",
    function="pipelines.stages.cloud_prob:cloud_mask_s2cloudless",
    inputs=("s2_l1c",),
    output=(
        "Dataset: cloud_mask (time, y, x) uint8 CloudClass: 0 nodata, 1 clear, 2 cloud, 5 snow; "
        "cloud_probability (time, y, x) uint8 percent 0-100, 255 nodata; from the s2cloudless "
        "model on the 10 L1C TOA bands B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12"
    ),
    version="1.1.0",
    product_vars=("cloud_mask", "cloud_probability"),
    quicklook="classes",
    classes={0: "nodata", 1: "clear", 2: "cloud", 5: "snow"},
)
register_stage(
    name="haze_index",
    function="pipelines.stages.haze:haze_index",
    inputs=("s2", "cloud_mask"),
    output=(
        "Dataset: dark_channel, haze_dark_channel (time, y, x) float32 0-255; "
        "dcp_index (time,) float32 0-255; "
        "bright_surface, pixel_weight (time, y, x) float32 0-1; clear_fraction (time,); "
        "all_pixels (time,) bool; obscured (time, y, x) bool"
    ),
    version="1.1.0",
    product_vars=("dark_channel", "haze_dark_channel", "dcp_index", "clear_fraction"),
)
register_stage(
    name="dehaze",
    function="pipelines.stages.dehaze:dehaze",
    inputs=("s2", "haze_index"),
    output="(time, band=[B02, B03, B04, B08], y, x) float32 haze-free reflectance",
    version="1.1.0",
    quicklook="truecolor",
)
register_stage(
    name="ndvi_gapfilled",
    function="pipelines.stages.gapfill:ndvi_gapfilled",
    inputs=("s2", "cloud_mask", "s1"),
    optional=("s1",),
    output=(
        "Dataset: ndvi (time, y, x) float32 NDVI of every S2 date, gaps under cloud and snow "
        "estimated "
        "from the pixel's clear dates and the S1 VV/VH within 6 days; source (time, y, x) uint8: "
        "0 nodata, 1 optical, 2 estimated with SAR, 3 estimated without SAR"
    ),
    version="1.1.0",
    time_from="s2",
    product_vars=("ndvi", "source"),
)
register_stage(
    name="water_mask",
    function="pipelines.stages.water:water_mask",
    inputs=("s1", "dem"),
    optional=("dem",),
    output="(time, y, x) uint8: 0 nodata, 1 land, 2 water",
    version="2.4.0",
    quicklook="classes",
    classes={0: "nodata", 1: "land", 2: "water"},
)
register_stage(
    name="flood_change",
    function="pipelines.stages.flood:flood_change",
    inputs=("s1_pre", "s1_post", "dem", "hand"),
    # A long window's later months take their references from s1_post: a tile without a
    # scene before the window still gets them (the plan keeps only dates with a reference).
    # Without a height above drainage product a run derives it from the tile's DEM scenes and
    # their margin (a run's products are the same whichever path the stage would take alone).
    optional=("s1_pre", "hand"),
    output="(time, y, x) uint8 FloodClass: 0 nodata, 1 dry, 2 flooded, 3 permanent water, "
    "4 flooded vegetation",
    version="2.7.0",
    quicklook="classes",
    classes={0: "nodata", 1: "dry", 2: "flooded", 3: "permanent water", 4: "flooded vegetation"},
)
register_stage(
    name="dehaze_learned",
    function="pipelines.stages.learned:dehaze_learned",
    inputs=("s2",),
    output="(time, band=[B02, B03, B04, B08], y, x) float32 haze-free reflectance (CNN)",
    version="1.0.0",
    resources={"GPU": 1},
    quicklook="truecolor",
    models=("dehaze",),
)
register_stage(
    name="super_resolution",
    function="pipelines.stages.learned:super_resolution",
    inputs=("s2", "s1"),
    optional=("s1",),
    output=(
        "(time, band=[B02, B03, B04, B08], y, x) float32 reflectance on a 4x finer grid "
        "(10 m -> 2.5 m), from up to 4 dates of S2 and the nearest S1 VV/VH; bicubic where a "
        "date's detail is its noise"
    ),
    version="1.1.0",
    resources={"GPU": 1},
    quicklook="truecolor",
    models=("super_resolution",),
    scale=4,
)
register_stage(
    name="parcels",
    function="pipelines.agri.stage:parcels_stage",
    inputs=("s2", "s1", "dem"),
    optional=("s1", "dem"),
    output=(
        "Dataset: fine, coarse (y, x) int32 parcel ids of one season (0 not a parcel; every "
        "coarse parcel a union of fine ones) + GeoParquet polygons"
    ),
    version="1.11.1",
    per_date=False,
    product_vars=("fine", "coarse"),
    quicklook="continuous",
)
# Province-scope steps (run by the season DAG, not tile by tile): the function takes, as its
# declared input, the season run (pipelines.engine.season.SeasonRun) whose upstream step is done,
# and writes its products itself.
register_stage(
    name="crop_type",
    function="pipelines.engine.season_crops:crop_type_step",
    inputs=("parcels",),
    output=(
        "Dataset: crop_class (y, x) uint8 LandClass crop code (0 none), cropland and p_<crop> "
        "(y, x) float32 probabilities 0-1; few-shot model fitted over the province's parcels"
    ),
    version="1.11.0",
    per_date=False,
    quicklook="classes",
    classes={0: "not cropland", 1: "wheat", 2: "corn", 3: "rice", 4: "cotton", 5: "soybean"},
    scope="province",
)
register_stage(
    name="yield",
    function="pipelines.engine.season_yield:yield_step",
    inputs=("crop_type",),
    output="table: county, crop, forecast (t/ha), interval; Parquet, CSV, choropleth PNG",
    version="1.2.0",
    per_date=False,
    scope="province",
)


# ---- queries ---------------------------------------------------------------------------------


def list_stages() -> list[str]:
    """Names of all registered stages, sorted."""
    return sorted(_STAGES)


def get_stage(name: str) -> Stage:
    """The stage registered under ``name``; a clear error names the valid ones otherwise."""
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


def time_source(stage: Stage) -> str | None:
    """The source input whose dates become ``stage``'s output dates (None for timeless stages)."""
    if not stage.per_date:
        return None
    if stage.time_from is not None:
        return stage.time_from
    for name in stage.inputs:
        if name in SOURCE_INPUTS:
            if get_input(name).dated:
                return name
        else:
            upstream = time_source(get_stage(name))
            if upstream is not None:
                return upstream
    return None


def source_inputs(stages: list[Stage]) -> list[str]:
    """Source inputs (:mod:`pipelines.inputs`) that ``stages`` read directly, in first-use
    order."""
    seen: list[str] = []
    for stage in stages:
        for name in stage.inputs:
            if name in SOURCE_INPUTS and name not in seen:
                seen.append(name)
    return seen


def needed_sources(stages: list[Stage]) -> set[str]:
    """Source inputs that some stage of ``stages`` reads and cannot do without (not in its
    ``Stage.optional``)."""
    return {src for st in stages for src in source_inputs([st]) if src not in st.optional}


# ---- stage groups: the task layout of the DAGs -------------------------------------------


@dataclass(frozen=True)
class StageGroup:
    """Consecutive stages with the same resources, fused into one Dask graph per tile."""

    name: str
    stages: tuple[str, ...]
    resources: dict[str, float]
    pool: str
    """Airflow pool: ``gpu`` for stages that declare a GPU, ``default_pool`` otherwise."""


def registry_groups() -> list[StageGroup]:
    """Stage groups of the whole registry: the fixed task layout of the production DAGs.

    CPU stages are ordered first and GPU stages after them (dependencies permitting), so the
    GPU work of a run forms as few groups as possible.
    """
    names = [n for n in list_stages() if get_stage(n).scope == "tile"]
    by_kind = [n for n in names if not get_stage(n).gpu] + [n for n in names if get_stage(n).gpu]
    return stage_groups(resolve_order(by_kind))


def plan_groups(stages: list[Stage]) -> list[StageGroup]:
    """The registry's groups restricted to ``stages`` (empty groups dropped, names kept)."""
    wanted = {s.name for s in stages}
    groups = []
    for g in registry_groups():
        kept = tuple(n for n in g.stages if n in wanted)
        if kept:
            groups.append(StageGroup(g.name, kept, g.resources, g.pool))
    return groups


def stage_groups(stages: list[Stage]) -> list[StageGroup]:
    """Split stages (dependency order) into runs of equal resources."""
    groups: list[StageGroup] = []
    for stage in stages:
        resources = dict(stage.resources)
        if groups and groups[-1].resources == resources:
            last = groups[-1]
            groups[-1] = StageGroup(last.name, (*last.stages, stage.name), resources, last.pool)
        else:
            kind = "gpu" if stage.gpu else "cpu"
            pool = "gpu" if stage.gpu else "default_pool"
            groups.append(StageGroup(f"{kind}{len(groups)}", (stage.name,), resources, pool))
    return groups
