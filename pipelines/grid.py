"""The fixed processing grid: tiles of ``tile_px`` x ``tile_px`` pixels in the province CRS.

Tiles are aligned to the CRS origin, so the same AOI always gives the same tiles, and two provinces
in the same CRS share tile ids. The province grid is the bounding box of its tiles: each product's
Zarr cube covers it, chunked one tile per chunk, and a tile writes exactly one chunk region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, TypeVar

from odc.geo.geobox import GeoBox
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from pyproj import Transformer

_Geometry = TypeVar("_Geometry", bound=BaseGeometry)


@lru_cache(maxsize=32)
def _transformer(src_crs: str, dst_crs: str) -> Transformer:
    from pyproj import Transformer

    return Transformer.from_crs(src_crs, dst_crs, always_xy=True)


def reproject_geometry(geom: _Geometry, src_crs: str, dst_crs: str) -> _Geometry:
    """A shapely geometry from ``src_crs`` to ``dst_crs`` (x/lon first, vertex by vertex; the
    same number of vertices, no densifying)."""
    import numpy as np
    import shapely

    transformer = _transformer(str(src_crs), str(dst_crs))

    def move(xy: np.ndarray) -> np.ndarray:
        """(n, 2) coordinates in ``src_crs`` -> (n, 2) in ``dst_crs``."""
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out: _Geometry = shapely.transform(geom, move)
    return out


@dataclass(frozen=True)
class TileGrid:
    """A fixed grid of square tiles in one projected CRS."""

    crs: str
    """Projected CRS of the province, e.g. ``"EPSG:32650"``."""
    resolution: float = 10.0
    """Pixel size in CRS units (metres)."""
    tile_px: int = 1024
    """Tile edge in pixels (1024 px at 10 m = 10.24 km)."""

    @property
    def tile_size(self) -> float:
        """Tile edge in CRS units."""
        return self.resolution * self.tile_px

    def scaled(self, factor: int) -> TileGrid:
        """The grid with pixels ``factor`` times smaller and the same tiles (same ids, bounds)."""
        if factor == 1:
            return self
        return TileGrid(self.crs, self.resolution / factor, self.tile_px * factor)

    def tile(self, ix: int, iy: int) -> Tile:
        """Tile at column ``ix`` (eastward) and row ``iy`` (northward) from the CRS origin."""
        return Tile(grid=self, ix=ix, iy=iy)

    def tiles_for(self, geometry: BaseGeometry) -> list[Tile]:
        """Tiles that intersect ``geometry`` (in this grid's CRS), sorted north-west first."""
        minx, miny, maxx, maxy = geometry.bounds
        size = self.tile_size
        tiles = []
        for iy in range(math.floor(miny / size), math.ceil(maxy / size)):
            for ix in range(math.floor(minx / size), math.ceil(maxx / size)):
                tile = self.tile(ix, iy)
                tile_box = box(*tile.bounds)
                # At least one pixel of overlap: reprojected AOIs bulge by fractions of a pixel.
                if (
                    geometry.intersects(tile_box)
                    and geometry.intersection(tile_box).area >= self.resolution**2
                ):
                    tiles.append(tile)
        return sorted(tiles, key=lambda t: (-t.iy, t.ix))


@dataclass(frozen=True)
class Tile:
    """One processing tile."""

    grid: TileGrid
    ix: int
    iy: int

    @property
    def tile_id(self) -> str:
        """Stable id, e.g. ``x0045_y0381``."""
        return f"x{self.ix:04d}_y{self.iy:04d}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the grid CRS."""
        s = self.grid.tile_size
        return (self.ix * s, self.iy * s, (self.ix + 1) * s, (self.iy + 1) * s)

    def scaled(self, factor: int) -> Tile:
        """The same tile on a grid ``factor`` times finer (products of 4x super-resolution)."""
        return self if factor == 1 else Tile(self.grid.scaled(factor), self.ix, self.iy)

    @cached_property
    def geobox(self) -> GeoBox:
        """The tile's pixel grid (odc-geo GeoBox, north-up)."""
        return GeoBox.from_bbox(self.bounds, crs=self.grid.crs, resolution=self.grid.resolution)


@dataclass(frozen=True)
class ProvinceGrid:
    """The bounding grid of a set of tiles: the extent of every product cube."""

    grid: TileGrid
    tiles: tuple[Tile, ...]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the union of the tiles."""
        b = [t.bounds for t in self.tiles]
        return (
            min(x[0] for x in b),
            min(x[1] for x in b),
            max(x[2] for x in b),
            max(x[3] for x in b),
        )

    def scaled(self, factor: int) -> ProvinceGrid:
        """The province on a grid ``factor`` times finer (same tiles and bounds)."""
        if factor == 1:
            return self
        return ProvinceGrid(self.grid.scaled(factor), tuple(t.scaled(factor) for t in self.tiles))

    @cached_property
    def geobox(self) -> GeoBox:
        """The province pixel grid."""
        return GeoBox.from_bbox(self.bounds, crs=self.grid.crs, resolution=self.grid.resolution)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        minx, miny, maxx, maxy = self.bounds
        res = self.grid.resolution
        return (round((maxy - miny) / res), round((maxx - minx) / res))

    def region(self, tile: Tile) -> tuple[slice, slice]:
        """(y, x) pixel slices of ``tile`` inside the province grid (chunk-aligned)."""
        minx, _, _, maxy = self.bounds
        res, n = self.grid.resolution, self.grid.tile_px
        row = round((maxy - tile.bounds[3]) / res)
        col = round((tile.bounds[0] - minx) / res)
        return slice(row, row + n), slice(col, col + n)
