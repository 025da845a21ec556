"""The runner: a plan -> product cubes prepared -> tile batches processed -> catalog.

Plain functions over a plan, so that the Airflow tasks (``operators``), ``terrapipe bench`` and
the tests drive the same code. Each (stage group, tile) is one lazy graph
(:func:`pipelines.engine.graph.build_group_graph`) computed on the run's Dask cluster; results
are written by :mod:`pipelines.products`, the STAC item of each (product, tile, date) last, as
the commit marker that makes a repeated run skip it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from pipelines import __version__, products, storage
from pipelines.config import ProvinceConfig
from pipelines.engine import submit
from pipelines.engine.graph import build_group_graph, product_spec, select_labels
from pipelines.engine.manifest import (
    BatchManifest,
    TileResult,
    batch_failure,
    failures_folder,
    read_failures,
    record_batch,
    summarize,
)
from pipelines.engine.plan import RunPlan, item_date, plan_run, reference_sources
from pipelines.engine.report import record_outcome
from pipelines.errors import (
    BadInputError,
    NoScenesError,
    TransientIOError,
)
from pipelines.inputs import item_orbit, same_track, track_of
from pipelines.load import (
    READ_MODULES,
    classify_read_error,
    forget_remote_files,
    import_in_background,
)
from pipelines.products import Provenance
from pipelines.stages.registry import (
    Stage,
    StageGroup,
    get_stage,
    needed_sources,
    resolve_order,
    source_inputs,
    time_source,
)

if TYPE_CHECKING:
    from distributed import Client

#: The lazy graph of a stage group on a tile (:func:`pipelines.engine.graph.build_group_graph`).
GroupGraph = tuple[dict[str, xr.Dataset], dict[str, xr.DataArray]]
#: Group graphs built while preparing a run, by (group name, tile id), for its tiles to reuse.
GraphCache = dict[tuple[str, str], GroupGraph]


log = logging.getLogger(__name__)


# ---- one tile ------------------------------------------------------------------------------


def pending_labels(
    plan: RunPlan, store: str, stage: Stage, tile_id: str, overwrite: bool
) -> list[str]:
    """Labels of ``stage`` on ``tile_id`` that have no valid marker (all of them if overwrite);
    the markers read side by side."""
    labels = plan.tile_dates(stage, tile_id)
    if overwrite:
        return labels
    done = storage.concurrently(
        lambda lab: products.is_done(store, plan.province, stage.name, tile_id, lab, stage.version),
        labels,
        url=store,
    )
    return [lab for lab, d in zip(labels, done, strict=True) if not d]


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
    pre = set(reference_sources(stage))
    per_label: dict[str, list[str]] = {}
    for label in labels:
        ids = [
            d["id"]
            for source in used
            for d in plan.items_for(source, tile_id)
            if (source != primary and source not in pre)
            or (source == primary and item_date(d) == label)
        ]
        if pre and primary:
            ids += reference_items(plan, tile_id, [*pre, primary], label)
        per_label[label] = sorted(set(ids))
    return Provenance(
        stage_versions={s.name: s.version for s in upstream},
        input_items=per_label,
        model_checksums=model_checksums(upstream),
        software_version=__version__,
    )


def reference_items(plan: RunPlan, tile_id: str, sources: list[str], label: str) -> list[str]:
    """Ids of the scenes a date ``label`` of the last of ``sources`` (the dated input) is
    compared with on a tile, as :func:`pipelines.stages.flood.reference_groups` takes them:
    the days of ``sources`` in its reference window (:meth:`RunPlan.reference_window`), those
    of its own track where there are any (:func:`pipelines.inputs.same_track`)."""
    lo, hi = plan.reference_window(label)
    days: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for source in sources:
        for d in plan.items_for(source, tile_id):
            if lo <= item_date(d) <= hi:
                days.setdefault((source, item_date(d)), []).append(d)

    def track(items: Sequence[Mapping[str, Any]]) -> int:
        return track_of(item_orbit(d) for d in items)

    own = track([d for d in plan.items_for(sources[-1], tile_id) if item_date(d) == label])
    candidates = list(days.values())
    kept = same_track(own, [track(items) for items in candidates])
    return [d["id"] for k in kept for d in candidates[k]]


def model_checksums(stages: list[Stage]) -> dict[str, str]:
    """sha256 of the weights of every model ``stages`` run (product provenance)."""
    names = sorted({m for st in stages for m in st.models})
    if not names:
        return {}
    from models.registry import model_checksum

    return {name: f"sha256:{model_checksum(name)}" for name in names}


def independent_parts(names: Sequence[str], group: StageGroup) -> list[tuple[str, ...]]:
    """``names`` (stages of ``group``) split into parts that share no needed source input and
    no stage of the group upstream: what one failing input cannot take down together. An input
    a stage can do without (``Stage.optional``: water_mask's DEM) joins no parts: a stage that
    needs it and one that may read it keep apart, so that an input only the first reads (the
    pre-event S1 of flood_change) cannot fail the second."""
    parts: list[tuple[set[str], list[str]]] = []
    for name in names:
        chain = resolve_order([name])
        reads = needed_sources(chain) | {s.name for s in chain if s.name in group.stages}
        joined = [p for p in parts if p[0] & reads]
        for part in joined:
            parts.remove(part)
            reads |= part[0]
        parts.append((reads, [n for p in joined for n in p[1]] + [name]))
    return [tuple(sorted(members, key=list(names).index)) for _, members in parts]


def _build_parts(
    plan: RunPlan,
    store: str,
    group: StageGroup,
    tile_id: str,
    pending: Mapping[str, list[str]],
    failure: Exception,
    result: TileResult,
) -> dict[str, xr.Dataset]:
    """The lazy outputs of each independent part of ``pending`` built alone, after building
    them together failed with ``failure``; a part that fails again is recorded as failed."""
    parts = independent_parts(list(pending), group)
    outputs: dict[str, xr.Dataset] = {}
    for part in parts:
        error: Exception = failure
        if len(parts) > 1:  # one part alone would fail the same way
            needed = {s.name for s in resolve_order(list(part))}
            stages = tuple(n for n in group.stages if n in needed)
            try:
                built, _ = build_group_graph(
                    plan,
                    store,
                    StageGroup(group.name, stages, group.resources, group.pool),
                    tile_id,
                )
                outputs.update({n: built[n] for n in part if n in built})
                continue
            except NoScenesError as exc:
                result.no_scenes.append(str(exc))
                continue
            except Exception as exc:
                error = exc
        for name in part:
            result.fail(name, pending[name], error)
    return outputs


def _read_failure(exc: Exception, plan: RunPlan, tile_id: str) -> Exception:
    """A failure of a compute, as a terrapipe error when it is a scene read (chained), a
    missing or corrupt file named with its item among the tile's scenes."""
    scenes = [i for source in plan.tile_scenes(tile_id) for i in plan.items_for(source, tile_id)]
    classified = classify_read_error(exc, scenes)
    if classified is not exc:
        classified.__cause__ = exc
    return classified


#: Seconds a tile waits for another run writing the same tile (a tile's group computes in
#: seconds to minutes), then refuses with BadInputError naming the holder.
TILE_LOCK_WAIT_S = 1800.0


def tile_lock(
    store: str, province: str, tile_id: str, wait_s: float | None = None
) -> AbstractContextManager[Any]:
    """The lock of one tile of a province (:func:`pipelines.products.lock.store_lock`, key
    ``tile-<tile_id>``): held by :func:`process_tile` while it reads the tile's markers and
    writes, in whatever process runs it (``terrapipe run``, a task under any Airflow executor,
    :func:`run_local`), so that two runs of any windows and products never write one product
    twice: the second waits (up to ``wait_s``, default :data:`TILE_LOCK_WAIT_S` read at the
    call), then finds the markers and skips."""
    from pipelines.products.lock import store_lock

    wait = TILE_LOCK_WAIT_S if wait_s is None else wait_s
    return store_lock(store, province, f"tile-{tile_id}", wait_s=wait)


#: Dates of a product that one submission of a tile computes (:func:`date_rounds`): a tile
#: with more pending dates (a window of a year or more: up to 128 S2 and 122 S1 dates a tile
#: in the synthetic province of `terrapipe bench-province`) is computed in rounds of this
#: many, each written before the next is submitted. A submission's graph of the five classical
#: stages then holds 1,203-1,581 tasks there (5,854-10,410 with the year in one graph), and the
#: driver holds at most this many dates of a product it writes (dehaze on a 1024 px tile:
#: 4 bands x 4 MiB a date, 192 MiB) whatever the window. A monthly run (6-12 S2 dates a tile)
#: is one round.
DATES_PER_ROUND = 12


def whole_window(ds: xr.Dataset) -> bool:
    """Whether a product's dates are computed together: some variable has its dates in one
    dask chunk (``ndvi_gapfilled``, whose gap filling fits one regression on every date of the
    tile). A round of such a product computes the whole window whatever dates it writes, so a
    tile in rounds (:func:`date_rounds`) computes it once, holds it on the cluster and writes
    it round by round (:attr:`SubmittedTile.held`), instead of once a round."""
    for var in ds.data_vars.values():
        if "time" not in var.dims or var.chunks is None:
            continue
        chunks = var.chunks[var.dims.index("time")]
        if len(chunks) == 1 and chunks[0] > 1:
            return True
    return False


def window_products(pending: Iterable[str], outputs: Mapping[str, xr.Dataset]) -> list[str]:
    """The products of ``pending`` that a tile in rounds computes once for its whole window
    and holds: those whose dates are computed together (:func:`whole_window`), and the pending
    products they read, upstream in the group (``cloud_mask`` for ``ndvi_gapfilled``), which
    their graph computes for every date anyway; each round then writes its dates of them all
    from what is held, instead of computing those dates a second time. Dependencies first."""
    whole = {n for n in pending if whole_window(outputs[n])}
    needed = {s.name for n in whole for s in resolve_order([n])}
    return [n for n in pending if n in needed]


def tile_constants(ds: xr.Dataset) -> dict[str, Any]:
    """The tile constants in the dask graphs of ``ds``'s variables
    (:func:`pipelines.stages.filters.tile_constant`: flood_change's pre-event reference, its
    floodable terrain and reference state), by layer name, as dask arrays of their own."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    from pipelines.stages.filters import TILE_CONSTANT_PREFIX

    found: dict[str, Any] = {}
    for var in ds.data_vars.values():
        graph = var.data.__dask_graph__() if isinstance(var.data, da.Array) else None
        if not isinstance(graph, HighLevelGraph):
            continue
        for name, layer in graph.layers.items():
            shape = layer.collection_annotations or {}
            if not name.startswith(TILE_CONSTANT_PREFIX) or name in found or "chunks" not in shape:
                continue
            found[name] = da.Array(
                graph.cull_layers([name]), name, shape["chunks"], dtype=shape["dtype"]
            )
    return found


def with_held_constants(ds: xr.Dataset, held: Mapping[str, Any]) -> xr.Dataset:
    """``ds`` with each tile constant of ``held`` (layer name -> the persisted array, same
    keys) taken from the cluster instead of computed: the constant's layer is the persisted
    one, and what only it read is dropped from the graph. A key the rounds' graphs share with
    the persisted graph must be a constant's own (a constant's parts that other constants and
    the rounds both read are constants too), else the scheduler would get one key with two
    tasks (dask#9888)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    def swap(data: Any) -> Any:
        graph = data.__dask_graph__() if isinstance(data, da.Array) else None
        if not isinstance(graph, HighLevelGraph):
            return data
        names = [n for n in held if n in graph.layers]
        if not names:
            return data
        layers = dict(graph.layers)
        deps = {k: set(v) for k, v in graph.dependencies.items()}
        for n in names:
            layers[n] = held[n].dask.layers[n]
            deps[n] = set()
        swapped = HighLevelGraph(layers, deps).cull_layers([data.name])
        return da.Array(swapped, data.name, data.chunks, meta=data._meta)

    return ds.copy(data={k: swap(v.data) for k, v in ds.data_vars.items()})


def constants_read(ds: xr.Dataset, constants: Mapping[str, Any]) -> set[str]:
    """Which of ``constants`` (:func:`tile_constants`) computing ``ds`` reads: its graph culled,
    task by task, to its own keys (a few thousand tasks a round; the layer-level cull of a
    slice of a concatenation keeps layers it does not need)."""
    import dask.array as da
    from dask.optimization import cull

    read: set[str] = set()
    for var in ds.data_vars.values():
        if not isinstance(var.data, da.Array):
            continue
        keys = list(da.core.flatten(var.data.__dask_keys__()))
        needed, _ = cull(dict(var.data.__dask_graph__()), keys)
        names = {k[0] if isinstance(k, tuple) else k for k in needed}
        read |= {n for n in constants if n in names}
    return read


@dataclass
class HeldConstants:
    """The tile constants that several of a tile's rounds of dates read
    (:func:`hold_tile_constants`), by graph layer name: each one's graph (``shared``), the
    first and last round that read it (``rounds``), and those on the cluster now
    (``arrays``): a constant is held from its first round to its last."""

    shared: dict[str, Any] = field(default_factory=dict)
    rounds: dict[str, tuple[int, int]] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)

    def for_round(self, k: int, client: Client, **placement: Any) -> bool:
        """Hold what round ``k`` reads: persist the constants first read in it and forget those
        no round from ``k`` on reads (the cluster lets them go once the products built on them
        are built again without them: :meth:`build`); True when what is held changed."""
        done = [n for n in self.arrays if self.rounds[n][1] < k]
        for n in done:
            del self.arrays[n]
        start = [n for n, (first, _) in self.rounds.items() if first == k]
        if start:
            persisted = submit.persist(client, [self.shared[n] for n in start], **placement)
            self.arrays.update(zip(start, persisted, strict=True))
        return bool(done or start)

    def build(self, outputs: Mapping[str, xr.Dataset]) -> dict[str, xr.Dataset]:
        """The ``outputs`` that read a held constant, built on the held ones
        (:func:`with_held_constants`)."""
        return {
            n: with_held_constants(ds, self.arrays)
            for n, ds in outputs.items()
            if self.arrays.keys() & tile_constants(ds).keys()
        }


