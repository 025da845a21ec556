"""The field labels of the labelling view: the config's ``agri.labels`` GeoJSON, edited in place.

Each save checks the whole collection with the new label through the reader the season run uses
(:func:`pipelines.agri.labels.read_labels`: crop names of the calendar, Point/Polygon geometries
inside the AOI); only its "fewer than 3 per crop" refusal is accepted while labelling is under
way, and reported as counts. Writes replace the file atomically (temp file + ``os.replace`` on
local paths, one object put on object stores), so a refused or interrupted save leaves the saved
labels as they were. Undo removes the last saved label.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import ProvinceConfig
from pipelines.errors import BadInputError


@dataclass(frozen=True)
class LabelState:
    """The saved labels and how far they are from what the crop model needs."""

    path: str
    features: list[dict[str, Any]]
    crops: list[str]
    counts: dict[str, int]
    """Labels per crop of the calendar (0 for crops without labels)."""
    min_per_crop: int
    ready: bool
    """True when ``terrapipe season`` accepts the file (every crop has ``min_per_crop``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": "FeatureCollection",
            "features": self.features,
            "crops": self.crops,
            "counts": self.counts,
            "min_per_crop": self.min_per_crop,
            "ready": self.ready,
        }


class LabelBook:
    """The label file of a province config; thread safe."""

    def __init__(self, config: ProvinceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        if not self.config.agri.labels:
            raise BadInputError(
                "agri.labels",
                None,
                "a GeoJSON path in the config (agri: labels: fields.geojson) to save labels to",
            )
        return self.config.agri.labels

    @property
    def crops(self) -> list[str]:
        if self.config.crop_calendar is None:
            raise BadInputError(
                "crop_calendar", None, "a crop calendar in the config to pick crops from"
            )
        return [str(c) for c in self.config.crop_calendar.names]

    def state(self) -> LabelState:
        """The labels saved now."""
        with self._lock:
            return self._state(self._read())

    def add(self, crop: Any, geometry: Any, properties: dict[str, Any] | None = None) -> LabelState:
        """Save one label (``crop`` of the calendar, a GeoJSON Point or Polygon in WGS84 inside
        the AOI); BadInputError naming what is wrong, the file unchanged."""
        name = str(crop).strip().lower() if isinstance(crop, str) else crop
        if not isinstance(name, str) or name not in self.crops:
            raise BadInputError("crop", crop, f"a crop of the calendar: {self.crops}")
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Point", "Polygon"):
            shown = geometry.get("type") if isinstance(geometry, dict) else geometry
            raise BadInputError("geometry", shown, "a GeoJSON Point or Polygon (WGS84)")
        extra = {
            k: v
            for k, v in (properties or {}).items()
            if k in ("parcel_id", "tile_id") and isinstance(v, (int, str))
        }
        feature = {
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "crop": name,
                **extra,
                "saved": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        }
        with self._lock:
            features = [*self._read(), feature]
            self._check(features)
            self._write(features)
            return self._state(features)

    def undo(self) -> LabelState:
        """Remove the last saved label; BadInputError when there is none."""
        with self._lock:
            features = self._read()
            if not features:
                raise BadInputError("labels", 0, "a saved label to undo")
            features = features[:-1]
            self._write(features)
            return self._state(features)

    # ---- internals -----------------------------------------------------------------------

    def _read(self) -> list[dict[str, Any]]:
        path = self.path
        if not storage.exists(path):
            return []
        try:
            raw = json.loads(storage.read_text(path))
        except ValueError as exc:
            raise BadInputError(
                "agri.labels", path, "a GeoJSON FeatureCollection", f"not JSON: {exc}"
            ) from None
        if not isinstance(raw, dict) or raw.get("type") != "FeatureCollection":
            kind = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
            raise BadInputError("agri.labels", kind, "a GeoJSON FeatureCollection")
        return list(raw.get("features") or [])

    def _check(self, features: list[dict[str, Any]]) -> None:
        """Raise the season reader's refusal of ``features``, except "too few per crop"."""
        from pipelines.agri.labels import read_labels

        collection = {"type": "FeatureCollection", "features": features}
        try:
            read_labels(collection, self.config.aoi_geometry(), self.config.crs, self.crops)
        except BadInputError as exc:
            if exc.field == "labels" and isinstance(exc.value, dict):
                return  # fewer than MIN_PER_CROP of some crop: labelling is under way
            raise

    def _state(self, features: list[dict[str, Any]]) -> LabelState:
        from pipelines.agri.labels import MIN_PER_CROP

        found = Counter(str(f.get("properties", {}).get("crop", "")) for f in features)
        counts = {c: found.get(c, 0) for c in self.crops}
        return LabelState(
            path=self.path,
            features=features,
            crops=self.crops,
            counts=counts,
            min_per_crop=MIN_PER_CROP,
            ready=all(n >= MIN_PER_CROP for n in counts.values()),
        )

    def _write(self, features: list[dict[str, Any]]) -> None:
        text = json.dumps({"type": "FeatureCollection", "features": features}, indent=1)
        path = self.path
        if "://" in path and not path.startswith("file://"):
            storage.write_text(path, text)  # one object put: readers see old or new
            return
        target = Path(path.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
