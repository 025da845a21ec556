"""A local STAC API on loopback that serves an archive: ``rustac serve`` as a subprocess.

The archive layout is ``stac/collections/<collection>.json`` (STAC Collections) and
``stac/items/<collection>.json`` (one FeatureCollection per collection), under a local directory or
any fsspec URL (``s3://``: the files are copied to a local run directory first, since the server
reads local files). rustac keeps the items in memory; its memory backend answers ``bbox``,
``intersects``, ``datetime``, ``collections``, ``ids`` and paging, but not ``query``/``filter``
(see :mod:`pipelines.catalog.search`, which filters cloud cover on the client for such servers).

The server is recorded in a PID file (JSON: pid, url, archive, log, shared) so that another process
can stop it: by default ``<archive>/.stac-server.json`` for a local archive, or the run directory.

Runs share one server per archive through :func:`shared_server`: each run registers itself as a
user (a file named after its pid under ``.stac-server.users/``, under an OS file lock), and the
last user to leave stops the server, so the first run to finish never stops it under a second
one; users whose process died are pruned. A server a run did not start (``terrapipe stac serve
--detach``) is used and never stopped by a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.errors import BadInputError, TransientIOError

PID_FILE_NAME = ".stac-server.json"
DEFAULT_HOST = "127.0.0.1"
#: Servers started by this process, kept so their Popen handles are reaped, not garbage collected.
_CHILDREN: dict[int, subprocess.Popen] = {}

#: Seconds a stopped server is given to exit after SIGTERM, then after SIGKILL.
STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class StacServer:
    """A running local STAC API."""

    url: str
    """Root URL, e.g. ``http://127.0.0.1:41234``."""
    pid: int
    """Process id of the ``rustac serve`` process."""
    pid_file: Path
    """JSON file recording the server (read by :func:`stop_server`)."""
    archive: str
    """The archive it serves."""
    log: Path
    """The server's stdout/stderr."""
    shared: bool = False
    """Started by :func:`shared_server` for runs (stopped by the last of them)."""


def venv_executable(name: str, install_hint: str) -> str:
    """Path of a console script: beside the running Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BadInputError(name, None, f"the {name} command installed ({install_hint})")
    return found


def rustac_executable() -> str:
    """Path of the ``rustac`` CLI."""
    return venv_executable("rustac", "pip install rustac")


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def archive_files(archive_url: str) -> tuple[list[str], list[str]]:
    """URLs of the collection files and item-collection files of an archive."""
    fs, root = storage.filesystem(archive_url)
    stac = storage.join(root, "stac")
    cols = sorted(fs.glob(storage.join(stac, "collections", "*.json")))
    items = sorted(fs.glob(storage.join(stac, "items", "*.json")))
    if not items:
        raise BadInputError(
            "archive",
            archive_url,
            "an archive with stac/items/<collection>.json item collections",
            "build one with `terrapipe demo build` or pipelines.testing.stac.write_archive",
        )
    proto = archive_url.split("://", 1)[0] + "://" if storage.is_remote(archive_url) else ""
    return [proto + c for c in cols], [proto + i for i in items]


def default_run_dir(archive_url: str) -> Path:
    """Where the PID file, log and local copies go: the archive itself when it is local."""
    if not storage.is_remote(archive_url):
        return Path(archive_url.removeprefix("file://"))
    digest = hashlib.sha1(archive_url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"terrapipe-stac-{digest}"


def _local_copies(archive_url: str, files: list[str], run_dir: Path) -> list[str]:
    if not storage.is_remote(archive_url):
        return [f.removeprefix("file://") for f in files]
    out = []
    for url in files:
        kind = url.rstrip("/").split("/")[-2]  # collections | items
        local = run_dir / "stac" / kind / url.rstrip("/").split("/")[-1]
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(storage.read_bytes(url))
        out.append(str(local))
    return out


def _answers(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start_server(
    archive_url: str,
    *,
    port: int | None = None,
    host: str = DEFAULT_HOST,
    run_dir: str | os.PathLike | None = None,
    pid_file: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> StacServer:
    """Start ``rustac serve`` on ``host:port`` (a free port when None) holding the archive.

    Returns once the API root answers. The process runs in its own session, so it outlives the
    caller until :func:`stop_server`. Raises BadInputError when the archive has no item files or
    a given port is taken, TransientIOError when the server does not answer within ``timeout`` s.
    """
    run = Path(run_dir) if run_dir is not None else default_run_dir(archive_url)
    run.mkdir(parents=True, exist_ok=True)
    cols, items = archive_files(archive_url)
    hrefs = _local_copies(archive_url, cols + items, run)
    pid_path = Path(pid_file) if pid_file is not None else run / PID_FILE_NAME
    existing = _live_server(pid_path, archive_url)
    if existing is not None:
        raise BadInputError(
            "stac server",
            existing.url,
            "no server already running for this archive",
            f"stop it with `terrapipe stac stop --pid-file {pid_path}`",
        )
    attempts = 1 if port is not None else 3
    log = run / "stac-server.log"
    for attempt in range(attempts):
        p = port if port is not None else free_port(host)
        url = f"http://{host}:{p}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    rustac_executable(),
                    "serve",
                    "--addr",
                    f"{host}:{p}",
                    "--create-collections",
                    *hrefs,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(url):
                server = StacServer(url, proc.pid, pid_path, archive_url, log)
                _CHILDREN[proc.pid] = proc
                _write_pid_file(server)
                return server
            time.sleep(0.1)
        if proc.poll() is None:  # alive but silent: give up
            _terminate(proc.pid, proc=proc)
            raise TransientIOError(
                f"the STAC server for {archive_url} did not answer at {url} within {timeout:.0f} s"
                f"; log: {_tail(log)}"
            )
        if port is not None or attempt == attempts - 1:
            raise BadInputError(
                "port" if port is not None else "stac server",
                p,
                "a free TCP port and a readable archive",
                f"rustac serve exited with {proc.returncode}: {_tail(log)}",
            )
    raise AssertionError("unreachable")


def _write_pid_file(server: StacServer) -> None:
    server.pid_file.parent.mkdir(parents=True, exist_ok=True)
    server.pid_file.write_text(
        json.dumps(
            {
                "pid": server.pid,
                "url": server.url,
                "archive": server.archive,
                "log": str(server.log),
                "shared": server.shared,
            }
        )
    )


def running_server(archive_url: str) -> StacServer | None:
    """The server already serving ``archive_url`` (started with its default PID file), if any."""
    return _live_server(default_run_dir(archive_url) / PID_FILE_NAME, archive_url)


def _live_server(pid_file: Path, archive_url: str) -> StacServer | None:
    """The server ``pid_file`` records, when it serves ``archive_url`` and answers."""
    existing = read_pid_file(pid_file)
    if (
        existing is not None
        and _same_archive(existing.archive, archive_url)
        and _is_our_server(existing.pid)
        and _answers(existing.url)
    ):
        return existing
    return None


def _same_archive(served: str, archive_url: str) -> bool:
    """True when a PID file's server serves ``archive_url`` (a copied archive carries the PID
    file of the server of its original, which serves other files)."""
    if storage.is_remote(served) or storage.is_remote(archive_url):
        return served.rstrip("/") == archive_url.rstrip("/")
    local = [Path(u.removeprefix("file://")).resolve() for u in (served, archive_url)]
    return local[0] == local[1]


def read_pid_file(pid_file: str | os.PathLike) -> StacServer | None:
    """The server recorded in ``pid_file``, or None when the file is missing or unreadable."""
    path = Path(pid_file)
    try:
        d = json.loads(path.read_text())
        return StacServer(
            d["url"], int(d["pid"]), path, d["archive"], Path(d["log"]), bool(d.get("shared"))
        )
    except (OSError, ValueError, KeyError):
        return None


def _is_our_server(pid: int) -> bool:
    """True when ``pid`` is alive and is a ``rustac serve`` process (not a recycled pid)."""
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(Path(c).name == "rustac" for c in cmd[:2]) and "serve" in cmd


def _terminate(pid: int, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM ``pid``, SIGKILL it after :data:`STOP_WAIT_S`; never raises for a process that
    will not go (a killed server of another run's process stays a zombie until that process
    reaps it: it serves nothing any more)."""
    import psutil

    timeout = STOP_WAIT_S
    child = _CHILDREN.pop(pid, None) or proc
    if child is not None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout)
        return

    try:
        target = psutil.Process(pid)
        target.send_signal(signal.SIGTERM)
        try:
            target.wait(timeout)
        except psutil.TimeoutExpired:
            target.kill()
            with suppress(psutil.TimeoutExpired):
                target.wait(timeout)
    except psutil.NoSuchProcess:
        pass


