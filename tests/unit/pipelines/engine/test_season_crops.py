"""The crop_type step's use of the labels' own rows written by the parcels step."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
from shapely.geometry import Point

from pipelines.agri.labels import label_key
from pipelines.engine.season_crops import crop_fingerprint, split_labels


def _labels() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"crop": ["corn", "rice", "corn"]},
        geometry=[Point(5, 5), Point(15, 5), Point(25, 5)],
        crs="EPSG:32650",
    )


def test_labels_with_rows_use_them_the_others_their_parcels():
    labels = _labels()
    keys = [label_key(c, g) for c, g in zip(labels["crop"], labels.geometry, strict=True)]
    stale = label_key("wheat", Point(99, 99))  # a label since removed from the file
    rows = pd.DataFrame(
        {"ndvi_d100": [0.5, 0.6, 0.1], "crop": ["corn", "corn", "wheat"]},
        index=pd.Index([keys[0], keys[2], stale], name="label_key"),
    )
    own, whole = split_labels(labels, rows)
    assert list(own.index) == [keys[0], keys[2]] and list(own["crop"]) == ["corn", "corn"]
    assert list(whole["crop"]) == ["rice"] and whole.geometry.iloc[0] == Point(15, 5)
    moved = labels.copy()
    moved.loc[1, "geometry"] = Point(16, 5)  # an edited label has a new key: no row yet
    assert len(split_labels(moved, rows)[1]) == 1
    own_none, whole_all = split_labels(labels, rows.iloc[:0])
    assert own_none.empty and len(whole_all) == 3


def test_fingerprint_changes_with_the_labels_rows(tmp_path):
    from pipelines.agri.calendar import load_calendar

    url = tmp_path / "labels.geojson"
    url.write_text(_labels().to_json())
    table = pd.DataFrame({"area_px": [10, 20]}, index=pd.Index([1, 2], name="parcel_id"))
    rows = pd.DataFrame({"ndvi_d100": [0.5], "crop": ["corn"]}, index=["k"])
    cal = load_calendar()
    base = crop_fingerprint(str(url), cal, table)
    with_rows = crop_fingerprint(str(url), cal, table, rows)
    assert base != with_rows
    assert with_rows != crop_fingerprint(str(url), cal, table, rows.assign(ndvi_d100=0.6))
    assert base == crop_fingerprint(str(url), cal, table, rows.iloc[:0])
