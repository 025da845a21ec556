"""`terrapipe catalog`: the province's STAC catalog rebuilt from the markers in its store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipelines.errors import BadInputError
from pipelines.production_cli import catalog
from pipelines.products import catalog_items, init_cube, marker_url, period_url
from tests.unit.pipelines.products.test_products import (
    PRODUCT,
    PROVINCE,
    VARIABLES,
    WINDOW_1,
    WINDOW_2,
    _write,
    pgrid,  # noqa: F401 (fixture)
)


def _config(tmp_path: Path, store: str) -> Path:
    aoi = tmp_path / "aoi.geojson"
    square = [[[114.0, 22.0], [114.1, 22.0], [114.1, 22.1], [114.0, 22.1], [114.0, 22.0]]]
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": square}))
    cfg = {
        "province": PROVINCE,
        "aoi": str(aoi),
        "crs": "EPSG:32650",
        "tile_px": 32,
        "start": WINDOW_1[0],
        "end": WINDOW_2[-1],
        "products": [PRODUCT],
        "stac": {"archive": str(tmp_path / "archive")},
        "store": store,
    }
    path = tmp_path / "province.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_catalog_rebuilds_every_month_or_the_months_given(tmp_path, pgrid):  # noqa: F811
    store = str(tmp_path / "store")
    tile = pgrid.tiles[0]
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    _write(store, pgrid, tile, WINDOW_1 + WINDOW_2, seed=70)
    config = _config(tmp_path, store)
    app = typer.Typer()
    app.command()(catalog)
    runner = CliRunner()

    done = runner.invoke(app, [str(config)])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output.strip().splitlines()[-1])["months"] == "all"
    assert len(catalog_items(store, PROVINCE, PRODUCT)) == 5
    # a marker removed by hand: the month given is rebuilt, the other kept as it was
    june = Path(period_url(store, PROVINCE, PRODUCT, "2024-06")).read_bytes()
    Path(marker_url(store, PROVINCE, PRODUCT, tile.tile_id, WINDOW_1[0])).unlink()
    done = runner.invoke(app, [str(config), "--month", "2024-05"])
    assert done.exit_code == 0, done.output
    assert len(catalog_items(store, PROVINCE, PRODUCT)) == 4
    assert Path(period_url(store, PROVINCE, PRODUCT, "2024-06")).read_bytes() == june

    bad = runner.invoke(app, [str(config), "--month", "2024-6"])
    assert isinstance(bad.exception, BadInputError)
    assert "month" in str(bad.exception) and "YYYY-MM" in str(bad.exception)


@pytest.mark.parametrize("value", ["2024-13", "24-06", "2024-06-01"])
def test_a_month_not_written_yyyy_mm_is_refused(tmp_path, value):
    app = typer.Typer()
    app.command()(catalog)
    bad = CliRunner().invoke(app, [str(tmp_path / "none.yaml"), "--month", value])
    assert isinstance(bad.exception, BadInputError) and value in str(bad.exception)
