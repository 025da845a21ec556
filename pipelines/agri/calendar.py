"""Province crop calendar: expert knowledge of when each crop is sown, peaks and is harvested.

A calendar is part of the province config (``crop_calendar``: inline mapping or a YAML path).
Dates are day-of-year (DOY) ranges of the season year, given as integers or ``"MM-DD"``
strings; a crop sown in the autumn of the previous year (winter wheat) sets
``sown_previous_year`` and its sowing DOYs become negative (DOY - 365). From the windows the
calendar derives a template greenness curve per crop (0 bare, 1 full canopy) that the crop-type
model compares every parcel's NDVI curve with.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import BadInputError

#: The demo province calendar (North China Plain).
DEMO_CALENDAR = Path(__file__).resolve().parent.parent / "data" / "demo_crops.yaml"


def _to_doy(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"a day of year or 'MM-DD', got {value!r}")
    if isinstance(value, int):
        if not -365 <= value <= 366:
            raise ValueError(f"a day of year in [-365, 366], got {value}")
        return value
    if isinstance(value, str):
        try:
            day = dt.date.fromisoformat(f"2001-{value.strip()}")  # a non-leap year
        except ValueError:
            raise ValueError(f"a day of year or 'MM-DD', got {value!r}") from None
        return day.timetuple().tm_yday
    raise ValueError(f"a day of year or 'MM-DD', got {value!r}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Window(_Frozen):
    """A DOY range, inclusive."""

    start: int
    """First DOY of the window (negative: previous year)."""
    end: int
    """Last DOY of the window."""

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            value = {"start": value[0], "end": value[1]}
        if isinstance(value, dict):
            value = {k: _to_doy(v) if k in ("start", "end") else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end < self.start:
            raise ValueError(f"window end ({self.end}) before its start ({self.start})")
        return self

    @property
    def mid(self) -> float:
        """Middle DOY of the window."""
        return (self.start + self.end) / 2.0


class CropStages(_Frozen):
    """Sowing, peak-greenness and harvest windows of one crop."""

    sow: Window
    """Sowing / transplanting window."""
    peak: Window
    """Peak greenness window."""
    harvest: Window
    """Harvest window."""
    sown_previous_year: bool = False
    """The crop is sown in the autumn of the previous year (winter crops)."""
    flooded: bool = False
    """Fields stand flooded after sowing/transplanting (paddy rice: dark in SAR VH)."""

    @model_validator(mode="after")
    def _sequence(self) -> CropStages:
        sow = self.sow_doy()
        if not (sow.end <= self.peak.start and self.peak.end <= self.harvest.start):
            raise ValueError(
                f"windows in order sow <= peak <= harvest, got sow {sow.start}..{sow.end}, "
                f"peak {self.peak.start}..{self.peak.end}, "
                f"harvest {self.harvest.start}..{self.harvest.end}"
            )
        return self

    def sow_doy(self) -> Window:
        """The sowing window in DOY of the season year (negative for the previous year)."""
        if not self.sown_previous_year:
            return self.sow
        return Window(start=self.sow.start - 365, end=self.sow.end - 365)


class CropCalendar(_Frozen):
    """Crop calendar of a province: crop name -> stage windows."""

    crops: dict[str, CropStages] = Field(min_length=1)
    """Crops grown in the province (lower-case names, e.g. ``wheat``)."""

    @field_validator("crops")
    @classmethod
    def _names(cls, value: dict[str, CropStages]) -> dict[str, CropStages]:
        bad = [k for k in value if not k or k != k.strip().lower()]
        if bad:
            raise ValueError(f"lower-case crop names without spaces around, got {bad}")
        return value

    @property
    def names(self) -> tuple[str, ...]:
        """Crop names in calendar order."""
        return tuple(self.crops)

    def template(self, crop: str, doy: np.ndarray) -> np.ndarray:
        """Template greenness of ``crop`` on ``doy`` (float64, 0 bare .. 1 peak), same shape.

        Bare until the middle of the sowing window, a smooth rise to the start of the peak
        window, full canopy through it, a smooth decline to the middle of the harvest window.
        """
        if crop not in self.crops:
            raise BadInputError("crop", crop, f"one of the calendar crops {list(self.crops)}")
        st = self.crops[crop]
        d = np.asarray(doy, dtype=np.float64)
        sow, p0, p1, harvest = st.sow_doy().mid, st.peak.start, st.peak.end, st.harvest.mid
        rise = np.clip((d - sow) / max(p0 - sow, 1.0), 0.0, 1.0)
        fall = np.clip((harvest - d) / max(harvest - p1, 1.0), 0.0, 1.0)
        out = np.where(d < p0, rise, np.where(d > p1, fall, 1.0))
        return 0.5 - 0.5 * np.cos(np.pi * out)  # smoothstep

    def templates(self, doy: np.ndarray) -> np.ndarray:
        """Template curves of all crops, float64 (crop, doy)."""
        return np.stack([self.template(c, doy) for c in self.names])


def parse_calendar(raw: Any) -> CropCalendar:
    """Validate a calendar mapping (``{"crops": {...}}`` or ``{crop: stages}``)."""
    if isinstance(raw, CropCalendar):
        return raw
    if isinstance(raw, dict) and "crops" not in raw:
        raw = {"crops": raw}
    try:
        return CropCalendar.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "crop_calendar." + ".".join(str(p) for p in err["loc"])
        raise BadInputError(
            field.rstrip("."), err.get("input"), err["msg"].removeprefix("Value error, ")
        ) from None


def load_calendar(path: str | Path | None = None) -> CropCalendar:
    """Read a crop calendar YAML (local path or fsspec URL; the demo calendar when None)."""
    from pipelines import storage

    path = str(path) if path is not None else str(DEMO_CALENDAR)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise BadInputError(
            "crop_calendar", path, "a crop calendar YAML file that exists"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInputError("crop_calendar", path, "valid YAML", str(exc)) from None
    return parse_calendar(raw)


def calendar_input(value: Any) -> Any:
    """Config-field input: a YAML path is read, a bare ``{crop: stages}`` mapping is wrapped.

    Raises ValueError (for pydantic to report) when the path cannot be read.
    """
    if isinstance(value, (str, Path)):
        try:
            return load_calendar(value)
        except BadInputError as exc:
            raise ValueError(f"{exc.expected} (got {exc.value!r})") from None
    if isinstance(value, dict) and "crops" not in value:
        return {"crops": value}
    return value
