"""The run report's lookups: run ids from the store, a clear error for an unknown run."""

from __future__ import annotations

import pytest

from pipelines.engine.report import OUTCOMES, plan_url_of, record_outcome, report_url, run_ids
from pipelines.errors import BadInputError


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