def hold_tile_constants(
    outputs: Mapping[str, xr.Dataset],
    rounds: Sequence[Mapping[str, Sequence[str]]],
    client: Client,
    **placement: Any,
) -> HeldConstants:
    """For a tile computed in ``rounds`` of dates (:func:`date_rounds`): the tile constants of
    ``outputs`` that more than one round reads (each round computed them again before:
    flood_change's reference of an event, once every 12 dates), those of the first round
    persisted on the cluster (:meth:`HeldConstants.for_round`); a constant that one round
    reads is computed in it as before, and held by no one. The cluster holds them as long as
    the products built on them are referenced (:meth:`HeldConstants.build`,
    :attr:`SubmittedTile.held`)."""
    per_output = {n: tile_constants(ds) for n, ds in outputs.items()}
    read_in: dict[str, set[int]] = {}
    for n, constants in per_output.items():
        for k, labels in enumerate(rounds):
            if constants and labels.get(n):
                for name in constants_read(select_labels(outputs[n], list(labels[n])), constants):
                    read_in.setdefault(name, set()).add(k)
    shared = {
        name: arr
        for constants in per_output.values()
        for name, arr in constants.items()
        if len(read_in.get(name, ())) > 1
    }
    held = HeldConstants(shared, {n: (min(read_in[n]), max(read_in[n])) for n in shared})
    held.for_round(0, client, **placement)
    return held


