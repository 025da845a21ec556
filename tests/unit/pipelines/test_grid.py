"""The grid module's geometry reprojection."""

from __future__ import annotations

import pytest
from shapely.geometry import MultiPolygon, Point, box

from pipelines.grid import reproject_geometry


def test_reproject_geometry_places_a_known_point_and_round_trips():
    # 117 E is the central meridian of UTM zone 50: x = 500 km there, y = 0 on the equator
    centre = reproject_geometry(Point(117.0, 0.0), "EPSG:4326", "EPSG:32650")
    assert centre.x == pytest.approx(500_000.0, abs=1e-6) and centre.y == pytest.approx(0.0)
    square = box(114.0, 34.5, 114.1, 34.6)
    there = reproject_geometry(square, "EPSG:4326", "EPSG:32650")
    assert there.geom_type == "Polygon" and 9_100 < there.bounds[2] - there.bounds[0] < 9_600
    back = reproject_geometry(there, "EPSG:32650", "EPSG:4326")
    assert back.equals_exact(square, tolerance=1e-9)
    parts = reproject_geometry(MultiPolygon([square]), "EPSG:4326", "EPSG:32650")
    assert parts.geom_type == "MultiPolygon" and parts.equals_exact(MultiPolygon([there]), 1e-6)
