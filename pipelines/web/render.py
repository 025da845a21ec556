"""Map tiles, pixel values and parcel outlines from a product's COGs (rio-tiler).

A map tile (web mercator ``z/x/y``, 256 px) is read from every COG of the product's label that
overlaps it (rio-tiler reprojects; nearest resampling, so class codes are never blended) and
coloured by the product's :class:`LayerStyle`, derived from the stage registry:

- ``classes``: the registry's class names with the fixed quicklook palettes
  (:data:`pipelines.products.quicklook.PALETTES`) where the names match a class enum, a
  qualitative palette otherwise; code 0 (nodata / not cropland) is transparent.
- ``truecolor``: the R, G, B reflectance bands stretched between the 2nd and 98th percentiles of
  the label's valid pixels over all its tiles (as the quicklooks, but one stretch per date, so
  that neighbouring tiles match).
- ``continuous``: the first band with a colormap over the same percentile range.
- ``ids``: an integer id raster (parcels): a colour per id, 0 transparent.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from pipelines.errors import BadInputError
from pipelines.products.quicklook import PNG_COMPRESS_LEVEL
from pipelines.web.store import StoreIndex, TileItem

#: Stretch of truecolor and continuous layers: percentiles of the label's valid pixels.
PERCENTILES = (2.0, 98.0)
#: Map tile edge, pixels.
TILE_PX = 256
#: Colormap of continuous layers (perceptually uniform, readable by colour-blind users).
CONTINUOUS_CMAP = "viridis"
#: The most COGs one map tile reads. Zoomed out over a province, one tile spans hundreds of
#: product tiles (1,700 in a large province); each read costs an open and a request (about
#: 30 ms a COG on a local disk, tens of ms more on object storage), so such a tile is left
#: empty and the page asks to zoom in to :meth:`TileRenderer.min_zoom` (as mosaic tile servers
#: set a mosaic's minimum zoom). 64 COGs: about 2 s a tile on a local disk. At least 4: the
#: tile over a corner that four product tiles share overlaps all four at any zoom.
MAX_TILE_COGS = 64
#: The most COGs whose smallest overview samples a label's colour stretch, spread evenly over
#: its tiles: 64 overviews of up to 256 x 256 px are millions of pixels, far more than two
#: percentiles need, and the first view of a 1,700-tile date does not read them all.
RANGE_SAMPLE_COGS = 64
#: The deepest zoom the map offers (Leaflet's ``maxZoom`` on the page).
MAX_ZOOM = 20


class MissingProductFile(LookupError):
    """A product file the catalog names is not in the store (deleted or moved)."""

    def __init__(self, url: str, product: str, label: str, tile_id: str) -> None:
        self.url = url
        super().__init__(
            f"the COG of {product} {label} on tile {tile_id} is missing from the store ({url}); "
            f"rerun the product (terrapipe redo) or rebuild the catalog"
        )


@dataclass(frozen=True)
class LayerStyle:
    """How one product is drawn: kind, bands read, colours and legend."""

    kind: str
    """``classes``, ``truecolor``, ``continuous`` or ``ids``."""
    bands: tuple[str, ...]
    """COG band names read, in order (R, G, B for truecolor)."""
    colours: Mapping[int, str] = field(default_factory=dict)
    """Class code -> ``#rrggbb`` (classes)."""
    names: Mapping[int, str] = field(default_factory=dict)
    """Class code -> name (classes)."""

    def legend(self) -> list[dict[str, Any]]:
        """Legend entries for the page: ``{code, name, colour}`` for classes, else the kind."""
        if self.kind == "classes":
            return [
                {"code": c, "name": self.names.get(c, str(c)), "colour": self.colours[c]}
                for c in sorted(self.colours)
                if c != 0
            ]
        return []


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in rgb[:3])