def date_rounds(
    pending: Mapping[str, Sequence[str]], size: int | None = None
) -> list[dict[str, list[str]]]:
    """``pending`` (product -> date labels, in date order) in rounds of at most ``size``
    (default :data:`DATES_PER_ROUND`) labels of each product: round ``k`` holds each product's
    labels ``k * size`` to ``(k + 1) * size`` (a product with fewer labels drops out of the
    later rounds); no round when nothing is pending."""
    size = DATES_PER_ROUND if size is None else size
    if size < 1:
        raise BadInputError("size", size, "at least 1 date a round")
    longest = max((len(labels) for labels in pending.values()), default=0)
    rounds = []
    for start in range(0, longest, size):
        part = {n: list(labels[start : start + size]) for n, labels in pending.items()}
        rounds.append({n: labels for n, labels in part.items() if labels})
    return rounds


@dataclass
class SubmittedTile:
    """A tile whose products are being computed on the cluster (:func:`submit_tile`), its lock
    held until :func:`finish_tile` has written them. ``later``: the tile's rounds of dates
    still to submit once these are written (:func:`date_rounds`), with the ``group``,
    ``client`` and ``graph`` they are submitted with."""

    tile_id: str
    result: TileResult
    futures: dict[str, Any]
    pending: dict[str, list[str]]
    started: float
    lock: ExitStack
    later: list[dict[str, list[str]]] = field(default_factory=list)
    group: StageGroup | None = None
    client: Client | None = None
    graph: GroupGraph | None = None
    #: The tile's products as its later rounds compute them, by name, held until the last
    #: round is written: computed once for all rounds and held on the cluster (a
    #: :func:`whole_window` product and the products it reads: :func:`window_products`), or
    #: built on tile constants held there (:func:`hold_tile_constants`).
    held: dict[str, xr.Dataset] = field(default_factory=dict)
    #: The tile constants its rounds share, each held from the first round that reads it to
    #: the last (:meth:`HeldConstants.for_round`).
    constants: HeldConstants = field(default_factory=HeldConstants)
    #: The worker lists its tasks and held data were pinned to (:func:`group_placement` of a
    #: CPU group on a cluster with GPU workers), over every round so far.
    placed_on: list[frozenset[str]] = field(default_factory=list)

    def place(self, workers: Sequence[str] | None) -> None:
        """Record the workers a submission of the tile was pinned to (None: not pinned)."""
        if workers and frozenset(workers) not in self.placed_on:
            self.placed_on.append(frozenset(workers))

    def stranded(self) -> str | None:
        """Why the tile's computation can no longer finish, or None (:func:`workers_left`)."""
        return None if self.client is None else workers_left(self.client, self.placed_on)

    def cancel(self) -> None:
        """Drop the tile's computations and release its lock (nothing of it was written)."""
        for future in self.futures.values():
            with contextlib.suppress(Exception):
                future.cancel()
        self.futures = {}
        self.lock.close()


def process_tile(
    plan: RunPlan,
    store: str,
    group: StageGroup,
    tile_id: str,
    client: Client,
    overwrite: bool = False,
    graph: GroupGraph | None = None,
) -> TileResult:
    """Compute ``group``'s stages on one tile and write what has no marker yet, holding the
    tile's lock (:func:`tile_lock`); ``graph``: the group's lazy graph on this tile when it is
    already built (:func:`prepare_products` builds one per group), else it is built here.

    A product that fails (an input that does not read, a write that fails) is recorded in the
    result's ``failed``; the products that do not depend on it are still computed and written.
    Each product is written as soon as it is computed, while the cluster computes the others.
    """
    return finish_tile(
        plan, store, submit_tile(plan, store, group, tile_id, client, overwrite, graph), overwrite
    )


