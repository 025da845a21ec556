"""The one call the runner makes per (product, tile): cube region, COGs, quicklooks, markers.

Order for each label (date or window) of the tile: the cube region is written first (all pending
labels in one Dask computation, so upstream work shared across dates runs once), then per label the
COG, the quicklook and, LAST, the STAC item marker. A failure before a marker leaves that label
without one, so a re-run redoes exactly the labels without a (valid, same-version) marker; other
tiles and labels are never touched. The manifest returned is small and JSON-serialisable (XCom).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import dask
import numpy as np
import xarray as xr

from pipelines.config import STORED_MANTISSA_BITS
from pipelines.errors import BadInputError
from pipelines.faults import fault_point
from pipelines.grid import ProvinceGrid, Tile
from pipelines.products.cog import OverviewResampling, write_cog
from pipelines.products.cube import (
    SPATIAL_DIMS,
    TIME_DIMS,
    RegionWrite,
    chunk_keys,
    open_cube,
    open_kwargs_hint,
    prepare_tile_write,
    variable_names,
)
from pipelines.products.layout import (
    check_name,
    cog_url,
    cube_url,
    date_label,
    marker_url,
    quicklook_url,
)
from pipelines.products.quicklook import KINDS, QuicklookKind, write_quicklook
from pipelines.products.stac import (
    Provenance,
    StageLike,
    cog_asset,
    cube_asset,
    is_done,
    product_item,
    quicklook_asset,
    remove_marker,
    write_marker,
)
from pipelines.storage import concurrently, filesystem

log = logging.getLogger(__name__)

#: Bytes of a product's date planes (its COG's bands) that its date threads hold at once: a
#: 1024 px tile of four float32 bands is 16 MiB a date, written by as many threads as there are
#: CPUs; a 4096 px super-resolved one is 256 MiB, written one date at a time (its encoding holds
#: about three times the planes), so a driver's memory does not grow with its CPUs.
DATE_PLANES_BUDGET_BYTES = 256 * 2**20

TRUECOLOR_NAMES: tuple[tuple[str, str, str], ...] = (
    ("B04", "B03", "B02"),
    ("red", "green", "blue"),
)


@dataclass(frozen=True)
class ProductSpec:
    """How a product's COGs and quicklooks are rendered."""

    cog_variables: tuple[str, ...] | None = None
    """Cube rasters in the COG, in band order; None: every ``(time, y, x)`` variable."""
    overview_resampling: OverviewResampling = "nearest"
    """COG overviews: ``"nearest"``/``"mode"`` for classes, ``"average"`` for continuous."""
    nodata: float | None = None
    """COG nodata; None: the cube fill value of the first COG variable."""
    compress: str = "deflate"
    """COG compression: ``"deflate"`` or ``"zstd"``."""
    blocksize: int = 512
    """COG internal tile size in pixels (multiple of 16)."""
    quicklook: QuicklookKind | None = "continuous"
    """``"truecolor"``, ``"classes"``, ``"continuous"``, or None for no quicklook."""
    quicklook_variables: tuple[str, ...] | None = None
    """Truecolor: (R, G, B) variables (default B04, B03, B02); else one (default: first COG one)."""
    classes: type[IntEnum] | Mapping[int, str] | None = None
    """Class enum or ``{code: name}`` for ``"classes"`` quicklooks."""
    cmap: str = "viridis"
    """Colormap for ``"continuous"`` quicklooks."""
    vmin: float | None = None
    """Lower colour limit for ``"continuous"`` (None: 2nd percentile)."""
    vmax: float | None = None
    """Upper colour limit for ``"continuous"`` (None: 98th percentile)."""
    quicklook_px: int = 512
    """Largest quicklook side in pixels."""
    mantissa_bits: int | None = STORED_MANTISSA_BITS
    """Mantissa bits float rasters keep when stored (:data:`STORED_MANTISSA_BITS`); None: as
    computed."""

    def __post_init__(self) -> None:
        if self.mantissa_bits is not None and not 1 <= self.mantissa_bits <= 52:
            raise BadInputError(
                "spec.mantissa_bits", self.mantissa_bits, "None or an integer 1..52"
            )
        if self.quicklook is not None and self.quicklook not in KINDS:
            raise BadInputError("spec.quicklook", self.quicklook, f"one of {KINDS} or None")


