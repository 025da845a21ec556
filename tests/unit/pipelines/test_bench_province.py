"""The synthetic province of ``terrapipe bench-province``: MGRS names, revisits, footprints."""

from __future__ import annotations

import datetime as dt

from shapely.geometry import Point, box, shape

from pipelines.bench_province import ProvinceSpec, dem_items, mgrs_square, s1_items, s2_items
from pipelines.grid import reproject_geometry


def test_mgrs_squares_match_real_sentinel2_tiles():
    assert mgrs_square(33, 48.5, 300_000, 5_300_000) == "33UUP"  # Vienna
    assert mgrs_square(31, 50.8, 600_000, 5_600_000) == "31UFS"  # Brussels
    assert mgrs_square(50, 35.2, 200_000, 3_900_000) == "50SKE"  # Henan (even zone: rows +5)


def test_scenes_revisit_each_place_about_six_times_a_month_within_their_tile():
    spec = ProvinceSpec(area_km2=30 * 10.24**2, months=(7, 7))
    s2 = s2_items(spec, "file:///nowhere")
    minx, miny, maxx, maxy = spec.bounds
    centre = Point((minx + maxx) / 2, (miny + maxy) / 2)
    dates = set()
    for item in s2:
        assert item["properties"]["datetime"].startswith("2025-07")
        footprint = reproject_geometry(shape(item["geometry"]), "EPSG:4326", spec.crs)
        affine = item["assets"]["red"]["proj:transform"]  # (10, 0, ulx, 0, -10, uly)
        ulx, uly = affine[2], affine[5]
        tile = box(ulx, uly - 109_800, ulx + 109_800, uly)
        assert tile.buffer(50).contains(footprint)  # within its MGRS tile (reprojection slack)
        if footprint.contains(centre):
            dates.add(item["properties"]["datetime"][:10])
    assert 6 <= len(dates) <= 12  # one orbit every 5 days, two where swaths overlap
    assert len({i["id"] for i in s2}) == len(s2)
    s1 = s1_items(spec, "file:///nowhere")
    assert s1 and len({i["id"] for i in s1}) == len(s1)
    assert all(dt.date(2025, 7, 1).isoformat() <= i["properties"]["start_datetime"] for i in s1)
    dem = dem_items(spec, "file:///nowhere")
    dem_cells = [reproject_geometry(shape(d["geometry"]), "EPSG:4326", spec.crs) for d in dem]
    assert sum(cell.intersects(centre) for cell in dem_cells) >= 1
