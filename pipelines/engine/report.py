"""The run report: per tile and product, done / failed / pending / no scenes, read from the store.

A run is the folder of its plan, ``<store>/<province>/runs/<run id>/`` (the id is
``<start>_<end>_<config fingerprint>``; repeated attempts of one config and window share it).
The report is built from what the store holds, so it is true at any moment, during a run too:
the plan (what was to be done), the markers (what is done), the batch records and kept failure
manifests (what failed, why, seconds and bytes). ``report.json`` beside the plan records the
outcome of the last attempt (success, failed, cancelled) as a run ended.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines import products, storage
from pipelines.engine.manifest import ProductFailure, batch_record_url, read_failures
from pipelines.engine.plan import RunPlan, read_plan
from pipelines.errors import BadInputError
from pipelines.products.layout import check_name
from pipelines.stages.registry import get_stage

#: Product states, worst first: a tile's and a run's state is the worst of their products'.
STATES = ("failed", "pending", "done", "no_scenes")
#: How a run's last attempt ended, as recorded in ``report.json``.
OUTCOMES = ("success", "failed", "cancelled")


@dataclass(frozen=True)
class ProductStatus:
    """One product on one tile."""

    product: str
    state: str
    """One of :data:`STATES`."""
    labels: int
    """Output labels (dates) planned."""
    done: int
    """Labels with a valid marker."""
    kind: str | None = None
    """Failure class (bad_input, transient, corrupt_input, ...) when failed."""
    error: str | None = None
    message: str | None = None
    scene: str | None = None
    """The STAC item at fault when failed, where the failure is one scene's."""
    outdated: tuple[str, ...] = ()
    """Why labels that have an item are not done: what changed since it was made (``name
    recorded -> now``: the stage's version, an upstream stage's, a model's weights)."""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "product": self.product,
            "state": self.state,
            "labels": self.labels,
            "done": self.done,
        }
        if self.state == "failed":
            out.update(kind=self.kind, error=self.error, message=self.message)
            if self.scene is not None:
                out["scene"] = self.scene
        if self.outdated:
            out["outdated"] = list(self.outdated)
        return out


@dataclass(frozen=True)
class TileStatus:
    """One tile: its products, the seconds and bytes of its last recorded attempts."""

    tile_id: str
    state: str
    products: tuple[ProductStatus, ...]
    seconds: float
    bytes_written: int

    @property
    def settled(self) -> bool:
        """Every product done or without scenes: nothing is left to do on the tile."""
        return all(p.state in ("done", "no_scenes") for p in self.products)

    def to_json(self) -> dict[str, object]:
        return {
            "tile_id": self.tile_id,
            "state": self.state,
            "seconds": self.seconds,
            "bytes_written": self.bytes_written,
            "products": [p.to_json() for p in self.products],
        }


@dataclass(frozen=True)
class RunReport:
    """A run's state from the store; ``state`` is the worst product state (``done`` when every
    product is done or has no scenes), or ``cancelled`` when the last attempt was cancelled and
    work is left."""

    run_id: str
    plan_url: str
    province: str
    window: tuple[str, str]
    state: str
    outcome: str | None
    """How the last attempt ended (:data:`OUTCOMES`), None while none has ended."""
    ended: str | None
    """When it ended (ISO UTC)."""
    counts: Mapping[str, int]
    """(tile, product) pairs per state."""
    tiles: tuple[TileStatus, ...]

    def failed(self) -> list[tuple[str, ProductStatus]]:
        """(tile id, product) of every failed product."""
        return [(t.tile_id, p) for t in self.tiles for p in t.products if p.state == "failed"]

    def failed_tiles(self) -> list[str]:
        """Ids of the tiles with a failed product (plan order)."""
        return [t.tile_id for t in self.tiles if any(p.state == "failed" for p in t.products)]

    def settled_tiles(self) -> dict[str, TileStatus]:
        """The tiles with nothing left to do, by id (``run_report``'s ``settled``)."""
        return {t.tile_id: t for t in self.tiles if t.settled}

    def failed_scenes(self) -> dict[str, list[str]]:
        """STAC item ID -> the tiles (plan order) whose products failed on that scene's file or
        metadata: what ``stac.exclude_items`` would leave out."""
        out: dict[str, list[str]] = {}
        for tile_id, product in self.failed():
            if product.scene is not None and tile_id not in out.get(product.scene, []):
                out.setdefault(product.scene, []).append(tile_id)
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "plan_url": self.plan_url,
            "province": self.province,
            "window": list(self.window),
            "state": self.state,
            "outcome": self.outcome,
            "ended": self.ended,
            "counts": dict(self.counts),
            "failed_scenes": self.failed_scenes(),
            "tiles": [t.to_json() for t in self.tiles],
        }


def runs_url(store: str, province: str) -> str:
    """The folder holding a province's runs."""
    return storage.join(store, province, "runs")


