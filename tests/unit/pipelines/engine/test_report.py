"""The run report's lookups: run ids from the store, a clear error for an unknown run."""

from __future__ import annotations

import json

import pytest

from pipelines.engine.report import OUTCOMES, plan_url_of, record_outcome, report_url, run_ids
from pipelines.errors import BadInputError
from tests.unit.pipelines.engine.test_plan import synthetic_plan


def _written(plan, tmp_path):
    """``plan`` written where a run's plan lies in the store ``tmp_path``; its path."""
    plan_url = tmp_path / "p" / "runs" / "2025-07-01_2025-07-10_x" / "plan.json"
    plan_url.parent.mkdir(parents=True)
    plan_url.write_text(plan.to_json())
    return plan_url


def test_runs_are_the_folders_with_a_plan(tmp_path):
    assert run_ids(str(tmp_path), "p") == []
    for name in ("2025-07-01_2025-07-31_b", "2025-06-01_2025-06-30_a"):
        (tmp_path / "p" / "runs" / name).mkdir(parents=True)
        (tmp_path / "p" / "runs" / name / "plan.json").write_text("{}")
    (tmp_path / "p" / "runs" / "no-plan").mkdir()
    assert run_ids(str(tmp_path), "p") == ["2025-06-01_2025-06-30_a", "2025-07-01_2025-07-31_b"]
    url = plan_url_of(str(tmp_path), "p", "2025-06-01_2025-06-30_a")
    assert url.endswith("p/runs/2025-06-01_2025-06-30_a/plan.json")
    assert report_url(url).endswith("2025-06-01_2025-06-30_a/report.json")


@pytest.mark.parametrize("run_id", ["2024-01-01_2024-01-31_x", "../p"])
def test_an_unknown_run_names_the_runs_present(tmp_path, run_id):
    (tmp_path / "p" / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "p" / "runs" / "r1" / "plan.json").write_text("{}")
    with pytest.raises(BadInputError) as err:
        plan_url_of(str(tmp_path), "p", run_id)
    assert err.value.field == "run"


def test_an_outcome_is_one_of_the_known(tmp_path):
    with pytest.raises(BadInputError) as err:
        record_outcome(str(tmp_path / "plan.json"), "done")
    assert str(OUTCOMES) in str(err.value)


def test_a_list_of_runs_reads_each_recorded_report_and_computes_only_the_others(
    tmp_path, monkeypatch
):
    """Before, listing a province's runs computed every run's report, one marker read per tile,
    product and date of every run: the whole archive for `terrapipe status` and the web page's
    runs. A run whose last attempt ended has that state in its report.json."""
    from pipelines.engine import report as report_module
    from pipelines.engine.report import (
        ProductStatus,
        RunReport,
        TileStatus,
        run_summaries,
    )

    def report_of(run_id: str, state: str, outcome: str | None) -> RunReport:
        tile = TileStatus("x0001_y0001", state, (ProductStatus("cloud_mask", state, 2, 2),), 1, 9)
        return RunReport(
            run_id=run_id,
            plan_url=f"{run_id}/plan.json",
            province="p",
            window=("2025-06-01", "2025-06-30"),
            state=state,
            outcome=outcome,
            ended=None if outcome is None else "2025-07-01T00:00:00+00:00",
            counts={state: 1},
            tiles=(tile,),
        )

    ended, running = "2025-06-01_2025-06-30_a", "2025-07-01_2025-07-31_b"
    for name in (ended, running):
        (tmp_path / "p" / "runs" / name).mkdir(parents=True)
        (tmp_path / "p" / "runs" / name / "plan.json").write_text("{}")
    recorded = report_of(ended, "done", "success")
    (tmp_path / "p" / "runs" / ended / "report.json").write_text(json.dumps(recorded.to_json()))
    computed: list[str] = []

    def run_report(plan_url, store=None):
        run_id = plan_url.rsplit("/", 2)[-2]
        computed.append(run_id)
        return report_of(run_id, "pending", None)

    monkeypatch.setattr(report_module, "run_report", run_report)
    first, second = run_summaries(str(tmp_path), "p")
    assert computed == [running]
    assert (first.run_id, first.state, first.as_of, first.outcome) == (
        ended,
        "done",
        "recorded",
        "success",
    )
    assert first.products == ("cloud_mask",) and first.counts == {"done": 1}
    assert (second.run_id, second.state, second.as_of) == (running, "pending", "now")