def submit_tile(
    plan: RunPlan,
    store: str,
    group: StageGroup,
    tile_id: str,
    client: Client,
    overwrite: bool = False,
    graph: GroupGraph | None = None,
    lock_wait_s: float | None = None,
    only: Mapping[str, Sequence[str]] | None = None,
    held: dict[str, xr.Dataset] | None = None,
    placed_on: Sequence[frozenset[str]] = (),
) -> SubmittedTile:
    """Take the tile's lock (waiting up to ``lock_wait_s``, default :data:`TILE_LOCK_WAIT_S`),
    read its markers and submit the computation of the first round of dates
    (:func:`date_rounds`) of every product that has none to the cluster, without waiting for
    it: the first half of :func:`process_tile`, :func:`finish_tile` the second (which submits
    the later rounds). ``only``: the labels of a later round (product -> labels), of which
    those still without a marker are submitted; ``held``: the tile's products held on the
    cluster for its rounds (:attr:`SubmittedTile.held`), on the workers ``placed_on``
    (:attr:`SubmittedTile.placed_on`)."""
    lock = ExitStack()
    lock.enter_context(tile_lock(store, plan.province, tile_id, lock_wait_s))
    try:
        return _submit_locked_tile(
            plan, store, group, tile_id, client, overwrite, graph, lock, only, held, placed_on
        )
    except BaseException:
        lock.close()
        raise


def _submit_locked_tile(
    plan: RunPlan,
    store: str,
    group: StageGroup,
    tile_id: str,
    client: Client,
    overwrite: bool,
    graph: GroupGraph | None,
    lock: ExitStack,
    only: Mapping[str, Sequence[str]] | None = None,
    held: dict[str, xr.Dataset] | None = None,
    placed_on: Sequence[frozenset[str]] = (),
) -> SubmittedTile:
    result = TileResult(tile_id)
    pending: dict[str, list[str]] = {}
    for name in group.stages:
        stage = get_stage(name)
        todo = pending_labels(plan, store, stage, tile_id, overwrite)
        if only is not None:  # a later round: its labels still without a marker
            wanted = set(only.get(name, ()))
            todo = [lab for lab in todo if lab in wanted]
        else:
            labels = plan.tile_dates(stage, tile_id)
            result.skipped[name] = [lab for lab in labels if lab not in todo]
        if todo:
            pending[name] = todo
    rounds = date_rounds(pending) if only is None else [pending]
    submitted = SubmittedTile(
        tile_id,
        result,
        {},
        rounds[0] if rounds else {},
        time.perf_counter(),
        lock,
        later=rounds[1:],
        group=group,
        client=client,
        graph=graph,
        held=dict(held or {}),
        placed_on=list(placed_on),
    )
    pending = submitted.pending
    if not pending:
        return submitted
    placement = group_placement(group, client)
    submitted.place(placement["workers"])
    if any(get_stage(n).models for n in pending):  # before any task starts (a held product's)
        from models.serving import ensure_model_plugin

        ensure_model_plugin(client)
    try:
        if graph is None:
            graph = submitted.graph = build_group_graph(plan, store, group, tile_id)
        outputs, _ = graph
        if len(rounds) > 1:
            all_labels = {n: [lab for r in rounds for lab in r.get(n, ())] for n in pending}
            reading = {n: outputs[n] for n in pending}
            submitted.constants = hold_tile_constants(reading, rounds, client, **placement)
            submitted.held.update(submitted.constants.build(reading))
            window = window_products(pending, outputs)
            if window:
                wholes = [
                    select_labels(submitted.held.get(n, outputs[n]), all_labels[n]) for n in window
                ]
                # Their lineage on keys of its own: the rounds read the same scenes.
                persisted = submit.persist(client, wholes, private=True, **placement)
                submitted.held.update(zip(window, persisted, strict=True))
        selected = {
            n: select_labels(submitted.held.get(n, outputs[n]), labels)
            for n, labels in pending.items()
        }
    except NoScenesError as exc:
        result.no_scenes.append(str(exc))
        submitted.later = []  # no round of this tile has the scenes
        return submitted
    except Exception as exc:  # e.g. an item without an asset: build the independent parts
        parts = _build_parts(plan, store, group, tile_id, pending, exc, result)
        selected = {n: select_labels(parts[n], pending[n]) for n in pending if n in parts}
    if not selected:
        return submitted
    submitted.started = time.perf_counter()
    futures = submit.compute(client, list(selected.values()), **placement)
    submitted.futures = dict(zip(selected, futures, strict=True))
    return submitted


def finish_tile(
    plan: RunPlan, store: str, submitted: SubmittedTile, overwrite: bool = False
) -> TileResult:
    """Write each product of a submitted tile as its computation completes
    (:func:`write_as_completed`), then release the tile's lock; then each later round of the
    tile's dates (:func:`date_rounds`), submitted and written in turn, the lock taken again
    for each. The tile's result, over every round."""
    rounds = 1 + len(submitted.later)
    if rounds > 1:
        _log_round(plan, submitted.tile_id, 1, rounds, submitted.pending)
    _write_round(plan, store, submitted, overwrite)
    result = submitted.result
    for k, labels in enumerate(submitted.later, start=2):
        _log_round(plan, submitted.tile_id, k, rounds, labels)
        if not submitted.held and not submitted.constants.arrays:
            submitted.placed_on = []  # no round reads what the rounds before computed
        reason = submitted.stranded()  # what they hold is lost with its workers
        if reason is not None:
            for name, round_labels in labels.items():
                result.fail(name, round_labels, TransientIOError(reason))
            continue
        try:
            if submitted.group is None or submitted.client is None:
                raise RuntimeError(f"tile {submitted.tile_id}: a later round without its group")
            _hold_for_round(submitted, k - 1, submitted.group, submitted.client)
            following = submit_tile(
                plan,
                store,
                submitted.group,
                submitted.tile_id,
                submitted.client,
                overwrite,
                submitted.graph,
                only=labels,
                held=submitted.held,
                placed_on=submitted.placed_on,  # where what the rounds before hold lives
            )
        except Exception as exc:  # the lock or the graph: this round's products failed
            for name, round_labels in labels.items():
                result.fail(name, round_labels, exc)
            continue
        _write_round(plan, store, following, overwrite)
        result.absorb(following.result)
    # The last round is written: release what the rounds shared.
    submitted.held.clear()
    submitted.constants = HeldConstants()
    return result