def run_ids(store: str, province: str) -> list[str]:
    """Ids of the province's runs that have a plan, oldest window first."""
    fs, root = storage.filesystem(runs_url(store, province))
    if not fs.exists(root):
        return []
    ids = []
    for entry in fs.ls(root, detail=False):
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{root.rstrip('/')}/{name}/plan.json"):
            ids.append(name)
    return sorted(ids)


def plan_url_of(store: str, province: str, run_id: str) -> str:
    """The plan URL of a run id; BadInputError naming the runs present when there is none."""
    url = storage.join(runs_url(store, province), check_name("run", run_id), "plan.json")
    if not storage.exists(url):
        known = run_ids(store, province)
        raise BadInputError("run", run_id, f"one of the runs of {province}: {known or 'none yet'}")
    return url


def report_url(plan_url: str) -> str:
    """Where the outcome of a run's last attempt is recorded."""
    return f"{plan_url.rsplit('/', 1)[0]}/report.json"


def run_report(
    plan_url: str,
    store: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    plan: RunPlan | None = None,
    settled: Mapping[str, TileStatus] | None = None,
) -> RunReport:
    """The report of the run planned at ``plan_url`` (its store: the plan's config's, unless
    given), from the markers, batch records and kept failures present now. ``progress``:
    called with (tiles read, tiles in all), first with none read, then as each tile's markers
    are read (for a progress bar: a month of a 1,700-tile province holds some 60,000
    markers). ``plan``: the plan at ``plan_url`` when the caller has read it already.
    ``settled``: tiles of an earlier report of this run whose every product was done or had no
    scenes (:meth:`RunReport.settled_tiles`); their markers are not read again, only their
    seconds and bytes (a watcher of a long run reads the markers of the tiles still to do)."""
    return _report(plan_url, store, _recorded(plan_url), progress, plan, settled)


def _report(
    plan_url: str,
    store: str | None,
    recorded: Mapping[str, Any],
    progress: Callable[[int, int], None] | None = None,
    plan: RunPlan | None = None,
    settled: Mapping[str, TileStatus] | None = None,
) -> RunReport:
    plan = plan if plan is not None else read_plan(plan_url)
    total, read, lock = len(plan.tile_ids), [0], threading.Lock()
    if progress is not None:
        progress(0, total)
    store = store or str(plan.config["store"])
    failures = _failures(plan, plan_url)
    seconds, nbytes = _tile_costs(plan, plan_url)
    settled = settled or {}

    def products_of(tile_id: str) -> tuple[ProductStatus, ...]:
        known = settled.get(tile_id)
        if known is not None and known.settled:
            return known.products
        statuses = []
        for group in plan.groups:
            for name in group.stages:
                stage = get_stage(name)
                labels = plan.tile_dates(stage, tile_id)
                changes = [
                    products.outdated(store, plan.province, name, tile_id, lab, stage.version)
                    for lab in labels
                ]
                done = sum(c == [] for c in changes)
                status = _status(name, labels, done, failures.get((tile_id, name)))
                why = sorted({c for found in changes if found for c in found})
                statuses.append(dataclasses.replace(status, outdated=tuple(why)))
        return tuple(statuses)

    def tile_status(tile_id: str) -> TileStatus:
        statuses = products_of(tile_id)
        if progress is not None:
            with lock:
                read[0] += 1
                progress(read[0], total)
        return TileStatus(
            tile_id,
            _worst(p.state for p in statuses),
            statuses,
            round(seconds.get(tile_id, 0.0), 3),
            nbytes.get(tile_id, 0),
        )

    # One marker read per tile, product and date: tiles read side by side.
    tiles = storage.concurrently(tile_status, plan.tile_ids, url=store)
    counts = {state: 0 for state in STATES}
    for tile in tiles:
        for p in tile.products:
            counts[p.state] += 1
    state = _worst(s for s, n in counts.items() if n) if tiles else "no_scenes"
    if state == "pending" and recorded.get("outcome") == "cancelled":
        state = "cancelled"
    run_id = plan_url.rsplit("/", 2)[-2]
    return RunReport(
        run_id=run_id,
        plan_url=plan_url,
        province=plan.province,
        window=plan.window,
        state=state,
        outcome=recorded.get("outcome"),
        ended=recorded.get("ended"),
        counts=counts,
        tiles=tuple(tiles),
    )


