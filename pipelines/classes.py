"""Class codes shared by stages, products and the demo archive's truth layers (uint8 rasters)."""

from __future__ import annotations

from enum import IntEnum


class CloudClass(IntEnum):
    """cloud_mask output classes."""

    NODATA = 0
    CLEAR = 1
    CLOUD = 2
    SHADOW = 3
    CIRRUS = 4
    #: Snow or ice on the ground: a clear view of the surface, but not of its vegetation, soil or
    #: haze (NDVI near 0, a visible floor near 1).
    SNOW = 5


class FloodClass(IntEnum):
    """flood_change output classes."""

    NODATA = 0
    DRY = 1
    FLOODED = 2
    PERMANENT_WATER = 3
    #: Flooded under a canopy or between buildings (double-bounce evidence: VV brightens).
    FLOODED_VEGETATION = 4


class LandClass(IntEnum):
    """Land cover of the demo province (truth layer ``landcover``)."""

    NODATA = 0
    WHEAT = 1
    CORN = 2
    RICE = 3
    COTTON = 4
    SOYBEAN = 5
    FOREST = 6
    GRASSLAND = 7
    URBAN = 8
    WATER = 9
    RIVER = 10


CROPS: tuple[LandClass, ...] = (
    LandClass.WHEAT,
    LandClass.CORN,
    LandClass.RICE,
    LandClass.COTTON,
    LandClass.SOYBEAN,
)

#: Sentinel-2 L2A scene classification (SCL) codes.
SCL_NODATA = 0
SCL_SATURATED = 1
SCL_DARK = 2
SCL_CLOUD_SHADOW = 3
SCL_VEGETATION = 4
SCL_NOT_VEGETATED = 5
SCL_WATER = 6
SCL_UNCLASSIFIED = 7
SCL_CLOUD_MEDIUM = 8
SCL_CLOUD_HIGH = 9
SCL_CIRRUS = 10
SCL_SNOW = 11
