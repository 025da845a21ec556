"""What a run reports: per tile, per batch and in total, with the products that failed.

Small frozen records, serialised explicitly for XCom (``to_xcom`` / ``from_xcom``); each batch
attempt leaves its per-tile record beside the run's plan, and a batch whose products failed
keeps its manifest there until it completes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines import storage
from pipelines.errors import BadInputError, FailureClass, failure_class, is_transient


@dataclass(frozen=True)
class ProductFailure:
    """A product of a tile that could not be computed or written (the others still were)."""

    product: str
    tile_id: str
    labels: tuple[str, ...]
    """Date labels of the product left without a marker."""
    kind: FailureClass
    """:func:`pipelines.errors.failure_class` of the error: what a retry can do about it."""
    error: str
    """The error's class name."""
    message: str
    scene: str | None = None
    """The STAC item at fault, where the failure is one scene's (:attr:`BadInputError.scene`)."""

    @classmethod
    def of(
        cls, product: str, tile_id: str, labels: Sequence[str], exc: BaseException
    ) -> ProductFailure:
        message = str(exc)
        if len(message) > 1000:
            message = message[:997] + "..."
        scene = exc.scene if isinstance(exc, BadInputError) else None
        kind = failure_class(exc)
        return cls(product, tile_id, tuple(labels), kind, type(exc).__name__, message, scene)

    def summary(self, width: int = 240) -> str:
        """One line for an operator: product, tile, failure class, error class and the start of
        its message (at most ``width`` characters of it)."""
        text = " ".join(self.message.split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        return f"{self.product} on {self.tile_id} ({self.kind}: {self.error}: {text})"

    def to_json(self) -> dict[str, object]:
        return {
            "product": self.product,
            "tile_id": self.tile_id,
            "labels": list(self.labels),
            "kind": self.kind,
            "error": self.error,
            "message": self.message,
            **({"scene": self.scene} if self.scene is not None else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ProductFailure:
        return cls(
            product=str(raw["product"]),
            tile_id=str(raw["tile_id"]),
            labels=tuple(str(lab) for lab in raw["labels"]),
            kind=raw["kind"],
            error=str(raw["error"]),
            message=str(raw["message"]),
            scene=None if raw.get("scene") is None else str(raw["scene"]),
        )


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
    failed: list[ProductFailure] = field(default_factory=list)
    """Products of the tile that failed (their labels keep no marker)."""
    errors: list[Exception] = field(default_factory=list, repr=False)
    """The exception behind each of :attr:`failed`, in the same order."""

    def fail(self, product: str, labels: Sequence[str], exc: Exception) -> None:
        """Record that ``product`` failed on this tile with ``exc``."""
        self.failed.append(ProductFailure.of(product, self.tile_id, labels, exc))
        self.errors.append(exc)

    def absorb(self, later: TileResult) -> None:
        """Add what a later round of this tile's dates did (``later``: written labels, failures,
        bytes and seconds; its skipped labels are this result's already)."""
        for name, labels in later.written.items():
            self.written.setdefault(name, []).extend(labels)
        self.no_scenes.extend(later.no_scenes)
        self.failed.extend(later.failed)
        self.errors.extend(later.errors)
        self.bytes_written += later.bytes_written
        self.compute_s += later.compute_s
        self.write_s += later.write_s


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
    failed: tuple[ProductFailure, ...] = ()
    """Products (per tile) that failed; the batch's task fails when there is any."""

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
        return cls(group, batch, totals, tuple(f for r in results for f in r.failed))

    def to_xcom(self) -> dict[str, Any]:
        """The manifest as JSON (``failed`` only when a product failed)."""
        out: dict[str, Any] = {"group": self.group, "batch": self.batch, **self.totals.to_xcom()}
        if self.failed:
            out["failed"] = [f.to_json() for f in self.failed]
        return out

    @classmethod
    def from_xcom(cls, raw: Mapping[str, Any]) -> BatchManifest:
        return cls(
            group=str(raw["group"]),
            batch=int(raw["batch"]),
            totals=Totals.from_xcom(raw),
            failed=tuple(ProductFailure.from_json(f) for f in raw.get("failed", ())),
        )


def failures_folder(plan_url: str) -> str:
    """The folder, beside the run's plan, of the kept manifests of batches whose products
    failed (absent while none is kept)."""
    return f"{plan_url.rsplit('/', 1)[0]}/failed"


def failures_url(plan_url: str, group: str, batch: int) -> str:
    """Where the manifest of a batch whose products failed is kept (:func:`failures_folder`)."""
    return f"{failures_folder(plan_url)}/{group}-{batch}.json"


def read_failures(plan_url: str, group: str, batch: int) -> BatchManifest | None:
    """The manifest of a batch's last failed attempt, if its products failed and it has not
    completed since."""
    url = failures_url(plan_url, group, batch)
    if not storage.exists(url):
        return None
    return BatchManifest.from_xcom(json.loads(storage.read_text(url)))


def batch_record_url(plan_url: str, group: str, batch: int) -> str:
    """Where the per-tile record of a batch's last attempt is kept, beside the run's plan."""
    return f"{plan_url.rsplit('/', 1)[0]}/batches/{group}-{batch}.json"


def record_batch(plan_url: str, manifest: BatchManifest, results: Sequence[TileResult]) -> None:
    """Keep a batch attempt beside the run's plan: its per-tile record (products written and
    skipped, seconds, bytes, failures; read by the run report) and, while products of it fail,
    its manifest at :func:`failures_url` (removed once the batch completes)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tiles = [
        {
            "tile_id": r.tile_id,
            "written": {k: len(v) for k, v in sorted(r.written.items())},
            "skipped": {k: len(v) for k, v in sorted(r.skipped.items())},
            "seconds": round(r.compute_s + r.write_s, 3),
            "bytes_written": r.bytes_written,
            "failed": [f.to_json() for f in r.failed],
        }
        for r in results
    ]
    record = {"group": manifest.group, "batch": manifest.batch, "finished": now, "tiles": tiles}
    storage.write_text(
        batch_record_url(plan_url, manifest.group, manifest.batch),
        json.dumps(record, indent=1, sort_keys=True),
    )
    url = failures_url(plan_url, manifest.group, manifest.batch)
    if manifest.failed:
        storage.write_text(url, json.dumps(manifest.to_xcom(), indent=1, sort_keys=True))
    elif storage.exists(url):
        storage.remove(url)  # an earlier attempt's failures, done now


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


def batch_failure(manifest: BatchManifest, errors: Sequence[Exception]) -> Exception:
    """The error a batch with failed products raises: a transient one if any (a retry may pass),
    else the first; a note lists every failed product."""
    chosen = next((e for e in errors if is_transient(e)), errors[0])
    shown = ", ".join(f"{f.product} on {f.tile_id} ({f.kind})" for f in manifest.failed[:10])
    more = f" and {len(manifest.failed) - 10} more" if len(manifest.failed) > 10 else ""
    chosen.add_note(
        f"batch {manifest.batch} of {manifest.group}: {len(manifest.failed)} product(s) failed: "
        f"{shown}{more}; the other products were written"
    )
    return chosen
