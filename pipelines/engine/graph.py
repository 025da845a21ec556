"""The one resolver: (stages, tile, plan) -> the lazy graph of a tile's products.

Sources are gathered once per chain (:func:`gather_sources`), then each stage is called on its
declared inputs in dependency order (:func:`resolve_stages`). The production runs
(:func:`build_group_graph`), the season, ``terrapipe stage`` and the bench all resolve stage
chains through these functions; only how a source is read and how a stage is called differ.
Nothing here reads pixels: the results are lazy (Dask) xarray objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import dask
import numpy as np
import xarray as xr

from pipelines import products
from pipelines.engine.plan import RunPlan
from pipelines.errors import BadInputError, NoScenesError
from pipelines.inputs import REFERENCE_COORDS, get_input
from pipelines.products.cog import OverviewResampling
from pipelines.products.quicklook import QuicklookKind
from pipelines.stages.registry import (
    Stage,
    StageGroup,
    get_stage,
    resolve_order,
    source_inputs,
)

#: What a stage takes and returns: lazy xarray objects (None: an optional input without data).
StageValue = xr.DataArray | xr.Dataset
StageValues = Mapping[str, StageValue | None]
#: How a stage is called on its inputs (the default: :func:`call_stage`).
ApplyStage = Callable[[Stage, StageValues], StageValue]


# ---- the resolver ------------------------------------------------------------------------------


def optional_sources(stages: Iterable[Stage]) -> set[str]:
    """Source inputs some stage of ``stages`` can do without."""
    return {src for st in stages for src in st.optional}


def gather_sources(
    stages: Sequence[Stage],
    read: Callable[[str], xr.DataArray | None],
    missing: Callable[[str], Exception],
) -> dict[str, xr.DataArray | None]:
    """Every source input ``stages`` read, from ``read`` (None: no data for it).

    A source without data is passed as None when a stage declares it optional;
    ``missing(source)`` is raised for one the stages need.
    """
    optional = optional_sources(stages)
    values: dict[str, xr.DataArray | None] = {}
    for name in source_inputs(list(stages)):
        value = read(name)
        if value is None and name not in optional:
            raise missing(name)
        values[name] = value
    return values


def call_stage(stage: Stage, inputs: StageValues) -> StageValue:
    """``stage``'s function on its inputs; a GPU stage's tasks are annotated with its resources,
    so that a distributed scheduler sends them only to workers that declare them."""
    annotate = (
        dask.annotate(resources=dict(stage.resources)) if stage.gpu else contextlib.nullcontext()
    )
    with annotate:
        return stage.func(**inputs)


def resolve_stages(
    stages: Sequence[Stage], sources: StageValues, apply: ApplyStage = call_stage
) -> dict[str, StageValue]:
    """The output of each stage of ``stages`` (dependency order), each stage applied to its
    declared inputs: sources, or outputs of the stages before it."""
    values: dict[str, StageValue | None] = dict(sources)
    outputs: dict[str, StageValue] = {}
    for stage in stages:
        output = apply(stage, {k: values[k] for k in stage.inputs})
        values[stage.name] = outputs[stage.name] = output
    return outputs


# ---- sources of a planned tile -----------------------------------------------------------------


def derived_on(plan: RunPlan, source: str, tile_id: str) -> str | None:
    """The input ``source`` is derived from on the tile, where it has no scenes of its own
    there and that input has (:attr:`pipelines.inputs.InputSpec.derived_from`); else None."""
    origin = get_input(source).derived_from
    if origin is None or plan.items_for(source, tile_id) or not plan.items_for(origin, tile_id):
        return None
    return origin


def load_source(plan: RunPlan, source: str, tile_id: str) -> xr.DataArray:
    """Lazy input ``source`` on the tile grid (no pixels read yet), its asset links signed as
    the plan's config says (:attr:`RunPlan.signing`) in the graph only, never in the plan;
    derived from another input's scenes where the tile has none of its own
    (:func:`derived_on`)."""
    from pipelines.load import derive_input, load_input

    geobox = plan.tile(tile_id).geobox
    origin = derived_on(plan, source, tile_id)
    if origin is not None:
        return derive_input(
            source,
            plan.items_for(origin, tile_id),
            geobox,
            chunksize=plan.tile_px,
            sign=plan.signing,
        )
    items = plan.items_for(source, tile_id)
    if not items:
        raise NoScenesError(f"no {source} scenes on tile {tile_id} in {plan.window}")
    value = load_input(source, items, geobox, chunksize=plan.tile_px, sign=plan.signing)
    if get_input(source).window == "post_event":
        value = with_reference_windows(plan, value)
    return value


def with_reference_windows(plan: RunPlan, post: xr.DataArray) -> xr.DataArray:
    """Post-event scenes with the reference each date is compared with
    (:meth:`RunPlan.reference_window`), as (time,) coordinates ``reference_from`` (first day)
    and ``reference_until`` (the day after the last), datetime64[ns] at midnight UTC."""
    windows = [plan.reference_window(products.date_label(t)) for t in post["time"].values]
    first = np.array([lo for lo, _ in windows], dtype="datetime64[D]")
    after = np.array([hi for _, hi in windows], dtype="datetime64[D]") + np.timedelta64(1, "D")
    return post.assign_coords(
        {
            c: ("time", d.astype("datetime64[ns]"))
            for c, d in zip(REFERENCE_COORDS, (first, after), strict=True)
        }
    )


def tile_sources(
    plan: RunPlan, stages: Sequence[Stage], tile_id: str
) -> dict[str, xr.DataArray | None]:
    """The lazy sources ``stages`` read on a tile (None: an optional source without scenes)."""

    def read(source: str) -> xr.DataArray | None:
        readable = plan.items_for(source, tile_id) or derived_on(plan, source, tile_id)
        return load_source(plan, source, tile_id) if readable else None

    def missing(source: str) -> Exception:
        return NoScenesError(f"no {source} scenes on tile {tile_id} in {plan.window}")

    return gather_sources(stages, read, missing)


# ---- outputs as products -----------------------------------------------------------------------


def as_dataset(name: str, value: StageValue) -> xr.Dataset:
    """A stage output as a Dataset of (time, y, x) variables (a ``band`` dim becomes variables)."""
    if isinstance(value, xr.Dataset):
        return value
    if "band" in value.dims:
        bands = [str(b) for b in value["band"].values]
        return xr.Dataset({b: value.sel(band=b, drop=True) for b in bands})
    return value.to_dataset(name=name)


#: COG overview resampling per quicklook kind of a stage's registry declaration.
OVERVIEWS_BY_QUICKLOOK: dict[str, OverviewResampling] = {
    "classes": "mode",
    "truecolor": "average",
    "continuous": "average",
}


def product_spec(stage: Stage, mantissa_bits: int | None) -> products.ProductSpec:
    """How a stage's COGs and quicklooks are rendered (from its registry declaration), its float
    rasters stored with ``mantissa_bits`` (:attr:`RunPlan.mantissa_bits`)."""
    overviews = OVERVIEWS_BY_QUICKLOOK.get(stage.quicklook)
    if overviews is None:
        raise BadInputError(
            f"stage {stage.name!r} quicklook",
            stage.quicklook,
            "'continuous', 'classes' or 'truecolor'",
        )
    classes = dict(stage.classes or {}) if stage.quicklook == "classes" else None
    return products.ProductSpec(
        quicklook=cast(QuicklookKind, stage.quicklook),
        classes=classes,
        overview_resampling=overviews,
        mantissa_bits=mantissa_bits,
    )


def product_view(stage: Stage, value: StageValue) -> xr.Dataset:
    """The variables of a stage output that are written as its product."""
    ds = as_dataset(stage.name, value)
    if stage.product_vars is None:
        return ds
    return ds[[v for v in stage.product_vars if v in ds.data_vars]]


def select_labels(ds: xr.Dataset, labels: list[str]) -> xr.Dataset:
    """The time steps of ``ds`` whose date labels (YYYY-MM-DD) are in ``labels``."""
    if "time" not in ds.dims:
        return ds
    have = [products.date_label(t) for t in ds["time"].values]
    keep = [i for i, lab in enumerate(have) if lab in labels]
    return ds.isel(time=keep)


def open_tile_product(plan: RunPlan, store: str, product: str, tile_id: str) -> xr.Dataset:
    """The tile's region of an upstream product cube, lazily (a stage of an earlier group)."""
    stage = get_stage(product)
    grid, tile_on = plan.stage_grid(stage)
    ys, xs = grid.region(tile_on(tile_id))
    ds = products.open_product(store, plan.province, product).isel(y=ys, x=xs)
    return select_labels(ds, plan.tile_dates(stage, tile_id))


