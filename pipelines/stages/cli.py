"""``terrapipe stage NAME``: one stage (and the stages it needs) on GeoTIFFs, by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import xarray as xr

from pipelines.errors import BadInputError

FileList = Annotated[list[Path] | None, typer.Option(help="GeoTIFF, repeatable (one per date).")]
FileOpt = Annotated[Path | None, typer.Option(help="GeoTIFF.")]


def stage(
    name: Annotated[str, typer.Argument(help="Registered stage (see `terrapipe stages`).")],
    out: Annotated[Path, typer.Option("--out", help="Output GeoTIFF (COG).")],
    s2: FileList = None,
    s2_l1c: FileList = None,
    s1: FileList = None,
    s1_pre: FileList = None,
    s1_post: FileList = None,
    dem: FileOpt = None,
    hand: Annotated[
        Path | None,
        typer.Option(
            help="GeoTIFF: height above nearest drainage (m); without it, derived from --dem "
            "(paths that leave the file end at its edge)."
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="'learned' runs the stage's CNN (e.g. dehaze -> dehaze_learned); another "
            "name runs the stage registered as NAME_METHOD (cloud_mask --method s2cloudless -> "
            "cloud_mask_s2cloudless)."
        ),
    ] = "registered",
    bands: Annotated[
        list[str] | None,
        typer.Option(
            help="SOURCE=NAMES: the bands of an input's GeoTIFFs in order, for files whose band "
            "descriptions do not name them (e.g. s2=B02,B03,B04,B08 or s1=VV,VH); repeatable."
        ),
    ] = None,
) -> None:
    """Run one stage on GeoTIFFs and print a one-line JSON summary."""
    from pipelines import geotiff
    from pipelines.engine.graph import as_dataset, gather_sources, resolve_stages
    from pipelines.inputs import get_input
    from pipelines.products import write_cog
    from pipelines.stages.registry import get_stage, list_stages, resolve_order

    if method == "learned" and not name.endswith("_learned") and name != "super_resolution":
        name = f"{name}_learned"
    elif method not in ("registered", "classical", "learned"):
        variants = [n[len(name) + 1 :] for n in list_stages() if n.startswith(f"{name}_")]
        if method not in variants:
            raise BadInputError(
                "--method", method, f"one of {['classical', 'learned', *variants]} for {name!r}"
            )
        name = f"{name}_{method}"
    target = get_stage(name)
    if target.scope != "tile":
        raise BadInputError(
            "stage", name, "a stage made tile by tile", "run it with `terrapipe season`"
        )
    chain = resolve_order([name])
    given: dict[str, list[Path] | None] = {
        "s2": s2,
        "s2_l1c": s2_l1c,
        "s1": s1,
        "s1_pre": s1_pre,
        "s1_post": s1_post,
        "dem": [dem] if dem else None,
        "hand": [hand] if hand else None,
    }

    def flag(source: str) -> str:
        return f"--{source.replace('_', '-')}"

    # the inputs read by band (S2, S1) take names; a DEM is one band
    named = band_names_by_source(
        bands or [], [k for k in given if get_input(k).loader in ("s2", "s1")]
    )

    def read(source: str) -> xr.DataArray | None:
        """The GeoTIFFs given for ``source``, read by its loader family (None: none given)."""
        files = given.get(source)
        if not files:
            return None
        loader = get_input(source).loader
        if loader == "s2":
            return geotiff.read_optical(files, flag(source), band_names=named.get(source))
        if loader == "s1":
            return geotiff.read_sar(files, flag(source), band_names=named.get(source))
        if loader == "dem":
            return geotiff.read_dem(files[0], flag(source))
        raise BadInputError("input", source, f"one of {sorted(given)}")

    def missing(source: str) -> Exception:
        return BadInputError(flag(source), None, f"a GeoTIFF: stage {name!r} needs {source}")

    sources = gather_sources(chain, read, missing)
    rasters = {k: v for k, v in sources.items() if v is not None}
    geotiff.check_same_grid(rasters)
    for raster in rasters.values():  # which file an input came from stays out of the output
        raster.attrs.pop(geotiff.SOURCE_ATTR, None)
    crs = next(iter(rasters.values())).rio.crs
    values = resolve_stages(chain, sources)
    try:
        result = as_dataset(name, values[name]).compute()
    except Exception as exc:
        failure = read_failure(exc, [f for files in given.values() for f in files or []])
        if failure is exc:
            raise
        raise failure from exc
    raster_vars = [str(v) for v in result.data_vars if {"y", "x"} <= set(result[v].dims)]
    stack = xr.concat([result[v] for v in raster_vars], dim=xr.Variable("band", raster_vars))
    if "time" in stack.dims:
        if stack.sizes["time"] == 1:
            stack = stack.isel(time=0, drop=True)
        else:
            stack = stack.stack(layer=("time", "band")).transpose("layer", "y", "x")
            labels = [f"{str(t)[:10]}_{b}" for t, b in stack["layer"].values]
            stack = stack.drop_vars(["layer", "time", "band"]).rename(layer="band")
            stack = stack.assign_coords(band=labels)
    stack = stack.rio.write_crs(crs)
    write_cog(stack, str(out), nodata=file_nodata(result, raster_vars, stack.dtype))
    print(
        json.dumps(
            {"stage": name, "version": target.version, "out": str(out), **summarize_output(result)}
        )
    )


def band_names_by_source(values: list[str], sources: list[str]) -> dict[str, tuple[str, ...]]:
    """``--bands SOURCE=NAMES`` options -> the names of each source's bands in file order
    (:func:`pipelines.geotiff.parse_band_names`); ``sources``: the inputs that take names."""
    from pipelines import geotiff

    out: dict[str, tuple[str, ...]] = {}
    for value in values:
        source, sep, names = value.partition("=")
        source = source.strip().lstrip("-").replace("-", "_")
        if not sep or source not in sources:
            raise BadInputError(
                "--bands",
                value,
                f"SOURCE=NAMES with SOURCE one of {sources}, e.g. s2=B02,B03,B04,B08",
            )
        if source in out:
            raise BadInputError("--bands", value, f"one --bands for {source}")
        out[source] = geotiff.parse_band_names(names, "--bands")
    return out


def file_nodata(result: xr.Dataset, names: list[str], dtype: np.dtype) -> float | None:
    """The one nodata value of a GeoTIFF holding ``names`` as bands: NaN for floats; for integers
    the variables' ``nodata`` attribute (0, the classes' nodata, where absent) when all agree,
    else None (no nodata tag: e.g. cloud classes with 0 nodata beside a percentage whose 0 is a
    value and whose nodata is 255)."""
    if not np.issubdtype(dtype, np.integer):
        return float("nan")
    codes = {int(result[name].attrs.get("nodata", 0)) for name in names}
    return float(codes.pop()) if len(codes) == 1 else None


def read_failure(exc: Exception, files: list[Path]) -> Exception:
    """What a failure while the inputs are computed becomes: a data block that does not decode
    is a BadInputError naming the input files (a transient read is TransientIOError; anything
    else stays as it is)."""
    from pipelines.load import classify_read_error

    classified = classify_read_error(exc)
    if isinstance(classified, BadInputError):
        return BadInputError(
            "input GeoTIFFs",
            [str(f) for f in files],
            "GeoTIFFs whose data blocks decode",
            f"one is corrupt ({type(exc).__name__}: {exc})",
        )
    return classified


def summarize_output(ds: xr.Dataset) -> dict[str, Any]:
    """Small numbers that say what a stage output holds (per-scene values, class fractions)."""
    summary: dict[str, Any] = {}
    for key, var in ds.data_vars.items():
        name = str(key)
        values = np.asarray(var.values)
        if set(var.dims) <= {"time"}:
            summary[name] = [round(float(v), 4) for v in np.atleast_1d(values)]
        elif np.issubdtype(values.dtype, np.integer):
            valid = values[values != 0]
            classes, counts = np.unique(valid, return_counts=True)
            total = max(int(valid.size), 1)
            summary[f"{name}_fractions"] = {
                int(c): round(int(n) / total, 4) for c, n in zip(classes, counts, strict=True)
            }
        else:
            summary[f"{name}_mean"] = round(float(np.nanmean(values)), 5)
    return summary