def _drops_bits(dtype: np.dtype, bits: int | None) -> bool:
    """True when rounding to ``bits`` mantissa bits changes values of ``dtype`` (a float
    holding more bits)."""
    return bits is not None and dtype.kind == "f" and bits < np.finfo(dtype).nmant


def round_mantissa(values: Any, bits: int) -> Any:
    """Float ``values`` (numpy or Dask) rounded to nearest with ``bits`` mantissa bits (a
    copy; NaN and infinities kept); other dtypes, and floats that hold no more bits, as
    they are."""
    from numcodecs import BitRound

    dtype = np.dtype(values.dtype)
    if not _drops_bits(dtype, bits):
        return values
    codec = BitRound(bits)

    def block(a: np.ndarray) -> np.ndarray:
        return np.asarray(codec.encode(np.ascontiguousarray(a))).view(dtype).reshape(a.shape)

    if isinstance(values, np.ndarray):
        return block(values)
    return values.map_blocks(block, dtype=dtype)


def _rounded(data: xr.Dataset, dtypes: Mapping[str, np.dtype], bits: int | None) -> xr.Dataset:
    """``data`` with its rasters named in ``dtypes`` cast to their (float) cube dtype and
    rounded to ``bits`` mantissa bits (None: as is)."""
    if bits is None or not dtypes:
        return data
    return data.assign(
        {
            n: data[n].copy(data=round_mantissa(data[n].data.astype(t, copy=False), bits))
            for n, t in dtypes.items()
        }
    )


