"""Run locks: one writer at a time per (store, province, key), so no product is written twice.

:func:`store_lock` is held for the length of a run (key: the run's window and products), for a
short while around cube metadata changes (key ``cubes``: every run of the province) and, by
whatever process writes a tile (an Airflow task under any executor included), around the tile's
marker check and writes (key ``tile-<tile id>``: every run of the province,
:func:`pipelines.engine.run.tile_lock`). A second run of the same key **waits** up to
``wait_s`` seconds (0: not at all) and then **refuses** with
:class:`~pipelines.errors.BadInputError` (exit 2) naming the holder (host, pid, since): a
scheduler that fires while the previous run still writes gets a clear, non-transient failure
instead of duplicate writes, and a rerun after the first run has finished skips what it wrote.

Where the lock lives (``<store>/<province>/runs/locks/<key>.lock``):

- a local store: an OS file lock (``fcntl.flock``) on that file; it dies with its process, so a
  killed run never blocks the next one. The file holds the holder (JSON) for the message.
- an object store: the lock object itself, created with a conditional write
  (``If-None-Match: *``: S3, MinIO and moto refuse it when the object exists) and deleted on
  release. It records host, pid, the process's start time, since and ``expires``: a lease of
  :data:`LEASE_S` that the holder renews every :data:`LEASE_S` / :data:`RENEWALS_PER_LEASE`
  while it holds the lock, however long that is. A lock whose holder died (killed, its node or
  pod gone: on any host) is taken over once its lease has run out, or at once when its holder
  was on this host and no process with its pid and start time runs there (a pod restarted
  under the same host name reuses small pids at once). A holder that finds its lock taken over
  (it could not renew for a whole lease) logs it and stops renewing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any

from pipelines.errors import BadInputError
from pipelines.processes import process_started, same_process
from pipelines.products.layout import check_name, province_url
from pipelines.storage import filesystem, is_remote, join

#: Seconds an object-store lock stays valid after its holder last renewed it. A process that
#: died holding a lock on another host blocks the lock this long at most.
LEASE_S = 300.0
#: Renewals a lease: a holder renews every 60 s, so a lock is taken over only after four
#: renewals in a row failed (a store that refused or timed out, a process stopped).
RENEWALS_PER_LEASE = 5
_POLL_S = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock (written into the lock file or object)."""

    host: str
    pid: int
    since: str
    """ISO UTC time the lock was taken."""
    key: str
    expires: float = 0.0
    """Unix time after which an object-store lock is stale (0: never, local locks)."""
    started: float | None = None
    """Start time of the holding process (:func:`pipelines.processes.process_started`), which
    tells it from a later process given the same pid (None in locks written before)."""

    def describe(self) -> str:
        said = f"{self.key} held by pid {self.pid} on {self.host} since {self.since}"
        if self.expires:
            lease = dt.datetime.fromtimestamp(self.expires, dt.UTC).isoformat(timespec="seconds")
            said += f", its lease renewed to {lease}"
        return said

    def same_holder(self, other: LockHolder | None) -> bool:
        """Whether ``other`` is this holding of the lock (its lease renewed or not)."""
        return other is not None and dataclasses.replace(other, expires=self.expires) == self

    def renewed(self, lease_s: float) -> LockHolder:
        """This holding with its lease running ``lease_s`` seconds from now."""
        return dataclasses.replace(self, expires=time.time() + lease_s)


def lock_url(store: str, province: str, key: str) -> str:
    """``<store>/<province>/runs/locks/<key>.lock``."""
    return join(province_url(store, province), "runs", "locks", check_name("lock", key) + ".lock")


def run_lock_key(window: tuple[str, str], products: list[str] | tuple[str, ...]) -> str:
    """The lock key of a run: its window and products (``2024-05-01_2024-05-31_<hash>``)."""
    import hashlib

    digest = hashlib.sha1(",".join(sorted(products)).encode()).hexdigest()[:10]
    return f"{window[0]}_{window[1]}_{digest}"


def _me(key: str, lease_s: float) -> LockHolder:
    now = time.time()
    since = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds")
    pid = os.getpid()
    return LockHolder(socket.gethostname(), pid, since, key, now + lease_s, process_started(pid))


