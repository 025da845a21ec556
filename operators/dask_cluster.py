"""The Dask cluster a run computes on.

- An existing scheduler when one is configured: ``dask.address`` in the province config, the
  ``TERRAPIPE_DASK_ADDRESS`` environment variable, or the Airflow connection ``dask_default``
  (host and port). Production points this at a dask-kubernetes or dask-gateway cluster with a CPU
  worker group and a GPU worker group started with ``--resources GPU=1``.
- Otherwise a LocalCluster started once per run in its own process (about 5 s), whose address is
  handed to every task, and stopped at the end of the run. ``gpu_workers`` of its workers declare
  the ``GPU`` resource, so stages declared ``gpu=1`` reach only them.

A local cluster dies with the process that asked for it: a watchdog thread in the cluster process
polls its parent and shuts the cluster (and its worker processes, its process group) down when the
parent is gone, SIGKILL included. A task whose local cluster is gone starts a new one for itself
(:func:`run_client`) instead of waiting on a dead address.

A handle names its cluster process by host, pid and start time (:meth:`ClusterHandle.owns_process`):
under a scheduler each task is a process of its own, perhaps on another machine or in another
container (Celery, Kubernetes executors), where the same pid is another process. A task there
starts its own cluster instead of dialling the other machine's 127.0.0.1, and never signals the
process that happens to hold the pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import DaskConfig
from pipelines.errors import BadInputError, TransientIOError
from pipelines.processes import process_started, same_process

if TYPE_CHECKING:
    from distributed import Client

ENV_ADDRESS = "TERRAPIPE_DASK_ADDRESS"
AIRFLOW_CONN_ID = "dask_default"

#: Seconds a client waits for a scheduler before the task fails (transient, so retried).
CONNECT_TIMEOUT_S = 30.0
#: Seconds between two looks of a cluster's watchdog at its parent process.
WATCHDOG_INTERVAL_S = 0.5
#: Seconds a run with GPU products waits for a worker declaring ``GPU`` to join the scheduler
#: (a just started worker registers within seconds), then fails, naming what to start.
GPU_WORKER_WAIT_S = 30.0

log = logging.getLogger(__name__)

#: Local clusters this process started and has not stopped yet (pid -> handle).
_STARTED: dict[int, ClusterHandle] = {}


@dataclass(frozen=True)
class ClusterHandle:
    """A cluster a run uses; ``pid`` is set when this run started it (and must stop it), with
    the ``host`` (hostname) its process runs on and its start time ``started`` (s since the
    epoch, as psutil reads it)."""

    address: str
    pid: int | None = None
    host: str | None = None
    started: float | None = None

    def to_xcom(self) -> dict[str, object]:
        """The handle as the start task's XCom (host and start time only for a local one)."""
        xcom: dict[str, object] = {"address": self.address, "pid": self.pid}
        if self.pid:
            xcom |= {"host": self.host, "started": self.started}
        return xcom

    @classmethod
    def from_xcom(cls, xcom: Mapping[str, object]) -> ClusterHandle:
        """The handle of a start task's XCom (one without host or start time, as written before
        they were recorded, is checked by its pid alone)."""
        address, pid, host, started = (xcom.get(k) for k in ("address", "pid", "host", "started"))
        if not isinstance(address, str):
            raise BadInputError("cluster.address", address, "a scheduler address")
        return cls(
            address=address,
            pid=pid if isinstance(pid, int) and pid else None,
            host=host if isinstance(host, str) else None,
            started=float(started) if isinstance(started, int | float) else None,
        )

    def owns_process(self) -> bool:
        """True while this handle's cluster process runs and is reachable from here: this
        machine is its ``host``, and the process with its ``pid`` is alive and started at
        ``started`` (not another process given the same pid). False for an external cluster."""
        if not self.pid:
            return False
        if self.host is not None and self.host != socket.gethostname():
            return False
        return same_process(self.pid, self.started)


def configured_address(config: DaskConfig) -> str | None:
    """Scheduler address from the config, the environment or the Airflow connection
    ``dask_default``, if any. The connection is read through Airflow's hook, so one defined as
    an ``AIRFLOW_CONN_DASK_DEFAULT`` variable, in a secrets backend or in the metadata DB (as a
    task process sees it) all count."""
    if config.address:
        return config.address
    if os.environ.get(ENV_ADDRESS):
        return os.environ[ENV_ADDRESS]
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(AIRFLOW_CONN_ID)
    except Exception as exc:  # no Airflow, or no such connection: the run starts its own cluster
        log.debug("no Airflow connection %s: %s", AIRFLOW_CONN_ID, exc)
        return None
    if not conn.host:
        return None
    return f"tcp://{conn.host}:{conn.port or 8786}"