@dataclass(frozen=True)
class RunSummary:
    """One row of a list of runs: a run's state and counts as its last attempt ended (read from
    its ``report.json``), or as the store holds them now for a run with no attempt ended."""

    run_id: str
    window: tuple[str, str]
    state: str
    outcome: str | None
    ended: str | None
    counts: Mapping[str, int]
    products: tuple[str, ...]
    as_of: str
    """``recorded`` (the state when ``ended``) or ``now``."""

    @classmethod
    def recorded(cls, raw: Mapping[str, Any]) -> RunSummary:
        """The summary of a report as :meth:`RunReport.to_json` writes it (``report.json``)."""
        window = raw["window"]
        return cls(
            run_id=str(raw["run_id"]),
            window=(str(window[0]), str(window[1])),
            state=str(raw["state"]),
            outcome=raw.get("outcome"),
            ended=raw.get("ended"),
            counts={str(k): int(v) for k, v in raw["counts"].items()},
            products=tuple(
                sorted({str(p["product"]) for t in raw["tiles"] for p in t["products"]})
            ),
            as_of="recorded",
        )

    def to_json(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "window": list(self.window),
            "state": self.state,
            "outcome": self.outcome,
            "ended": self.ended,
            "counts": dict(self.counts),
            "products": list(self.products),
            "as_of": self.as_of,
        }


def run_summaries(store: str, province: str) -> list[RunSummary]:
    """Every run of a province, oldest window first: each from its ``report.json`` when one
    reads (one read a run), else computed from the store (:func:`run_report`). Computing every
    run's report would read every marker the province holds; one run's current state is
    :func:`run_report`."""

    def summary(run_id: str) -> RunSummary:
        plan_url = plan_url_of(store, province, run_id)
        raw = _read_report(plan_url)
        if raw.get("outcome") in OUTCOMES:
            try:
                return RunSummary.recorded(raw)
            except (KeyError, TypeError, ValueError, IndexError):
                pass  # a report of another layout: computed again
        now = run_report(plan_url, store)
        return dataclasses.replace(RunSummary.recorded(now.to_json()), as_of="now")

    return storage.concurrently(summary, run_ids(store, province), url=store)


def record_outcome(plan_url: str, outcome: str) -> RunReport:
    """Record how an attempt of the run ended and write the full report (``report.json``)
    beside the plan; the report."""
    if outcome not in OUTCOMES:
        raise BadInputError("outcome", outcome, f"one of {OUTCOMES}")
    ended = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report = _report(plan_url, None, {"outcome": outcome, "ended": ended})
    storage.write_text(report_url(plan_url), json.dumps(report.to_json(), indent=1))
    return report


def _status(
    product: str, labels: Sequence[str], done: int, failure: ProductFailure | None
) -> ProductStatus:
    if not labels:
        return ProductStatus(product, "no_scenes", 0, 0)
    if done == len(labels):
        return ProductStatus(product, "done", len(labels), done)
    if failure is not None:
        return ProductStatus(
            product,
            "failed",
            len(labels),
            done,
            kind=failure.kind,
            error=failure.error,
            message=failure.message,
            scene=failure.scene,
        )
    return ProductStatus(product, "pending", len(labels), done)


def _worst(states: Any) -> str:
    found = set(states)
    return next((s for s in STATES if s in found), "no_scenes")


def _batch_records(plan: RunPlan, read: Callable[[str, int], Any]) -> list[Any]:
    """``read(group, batch)`` of every stage group's batch, side by side."""
    keys = [(g.name, i) for g in plan.groups for i in range(len(plan.batches))]
    return storage.concurrently(lambda key: read(*key), keys)


def _failures(plan: RunPlan, plan_url: str) -> dict[tuple[str, str], ProductFailure]:
    """(tile id, product) -> the failure kept for the batch's last failed attempt."""
    out: dict[tuple[str, str], ProductFailure] = {}
    for kept in _batch_records(plan, lambda group, i: read_failures(plan_url, group, i)):
        for f in kept.failed if kept else ():
            out[(f.tile_id, f.product)] = f
    return out


def _tile_costs(plan: RunPlan, plan_url: str) -> tuple[dict[str, float], dict[str, int]]:
    """Per tile, seconds and bytes written summed over the stage groups' last attempts."""

    def read(group: str, index: int) -> Any:
        url = batch_record_url(plan_url, group, index)
        return json.loads(storage.read_text(url)) if storage.exists(url) else None

    seconds: dict[str, float] = {}
    nbytes: dict[str, int] = {}
    for record in _batch_records(plan, read):
        for tile in record["tiles"] if record else ():
            tid = str(tile["tile_id"])
            seconds[tid] = seconds.get(tid, 0.0) + float(tile["seconds"])
            nbytes[tid] = nbytes.get(tid, 0) + int(tile["bytes_written"])
    return seconds, nbytes


def _read_report(plan_url: str) -> dict[str, Any]:
    """The run's ``report.json`` parsed (empty: none yet, or one being rewritten)."""
    url = report_url(plan_url)
    if not storage.exists(url):
        return {}
    try:
        raw = json.loads(storage.read_text(url))
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


def _recorded(plan_url: str) -> dict[str, Any]:
    raw = _read_report(plan_url)
    return {k: raw.get(k) for k in ("outcome", "ended")}


__all__ = [
    "OUTCOMES",
    "STATES",
    "ProductStatus",
    "RunReport",
    "TileStatus",
    "plan_url_of",
    "record_outcome",
    "report_url",
    "run_ids",
    "run_report",
    "runs_url",
]