def group_placement(group: StageGroup, client: Client) -> dict[str, Any]:
    """Where a group's tasks run (``client.compute`` / ``persist`` keywords): a CPU group on
    the plain workers only (the GPU workers stay free for the GPU groups); a GPU group's stage
    tasks carry their resources as annotations (kept: no graph fusion)."""
    return {
        "optimize_graph": not group.resources,
        "workers": None if group.resources else cpu_workers(client),
        "allow_other_workers": False,
    }


def _hold_for_round(submitted: SubmittedTile, k: int, group: StageGroup, client: Client) -> None:
    """Before round ``k`` (0: the first) of a tile: the tile constants it reads held on the
    cluster, those no round from ``k`` on reads let go (:meth:`HeldConstants.for_round`), and
    the products built on them built again on what is held."""
    placement = group_placement(group, client)
    submitted.place(placement["workers"])
    if not submitted.constants.for_round(k, client, **placement) or submitted.graph is None:
        return
    outputs, _ = submitted.graph
    # The first round's products are every round's; those held for the whole window stay so.
    window = window_products(submitted.pending, outputs)
    dated = [n for n in submitted.pending if n not in window]
    rebuilt = submitted.constants.build({n: outputs[n] for n in dated})
    for n in dated:
        if n in rebuilt:
            submitted.held[n] = rebuilt[n]
        else:
            submitted.held.pop(n, None)  # none of its constants is held any more


def _log_round(
    plan: RunPlan, tile_id: str, k: int, rounds: int, labels: Mapping[str, Sequence[str]]
) -> None:
    """One log line as round ``k`` of a tile's ``rounds`` starts: its dates of each product."""
    dates = ", ".join(
        f"{name} {lab[0]}..{lab[-1]} ({len(lab)})" for name, lab in labels.items() if lab
    )
    log.info("%s tile %s: round %d of %d: %s", plan.province, tile_id, k, rounds, dates)


def _write_round(plan: RunPlan, store: str, submitted: SubmittedTile, overwrite: bool) -> None:
    """Write a submitted round's products as they complete, then release the tile's lock."""
    with submitted.lock:
        if submitted.futures:
            write_as_completed(
                plan,
                store,
                submitted.tile_id,
                submitted.futures,
                submitted.pending,
                submitted.result,
                overwrite,
                submitted.started,
                stranded=submitted.stranded,
            )


class TilePipeline:
    """A stage group's tiles processed in a given order, each tile's computation submitted
    while the tile before it is written: the cluster computes tile n+1 while the driver writes
    tile n, instead of idling between tiles.

    At most one tile is submitted ahead, and only when its lock is free at once (no wait: a run
    holding one tile never waits for a second, so two runs cannot wait on each other); a tile
    whose submission ahead fails (lock held, any error) is processed in its own turn, as
    :func:`process_tile` would. :meth:`close` drops a tile submitted ahead and not taken."""

    def __init__(
        self,
        plan: RunPlan,
        store: str,
        group: StageGroup,
        client: Client,
        tiles: Sequence[str],
        overwrite: bool = False,
        graphs: GraphCache | None = None,
    ) -> None:
        self.plan, self.store, self.group, self.client = plan, store, group, client
        self.tiles = list(tiles)
        self.overwrite = overwrite
        self.graphs = graphs
        self.ahead: SubmittedTile | None = None

    def _graph(self, tile_id: str) -> GroupGraph | None:
        return (
            self.graphs.pop((self.group.name, tile_id), None) if self.graphs is not None else None
        )

    def _next(self, tile_id: str) -> str | None:
        index = self.tiles.index(tile_id) + 1 if tile_id in self.tiles else len(self.tiles)
        return self.tiles[index] if index < len(self.tiles) else None

    def process(self, tile_id: str) -> TileResult:
        """Process ``tile_id`` (as :func:`process_tile`), the next tile submitted meanwhile."""
        current = self.ahead if self.ahead is not None and self.ahead.tile_id == tile_id else None
        if current is None:
            self.close()
            current = submit_tile(
                self.plan,
                self.store,
                self.group,
                tile_id,
                self.client,
                self.overwrite,
                self._graph(tile_id),
            )
        else:
            current.started = max(current.started, time.perf_counter())  # waiting starts now
        self.ahead = None
        following = self._next(tile_id)
        if following is not None:
            self.ahead = self._submit_ahead(following)
        return finish_tile(self.plan, self.store, current, self.overwrite)

    def start(self, tile_id: str) -> bool:
        """Submit ``tile_id`` now, before its turn (as a tile ahead: only when its lock is free
        at once), when no tile is ahead; True when it was submitted."""
        if self.ahead is None:
            self.ahead = self._submit_ahead(tile_id)
        return self.ahead is not None and self.ahead.tile_id == tile_id

    def _submit_ahead(self, tile_id: str) -> SubmittedTile | None:
        graph = self._graph(tile_id)
        try:
            return submit_tile(
                self.plan,
                self.store,
                self.group,
                tile_id,
                self.client,
                self.overwrite,
                graph,
                lock_wait_s=0.0,
            )
        except Exception as exc:  # its own turn takes the lock waiting, or says what failed
            log.info("tile %s not computed ahead: %s", tile_id, exc)
            if graph is not None and self.graphs is not None:
                self.graphs[(self.group.name, tile_id)] = graph
            return None

    def close(self) -> None:
        """Drop the tile submitted ahead, if any (its lock released, nothing written)."""
        if self.ahead is not None:
            self.ahead.cancel()
            self.ahead = None

    def __enter__(self) -> TilePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Seconds between looks at a tile's futures when no completion was signalled.
DONE_POLL_S = 5.0


def write_threads() -> int:
    """Products of a tile the driver writes at once: the CPUs this process may use
    (:func:`pipelines.products.writer.usable_cpus`; the products of a tile go to separate
    cubes and files, and GDAL's COG encoding, Zarr's compressors and PNG's zlib release the
    GIL while they work)."""
    from pipelines.products.writer import usable_cpus

    return usable_cpus()


