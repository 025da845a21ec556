"""Failpoints for fault-injection tests (as etcd and TiKV use them).

``fault_point(name)`` does nothing unless the environment variable ``TERRAPIPE_FAULT_AT`` names
that point: then the process kills itself with SIGKILL, as a power cut or the OOM killer would,
with no ``finally`` block, no ``atexit`` handler and no flush. The points sit between the writes
whose order makes a store recoverable (cube metadata, chunks, COGs, markers, the catalog);
``tests/integration/test_faults.py`` kills a run at each and checks that a rerun gives the store
of a clean run.
"""

from __future__ import annotations

import os
import signal

#: The environment variable naming the point at which the process kills itself.
ENV_FAULT_AT = "TERRAPIPE_FAULT_AT"

#: The points placed in the code: name -> where it is.
FAULT_POINTS: dict[str, str] = {
    "cube.init": "a new cube's metadata written under its temporary prefix, not yet published",
    "writer.chunks": "a tile's Zarr chunks written, its COGs and markers not yet",
    "cog.write": "a COG rendered to its temporary file, not yet put in the store",
    "stac.marker": "a tile's COG and quicklook written, its marker (the commit) not yet",
    "catalog.write": "the product collections written, catalog.json not yet",
}


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL when ``TERRAPIPE_FAULT_AT`` equals ``name``."""
    if os.environ.get(ENV_FAULT_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