def test_a_failure_keeps_the_scene_at_fault_and_a_report_groups_tiles_by_it():
    """A scene's failure (a missing file, a band not catalogued) carries its item's ID through
    the batch record to the report, which lists each such scene with its tiles: what
    stac.exclude_items takes. Records written before the field read as no scene."""
    from pipelines.engine.manifest import ProductFailure
    from pipelines.engine.report import ProductStatus, RunReport, TileStatus

    broken = BadInputError("scene asset", "/a/red.tif", "a readable COG").of_scene("S2_X")
    failure = ProductFailure.of("dehaze", "x0001_y0002", ["2025-07-20"], broken)
    assert failure.scene == "S2_X" and ProductFailure.from_json(failure.to_json()) == failure
    older = {k: v for k, v in failure.to_json().items() if k != "scene"}
    assert ProductFailure.from_json(older).scene is None
    plain = ProductFailure.of("dehaze", "t", ["d"], BadInputError("tile_px", 3, "16 or more"))
    assert plain.scene is None and "scene" not in plain.to_json()
    assert ProductFailure.of("dehaze", "t", ["d"], OSError("reset")).scene is None

    def failed(product: str, scene: str | None) -> ProductStatus:
        return ProductStatus(product, "failed", 1, 0, "bad_input", "BadInputError", "m", scene)

    def tile(tile_id: str, *products: ProductStatus) -> TileStatus:
        return TileStatus(tile_id, "failed", products, 1.0, 0)

    report = RunReport(
        "r",
        "plan.json",
        "p",
        ("2025-07-01", "2025-07-31"),
        "failed",
        "failed",
        None,
        {"failed": 4},
        (
            tile("x2", failed("dehaze", "S2_B"), failed("haze_index", "S2_B")),
            tile("x1", failed("dehaze", "S2_B")),
            tile("x3", failed("cloud_mask", "S2_A"), failed("water_mask", None)),
        ),
    )
    assert report.failed_scenes() == {"S2_A": ["x3"], "S2_B": ["x2", "x1"]}
    assert report.to_json()["failed_scenes"] == report.failed_scenes()
    assert report.tiles[0].products[0].to_json()["scene"] == "S2_B"


def test_a_report_says_how_many_tiles_it_has_read(tmp_path):
    """`terrapipe status RUN` reads a marker per tile, product and date (some 60,000 for a
    month of a 1,700-tile province): the report calls back first with the number of tiles,
    then as each tile is read, so that the command shows a progress bar."""
    from pipelines.engine.report import run_report

    plan = synthetic_plan()
    plan_url = _written(plan, tmp_path)
    calls: list[tuple[int, int]] = []
    report = run_report(str(plan_url), str(tmp_path), progress=lambda *c: calls.append(c))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert [t.tile_id for t in report.tiles] == plan.tile_ids and report.state == "pending"


def test_a_report_reads_again_only_the_tiles_with_work_left(tmp_path, monkeypatch):
    """Given the settled tiles of an earlier report (every product done or without scenes), a
    report reads the markers of the other tiles only, and equals a report that read them all
    while the store is unchanged."""
    from pipelines.engine import report as report_module

    plan = synthetic_plan()
    plan_url = _written(plan, tmp_path)
    done_tile, open_tile = plan.tile_ids
    reads: list[str] = []

    def outdated(store, province, product, tile_id, label, version):
        reads.append(tile_id)
        return [] if tile_id == done_tile else None  # a marker on one tile, none on the other

    monkeypatch.setattr(report_module.products, "outdated", outdated)
    full = report_module.run_report(str(plan_url), str(tmp_path))
    assert set(reads) == {done_tile, open_tile}
    settled = full.settled_tiles()
    assert list(settled) == [done_tile] and not full.tiles[1].settled
    reads.clear()
    again = report_module.run_report(str(plan_url), str(tmp_path), settled=settled)
    assert reads and set(reads) == {open_tile}
    assert again == full
