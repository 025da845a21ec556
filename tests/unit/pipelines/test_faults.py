"""Failpoints: SIGKILL at a named point, once across processes with a flag, or hold there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.faults import FAULT_POINTS

HIT = "from pipelines.faults import fault_point; fault_point('writer.chunks'); print('passed')"


def _hit(tmp_path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HIT],
        env={**os.environ, "TERRAPIPE_FAULT_AT": "writer.chunks", **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_named_point_kills_its_process_and_other_points_do_nothing(tmp_path):
    assert "writer.chunks" in FAULT_POINTS
    assert _hit(tmp_path).wait(60) == -signal.SIGKILL
    other = _hit(tmp_path, TERRAPIPE_FAULT_AT="cog.write")
    assert other.communicate(timeout=60)[0].strip() == "passed"


def test_a_flagged_point_fires_in_the_first_process_only(tmp_path):
    flag = tmp_path / "flag"
    first = _hit(tmp_path, TERRAPIPE_FAULT_FLAG=str(flag))
    assert first.wait(60) == -signal.SIGKILL
    assert flag.read_text() == str(first.pid)
    again = _hit(tmp_path, TERRAPIPE_FAULT_FLAG=str(flag))  # e.g. the restarted worker
    assert again.communicate(timeout=60)[0].strip() == "passed"


def test_a_held_point_waits_while_its_flag_exists(tmp_path):
    flag = tmp_path / "flag"
    held = _hit(tmp_path, TERRAPIPE_FAULT_FLAG=str(flag), TERRAPIPE_FAULT_ACTION="hold")
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists() and held.poll() is None
    flag.unlink()
    assert held.communicate(timeout=60)[0].strip() == "passed"


@pytest.mark.parametrize("flag", [None, ""])
def test_hold_without_a_flag_does_not_hold(tmp_path, flag):
    env = {"TERRAPIPE_FAULT_ACTION": "hold"}
    if flag is not None:
        env["TERRAPIPE_FAULT_FLAG"] = flag
    assert _hit(tmp_path, **env).communicate(timeout=60)[0].strip() == "passed"
