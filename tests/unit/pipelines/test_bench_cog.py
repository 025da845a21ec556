"""The COG bench: our writer against rio-cogeo's cog_translate, alone and many at once."""

from __future__ import annotations

from pipelines import bench


def test_the_cog_writer_is_measured_against_its_peer_alone_and_at_once() -> None:
    report = bench.bench_cog(tile_px=128, processes=1, threads=2, writes=3)
    for kind in ("float", "classes"):
        figures = report[kind]
        assert figures["same_bytes_as_peer"] is True
        assert figures["write_s"] > 0 and figures["peer_write_s"] > 0 and figures["bytes"] > 0
    concurrent = report["concurrent"]
    for name in ("ours", "peer"):
        assert concurrent[name]["writes"] == 6
    assert concurrent["ours"]["failed"] == 0 and concurrent["ours"]["first_failure"] is None
