"""The graphs a run sends to its Dask cluster: exactly what their keys need, no task more.

``client.compute`` and ``client.persist`` send a collection's graph culled layer by layer
(dask's ``HighLevelGraph.cull``, which keeps a whole layer's tasks where the layer cannot cull
itself exactly, e.g. a slice of a concatenation) and, after the linear fusion, the aliases of
fused keys that only those kept tasks read. The scheduler then links every task of the graph
that it already knows to that task's dependencies in the graph, needed or not
(``Scheduler._generate_taskstates``, distributed 2026.8), and creates only the needed ones.
A tile in rounds of dates holds its constants on the cluster (:mod:`pipelines.engine.run`),
whose lineage stays known to the scheduler; a later round's graph that carries an unneeded
task of that lineage with a dependency of another fused name then fails the whole round with
a ``KeyError`` on that dependency. Which tasks survive the fusion depends on set order, so the
failure came and went with the process's hash seed.

:func:`exact_graphs` runs dask's own array optimisation on the client (where the group fuses
its tasks) and culls the result task by task; it is sent with ``optimize_graph=False``
(:func:`compute`, :func:`persist`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import dask.array as da
import xarray as xr
from dask._task_spec import GraphNode
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.optimization import cull

if TYPE_CHECKING:
    from distributed import Client

#: A collection a run computes or persists: a dask array or an xarray Dataset of them.
Collection = TypeVar("Collection", da.Array, xr.Dataset)


def _dask_arrays(collection: da.Array | xr.Dataset) -> list[da.Array]:
    if isinstance(collection, da.Array):
        return [collection]
    return [v.data for v in collection.variables.values() if isinstance(v.data, da.Array)]


def private_lineage(tasks: Mapping[Any, Any], outputs: set[Any], prefix: str) -> dict[Any, Any]:
    """``tasks`` with every key computed on the way to ``outputs`` renamed with ``prefix``
    (``("read-ab12", 0, 3)`` -> ``(prefix + "read-ab12", 0, 3)``); the outputs and the keys the
    cluster already holds (futures of persisted arrays) keep theirs."""

    def renamed(key: Any) -> Any:
        return (prefix + key[0], *key[1:]) if isinstance(key, tuple) else prefix + key

    computed = (k for k, v in tasks.items() if k not in outputs and isinstance(v, GraphNode))
    subs = {k: renamed(k) for k in computed}
    return {
        subs.get(k, k): v.substitute(subs, key=subs.get(k)) if isinstance(v, GraphNode) else v
        for k, v in tasks.items()
    }


def exact_graphs(
    collections: Sequence[Collection], optimize: bool, private: bool = False
) -> list[Collection]:
    """``collections`` on one graph of exactly the tasks their keys need: optimised together
    when ``optimize`` (dask's array optimisation, blockwise and linear fusion, which
    ``client.compute`` runs on each collection apart), then culled task by task. Where nothing
    is optimised, the layers keep their names and annotations (a GPU group's resources). Send
    them together, with ``optimize_graph=False``.

    ``private`` (with ``optimize``): the tasks on the way to the collections' keys get keys of
    their own (:func:`private_lineage`), so that no later graph shares a key with them. A held
    array's lineage stays known to the scheduler as long as the array is held, and the fusion
    of a shared task (a scene's read) depends on the graph it is in: the same key would come
    again with another task, which dask warns may fail or deadlock."""
    arrays = [a for c in collections for a in _dask_arrays(c)]
    if not arrays:
        return list(collections)
    merged = HighLevelGraph.merge(*[a.dask for a in arrays])
    keys = [k for a in arrays for k in flatten(a.__dask_keys__())]
    if optimize:
        tasks = dict(da.Array.__dask_optimize__(merged, keys))
        needed, _ = cull(tasks, keys)
        name = "exact-" + tokenize(*sorted({a.name for a in arrays}))
        if private:
            needed = private_lineage(needed, set(keys), f"{name}-")
        graph = HighLevelGraph({name: MaterializedLayer(needed)}, {name: set()})
    else:
        layers = {n: dict(layer) for n, layer in merged.layers.items()}
        needed, _ = cull({k: v for d in layers.values() for k, v in d.items()}, keys)
        kept = {
            n: MaterializedLayer(
                {k: d[k] for k in d.keys() & needed.keys()},
                annotations=merged.layers[n].annotations,
            )
            for n, d in layers.items()
            if not d.keys().isdisjoint(needed.keys())
        }
        graph = HighLevelGraph(kept, {n: merged.dependencies[n] & kept.keys() for n in kept})
    rebuilt = {a.name: da.Array(graph, a.name, a.chunks, meta=a._meta) for a in arrays}
    out: list[Collection] = []
    for c in collections:
        if isinstance(c, da.Array):
            out.append(rebuilt[c.name])
            continue
        copy = c.copy(deep=False)
        for var in copy.variables.values():
            if isinstance(var.data, da.Array):
                var.data = rebuilt[var.data.name]
        out.append(copy)
    return out


def _ready(
    collections: Sequence[Collection], placement: Mapping[str, Any], private: bool = False
) -> tuple[list[Collection], dict[str, Any]]:
    optimize = bool(placement.get("optimize_graph", True))
    return exact_graphs(collections, optimize, private), {**placement, "optimize_graph": False}


def compute(client: Client, collections: Sequence[Collection], **placement: Any) -> list[Any]:
    """``client.compute(collections, **placement)`` (one future each) on their exact graphs
    (:func:`exact_graphs`; ``optimize_graph`` in ``placement`` says whether they are fused)."""
    graphs, keywords = _ready(collections, placement)
    return list(client.compute(graphs, **keywords))


def persist(
    client: Client, collections: Sequence[Collection], private: bool = False, **placement: Any
) -> list[Collection]:
    """``client.persist(collections, **placement)`` on their exact graphs (:func:`exact_graphs`;
    ``optimize_graph`` in ``placement`` says whether they are fused; ``private``: their lineage
    on keys of its own)."""
    graphs, keywords = _ready(collections, placement, private)
    return list(client.persist(graphs, **keywords))
