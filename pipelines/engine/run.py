"""The production engine: plan -> prepare products -> process tile batches -> catalog.

Plain functions over a plan URL, so that the Airflow tasks (``operators``), ``terrapipe bench``
and the tests drive the same code. Stages run as one lazy Dask graph per tile and stage group;
results are written by :mod:`pipelines.products`, the STAC item of each (product, tile, date)
last, as the commit marker that makes a repeated run skip it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import xarray as xr

from pipelines import __version__, products
from pipelines.engine.plan import RunPlan, StageGroup, item_date, read_plan
from pipelines.errors import BadInputError, NoScenesError
from pipelines.products import Provenance
from pipelines.stages.registry import (
    SOURCE_INPUTS,
    Stage,
    get_stage,
    resolve_order,
    source_inputs,
    time_source,
)

#: Sentinel-2 bands loaded for the classical stages (SCL is added when the catalog has it).
S2_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


@dataclass
class TileResult:
    """What one (stage group, tile) did: a small manifest for XCom and logs."""

    tile_id: str
    written: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    no_scenes: list[str] = field(default_factory=list)
    compute_s: float = 0.0
    write_s: float = 0.0
    bytes_written: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile_id": self.tile_id,
            "written": self.written,
            "skipped": self.skipped,
            "no_scenes": self.no_scenes,
            "compute_s": round(self.compute_s, 3),
            "write_s": round(self.write_s, 3),
            "bytes_written": self.bytes_written,
        }


# ---- inputs --------------------------------------------------------------------------------


def _items_for(plan: RunPlan, source: str, tile_id: str) -> list[dict[str, Any]]:
    wanted = set(plan.tile_scenes(tile_id).get(source, []))
    return [d for d in plan.items.get(source, []) if d["id"] in wanted]


def stage_available(plan: RunPlan, stage: Stage, tile_id: str) -> bool:
    """True when every source ``stage`` needs (through upstream stages) has scenes on the tile."""
    scenes = plan.tile_scenes(tile_id)
    chain = resolve_order([stage.name])
    optional = {src for st in chain for src in st.optional}
    return all(scenes.get(src) for src in source_inputs(chain) if src not in optional)


def tile_dates(plan: RunPlan, stage: Stage, tile_id: str) -> list[str]:
    """Output labels of ``stage`` on ``tile_id``: dates with scenes on the tile, or the window;
    none when a source it needs has no scene on the tile."""
    if not stage_available(plan, stage, tile_id):
        return []
    source = time_source(stage)
    if source is None:
        return list(plan.dates[stage.name])
    return sorted({item_date(d) for d in _items_for(plan, source, tile_id)})


def load_source(plan: RunPlan, source: str, tile_id: str) -> xr.DataArray:
    """Lazy input ``source`` on the tile grid (no pixels read yet)."""
    from pipelines import load

    items = _items_for(plan, source, tile_id)
    if not items:
        raise NoScenesError(f"no {source} scenes on tile {tile_id} in {plan.window}")
    geobox = plan.tile(tile_id).geobox
    chunk = plan.tile_px
    if source == "s2":
        return load.load_s2(items, geobox, bands=S2_BANDS, with_scl=True, chunksize=chunk)
    if source in ("s1", "s1_pre", "s1_post"):
        return load.load_s1(items, geobox, chunksize=chunk)
    if source == "dem":
        return load.load_dem(items, geobox, chunksize=chunk)
    raise BadInputError("source", source, f"one of {SOURCE_INPUTS}")


def as_dataset(name: str, value: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """A stage output as a Dataset of (time, y, x) variables (a ``band`` dim becomes variables)."""
    if isinstance(value, xr.Dataset):
        return value
    if "band" in value.dims:
        bands = [str(b) for b in value["band"].values]
        return xr.Dataset({b: value.sel(band=b, drop=True) for b in bands})
    return value.to_dataset(name=name)


def product_spec(stage: Stage) -> products.ProductSpec:
    """How a stage's COGs and quicklooks are rendered (from its registry declaration)."""
    if stage.quicklook == "classes":
        return products.ProductSpec(
            quicklook="classes", classes=dict(stage.classes or {}), overview_resampling="mode"
        )
    return products.ProductSpec(quicklook=stage.quicklook, overview_resampling="average")


