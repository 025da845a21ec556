"""The embedded Airflow: SQLite metadata DB under ``$TERRAPIPE_HOME/airflow``, this repo's
``dags/`` folder, the pools derived from the stage registry, and ``dag.test()`` runs.

Production deploys the same ``dags/`` folder with the Helm chart (see ``infra/``); nothing here
is used there.

One run at a time uses a home's SQLite DB: :func:`home_lock` (an ``fcntl`` lock on a file in
``AIRFLOW_HOME``) makes a second run wait, saying for whom. SIGINT and SIGTERM cancel an embedded
run (:class:`SignalCancel`): its Dask cluster is stopped, the run is recorded as failed and
:class:`~pipelines.errors.RunCancelled` is raised (exit 130 / 143).
"""

from __future__ import annotations

import _thread
import contextlib
import datetime as dt
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from pipelines.config import terrapipe_home
from pipelines.errors import RunCancelled, TerrapipeError

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)

#: The lock file of a home's embedded DB (in ``AIRFLOW_HOME``); it names its holder.
LOCK_FILE = ".terrapipe-db.lock"
#: Seconds between two interrupts of the main thread while a cancelled run winds down.
CANCEL_INTERRUPT_S = 0.5

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"

#: Concurrent GPU tasks allowed by the ``gpu`` pool (one per GPU worker of the cluster).
GPU_POOL_SLOTS = int(os.environ.get("TERRAPIPE_GPU_POOL_SLOTS", "1"))


def configure_environment() -> Path:
    """Point Airflow at a project-local home and this repo's DAGs (before importing airflow)."""
    home = Path(os.environ.get("AIRFLOW_HOME") or terrapipe_home() / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "60")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    return Path(os.environ["AIRFLOW_HOME"])


def ensure_airflow() -> Path:
    """Create the metadata DB once and the pools the registry needs; returns AIRFLOW_HOME."""
    home = configure_environment()
    marker = home / ".terrapipe-db-ready"
    if not marker.exists():
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        if proc.returncode != 0:
            raise TerrapipeError(f"airflow db migrate failed: {proc.stderr[-2000:]}")
        marker.touch()
    ensure_pools()
    return home


def ensure_pools() -> dict[str, int]:
    """Create the Airflow pools the stage registry asks for (``gpu`` for GPU stage groups)."""
    from airflow.utils.session import create_session

    from operators.provision import GPU_POOL, write_pool
    from pipelines.stages.registry import registry_groups

    pools = {g.pool: GPU_POOL_SLOTS for g in registry_groups() if g.pool != "default_pool"}
    pools.setdefault(GPU_POOL, GPU_POOL_SLOTS)
    with create_session() as session:
        for name, slots in pools.items():
            write_pool(name, slots, session)
    return pools


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold the embedded DB of ``home`` for this process. A second run sharing the home waits
    (one line says for whom) instead of failing on SQLite; the lock goes when this process
    does, killed or not."""
    import fcntl

    path = Path(home) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(errors="replace").strip() or "another process"
            log.warning("waiting for the embedded Airflow DB at %s, held by %s", home, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class SignalCancel:
    """SIGINT and SIGTERM cancel what runs inside (``dag.test()``, in the main thread).

    Airflow's task runner turns a KeyboardInterrupt into a failed task and replaces the SIGTERM
    handler with its own (which ignores it), so the signal is taken from a wakeup fd, which every
    Python-handled signal writes to: a watcher thread stops the Dask clusters this process
    started, then interrupts the main thread until the interrupt escapes ``dag.test()``. On exit
    the interrupt is swallowed and ``signum`` says which signal cancelled (None when none did).
    Outside the main thread it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._quiet = False
        self._done = threading.Event()
        self._active = False

    def checkpoint(self) -> None:
        """Raise KeyboardInterrupt once a signal cancelled the run (between two tasks, where
        nothing swallows it)."""
        if self.signum is not None and not self._quiet:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def between_tasks(self) -> Iterator[None]:
        """Call :meth:`checkpoint` before and after every task ``dag.test()`` runs in-process
        (its module-level ``_run_task``), so a cancel ends the run at the next task boundary."""
        try:
            from airflow.sdk.definitions import dag as dag_module
        except ImportError:
            yield
            return
        run_task = getattr(dag_module, "_run_task", None)
        if run_task is None:
            yield
            return

        def checked(*args: Any, **kwargs: Any) -> Any:
            self.checkpoint()
            result = run_task(*args, **kwargs)
            self.checkpoint()
            return result

        dag_module._run_task = checked
        try:
            yield
        finally:
            dag_module._run_task = run_task

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._quiet:
            return
        if self.signum is None:
            self.signum = signum
        raise KeyboardInterrupt

    def _watch(self, read_fd: int) -> None:
        from operators.dask_cluster import stop_started_clusters

        try:
            while not self._done.is_set():
                data = os.read(read_fd, 64)
                if not data:
                    return
                got = [b for b in data if b in self.SIGNALS]
                if not got:
                    continue
                if self.signum is None:
                    self.signum = got[0]
                log.warning("%s: cancelling the run", signal.Signals(self.signum).name)
                stop_started_clusters()
                while not self._done.wait(CANCEL_INTERRUPT_S):
                    _thread.interrupt_main(signal.SIGINT)
                return
        finally:
            os.close(read_fd)

    def __enter__(self) -> SignalCancel:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._active = True
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._old = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handler)
        self._old_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(
            target=self._watch, args=(read_fd,), name="terrapipe-cancel", daemon=True
        )
        self._watcher.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not self._active:
            return False
        self._quiet = True
        self._done.set()
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._write_fd)  # the watcher reads EOF and ends
        self._watcher.join()
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._active = False
        return (
            exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and bool(self.signum)
        )


