"""Stopping a local STAC server that another process started (concurrent runs share one)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from pipelines.catalog import server as server_module
from pipelines.catalog.server import StacServer, stop_server

#: A stand-in for ``rustac serve`` that ignores SIGTERM (a server busy loading its items).
STUBBORN_SERVER = """\
#!{python}
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""

#: Another run's process: it starts the server, reports its pid and never reaps it.
PARENT = """\
import subprocess, sys, time
child = subprocess.Popen([sys.argv[1], "serve"], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="zombie processes as on the Linux workers")
def test_stopping_a_server_of_another_process_that_ignores_sigterm_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "STOP_WAIT_S", 0.5)
    exe = tmp_path / "rustac"
    exe.write_text(textwrap.dedent(STUBBORN_SERVER.format(python=sys.executable)))
    exe.chmod(0o755)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(exe)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        pid_file = tmp_path / "server.json"
        pid_file.write_text("{}")
        server = StacServer("http://127.0.0.1:9", pid, pid_file, str(tmp_path), tmp_path / "log")
        # SIGTERM is ignored, SIGKILL leaves a zombie its parent has not reaped: the stop still
        # returns (it used to raise psutil.TimeoutExpired and fail the run that stopped it).
        assert stop_server(server) is True
        assert not pid_file.exists()
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait()
