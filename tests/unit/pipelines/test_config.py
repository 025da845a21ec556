"""Province config validation: every error names the field, the value and what is valid."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config, parse_config
from pipelines.errors import BadInputError

AOI = {
    "type": "Polygon",
    "coordinates": [[[114.0, 34.4], [114.2, 34.4], [114.2, 34.6], [114.0, 34.6], [114.0, 34.4]]],
}
GOOD = {
    "province": "henan-test",
    "aoi": AOI,
    "crs": "EPSG:32650",
    "start": "2025-07-01",
    "end": "2025-07-31",
    "products": ["cloud_mask"],
    "stac": {"url": "http://127.0.0.1:1/"},
    "store": "/tmp/out",
}


def _with(**changes):
    raw = copy.deepcopy(GOOD)
    raw.update(changes)
    return raw


def test_good_config_parses_and_projects_the_aoi():
    cfg = parse_config(GOOD)
    assert cfg.province == "henan-test"
    minx, miny, maxx, maxy = cfg.aoi_projected().bounds
    assert 200_000 < minx < maxx < 260_000 and 3_800_000 < miny < maxy < 3_840_000
    assert cfg.fingerprint() == parse_config(GOOD).fingerprint()
    assert cfg.with_window(cfg.start, cfg.start).fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize(
    ("changes", "field", "needle"),
    [
        ({"crs": "EPSG:4326"}, "crs", "projected"),
        ({"crs": "EPSG:99999999"}, "crs", "CRS"),
        ({"products": ["cloud_mask", "nope"]}, "products", "registered stages"),
        ({"end": "2025-06-01"}, "end", ""),
        ({"province": "Bad Name"}, "province", "pattern"),
        ({"aoi": {"type": "Point", "coordinates": [1, 2]}}, "aoi", "Polygon"),
        ({"tile_px": 3}, "tile_px", "16"),
        ({"stac": {}}, "stac", "stac.url"),
        ({"colour": "red"}, "colour", "allowed fields"),
        ({"stac": {"url": "x", "max_cloud_cover": 140}}, "stac.max_cloud_cover", "100"),
    ],
)
def test_bad_config_names_field_value_and_what_is_valid(changes, field, needle):
    with pytest.raises(BadInputError) as info:
        parse_config(_with(**changes))
    err = info.value
    assert err.field.startswith(field.split(".")[0])
    assert needle in str(err)


def test_missing_field_is_named():
    raw = _with()
    del raw["crs"]
    with pytest.raises(BadInputError, match="crs"):
        parse_config(raw)


def test_yaml_file_relative_paths_and_errors(tmp_path: Path):
    (tmp_path / "aoi.geojson").write_text(json.dumps(AOI))
    raw = _with(aoi="aoi.geojson", store="out")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.store == str(tmp_path / "out")
    with pytest.raises(BadInputError, match="config"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("province: [unclosed")
    with pytest.raises(BadInputError, match="valid YAML"):
        load_config(path)
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(_with(aoi="nope.geojson")))
    with pytest.raises(BadInputError, match="aoi"):
        load_config(tmp_path / "q.yaml")


def test_embedded_default_config_is_valid(tiny_archive, tmp_path, monkeypatch):
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "demo").symlink_to(tiny_archive)
    monkeypatch.setenv("TERRAPIPE_HOME", str(tmp_path))
    cfg = load_config(None)
    assert cfg.province == "demo"
    assert cfg.stac.archive and cfg.stac.url is None
