"""Search against local STAC APIs: results equal a brute-force filter of the archive's items."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from shapely.geometry import box, shape

from pipelines.catalog.search import parse_window, search, search_or_raise
from pipelines.catalog.server import free_port
from pipelines.cli import main
from pipelines.errors import BadInputError, NoScenesError, TransientIOError


def _brute_force(archive: Path, collection: str, bbox, start, end, max_cc) -> set[str]:
    """Independent reference: footprint intersects, time in [start, end], cloud cover <= max."""
    fc = json.loads((archive / "stac" / "items" / f"{collection}.json").read_text())
    out = set()
    for f in fc["features"]:
        t = datetime.fromisoformat(f["properties"]["datetime"].replace("Z", "+00:00"))
        if bbox is not None and not shape(f["geometry"]).intersects(box(*bbox)):
            continue
        if (start is not None and t < start) or (end is not None and t > end):
            continue
        cc = f["properties"].get("eo:cloud_cover")
        if max_cc is not None and cc is not None and cc > max_cc:
            continue
        out.add(f["id"])
    return out


CASES = [
    # bbox, datetime, max cloud cover
    (None, None, None),
    (None, None, 40.0),
    ((170.0, 50.0, 180.0, 70.0), None, 50.0),
    ((160.0, 55.0, 175.0, 62.0), "2019-01-01/2019-01-01", 45.0),
    (None, "2022-01-01/2025-12-31", 5.0),
    ((-180.0, -90.0, 180.0, 90.0), "2015-01-01/2019-12-31", 99.0),
    ((0.0, 0.0, 1.0, 1.0), None, None),  # nothing there
]


@pytest.mark.integration
@pytest.mark.parametrize(("bbox", "window", "max_cc"), CASES)
def test_search_equals_brute_force_on_real_items(
    real_items_api, real_items_archive, bbox, window, max_cc
) -> None:
    got = search(
        real_items_api.url, ["s2"], bbox=bbox, datetime=window, max_cloud_cover=max_cc, limit=7
    )  # limit < results: paging is exercised
    start, end = parse_window(window)
    expected = _brute_force(real_items_archive, "sentinel-2-l2a", bbox, start, end, max_cc)
    assert {i.id for i in got} == expected
    times = [i.datetime for i in got]
    assert times == sorted(times)


@pytest.mark.integration
def test_cloud_filter_is_applied_on_the_client(real_items_api) -> None:
    """rustac's memory backend declares no query/filter conformance (and answers nothing when
    sent one), so cloud cover must come from the client-side filter."""
    import pystac_client

    client = pystac_client.Client.open(real_items_api.url)
    assert not client.conforms_to(pystac_client.ConformanceClasses.FILTER)
    all_items = search(real_items_api.url, ["s2"])
    clear = search(real_items_api.url, ["s2"], max_cloud_cover=10.0)
    assert 0 < len(clear) < len(all_items)
    assert all(i.properties["eo:cloud_cover"] <= 10.0 for i in clear)


@pytest.mark.integration
def test_logical_names_across_collections(mini_stac_api, mini_archive) -> None:
    bbox = (14.99, 45.14, 15.02, 45.17)
    items = search(mini_stac_api.url, ["s2", "s1", "dem"], bbox=bbox, max_cloud_cover=30.0)
    ids = {i.id for i in items}
    # cloud cover applies to S2 only; S1 and DEM items carry none
    assert ids == {"ES_W_20240601", "MPC_20180621", "CODE_20240701", "S1_20240603", "DEM_N45E014"}
    assert {i.collection_id for i in items} == set(mini_archive.items)


@pytest.mark.integration
def test_unknown_collection_names_what_the_api_has(mini_stac_api) -> None:
    with pytest.raises(BadInputError) as err:
        search(mini_stac_api.url, ["landsat"])
    assert "sentinel-2-l2a" in str(err.value)
    with pytest.raises(BadInputError, match="sentinel-2-c1-l2a"):
        search(mini_stac_api.url, ["s2"], mapping={"s2": ("sentinel-2-c1-l2a",)})


@pytest.mark.integration
def test_empty_result_and_no_scenes(mini_stac_api) -> None:
    window = (datetime(2030, 1, 1, tzinfo=UTC), None)
    assert search(mini_stac_api.url, ["s2"], datetime=window) == []
    with pytest.raises(NoScenesError, match="s2"):
        search_or_raise(mini_stac_api.url, ["s2"], datetime=window)


def test_unreachable_api_is_transient_and_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransientIOError) as err:
        search(url, ["s2"], timeout=2)
    assert f"STAC API at {url} did not answer" in str(err.value)


def test_cli_search_exit_codes(mini_stac_api, capsys) -> None:
    assert main(["stac", "search", mini_stac_api.url, "-c", "s2", "--max-cloud-cover", "10"]) == 0
    assert "ES_W_20240601" in capsys.readouterr().out
    window = ["--datetime", "2030-01-01/.."]
    assert main(["stac", "search", mini_stac_api.url, "-c", "s2", *window]) == 3
    assert main(["stac", "search", mini_stac_api.url, "-c", "s2", "--allow-empty", *window]) == 0
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["stac", "search", dead, "-c", "s2"]) == 4
    assert dead in capsys.readouterr().err.replace("\n", "")


def test_parse_window() -> None:
    start, end = parse_window("2024-01-01/2024-01-31")
    assert start == datetime(2024, 1, 1, tzinfo=UTC)
    assert end.date().isoformat() == "2024-01-31" and end.hour == 23
    assert parse_window("../2024-01-01")[0] is None
    with pytest.raises(BadInputError, match="datetime"):
        parse_window("yesterday/today")