def record_cancelled(dag_id: str) -> list[str]:
    """Mark the running runs of ``dag_id`` in this home (this process's: it holds the home
    lock) and their unfinished tasks failed; returns their run ids."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, State, TaskInstanceState

    with create_session() as session:
        runs = (
            session.query(DagRun)
            .filter(DagRun.dag_id == dag_id, DagRun.state == DagRunState.RUNNING)
            .all()
        )
        for run in runs:
            for ti in run.get_task_instances(session=session):
                if ti.state not in State.finished:
                    ti.state = TaskInstanceState.FAILED
            run.state = DagRunState.FAILED
        return [run.run_id for run in runs]


def load_dag(dag_id: str) -> DAG:
    """Import ``dags/<dag_id>.py`` and return its DAG object."""
    path = DAGS_FOLDER / f"{dag_id}.py"
    if not path.exists():
        known = sorted(p.stem for p in DAGS_FOLDER.glob("*.py") if not p.stem.startswith("_"))
        from pipelines.errors import BadInputError

        raise BadInputError("dag_id", dag_id, f"one of {known}")
    spec = importlib.util.spec_from_file_location(f"terrapipe_dag_{dag_id}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def run_dag(
    dag_id: str, conf: dict[str, Any], logical_date: dt.datetime | None = None
) -> dict[str, Any]:
    """Run a DAG once in-process (``dag.test()``) and return its state and the tasks' states.

    Holds the home's DB lock throughout; SIGINT / SIGTERM stop the run's cluster, record the run
    as failed and raise :class:`~pipelines.errors.RunCancelled`."""
    home = configure_environment()
    with home_lock(home):
        return _run_dag(dag_id, conf, logical_date)


def _run_dag(dag_id: str, conf: dict[str, Any], logical_date: dt.datetime | None) -> dict[str, Any]:
    from operators.dask_cluster import stop_started_clusters

    ensure_airflow()
    dag = load_dag(dag_id)
    cancel = SignalCancel()
    with cancel, cancel.between_tasks():
        run = dag.test(logical_date=logical_date, run_conf=conf)
    if cancel.signum is not None:
        stop_started_clusters()
        run_ids: list[str] = []
        try:
            run_ids = record_cancelled(dag_id)
        except Exception:  # the DB may be mid-write; the exit code is the record that counts
            log.exception("could not record the cancelled run of %s", dag_id)
        raise RunCancelled(cancel.signum, f"{dag_id} {', '.join(run_ids)}".strip())
    states: dict[str, str] = {}
    seconds: dict[str, float] = {}
    summary: dict[str, Any] | None = None
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = str(ti.state)
        if ti.duration is not None:
            seconds[key] = round(float(ti.duration), 2)
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter_by(dag_id=dag_id, run_id=run.run_id, task_id="finalize", key="return_value")
                .first()
            )
            value = XComModel.deserialize_value(row) if row is not None else None
            summary = value if isinstance(value, dict) else None
    except Exception:  # the summary is a convenience; states are the record
        summary = None
    return {
        "dag_id": dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "tasks": states,
        "task_seconds": seconds,
        "summary": summary,
    }
