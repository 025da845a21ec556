"""The run view's answers (``GET /api/runs/{run_id}``), shared by every viewer of a run.

A report reads every marker of the run: tens of thousands for a month of a 1,700-tile
province, seconds on a local disk and tens of seconds on an object store. Each open page asks
again 10 s after its last answer, so N people watching a run would read the store N times as
often. :class:`RunViews` computes one answer at a time per run (a viewer asking meanwhile waits
for it and gets it) and gives the last answer again while it is younger than it took to compute
(and at least :data:`MIN_ANSWER_AGE_S`). An answer reads again only the markers of the tiles
that had work left in the last one; every :data:`FULL_READ_S` seconds it reads them all, so a
marker removed or rewritten behind a finished tile shows within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Seconds an answer is given again to the viewers that ask after it (at least).
MIN_ANSWER_AGE_S = 5.0
#: Seconds after which an answer reads the markers of every tile again, finished ones too.
FULL_READ_S = 600.0


@dataclass(frozen=True)
class RunAnswer:
    """An answer's body (JSON) and the tiles it found with nothing left to do (by id, as
    :meth:`~pipelines.engine.report.RunReport.settled_tiles` gives them), which the next
    answer need not read again."""

    body: dict[str, Any]
    settled: Mapping[str, Any]


def run_view(
    store: str, province: str, run_id: str, settled: Mapping[str, Any] | None = None
) -> RunAnswer:
    """A run's report (without its tiles) and its tiles as GeoJSON outlines (WGS84) with each
    tile's state and products as properties, computed from the store now; the markers of the
    ``settled`` tiles (an earlier answer's) are not read again."""
    from pipelines.engine.plan import read_plan
    from pipelines.engine.report import plan_url_of, run_report
    from pipelines.products.stac import footprint_wgs84

    plan_url = plan_url_of(store, province, run_id)
    plan = read_plan(plan_url)  # read once: a province's year is a hundred megabytes
    report = run_report(plan_url, store, plan=plan, settled=settled)
    features = []
    for tile in report.tiles:
        geometry, _ = footprint_wgs84(plan.tile(tile.tile_id).geobox)
        features.append({"type": "Feature", "geometry": geometry, "properties": tile.to_json()})
    body = {
        "report": {k: v for k, v in report.to_json().items() if k != "tiles"},
        "tiles": {"type": "FeatureCollection", "features": features},
    }
    return RunAnswer(body, report.settled_tiles())


@dataclass
class _Answer:
    lock: threading.Lock = field(default_factory=threading.Lock)
    body: dict[str, Any] | None = None
    at: float = 0.0
    """When ``body`` was computed (the clock's seconds)."""
    took: float = 0.0
    """Seconds it took."""
    settled: Mapping[str, Any] = field(default_factory=dict)
    full_at: float = float("-inf")
    """When the last answer that read every tile started."""


class RunViews:
    """Answers of ``compute(run_id, settled)`` shared by concurrent and close viewers of a run
    (module docstring): ``settled`` is the last answer's, or empty when every tile is to be
    read (the first answer, then every ``full_read_s``). A failed computation is not kept: the
    next viewer computes again."""

    def __init__(
        self,
        compute: Callable[[str, Mapping[str, Any]], RunAnswer],
        min_age_s: float = MIN_ANSWER_AGE_S,
        full_read_s: float = FULL_READ_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._min_age_s = min_age_s
        self._full_read_s = full_read_s
        self._clock = clock
        self._answers: dict[str, _Answer] = {}
        self._guard = threading.Lock()

    def get(self, run_id: str) -> dict[str, Any]:
        """The answer for ``run_id``: the last one while young enough, else computed now."""
        with self._guard:
            answer = self._answers.setdefault(run_id, _Answer())
        with answer.lock:
            young = self._clock() - answer.at < max(self._min_age_s, answer.took)
            if answer.body is not None and young:
                return answer.body
            started = self._clock()
            full = started - answer.full_at >= self._full_read_s
            computed = self._compute(run_id, {} if full else answer.settled)
            answer.at = self._clock()
            answer.body, answer.settled = computed.body, computed.settled
            answer.took = answer.at - started
            if full:
                answer.full_at = started
            return computed.body
