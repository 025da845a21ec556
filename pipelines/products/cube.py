"""Product cubes: one Zarr v3 store per product and province, written by tile regions.

Layout of a cube (``<store>/<province>/<product>/cube.zarr``):

- dims ``time, y, x``; ``y``/``x`` are pixel-centre coordinates of the province geobox (CRS units,
  metres; ``y`` descending, north-up); ``spatial_ref`` is a scalar CF grid-mapping coordinate
  (``crs_wkt``, ``GeoTransform``) named by every raster variable's ``grid_mapping`` attribute, so
  rioxarray, odc-geo and GDAL read the CRS.
- raster variables ``(time, y, x)`` are chunked ``(1, tile_px, tile_px)``: one chunk per tile and
  date, so tiles write disjoint chunks and may run in parallel. Unwritten chunks read as the
  variable's fill value (``_FillValue`` == the Zarr ``fill_value``).
- variables with only a ``time`` dim are province-level values (chunked ``(1,)``), written serially
  with :func:`write_time_values`. Tile-level scalars (e.g. a tile's haze index for one date) are not
  stored in the cube: :func:`pipelines.products.write_tile_product` puts them into the tile's STAC
  item properties.
- the ``time`` axis is **append-only, in order of first appearance**: :func:`init_cube` appends the
  times it has not seen (each batch sorted), and existing times never move, so a time index stays
  valid for the life of the cube. It is therefore sorted only if runs come in date order;
  :func:`open_product` returns a time-sorted view by default.
- group attributes: ``terrapipe:grid`` (crs, resolution, tile_px, bounds, shape) used to refuse a
  write with a different grid, plus ``terrapipe:province``, ``terrapipe:product`` and the caller's.
- no consolidated metadata (not part of the Zarr v3 specification); readers open with
  ``consolidated=False``.
- ``terrapipe:times`` (group attribute) is the number of committed times: the commit point of a
  time extension, written after every array has been extended.

A kill cannot leave a cube torn for good. A new cube is written under a temporary prefix beside
it and published (a local rename; on an object store the objects are copied, the group's
``zarr.json`` last, so the cube exists only once it is complete). A time extension writes
``terrapipe:times`` last; a cube whose arrays disagree with it (a kill mid-extension) is
detected by :func:`cube_problems` on the next :func:`init_cube` and repaired: recreated when no
marker of the product exists (nothing can be lost), otherwise every ``time`` array is cut back
to the committed times (metadata only: chunks already written are kept) and the extension redone.

:func:`init_cube` must run once per run, serially, before tiles write; :func:`write_tile` may then
run concurrently for different tiles (or different dates of one tile).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from odc.geo.xr import xr_coords

from pipelines import __version__
from pipelines.errors import BadInputError
from pipelines.faults import fault_point
from pipelines.grid import ProvinceGrid, Tile
from pipelines.products.layout import check_name, cube_url, product_url, to_utc
from pipelines.storage import exists, filesystem, is_remote, join, storage_options

SPATIAL_DIMS: tuple[str, str, str] = ("time", "y", "x")
TIME_DIMS: tuple[str] = ("time",)
GRID_ATTR = "terrapipe:grid"
VARIABLES_ATTR = "terrapipe:variables"
TIMES_ATTR = "terrapipe:times"
CRS_COORD = "spatial_ref"
TIME_ENCODING = {"units": "seconds since 1970-01-01T00:00:00", "dtype": "int64"}


@dataclass(frozen=True)
class CubeVariable:
    """Declaration of one cube variable."""

    dtype: str
    """numpy dtype name, e.g. ``"uint8"`` for class rasters, ``"float32"`` for reflectance."""
    fill_value: float | int
    """Value of unwritten pixels and nodata (e.g. ``0`` = NODATA class, ``nan`` for floats)."""
    attrs: Mapping[str, Any] = field(default_factory=dict)
    """CF-style attributes (``units``, ``long_name``, ``flag_values``, ...)."""
    dims: tuple[str, ...] = SPATIAL_DIMS
    """``("time", "y", "x")`` for rasters or ``("time",)`` for province-level values."""


VariableSpec = CubeVariable | tuple[Any, ...]


def _variable_specs(variables: Mapping[str, VariableSpec]) -> dict[str, CubeVariable]:
    if not isinstance(variables, Mapping) or not variables:
        raise BadInputError(
            "variables", variables, "a non-empty mapping {name: (dtype, fill_value, attrs)}"
        )
    specs: dict[str, CubeVariable] = {}
    for name, spec in variables.items():
        check_name("variables", name)
        if name in (*SPATIAL_DIMS, CRS_COORD):
            raise BadInputError(
                "variables", name, f"a name other than {(*SPATIAL_DIMS, CRS_COORD)}"
            )
        if isinstance(spec, tuple) and len(spec) in (3, 4):
            spec = CubeVariable(spec[0], spec[1], dict(spec[2] or {}), *spec[3:])
        if not isinstance(spec, CubeVariable):
            raise BadInputError(
                f"variables[{name!r}]", spec, "(dtype, fill_value, attrs) or (..., dims)"
            )
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError as exc:
            raise BadInputError(f"variables[{name!r}].dtype", spec.dtype, "a numpy dtype") from exc
        if dtype.kind not in "biuf":
            raise BadInputError(f"variables[{name!r}].dtype", spec.dtype, "a bool, int or float")
        if tuple(spec.dims) not in (SPATIAL_DIMS, TIME_DIMS):
            raise BadInputError(
                f"variables[{name!r}].dims", spec.dims, f"{SPATIAL_DIMS} or {TIME_DIMS}"
            )
        fill = spec.fill_value
        if dtype.kind in "biu" and (fill is None or not float(fill).is_integer()):
            raise BadInputError(
                f"variables[{name!r}].fill_value", fill, f"an integer valid for {dtype}"
            )
        specs[name] = CubeVariable(dtype.name, fill, dict(spec.attrs), tuple(spec.dims))
    return specs


def grid_attrs(province_grid: ProvinceGrid) -> dict[str, Any]:
    """The ``terrapipe:grid`` attribute that identifies a cube's grid."""
    g = province_grid.grid
    return {
        "crs": str(province_grid.geobox.crs),
        "resolution": float(g.resolution),
        "tile_px": int(g.tile_px),
        "bounds": [float(b) for b in province_grid.bounds],
        "shape": [int(s) for s in province_grid.shape],
    }


