"""The embedded Airflow: one run at a time per home (a second waits, saying for whom), and
SIGINT / SIGTERM cancel a run even inside code that swallows interrupts (Airflow's task runner)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from operators import airflow_env, dask_cluster

HOLDER = """
import sys
from pathlib import Path
from operators.airflow_env import home_lock
with home_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_on_one_home_waits_for_the_first_and_says_for_whom(tmp_path, caplog):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), "terrapipe-first-run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        order: list[str] = []
        acquired = threading.Event()

        def second() -> None:
            with airflow_env.home_lock(tmp_path):
                order.append("second holds")
                acquired.set()

        caplog.set_level(logging.WARNING, logger="operators.airflow_env")
        thread = threading.Thread(target=second)
        thread.start()
        # The second run says it waits, and for whom, while the first still holds the lock.
        while "waiting for the embedded Airflow DB" not in caplog.text:
            assert thread.is_alive() and not acquired.is_set()
            acquired.wait(0.05)
        assert f"pid {holder.pid}" in caplog.text and "terrapipe-first-run" in caplog.text
        assert not acquired.is_set()
        order.append("first releases")
        holder.stdin.write("\n")
        holder.stdin.flush()
        thread.join(60)
        assert order == ["first releases", "second holds"]
    finally:
        holder.kill()
        holder.wait()


def _airflow_like_loop(stop: threading.Event, between_tasks) -> int:
    """Like dag.test(): each 'task' swallows every exception (BaseException included) and
    replaces the SIGTERM handler with one that ignores it; the loop runs until interrupted."""
    tasks = 0
    while not stop.is_set():
        between_tasks()
        signal.signal(signal.SIGTERM, lambda s, f: None)
        try:
            tasks += 1
            for _ in range(200):
                stop.wait(0.01)
        except BaseException:
            pass
    return tasks


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_the_run_and_stops_its_clusters(monkeypatch, signum):
    stopped: list[int] = []
    monkeypatch.setattr(dask_cluster, "stop_started_clusters", lambda: stopped.append(1) or [])
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    never = threading.Event()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signum))
    cancel = airflow_env.SignalCancel()
    with cancel:
        timer.start()
        _airflow_like_loop(never, cancel.checkpoint)
        pytest.fail("the loop was not interrupted")
    timer.join()
    assert cancel.signum == signum
    assert stopped, "the run's clusters were not stopped"
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before


def test_without_a_signal_nothing_is_cancelled():
    cancel = airflow_env.SignalCancel()
    with cancel:
        pass
    assert cancel.signum is None
    with pytest.raises(KeyboardInterrupt), airflow_env.SignalCancel():
        raise KeyboardInterrupt  # not a signal of ours: not swallowed