def product_view(stage: Stage, value: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """The variables of a stage output that are written as its product."""
    ds = as_dataset(stage.name, value)
    if stage.product_vars is None:
        return ds
    return ds[[v for v in stage.product_vars if v in ds.data_vars]]


# ---- one tile ------------------------------------------------------------------------------


def pending_labels(
    plan: RunPlan, store: str, stage: Stage, tile_id: str, overwrite: bool
) -> list[str]:
    """Labels of ``stage`` on ``tile_id`` that have no valid marker (all of them if overwrite)."""
    labels = tile_dates(plan, stage, tile_id)
    if overwrite:
        return labels
    return [
        lab
        for lab in labels
        if not products.is_done(store, plan.province, stage.name, tile_id, lab, stage.version)
    ]


def build_group_graph(
    plan: RunPlan, store: str, group: StageGroup, tile_id: str
) -> tuple[dict[str, xr.Dataset], dict[str, xr.DataArray]]:
    """Lazy outputs of ``group``'s stages on a tile, and the lazy sources they read."""
    wanted = [n for n in group.stages if stage_available(plan, get_stage(n), tile_id)]
    if not wanted:
        raise NoScenesError(f"no stage of {group.name} has all its scenes on tile {tile_id}")
    stages = resolve_order(wanted)
    values: dict[str, Any] = {}
    sources: dict[str, xr.DataArray] = {}
    optional = {src for st in stages for src in st.optional}
    for name in source_inputs(stages):
        if name in optional and not _items_for(plan, name, tile_id):
            values[name] = None  # the stage runs without it
            continue
        sources[name] = load_source(plan, name, tile_id)
    values.update(sources)
    for stage in stages:
        if stage.name not in group.stages:
            # Produced by an earlier group: read the tile's region of its cube, lazily.
            values[stage.name] = open_tile_product(plan, store, stage.name, tile_id)
            continue
        kwargs = {k: values[k] for k in stage.inputs if k in values}
        annotate = dask.annotate(resources=dict(stage.resources)) if stage.gpu else _null()
        with annotate:
            values[stage.name] = stage.func(**kwargs)
        if not stage.per_date:
            values[stage.name] = _dated_by_window(plan, values[stage.name])
    return {name: product_view(get_stage(name), values[name]) for name in wanted}, sources


def _dated_by_window(plan: RunPlan, value: xr.DataArray | xr.Dataset) -> Any:
    """A window product (no time dim) dated by the first day of the run window."""
    if "time" in value.dims:
        return value
    return value.expand_dims(time=[np.datetime64(plan.window[0], "ns")])


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield


#: Messages of reads that may pass on retry (object storage hiccups), as opposed to bad files.
_TRANSIENT_READ = ("HTTP response code: 5", "timed out", "Connection", "Temporary failure")


def classify_read_error(exc: Exception) -> Exception:
    """A scene read failure as a terrapipe error: transient I/O (retried) or a bad file."""
    import re

    from pipelines.errors import TransientIOError

    message = str(exc)
    if "Error opening" not in message and "RasterioIOError" not in message:
        return exc
    if any(marker in message for marker in _TRANSIENT_READ):
        return TransientIOError(f"reading a scene failed, may pass on retry: {message}")
    found = re.search(r"Error opening '([^']+)'", message)
    return BadInputError(
        "scene asset",
        found.group(1) if found else message,
        "a readable Cloud-Optimized GeoTIFF",
        f"the file is corrupt or not a raster: {message[-300:]}",
    )


def _to_days(ds: xr.Dataset) -> xr.Dataset:
    """Product cubes index time by UTC day (same-day acquisitions are already mosaicked)."""
    if "time" not in ds.coords:
        return ds
    return ds.assign_coords(time=ds["time"].dt.floor("D"))


def _select_labels(ds: xr.Dataset, labels: list[str]) -> xr.Dataset:
    if "time" not in ds.dims:
        return ds
    have = [products.date_label(t) for t in ds["time"].values]
    keep = [i for i, lab in enumerate(have) if lab in labels]
    return ds.isel(time=keep)


def open_tile_product(plan: RunPlan, store: str, product: str, tile_id: str) -> xr.Dataset:
    """The tile's region of an upstream product cube, lazily (a stage of an earlier group)."""
    grid, tile_on = stage_grid(plan, get_stage(product))
    ys, xs = grid.region(tile_on(tile_id))
    ds = products.open_product(store, plan.province, product).isel(y=ys, x=xs)
    labels = tile_dates(plan, get_stage(product), tile_id)
    return _select_labels(ds, labels)


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
            for d in _items_for(plan, source, tile_id)
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


def stage_grid(plan: RunPlan, stage: Stage) -> tuple[Any, Any]:
    """The province grid of ``stage``'s product and a function from tile id to its tile on it."""
    grid = plan.province_grid.scaled(stage.scale)
    return grid, lambda tile_id: plan.tile(tile_id).scaled(stage.scale)


def process_tile(
    plan: RunPlan,
    store: str,
    group: StageGroup,
    tile_id: str,
    client: Any,
    overwrite: bool = False,
) -> TileResult:
    """Compute ``group``'s stages on one tile and write what has no marker yet."""
    result = TileResult(tile_id)
    pending: dict[str, list[str]] = {}
    for name in group.stages:
        stage = get_stage(name)
        labels = tile_dates(plan, stage, tile_id)
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
    selected = {n: _select_labels(outputs[n], labels) for n, labels in pending.items()}
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
        grid, tile_on = stage_grid(plan, stage)
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


def prepare_products(plan: RunPlan, store: str) -> dict[str, Any]:
    """Create (or extend) each product's cube for the run's dates; serial, once per run."""
    prepared: dict[str, int] = {}
    # Lazy tile graphs give every output's variables and dtypes without reading pixels.
    for group in plan.groups:
        missing = set(group.stages)
        for entry in plan.tiles:
            if not missing:
                break
            try:
                template, _ = build_group_graph(plan, store, group, entry["tile_id"])
            except NoScenesError:
                continue
            for name in sorted(missing & set(template)):
                products.init_cube(
                    store,
                    plan.province,
                    name,
                    stage_grid(plan, get_stage(name))[0],
                    times=plan.dates[name],
                    variables=cube_variables(template[name]),
                    attrs={"stage": name, "stage_version": plan.stage_versions[name]},
                )
                prepared[name] = len(plan.dates[name])
                missing.discard(name)
    return prepared


def cube_variables(template: xr.Dataset) -> dict[str, tuple[Any, ...]]:
    """Cube variable specs ``{name: (dtype, fill, attrs, dims)}`` from a lazy stage output."""
    specs: dict[str, tuple[Any, ...]] = {}
    for name, var in template.data_vars.items():
        dtype = np.dtype(var.dtype)
        if dtype.kind == "f":
            fill: Any = np.nan
        elif dtype.kind == "b":
            fill = False
        else:
            fill = 0
        dims = tuple(d for d in var.dims if d in ("time", "y", "x"))
        specs[str(name)] = (dtype, fill, _json_attrs(var.attrs), dims)
    return specs


def _json_attrs(attrs: dict[Any, Any]) -> dict[str, Any]:
    """Attributes a Zarr store can hold (JSON): numpy scalars unwrapped, the rest as text."""
    import json

    out: dict[str, Any] = {}
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
    client: Any,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Process every tile of one batch for one stage group; a manifest for XCom."""
    group = next((g for g in plan.groups if g.name == group_name), None)
    if group is None:
        raise BadInputError("group", group_name, f"one of {[g.name for g in plan.groups]}")
    if not 0 <= batch_index < len(plan.batches):
        raise BadInputError("batch", batch_index, f"0..{len(plan.batches) - 1}")
    tiles = []
    for tile_id in plan.batches[batch_index]:
        res = process_tile(plan, store, group, tile_id, client, overwrite)
        tiles.append(res.to_dict())
        if progress:
            progress(tile_id)
    return {
        "group": group_name,
        "batch": batch_index,
        "tiles": len(tiles),
        "written": sum(len(v) for t in tiles for v in t["written"].values()),
        "skipped": sum(len(v) for t in tiles for v in t["skipped"].values()),
        "no_scenes": sum(len(t["no_scenes"]) for t in tiles),
        "compute_s": round(sum(t["compute_s"] for t in tiles), 3),
        "write_s": round(sum(t["write_s"] for t in tiles), 3),
        "bytes_written": sum(t["bytes_written"] for t in tiles),
    }


def finalize(plan: RunPlan, store: str) -> dict[str, Any]:
    """Rebuild the province's static STAC catalog from the markers present."""
    url = products.build_catalog(store, plan.province)
    return {"catalog": url}


def summarize(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over batch manifests."""
    keys = ("tiles", "written", "skipped", "no_scenes", "bytes_written")
    out: dict[str, Any] = {k: sum(int(m.get(k, 0)) for m in manifests) for k in keys}
    out["compute_s"] = round(sum(float(m.get("compute_s", 0)) for m in manifests), 3)
    out["write_s"] = round(sum(float(m.get("write_s", 0)) for m in manifests), 3)
    return out


def open_plan(url: str) -> RunPlan:
    """Read a plan written by ``pipelines.engine.plan.write_plan``."""
    return read_plan(url)


__all__ = [
    "S2_BANDS",
    "TileResult",
    "as_dataset",
    "build_group_graph",
    "finalize",
    "open_plan",
    "pending_labels",
    "prepare_products",
    "process_batch",
    "process_tile",
    "summarize",
    "tile_dates",
]


@contextlib.contextmanager
def stac_api_for(stac: Any) -> Iterator[str]:
    """The STAC API URL of a config's ``stac`` section; the archive is served for the duration
    when no URL is configured (embedded default)."""
    if stac.url:
        yield stac.url
        return
    from pipelines.catalog.server import running_server, serve_archive

    existing = running_server(stac.archive)
    if existing is not None:  # e.g. `terrapipe stac serve --detach`: use it, leave it running
        yield existing.url
        return
    with serve_archive(stac.archive) as server:
        yield server.url


def run_local(
    config: Any,
    client: Any,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """A whole run without Airflow, on ``client``'s cluster (bench, tests, notebooks)."""
    from pipelines.engine.plan import make_plan, plan_url, write_plan

    t0 = time.perf_counter()
    with stac_api_for(config.stac) as api:
        plan = make_plan(config, api)
    url = plan_url(config.store, config.province, plan.window, config.fingerprint())
    write_plan(plan, url)
    plan_s = time.perf_counter() - t0
    prepare_products(plan, config.store)
    manifests = []
    for group in plan.groups:
        for index in range(len(plan.batches)):
            manifests.append(
                process_batch(plan, config.store, group.name, index, client, overwrite, progress)
            )
    summary = summarize(manifests)
    summary.update(finalize(plan, config.store))
    summary["plan_s"] = round(plan_s, 3)
    summary["wall_s"] = round(time.perf_counter() - t0, 3)
    summary["plan_url"] = url
    return summary
