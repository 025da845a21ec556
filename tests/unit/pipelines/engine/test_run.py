"""The runner's manifests (XCom of the mapped tasks) and the read-error classes it raises."""

from __future__ import annotations

from pipelines.engine.manifest import BatchManifest, TileResult, Totals, summarize
from pipelines.errors import BadInputError, TransientIOError
from pipelines.load import classify_read_error


def test_a_batch_manifest_sums_its_tiles_and_serialises_the_same_keys():
    results = [
        TileResult("t0", written={"a": ["d1", "d2"], "b": ["d1"]}, compute_s=1.23449),
        TileResult("t1", skipped={"a": ["d1"]}, no_scenes=["none"], bytes_written=7),
    ]
    manifest = BatchManifest.of("cpu0", 3, results)
    assert manifest.to_xcom() == {
        "group": "cpu0",
        "batch": 3,
        "tiles": 2,
        "written": 3,
        "skipped": 1,
        "no_scenes": 1,
        "bytes_written": 7,
        "compute_s": 1.234,
        "write_s": 0.0,
    }
    assert Totals.from_xcom(manifest.to_xcom()) == manifest.totals


def test_run_totals_read_any_batch_manifest():
    season_batch = {"batch": 0, "tiles": 2, "written": 1, "skipped": 1, "parcels": 40}
    production = BatchManifest.of("cpu0", 0, [TileResult("t", compute_s=0.5)]).to_xcom()
    totals = summarize([Totals.from_xcom(season_batch), Totals.from_xcom(production)])
    assert totals == Totals(tiles=3, written=1, skipped=1, compute_s=0.5)


def test_read_errors_are_classified_transient_or_bad_file():
    flaky = RuntimeError("RasterioIOError: Error opening 's3://b/x.tif': HTTP response code: 503")
    assert isinstance(classify_read_error(flaky), TransientIOError)
    corrupt = RuntimeError("Error opening '/data/red.tif': not recognized as a supported format")
    bad = classify_read_error(corrupt)
    assert isinstance(bad, BadInputError) and "/data/red.tif" in str(bad)
    other = ValueError("a bug")
    assert classify_read_error(other) is other
