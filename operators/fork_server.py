"""What a local cluster's fork server loads before it forks a worker process
(``dask.worker_start: forkserver``, :func:`operators.dask_cluster.worker_context`).

Importing this module imports the readers and the CPU tile stages
(:func:`operators.dask_cluster.worker_modules`) and runs the workers' warm-ups
(:data:`operators.dask_cluster.WORKER_WARMUPS`: the compiled kernels of haze_index and the Lee
filter) once, in the fork server; every worker forked from it starts with them in memory
instead of loading them itself (about 2 s of CPU per process on a 2-core machine). OpenCV's
thread pool is not touched here: each worker limits it to its own threads in its preload.
"""

from __future__ import annotations

import logging

from operators.dask_cluster import load_worker_image

log = logging.getLogger(__name__)


def load() -> int:
    """:func:`operators.dask_cluster.load_worker_image`; 0 when it fails (logged): the fork
    server must start anyway, and each worker's preload then loads, and reports, itself."""
    try:
        return load_worker_image()
    except Exception as exc:
        log.warning("the fork server could not load the worker modules: %s", exc)
        return 0


MODULES_LOADED = load()
