"""Run locks: a second holder waits, then refuses naming the first; a dead holder never blocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.errors import BadInputError
from pipelines.products.lock import LockHolder, lock_url, run_lock_key, store_lock

HOLD = """
import sys, time
from pipelines.products.lock import store_lock
with store_lock(sys.argv[1], "demo", "k"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(store: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, store], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_refuses_naming_the_holder_then_gets_it_after_a_kill(tmp_path):
    store = str(tmp_path / "store")
    proc = _holder_process(store)
    try:
        with pytest.raises(BadInputError) as err, store_lock(store, "demo", "k", wait_s=0.2):
            pass
        assert f"pid {proc.pid}" in str(err.value) and "since" in str(err.value)
    finally:
        proc.kill()  # SIGKILL: no release, the OS drops the lock with the process
        proc.wait()
    with store_lock(store, "demo", "k", wait_s=5) as holder:
        assert holder.pid == os.getpid()
        on_disk = json.loads(Path(lock_url(store, "demo", "k")).read_text())
        assert on_disk["pid"] == os.getpid()


def test_lock_in_one_process_excludes_a_second_holder(tmp_path):
    store = str(tmp_path / "store")
    with store_lock(store, "demo", "k"):
        with pytest.raises(BadInputError, match="run lock"), store_lock(store, "demo", "k"):
            pass
        with store_lock(store, "demo", "other"):  # another key is free
            pass
    with store_lock(store, "demo", "k"):  # released
        pass


def test_run_lock_key_depends_on_window_and_product_set_only():
    a = run_lock_key(("2024-05-01", "2024-05-31"), ["b", "a"])
    assert a == run_lock_key(("2024-05-01", "2024-05-31"), ["a", "b"])
    assert a != run_lock_key(("2024-06-01", "2024-06-30"), ["a", "b"])
    assert a != run_lock_key(("2024-05-01", "2024-05-31"), ["a"])


def test_object_store_lock_conditional_create_and_stale_takeover(tmp_path, monkeypatch):
    """The object-store path, on a memory filesystem that honours ``mode='create'``."""
    import fsspec

    from pipelines.products import lock as lock_module

    mem = fsspec.filesystem("memory")
    monkeypatch.setattr(lock_module, "is_remote", lambda url: True)
    monkeypatch.setattr(lock_module, "filesystem", lambda url: (mem, url))
    store = f"/locks-{os.getpid()}-{time.time_ns()}"
    with store_lock(store, "demo", "k") as holder:
        with (
            pytest.raises(BadInputError, match=f"pid {os.getpid()}"),
            store_lock(store, "demo", "k"),
        ):
            pass
        path = lock_url(store, "demo", "k")
        assert LockHolder(**json.loads(mem.cat_file(path))) == holder
    assert not mem.exists(path)
    # a lock left by a run that died elsewhere: taken over once it has expired
    dead = LockHolder("elsewhere", 1, "2024-01-01T00:00:00+00:00", "k", expires=time.time() - 1)
    mem.pipe_file(path, json.dumps(dead.__dict__).encode())
    with store_lock(store, "demo", "k") as holder:
        assert holder.host != "elsewhere"
    live = LockHolder("elsewhere", 1, "2024-01-01T00:00:00+00:00", "k", expires=time.time() + 99)
    mem.pipe_file(path, json.dumps(live.__dict__).encode())
    with pytest.raises(BadInputError, match="on elsewhere"), store_lock(store, "demo", "k"):
        pass


def test_a_lock_of_an_earlier_process_with_the_same_pid_is_taken_over(monkeypatch):
    """A pod restarted under the same host name (a StatefulSet's Airflow worker) starts its
    processes from small pids again: the lock its killed task left names a pid that another
    process holds now. Told apart by the start time, the lock is taken over at once; before, the
    pid alone kept it 'alive' until it expired (2 h for a tile) and the next run refused."""
    import fsspec

    from pipelines.processes import process_started
    from pipelines.products import lock as lock_module

    mem = fsspec.filesystem("memory")
    monkeypatch.setattr(lock_module, "is_remote", lambda url: True)
    monkeypatch.setattr(lock_module, "filesystem", lambda url: (mem, url))
    store = f"/locks-{os.getpid()}-{time.time_ns()}"
    key = "tile-x0001_y0001"
    path = lock_url(store, "demo", key)
    here, pid = socket.gethostname(), os.getpid()
    started = process_started(pid)
    assert started is not None
    earlier = LockHolder(
        here, pid, "2024-01-01T00:00:00+00:00", "k", time.time() + 7200, started - 60
    )
    mem.pipe_file(path, json.dumps(earlier.__dict__).encode())
    with store_lock(store, "demo", key) as holder:
        assert holder.started == started
    # the process itself, with its start time, still holds it: refused
    mem.pipe_file(path, json.dumps({**earlier.__dict__, "started": started}).encode())
    with (
        pytest.raises(BadInputError, match=f"pid {pid}"),
        store_lock(store, "demo", key),
    ):
        pass
    # a lock written before start times were recorded: the pid alone decides, as before
    mem.pipe_file(path, json.dumps({**earlier.__dict__, "started": None}).encode())
    with pytest.raises(BadInputError), store_lock(store, "demo", key):
        pass


@pytest.fixture
def memory_store(monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    """A store whose locks take the object-store path, on a memory filesystem that honours
    ``mode='create'``: (store, filesystem)."""
    import fsspec

    from pipelines.products import lock as lock_module

    mem = fsspec.filesystem("memory")
    monkeypatch.setattr(lock_module, "is_remote", lambda url: True)
    monkeypatch.setattr(lock_module, "filesystem", lambda url: (mem, url))
    return f"/locks-{os.getpid()}-{time.time_ns()}", mem


def test_an_object_lock_held_for_many_leases_is_renewed_and_never_taken_over(memory_store):
    """Before, an object-store lock expired a fixed time after it was taken (12 h for a run, 2 h
    for a tile), however long its holder kept writing, and another run then took it over: two
    writers. Now the holder renews its lease while it holds the lock."""
    store, mem = memory_store
    path = lock_url(store, "demo", "k")
    with store_lock(store, "demo", "k", lease_s=0.4) as holder:
        time.sleep(1.5)  # nearly four leases
        with (
            pytest.raises(BadInputError, match=f"pid {os.getpid()}"),
            store_lock(store, "demo", "k"),
        ):
            pass
        current = LockHolder(**json.loads(mem.cat_file(path)))
        assert holder.same_holder(current) and current.expires > time.time()
    assert not mem.exists(path)


def test_a_lock_taken_over_is_left_to_its_new_holder(memory_store, caplog):
    """A holder that could not renew for a whole lease finds another holder in its lock object:
    it logs that and writes nothing more there (no renewal, no release)."""
    store, mem = memory_store
    path = lock_url(store, "demo", "k")
    other = LockHolder("node-b", 7, "2024-01-01T00:00:00+00:00", "k", time.time() + 60)
    with caplog.at_level("ERROR", logger="pipelines.products.lock"):
        with store_lock(store, "demo", "k", lease_s=0.3):
            mem.pipe_file(path, json.dumps(other.__dict__).encode())
            time.sleep(0.3)
        assert LockHolder(**json.loads(mem.cat_file(path))) == other
    assert "held by pid 7 on node-b" in caplog.text
