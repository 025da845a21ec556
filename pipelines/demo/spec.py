"""Archive sizes, the province grid and the acquisition calendars (all deterministic).

The province sits on the North China Plain in UTM zone 50N (EPSG:32650), inside the
Sentinel-2 MGRS tile 50SKD (origin x=199980, y=3900000), on the same 10 m pixel lattice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from affine import Affine

from pipelines.errors import BadInputError

EPSG = 32650
CRS = f"EPSG:{EPSG}"
MGRS_TILE = "50SKD"
#: Sentinel-2 5-day revisit anchor (an S2A acquisition); dates are ANCHOR + 5 k days.
S2_ANCHOR = dt.date(2022, 1, 2)
#: Sentinel-1 6-day anchor (alternating ascending / descending passes).
S1_ANCHOR = dt.date(2022, 1, 4)


@dataclass(frozen=True)
class SizeSpec:
    """One archive size: grid, seasons and acquisition windows."""

    name: str
    """``tiny``, ``demo`` or ``bench``."""
    width: int
    """Grid width and height in 10 m pixels."""
    x0: float
    """West edge of the grid (EPSG:32650 metres)."""
    y0: float
    """North edge of the grid (EPSG:32650 metres)."""
    seasons: tuple[int, ...]
    """Growing seasons (calendar years; winter wheat of season Y is sown in October of Y-1)."""
    s2_window: tuple[str, str]
    """Month-day window of Sentinel-2 acquisitions inside each season, e.g. ("03-01", "11-30")."""
    s2_step: int
    """Keep every ``s2_step``-th 5-day acquisition (1 = full 5-day cadence)."""
    s1_window: tuple[str, str]
    """Month-day window of Sentinel-1 acquisitions inside each season."""
    s1_step: int
    """Keep every ``s1_step``-th 6-day acquisition."""
    counties_per_side: int
    """Counties are a jittered ``n x n`` Voronoi partition."""
    flood_date: str
    """Onset of the flood event (ISO date, latest season)."""
    flood_days: int = 15
    """Days the flood water stays; S1 scenes in [onset, onset + flood_days) are post-event."""
    early_step_factor: int = 1
    """Seasons before the latest keep every ``early_step_factor``-th acquisition of the cadence
    (the latest season, with the flood event, has the full cadence)."""
    s2_dates: tuple[str, ...] = field(default_factory=tuple)
    """Explicit S2 dates (overrides the window) for sizes with a handful of dates."""
    s1_dates: tuple[str, ...] = field(default_factory=tuple)
    """Explicit S1 dates (overrides the window)."""
    resolution: float = 10.0
    """Pixel size in metres."""

    @property
    def transform(self) -> Affine:
        """Affine transform of the 10 m province grid."""
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in EPSG:32650."""
        ext = self.width * self.resolution
        return (self.x0, self.y0 - ext, self.x0 + ext, self.y0)

    def s2_schedule(self) -> list[tuple[int, dt.date]]:
        """(revisit index, date) of every Sentinel-2 acquisition, in time order."""
        if self.s2_dates:
            dates = [dt.date.fromisoformat(d) for d in self.s2_dates]
            return [((d - S2_ANCHOR).days // 5, d) for d in dates]
        return _cadence(
            S2_ANCHOR, 5, self.seasons, self.s2_window, self.s2_step, self.early_step_factor
        )

    def s1_schedule(self) -> list[tuple[int, dt.date]]:
        """(revisit index, date) of every Sentinel-1 acquisition, in time order."""
        if self.s1_dates:
            dates = [dt.date.fromisoformat(d) for d in self.s1_dates]
            return [((d - S1_ANCHOR).days // 6, d) for d in dates]
        return _cadence(
            S1_ANCHOR, 6, self.seasons, self.s1_window, self.s1_step, self.early_step_factor
        )


def _cadence(
    anchor: dt.date,
    days: int,
    seasons: tuple[int, ...],
    window: tuple[str, str],
    step: int,
    early_factor: int = 1,
) -> list[tuple[int, dt.date]]:
    out: list[tuple[int, dt.date]] = []
    for year in seasons:
        every = step if year == max(seasons) else step * early_factor
        start = dt.date.fromisoformat(f"{year}-{window[0]}")
        end = dt.date.fromisoformat(f"{year}-{window[1]}")
        k0 = -(-(start - anchor).days // days)
        k = k0
        while (d := anchor + dt.timedelta(days=days * k)) <= end:
            if (k - k0) % every == 0:
                out.append((k, d))
            k += 1
    return out


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        name="tiny",
        width=256,
        x0=289980.0,
        y0=3840000.0,
        seasons=(2025,),
        s2_window=("03-01", "11-05"),
        s2_step=2,
        s1_window=("03-01", "10-31"),
        s1_step=2,
        counties_per_side=2,
        flood_date="2025-07-23",
    ),
    "demo": SizeSpec(
        name="demo",
        width=2048,
        x0=279980.0,
        y0=3850000.0,
        seasons=(2022, 2023, 2024, 2025),
        s2_window=("03-01", "11-30"),
        s2_step=1,
        s1_window=("03-01", "11-30"),
        s1_step=1,
        counties_per_side=3,
        flood_date="2025-07-23",
        early_step_factor=3,
    ),
    "bench": SizeSpec(
        name="bench",
        width=10980,
        x0=199980.0,
        y0=3900000.0,
        seasons=(2025,),
        s2_window=("03-01", "11-30"),
        s2_step=1,
        s1_window=("01-01", "12-31"),
        s1_step=1,
        counties_per_side=5,
        flood_date="2025-07-23",
        s2_dates=("2025-04-17", "2025-06-01", "2025-07-21", "2025-08-25"),
        s1_dates=("2025-07-07", "2025-07-19", "2025-07-25", "2025-07-31"),
    ),
}


def get_size(size: str) -> SizeSpec:
    """The :class:`SizeSpec` called ``size``; BadInputError for an unknown name."""
    if not isinstance(size, str) or size not in SIZES:
        raise BadInputError("size", size, f"one of {', '.join(SIZES)}")
    return SIZES[size]