def write_as_completed(
    plan: RunPlan,
    store: str,
    tile_id: str,
    futures: Mapping[str, Any],
    pending: Mapping[str, list[str]],
    result: TileResult,
    overwrite: bool,
    started: float,
    threads: int | None = None,
    stranded: Callable[[], str | None] | None = None,
) -> None:
    """Write each product of a tile as soon as its computation is done, while the cluster
    computes the others (one future per product: a failed read fails the products that depend
    on it, not the rest), up to ``threads`` products at once (:func:`write_threads`), each in a
    thread that fetches it from the cluster and writes it (results recorded by the calling
    thread). ``result.write_s`` gets the seconds
    during which a product was being fetched or written, ``result.compute_s`` the other
    seconds since ``started``: the driver waiting for the cluster.

    ``stranded``: asked whenever :data:`DONE_POLL_S` pass with no product done; a reason
    (:meth:`SubmittedTile.stranded`) fails the products still computing at once, as transient
    (:class:`~pipelines.errors.TransientIOError`: the task's retry computes them again),
    and cancels their computations, which would otherwise wait for ever."""
    events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    for name, future in futures.items():
        future.add_done_callback(lambda _, name=name: events.put(("computed", name)))
    computing = dict(futures)
    queued: list[str] = []  # computed, waiting for a free writer
    writing: set[str] = set()  # products a writer has (it releases their futures)
    outcomes: dict[str, tuple[dict[str, Any], Exception | None]] = {}
    write_s, busy_since = 0.0, 0.0
    n_threads = max(1, threads or write_threads())

    def write(name: str, future: Any) -> None:
        try:
            outcomes[name] = _fetch_and_write(
                plan, store, tile_id, name, future, pending[name], overwrite
            )
        except BaseException as exc:  # recorded as the product's failure, never lost
            outcomes[name] = ({}, exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
        finally:
            events.put(("written", name))

    while computing or queued or writing:
        try:
            kind, name = events.get(timeout=DONE_POLL_S)
        except queue.Empty:  # a callback that did not come: look at the futures themselves
            kind, name = "computed", next((n for n, f in computing.items() if f.done()), "")
            if not name:
                kind, name = "written", next((n for n in writing if n in outcomes), "")
            reason = stranded() if stranded is not None and computing and not name else None
            if reason is not None:
                for lost, future in computing.items():
                    with contextlib.suppress(Exception):
                        future.cancel()
                    result.fail(lost, pending[lost], TransientIOError(reason))
                computing.clear()
        if kind == "computed" and name in computing:
            computing.pop(name)
            queued.append(name)
        elif kind == "written" and name in writing:
            writing.discard(name)
            manifest, error = outcomes.pop(name)
            if error is not None:
                result.fail(name, pending[name], error)
            else:
                result.written[name] = list(manifest["written"])
                result.bytes_written += int(manifest["bytes_written"])
            if not writing:
                write_s += time.perf_counter() - busy_since
        while queued and len(writing) < n_threads:
            name = queued.pop(0)
            if not writing:
                busy_since = time.perf_counter()
            writing.add(name)
            # Daemon threads: a run cancelled by a signal exits without waiting for them (a
            # product's marker is written last: one cut short is simply not done).
            threading.Thread(
                target=write, args=(name, futures[name]), name="terrapipe-write", daemon=True
            ).start()
    result.write_s = write_s
    result.compute_s = time.perf_counter() - started - write_s


def _fetch_and_write(
    plan: RunPlan,
    store: str,
    tile_id: str,
    name: str,
    future: Any,
    labels: list[str],
    overwrite: bool,
) -> tuple[dict[str, Any], Exception | None]:
    """Fetch one computed product of a tile from the cluster and write it (cube region, COGs,
    quicklooks, markers last): its manifest, or the failure (a read that failed on the
    workers as a terrapipe error, :func:`_read_failure`; a failed write as it was raised)."""
    try:
        ds = _to_days(future.result())
    except Exception as exc:  # read errors arrive re-raised from the workers
        return {}, _read_failure(exc, plan, tile_id)
    finally:
        # The driver holds the product now (or its failure): the worker's copy is freed before
        # the write, which takes most of the time (encoding), not after it. With a tile
        # computed ahead, the worker would otherwise hold this tile's results beside the next
        # tile's working set for as long as the writes last.
        future.release()
    stage = get_stage(name)
    grid, tile_on = plan.stage_grid(stage)
    try:
        manifest = products.write_tile_product(
            store,
            plan.province,
            name,
            grid,
            tile_on(tile_id),
            ds,
            stage=stage,
            spec=product_spec(stage, plan.mantissa_bits),
            provenance=provenance(plan, stage, tile_id, labels),
            overwrite=overwrite,
        )
    except Exception as exc:
        return {}, exc
    return manifest, None


@dataclass(frozen=True)
class ClusterWorkers:
    """The workers a Dask scheduler knows now, split by the ``GPU`` resource (addresses)."""

    plain: tuple[str, ...]
    gpu: tuple[str, ...]


def cluster_workers(client: Client) -> ClusterWorkers:
    """The scheduler's workers now: those declaring a ``GPU`` resource > 0 and the others.

    Asked of the scheduler itself: ``Client.scheduler_info`` returns the client's cached
    identity, which its periodic refresh (every 2 s, without per-worker entries) can overwrite
    between the fetch and the read, and which a failed fetch leaves stale; a CPU group would
    then read "no workers" and be submitted unrestricted, onto the GPU workers too."""
    scheduler = client.scheduler
    if scheduler is None:  # a closed client
        raise TransientIOError(f"the Dask client {client} is not connected to a scheduler")
    workers = client.sync(scheduler.identity, n_workers=-1)["workers"]
    gpu = sorted(a for a, w in workers.items() if (w.get("resources") or {}).get("GPU", 0) > 0)
    plain = sorted(a for a in workers if a not in gpu)
    return ClusterWorkers(plain=tuple(plain), gpu=tuple(gpu))


def cpu_workers(client: Client) -> list[str] | None:
    """Where CPU stage tasks may run: the workers without a GPU resource, read from the
    scheduler at submit time; None (anywhere) when the cluster has only one kind of worker."""
    workers = cluster_workers(client)
    if workers.plain and workers.gpu:
        return list(workers.plain)
    return None


def workers_left(client: Client, placed_on: Sequence[frozenset[str]]) -> str | None:
    """Why a tile's computation pinned to the worker lists ``placed_on`` (:func:`cpu_workers`,
    strict: ``allow_other_workers=False``) can no longer finish, or None: every worker of one
    of them has left the cluster. A worker restarted by its nanny (after it ran out of memory)
    or a pod replaced comes back under another address, and the scheduler keeps a task pinned
    to addresses that are all gone waiting for one of them, for ever. None too when the
    scheduler cannot be asked (the futures fail on their own then)."""
    if not placed_on:
        return None
    try:
        workers = cluster_workers(client)
    except (TransientIOError, OSError):
        return None
    present = set(workers.plain) | set(workers.gpu)
    for pinned in placed_on:
        if not pinned & present:
            shown = ", ".join(sorted(pinned)[:3]) + (", ..." if len(pinned) > 3 else "")
            return (
                f"all {len(pinned)} Dask worker(s) this tile's tasks were placed on ({shown}) "
                f"left the cluster while it computed (restarted or replaced; "
                f"{len(workers.plain)} CPU worker(s) there now): its unfinished products are "
                "computed again by the task's retry, on the workers there are then"
            )
    return None


# ---- a run ---------------------------------------------------------------------------------


def prepare_products(
    plan: RunPlan,
    store: str,
    overwrite: bool = False,
    graphs: GraphCache | None = None,
    on_graph: Callable[[StageGroup, str], None] | None = None,
) -> dict[str, int]:
    """Create (or extend) each product's cube for the run's dates; serial, once per run.
    Returns the number of dates per product prepared.

    ``graphs``: when given, the group graphs built here for the cubes' variables are kept in it
    by (group, tile), for :func:`process_tile` to reuse in the same process (only those of
    groups that read no product of an earlier group: nothing they hold depends on the cubes).
    ``on_graph(group, tile_id)``: called once such a graph is kept, before the group's cubes
    are created (:func:`run_local` starts computing that tile meanwhile).

    Holds the province's ``cubes`` lock (:func:`pipelines.products.lock.store_lock`, waiting up
    to :data:`CUBES_LOCK_WAIT_S`), so that runs of other windows never extend a cube at the same
    time; a cube torn by a killed run is repaired (``overwrite``: recreated when it cannot be,
    see :func:`pipelines.products.init_cube`)."""
    from pipelines.products.lock import store_lock

    prepared: dict[str, int] = {}
    with store_lock(store, plan.province, "cubes", wait_s=CUBES_LOCK_WAIT_S):
        # Lazy tile graphs give every output's variables and dtypes without reading pixels.
        for group in plan.groups:
            missing = set(group.stages)
            for tile_id in plan.tile_ids:
                if not missing:
                    break
                try:
                    built = build_group_graph(plan, store, group, tile_id)
                except NoScenesError:
                    continue
                template = built[0]
                if graphs is not None and self_contained(group):
                    graphs[(group.name, tile_id)] = built
                    if on_graph is not None:
                        on_graph(group, tile_id)
                for name in sorted(missing & set(template)):
                    products.init_cube(
                        store,
                        plan.province,
                        name,
                        plan.stage_grid(get_stage(name))[0],
                        times=plan.dates[name],
                        variables=cube_variables(template[name]),
                        attrs={"stage": name, "stage_version": plan.stage_versions[name]},
                        overwrite=overwrite,
                    )
                    prepared[name] = len(plan.dates[name])
                    missing.discard(name)
    return prepared


def self_contained(group: StageGroup) -> bool:
    """True when ``group``'s stages read only sources and stages of the group itself (no
    product cube of an earlier group): its lazy graph does not depend on the cubes."""
    return all(s.name in group.stages for s in resolve_order(list(group.stages)))


#: Seconds :func:`prepare_products` waits for another run's cube changes (metadata only: short).
CUBES_LOCK_WAIT_S = 600.0


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
    plan_url: str | None = None,
    graphs: GraphCache | None = None,
    pipeline: TilePipeline | None = None,
) -> BatchManifest:
    """Process every tile of one batch for one stage group (``graphs``: group graphs already
    built, see :func:`prepare_products`; each is used once and dropped), each tile computed
    while the one before it is written (:class:`TilePipeline`; ``pipeline``: the group's own,
    for the first tile of the next batch to be computed while this batch's last is written).

    Every tile is processed even when products of one fail; then, if any failed, the batch's
    manifest is kept at :func:`failures_url` (with ``plan_url``) and the failure is raised: a
    transient one first (a retry redoes only what has no marker), else the first.
    """
    group = next((g for g in plan.groups if g.name == group_name), None)
    if group is None:
        raise BadInputError("group", group_name, f"one of {[g.name for g in plan.groups]}")
    if not 0 <= batch_index < len(plan.batches):
        raise BadInputError("batch", batch_index, f"0..{len(plan.batches) - 1}")
    tiles = plan.batches[batch_index]
    own = pipeline is None
    if plan_url is not None and own:
        # a caller's own pipeline may be computing this batch's first tile already: the caller
        # asks before it starts it (run_local)
        forget_before_retry(client, plan_url, [(group_name, batch_index)])
    if pipeline is None:
        pipeline = TilePipeline(plan, store, group, client, tiles, overwrite, graphs)
    results = []
    try:
        for tile_id in tiles:
            results.append(pipeline.process(tile_id))
            if progress:
                progress(tile_id)
    finally:
        if own:
            pipeline.close()
    manifest = BatchManifest.of(group_name, batch_index, results)
    if plan_url is not None:
        record_batch(plan_url, manifest, results)
    errors = [e for r in results for e in r.errors]
    if errors:
        raise batch_failure(manifest, errors)
    return manifest


