"""The Dask cluster a run computes on.

- An existing scheduler when one is configured: ``dask.address`` in the province config, the
  ``TERRAPIPE_DASK_ADDRESS`` environment variable, or the Airflow connection ``dask_default``
  (host and port). Production points this at a dask-kubernetes or dask-gateway cluster with a CPU
  worker group and a GPU worker group started with ``--resources GPU=1``.
- Otherwise a LocalCluster started once per run in its own process (about 5 s), whose address is
  handed to every task, and stopped at the end of the run. ``gpu_workers`` of its workers declare
  the ``GPU`` resource, so stages declared ``gpu=1`` reach only them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import DaskConfig
from pipelines.errors import BadInputError, TransientIOError

if TYPE_CHECKING:
    from distributed import Client

ENV_ADDRESS = "TERRAPIPE_DASK_ADDRESS"
AIRFLOW_CONN_ID = "dask_default"


@dataclass(frozen=True)
class ClusterHandle:
    """A cluster a run uses; ``pid`` is set when this run started it (and must stop it)."""

    address: str
    pid: int | None = None

    def to_xcom(self) -> dict[str, object]:
        """The handle as the start task's XCom."""
        return {"address": self.address, "pid": self.pid}


def configured_address(config: DaskConfig) -> str | None:
    """Scheduler address from the config, the environment or the Airflow connection, if any."""
    if config.address:
        return config.address
    if os.environ.get(ENV_ADDRESS):
        return os.environ[ENV_ADDRESS]
    conn_env = os.environ.get(f"AIRFLOW_CONN_{AIRFLOW_CONN_ID.upper()}")
    if conn_env:
        from urllib.parse import urlparse

        parsed = urlparse(conn_env)
        return f"tcp://{parsed.hostname}:{parsed.port or 8786}"
    return None


def start_cluster(config: DaskConfig, timeout_s: float = 120.0) -> ClusterHandle:
    """The configured cluster, or a new LocalCluster in a detached process."""
    address = configured_address(config)
    if address:
        return ClusterHandle(address=address)
    fd, address_file = tempfile.mkstemp(prefix="terrapipe-dask-", suffix=".json")
    os.close(fd)
    os.unlink(address_file)
    cmd = [
        sys.executable,
        "-m",
        "operators.dask_cluster",
        json.dumps(config.model_dump()),
        address_file,
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TransientIOError(
                f"the local Dask cluster exited at start (code {proc.returncode})"
            )
        if os.path.exists(address_file):
            try:
                info = json.loads(Path(address_file).read_text())
            except json.JSONDecodeError:
                time.sleep(0.1)
                continue
            os.unlink(address_file)
            return ClusterHandle(address=info["address"], pid=proc.pid)
        time.sleep(0.2)
    proc.kill()
    raise TransientIOError(f"the local Dask cluster did not start within {timeout_s:.0f} s")


def stop_cluster(handle: ClusterHandle | Mapping[str, object], timeout_s: float = 3.0) -> None:
    """Stop a cluster this run started (a configured external cluster is left running);
    ``handle`` may be the start task's XCom (:meth:`ClusterHandle.to_xcom`)."""
    pid = handle.pid if isinstance(handle, ClusterHandle) else handle.get("pid")
    if not isinstance(pid, int) or not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    # Whatever is left of the cluster's process group (worker processes) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def connect(address: str, timeout_s: float = 30.0) -> Client:
    """A client of the scheduler at ``address``; a clear error when none answers."""
    from distributed import Client

    if not address.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
        raise BadInputError("dask.address", address, "a scheduler address like tcp://host:8786")
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)
    except OSError as exc:
        raise TransientIOError(f"the Dask scheduler at {address} did not answer: {exc}") from exc


def _serve(config_json: str, address_file: str) -> None:
    """Run a LocalCluster (+ GPU-declaring workers) until SIGTERM; write its address first."""
    from distributed import LocalCluster, Nanny

    config = DaskConfig.model_validate(json.loads(config_json))
    cluster = LocalCluster(
        n_workers=config.n_workers,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        processes=True,
        dashboard_address=None,
    )
    for i in range(config.gpu_workers):
        spec = {
            "cls": Nanny,
            "options": {
                "nthreads": config.threads_per_worker,
                "memory_limit": config.memory_limit,
                "resources": {"GPU": 1},
            },
        }
        cluster.worker_spec[f"gpu-{i}"] = spec
    if config.gpu_workers:
        cluster.scale(len(cluster.worker_spec))
        cluster.sync(cluster._correct_state)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    tmp = address_file + ".tmp"
    Path(tmp).write_text(json.dumps({"address": cluster.scheduler_address}))
    os.replace(tmp, address_file)
    while not stopping:
        time.sleep(0.2)
    with contextlib.suppress(Exception):
        cluster.close(timeout=5)
    os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