# ---- the graph of a stage group on a tile ------------------------------------------------------


def build_group_graph(
    plan: RunPlan, store: str, group: StageGroup, tile_id: str
) -> tuple[dict[str, xr.Dataset], dict[str, xr.DataArray]]:
    """Lazy outputs of ``group``'s stages on a tile, and the lazy sources they read.

    Stages of earlier groups that ``group`` needs are read back from their product cubes;
    window products (no time dim) are dated by the first day of the run window.
    """
    wanted = [n for n in group.stages if plan.stage_available(get_stage(n), tile_id)]
    if not wanted:
        raise NoScenesError(f"no stage of {group.name} has all its scenes on tile {tile_id}")
    stages = resolve_order(wanted)
    sources = tile_sources(plan, stages, tile_id)

    def apply(stage: Stage, inputs: StageValues) -> StageValue:
        if stage.name not in group.stages:
            return open_tile_product(plan, store, stage.name, tile_id)
        value = call_stage(stage, inputs)
        return value if stage.per_date else _dated_by_window(plan, value)

    outputs = resolve_stages(stages, sources, apply)
    views = {name: product_view(get_stage(name), outputs[name]) for name in wanted}
    return views, {k: v for k, v in sources.items() if v is not None}


def _dated_by_window(plan: RunPlan, value: StageValue) -> StageValue:
    """A window product (no time dim) dated by the first day of the run window."""
    if "time" in value.dims:
        return value
    return value.expand_dims(time=[np.datetime64(plan.window[0], "ns")])


__all__ = [
    "ApplyStage",
    "StageValue",
    "StageValues",
    "as_dataset",
    "build_group_graph",
    "call_stage",
    "derived_on",
    "gather_sources",
    "load_source",
    "open_tile_product",
    "optional_sources",
    "product_spec",
    "product_view",
    "resolve_stages",
    "select_labels",
    "tile_sources",
    "with_reference_windows",
]