def forget_before_retry(client: Client, plan_url: str, batches: Sequence[tuple[str, int]]) -> bool:
    """Before ``batches`` ((stage group, batch index) pairs) run again, when products of any of
    them failed on their input (bad input: a scene file missing or corrupt, perhaps put right
    since), every worker of ``client`` drops what GDAL remembers of remote files
    (:func:`pipelines.load.forget_remote_files`): a worker that outlives runs (a cluster the
    run did not start) would otherwise answer a link it once found missing as missing for
    ever. Must come before any tile of them is computed. True when the workers were asked."""
    if not batches or not storage.exists(failures_folder(plan_url)):
        return False  # no batch of the run has kept a failure: one request, not one a batch
    kept = storage.concurrently(
        lambda key: read_failures(plan_url, *key), list(batches), url=plan_url
    )
    failed = [k for k in kept if k is not None and any(f.kind == "bad_input" for f in k.failed)]
    if not failed:
        return False
    cleared = client.run(forget_remote_files)
    log.info(
        "%s failed on its input before: GDAL's memory of remote files dropped on %d of %d workers",
        ", ".join(f"batch {k.batch} of {k.group}" for k in failed[:5])
        + (f" and {len(failed) - 5} more" if len(failed) > 5 else ""),
        sum(v > 0 for v in cleared.values()),
        len(cleared),
    )
    return True


