"""`terrapipe` exit codes end to end: a run's exit code matches the state in its one JSON result
on stdout (0 done, 3 no scenes, 1 failed); usage errors exit 2 with click's message; a transient
failure exits 4; messages keep user text such as ``[a-z0-9]`` and stay on one line.

The DAG runs are replaced by their results (``operators.airflow_env.run_dag``): what is tested is
the CLI's side, not Airflow's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cli import EXIT_BAD_INPUT, EXIT_NO_SCENES, EXIT_TRANSIENT, main

AOI = {
    "type": "Polygon",
    "coordinates": [[[114.0, 34.4], [114.2, 34.4], [114.2, 34.6], [114.0, 34.6], [114.0, 34.4]]],
}

pytest.importorskip("airflow")  # run, backfill and season need the airflow extra


@pytest.fixture
def config(tmp_path: Path) -> Path:
    raw = {
        "province": "p",
        "aoi": AOI,
        "crs": "EPSG:32650",
        "start": "2025-07-01",
        "end": "2025-07-31",
        "products": ["cloud_mask"],
        "stac": {"url": "http://127.0.0.1:1/"},
        "store": str(tmp_path / "store"),
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _result(dag_id: str, state: str, tasks: dict[str, str]) -> dict[str, Any]:
    return {
        "dag_id": dag_id,
        "run_id": "r",
        "state": state,
        "tasks": tasks,
        "task_seconds": {},
        "summary": {"written": 0, "skipped": 0},
    }


DONE = {"plan": "success", "process_cpu[0]": "success", "finalize": "success"}
FAILED = {"plan": "success", "process_cpu[0]": "failed", "finalize": "upstream_failed"}
NO_SCENES = {"plan": "skipped", "process_cpu[0]": "skipped", "finalize": "skipped"}


def _fake_runs(monkeypatch, *outcomes: tuple[str, dict[str, str]], noise: bool = False) -> list:
    """``run_dag`` answers ``outcomes`` in turn (the last one repeats); with ``noise`` it also
    prints to stdout and starts a child process that writes to file descriptor 1."""
    import operators.airflow_env

    calls: list[dict[str, Any]] = []

    def run_dag(dag_id: str, conf: dict[str, Any], logical_date: Any = None) -> dict[str, Any]:
        calls.append(conf)
        if noise:
            print("task log line on stdout")
            os.system("echo child process output")
        state, tasks = outcomes[min(len(calls), len(outcomes)) - 1]
        return _result(dag_id, state, tasks)

    monkeypatch.setattr(operators.airflow_env, "run_dag", run_dag)
    return calls


def _json_only(out: str) -> dict[str, Any]:
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.mark.parametrize(
    ("state", "tasks", "code", "shown"),
    [
        ("success", DONE, 0, "success"),
        ("failed", FAILED, 1, "failed"),
        ("success", NO_SCENES, EXIT_NO_SCENES, "no_scenes"),
        # a run Airflow calls a success although a task did not end done or skipped
        ("success", {**DONE, "process_cpu[1]": "upstream_failed"}, 1, "failed"),
    ],
)
def test_run_exit_code_matches_the_state_of_its_json_result(
    config, monkeypatch, capfd, state, tasks, code, shown
):
    _fake_runs(monkeypatch, (state, tasks), noise=True)
    assert main(["run", str(config)]) == code
    out, err = capfd.readouterr()
    result = _json_only(out)
    assert result["state"] == shown and result["exit_code"] == code
    assert result["dag_state"] == state and result["tasks"] == tasks
    assert "task log line" in err and "child process output" in err


def test_backfill_fails_when_a_window_fails_and_skips_windows_without_scenes(
    config, monkeypatch, capfd
):
    window = ["--start", "2025-06-20", "--end", "2025-08-10"]  # three month windows
    _fake_runs(monkeypatch, ("success", DONE), ("failed", FAILED), ("success", NO_SCENES))
    assert main(["backfill", str(config), *window]) == 1
    result = _json_only(capfd.readouterr().out)
    assert result["failed"] == ["2025-07-01..2025-07-31"]
    assert result["no_scenes"] == ["2025-08-01..2025-08-10"]
    assert (result["state"], result["exit_code"]) == ("failed", 1)

    _fake_runs(monkeypatch, ("success", NO_SCENES), ("success", DONE))
    assert main(["backfill", str(config), *window]) == 0
    assert _json_only(capfd.readouterr().out)["state"] == "success"

    _fake_runs(monkeypatch, ("success", NO_SCENES))
    assert main(["backfill", str(config), *window]) == EXIT_NO_SCENES
    assert _json_only(capfd.readouterr().out)["state"] == "no_scenes"


def test_season_exit_code_matches_its_state(config, monkeypatch, capfd):
    _fake_runs(monkeypatch, ("failed", {"plan": "success", "parcels[0]": "failed"}))
    assert main(["season", str(config), "--season", "2025"]) == 1
    assert _json_only(capfd.readouterr().out)["state"] == "failed"
    _fake_runs(monkeypatch, ("success", {"plan": "skipped", "parcels": "skipped"}))
    assert main(["season", str(config), "--season", "1990"]) == EXIT_NO_SCENES
    out, err = capfd.readouterr()
    assert _json_only(out)["state"] == "no_scenes" and "season 1990" in err


def test_a_usage_error_exits_2_with_clicks_message(config, capfd):
    assert main(["run", str(config), "--tile-px", "64"]) == EXIT_BAD_INPUT
    out, err = capfd.readouterr()
    assert out == "" and "No such option: --tile-px" in err and "Traceback" not in err
    assert main(["backfill", str(config), "--start"]) == EXIT_BAD_INPUT
    assert "requires an argument" in capfd.readouterr().err


def test_a_transient_failure_exits_4_on_one_line(config, monkeypatch, capfd):
    import operators.airflow_env

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise ConnectionResetError("connection reset by s3://bucket/[a-z0-9]/x\nagain")

    monkeypatch.setattr(operators.airflow_env, "run_dag", unreachable)
    assert main(["run", str(config)]) == EXIT_TRANSIENT
    err = capfd.readouterr().err
    assert "s3://bucket/[a-z0-9]/x again" in err and err.strip().count("\n") == 0


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143)])
def test_a_cancelled_run_exits_128_plus_the_signal(config, monkeypatch, capfd, signum, code):
    import operators.airflow_env
    from pipelines.errors import RunCancelled

    def cancelled(*args: Any, **kwargs: Any) -> None:
        raise RunCancelled(signum, "province_production manual__1")

    monkeypatch.setattr(operators.airflow_env, "run_dag", cancelled)
    assert main(["run", str(config)]) == code
    out, err = capfd.readouterr()
    assert "cancelled" in err and err.strip().count("\n") == 0
    result = json.loads(out)  # the JSON result says so too
    assert (result["state"], result["exit_code"]) == ("cancelled", code)


def test_bad_input_keeps_bracketed_text_on_one_line(config, capfd):
    raw = yaml.safe_load(config.read_text())
    raw["province"] = "Bad Name With A Long Tail " * 5
    config.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(config)]) == EXIT_BAD_INPUT
    err = capfd.readouterr().err
    assert "^[a-z0-9][a-z0-9_-]{0,62}$" in err and err.strip().count("\n") == 0


def test_demo_archive_default_output_is_under_terrapipe_home(tmp_path, monkeypatch):
    from pipelines.demo import default_out

    monkeypatch.setenv("TERRAPIPE_HOME", str(tmp_path / "home"))
    assert default_out("tiny") == str(tmp_path / "home" / "archive" / "tiny")


def test_version_prints_the_version_and_with_code_the_digest_the_cluster_check_compares(capfd):
    from operators.software import installed_software
    from pipelines import __version__

    assert main(["version"]) == 0
    assert capfd.readouterr().out == f"{__version__}\n"
    assert main(["version", "--code"]) == 0
    assert capfd.readouterr().out == f"{__version__} {installed_software().code}\n"
