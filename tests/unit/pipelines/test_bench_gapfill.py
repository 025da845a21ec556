"""The gap-filling bench: each way in a fresh process, the same product either way."""

from __future__ import annotations

from pipelines import bench


def test_blocks_and_one_block_are_measured_apart_on_the_same_product() -> None:
    report = bench.bench_gapfill(tile_px=64, dates=(6,))
    figures = report["6_dates"]
    assert set(figures) == {"blocks", "one_block", "rss_ratio_blocks_vs_one_block"}
    for way in ("blocks", "one_block"):
        assert figures[way]["added_rss_mb"] >= 0 and figures[way]["wall_s"] > 0
    # Both ways fill the same tile with the same regression.
    assert figures["blocks"]["gap_mae"] == figures["one_block"]["gap_mae"] < 0.05
