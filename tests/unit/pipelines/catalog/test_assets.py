"""The asset-key table on every real item in shared/data/real/stac-json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.catalog.assets import asset_key, asset_keys, detect_style
from pipelines.errors import BadInputError

S2_REQUIRED = ("B02", "B03", "B04", "B08", "SCL")


def _load(paths):
    out = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        if d.get("type") == "FeatureCollection":
            out.extend(d["features"])
        elif d.get("type") == "Feature":
            out.append(d)
    return out


def _real_items(real_data: Path) -> list[dict]:
    root = real_data / "stac-json"
    files = [p for p in sorted((root / "items").rglob("*.json")) if "partial" not in p.parts[-2]]
    files += sorted((root / "odc-stac").glob("*.json")) + sorted(
        (root / "odc-stac").glob("*.geojson")
    )
    return _load(files)


def _is_s2_l2a(d: dict) -> bool:
    c = d.get("collection", "")
    return (c.startswith("sentinel-2") and "l1c" not in c) or c == "sentinel-s2-l2a-cogs"


def test_every_real_s2_l2a_item_resolves_bgrn_and_scl(real_data: Path) -> None:
    items = [d for d in _real_items(real_data) if _is_s2_l2a(d)]
    assert len(items) >= 40 + 7 + 6 + 1 + 13 + 9  # MPC, ES v1 (both), ES v0, odc-stac files
    styles = set()
    for d in items:
        keys = asset_keys(d, S2_REQUIRED)
        assert all(k in d["assets"] for k in keys.values())
        styles.add(detect_style(d))
    assert styles == {"s2-common-names", "s2-esa-ids"}


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ("mpc", {"B04": "B04", "SCL": "SCL", "B8A": "B8A", "B11": "B11"}),
        ("earth-search-v1", {"B04": "red", "SCL": "scl", "B8A": "nir08", "B11": "swir16"}),
        ("earth-search-v0", {"B04": "B04", "SCL": "SCL", "B8A": "B8A", "B11": "B11"}),
    ],
)
def test_s2_keys_per_catalog(real_data: Path, api: str, expected: dict[str, str]) -> None:
    folder = real_data / "stac-json" / "items" / api
    items = [d for d in _load(sorted(folder.rglob("*.json"))) if _is_s2_l2a(d) and d.get("assets")]
    assert items
    for d in items:
        assert asset_keys(d, expected) == expected


def test_s1_items_resolve_declared_polarisations(real_data: Path) -> None:
    items = [d for d in _real_items(real_data) if d.get("collection", "").startswith("sentinel-1")]
    assert len(items) == 5 + 2 + 3
    hh_only = 0
    for d in items:
        declared = d["properties"]["sar:polarizations"]
        for pol in declared:
            assert asset_key(d, pol) == pol.lower()
        if "VV" not in declared:
            hh_only += 1
            with pytest.raises(BadInputError) as err:
                asset_key(d, "VV")
            msg = str(err.value)
            assert d["id"] in msg and "VV" in msg and "['HH']" in msg
    assert hh_only == 4  # 3 Earth Search IW 1SSH + 1 MPC EW 1SSH


def test_dem_items_resolve_dem(real_data: Path) -> None:
    items = [d for d in _real_items(real_data) if d.get("collection", "").startswith("cop-dem")]
    assert len(items) == 10 + 4 + 1
    assert {asset_key(d, "DEM") for d in items} == {"data"}


def test_missing_band_names_item_band_and_assets(real_data: Path) -> None:
    path = real_data / "stac-json" / "items" / "earth-search-v1" / "sentinel-2-l1c"
    item = _load(sorted(path.glob("*.json")))[0]  # L1C: no SCL
    with pytest.raises(BadInputError) as err:
        asset_key(item, "SCL")
    msg = str(err.value)
    assert item["id"] in msg and "'SCL'" in msg and "'red'" in msg and "cirrus" in msg


def test_item_of_unknown_style_is_bad_input() -> None:
    item = {"id": "odd", "assets": {"thumbnail": {"href": "x.png"}}}
    with pytest.raises(BadInputError, match="odd"):
        detect_style(item)


def test_custom_styles_override() -> None:
    item = {"id": "x", "assets": {"band_4": {"href": "b4.tif"}}}
    styles = {"custom": {"B04": "band_4"}}
    assert asset_key(item, "B04", styles=styles) == "band_4"