def start_cluster(config: DaskConfig, timeout_s: float = 120.0) -> ClusterHandle:
    """The configured cluster, or a new LocalCluster in a detached process."""
    address = configured_address(config)
    if address:
        return ClusterHandle(address=address)
    check_worker_start(config.worker_start)
    fd, address_file = tempfile.mkstemp(prefix="terrapipe-dask-", suffix=".json")
    os.close(fd)
    os.unlink(address_file)
    cmd = [
        sys.executable,
        "-m",
        "operators.dask_cluster",
        json.dumps(config.model_dump()),
        address_file,
        str(os.getpid()),
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
            handle = ClusterHandle(
                address=info["address"],
                pid=proc.pid,
                host=socket.gethostname(),
                started=process_started(proc.pid),
            )
            _STARTED[proc.pid] = handle
            return handle
        time.sleep(0.2)
    proc.kill()
    raise TransientIOError(f"the local Dask cluster did not start within {timeout_s:.0f} s")


def stop_cluster(handle: ClusterHandle | Mapping[str, object], timeout_s: float = 3.0) -> None:
    """Stop a cluster this run started (a configured external cluster is left running);
    ``handle`` may be the start task's XCom (:meth:`ClusterHandle.to_xcom`). A cluster process
    that is gone, or runs on another machine (its watchdog stops it with its parent), is left
    alone: the pid is never signalled unless it is that process."""
    if not isinstance(handle, ClusterHandle):
        if not handle.get("pid"):
            return  # an external cluster, or none (a run with nothing to do)
        handle = ClusterHandle.from_xcom(handle)
    pid = handle.pid
    if not pid:
        return
    _STARTED.pop(pid, None)
    if not handle.owns_process():
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


def stop_started_clusters() -> list[int]:
    """Stop every local cluster this process started and has not stopped (a run cancelled by a
    signal); returns their pids."""
    pids = list(_STARTED)
    for pid in pids:
        stop_cluster(_STARTED[pid])
    return pids


@contextlib.contextmanager
def run_client(cluster: Mapping[str, object], config: DaskConfig) -> Iterator[Client]:
    """A client of the run's cluster (the start task's XCom). When the run started a local
    cluster and its process is gone, or runs on another machine
    (:meth:`ClusterHandle.owns_process`), a new one is started for this task and stopped after
    it, instead of waiting on an address this task cannot reach."""
    handle = ClusterHandle.from_xcom(cluster)
    address = handle.address
    restarted: ClusterHandle | None = None
    if handle.pid and not handle.owns_process():
        log.warning(
            "the run's Dask cluster (pid %d on %s at %s) is gone or on another machine:"
            " starting a new one for this task",
            handle.pid,
            handle.host or "this machine",
            address,
        )
        restarted = start_cluster(config)
        address = restarted.address
    try:
        client = connect(address)
        try:
            yield client
        finally:
            client.close()
    finally:
        if restarted is not None:
            stop_cluster(restarted)


def require_gpu_workers(
    client: Client, config: DaskConfig, *, local: bool, wait_s: float = GPU_WORKER_WAIT_S
) -> tuple[str, ...]:
    """The addresses of the cluster's workers declaring the ``GPU`` resource, waiting up to
    ``wait_s`` seconds for one to join; none is a BadInputError (not retried) that names what to
    start: ``dask worker ADDRESS --resources GPU=1`` for an existing cluster, ``dask.gpu_workers``
    for the run's own LocalCluster (``local``)."""
    from pipelines.engine.run import cluster_workers

    if local and config.gpu_workers == 0:
        wait_s = 0.0  # the run's own cluster starts none: no worker will join
    deadline = time.monotonic() + wait_s
    while True:
        workers = cluster_workers(client)
        if workers.gpu:
            return workers.gpu
        if time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    address = str(client.scheduler_info(n_workers=0).get("address", "?"))
    if local:
        hint = (
            "The run's LocalCluster starts dask.gpu_workers workers declaring GPU=1: set"
            f" dask.gpu_workers >= 1 in the province config (it is {config.gpu_workers})"
        )
    else:
        hint = (
            f"Start one on a GPU machine: dask worker {address} --resources GPU=1"
            " (or scale the cluster's GPU worker group)"
        )
    raise BadInputError(
        f"GPU workers of the Dask scheduler at {address}",
        f"none among {len(workers.plain)} worker(s) after {wait_s:.0f} s",
        "at least one worker declaring the GPU resource for the run's GPU products",
        hint,
    )


def watch_parent(
    parent_pid: int, on_lost: Callable[[], None], interval_s: float = WATCHDOG_INTERVAL_S
) -> threading.Thread:
    """A daemon thread calling ``on_lost`` once this process's parent is no longer
    ``parent_pid`` (it exited or was killed: the orphan is re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        on_lost()

    thread = threading.Thread(target=watch, name="terrapipe-parent-watchdog", daemon=True)
    thread.start()
    return thread


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Client:
    """A client of the scheduler at ``address`` whose workers run this process's terrapipe
    (:func:`operators.software.check_cluster_software`: BadInputError naming the workers that
    do not); a clear error when no scheduler answers."""
    from distributed import Client

    from operators.software import check_cluster_software

    if not address.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
        raise BadInputError("dask.address", address, "a scheduler address like tcp://host:8786")
    try:
        client = Client(address, timeout=timeout_s, set_as_default=False)
    except OSError as exc:
        raise TransientIOError(f"the Dask scheduler at {address} did not answer: {exc}") from exc
    try:
        check_cluster_software(client)
    except BaseException:
        client.close()
        raise
    return client


#: The preload of a local cluster's workers (this module: :func:`dask_setup`).
WORKER_PRELOAD = "operators.dask_cluster"


def worker_modules() -> list[str]:
    """The modules of the CPU tile tasks of every registered stage (no model, no GPU) and the
    scene readers (:data:`pipelines.load.READ_MODULES`): what a local cluster's worker imports
    as it starts. Read from the stage registry, which imports no stage code; the runner
    (``pipelines.engine.run``, with the product writers and their plotting) is not imported:
    no tile task needs it."""
    from pipelines.load import READ_MODULES
    from pipelines.stages.registry import get_stage, list_stages

    stages = [get_stage(n) for n in list_stages()]
    modules = [
        s.function.partition(":")[0]
        for s in stages
        if isinstance(s.function, str) and s.scope == "tile" and not s.models and not s.gpu
    ]
    return list(dict.fromkeys([*READ_MODULES, *modules]))


#: Functions (``module:function``) a worker's preload calls once its modules are imported:
#: each loads what a stage's first chunk would otherwise load on the run's critical path
#: (haze_index's numba kernels, compiled or read from numba's cache: about 1.5 s in a fresh
#: process on this machine).
WORKER_WARMUPS = ("pipelines.stages.kernels:warm",)


def prepare_worker(threads: int) -> int:
    """Import :func:`worker_modules`, limit OpenCV's pool to the worker's ``threads``
    (:func:`pipelines.load.limit_native_threads`), then call :data:`WORKER_WARMUPS`; the
    number of modules imported. A worker forked from the fork server finds all of it loaded."""
    from pipelines.load import limit_native_threads

    n = load_worker_image()
    limit_native_threads(threads)
    return n


def load_worker_image() -> int:
    """Import :func:`worker_modules`, then call :data:`WORKER_WARMUPS` (best effort: one that
    fails is logged, and the stage pays it in its first chunk as it would anyway); the number
    of modules imported. Runs in a worker's preload and in the fork server
    (:mod:`operators.fork_server`)."""
    import importlib

    from pipelines.load import import_modules

    n = import_modules(worker_modules())
    for target in WORKER_WARMUPS:
        module, _, name = target.partition(":")
        try:
            getattr(importlib.import_module(module), name)()
        except Exception as exc:
            log.warning("worker warm-up %s failed: %s", target, exc)
    return n


#: The preload threads this process started (a local cluster's worker or scheduler).
_PRELOAD: list[threading.Thread] = []


def dask_setup(server: object) -> None:
    """Dask's preload hook, on a local cluster's workers and on its scheduler: starts
    :func:`prepare_worker` in a thread as the process starts, so that the readers and the CPU
    tile stages are imported while the run plans and prepares its cubes, not when its first
    graph arrives; the cluster's start does not wait for them (whatever needs one waits on
    Python's import lock).

    A worker takes its thread count from ``server.state.nthreads`` (OpenCV limited to it).
    The scheduler imports the same modules without touching OpenCV: it runs no filter, but it
    unpickles every graph it is sent (``update_graph``), which imports the module of each task
    function; without the preload a fresh scheduler paid those imports (1.5-4 s on this
    machine) between the run's first ``client.compute`` and its first task."""
    from distributed import Scheduler

    if isinstance(server, Scheduler):
        thread = threading.Thread(target=import_worker_modules, daemon=True)
    else:
        threads = getattr(getattr(server, "state", None), "nthreads", None) or 1
        thread = threading.Thread(target=prepare_worker, args=(int(threads),), daemon=True)
    _PRELOAD.append(thread)
    thread.start()


def import_worker_modules() -> int:
    """Import :func:`worker_modules` (nothing else: a scheduler's preload); how many."""
    from pipelines.load import import_modules

    return import_modules(worker_modules())


#: Seconds :func:`wait_prepared` waits for a cluster's preloads (a loaded machine: tens of s).
PREPARE_WAIT_S = 120.0


async def preloaded(timeout_s: float = PREPARE_WAIT_S) -> bool:
    """Wait (``Client.run`` / ``run_on_scheduler``: on the event loop, without blocking it)
    until this process's preload thread (:func:`dask_setup`) is done; False when it is still
    running after ``timeout_s`` seconds. A process started without the preload has none: True."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while any(t.is_alive() for t in _PRELOAD):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def wait_prepared(client: Client, timeout_s: float = PREPARE_WAIT_S) -> None:
    """Wait until the scheduler and every worker of ``client``'s cluster have finished their
    preload (:func:`dask_setup`): the state of a long-running cluster, whose processes have
    imported the stages before a run comes. TransientIOError naming the processes that are
    still importing after ``timeout_s`` seconds."""
    done = dict(client.run(preloaded, timeout_s))
    done["scheduler"] = client.run_on_scheduler(preloaded, timeout_s)
    late = sorted(name for name, ok in done.items() if not ok)
    if late:
        raise TransientIOError(
            f"the Dask cluster's {late} still importing their modules after {timeout_s:.0f} s"
        )


#: What a local cluster's fork server imports before forking workers: Dask's worker, then
#: :mod:`operators.fork_server` (readers, CPU tile stages, compiled kernels).
FORK_SERVER_PRELOAD = ("distributed", "operators.fork_server")


def check_worker_start(method: str) -> None:
    """BadInputError unless this platform can start processes with ``method``."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if method not in methods:
        raise BadInputError("dask.worker_start", method, f"one of {methods} on this platform")


def worker_context(method: str) -> None:
    """Have this process's Nannies start workers with ``method`` (``forkserver``: forked from
    one server that has loaded :data:`FORK_SERVER_PRELOAD`; ``spawn``: fresh interpreters).
    The fork server starts with the first worker and dies with this process; a module it fails
    to import is skipped there (the worker's preload then imports it)."""
    import dask
    from distributed.utils import get_mp_context

    check_worker_start(method)
    dask.config.set({"distributed.worker.multiprocessing-method": method})
    context = get_mp_context()  # Dask's own fork server preload, replaced below
    if method == "forkserver":
        context.set_forkserver_preload(list(FORK_SERVER_PRELOAD))


def _serve(config_json: str, address_file: str, parent_pid: int) -> None:
    """Run a LocalCluster (+ GPU-declaring workers) until SIGTERM or until ``parent_pid`` is
    gone; write its address first."""
    from distributed import LocalCluster, Nanny

    config = DaskConfig.model_validate(json.loads(config_json))
    worker_context(config.worker_start)
    cluster = LocalCluster(
        n_workers=config.n_workers,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        processes=True,
        dashboard_address=None,
        preload=[WORKER_PRELOAD],
        scheduler_kwargs={"preload": [WORKER_PRELOAD]},
    )
    for i in range(config.gpu_workers):
        spec = {
            "cls": Nanny,
            "options": {
                "nthreads": config.threads_per_worker,
                "memory_limit": config.memory_limit,
                "resources": {"GPU": 1},
                "preload": [WORKER_PRELOAD],
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

    def on_parent_lost() -> None:
        # Nothing is left to hand results to: the process group (this process and its worker
        # processes) goes at once, without a graceful close that a loaded machine can stretch.
        os.killpg(os.getpgid(0), signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    watch_parent(parent_pid, on_parent_lost)
    tmp = address_file + ".tmp"
    Path(tmp).write_text(json.dumps({"address": cluster.scheduler_address}))
    os.replace(tmp, address_file)
    while not stopping:
        time.sleep(0.2)
    with contextlib.suppress(Exception):
        cluster.close(timeout=5)
    # Whatever worker process outlived the close goes with this process group (its leader).
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
