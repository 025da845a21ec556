"""Models on Dask workers: loaded once per worker by a worker plugin, shared by its tasks.

``ensure_model_plugin(client)`` installs :class:`ModelServer` on every worker (and on workers that
join later) once per cluster. Stage code calls :func:`worker_model` inside a task: on a worker with
the plugin it returns the worker's cached network; elsewhere (threaded scheduler, tests, the
``terrapipe stage`` CLI) a per-process cache plays the same role.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, cast

from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN_NAME = "terrapipe-models"

_process_cache: dict[tuple[str, str | None], Any] = {}
_process_loads: Counter[str] = Counter()
_process_lock = threading.Lock()


class ModelServer(WorkerPlugin):
    """Per-worker cache of verified, loaded networks (keyed by model name and weights path)."""

    name = PLUGIN_NAME

    def __init__(self, device: str | None = None) -> None:
        self.device = device  # the rest is made on the worker (setup): the plugin is pickled

    def setup(self, worker: Any) -> None:
        self.models: dict[tuple[str, str | None], Any] = {}
        self.loads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def teardown(self, worker: Any) -> None:
        self.models.clear()

    def get(self, name: str, weights: str | None = None) -> Any:
        """The loaded network ``name`` (loads it on first use on this worker)."""
        key = (name, weights)
        with self._lock:
            if key not in self.models:
                from models.registry import get_model

                self.models[key] = get_model(name, weights, device=self.device)
                self.loads[name] += 1
            return self.models[key]


def ensure_model_plugin(client: Any, device: str | None = None) -> None:
    """Register :class:`ModelServer` on ``client``'s cluster unless it is already there."""

    def has_plugin(dask_scheduler: Any) -> bool:
        return PLUGIN_NAME in dask_scheduler.worker_plugins

    if not client.run_on_scheduler(has_plugin):
        client.register_plugin(ModelServer(device), name=PLUGIN_NAME)


def worker_model(name: str, weights: str | None = None) -> Any:
    """The network ``name`` for the current task: the worker's copy, or this process's copy."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        worker = None
    plugin = worker.plugins.get(PLUGIN_NAME) if worker is not None else None
    if plugin is not None:
        return cast(ModelServer, plugin).get(name, weights)
    key = (name, weights)
    with _process_lock:
        if key not in _process_cache:
            from models.registry import get_model

            _process_cache[key] = get_model(name, weights)
            _process_loads[name] += 1
        return _process_cache[key]


def worker_model_loads(dask_worker: Any) -> dict[str, int]:
    """How many times each model was loaded on ``dask_worker`` (for ``client.run``)."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return dict(plugin.loads) if plugin is not None else {}
