"""The run's Dask cluster: it dies with its parent, a gone cluster is restarted for the task,
a dead address fails fast with a transient error."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operators import dask_cluster
from pipelines import processes
from pipelines.config import DaskConfig
from pipelines.errors import TransientIOError

# A middle process starts a child watching it, prints the child's pid and sleeps.
MIDDLE = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(600)
"""
# The child: watch_parent on its parent (pid given, as start_cluster gives it); when the
# parent is gone, write the flag file and exit.
CHILD = """
import os, sys, time
from pathlib import Path
from operators.dask_cluster import watch_parent
def lost():
    Path(sys.argv[1]).write_text("lost")
    os._exit(0)
watch_parent(int(sys.argv[2]), lost, interval_s=0.05)
time.sleep(600)
"""


def _wait_for(predicate, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_watchdog_notices_its_parent_killed(tmp_path):
    flag = tmp_path / "lost"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    middle = subprocess.Popen(
        [sys.executable, "-c", MIDDLE, CHILD, str(flag)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        child_pid = int(middle.stdout.readline())
        assert not flag.exists()
        middle.kill()
        middle.wait()
        assert _wait_for(flag.exists), "the watchdog did not notice its parent's SIGKILL"
        assert _wait_for(lambda: not processes.is_alive(child_pid))
    finally:
        middle.kill()
        with contextlib.suppress(Exception):
            os.kill(child_pid, signal.SIGKILL)


def test_is_alive_sees_an_exited_child_and_a_running_process():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert _wait_for(lambda: not processes.is_alive(proc.pid))
    assert processes.is_alive(os.getpid())


class _Client:
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_cluster(monkeypatch):
    calls: dict[str, list] = {"start": [], "stop": [], "connect": []}

    def start(config):
        calls["start"].append(config)
        return dask_cluster.ClusterHandle(address="tcp://127.0.0.1:2", pid=12345)

    def connect(address, timeout_s=30.0):
        client = _Client(address)
        calls["connect"].append(client)
        return client

    monkeypatch.setattr(dask_cluster, "start_cluster", start)
    monkeypatch.setattr(dask_cluster, "stop_cluster", lambda h: calls["stop"].append(h))
    monkeypatch.setattr(dask_cluster, "connect", connect)
    return calls


def test_a_gone_cluster_is_restarted_for_the_task_and_stopped_after(fake_cluster):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cluster = {"address": "tcp://127.0.0.1:1", "pid": dead.pid}
    with dask_cluster.run_client(cluster, DaskConfig()) as client:
        assert client.address == "tcp://127.0.0.1:2"
        assert fake_cluster["stop"] == []
    assert len(fake_cluster["start"]) == 1
    assert [h.address for h in fake_cluster["stop"]] == ["tcp://127.0.0.1:2"]
    assert client.closed


def test_a_live_cluster_is_used_as_it_is(fake_cluster):
    cluster = {"address": "tcp://127.0.0.1:1", "pid": os.getpid()}
    with dask_cluster.run_client(cluster, DaskConfig()) as client:
        assert client.address == "tcp://127.0.0.1:1"
    assert fake_cluster["start"] == [] and fake_cluster["stop"] == []
    # An external cluster (no pid) too.
    with dask_cluster.run_client({"address": "tcp://h:8786", "pid": None}, DaskConfig()) as c:
        assert c.address == "tcp://h:8786"
    assert fake_cluster["start"] == []


def test_stop_started_clusters_stops_what_this_process_started(monkeypatch):
    stopped = []
    handle = dask_cluster.ClusterHandle(address="tcp://127.0.0.1:3", pid=424242)
    monkeypatch.setitem(dask_cluster._STARTED, 424242, handle)
    monkeypatch.setattr(dask_cluster, "stop_cluster", lambda h: stopped.append(h))
    assert dask_cluster.stop_started_clusters() == [424242]
    assert stopped == [handle]


def test_a_dead_address_fails_fast_as_transient():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    with pytest.raises(TransientIOError, match="did not answer"):
        dask_cluster.connect(f"tcp://127.0.0.1:{port}", timeout_s=1.0)


def test_the_dask_default_connection_is_read_through_airflows_hook(monkeypatch):
    from airflow.sdk import BaseHook

    from operators.dask_cluster import configured_address
    from pipelines.config import DaskConfig

    monkeypatch.delenv("TERRAPIPE_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_DASK_DEFAULT", raising=False)
    assert configured_address(DaskConfig()) is None  # no connection: the run starts its own
    monkeypatch.setenv("AIRFLOW_CONN_DASK_DEFAULT", "tcp://dask-scheduler.svc:8790")
    assert configured_address(DaskConfig()) == "tcp://dask-scheduler.svc:8790"

    class Stored:  # a connection found only in the metadata DB (as a task process sees it)
        host, port = "db-scheduler", None

    monkeypatch.delenv("AIRFLOW_CONN_DASK_DEFAULT")
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: Stored()))
    assert configured_address(DaskConfig()) == "tcp://db-scheduler:8786"
    monkeypatch.setenv("TERRAPIPE_DASK_ADDRESS", "tcp://env:1")
    assert configured_address(DaskConfig()) == "tcp://env:1"


# ---- a local cluster's workers: ready before the first task, OpenCV within their threads ----

WORKER_START = """
import sys, cv2
from operators.dask_cluster import prepare_worker, worker_modules
cv2.setNumThreads(4)
n = prepare_worker(1)
print(n == len(worker_modules()), cv2.getNumThreads())
heavy = ("pipelines.engine.run", "pipelines.products", "matplotlib")
print(sorted(m for m in heavy if m in sys.modules))
print("numba" in sys.modules)  # haze_index's kernels loaded (WORKER_WARMUPS)
"""


def test_a_local_clusters_workers_import_the_cpu_tile_stages_not_the_models():
    from pipelines.load import READ_MODULES

    modules = dask_cluster.worker_modules()
    assert modules[: len(READ_MODULES)] == list(READ_MODULES)
    assert {"pipelines.stages.cloud_mask", "pipelines.stages.flood"} <= set(modules)
    assert "pipelines.stages.learned" not in modules  # GPU model stages
    assert "pipelines.engine.season_yield" not in modules  # province-scope stages
    assert dask_cluster.__name__ == dask_cluster.WORKER_PRELOAD
    assert callable(dask_cluster.dask_setup)


def test_a_starting_worker_imports_no_runner_and_limits_opencv_to_its_threads():
    """What the preload runs in a fresh process: the stages and readers, not the runner with
    its product writers and plotting (no tile task needs them); OpenCV's pool at the worker's
    thread count."""
    out = subprocess.run(
        [sys.executable, "-c", WORKER_START], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["True 1", "[]", "True"]


def test_a_workers_preload_calls_its_warmups_and_survives_a_failing_one(monkeypatch, caplog):
    import importlib

    for target in dask_cluster.WORKER_WARMUPS:  # each names a function that exists
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    called: list[str] = []
    monkeypatch.setattr(sys.modules[__name__], "warm_ok", lambda: called.append("ok"), False)

    def broken() -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setattr(sys.modules[__name__], "warm_broken", broken, False)
    monkeypatch.setattr(
        dask_cluster, "WORKER_WARMUPS", (f"{__name__}:warm_broken", f"{__name__}:warm_ok")
    )
    monkeypatch.setattr(dask_cluster, "worker_modules", lambda: ["pipelines.stages.water"])
    import cv2

    before = cv2.getNumThreads()
    try:
        assert dask_cluster.prepare_worker(1) == 1
    finally:
        cv2.setNumThreads(before)
    assert called == ["ok"]
    assert "warm_broken failed: no compiler" in caplog.text


def test_opencv_threads_are_limited_and_a_bad_count_is_named():
    import cv2

    from pipelines.errors import BadInputError
    from pipelines.load import import_modules, limit_native_threads

    before = cv2.getNumThreads()
    try:
        assert limit_native_threads(1) == 1
        assert import_modules(["pipelines.stages.water"], threads=2) == 1
        assert cv2.getNumThreads() == 2
        with pytest.raises(BadInputError, match="threads"):
            limit_native_threads(0)
    finally:
        cv2.setNumThreads(before)


def test_a_warmed_worker_limits_opencv_to_its_own_threads():
    """``import_in_background`` sent by the runner to a worker (Client.run): the worker's
    thread count read from the worker itself."""
    import asyncio
    import threading

    import cv2

    from pipelines.load import import_in_background

    class Worker:
        class state:  # the shape of distributed.Worker.state
            nthreads = 3

    before = cv2.getNumThreads()
    started = set(threading.enumerate())
    try:
        asyncio.run(import_in_background(["pipelines.stages.water"], dask_worker=Worker()))
        for thread in set(threading.enumerate()) - started:
            thread.join(60)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


# ---- a local cluster's scheduler: the stages imported before the first graph arrives ----


def test_a_schedulers_preload_imports_the_stages_without_touching_opencv(monkeypatch):
    """The scheduler unpickles every graph (importing each task function's module): its
    preload imports the same modules as a worker's, in a thread, without limiting OpenCV."""
    import cv2
    from distributed import Scheduler

    calls: list[str] = []
    monkeypatch.setattr(dask_cluster, "_PRELOAD", [])
    monkeypatch.setattr(dask_cluster, "import_worker_modules", lambda: calls.append("scheduler"))
    monkeypatch.setattr(dask_cluster, "prepare_worker", lambda n: calls.append(f"worker {n}"))

    class Worker:
        class state:  # the shape of distributed.Worker.state
            nthreads = 2

    before = cv2.getNumThreads()
    dask_cluster.dask_setup(Scheduler.__new__(Scheduler))  # an instance, never started
    dask_cluster.dask_setup(Worker())
    for thread in dask_cluster._PRELOAD:
        thread.join(60)
    assert calls == ["scheduler", "worker 2"] or calls == ["worker 2", "scheduler"]
    assert len(dask_cluster._PRELOAD) == 2
    assert cv2.getNumThreads() == before


def _stages_imported() -> bool:
    return "pipelines.stages.water" in sys.modules and "pipelines.load" in sys.modules


def _worker_state() -> tuple[bool, bool, int]:
    """Stages and readers imported, numba's kernels loaded, the parent process's pid."""
    return _stages_imported(), "numba" in sys.modules, os.getppid()


def test_a_local_clusters_scheduler_has_imported_the_stages_before_any_graph(monkeypatch):
    """A LocalCluster started for a run: its scheduler imports the CPU tile stages as it
    starts (its preload), before any graph arrives; ``wait_prepared`` waits for it. Its
    worker is forked from the fork server (the default ``worker_start``): it has the stages and
    the compiled kernels as it registers, without waiting for its own preload."""
    from pipelines.config import DaskConfig

    monkeypatch.delenv(dask_cluster.ENV_ADDRESS, raising=False)
    monkeypatch.setattr(dask_cluster, "configured_address", lambda config: None)
    config = DaskConfig(n_workers=1, threads_per_worker=1, gpu_workers=0)
    assert config.worker_start == "forkserver"
    handle = dask_cluster.start_cluster(config)
    try:
        client = dask_cluster.connect(handle.address)
        try:
            client.wait_for_workers(1, timeout=120)
            [(stages, kernels, parent)] = client.run(_worker_state).values()
            assert stages and kernels
            assert parent != handle.pid  # the fork server's child, not the cluster process's
            dask_cluster.wait_prepared(client)
            assert client.run_on_scheduler(_stages_imported) is True
            assert list(client.run(_stages_imported).values()) == [True]  # its one worker
        finally:
            client.close()
    finally:
        dask_cluster.stop_cluster(handle)


def test_import_worker_modules_imports_every_worker_module():
    assert dask_cluster.import_worker_modules() == len(dask_cluster.worker_modules())
    assert all(name in sys.modules for name in dask_cluster.worker_modules())


def test_a_run_can_wait_until_the_clusters_preloads_are_done(monkeypatch):
    """``wait_prepared`` asks the scheduler and every worker; one still importing after the
    timeout is named in a TransientIOError, and once done the wait returns."""
    import threading

    from distributed import Client

    from pipelines.errors import TransientIOError

    release = threading.Event()
    importing = threading.Thread(target=release.wait, args=(60,), daemon=True)
    monkeypatch.setattr(dask_cluster, "_PRELOAD", [importing])
    importing.start()
    cluster = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    with Client(processes=False, set_as_default=False, **cluster) as client:
        with pytest.raises(TransientIOError, match="scheduler"):
            dask_cluster.wait_prepared(client, timeout_s=0.2)
        release.set()
        dask_cluster.wait_prepared(client, timeout_s=60)
    assert not importing.is_alive()


def test_a_worker_start_the_platform_lacks_is_named():
    from pipelines.errors import BadInputError

    dask_cluster.check_worker_start("spawn")
    with pytest.raises(BadInputError, match=r"dask.worker_start.*vfork"):
        dask_cluster.check_worker_start("vfork")


def test_the_fork_server_starts_even_when_the_worker_modules_fail(monkeypatch, caplog):
    from operators import fork_server

    assert len(dask_cluster.worker_modules()) == fork_server.MODULES_LOADED

    def broken() -> int:
        raise RuntimeError("stage module raised at import")

    monkeypatch.setattr(fork_server, "load_worker_image", broken)
    assert fork_server.load() == 0
    assert "stage module raised at import" in caplog.text


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_handle_owns_its_process_only_on_its_host_and_with_its_start_time():
    proc = _sleeper()
    try:
        started = processes.process_started(proc.pid)
        assert started is not None
        own = dask_cluster.ClusterHandle(
            "tcp://127.0.0.1:1", proc.pid, socket.gethostname(), started
        )
        assert own.owns_process()
        assert dask_cluster.ClusterHandle.from_xcom(own.to_xcom()) == own
        # The same pid on another machine (a task of another Celery worker or pod).
        elsewhere = dataclasses.replace(own, host="another-pod")
        assert not elsewhere.owns_process()
        # The pid given again to another process after the cluster's exited.
        reused = dataclasses.replace(own, started=started - 60.0)
        assert not reused.owns_process()
        # A handle written before hosts and start times were recorded: the pid alone.
        assert dask_cluster.ClusterHandle.from_xcom({"address": own.address, "pid": proc.pid})
        assert dask_cluster.ClusterHandle("tcp://127.0.0.1:1", proc.pid).owns_process()
        # An external cluster is nobody's process.
        assert not dask_cluster.ClusterHandle("tcp://h:8786").owns_process()
        assert dask_cluster.ClusterHandle("tcp://h:8786").to_xcom() == {
            "address": "tcp://h:8786",
            "pid": None,
        }
    finally:
        proc.kill()
        proc.wait()


def test_stopping_a_handle_never_signals_another_process_holding_its_pid():
    proc = _sleeper()
    try:
        started = processes.process_started(proc.pid)
        assert started is not None
        handle = dask_cluster.ClusterHandle("tcp://127.0.0.1:1", proc.pid, "another-pod", started)
        dask_cluster.stop_cluster(handle.to_xcom(), timeout_s=0.5)
        reused = dataclasses.replace(handle, host=socket.gethostname(), started=started - 60.0)
        dask_cluster.stop_cluster(reused, timeout_s=0.5)
        assert proc.poll() is None, "stop_cluster signalled a process that is not the cluster"
        dask_cluster.stop_cluster(dataclasses.replace(reused, started=started), timeout_s=5.0)
        assert _wait_for(lambda: proc.poll() is not None, 10.0)
    finally:
        proc.kill()
        proc.wait()


def test_a_cluster_on_another_machine_is_started_again_for_the_task(fake_cluster):
    cluster = {
        "address": "tcp://127.0.0.1:1",
        "pid": os.getpid(),  # alive here, but another process: the handle is another pod's
        "host": "another-pod",
        "started": processes.process_started(os.getpid()),
    }
    with dask_cluster.run_client(cluster, DaskConfig()) as client:
        assert client.address == "tcp://127.0.0.1:2"
    assert len(fake_cluster["start"]) == 1
    assert [h.address for h in fake_cluster["stop"]] == ["tcp://127.0.0.1:2"]


def test_stopping_the_cluster_of_a_run_with_nothing_to_do_is_a_no_op():
    dask_cluster.stop_cluster({"address": None, "pid": None})
    dask_cluster.stop_cluster({"address": "tcp://h:8786", "pid": None})