def stop_server(server: StacServer | str | os.PathLike) -> bool:
    """Stop a server (given itself or its PID file) and remove the PID file.

    Returns True when a running server was stopped, False when none was running.
    """
    if not isinstance(server, StacServer):
        recorded = read_pid_file(server)
        if recorded is None:
            return False
        server = recorded
    running = _is_our_server(server.pid)
    if running:
        _terminate(server.pid)
    server.pid_file.unlink(missing_ok=True)
    return running


@contextmanager
def serve_archive(
    archive_url: str,
    *,
    port: int | None = None,
    host: str = DEFAULT_HOST,
    run_dir: str | os.PathLike | None = None,
    pid_file: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> Iterator[StacServer]:
    """Context manager: a local STAC API holding ``archive_url``, stopped on exit.

    Keyword arguments are those of :func:`start_server`.
    """
    server = start_server(
        archive_url, port=port, host=host, run_dir=run_dir, pid_file=pid_file, timeout=timeout
    )
    try:
        yield server
    finally:
        stop_server(server)


USERS_DIR_NAME = ".stac-server.users"


@contextmanager
def _registry(run_dir: Path) -> Iterator[Path]:
    """The users folder of an archive's server, under an exclusive OS file lock."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    users = run_dir / USERS_DIR_NAME
    users.mkdir(exist_ok=True)
    with open(run_dir / ".stac-server.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield users
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _live_users(users: Path) -> list[Path]:
    """The registered users whose process is alive (the others are removed)."""
    import psutil

    live = []
    for path in users.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and psutil.pid_exists(int(pid)):
            live.append(path)
        else:
            path.unlink(missing_ok=True)
    return live


@contextmanager
def shared_server(archive_url: str, *, timeout: float = 60.0) -> Iterator[StacServer]:
    """The local STAC API of ``archive_url`` for the duration, shared by concurrent runs.

    Uses the server already running for the archive or starts one (recorded as ``shared``);
    on exit the server is stopped only when it is shared and no other live run uses it.
    """
    import uuid

    run = default_run_dir(archive_url)
    me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with _registry(run) as users:
        server = running_server(archive_url)
        if server is None:
            started = start_server(archive_url, run_dir=run, timeout=timeout)
            server = StacServer(
                started.url, started.pid, started.pid_file, started.archive, started.log, True
            )
            _write_pid_file(server)
        (users / me).write_text(server.url)
    try:
        yield server
    finally:
        with _registry(run) as users:
            (users / me).unlink(missing_ok=True)
            if server.shared and not _live_users(users):
                stop_server(server)
