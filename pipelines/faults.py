"""Failpoints for fault-injection tests (as etcd and TiKV use them).

``fault_point(name)`` does nothing unless the environment variable ``TERRAPIPE_FAULT_AT`` names
that point: then the process kills itself with SIGKILL, as a power cut or the OOM killer would,
with no ``finally`` block, no ``atexit`` handler and no flush. The points sit between the writes
whose order makes a store recoverable (cube metadata, chunks, COGs, markers, the catalog);
``tests/integration/test_faults.py`` kills a run at each and checks that a rerun gives the store
of a clean run.

Two more variables shape what happens at the point:

- ``TERRAPIPE_FAULT_FLAG`` (a file path): the point fires only in the process that creates that
  file first (it holds the pid), once for the whole run and its restarted processes.
- ``TERRAPIPE_FAULT_ACTION=hold`` (with a flag): instead of dying, the process creates the flag
  and waits there while the flag exists, so that a test can act at a known point of a run
  (send a signal, kill a worker, stop a server) and then remove the flag to let the run go on.
"""

from __future__ import annotations

import os
import signal
import time

#: The environment variable naming the point at which the process kills itself.
ENV_FAULT_AT = "TERRAPIPE_FAULT_AT"
#: The file whose exclusive creation lets a point fire once across processes.
ENV_FAULT_FLAG = "TERRAPIPE_FAULT_FLAG"
#: ``kill`` (the default: SIGKILL) or ``hold`` (wait at the point while the flag exists).
ENV_FAULT_ACTION = "TERRAPIPE_FAULT_ACTION"
#: Seconds between two looks at the flag of a held point.
HOLD_POLL_S = 0.1

#: The points placed in the code: name -> where it is.
FAULT_POINTS: dict[str, str] = {
    "cube.init": "a new cube's metadata written under its temporary prefix, not yet published",
    "writer.chunks": "a tile's Zarr chunks written, its COGs and markers not yet",
    "cog.write": "a COG rendered to its temporary file, not yet put in the store",
    "stac.marker": "a tile's COG and quicklook written, its marker (the commit) not yet",
    "catalog.write": "the product collections written, catalog.json not yet",
}

_held = False  # a held point holds once per process


def _claim(flag: str) -> bool:
    """True for the one process that creates ``flag`` (its pid written in it)."""
    try:
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def fault_point(name: str) -> None:
    """Act at the point ``name`` when ``TERRAPIPE_FAULT_AT`` equals it: SIGKILL this process,
    or hold it there (see the module docstring)."""
    global _held
    if os.environ.get(ENV_FAULT_AT) != name:
        return
    flag = os.environ.get(ENV_FAULT_FLAG)
    if os.environ.get(ENV_FAULT_ACTION) == "hold":
        if _held or not flag or not _claim(flag):
            return
        _held = True
        while os.path.exists(flag):
            time.sleep(HOLD_POLL_S)
        return
    if flag and not _claim(flag):
        return
    os.kill(os.getpid(), signal.SIGKILL)