def _same_grid(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    from odc.geo import CRS

    try:
        same_crs = CRS(stored["crs"]) == CRS(wanted["crs"])
        return (
            same_crs
            and int(stored["tile_px"]) == wanted["tile_px"]
            and list(stored["shape"]) == wanted["shape"]
            and math.isclose(float(stored["resolution"]), wanted["resolution"])
            and np.allclose(stored["bounds"], wanted["bounds"], rtol=0, atol=1e-6)
        )
    except (KeyError, TypeError, ValueError):
        return False


def normalize_times(times: Iterable[Any], field_name: str = "times") -> pd.DatetimeIndex:
    """Times as a unique, sorted, naive-UTC ``DatetimeIndex`` (ns)."""
    if isinstance(times, str | bytes):
        times = [times]
    values = [to_utc(t) for t in times]
    if not values:
        raise BadInputError(field_name, [], "at least one time")
    return pd.DatetimeIndex(values).as_unit("ns").unique().sort_values()


def _zarr_kwargs(url: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"zarr_format": 3, "consolidated": False}
    if is_remote(url):
        kw["storage_options"] = storage_options(url)
    return kw


def cube_exists(url: str) -> bool:
    """True when a Zarr v3 group exists at ``url``."""
    return exists(join(url, "zarr.json"))


def open_cube(url: str, *, raw: bool = False, chunks: Any = None) -> xr.Dataset:
    """Open a cube: ``raw`` keeps stored values (no masking); ``chunks=None``: lazy, no Dask."""
    if not cube_exists(url):
        raise BadInputError("cube", url, "an existing product cube", "run init_cube first")
    if raw:
        mask: bool | dict[str, bool] = False
    else:
        # Integer (class) rasters keep their dtype and nodata code; floats are masked to NaN.
        probe = xr.open_zarr(url, chunks=None, mask_and_scale=False, **_zarr_kwargs(url))
        mask = {name: probe[name].dtype.kind == "f" for name in probe.data_vars}
    return xr.open_zarr(url, chunks=chunks, mask_and_scale=mask, **_zarr_kwargs(url))


def variable_names(cube: xr.Dataset, dims: tuple[str, ...] = SPATIAL_DIMS) -> list[str]:
    """Names of the cube variables with ``dims``, in the order given to :func:`init_cube`."""
    order = list(cube.attrs.get(VARIABLES_ATTR) or sorted(cube.data_vars))
    return [n for n in order if n in cube.data_vars and tuple(cube[n].dims) == dims]


def open_kwargs_hint(cube: xr.Dataset) -> dict[str, Any]:
    """``xarray.open_dataset`` keywords that read ``cube`` like :func:`open_product` (STAC hint).

    Integer (class) rasters keep their dtype and nodata code; floats are masked to NaN.
    """
    return {
        "engine": "zarr",
        "zarr_format": 3,
        "consolidated": False,
        "chunks": {},
        "mask_and_scale": {
            str(n): cube[n].dtype.kind == "f" for n in sorted(cube.data_vars, key=str)
        },
    }


def _template(
    province_grid: ProvinceGrid, times: pd.DatetimeIndex, specs: Mapping[str, CubeVariable]
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    gbox = province_grid.geobox
    ny, nx = gbox.shape
    if (ny, nx) != tuple(province_grid.shape):
        raise BadInputError("province_grid", province_grid.shape, f"a geobox of shape {(ny, nx)}")
    n = province_grid.grid.tile_px
    nt = len(times)
    data_vars: dict[str, xr.Variable] = {}
    encoding: dict[str, dict[str, Any]] = {"time": dict(TIME_ENCODING)}
    for name, spec in specs.items():
        dtype = np.dtype(spec.dtype)
        fill = np.array(spec.fill_value).astype(dtype)[()]
        attrs = dict(spec.attrs)
        if spec.dims == SPATIAL_DIMS:
            arr = da.full((nt, ny, nx), fill, dtype=dtype, chunks=(1, n, n))
            attrs["grid_mapping"] = CRS_COORD
            chunks: tuple[int, ...] = (1, n, n)
        else:
            arr = da.full((nt,), fill, dtype=dtype, chunks=(1,))
            chunks = (1,)
        data_vars[name] = xr.Variable(spec.dims, arr, attrs)
        # _FillValue (CF nodata) and the Zarr fill_value (unwritten chunks) must agree.
        encoding[name] = {"_FillValue": fill, "fill_value": fill, "chunks": chunks}
    coords = {"time": ("time", times.values), **xr_coords(gbox, crs_coord_name=CRS_COORD)}
    return xr.Dataset(data_vars, coords=coords), encoding


def init_cube(
    store: str,
    province: str,
    product: str,
    province_grid: ProvinceGrid,
    times: Iterable[Any],
    variables: Mapping[str, VariableSpec],
    attrs: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Create the product cube (metadata only), or append the times it lacks; returns its URL.

    ``variables``: ``{name: (dtype, fill_value, attrs)}`` (optionally a 4th item ``dims``, or a
    :class:`CubeVariable`). An existing cube must have the same grid and variables (name, dtype,
    dims), otherwise :class:`BadInputError`; its missing ``times`` are appended (sorted) and nothing
    else changes. Call once per run, serially, before any :func:`write_tile`.

    A cube torn by a kill is repaired first (see the module docstring). One that cannot be (its
    ``time`` coordinate is lost while markers of the product exist) raises BadInputError, unless
    ``overwrite``: then the cube and the product's markers are deleted and the cube recreated, so
    that every tile of the product is computed again.
    """
    url = cube_url(store, province, product)
    specs = _variable_specs(variables)
    wanted_times = normalize_times(times)
    wanted_grid = grid_attrs(province_grid)
    if cube_exists(url):
        _repair(store, province, product, url, overwrite=overwrite)
    if not cube_exists(url):
        template, encoding = _template(province_grid, wanted_times, specs)
        template.attrs = {
            **dict(attrs or {}),
            GRID_ATTR: wanted_grid,
            VARIABLES_ATTR: list(specs),
            TIMES_ATTR: len(wanted_times),
            "terrapipe:province": province,
            "terrapipe:product": product,
            "terrapipe:software_version": __version__,
        }
        _create(url, template, encoding)
        return url

    existing = open_cube(url, raw=True)
    _check_cube(url, existing, wanted_grid, specs)
    known = pd.DatetimeIndex(existing["time"].values)
    new_times = wanted_times[~wanted_times.isin(known)]
    if len(new_times):
        template, _ = _template(province_grid, new_times, specs)
        template = template.drop_vars(["x", "y", CRS_COORD])
        # appending rewrites the group attributes: the committed count stays the old one until
        # every array is extended (the commit point below)
        template.attrs = {**existing.attrs, TIMES_ATTR: len(known)}
        template.to_zarr(url, mode="a", append_dim="time", compute=False, **_zarr_kwargs(url))
        _group(url, "r+").attrs.update({TIMES_ATTR: len(known) + len(new_times)})
    return url


def _group(url: str, mode: Literal["r", "r+"]) -> Any:
    import zarr

    return zarr.open_group(url, mode=mode, storage_options=_zarr_kwargs(url).get("storage_options"))


def _create(url: str, template: xr.Dataset, encoding: Mapping[str, Any]) -> None:
    """Write a new cube's metadata under a temporary prefix, then publish it at ``url``."""
    import uuid

    fs, _ = filesystem(url)
    stem = url.rstrip("/")
    for left in fs.glob(filesystem(f"{stem}.tmp-*")[1]):  # left by a killed creation
        fs.rm(left, recursive=True)
    tmp = f"{stem}.tmp-{uuid.uuid4().hex[:12]}"
    template.to_zarr(tmp, mode="w-", compute=False, encoding=encoding, **_zarr_kwargs(tmp))
    fault_point("cube.init")
    _, src = filesystem(tmp)
    _, dst = filesystem(url)
    if fs.exists(dst):  # leftovers of a cube being recreated (its group zarr.json is gone)
        fs.rm(dst, recursive=True)
    if not is_remote(url):
        os.replace(src, dst)
        return
    # object store: copy every object, the group's zarr.json (what makes the cube exist) last
    root_meta = f"{src.rstrip('/')}/zarr.json"
    files = [f for f in fs.find(src) if f != root_meta]
    for path in [*files, root_meta]:
        fs.copy(path, dst.rstrip("/") + path[len(src.rstrip("/")) :])
    fs.rm(src, recursive=True)


def cube_problems(url: str) -> list[str]:
    """Why the cube at ``url`` is torn (a kill while it was created or extended); [] if whole.

    Reads only metadata (and the ``time`` coordinate): every array the group attributes name must
    exist, ``y``/``x`` must match the grid, and every array with a ``time`` dim must hold exactly
    the committed times (``terrapipe:times``; for a cube written before it, the ``time``
    coordinate's length), all of them written (no fill value in ``time``).
    """
    import zarr

    group = _group(url, "r")
    attrs = dict(group.attrs)
    grid = attrs.get(GRID_ATTR)
    if grid is None:
        return []  # not a terrapipe cube: _check_cube says so
    problems: list[str] = []
    arrays: dict[str, Any] = {}
    for name in ["time", "y", "x", CRS_COORD, *attrs.get(VARIABLES_ATTR, [])]:
        try:
            arr = group[name]
        except (KeyError, FileNotFoundError, ValueError):
            problems.append(f"array {name!r} missing")
            continue
        if isinstance(arr, zarr.Array):
            arrays[name] = arr
    ny, nx = (int(s) for s in grid.get("shape", (0, 0)))
    for dim, size in (("y", ny), ("x", nx)):
        if dim in arrays and arrays[dim].shape != (size,):
            problems.append(f"{dim} has shape {arrays[dim].shape}, not ({size},)")
    time = arrays.get("time")
    committed = int(attrs.get(TIMES_ATTR, time.shape[0] if time is not None else 0))
    for name, arr in arrays.items():
        if name in ("y", "x", CRS_COORD):
            continue
        if arr.shape[0] != committed:
            problems.append(f"{name} has {arr.shape[0]} times, the cube {committed}")
    if time is not None and time.shape[0] >= committed:
        values = np.asarray(time[:committed])
        if (values == time.metadata.fill_value).any() or len(set(values.tolist())) < committed:
            problems.append("time holds unwritten values")
    return problems


def _has_markers(store: str, province: str, product: str) -> bool:
    fs, path = filesystem(join(product_url(store, province, product), "items"))
    return bool(fs.exists(path) and fs.glob(f"{path.rstrip('/')}/*/*.json"))


def _repair(store: str, province: str, product: str, url: str, *, overwrite: bool) -> None:
    """Make a torn cube whole again (see :func:`cube_problems`); a no-op for a whole cube."""
    problems = cube_problems(url)
    if not problems:
        return
    fs, path = filesystem(url)
    if not _has_markers(store, province, product):
        fs.rm(path, recursive=True)  # no data anyone relies on: init_cube recreates it
        return
    group = _group(url, "r+")
    attrs = dict(group.attrs)
    time = group.get("time")
    names = ["time", *attrs.get(VARIABLES_ATTR, [])]
    committed = int(
        attrs.get(TIMES_ATTR, min((group[n].shape[0] for n in names if n in group), default=0))
    )
    fixable = (
        time is not None
        and time.shape[0] >= committed
        and all(n in group for n in [*names, "y", "x", CRS_COORD])
        and not any(p.startswith(("y ", "x ")) for p in problems)
    )
    if fixable:
        values = np.asarray(time[:committed])
        fixable = (
            not (values == time.metadata.fill_value).any()
            and len(set(values.tolist())) == committed
        )
    if fixable:
        for name in names:
            arr = group[name]
            if arr.shape[0] != committed:
                arr.resize((committed, *arr.shape[1:]))
        group.attrs.update({TIMES_ATTR: committed})
        return
    if not overwrite:
        raise BadInputError(
            "cube",
            url,
            "a cube that can be repaired",
            f"it is torn ({'; '.join(problems)}) and its times are lost while markers exist; "
            "rerun with --overwrite to recreate it and recompute the product",
        )
    fs.rm(path, recursive=True)
    items_fs, items = filesystem(join(product_url(store, province, product), "items"))
    items_fs.rm(items, recursive=True)


def _check_cube(
    url: str,
    cube: xr.Dataset,
    wanted_grid: Mapping[str, Any],
    specs: Mapping[str, CubeVariable] | None = None,
) -> None:
    stored = cube.attrs.get(GRID_ATTR)
    if stored is None:
        raise BadInputError(
            "cube",
            url,
            "a terrapipe product cube (attribute 'terrapipe:grid')",
            "the path holds another Zarr store; choose another store or product name",
        )
    if not _same_grid(stored, wanted_grid):
        raise BadInputError(
            "province_grid",
            wanted_grid,
            f"the grid of the existing cube {url}: {stored}",
            "a cube never changes grid; write to another store or delete the cube",
        )
    if specs is None:
        return
    have = {name: (cube[name].dtype.name, tuple(cube[name].dims)) for name in cube.data_vars}
    want = {name: (s.dtype, tuple(s.dims)) for name, s in specs.items()}
    if have != want:
        raise BadInputError(
            "variables",
            want,
            f"the variables of the existing cube {url}: {have}",
            "a cube never changes variables; bump the product name or delete the cube",
        )


def _tile_region(province_grid: ProvinceGrid, tile: Tile) -> tuple[slice, slice]:
    on_grid = province_grid.grid.tile(tile.ix, tile.iy)
    if not np.allclose(on_grid.bounds, tile.bounds):
        raise BadInputError(
            "tile", tile.tile_id, f"a tile of the province grid (bounds {on_grid.bounds})"
        )
    minx, miny, maxx, maxy = province_grid.bounds
    tb = tile.bounds
    if tb[0] < minx or tb[1] < miny or tb[2] > maxx or tb[3] > maxy:
        raise BadInputError(
            "tile", tile.tile_id, f"a tile inside the province bounds {province_grid.bounds}"
        )
    return province_grid.region(tile)


def _check_coords(data: xr.Dataset, tile: Tile, province_grid: ProvinceGrid) -> None:
    gbox = province_grid.grid.tile(tile.ix, tile.iy).geobox
    expected = xr_coords(gbox)
    res = float(province_grid.grid.resolution)
    for dim in ("y", "x"):
        if dim not in data.coords:
            raise BadInputError(
                f"data.{dim}", None, f"{dim} coordinates of the tile geobox (pixel centres)"
            )
        got = np.asarray(data[dim].values, dtype="float64")
        want = np.asarray(expected[dim].values, dtype="float64")
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=res * 1e-3):
            raise BadInputError(
                f"data.{dim}",
                f"{got.size} values from {got[:1]} to {got[-1:]}",
                f"{want.size} pixel centres from {want[0]} to {want[-1]} (tile {tile.tile_id})",
                "load onto tile.geobox",
            )


def _cast(name: Hashable, var: xr.DataArray, dtype: np.dtype) -> xr.DataArray:
    if var.dtype == dtype:
        return var
    src = var.dtype
    if np.can_cast(src, dtype, casting="same_kind") or (src.kind in "biu" and dtype.kind in "biu"):
        return var.astype(dtype)
    raise BadInputError(
        f"data[{name!r}].dtype", str(src), f"castable to the cube dtype {dtype} (same kind)"
    )


def _runs(cube_index: np.ndarray, data_index: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """Contiguous runs of cube time indices: [(start, stop, data indices)]."""
    order = np.argsort(cube_index)
    runs: list[tuple[int, int, list[int]]] = []
    for k in order:
        c, d = int(cube_index[k]), int(data_index[k])
        if runs and runs[-1][1] == c:
            start, _, ds = runs[-1]
            runs[-1] = (start, c + 1, [*ds, d])
        else:
            runs.append((c, c + 1, [d]))
    return runs


def _time_indices(url: str, cube: xr.Dataset, data: xr.Dataset) -> np.ndarray:
    if "time" not in data.coords or data["time"].ndim != 1:
        raise BadInputError("data.time", None, "a 1-D time coordinate")
    times = pd.DatetimeIndex([to_utc(t) for t in data["time"].values]).astype("datetime64[ns]")
    if times.has_duplicates:
        raise BadInputError("data.time", list(times.astype(str)), "unique times")
    known = pd.DatetimeIndex(cube["time"].values)
    idx = known.get_indexer(times)
    if (idx < 0).any():
        missing = list(times[idx < 0].astype(str))
        raise BadInputError(
            "data.time",
            missing,
            f"times of the cube {url}",
            "call init_cube with these times first",
        )
    return idx


@dataclass(frozen=True)
class RegionWrite:
    """What :func:`write_tile` wrote: enough to find the chunks again."""

    url: str
    """Cube URL."""
    variables: tuple[str, ...]
    """Variables written."""
    time_indices: tuple[int, ...]
    """Cube time indices written, in the order of ``data.time``."""
    y: tuple[int, int]
    """Pixel rows [start, stop) in the province grid."""
    x: tuple[int, int]
    """Pixel columns [start, stop) in the province grid."""


def prepare_tile_write(
    store: str,
    province: str,
    product: str,
    province_grid: ProvinceGrid,
    tile: Tile,
    data: xr.Dataset,
) -> tuple[list[Any], RegionWrite]:
    """Validate ``data`` and build (without running) the region writes of :func:`write_tile`.

    Returns the Dask delayed writes and a :class:`RegionWrite`; computing the delayed objects
    together with other work lets Dask share the upstream graph.
    """
    if isinstance(data, xr.DataArray):
        if data.name is None:
            raise BadInputError("data", data, "an xarray.Dataset or a named DataArray")
        data = data.to_dataset()
    if not isinstance(data, xr.Dataset):
        raise BadInputError("data", type(data).__name__, "an xarray.Dataset with (time, y, x) vars")
    if not data.data_vars:
        raise BadInputError("data", list(data.data_vars), "at least one (time, y, x) variable")
    url = cube_url(store, province, product)
    cube = open_cube(url, raw=True)
    _check_cube(url, cube, grid_attrs(province_grid))
    yslice, xslice = _tile_region(province_grid, tile)
    raster_vars = variable_names(cube, SPATIAL_DIMS)
    names = list(data.data_vars)
    for name in names:
        dims = tuple(data[name].dims)
        if set(dims) != set(SPATIAL_DIMS) or len(dims) != 3:
            hint = (
                "tile-level scalars go into the STAC item properties (write_tile_product), "
                "province-level values through write_time_values"
                if dims == TIME_DIMS
                else "transpose or squeeze to (time, y, x); split a band dim into variables "
                "with .to_dataset('band')"
            )
            raise BadInputError(f"data[{name!r}].dims", dims, f"{SPATIAL_DIMS}", hint)
        if name not in raster_vars:
            raise BadInputError("data variable", name, f"one of the cube's rasters {raster_vars}")
    _check_coords(data, tile, province_grid)
    cube_idx = _time_indices(url, cube, data)

    n = province_grid.grid.tile_px
    ds = xr.Dataset(
        {
            name: xr.Variable(
                SPATIAL_DIMS,
                _cast(name, data[name].transpose(*SPATIAL_DIMS), cube[name].dtype).data,
            )
            for name in names
        }
    ).chunk({"time": 1, "y": n, "x": n})
    writes = []
    for start, stop, data_idx in _runs(cube_idx, np.arange(len(cube_idx))):
        region = {"time": slice(start, stop), "y": yslice, "x": xslice}
        writes.append(
            ds.isel(time=data_idx).to_zarr(
                url, mode="r+", region=region, compute=False, **_zarr_kwargs(url)
            )
        )
    info = RegionWrite(
        url=url,
        variables=tuple(str(n) for n in names),
        time_indices=tuple(int(i) for i in cube_idx),
        y=(yslice.start, yslice.stop),
        x=(xslice.start, xslice.stop),
    )
    return writes, info


def write_tile(
    store: str,
    province: str,
    product: str,
    province_grid: ProvinceGrid,
    tile: Tile,
    data: xr.Dataset,
) -> RegionWrite:
    """Write one tile's ``(time, y, x)`` variables into their chunk region of the cube.

    ``data`` (lazy or computed) must sit exactly on ``tile.geobox`` (y/x pixel centres) and its
    times must be cube times (:func:`init_cube`); only those time indices are written, so another
    date window of the same tile, and every other tile, stay untouched. Safe to run concurrently
    for different tiles. Returns a :class:`RegionWrite`.
    """
    writes, info = prepare_tile_write(store, province, product, province_grid, tile, data)
    dask.compute(*writes)
    return info


def write_time_values(store: str, province: str, product: str, data: xr.Dataset) -> list[int]:
    """Write province-level ``(time,)`` variables at their times; returns the cube time indices.

    Run serially (e.g. once per run after the tiles): each value is one chunk.
    """
    url = cube_url(store, province, product)
    cube = open_cube(url, raw=True)
    time_vars = variable_names(cube, TIME_DIMS)
    for name in data.data_vars:
        if name not in time_vars or tuple(data[name].dims) != TIME_DIMS:
            raise BadInputError(
                "data variable", (name, data[name].dims), f"one of {time_vars} with dims ('time',)"
            )
    cube_idx = _time_indices(url, cube, data)
    ds = xr.Dataset(
        {n: xr.Variable(TIME_DIMS, _cast(n, data[n], cube[n].dtype).data) for n in data.data_vars}
    )
    for start, stop, data_idx in _runs(cube_idx, np.arange(len(cube_idx))):
        ds.isel(time=data_idx).to_zarr(
            url, mode="r+", region={"time": slice(start, stop)}, **_zarr_kwargs(url)
        )
    return [int(i) for i in cube_idx]


def open_product(
    store: str,
    province: str,
    product: str,
    *,
    chunks: Mapping[str, int] | None = None,
    sort_time: bool = True,
) -> xr.Dataset:
    """Open a product cube lazily (Dask, one chunk per tile and date by default).

    Float variables come back with nodata as NaN; integer (class) variables keep their dtype and
    their fill value (``encoding["_FillValue"]``) as the nodata code. ``sort_time`` sorts the
    append-ordered time axis.
    """
    url = cube_url(store, province, product)
    ds = open_cube(url, chunks=dict(chunks) if chunks is not None else {})
    if sort_time and not ds.indexes["time"].is_monotonic_increasing:
        ds = ds.sortby("time")
    return ds


def chunk_keys(info: RegionWrite) -> list[str]:
    """Store keys (relative to the cube) of the chunks a :class:`RegionWrite` covers."""
    import zarr

    group = zarr.open_group(
        info.url, mode="r", storage_options=_zarr_kwargs(info.url).get("storage_options")
    )
    keys = []
    for name in info.variables:
        arr = group[name]
        if not isinstance(arr, zarr.Array):
            raise BadInputError(f"{info.url}/{name}", "a group", "a Zarr array")
        cy, cx = arr.chunks[1], arr.chunks[2]
        for t in info.time_indices:
            for iy in range(info.y[0] // cy, math.ceil(info.y[1] / cy)):
                for ix in range(info.x[0] // cx, math.ceil(info.x[1] / cx)):
                    key = arr.metadata.encode_chunk_key((t, iy, ix))
                    keys.append(f"{name}/{key}")
    return keys


def times_of(values: Sequence[Any]) -> pd.DatetimeIndex:
    """Naive-UTC ``DatetimeIndex`` of ``values`` (kept in order, duplicates kept)."""
    return pd.DatetimeIndex([to_utc(t) for t in values]).as_unit("ns")
