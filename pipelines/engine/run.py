"""The runner: a plan -> product cubes prepared -> tile batches processed -> catalog.

Plain functions over a plan, so that the Airflow tasks (``operators``), ``terrapipe bench`` and
the tests drive the same code. Each (stage group, tile) is one lazy graph
(:func:`pipelines.engine.graph.build_group_graph`) computed on the run's Dask cluster; results
are written by :mod:`pipelines.products`, the STAC item of each (product, tile, date) last, as
the commit marker that makes a repeated run skip it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from pipelines import __version__, products
from pipelines.config import ProvinceConfig
from pipelines.engine.graph import build_group_graph, product_spec, select_labels
from pipelines.engine.plan import RunPlan, StageGroup, item_date, plan_run
from pipelines.errors import BadInputError, NoScenesError
from pipelines.load import classify_read_error
from pipelines.products import Provenance
from pipelines.stages.registry import Stage, get_stage, resolve_order, source_inputs, time_source

if TYPE_CHECKING:
    from distributed import Client


@dataclass
class TileResult:
    """What one (stage group, tile) did; filled in as the tile is processed."""

    tile_id: str
    written: dict[str, list[str]] = field(default_factory=dict)
    """Date labels written per product."""
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """Date labels per product that had a marker already."""
    no_scenes: list[str] = field(default_factory=list)
    """Why the group had nothing to compute on the tile, if so."""
    compute_s: float = 0.0
    write_s: float = 0.0
    bytes_written: int = 0


@dataclass(frozen=True)
class Totals:
    """Counts and seconds over processed tiles (a batch, a run)."""

    tiles: int = 0
    written: int = 0
    """(product, tile, date) outputs written."""
    skipped: int = 0
    """(product, tile, date) outputs skipped (marker present)."""
    no_scenes: int = 0
    """(group, tile) pairs without the scenes to compute anything."""
    bytes_written: int = 0
    compute_s: float = 0.0
    """Seconds computing on the cluster."""
    write_s: float = 0.0
    """Seconds writing products."""

    def to_xcom(self) -> dict[str, int | float]:
        return {
            "tiles": self.tiles,
            "written": self.written,
            "skipped": self.skipped,
            "no_scenes": self.no_scenes,
            "bytes_written": self.bytes_written,
            "compute_s": self.compute_s,
            "write_s": self.write_s,
        }

    @classmethod
    def from_xcom(cls, raw: Mapping[str, Any]) -> Totals:
        """Totals from a batch manifest's XCom (season tasks' manifests carry some keys only)."""
        return cls(
            **{k: int(raw.get(k, 0)) for k in ("tiles", "written", "skipped", "no_scenes")},
            bytes_written=int(raw.get("bytes_written", 0)),
            compute_s=float(raw.get("compute_s", 0)),
            write_s=float(raw.get("write_s", 0)),
        )


@dataclass(frozen=True)
class BatchManifest:
    """What one batch of tiles did for one stage group (a mapped task's XCom)."""

    group: str
    batch: int
    totals: Totals

    @classmethod
    def of(cls, group: str, batch: int, results: Sequence[TileResult]) -> BatchManifest:
        """The manifest of a batch from its tiles' results (seconds rounded to ms)."""
        totals = Totals(
            tiles=len(results),
            written=sum(len(v) for r in results for v in r.written.values()),
            skipped=sum(len(v) for r in results for v in r.skipped.values()),
            no_scenes=sum(len(r.no_scenes) for r in results),
            bytes_written=sum(r.bytes_written for r in results),
            compute_s=round(sum(round(r.compute_s, 3) for r in results), 3),
            write_s=round(sum(round(r.write_s, 3) for r in results), 3),
        )
        return cls(group, batch, totals)

    def to_xcom(self) -> dict[str, str | int | float]:
        return {"group": self.group, "batch": self.batch, **self.totals.to_xcom()}


# ---- one tile ------------------------------------------------------------------------------


def pending_labels(
    plan: RunPlan, store: str, stage: Stage, tile_id: str, overwrite: bool
) -> list[str]:
    """Labels of ``stage`` on ``tile_id`` that have no valid marker (all of them if overwrite)."""
    labels = plan.tile_dates(stage, tile_id)
    if overwrite:
        return labels
    return [
        lab
        for lab in labels
        if not products.is_done(store, plan.province, stage.name, tile_id, lab, stage.version)
    ]


def _to_days(ds: xr.Dataset) -> xr.Dataset:
    """Product cubes index time by UTC day (same-day acquisitions are already mosaicked)."""
    if "time" not in ds.coords:
        return ds
    return ds.assign_coords(time=ds["time"].dt.floor("D"))


def provenance(plan: RunPlan, stage: Stage, tile_id: str, labels: list[str]) -> Provenance:
    """Provenance of ``stage`` on a tile: upstream stage versions and input item ids per label."""
    upstream = resolve_order([stage.name])
    used = source_inputs(upstream)
    primary = time_source(stage)
    per_label: dict[str, list[str]] = {}
    for label in labels:
        ids = [
            d["id"]
            for source in used
            for d in plan.items_for(source, tile_id)
            if source != primary or item_date(d) == label
        ]
        per_label[label] = sorted(set(ids))
    return Provenance(
        stage_versions={s.name: s.version for s in upstream},
        input_items=per_label,
        model_checksums=model_checksums(upstream),
        software_version=__version__,
    )


def model_checksums(stages: list[Stage]) -> dict[str, str]:
    """sha256 of the weights of every model ``stages`` run (product provenance)."""
    names = sorted({m for st in stages for m in st.models})
    if not names:
        return {}
    from models.registry import model_checksum

    return {name: f"sha256:{model_checksum(name)}" for name in names}


def process_tile(
    plan: RunPlan,
    store: str,
    group: StageGroup,
    tile_id: str,
    client: Client,
    overwrite: bool = False,
) -> TileResult:
    """Compute ``group``'s stages on one tile and write what has no marker yet."""
    result = TileResult(tile_id)
    pending: dict[str, list[str]] = {}
    for name in group.stages:
        stage = get_stage(name)
        labels = plan.tile_dates(stage, tile_id)
        todo = pending_labels(plan, store, stage, tile_id, overwrite)
        result.skipped[name] = [lab for lab in labels if lab not in todo]
        if todo:
            pending[name] = todo
    if not pending:
        return result
    try:
        outputs, _ = build_group_graph(plan, store, group, tile_id)
    except NoScenesError as exc:
        result.no_scenes.append(str(exc))
        return result
    selected = {n: select_labels(outputs[n], labels) for n, labels in pending.items()}
    if any(get_stage(n).models for n in pending):
        from models.serving import ensure_model_plugin

        ensure_model_plugin(client)
    t0 = time.perf_counter()
    futures = client.compute(list(selected.values()), optimize_graph=not group.resources)
    try:
        gathered = client.gather(futures)
    except Exception as exc:  # read errors arrive re-raised from the workers
        classified = classify_read_error(exc)
        if classified is exc:
            raise
        raise classified from exc
    computed = {name: _to_days(ds) for name, ds in zip(selected, gathered, strict=True)}
    result.compute_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, ds in computed.items():
        stage = get_stage(name)
        grid, tile_on = plan.stage_grid(stage)
        manifest = products.write_tile_product(
            store,
            plan.province,
            name,
            grid,
            tile_on(tile_id),
            ds,
            stage=stage,
            spec=product_spec(stage),
            provenance=provenance(plan, stage, tile_id, pending[name]),
            overwrite=overwrite,
        )
        result.written[name] = list(manifest["written"])
        result.bytes_written += int(manifest["bytes_written"])
    result.write_s = time.perf_counter() - t0
    return result


# ---- a run ---------------------------------------------------------------------------------


def prepare_products(plan: RunPlan, store: str) -> dict[str, int]:
    """Create (or extend) each product's cube for the run's dates; serial, once per run.
    Returns the number of dates per product prepared."""
    prepared: dict[str, int] = {}
    # Lazy tile graphs give every output's variables and dtypes without reading pixels.
    for group in plan.groups:
        missing = set(group.stages)
        for tile_id in plan.tile_ids:
            if not missing:
                break
            try:
                template, _ = build_group_graph(plan, store, group, tile_id)
            except NoScenesError:
                continue
            for name in sorted(missing & set(template)):
                products.init_cube(
                    store,
                    plan.province,
                    name,
                    plan.stage_grid(get_stage(name))[0],
                    times=plan.dates[name],
                    variables=cube_variables(template[name]),
                    attrs={"stage": name, "stage_version": plan.stage_versions[name]},
                )
                prepared[name] = len(plan.dates[name])
                missing.discard(name)
    return prepared


def cube_variables(template: xr.Dataset) -> dict[str, products.CubeVariable]:
    """Cube variable declarations (dtype, fill, attrs, dims) from a lazy stage output."""
    specs: dict[str, products.CubeVariable] = {}
    for name, var in template.data_vars.items():
        dtype = np.dtype(var.dtype)
        fill: float | int
        if dtype.kind == "f":
            fill = np.nan
        elif dtype.kind == "b":
            fill = False
        else:
            fill = 0
        dims = tuple(str(d) for d in var.dims if d in ("time", "y", "x"))
        specs[str(name)] = products.CubeVariable(dtype.name, fill, _json_attrs(var.attrs), dims)
    return specs


def _json_attrs(attrs: Mapping[Any, Any]) -> dict[str, object]:
    """Attributes a Zarr store can hold (JSON): numpy scalars unwrapped, the rest as text."""
    out: dict[str, object] = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        try:
            json.dumps(value)
        except TypeError:
            value = str(value)
        out[str(key)] = value
    return out


def process_batch(
    plan: RunPlan,
    store: str,
    group_name: str,
    batch_index: int,
    client: Client,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BatchManifest:
    """Process every tile of one batch for one stage group."""
    group = next((g for g in plan.groups if g.name == group_name), None)
    if group is None:
        raise BadInputError("group", group_name, f"one of {[g.name for g in plan.groups]}")
    if not 0 <= batch_index < len(plan.batches):
        raise BadInputError("batch", batch_index, f"0..{len(plan.batches) - 1}")
    results = []
    for tile_id in plan.batches[batch_index]:
        results.append(process_tile(plan, store, group, tile_id, client, overwrite))
        if progress:
            progress(tile_id)
    return BatchManifest.of(group_name, batch_index, results)


def finalize(plan: RunPlan, store: str) -> str:
    """Rebuild the province's static STAC catalog from the markers present; its URL."""
    return products.build_catalog(store, plan.province)


def summarize(totals: Sequence[Totals]) -> Totals:
    """Totals over batches (seconds rounded to ms)."""
    return Totals(
        tiles=sum(t.tiles for t in totals),
        written=sum(t.written for t in totals),
        skipped=sum(t.skipped for t in totals),
        no_scenes=sum(t.no_scenes for t in totals),
        bytes_written=sum(t.bytes_written for t in totals),
        compute_s=round(sum(t.compute_s for t in totals), 3),
        write_s=round(sum(t.write_s for t in totals), 3),
    )


def run_local(
    config: ProvinceConfig,
    client: Client,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int | float | str]:
    """A whole run without Airflow, on ``client``'s cluster (bench, tests, notebooks): the
    totals, the catalog URL, the plan URL and the planning and wall seconds."""
    t0 = time.perf_counter()
    planned = plan_run(config, require=None)
    plan = planned.plan
    plan_s = time.perf_counter() - t0
    prepare_products(plan, config.store)
    manifests = [
        process_batch(plan, config.store, group.name, index, client, overwrite, progress)
        for group in plan.groups
        for index in range(len(plan.batches))
    ]
    summary: dict[str, int | float | str] = {
        **summarize([m.totals for m in manifests]).to_xcom(),
        "catalog": finalize(plan, config.store),
        "plan_s": round(plan_s, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "plan_url": planned.url,
    }
    return summary


__all__ = [
    "BatchManifest",
    "TileResult",
    "Totals",
    "cube_variables",
    "finalize",
    "model_checksums",
    "pending_labels",
    "prepare_products",
    "process_batch",
    "process_tile",
    "provenance",
    "run_local",
    "summarize",
]