def finalize(plan: RunPlan, store: str) -> str:
    """Rebuild the province's static STAC catalog where the run wrote: the month catalogs of
    its dates, of every product (a season run writes products its plan does not list), from
    the markers present (:func:`pipelines.products.catalog.update_catalog`); its URL."""
    periods = {products.catalog_period(d) for dates in plan.dates.values() for d in dates}
    return products.update_catalog(store, plan.province, periods)


def run_local(
    config: ProvinceConfig,
    client: Client,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    lock_wait_s: float = 0.0,
) -> dict[str, int | float | str]:
    """A whole run without Airflow, on ``client``'s cluster (bench, tests, notebooks): the
    totals, the catalog URL, the plan URL and the planning and wall seconds.

    The run holds its run lock (:func:`run_lock`): another run of the same store, province,
    window and products waits up to ``lock_wait_s`` seconds, then refuses with BadInputError
    (exit 2) naming the holder; none of its products is written twice.

    Like the DAG: when products of a stage group fail, the group's other products are still
    written, later groups wait for a rerun, the catalog is rebuilt over the markers present,
    and then the first failure is raised."""
    t0 = time.perf_counter()
    # The cluster imports the run's modules while the driver waits for its lock and plans
    # (the plan runs the configured products and the stages they read: nothing else).
    warm_workers(client, product_modules(config.products))
    with run_lock(config, wait_s=lock_wait_s):
        planned = plan_run(config, require=None)
        plan = planned.plan
        plan_s = time.perf_counter() - t0
        graphs: GraphCache = {}
        manifests: list[BatchManifest] = []
        errors: list[Exception] = []
        tiles = [t for batch in plan.batches for t in batch]
        # a batch's tiles are computed before its turn (the first while the cubes are made,
        # each batch's first while the one before is written): ask before any is started
        batches = [(g.name, i) for g in plan.groups for i in range(len(plan.batches))]
        forget_before_retry(client, planned.url, batches)
        with ExitStack() as open_pipes:
            pipes = {
                g.name: open_pipes.enter_context(
                    TilePipeline(plan, config.store, g, client, tiles, overwrite, graphs)
                )
                for g in plan.groups
            }

            def start_first_tile(group: StageGroup, tile_id: str) -> None:
                # The first tile computes while the cubes are created (its graph reads none).
                if group.name == plan.groups[0].name and tiles and tile_id == tiles[0]:
                    pipes[group.name].start(tile_id)

            prepare_products(plan, config.store, overwrite, graphs, start_first_tile)
            for group in plan.groups:
                if errors:
                    break  # later groups read this group's products
                for index in range(len(plan.batches)):
                    try:
                        manifests.append(
                            process_batch(
                                plan,
                                config.store,
                                group.name,
                                index,
                                client,
                                overwrite,
                                progress,
                                planned.url,
                                graphs,
                                pipes[group.name],
                            )
                        )
                    except Exception as exc:
                        errors.append(exc)
                        kept = read_failures(planned.url, group.name, index)
                        if kept is not None:
                            manifests.append(kept)
                pipes[group.name].close()
        catalog = finalize(plan, config.store)
        record_outcome(planned.url, "failed" if errors else "success")
        if errors:
            raise errors[0]
        summary: dict[str, int | float | str] = {
            **summarize([m.totals for m in manifests]).to_xcom(),
            "catalog": catalog,
            "plan_s": round(plan_s, 3),
            "wall_s": round(time.perf_counter() - t0, 3),
            "plan_url": planned.url,
        }
    return summary


def product_modules(names: Sequence[str]) -> list[str]:
    """The modules the tile tasks of products ``names`` need on a worker: the scene readers
    (:data:`pipelines.load.READ_MODULES`) and the module of every stage they run or read."""
    stages = resolve_order(list(names))
    modules = [s.function.partition(":")[0] for s in stages if isinstance(s.function, str)]
    return list(dict.fromkeys([*READ_MODULES, *modules]))


def stage_modules(plan: RunPlan) -> list[str]:
    """:func:`product_modules` of every stage the plan runs."""
    return product_modules([n for g in plan.groups for n in g.stages])


def warm_workers(client: Client, modules: Sequence[str]) -> threading.Thread:
    """Start every worker importing ``modules`` (a run's stage and reader modules,
    :func:`product_modules`) and limiting OpenCV to its threads
    (:func:`pipelines.load.import_in_background`), and the scheduler importing the same
    modules, from a thread: the driver plans and prepares the cubes meanwhile (a fresh worker
    answers once it has loaded ``pipelines.load``). The scheduler unpickles every graph it is
    sent, importing the module of each task function: a scheduler that has not imported them
    yet (a fresh one) would pay those imports between the run's first ``client.compute`` and
    its first task. Best effort: a process that cannot import a module fails what needs it, as
    it would anyway. The thread, for whoever wants to wait for it."""

    def send() -> None:
        try:
            client.run(import_in_background, list(modules), wait=False)
            client.run_on_scheduler(import_in_background, list(modules))
        except Exception as exc:  # a closed client or a lost worker: the tasks will say
            log.warning("warming the workers failed: %s", exc)

    thread = threading.Thread(target=send, name="terrapipe-warm-workers", daemon=True)
    thread.start()
    return thread


def run_lock(config: ProvinceConfig, wait_s: float = 0.0) -> AbstractContextManager[Any]:
    """The lock of a config's run: per (store, province, window, product set); held by
    :func:`run_local` and by ``terrapipe run`` around the Airflow run."""
    from pipelines.products.lock import run_lock_key, store_lock

    window = (config.start.isoformat(), config.end.isoformat())
    key = run_lock_key(window, config.products)
    return store_lock(config.store, config.province, key, wait_s=wait_s)


__all__ = [
    "ClusterWorkers",
    "GraphCache",
    "GroupGraph",
    "SubmittedTile",
    "TilePipeline",
    "cluster_workers",
    "cpu_workers",
    "cube_variables",
    "finalize",
    "finish_tile",
    "independent_parts",
    "model_checksums",
    "pending_labels",
    "prepare_products",
    "process_batch",
    "process_tile",
    "product_modules",
    "provenance",
    "run_local",
    "self_contained",
    "stage_modules",
    "submit_tile",
    "tile_lock",
    "warm_workers",
    "write_as_completed",
    "write_threads",
]
