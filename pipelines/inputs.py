"""The source inputs, as data: one table says what each input is and how it is found and read.

A source input is what a stage reads from the catalog rather than from another stage: its name is
the stage function's keyword argument, the key of a tile's scenes in the run plan and the stage
CLI's option. The registry, the planner, the loader and the stage CLI all read this table, so
adding an input is one entry here (and, for a new reader family, one branch in
:func:`pipelines.load.load_input`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipelines.errors import BadInputError

Loader = Literal["s2", "s1", "dem"]
"""Reader family: ``pipelines.load.load_s2`` / ``load_s1`` / ``load_dem`` (and the stage CLI's
``geotiff.read_optical`` / ``read_sar`` / ``read_dem``)."""

SearchWindow = Literal["run", "post_event", "pre_event"]
"""Dates searched: the run window, the run window from the flood event on, or the reference
period of ``flood.pre_days`` days ending the day before the event."""


@dataclass(frozen=True)
class InputSpec:
    """One source input."""

    name: str
    """Input name (``s2``, ``s1_pre``...): stage keyword argument and plan scenes key."""
    collection: str
    """Key of the config's ``stac.collections`` searched for this input."""
    loader: Loader | None
    """Reader family; None: no catalog loader (stages take it only as an optional argument)."""
    bands: tuple[str, ...]
    """Canonical bands read (plus ``SCL`` where ``scene_classes``; none without a loader)."""
    timeless: bool
    """True when the input has no time axis of its own (a DEM, a water mask)."""
    reference: bool
    """True when its dates are a reference period, never a product's output dates."""
    bytes_per_px: int
    """Decoded bytes per pixel and band (read estimate of the plan)."""
    estimate_bands: int
    """Bands per pixel counted in the plan's read estimate."""
    window: SearchWindow | None
    """Date window searched; None: no date filter."""
    cloud_filter: bool = False
    """True when the search drops scenes above ``stac.max_cloud_cover``."""
    scene_classes: bool = False
    """True when the ``s2`` loader adds the L2A scene classification (``SCL``); L1C has none."""
    derived_from: str | None = None
    """Input whose scenes it is derived from on a tile without scenes of its own (a catalog
    without its collection): :func:`pipelines.load.derive_input`; None: never derived."""

    @property
    def dated(self) -> bool:
        """True when the input's dates can be a stage's output dates."""
        return not (self.timeless or self.reference)

    def search_window(
        self, start: dt.date, end: dt.date, event: dt.date | None, pre_days: int
    ) -> tuple[dt.date, dt.date] | None:
        """Dates searched (inclusive), from the run window, the flood event date and the number
        of reference days before it; None: no date filter."""
        if self.window == "run":
            return (start, end)
        if self.window == "post_event":
            return (max(start, event) if event else start, end)
        if self.window == "pre_event":  # the reference of the window's first date
            return reference_window(start, start, event, pre_days)
        return None


#: (time,) coordinates of post-event scenes in a run: the first day of each date's reference
#: window and the day after its last (:func:`reference_window`).
REFERENCE_COORDS = ("reference_from", "reference_until")

#: (time,) coordinate of loaded S1 scenes: the relative orbit (track) of each date's
#: acquisitions (:func:`track_of`).
TRACK_COORD = "relative_orbit"


def item_orbit(item: Mapping[str, Any]) -> Any:
    """A STAC item's ``sat:relative_orbit`` (its track), None where it names none."""
    return item.get("properties", {}).get("sat:relative_orbit")


def track_of(orbits: Iterable[Any]) -> int:
    """The track of one date's S1 acquisitions: their common ``sat:relative_orbit``; -1 where
    they have none or several."""
    found = set(orbits)
    if len(found) != 1:
        return -1
    (one,) = found
    return -1 if one is None else int(one)


