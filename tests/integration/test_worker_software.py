"""A Dask cluster the run did not start, whose workers run other code than the run: each
connection checks them, with real scheduler and worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from operators.dask_cluster import connect
from operators.software import PACKAGES, installed_software, package_roots
from pipelines.errors import BadInputError
from tests.fixtures.processes import stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def worker(address: str, pythonpath: Path, name: str) -> Iterator[None]:
    """A ``dask worker`` process joined to ``address`` that imports from ``pythonpath`` first
    (another image's packages), stopped after."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    options = ["--name", name, "--nthreads", "1", "--no-dashboard", "--no-nanny"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, *options],
        env=env,
        cwd=pythonpath,  # ``-m`` puts the working folder first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        stop_process(proc)


def wait_for_workers(address: str, n: int, timeout_s: float = 60.0) -> None:
    """Wait until exactly ``n`` workers are joined to the scheduler at ``address``."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        deadline = time.monotonic() + timeout_s
        while len(client.scheduler_info(n_workers=-1)["workers"]) != n:
            assert time.monotonic() < deadline, f"the cluster did not reach {n} workers"
            time.sleep(0.1)


#: A worker's ``sitecustomize``: the checkout's editable install (a finder that resolves any
#: module of its packages) is taken out, so the worker sees only the copy, as an image would.
WITHOUT_EDITABLE_INSTALL = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
"""


def another_build(root: Path, change: str) -> Path:
    """terrapipe's packages copied to ``root``, then changed: ``stage`` edits one stage (a
    build of another commit, with the same version), ``no-check`` removes the software check
    (a build from before it)."""
    for name, folder in package_roots().items():
        shutil.copytree(folder, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "sitecustomize.py").write_text(WITHOUT_EDITABLE_INSTALL)
    if change == "stage":
        stage = root / "pipelines" / "stages" / "water.py"
        stage.write_text(stage.read_text() + "\n# another commit\n")
    else:
        (root / "operators" / "software.py").unlink()
    return root


def test_a_worker_running_other_code_fails_the_connection_and_is_named(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        connect(address).close()  # workers of this install pass

        stale = another_build(tmp_path / "stale", "stage")
        with worker(address, stale, "stale-image"):
            wait_for_workers(address, 2)
            with pytest.raises(BadInputError) as raised:
                connect(address)
        message = str(raised.value)
        assert f"software of the Dask workers at {address}" in message
        assert "1 of 2 worker(s) run other code" in message
        assert installed_software().describe() in message
        assert installed_software().code in message
        assert "(stale-image): terrapipe 0.1.0, code" in message.split("Workers:")[1]
        wait_for_workers(address, 1)

        # An image from before the check: it cannot answer.
        old = another_build(tmp_path / "old", "no-check")
        with worker(address, old, "old-image"):
            wait_for_workers(address, 2)
            with pytest.raises(BadInputError, match=r"\(old-image\): cannot run terrapipe's"):
                connect(address)
        wait_for_workers(address, 1)
        connect(address).close()  # the stale workers gone, the cluster passes again
    assert set(PACKAGES) == set(package_roots())
