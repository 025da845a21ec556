"""``terrapipe bench-tiles``: how fast ``terrapipe serve`` renders a 256 px map tile, as JSON.

A 1024 px COG per product kind (4-band float32 reflectance drawn as truecolor, uint8 classes)
is written with the product writer's COG settings (512 px blocks, deflate, overviews), then
every web mercator tile over it at the COG's native zoom and two zooms out (overviews) is
rendered in-process by the server's renderer, ``repeat`` times. Beside it, in the same process,
the baseline: rio-tiler reading the same tiles (reprojected, masked) without colouring or PNG
encoding. The ratio render / read is the cost of the colouring and encoding. ``zoomed_out``: a
grid of COGs seen from 4 and 6 zooms out, the renderer against rio-tiler's own mosaic read.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import numpy as np

from pipelines.web.store import ProductIndex, StoreIndex, TileItem

#: The bench COG's edge, pixels, and pixel size, metres (Sentinel-2 10 m bands).
COG_PX = 1024
PIXEL_M = 10.0
#: Where it lies: UTM zone 50N over the demo province's longitudes (EPSG:32650).
CRS = "EPSG:32650"
ORIGIN = (250_000.0, 3_840_000.0)


class _OneLabelIndex(StoreIndex):
    """A store index of fixed products (the bench's COGs), no catalog read."""

    def __init__(self, fixed: dict[str, ProductIndex]) -> None:
        super().__init__("bench", "bench")
        self._fixed = fixed

    def products(self) -> dict[str, ProductIndex]:
        return self._fixed


def _write(
    root: str, name: str, data: np.ndarray, nodata: float | None, at: tuple[int, int] = (0, 0)
) -> TileItem:
    import xarray as xr
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    from pipelines.products import write_cog

    x0, y0 = ORIGIN[0] + at[0] * COG_PX * PIXEL_M, ORIGIN[1] + at[1] * COG_PX * PIXEL_M
    box = GeoBox.from_bbox(
        (x0, y0, x0 + COG_PX * PIXEL_M, y0 + COG_PX * PIXEL_M), crs=CRS, resolution=PIXEL_M
    )
    bands = [f"b{i}" for i in range(data.shape[0])] if data.shape[0] != 4 else None
    names = bands or ["B02", "B03", "B04", "B08"]
    arr = xr.DataArray(
        data, dims=("band", "y", "x"), coords={"band": names, **xr_coords(box)}, name=name
    )
    url = f"{root}/{name}_{at[0]}_{at[1]}.tif"
    write_cog(arr, url, nodata=nodata, blocksize=512)
    from pipelines.products.stac import footprint_wgs84

    _, bbox = footprint_wgs84(box)
    west, south, east, north = bbox
    return TileItem("bench", "2025-07-01", (west, south, east, north), url + ".json", url)


def native_zoom(lat: float) -> int:
    """The COGs' own zoom: the first whose web mercator pixel is no larger than a COG pixel
    (:data:`PIXEL_M`) at latitude ``lat`` (degrees)."""
    return int(np.ceil(np.log2(156_543.03 * np.cos(np.radians(lat)) / PIXEL_M)))


def _fields(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth reflectance (4 bands, 0-0.5) and a class raster (codes 1-4) of COG_PX pixels."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = gaussian_filter(rng.normal(size=(4, COG_PX, COG_PX)), sigma=(0, 12, 12))
    refl = (0.25 + noise / (6 * noise.std())).clip(0.0, 0.5).astype("float32")
    classes = (np.digitize(noise[0], np.quantile(noise[0], [0.5, 0.8, 0.9])) + 1).astype("uint8")
    return refl, classes[np.newaxis]


def _times(fn: Any, tiles: list[Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        for t in tiles:
            t0 = time.perf_counter()
            fn(t)
            out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=10)
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(q[8], 2)}


def bench_tiles(repeat: int = 5, seed: int = 0) -> dict[str, Any]:
    """Render and read times per tile (ms) of each product kind; see the module docstring."""
    from rio_tiler.io import Reader

    from pipelines.web.render import TILE_PX, TileRenderer, web_mercator

    tms = web_mercator()
    refl, classes = _fields(seed)
    results: dict[str, Any] = {
        "cog_px": COG_PX,
        "tile_px": TILE_PX,
        "repeat": repeat,
        "data": "SYNTHETIC (smooth Gaussian fields)",
    }
    with tempfile.TemporaryDirectory(prefix="terrapipe-bench-tiles-") as root:
        items = {
            "dehaze": _write(root, "dehaze", refl, float("nan")),
            "cloud_mask": _write(root, "cloud_mask", classes, 0),
        }
        index = _OneLabelIndex({n: ProductIndex(n, {it.label: (it,)}) for n, it in items.items()})
        renderer = TileRenderer(index)
        for name, item in items.items():
            west, south, east, north = item.bbox
            native = native_zoom((south + north) / 2)
            per_zoom: dict[str, Any] = {}
            for z in (native, native - 2):
                tiles = list(tms.tiles(west, south, east, north, [z]))
                label = item.label
                t0 = time.perf_counter()
                renderer.tile(name, label, tiles[0].z, tiles[0].x, tiles[0].y)
                first_ms = (time.perf_counter() - t0) * 1000.0
                indexes = renderer.band_indexes(name, item)

                def render(t: Any, name: str = name, label: str = label) -> None:
                    renderer.tile(name, label, t.z, t.x, t.y)

                def read(t: Any, url: str = item.cog_url, idx: list[int] = indexes) -> None:
                    with Reader(url, tms=tms) as src:
                        src.tile(t.x, t.y, t.z, tilesize=TILE_PX, indexes=idx)

                read_ms = _times(read, tiles, repeat)
                render_ms = _times(render, tiles, repeat)
                r, b = _summary(render_ms), _summary(read_ms)
                per_zoom[f"z{z}"] = {
                    "tiles": len(tiles),
                    "first_tile_ms": round(first_ms, 2),
                    "render": r,
                    "read_baseline": b,
                    "render_over_read": round(r["median_ms"] / b["median_ms"], 2),
                }
            results[name] = {"kind": renderer.style(name).kind, **per_zoom}
        results["zoomed_out"] = _bench_zoomed_out(root, refl)
    return results


#: The grid of COGs the zoomed-out part renders (ZOOMED_OUT_GRID x ZOOMED_OUT_GRID).
ZOOMED_OUT_GRID = 4


def _bench_zoomed_out(root: str, refl: np.ndarray) -> dict[str, Any]:
    """A grid of COGs seen from zoomed out: the map tile over its centre at 4 and 6 zooms out
    of the COGs' own, rendered once each way: the renderer (each COG read in its window of the
    tile, :func:`pipelines.web.render.read_tile_window`) against the peer, rio-tiler's
    ``mosaic_reader`` over ``Reader.tile`` (each COG read over the whole tile's extent)."""
    from rio_tiler.io import Reader
    from rio_tiler.mosaic import mosaic_reader

    from pipelines.web.render import TILE_PX, TileRenderer, overlapping, web_mercator

    tms = web_mercator()
    n = ZOOMED_OUT_GRID
    items = tuple(
        _write(root, "grid", refl, float("nan"), at=(i, j)) for i in range(n) for j in range(n)
    )
    renderer = TileRenderer(_OneLabelIndex({"dehaze": ProductIndex("dehaze", {"g": items})}))
    renderer.value_range("dehaze", "g")  # the stretch is read once, before the timings
    lon = (items[0].bbox[0] + items[-1].bbox[2]) / 2
    lat = (items[0].bbox[1] + items[-1].bbox[3]) / 2
    native = native_zoom(lat)
    out: dict[str, Any] = {"cogs": len(items), "data": "SYNTHETIC", "native_zoom": native}

    def read(item: TileItem, tx: int, ty: int, tz: int) -> Any:
        with Reader(item.cog_url, tms=tms) as src:
            return src.tile(tx, ty, tz, tilesize=TILE_PX, indexes=[3, 2, 1])

    for z in (native - 4, native - 6):
        t = tms.tile(lon, lat, z)
        over = overlapping(items, tms.bounds(t))
        t0 = time.perf_counter()
        renderer.tile("dehaze", "g", t.z, t.x, t.y)
        render_ms = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        mosaic_reader(over, read, t.x, t.y, t.z, threads=0)
        peer_ms = (time.perf_counter() - t0) * 1000.0
        out[f"z{z}"] = {
            "cogs_in_tile": len(over),
            "render_ms": round(render_ms, 1),
            "peer_read_ms": round(peer_ms, 1),
            "peer_over_render": round(peer_ms / render_ms, 2),
        }
    return out