def same_track(track: int, candidates: Sequence[int]) -> list[int]:
    """Positions among reference scenes of tracks ``candidates`` that a date of ``track`` is
    compared with: those of its own track where there are any, else all of them. A track is a
    viewing geometry (incidence angle and look direction at each pixel); C-band backscatter of
    built-up land, slopes and row crops differs between tracks by several dB, so a change
    against another track's scene is partly geometry (the reason change-detection flood
    mapping takes its reference from the same track)."""
    own = [k for k, t in enumerate(candidates) if track >= 0 and t == track]
    return own or list(range(len(candidates)))


def reference_window(
    date: dt.date, start: dt.date, event: dt.date | None, pre_days: int
) -> tuple[dt.date, dt.date]:
    """Dates (inclusive) of the pre-event reference a post-event ``date`` is compared with: the
    ``pre_days`` before the event, or, without one, before the later of the window's ``start``
    and the first day of ``date``'s month. So a window of several months compares each month
    with the scenes before it, as the monthly schedule does, and a date's product does not
    depend on how long its window is; a window within one month keeps the reference before its
    start (the ``pre_event`` search window)."""
    anchor = event or max(start, date.replace(day=1))
    return anchor - dt.timedelta(days=pre_days), anchor - dt.timedelta(days=1)


_SAR_POLS = ("VV", "VH")

#: Every source input, in the order plans and listings show them.
INPUTS: tuple[InputSpec, ...] = (
    InputSpec(
        name="s2",
        collection="s2",
        loader="s2",
        bands=("B02", "B03", "B04", "B08", "B11", "B12"),
        timeless=False,
        reference=False,
        bytes_per_px=2,
        estimate_bands=5,
        window="run",
        cloud_filter=True,
        scene_classes=True,
    ),
    InputSpec(
        # Level-1C top-of-atmosphere reflectance: the bands of the s2cloudless model, and B03
        # for the snow test on what it calls clear (NDSI with B11).
        name="s2_l1c",
        collection="s2_l1c",
        loader="s2",
        bands=("B01", "B02", "B03", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"),
        timeless=False,
        reference=False,
        bytes_per_px=2,
        estimate_bands=11,
        window="run",
        cloud_filter=True,
    ),
    InputSpec(
        name="s1",
        collection="s1",
        loader="s1",
        bands=_SAR_POLS,
        timeless=False,
        reference=False,
        bytes_per_px=4,
        estimate_bands=2,
        window="run",
    ),
    InputSpec(
        name="s1_pre",
        collection="s1",
        loader="s1",
        bands=_SAR_POLS,
        timeless=False,
        reference=True,
        bytes_per_px=4,
        estimate_bands=2,
        window="pre_event",
    ),
    InputSpec(
        name="s1_post",
        collection="s1",
        loader="s1",
        bands=_SAR_POLS,
        timeless=False,
        reference=False,
        bytes_per_px=4,
        estimate_bands=2,
        window="post_event",
    ),
    InputSpec(
        name="dem",
        collection="dem",
        loader="dem",
        bands=("DEM",),
        timeless=True,
        reference=False,
        bytes_per_px=4,
        estimate_bands=1,
        window=None,
    ),
    InputSpec(
        # Height above nearest drainage (m), a one-band raster on the DEM's tiling (ASF's
        # Global HAND from GLO-30, collection ``glo-30-hand``): read as the DEM is; derived
        # from the DEM where the catalog has none.
        name="hand",
        collection="hand",
        loader="dem",
        bands=("DEM",),
        timeless=True,
        reference=False,
        bytes_per_px=4,
        estimate_bands=1,
        window=None,
        derived_from="dem",
    ),
    InputSpec(
        name="permanent_water",
        collection="permanent_water",
        loader=None,
        bands=(),
        timeless=True,
        reference=False,
        bytes_per_px=1,
        estimate_bands=1,
        window=None,
    ),
)

#: Names of the source inputs (``INPUTS`` order).
SOURCE_INPUTS: tuple[str, ...] = tuple(spec.name for spec in INPUTS)

_BY_NAME = {spec.name: spec for spec in INPUTS}


def get_input(name: str) -> InputSpec:
    """The spec of source input ``name``; a clear error names the valid ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise BadInputError("input", name, f"one of {list(SOURCE_INPUTS)}") from None