def class_colours(names: Mapping[int, str]) -> dict[int, str]:
    """Colours of class codes: the quicklook palette of the class enum whose member names match
    every non-zero code's name; else per code the palette colour of a member of that name in any
    enum (``water``), and matplotlib's qualitative ``Set2`` for the rest."""
    from matplotlib import colormaps

    from pipelines.products.quicklook import PALETTES

    wanted = {c: n.lower().replace("_", " ") for c, n in names.items() if c != 0}
    by_name: dict[str, str] = {}
    for enum, palette in PALETTES.items():
        members = {int(m): m.name.lower().replace("_", " ") for m in enum}
        if wanted and all(members.get(c) == n for c, n in wanted.items()):
            return {c: palette[c] for c in names if c in palette}
        for code, name in members.items():
            by_name.setdefault(name, palette[code])
    qualitative = colormaps["Set2"]
    out = {0: "#000000"}
    unmatched = [c for c in sorted(wanted) if wanted[c] not in by_name]
    for c, n in wanted.items():
        out[c] = by_name.get(n) or _hex(qualitative(unmatched.index(c) % 8))
    return out


def layer_style(product: str, band_names: Sequence[str], dtype: str) -> LayerStyle:
    """The style of ``product`` from its registry entry and its COG's bands and dtype."""
    from pipelines.products.writer import TRUECOLOR_NAMES
    from pipelines.stages.registry import get_stage, list_stages

    bands = tuple(band_names)
    kind = get_stage(product).quicklook if product in list_stages() else "continuous"
    if kind == "classes":
        stage = get_stage(product)
        names = {int(k): str(v) for k, v in (stage.classes or {}).items()}
        return LayerStyle("classes", bands[:1], class_colours(names), names)
    if kind == "truecolor":
        for triple in TRUECOLOR_NAMES:
            if all(b in bands for b in triple):
                return LayerStyle("truecolor", tuple(triple))
        raise BadInputError(
            f"{product}.bands", list(bands), f"R, G, B bands among {TRUECOLOR_NAMES}"
        )
    if np.dtype(dtype).kind in "iu":
        return LayerStyle("ids", bands[:1])
    return LayerStyle("continuous", bands[:1])


def _indexes(item: TileItem, product: str, bands: Sequence[str]) -> list[int]:
    """1-based band indexes of ``bands`` in the item's COG (by band description)."""
    import rasterio

    with rasterio.open(item.cog_url) as src:
        names = list(src.descriptions)
    missing = [b for b in bands if b not in names]
    if missing:
        raise BadInputError(f"{product}.bands", names, f"bands {list(bands)}", f"missing {missing}")
    return [names.index(b) + 1 for b in bands]


def _open_check(item: TileItem, product: str) -> None:
    from pipelines import storage

    if not storage.exists(item.cog_url):
        raise MissingProductFile(item.cog_url, product, item.label, item.tile_id)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _gdal(method: _Method) -> _Method:
    """Run a renderer method inside the GDAL configuration of its store (S3 endpoint)."""

    @functools.wraps(method)
    def configured(self: TileRenderer, *args: Any, **kwargs: Any) -> Any:
        from pipelines import storage

        with storage.rasterio_env(self.index.store):
            return method(self, *args, **kwargs)

    return cast(_Method, configured)


