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
    # a field added later counts only when it is not its default: older configs keep their runs
    assert parse_config(_with(mantissa_bits=13)).fingerprint() == cfg.fingerprint()
    assert parse_config(_with(mantissa_bits=None)).fingerprint() != cfg.fingerprint()
    # this config's fingerprint before stac.exclude_items existed: its runs stay its own
    assert cfg.fingerprint() == "c076fa950dff"
    stac = GOOD["stac"]
    excluding = parse_config(_with(stac={**stac, "exclude_items": ["S2B_X"]}))
    assert excluding.fingerprint() != cfg.fingerprint()


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
        ({"stac": {"url": "http://x", "max_cloud_cover": 140}}, "stac.max_cloud_cover", "100"),
        ({"stac": {"url": "ftp://example.com/stac"}}, "stac.url", "https://"),
        ({"mantissa_bits": 60}, "mantissa_bits", "52"),
        ({"stac": {"url": "http://x", "exclude_items": ["S2_A", " "]}}, "stac", "item IDs"),
        ({"stac": {"url": "http://x", "exclude_items": "S2_A"}}, "stac", "tuple"),
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


def test_self_intersecting_aoi_is_bad_input_naming_the_point():
    bow_tie = {
        "type": "Polygon",
        "coordinates": [
            [[114.0, 34.4], [114.2, 34.6], [114.2, 34.4], [114.0, 34.6], [114.0, 34.4]]
        ],
    }
    with pytest.raises(BadInputError, match="Self-intersection") as info:
        parse_config(_with(aoi=bow_tie))
    assert info.value.field == "aoi"


def test_aoi_far_outside_the_crs_zone_names_the_zone_to_use():
    far = {
        "type": "Polygon",
        "coordinates": [
            [[-60.0, 34.4], [-59.8, 34.4], [-59.8, 34.6], [-60.0, 34.6], [-60.0, 34.4]]
        ],
    }
    with pytest.raises(BadInputError, match="EPSG:32621") as info:
        parse_config(_with(aoi=far))
    assert info.value.field == "aoi" and "EPSG:32650" in str(info.value)
    # the neighbouring zone is close enough to use
    near = json.loads(json.dumps(far).replace("-60.0", "112.0").replace("-59.8", "112.2"))
    assert parse_config(_with(aoi=near)).aoi == near


def test_unquoted_dates_parse_and_an_invalid_one_names_its_field(tmp_path: Path):
    text = yaml.safe_dump(_with(start="START", end="2025-07-31"))
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("'2025-07-31'", "2025-07-31").replace("START", "2025-07-01"))
    assert "start: 2025-07-01" in path.read_text() and "end: 2025-07-31" in path.read_text()
    cfg = load_config(path)
    assert (cfg.start.isoformat(), cfg.end.isoformat()) == ("2025-07-01", "2025-07-31")
    path.write_text(path.read_text().replace("start: 2025-07-01", "start: 2025-13-45"))
    with pytest.raises(BadInputError, match="2025-13-45") as info:
        load_config(path)
    assert info.value.field == "start"


def test_config_path_that_is_a_directory_is_bad_input(tmp_path: Path):
    with pytest.raises(BadInputError, match="readable province config") as info:
        load_config(tmp_path)
    assert info.value.field == "config"


PC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"


@pytest.mark.parametrize(
    ("stac", "signing"),
    [
        ({"url": PC_API}, "planetary_computer"),  # default: by the STAC API's host
        ({"url": "https://earth-search.aws.element84.com/v1"}, "aws_public"),  # its s3:// DEM
        ({"url": "http://127.0.0.1:1/"}, "none"),
        ({"archive": "/data/archive"}, "none"),  # the served archive
        ({"url": PC_API, "sign": "none"}, "none"),  # overrides
        (
            {"url": "https://stac.example.org/v1", "sign": "planetary_computer"},
            "planetary_computer",
        ),
    ],
)
def test_stac_sign_defaults_by_host_and_can_be_set(stac, signing):
    from pipelines.config import stac_signing

    cfg = parse_config(_with(stac=stac))
    assert cfg.stac.signing == signing
    assert stac_signing(cfg.model_dump(mode="json")["stac"]) == signing  # as a plan carries it
    # how links are read decides nothing about the outputs: runs and their plan URLs stay
    assert cfg.fingerprint() == parse_config(_with(stac={**stac, "sign": None})).fingerprint()


def test_a_bad_stac_sign_names_the_field_the_value_and_what_is_valid():
    from pipelines.config import stac_signing

    with pytest.raises(BadInputError) as info:
        parse_config(_with(stac={"url": PC_API, "sign": "sas"}))
    err = info.value
    assert (err.field, err.value) == ("stac.sign", "sas")
    assert "'planetary_computer'" in str(err) and "'none'" in str(err)
    with pytest.raises(BadInputError, match=r"stac\.sign: got 'sas'"):
        stac_signing({"url": PC_API, "sign": "sas"})  # a plan edited by hand