@dataclass(frozen=True)
class _DateWritten:
    """What one date of a tile product wrote: its label, COG, quicklook (or None) and marker
    URLs, and their bytes."""

    label: str
    cog: str
    quicklook: str | None
    item: str
    nbytes: int


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity and its container's CPU limit (the cgroup
    quota a Kubernetes pod's ``resources.limits.cpu`` sets), as ``dask.system.cpu_count``
    reads them. In a pod the affinity alone is the node's CPUs: a pod limited to 2 CPUs on a
    node of 64 would write with 64 threads."""
    from dask.system import cpu_count

    return max(1, cpu_count())


def _in_daemon_threads(
    fn: Callable[[int, int], _DateWritten], jobs: list[tuple[int, int]], n_threads: int
) -> list[_DateWritten]:
    """``fn(*job)`` of every job by ``n_threads`` daemon threads, results in the jobs' order.

    Each date is committed by its own marker: a date that fails leaves the others' commits
    standing, and the first failure (in the jobs' order) is raised once all have ended. Daemon
    threads, not a thread pool: a process ending (a run cancelled by a signal) does not wait
    for the dates still queued, which have no marker and are redone (a pool's threads are joined
    at exit, queue and all)."""
    results: list[_DateWritten | BaseException | None] = [None] * len(jobs)
    next_job = iter(range(len(jobs)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                j = next(next_job, None)
            if j is None:
                return
            try:
                results[j] = fn(*jobs[j])
            except BaseException as exc:  # raised in the calling thread below
                results[j] = exc

    workers = [
        threading.Thread(target=work, name="terrapipe-date", daemon=True) for _ in range(n_threads)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, _DateWritten)]


def _labels(data: xr.Dataset, labels: Sequence[str] | None) -> list[str]:
    if "time" not in data.coords or data["time"].ndim != 1:
        raise BadInputError("data.time", None, "a 1-D time coordinate")
    n = data.sizes["time"]
    if labels is None:
        out = [date_label(t) for t in data["time"].values]
    else:
        out = [check_name("labels", str(lab)) for lab in labels]
        if len(out) != n:
            raise BadInputError("labels", list(labels), f"{n} labels, one per time of data")
    if len(set(out)) != len(out):
        raise BadInputError(
            "labels", out, "one label per time", "two times share a date: merge them upstream"
        )
    return out


def _scalar(value: Any) -> Any:
    v = np.asarray(value).item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _truecolor_vars(spec: ProductSpec, names: Sequence[str]) -> tuple[str, ...]:
    if spec.quicklook_variables:
        return tuple(spec.quicklook_variables)
    for triple in TRUECOLOR_NAMES:
        if all(n in names for n in triple):
            return triple
    raise BadInputError(
        "spec.quicklook_variables", None, f"three (R, G, B) variables among {list(names)}"
    )


def _region_nbytes(info: RegionWrite) -> int:
    fs, base = filesystem(info.url)
    total = 0
    for key in chunk_keys(info):
        with contextlib.suppress(FileNotFoundError):  # an all-fill chunk is not stored
            total += int(fs.size(f"{base.rstrip('/')}/{key}"))
    return total


def _in_memory(data: xr.Dataset) -> bool:
    """True when every variable of ``data`` holds its values (no Dask array to compute)."""
    return not any(dask.is_dask_collection(data[n].variable) for n in data.data_vars)


def _as_stored(data: xr.DataArray, stored: xr.DataArray, info: RegionWrite) -> np.ndarray | None:
    """``(time, y, x)`` values of a tile region as the cube returns them once written: cast to
    the cube dtype (as the write casts them), and a chunk whose values all equal the fill value
    (which Zarr does not store) read as the fill value itself (one NaN for every NaN). None
    when a chunk of the region is shared with pixels outside it (then only the cube knows).

    ``stored``: the cube variable (raw, lazy; its ``_FillValue`` attribute, chunks and shape);
    ``info``: where the region lies in the cube."""
    ny, nx = stored.shape[1], stored.shape[2]
    chunks = stored.encoding.get("preferred_chunks") or {}
    cy, cx = int(chunks.get("y", ny)), int(chunks.get("x", nx))
    (y0, y1), (x0, x1) = info.y, info.x
    edges_y = [(c, min(c + cy, ny)) for c in range(y0 // cy * cy, y1, cy)]
    edges_x = [(c, min(c + cx, nx)) for c in range(x0 // cx * cx, x1, cx)]
    if edges_y[0][0] != y0 or edges_y[-1][1] != y1 or edges_x[0][0] != x0 or edges_x[-1][1] != x1:
        return None
    values = np.asarray(data.transpose(*SPATIAL_DIMS).values).astype(stored.dtype)
    fill = np.array(stored.attrs.get("_FillValue", 0)).astype(stored.dtype)
    nan_fill = bool(fill.dtype.kind == "f" and np.isnan(fill))
    for t in range(values.shape[0]):
        for ya, yb in edges_y:
            for xa, xb in edges_x:
                block = values[t, ya - y0 : yb - y0, xa - x0 : xb - x0]
                if np.isnan(block).all() if nan_fill else (block == fill).all():
                    block[...] = fill
    return values


def write_tile_product(
    store: str,
    province: str,
    product: str,
    province_grid: ProvinceGrid,
    tile: Tile,
    data: xr.Dataset,
    *,
    stage: StageLike,
    provenance: Provenance | None = None,
    spec: ProductSpec | None = None,
    labels: Sequence[str] | None = None,
    intervals: Sequence[tuple[Any, Any]] | None = None,
    properties: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write one tile of one product for every time of ``data``; returns a small manifest.

    ``data``: ``(time, y, x)`` rasters on ``tile.geobox`` (lazy or computed), one per cube raster
    variable, plus optional ``(time,)`` tile-level scalars that go into the item properties as
    ``terrapipe:<name>`` (NaN -> null). ``labels``: one per time (default ``YYYY-MM-DD``);
    ``intervals``: ``(start, end)`` per time for window products. ``properties``: extra item
    properties per label. Labels whose marker is done for ``stage.version`` are skipped unless
    ``overwrite``. The cube must exist with these times (:func:`init_cube`). The dates' COGs,
    quicklooks and markers are written by up to ``threads`` threads at once (default: the CPUs
    this process may run on; GDAL, zlib and numpy release the GIL while they encode), as many
    as :data:`DATE_PLANES_BUDGET_BYTES` of date planes allow.

    Manifest: ``{"province", "product", "tile_id", "stage_version", "cube", "written", "skipped",
    "n_written", "n_skipped", "cogs", "quicklooks", "items", "bytes_written"}``.
    """
    started = time.perf_counter()
    spec = spec or ProductSpec()
    provenance = provenance or Provenance()
    if isinstance(data, xr.DataArray):
        data = data.to_dataset() if data.name is not None else data
    if not isinstance(data, xr.Dataset):
        raise BadInputError("data", type(data).__name__, "an xarray.Dataset")
    all_labels = _labels(data, labels)
    if intervals is not None and len(intervals) != len(all_labels):
        raise BadInputError("intervals", intervals, f"{len(all_labels)} (start, end) pairs")
    tile_id = tile.tile_id
    manifest: dict[str, Any] = {
        "province": province,
        "product": product,
        "tile_id": tile_id,
        "stage_version": stage.version,
        "cube": cube_url(store, province, product),
        "written": [],
        "skipped": [],
        "cogs": [],
        "quicklooks": [],
        "items": [],
        "bytes_written": 0,
    }
    done = (
        [False] * len(all_labels)
        if overwrite
        else concurrently(
            lambda lab: is_done(store, province, product, tile_id, lab, stage.version),
            all_labels,
            url=store,
        )
    )
    pending = [i for i, d in enumerate(done) if not d]
    pending_set = set(pending)
    manifest["skipped"] = [lab for i, lab in enumerate(all_labels) if i not in pending_set]
    if not pending:
        manifest["n_written"], manifest["n_skipped"] = 0, len(manifest["skipped"])
        return manifest

    rasters = [n for n in data.data_vars if len(data[n].dims) == 3]
    scalars = [n for n in data.data_vars if tuple(data[n].dims) == TIME_DIMS]
    others = set(data.data_vars) - set(rasters) - set(scalars)
    if others:
        bad = sorted(others, key=str)[0]
        raise BadInputError(f"data[{bad!r}].dims", data[bad].dims, f"{SPATIAL_DIMS} or {TIME_DIMS}")
    cube = open_cube(manifest["cube"], raw=True)
    cube_rasters = variable_names(cube, SPATIAL_DIMS)
    missing = [n for n in cube_rasters if n not in rasters]
    if missing:
        raise BadInputError(
            "data",
            sorted(data.data_vars),
            f"every raster of the cube {cube_rasters}",
            f"missing {missing}",
        )
    # Un-commit what is about to be rewritten (overwrite, other stage version, broken marker): a
    # failure from here on must leave "not done", never an old marker describing new bytes.
    for i in pending:
        remove_marker(marker_url(store, province, product, tile_id, all_labels[i]))
    # The float rasters whose stored values keep spec.mantissa_bits (said in the STAC item).
    rounded = sorted(str(n) for n in cube_rasters if _drops_bits(cube[n].dtype, spec.mantissa_bits))
    sub = _rounded(data.isel(time=pending), {n: cube[n].dtype for n in rounded}, spec.mantissa_bits)
    writes, info = prepare_tile_write(store, province, product, province_grid, tile, sub[rasters])
    _, scalar_values = dask.compute(writes, sub[scalars].drop_vars(["y", "x"], errors="ignore"))
    fault_point("writer.chunks")
    manifest["bytes_written"] += _region_nbytes(info)

    cog_vars = list(spec.cog_variables or cube_rasters)
    unknown = [n for n in cog_vars if n not in cube_rasters]
    if unknown:
        raise BadInputError("spec.cog_variables", unknown, f"names among {cube_rasters}")
    fills = [cube[n].attrs.get("_FillValue") for n in cog_vars]
    nodata = spec.nodata if spec.nodata is not None else fills[0]
    nodata = None if nodata is None else float(nodata)
    dtype = np.result_type(*[cube[n].dtype for n in cog_vars])
    ql_vars: tuple[str, ...] = ()
    if spec.quicklook == "truecolor":
        ql_vars = _truecolor_vars(spec, cube_rasters)
    elif spec.quicklook is not None:
        ql_vars = tuple(spec.quicklook_variables or cog_vars[:1])
    if any(n not in cog_vars for n in ql_vars):
        raise BadInputError("spec.quicklook_variables", ql_vars, f"variables of the COG {cog_vars}")

    ysl, xsl = slice(*info.y), slice(*info.x)
    hint = open_kwargs_hint(cube)
    # Computed data is taken as the cube holds it (no read back of what was just written).
    stored: dict[str, np.ndarray] = {}
    for n in cog_vars if _in_memory(sub) else ():
        values = _as_stored(sub[n], cube[n], info)
        if values is not None:
            stored[n] = values

    def write_date(k: int, i: int) -> _DateWritten:
        """The COG, quicklook and marker (last: the commit) of the ``k``-th pending date."""
        label = all_labels[i]
        tslice = cube.isel(time=info.time_indices[k], y=ysl, x=xsl)
        planes = [tslice[n].copy(data=stored[n][k]) if n in stored else tslice[n] for n in cog_vars]
        bands = xr.concat(
            [p.astype(dtype) for p in planes], dim="band", coords="minimal"
        ).assign_coords(band=cog_vars)
        bands = bands.load()
        c_url = cog_url(store, province, product, tile_id, label)
        nbytes = write_cog(
            bands,
            c_url,
            nodata=nodata,
            overview_resampling=spec.overview_resampling,
            compress=spec.compress,
            blocksize=spec.blocksize,
            tags={"terrapipe_product": product, "terrapipe_label": label},
        )
        assets = {
            "cog": cog_asset(tile_id, label, cog_vars, dtype.name, nodata),
            "zarr": cube_asset(tslice["time"].values, info.y, info.x, info.variables, hint),
        }
        q_url = None
        if spec.quicklook is not None:
            q_url = quicklook_url(store, province, product, tile_id, label)
            nbytes += _quicklook(spec, bands, ql_vars, cube, q_url, label)
            assets["quicklook"] = quicklook_asset(tile_id, label)
        props = {f"terrapipe:{n}": _scalar(scalar_values[n].values[k]) for n in scalars}
        if rounded:
            props["terrapipe:mantissa_bits"] = {n: spec.mantissa_bits for n in rounded}
        props.update(dict((properties or {}).get(label, {})))
        start, end = intervals[i] if intervals is not None else (None, None)
        item = product_item(
            province,
            product,
            tile,
            label,
            stage,
            assets,
            provenance,
            props,
            datetime=tslice["time"].values,
            start_datetime=start,
            end_datetime=end,
        )
        m_url = marker_url(store, province, product, tile_id, label)
        nbytes += write_marker(item, m_url)  # LAST: the commit
        return _DateWritten(label, c_url, q_url, m_url, nbytes)

    date_bytes = len(cog_vars) * dtype.itemsize * (info.y[1] - info.y[0]) * (info.x[1] - info.x[0])
    n_threads = max(
        1,
        min(
            len(pending),
            threads or usable_cpus(),
            DATE_PLANES_BUDGET_BYTES // max(1, date_bytes),
        ),
    )
    if n_threads == 1:
        dates = [write_date(k, i) for k, i in enumerate(pending)]
    else:
        dates = _in_daemon_threads(write_date, list(enumerate(pending)), n_threads)
    for date in dates:
        manifest["cogs"].append(date.cog)
        if date.quicklook is not None:
            manifest["quicklooks"].append(date.quicklook)
        manifest["items"].append(date.item)
        manifest["written"].append(date.label)
        manifest["bytes_written"] += date.nbytes
    manifest["n_written"] = len(manifest["written"])
    manifest["n_skipped"] = len(manifest["skipped"])
    log.info(
        "%s %s %s: wrote %d, skipped %d, %.1f MB in %.2f s",
        province,
        product,
        tile_id,
        manifest["n_written"],
        manifest["n_skipped"],
        manifest["bytes_written"] / 1e6,
        time.perf_counter() - started,
    )
    return manifest


def _quicklook(
    spec: ProductSpec,
    bands: xr.DataArray,
    ql_vars: Sequence[str],
    cube: xr.Dataset,
    url: str,
    label: str,
) -> int:
    kind = spec.quicklook
    sel = bands.sel(band=list(ql_vars))
    fill = cube[ql_vars[0]].attrs.get("_FillValue")
    nodata = None if fill is None else float(fill)
    if kind == "truecolor":
        return write_quicklook(sel, url, "truecolor", nodata=nodata, max_px=spec.quicklook_px)
    one = sel.isel(band=0)
    attrs = cube[ql_vars[0]].attrs
    text = attrs.get("long_name", ql_vars[0])
    if attrs.get("units"):
        text += f" [{attrs['units']}]"
    if kind == "classes":
        return write_quicklook(
            one.astype(cube[ql_vars[0]].dtype),
            url,
            "classes",
            classes=spec.classes,
            label=f"{text}\n{label}",
            max_px=spec.quicklook_px,
        )
    return write_quicklook(
        one,
        url,
        "continuous",
        nodata=nodata,
        cmap=spec.cmap,
        vmin=spec.vmin,
        vmax=spec.vmax,
        label=f"{text}\n{label}",
        max_px=spec.quicklook_px,
    )
