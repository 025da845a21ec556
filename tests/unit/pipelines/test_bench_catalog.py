"""`terrapipe bench --only catalog`: a month's update against the whole rebuild, local and S3."""

from __future__ import annotations

from pipelines.bench import bench_catalog


def test_the_catalog_bench_times_both_ways_on_both_stores_and_compares_files():
    report = bench_catalog(tiles=4, months=2, dates_per_month=2, s3_tiles=2)
    assert report["data"] == "SYNTHETIC"
    local, s3 = report["local"], report["s3"]
    assert local["markers"] == 16 and local["markers_of_the_month"] == 8
    assert local["same_files"] is True
    assert s3["markers"] == 2 * 2 * 4
    for part in (local, s3):
        assert part["update_month_s"] > 0 and part["rebuild_whole_s"] > 0