class TileRenderer:
    """Renders map tiles and reads pixel values of the products of one store index."""

    def __init__(self, index: StoreIndex, max_tile_cogs: int = MAX_TILE_COGS) -> None:
        if max_tile_cogs < 4:
            raise BadInputError(
                "max_tile_cogs",
                max_tile_cogs,
                "at least 4 (a map tile over a corner four product tiles share reads all four)",
            )
        self.index = index
        #: The most COGs one map tile reads (:data:`MAX_TILE_COGS` by default).
        self.max_tile_cogs = max_tile_cogs
        self._lock = threading.Lock()
        self._styles: dict[str, LayerStyle] = {}
        self._ranges: dict[tuple[str, str], np.ndarray] = {}
        self._bands: dict[tuple[str, str], list[int]] = {}
        self._min_zooms: dict[str, tuple[tuple[TileItem, ...], int]] = {}

    def min_zoom(self, product: str) -> int:
        """The lowest web mercator zoom at which no map tile overlaps more than
        :attr:`max_tile_cogs` COGs of the product's label with the most tiles: below it,
        :meth:`tile` leaves tiles empty. Kept until the catalog changes."""
        labels = self.index.product(product).items
        items = max(labels.values(), key=len, default=())
        with self._lock:
            kept = self._min_zooms.get(product)
        if kept is not None and kept[0] is items:
            return kept[1]
        zoom = next(
            (z for z in range(MAX_ZOOM + 1) if most_cogs_in_a_tile(items, z) <= self.max_tile_cogs),
            MAX_ZOOM,
        )
        with self._lock:
            self._min_zooms[product] = (items, zoom)
        return zoom

    @_gdal
    def style(self, product: str) -> LayerStyle:
        """The product's style (read from its first COG present in the store, then kept)."""
        with self._lock:
            if product in self._styles:
                return self._styles[product]
        import rasterio

        from pipelines import storage

        index = self.index.product(product)
        every = [it for label in index.labels for it in index.items[label]]
        first = next((it for it in every if storage.exists(it.cog_url)), None)
        if first is None:  # not one COG of the catalog is in the store
            raise MissingProductFile(every[0].cog_url, product, every[0].label, every[0].tile_id)
        with rasterio.open(first.cog_url) as src:
            names = [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
            dtype = src.dtypes[0]
        style = layer_style(product, names, dtype)
        with self._lock:
            self._styles[product] = style
        return style

    @_gdal
    def band_indexes(self, product: str, item: TileItem) -> list[int]:
        key = (product, item.cog_url)
        with self._lock:
            if key in self._bands:
                return self._bands[key]
        found = _indexes(item, product, self.style(product).bands)
        with self._lock:
            self._bands[key] = found
        return found

    @_gdal
    def value_range(self, product: str, label: str) -> np.ndarray:
        """``(band, 2)`` low/high of the label's valid pixels (:data:`PERCENTILES`) over its
        tiles (at most :data:`RANGE_SAMPLE_COGS`, spread evenly), read from each COG's smallest
        overview (or the full COG when it has none)."""
        key = (product, label)
        with self._lock:
            if key in self._ranges:
                return self._ranges[key]
        from rio_tiler.io import Reader

        samples: list[np.ndarray] = []
        for item in spread_sample(self.index.items(product, label), RANGE_SAMPLE_COGS):
            _open_check(item, product)
            with Reader(item.cog_url) as src:
                img = src.preview(indexes=self.band_indexes(product, item), max_size=256)
            data = img.array.astype("float64").filled(np.nan)
            samples.append(data.reshape(data.shape[0], -1))
        values = np.concatenate(samples, axis=1)
        out = np.zeros((values.shape[0], 2))
        for b, row in enumerate(values):
            finite = row[np.isfinite(row)]
            if finite.size:
                out[b] = np.percentile(finite, PERCENTILES)
            if out[b, 1] <= out[b, 0]:
                out[b, 1] = out[b, 0] + 1.0
        with self._lock:
            self._ranges[key] = out
        return out

    def scale(self, product: str, label: str) -> dict[str, Any]:
        """The colour scale of ``product`` at ``label``: ``{kind, bands, low, high, colours}``
        (low/high per band in the data's units; ``colours``: stops of the colormap, low to
        high, for continuous layers). Classes and ids have none (their legend is the classes)."""
        style = self.style(product)
        if style.kind not in ("truecolor", "continuous"):
            return {"kind": style.kind, "bands": list(style.bands)}
        bounds = self.value_range(product, label)
        out: dict[str, Any] = {
            "kind": style.kind,
            "bands": list(style.bands),
            "low": [float(v) for v in bounds[:, 0]],
            "high": [float(v) for v in bounds[:, 1]],
            "percentiles": list(PERCENTILES),
        }
        if style.kind == "continuous":
            from matplotlib import colormaps

            cmap = colormaps[CONTINUOUS_CMAP]
            out["colours"] = [_hex(cmap(i / 4)) for i in range(5)]
        return out

    @_gdal
    def tile(self, product: str, label: str, z: int, x: int, y: int) -> bytes | None:
        """PNG of web mercator tile ``z/x/y`` of ``product`` at ``label``; None where no COG
        of the label overlaps the tile, or more than :attr:`max_tile_cogs` do."""
        from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
        from rio_tiler.io import Reader
        from rio_tiler.models import ImageData
        from rio_tiler.mosaic import mosaic_reader

        if z < 0 or not (0 <= x < 2**z and 0 <= y < 2**z):
            raise BadInputError("tile", f"{z}/{x}/{y}", "z >= 0 and 0 <= x, y < 2**z")
        over = overlapping(self.index.items(product, label), web_mercator().bounds(x, y, z))
        if not over or len(over) > self.max_tile_cogs:
            return None
        style = self.style(product)
        for it in over:
            _open_check(it, product)
        tile_bounds = web_mercator().xy_bounds(x, y, z)

        def read(item: TileItem, tx: int, ty: int, tz: int) -> ImageData:
            with Reader(item.cog_url, tms=web_mercator()) as src:
                return read_tile_window(src, tile_bounds, self.band_indexes(product, item))

        try:
            img, _ = mosaic_reader(over, read, x, y, z, threads=0)
        except (EmptyMosaicError, TileOutsideBounds):  # bboxes overlap, pixels do not
            return None
        rgba = self.colour(product, label, style, img.array)
        return _png(rgba)

    def colour(
        self, product: str, label: str, style: LayerStyle, data: np.ma.MaskedArray
    ) -> np.ndarray:
        """``(4, y, x)`` uint8 RGBA of masked ``(band, y, x)`` data in ``style``."""
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        raw = np.ma.getdata(data)
        rgba = np.zeros((4, *raw.shape[1:]), dtype="uint8")
        if style.kind == "classes":
            codes = raw[0].astype("int64")
            lut = np.zeros((max([*style.colours, int(codes.max(initial=0))]) + 1, 4), "uint8")
            for code, colour in style.colours.items():
                lut[code] = [*_rgb(colour), 0 if code == 0 else 255]
            rgba[:] = np.moveaxis(lut[np.clip(codes, 0, len(lut) - 1)], -1, 0)
            rgba[3] = np.where(valid, rgba[3], 0)
            return rgba
        if style.kind == "ids":
            ids = raw[0].astype("uint64")
            h = (ids * np.uint64(2654435761)) % np.uint64(2**24)  # Knuth's multiplicative hash
            rgba[0] = (h >> np.uint64(16)) & np.uint64(255)
            rgba[1] = (h >> np.uint64(8)) & np.uint64(255)
            rgba[2] = h & np.uint64(255)
            rgba[3] = np.where(valid & (ids > 0), 200, 0)
            return rgba
        bounds = self.value_range(product, label)
        scaled = (raw.astype("float64") - bounds[:, :1, None]) / (
            bounds[:, 1:, None] - bounds[:, :1, None]
        )
        finite = np.isfinite(scaled).all(axis=0)
        scaled = np.clip(np.nan_to_num(scaled), 0.0, 1.0)
        if style.kind == "truecolor":
            rgba[:3] = (scaled * 255).round().astype("uint8")
        else:
            from matplotlib import colormaps

            rgba[:] = np.moveaxis(colormaps[CONTINUOUS_CMAP](scaled[0], bytes=True), -1, 0)
        rgba[3] = np.where(valid & finite, 255, 0)
        return rgba

    @_gdal
    def point(self, product: str, label: str, lon: float, lat: float) -> dict[str, Any]:
        """The pixel under WGS84 ``lon``/``lat``: ``{tile_id, values: {band: value}, item}``
        (the STAC item of that tile); BadInputError when no tile of the label holds it."""
        import json

        from rio_tiler.errors import PointOutsideBounds
        from rio_tiler.io import Reader

        from pipelines import storage

        check_lonlat(lon, lat)
        for item in self.index.items(product, label):
            w, s, e, n = item.bbox
            if not (w <= lon <= e and s <= lat <= n):
                continue
            _open_check(item, product)
            with Reader(item.cog_url) as src:
                try:
                    pt = src.point(lon, lat)
                except PointOutsideBounds:
                    continue
                names = [d or f"band{i + 1}" for i, d in enumerate(src.dataset.descriptions)]
            masked = np.ma.getmaskarray(pt.array)
            values = {
                name: (None if masked[i] else _plain(pt.array.data[i]))
                for i, name in enumerate(names)
            }
            return {
                "product": product,
                "label": label,
                "tile_id": item.tile_id,
                "lon": lon,
                "lat": lat,
                "values": values,
                "item": json.loads(storage.read_text(item.item_url)),
            }
        raise BadInputError(
            "point", [round(lon, 6), round(lat, 6)], f"a point on a tile of {product} {label}"
        )

    @_gdal
    def parcel(self, label: str, lon: float, lat: float, band: str = "fine") -> dict[str, Any]:
        """The parcel under ``lon``/``lat`` of the ``parcels`` product at ``label``, as a GeoJSON
        Feature in WGS84 (``parcel_id``, ``tile_id``), outlined from the COG's ``band``."""
        import rasterio
        from rasterio.features import shapes
        from rasterio.warp import transform_geom
        from shapely.geometry import mapping, shape
        from shapely.ops import unary_union

        found = self.point("parcels", label, lon, lat)
        pid = found["values"].get(band)
        if not pid:
            raise BadInputError(
                "point", [round(lon, 6), round(lat, 6)], "a point on a parcel (parcel id > 0)"
            )
        item = self.index.item("parcels", found["tile_id"], label)
        with rasterio.open(item.cog_url) as src:
            ids = src.read(src.descriptions.index(band) + 1)
            mask = ids == int(pid)
            polys = [
                shape(g)
                for g, v in shapes(mask.astype("uint8"), mask=mask, transform=src.transform)
            ]
            crs = src.crs
        geom = unary_union(polys)
        wgs84 = transform_geom(crs, "EPSG:4326", mapping(geom), precision=7)
        return {
            "type": "Feature",
            "geometry": wgs84,
            "properties": {"parcel_id": int(pid), "tile_id": item.tile_id, "label": label},
        }


def read_tile_window(src: Any, bounds: Any, indexes: Sequence[int]) -> Any:
    """The map tile of web mercator ``bounds`` (left, bottom, right, top, metres) read from
    the COG open in rio-tiler Reader ``src``: only the tile's pixels the COG covers are read,
    at the tile's pixel size, then placed in an otherwise masked 256 px tile (ImageData).

    rio-tiler's ``Reader.tile`` reads the whole tile's extent through a warped VRT at the
    resolution of the COG's overview: a 10 km COG in a tile of a province seen whole (600 km,
    zoom 6) became a read of about 7,500 x 7,500 px, 26 s; this window is 6 x 6 px, 0.03 s
    (cogeotiff/rio-tiler#348)."""
    import math

    from rio_tiler.errors import TileOutsideBounds
    from rio_tiler.models import ImageData

    crs = web_mercator().rasterio_crs
    res = (bounds.right - bounds.left) / TILE_PX
    west, south, east, north = src.get_geographic_bounds(crs)
    c0 = max(0, math.floor((west - bounds.left) / res))
    c1 = min(TILE_PX, math.ceil((east - bounds.left) / res))
    r0 = max(0, math.floor((bounds.top - north) / res))
    r1 = min(TILE_PX, math.ceil((bounds.top - south) / res))
    if c1 <= c0 or r1 <= r0:
        raise TileOutsideBounds(f"{src.input} does not cover the tile {tuple(bounds)}")
    window = (
        bounds.left + c0 * res,
        bounds.top - r1 * res,
        bounds.left + c1 * res,
        bounds.top - r0 * res,
    )
    part = src.part(
        window,
        dst_crs=crs,
        bounds_crs=crs,
        width=c1 - c0,
        height=r1 - r0,
        indexes=list(indexes),
        max_size=None,
    )
    data = np.ma.masked_all((part.count, TILE_PX, TILE_PX), dtype=part.array.dtype)
    data[:, r0:r1, c0:c1] = part.array
    return ImageData(data, bounds=tuple(bounds), crs=crs, band_names=part.band_names)


def overlapping(items: Sequence[TileItem], bounds: Sequence[float]) -> list[TileItem]:
    """The ``items`` whose WGS84 box overlaps ``bounds`` (west, south, east, north, degrees)."""
    west, south, east, north = bounds
    return [
        it
        for it in items
        if it.bbox[0] < east and it.bbox[2] > west and it.bbox[1] < north and it.bbox[3] > south
    ]


def spread_sample(items: Sequence[TileItem], most: int) -> list[TileItem]:
    """At most ``most`` of ``items``, spread evenly over them in order (all when there are
    fewer)."""
    if len(items) <= most:
        return list(items)
    return [items[round(k * (len(items) - 1) / (most - 1))] for k in range(most)]


def web_tile_span(
    boxes: np.ndarray, z: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First and last web mercator tile column and row (inclusive) at zoom ``z`` over each WGS84
    box of ``boxes`` ``(n, 4)`` (west, south, east, north, degrees)."""
    n = 2**z
    lat = np.clip(boxes[:, [3, 1]], -85.0511, 85.0511)
    rad = np.radians(lat)
    rows = (1.0 - np.log(np.tan(rad) + 1.0 / np.cos(rad)) / np.pi) / 2.0 * n
    cols = (boxes[:, [0, 2]] + 180.0) / 360.0 * n
    first_col = np.clip(np.floor(cols[:, 0]), 0, n - 1).astype("int64")
    last_col = np.clip(np.ceil(cols[:, 1]) - 1, 0, n - 1).astype("int64")
    first_row = np.clip(np.floor(rows[:, 0]), 0, n - 1).astype("int64")
    last_row = np.clip(np.ceil(rows[:, 1]) - 1, 0, n - 1).astype("int64")
    return first_col, np.maximum(last_col, first_col), first_row, np.maximum(last_row, first_row)


def most_cogs_in_a_tile(items: Sequence[TileItem], z: int) -> int:
    """The most of ``items`` any one web mercator tile of zoom ``z`` overlaps."""
    from collections import Counter

    if not items:
        return 0
    boxes = np.array([it.bbox for it in items], dtype="float64")
    c0, c1, r0, r1 = web_tile_span(boxes, z)
    counts: Counter[tuple[int, int]] = Counter()
    for a, b, c, d in zip(c0.tolist(), c1.tolist(), r0.tolist(), r1.tolist(), strict=True):
        counts.update((col, row) for col in range(a, b + 1) for row in range(c, d + 1))
    return max(counts.values())


def check_lonlat(lon: float, lat: float) -> None:
    """BadInputError unless ``lon``/``lat`` are WGS84 degrees."""
    if not (np.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise BadInputError("lon", lon, "a longitude in degrees, -180 to 180")
    if not (np.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise BadInputError("lat", lat, "a latitude in degrees, -90 to 90")


def _plain(value: Any) -> Any:
    v = np.asarray(value).item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _rgb(colour: str) -> list[int]:
    c = colour.lstrip("#")
    return [int(c[i : i + 2], 16) for i in (0, 2, 4)]


def _png(rgba: np.ndarray) -> bytes:
    """PNG bytes of ``(4, y, x)`` uint8 RGBA."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.moveaxis(rgba, 0, -1)), mode="RGBA").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


@functools.cache
def empty_tile() -> bytes:
    """A transparent map tile (where no COG of the label lies)."""
    return _png(np.zeros((4, TILE_PX, TILE_PX), dtype="uint8"))


@functools.cache
def web_mercator() -> Any:
    """The WebMercatorQuad tile matrix set (morecantile copies it on every ``get``: kept)."""
    import morecantile

    return morecantile.tms.get("WebMercatorQuad")
