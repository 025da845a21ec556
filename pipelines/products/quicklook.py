"""Small PNG previews of one tile and date (<= ``max_px`` pixels a side).

Three kinds:

- ``"truecolor"``: ``(band=3, y, x)`` reflectance in R, G, B order, each band stretched between its
  ``percentiles`` of the valid pixels; nodata is transparent. Plain RGBA image (Pillow).
- ``"classes"``: a 2-D class raster with a fixed palette per class enum (CloudClass, FloodClass,
  LandClass; others get a qualitative palette) and a legend (matplotlib).
- ``"continuous"``: a 2-D value raster with a colormap and a colorbar (matplotlib).

And :func:`choropleth_png`, the county map of a yield forecast.

Matplotlib is used through its object API (``Figure`` + Agg canvas, no pyplot), so quicklooks and
maps may be written from several threads, and the caller's matplotlib backend is left as it is.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.classes import CloudClass, FloodClass, LandClass
from pipelines.errors import BadInputError
from pipelines.storage import write_bytes

QuicklookKind = Literal["truecolor", "classes", "continuous"]
#: zlib level of the PNGs (quicklooks, and the web page's map tiles): the fastest. DEMO bench
#: tile: a truecolor preview 7 % larger than at Pillow's default (level 6, which takes 2.6 times
#: as long: 0.090 against 0.035 s), a continuous map 20 % (0.102 against 0.065 s for the whole
#: figure), a few hundred kB either way; a map tile costs a few ms where the default costs tens
#: of ms, and tiles travel over a local network or loopback.
PNG_COMPRESS_LEVEL = 1
KINDS: tuple[str, ...] = ("truecolor", "classes", "continuous")

#: Fixed class colours (hex), so that every quicklook of a product reads the same.
PALETTES: dict[type[IntEnum], dict[int, str]] = {
    CloudClass: {
        CloudClass.NODATA: "#000000",
        CloudClass.CLEAR: "#4daf4a",
        CloudClass.CLOUD: "#f2f2f2",
        CloudClass.SHADOW: "#5a5a5a",
        CloudClass.CIRRUS: "#86d0ff",
        CloudClass.SNOW: "#ff7fd0",
    },
    FloodClass: {
        FloodClass.NODATA: "#000000",
        FloodClass.DRY: "#d8c79c",
        FloodClass.FLOODED: "#1f78ff",
        FloodClass.PERMANENT_WATER: "#08306b",
        FloodClass.FLOODED_VEGETATION: "#33a02c",
    },
    LandClass: {
        LandClass.NODATA: "#000000",
        LandClass.WHEAT: "#f5d76e",
        LandClass.CORN: "#f39c12",
        LandClass.RICE: "#7fdbb6",
        LandClass.COTTON: "#f8f8f8",
        LandClass.SOYBEAN: "#a0522d",
        LandClass.FOREST: "#1e6b2f",
        LandClass.GRASSLAND: "#9acd32",
        LandClass.URBAN: "#c0392b",
        LandClass.WATER: "#2e86de",
        LandClass.RIVER: "#0b3d91",
    },
}


def _factor(shape: tuple[int, ...], max_px: int) -> int:
    return max(1, math.ceil(max(shape[-2:]) / max_px))


def _block_mean(arr: np.ndarray, f: int) -> np.ndarray:
    """NaN-aware mean over ``f`` x ``f`` blocks of the last two axes (edges padded with NaN),
    float32: block sums of the finite values over block counts of them, each an OpenCV
    area resize (exact block means at an integer factor)."""
    if f == 1:
        return arr
    import cv2

    h, w = arr.shape[-2:]
    ph, pw = math.ceil(h / f) * f, math.ceil(w / f) * f
    finite = np.isfinite(arr)
    values = np.where(finite, arr, 0).astype("float32", copy=False)
    counts = finite.astype("float32")
    if (ph, pw) != (h, w):
        pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph - h), (0, pw - w)]
        values, counts = np.pad(values, pad), np.pad(counts, pad)
    planes = values.reshape(-1, ph, pw)
    weights = counts.reshape(-1, ph, pw)
    size = (pw // f, ph // f)
    out = np.empty((planes.shape[0], ph // f, pw // f), dtype="float32")
    for i in range(planes.shape[0]):
        sums = cv2.resize(planes[i], size, interpolation=cv2.INTER_AREA)
        n = cv2.resize(weights[i], size, interpolation=cv2.INTER_AREA)
        with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN blocks stay NaN
            out[i] = np.where(n > 0, sums / n, np.nan)
    return out.reshape(*arr.shape[:-2], ph // f, pw // f)


def _valid(arr: np.ndarray, nodata: float | None) -> np.ndarray:
    arr = arr.astype("float32")
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        arr = np.where(arr == nodata, np.nan, arr)
    return arr


def _truecolor_png(
    arr: np.ndarray, nodata: float | None, percentiles: tuple[float, float], max_px: int
) -> bytes:
    from PIL import Image

    if arr.ndim != 3 or arr.shape[0] != 3:
        raise BadInputError("data.dims", arr.shape, "(band=3, y, x) in R, G, B order")
    a = _block_mean(_valid(arr, nodata), _factor(arr.shape, max_px))
    rgb = np.zeros((*a.shape[1:], 4), dtype="uint8")
    valid = np.all(np.isfinite(a), axis=0)
    for b in range(3):
        band = a[b]
        finite = band[valid]
        if finite.size:
            lo, hi = np.percentile(finite, percentiles)
            scaled = (band - lo) / (hi - lo) if hi > lo else np.zeros_like(band)
            rgb[..., b] = (np.clip(np.nan_to_num(scaled), 0, 1) * 255).round().astype("uint8")
    rgb[..., 3] = np.where(valid, 255, 0)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGBA").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _figure(max_px: int, aspect: float, side: float) -> tuple[Figure, Axes]:
    """A figure at most ``max_px`` wide, its left ``1 - side`` holding the image axes."""

    dpi = 100
    width_in = max_px / dpi
    img_w = 1.0 - side
    height_in = min(max_px / dpi, width_in * img_w * aspect + 0.1)
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, img_w - 0.02, 0.98))
    ax.set_axis_off()
    return fig, ax


def figure_png(fig: Figure) -> bytes:
    """A matplotlib figure as PNG bytes at its own dpi (the quicklooks' compression)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return buf.getvalue()


def _class_names_colours(
    classes: type[IntEnum] | Mapping[int, str] | None,
    palette: Mapping[int, str] | None,
    present: np.ndarray,
) -> tuple[dict[int, str], dict[int, str]]:
    from matplotlib import colormaps

    if classes is None:
        names = {int(v): str(int(v)) for v in present}
    elif isinstance(classes, Mapping):
        names = {int(k): str(v) for k, v in classes.items()}
    else:
        names = {int(c): c.name.lower() for c in classes}
    if palette is None and isinstance(classes, type) and classes in PALETTES:
        palette = PALETTES[classes]
    colours = {int(k): v for k, v in (palette or {}).items()}
    qualitative = colormaps["tab20"]
    for i, code in enumerate(sorted(set(names) | {int(v) for v in present})):
        names.setdefault(code, str(code))
        if code not in colours:
            r, g, b, _ = qualitative(i % 20)
            colours[code] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return names, colours


def _classes_png(
    arr: np.ndarray,
    classes: type[IntEnum] | Mapping[int, str] | None,
    palette: Mapping[int, str] | None,
    title: str | None,
    max_px: int,
) -> bytes:
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    if arr.ndim != 2:
        raise BadInputError("data.dims", arr.shape, "(y, x) for a class raster")
    if arr.dtype.kind not in "biu":
        raise BadInputError("data.dtype", str(arr.dtype), "an integer class raster")
    f = _factor(arr.shape, max_px)
    small = arr[::f, ::f]  # nearest: classes are never averaged
    present = np.unique(small)
    names, colours = _class_names_colours(classes, palette, present)
    codes = sorted(colours)
    cmap = ListedColormap([colours[c] for c in codes])
    norm = BoundaryNorm([*[c - 0.5 for c in codes], codes[-1] + 0.5], cmap.N)
    fig, ax = _figure(max_px, small.shape[0] / small.shape[1], side=0.32)
    ax.imshow(small, cmap=cmap, norm=norm, interpolation="nearest")
    handles = [
        Patch(facecolor=colours[c], edgecolor="black", linewidth=0.5, label=f"{c} {names[c]}")
        for c in codes
        if c in names
    ]
    fig.legend(
        handles=handles,
        loc="center right",
        fontsize=7,
        title_fontsize=7,
        frameon=False,
        title=title,
    )
    return figure_png(fig)


def _continuous_png(
    arr: np.ndarray,
    nodata: float | None,
    cmap: str,
    vmin: float | None,
    vmax: float | None,
    percentiles: tuple[float, float],
    label: str | None,
    max_px: int,
) -> bytes:
    if arr.ndim != 2:
        raise BadInputError("data.dims", arr.shape, "(y, x) for a continuous raster")
    small = _block_mean(_valid(arr, nodata), _factor(arr.shape, max_px))
    finite = small[np.isfinite(small)]
    if finite.size:
        lo, hi = np.percentile(finite, percentiles)
    else:
        lo, hi = 0.0, 1.0
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if vmax <= vmin:
        vmax = vmin + 1.0
    fig, ax = _figure(max_px, small.shape[0] / small.shape[1], side=0.18)
    im = ax.imshow(np.ma.masked_invalid(small), cmap=cmap, vmin=vmin, vmax=vmax)
    cax = fig.add_axes((0.86, 0.1, 0.03, 0.8))
    cbar = fig.colorbar(im, cax=cax)
    cbar.ax.tick_params(labelsize=7)
    if label:
        cbar.set_label(label, fontsize=7)
    return figure_png(fig)


def write_quicklook(
    data: xr.DataArray,
    url: str,
    kind: QuicklookKind = "continuous",
    *,
    nodata: float | None = None,
    classes: type[IntEnum] | Mapping[int, str] | None = None,
    palette: Mapping[int, str] | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    label: str | None = None,
    max_px: int = 512,
) -> int:
    """Render ``data`` as a PNG of at most ``max_px`` a side at ``url``; returns its size in bytes.

    ``kind="truecolor"``: ``(band=3, y, x)`` R, G, B reflectance, percentile stretch.
    ``kind="classes"``: ``(y, x)`` integer classes; ``classes`` an IntEnum (fixed palettes for
    CloudClass, FloodClass, LandClass) or ``{code: name}``, ``palette`` ``{code: colour}``.
    ``kind="continuous"``: ``(y, x)`` values; ``cmap``, ``vmin``/``vmax`` (default: the
    ``percentiles`` of the valid values), ``label`` for the colorbar (name and units).
    ``nodata``: value treated as missing (NaN always is).
    """
    if kind not in KINDS:
        raise BadInputError("kind", kind, f"one of {KINDS}")
    if not isinstance(data, xr.DataArray):
        raise BadInputError("data", type(data).__name__, "an xarray.DataArray")
    if max_px < 16:
        raise BadInputError("max_px", max_px, "at least 16")
    if tuple(data.dims[-2:]) != ("y", "x"):
        raise BadInputError("data.dims", data.dims, "(..., y, x)")
    arr = np.asarray(data.values)
    if kind == "truecolor":
        png = _truecolor_png(arr, nodata, percentiles, max_px)
    elif kind == "classes":
        png = _classes_png(arr, classes, palette, label, max_px)
    else:
        png = _continuous_png(arr, nodata, cmap, vmin, vmax, percentiles, label, max_px)
    write_bytes(url, png)
    return len(png)


def choropleth_png(
    forecast: pd.DataFrame,
    counties_geojson: Any,
    *,
    crop: str | None = None,
    value: str = "forecast",
) -> bytes:
    """A county choropleth PNG of ``forecast[value]`` for ``crop`` (the largest-area or first
    crop when None); ``counties_geojson``: path or GeoJSON mapping with ``county_id``."""
    import geopandas as gpd

    if isinstance(counties_geojson, dict):
        gdf = gpd.GeoDataFrame.from_features(counties_geojson, crs="EPSG:4326")
    else:
        gdf = gpd.read_file(str(counties_geojson))
    if "county_id" not in gdf:
        raise BadInputError("counties_geojson", list(gdf.columns), "features with county_id")
    crops = list(dict.fromkeys(forecast["crop"]))
    if not crops:
        raise BadInputError("forecast", 0, "at least one forecast row")
    crop = crop or crops[0]
    if crop not in crops:
        raise BadInputError("crop", crop, f"one of the forecast's crops {crops}")
    sub = forecast[forecast["crop"] == crop].groupby("county_id")[value].mean()
    gdf = gdf.assign(value=gdf["county_id"].astype(int).map(sub))
    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    gdf.plot(
        column="value",
        ax=ax,
        cmap="YlGn",
        legend=True,
        edgecolor="0.3",
        missing_kwds={"color": "0.85", "label": "no forecast"},
        legend_kwds={"label": f"{crop} {value} (t/ha)", "shrink": 0.7},
    )
    season = forecast["season"].iloc[0] if "season" in forecast else ""
    ax.set_title(f"{crop} yield {value} {season}")
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
