"""The table of source inputs: its values match what the stages, the config and the plan use."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pipelines.config import StacConfig
from pipelines.errors import BadInputError
from pipelines.inputs import INPUTS, SOURCE_INPUTS, get_input
from pipelines.stages import cloud_mask, dehaze, learned


def test_every_source_input_once_in_plan_order() -> None:
    assert SOURCE_INPUTS == (
        "s2",
        "s2_l1c",
        "s1",
        "s1_pre",
        "s1_post",
        "dem",
        "hand",
        "permanent_water",
    )
    assert [get_input(n) for n in SOURCE_INPUTS] == list(INPUTS)


def test_unknown_input_names_the_valid_ones() -> None:
    with pytest.raises(BadInputError, match="s3") as err:
        get_input("s3")
    assert all(n in str(err.value) for n in SOURCE_INPUTS)


def test_specs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_input("s2").bands = ("B04",)  # type: ignore[misc]


def test_bands_are_what_the_stages_read() -> None:
    s2 = get_input("s2")
    assert s2.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert s2.bands == cloud_mask.SPECTRAL_BANDS
    assert set(dehaze.BGRN) <= set(s2.bands) and set(learned.BGRN) <= set(s2.bands)
    for name in ("s1", "s1_pre", "s1_post"):
        assert get_input(name).bands == learned.SAR_POLS == ("VV", "VH")
    assert get_input("dem").bands == ("DEM",)


def test_collections_and_loaders() -> None:
    keys = {s.name: s.collection for s in INPUTS}
    assert keys == {
        "s2": "s2",
        "s2_l1c": "s2_l1c",
        "s1": "s1",
        "s1_pre": "s1",
        "s1_post": "s1",
        "dem": "dem",
        "hand": "hand",
        "permanent_water": "permanent_water",
    }
    defaults = StacConfig(archive="x").collections
    # The height above drainage is searched only where a catalog's configuration names it:
    # none of the public catalogs the defaults name serves it.
    assert {s.collection for s in INPUTS if s.loader is not None} == set(defaults) | {"hand"}
    assert {s.name: s.loader for s in INPUTS} == {
        "s2": "s2",
        "s2_l1c": "s2",
        "s1": "s1",
        "s1_pre": "s1",
        "s1_post": "s1",
        "dem": "dem",
        "hand": "dem",  # a one-band height raster on the DEM's tiling
        "permanent_water": None,  # flood_change takes it only as an optional argument
    }
    assert [s.name for s in INPUTS if s.cloud_filter] == ["s2", "s2_l1c"]
    assert [s.name for s in INPUTS if s.scene_classes] == ["s2"]  # L1C has no SCL


def test_dated_inputs() -> None:
    assert [s.name for s in INPUTS if s.timeless] == ["dem", "hand", "permanent_water"]
    assert [s.name for s in INPUTS if s.reference] == ["s1_pre"]
    assert [s.name for s in INPUTS if s.dated] == ["s2", "s2_l1c", "s1", "s1_post"]


def test_read_estimate_constants() -> None:
    assert {s.name: (s.estimate_bands, s.bytes_per_px) for s in INPUTS} == {
        "s2": (5, 2),  # uint16 DN
        "s2_l1c": (11, 2),  # uint16 DN, the s2cloudless bands and B03 for snow
        "s1": (2, 4),  # float32 gamma0
        "s1_pre": (2, 4),
        "s1_post": (2, 4),
        "dem": (1, 4),  # float32 metres
        "hand": (1, 4),  # float32 metres
        "permanent_water": (1, 1),
    }


def test_search_windows_around_a_flood_event() -> None:
    start, end, event = dt.date(2024, 6, 1), dt.date(2024, 6, 30), dt.date(2024, 6, 10)
    windows = {s.name: s.search_window(start, end, event, 12) for s in INPUTS}
    assert windows == {
        "s2": (start, end),
        "s2_l1c": (start, end),
        "s1": (start, end),
        "s1_post": (event, end),
        "s1_pre": (dt.date(2024, 5, 29), dt.date(2024, 6, 9)),
        "dem": None,
        "hand": None,
        "permanent_water": None,
    }


def test_search_windows_without_event_or_with_an_event_before_the_run() -> None:
    start, end = dt.date(2024, 6, 1), dt.date(2024, 6, 30)
    assert get_input("s1_post").search_window(start, end, None, 30) == (start, end)
    assert get_input("s1_pre").search_window(start, end, None, 30) == (
        dt.date(2024, 5, 2),
        dt.date(2024, 5, 31),
    )
    early = dt.date(2024, 5, 20)
    assert get_input("s1_post").search_window(start, end, early, 30) == (start, end)
    assert get_input("s1_pre").search_window(start, end, early, 1) == (
        dt.date(2024, 5, 19),
        dt.date(2024, 5, 19),
    )


def test_the_track_of_real_sentinel1_rtc_items(real_data):
    """REAL Planetary Computer sentinel-1-rtc items: the four frames of one pass (19 April
    2024) share track 51, a date of their own; with a frame of another pass (track 80) a day
    would have no single track, and is compared with every scene."""
    import json

    from pipelines.inputs import same_track, track_of

    folder = real_data / "stac-json" / "items" / "mpc" / "sentinel-1-rtc"
    items = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    orbit = {i["id"][17:25]: [] for i in items}
    for i in items:
        orbit[i["id"][17:25]].append(i["properties"]["sat:relative_orbit"])
    assert track_of(orbit["20240419"]) == 51 and len(orbit["20240419"]) == 4
    assert track_of(orbit["20250311"]) == 80
    assert track_of([*orbit["20240419"], *orbit["20250311"]]) == -1
    assert track_of([None]) == -1
    assert same_track(51, [80, 51, 51]) == [1, 2]
    assert same_track(22, [80, 51]) == [0, 1] and same_track(-1, [80, 51]) == [0, 1]