def _parse(raw: bytes | str) -> LockHolder | None:
    try:
        return LockHolder(**json.loads(raw))
    except (ValueError, TypeError):
        return None


def _refuse(url: str, holder: LockHolder | None, wait_s: float) -> BadInputError:
    who = holder.describe() if holder else "held by another run"
    return BadInputError(
        "run lock",
        url,
        "no other run holding this lock of the store and province",
        f"{who}; waited {wait_s:.0f} s. Wait for it to finish (a rerun then skips what it"
        " wrote); a lock whose holder died is free once its lease has run out",
    )


@contextlib.contextmanager
def store_lock(
    store: str, province: str, key: str, *, wait_s: float = 0.0, lease_s: float | None = None
) -> Iterator[LockHolder]:
    """Hold the lock ``key`` of a province in ``store`` (see the module docstring), waiting
    up to ``wait_s`` seconds for another holder; ``lease_s``: an object-store lock's lease
    (default :data:`LEASE_S`, read at the call)."""
    url = lock_url(store, province, key)
    if is_remote(url):
        lease = LEASE_S if lease_s is None else lease_s
        with _object_lock(url, key, wait_s, lease) as holder:
            yield holder
    else:
        with _file_lock(url, key, wait_s) as holder:
            yield holder


@contextlib.contextmanager
def _file_lock(url: str, key: str, wait_s: float) -> Iterator[LockHolder]:
    import fcntl

    path = url.removeprefix("file://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f: IO[Any] = open(path, "a+")  # noqa: SIM115 (held open while locked)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    raise _refuse(url, _parse(f.read()), wait_s) from None
                time.sleep(_POLL_S)
        holder = _me(key, 0.0)
        holder = LockHolder(holder.host, holder.pid, holder.since, key)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(holder)))
        f.flush()
        try:
            yield holder
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


def _stale(holder: LockHolder | None) -> bool:
    if holder is None:
        return True  # unreadable: a writer died between create and content? (never: one PUT)
    if holder.expires and holder.expires < time.time():
        return True
    # Its host is this machine (a pod restarted under the same name, as a StatefulSet's are,
    # included): stale once no process with its pid and start time runs here.
    return holder.host == socket.gethostname() and not same_process(holder.pid, holder.started)


def _renew(fs: Any, path: str, holder: LockHolder, lease_s: float, stop: threading.Event) -> None:
    """Renew ``holder``'s lease of the lock object ``path`` until ``stop`` is set. A failed
    renewal is tried again at the next one; a lock no longer ``holder``'s (taken over after its
    lease ran out) is logged and left alone."""
    while not stop.wait(lease_s / RENEWALS_PER_LEASE):
        try:
            current = _parse(fs.cat_file(path))
            if not holder.same_holder(current):
                log.error(
                    "lock %s: %s; this process (pid %d) no longer holds it",
                    path,
                    current.describe() if current else "released",
                    holder.pid,
                )
                return
            fs.pipe_file(path, json.dumps(asdict(holder.renewed(lease_s))).encode())
        except Exception as exc:  # the store: the lease has time left for the next renewal
            log.warning("lock %s: renewal failed (%s: %s)", path, type(exc).__name__, exc)


@contextlib.contextmanager
def _object_lock(url: str, key: str, wait_s: float, lease_s: float) -> Iterator[LockHolder]:
    fs, path = filesystem(url)
    deadline = time.monotonic() + wait_s
    holder = _me(key, lease_s)
    body = json.dumps(asdict(holder)).encode()
    while True:
        try:
            fs.pipe_file(path, body, mode="create")  # If-None-Match: *
            break
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            try:
                current = _parse(fs.cat_file(path))
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if _stale(current):
                fs.rm_file(path)
                continue
            if time.monotonic() >= deadline:
                raise _refuse(url, current, wait_s) from None
            time.sleep(_POLL_S)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(fs, path, holder, lease_s, stop), name=f"lock-{key}", daemon=True
    )
    renewer.start()
    try:
        yield holder
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(FileNotFoundError):
            if holder.same_holder(_parse(fs.cat_file(path))):
                fs.rm_file(path)


__all__ = ["LEASE_S", "LockHolder", "lock_url", "run_lock_key", "store_lock"]
