"""Season products: the season layout (paths fixed by earlier runs), Parquet tables, and the STAC
item of a province-wide season product."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines import products
from pipelines.errors import BadInputError
from pipelines.grid import ProvinceGrid, TileGrid
from pipelines.products.stac import footprint_wgs84, item_json

STORE = "s3://bucket/prefix"


@pytest.fixture
def pgrid() -> ProvinceGrid:
    grid = TileGrid(crs="EPSG:32650", resolution=10.0, tile_px=1024)
    return ProvinceGrid(grid, tuple(grid.tile(ix, iy) for iy in (401, 400) for ix in (20, 21)))


def test_season_paths_are_the_ones_earlier_runs_wrote() -> None:
    root = f"{STORE}/demo"
    assert products.season_url(STORE, "demo", 2025) == f"{root}/season/2025"
    assert (
        products.season_table_url(STORE, "demo", 2025, "x0020_y0400")
        == f"{root}/season/2025/tables/x0020_y0400.parquet"
    )
    assert (
        products.crop_predictions_url(STORE, "demo", 2025)
        == f"{root}/season/2025/crop_predictions.parquet"
    )
    assert products.crop_model_url(STORE, "demo", 2025) == f"{root}/season/2025/crop_model.json"
    assert (
        products.vector_url(STORE, "demo", "parcels", 2025, "x0020_y0400")
        == f"{root}/parcels/vector/2025/x0020_y0400.parquet"
    )
    assert (
        products.season_file_url(STORE, "demo", "yield", 2025, "forecast.csv")
        == f"{root}/yield/2025/forecast.csv"
    )
    assert products.season_item_url(STORE, "demo", "yield", 2025) == f"{root}/yield/items/2025.json"
    assert products.season_table_url("/tmp/store", "demo", 2025, "t1") == (
        "/tmp/store/demo/season/2025/tables/t1.parquet"
    )


def test_season_paths_refuse_names_that_leave_their_folder() -> None:
    with pytest.raises(BadInputError, match="tile_id"):
        products.season_table_url(STORE, "demo", 2025, "../other")
    with pytest.raises(BadInputError, match="name"):
        products.season_file_url(STORE, "demo", "yield", 2025, "a/b.csv")


def test_tables_round_trip_with_their_index(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"county_id": [3, 4], "ndvi": [0.5, 0.25], "tile_id": ["a", "b"]},
        index=pd.Index([1 << 20, (1 << 20) + 1], name="parcel_id"),
    )
    url = str(tmp_path / "season" / "t.parquet")
    size = products.write_table(frame, url)
    assert size == Path(url).stat().st_size > 0
    pd.testing.assert_frame_equal(products.read_table(url), frame)
    with pytest.raises(FileNotFoundError):
        products.read_table(str(tmp_path / "missing.parquet"))


def test_a_batch_reads_its_parcels_rows_of_the_crop_predictions(tmp_path: Path) -> None:
    """The predictions are written sorted by parcel id in row groups; a batch of tiles reads
    the rows of its parcel ids (its tiles' offsets) exactly (`terrapipe bench-province`
    measures what it reads). A table written before (one row group, unsorted) gives the same
    rows."""
    from dataclasses import replace

    import numpy as np
    import pyarrow.parquet as pq

    from pipelines.engine.season import LOCAL_ID_BITS, parcel_rows
    from pipelines.engine.season_crops import PREDICTION_ROW_GROUP_ROWS, write_predictions
    from tests.unit.pipelines.engine.test_plan import synthetic_plan

    plan = replace(synthetic_plan(), batches=[["x0000_y0000"], ["x0001_y0000"]])
    per_tile = PREDICTION_ROW_GROUP_ROWS + 10  # each tile's parcels span two row groups
    ids = [((k + 1) << LOCAL_ID_BITS) + np.arange(1, per_tile + 1) for k in range(2)]
    frame = pd.DataFrame(
        {"p_rice": np.linspace(0, 1, 2 * per_tile, dtype="float32")},
        index=pd.Index(np.concatenate(ids), name="parcel_id"),
    )
    shuffled = frame.sample(frac=1.0, random_state=0)
    url = str(tmp_path / "crop_predictions.parquet")
    write_predictions(shuffled, url)
    groups = pq.ParquetFile(url).metadata.num_row_groups
    assert groups == 3  # 2 x (2**14 + 10) rows in groups of 2**14
    for batch, tile_ids in enumerate(plan.batches):
        rows = parcel_rows(plan, tile_ids)
        assert (rows.start, rows.stop) == ((batch + 1) << 20, (batch + 2) << 20)
        pd.testing.assert_frame_equal(products.read_table(url, rows), frame.iloc[
            batch * per_tile : (batch + 1) * per_tile])  # fmt: skip
    products.write_table(shuffled, url)  # the layout before: one row group, unsorted
    got = products.read_table(url, parcel_rows(plan, ["x0001_y0000"]))
    pd.testing.assert_frame_equal(got.sort_index(), frame.iloc[per_tile:])


def test_a_range_of_a_column_reads_its_row_groups_and_names_an_unknown_column(
    tmp_path: Path,
) -> None:
    """The range reads the groups whose statistics overlap it (all of them where the writer kept
    no statistics), keeps the rows in [start, stop) of a column or of the index, and refuses a
    column the file does not have by name."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.DataFrame(
        {"parcel_id": np.arange(100, dtype="int64"), "p": np.arange(100, dtype="float32")}
    )
    url = str(tmp_path / "t.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), url, row_group_size=30,
                   write_statistics=False)  # fmt: skip
    got = products.read_table(url, products.RowRange("parcel_id", 25, 65))
    pd.testing.assert_frame_equal(got, frame.iloc[25:65])
    assert products.read_table(url, products.RowRange("parcel_id", 500, 600)).empty
    with pytest.raises(ValueError, match=r"rows.column='parcel'.*no such column.*'parcel_id'"):
        products.read_table(url, products.RowRange("parcel", 0, 10))


def test_season_item_content(pgrid: ProvinceGrid) -> None:
    hrefs = {
        kind: products.season_file_url(STORE, "demo", "yield", 2025, f"forecast.{kind}")
        for kind in ("parquet", "csv", "png")
    }
    model = {"features": ["ndvi_integral"], "method": "gbm", "rmse": 0.1}
    item = products.season_item(
        "demo",
        "yield",
        2025,
        pgrid.geobox,
        ("2025-03-01", "2025-11-30"),
        hrefs,
        {"terrapipe:units": "t/ha", "terrapipe:model": model},
    )
    d = json.loads(item_json(item))
    assert d["id"] == "demo-yield-2025" and d["stac_version"] == "1.1.0" and d["links"] == []
    assert d["properties"] == {
        "datetime": None,
        "start_datetime": "2025-03-01T00:00:00Z",
        "end_datetime": "2025-11-30T23:59:59Z",
        "terrapipe:product": "yield",
        "terrapipe:season": 2025,
        "terrapipe:units": "t/ha",
        "terrapipe:model": model,
    }
    assert d["assets"] == {
        "parquet": {
            "href": f"{STORE}/demo/yield/2025/forecast.parquet",
            "type": "application/vnd.apache.parquet",
            "roles": ["data"],
        },
        "csv": {
            "href": f"{STORE}/demo/yield/2025/forecast.csv",
            "type": "text/csv",
            "roles": ["data"],
        },
        "png": {
            "href": f"{STORE}/demo/yield/2025/forecast.png",
            "type": "image/png",
            "roles": ["overview"],
        },
    }
    geometry, bbox = footprint_wgs84(pgrid.geobox)  # the same outline as the tile items
    assert d["geometry"] == json.loads(json.dumps(geometry)) and d["bbox"] == bbox
    west, south, east, north = bbox
    assert 113.6 < west < east < 114.0 and 36.9 < south < north < 37.2


def test_season_item_refuses_unknown_files_and_nan(pgrid: ProvinceGrid) -> None:
    window = ("2025-03-01", "2025-11-30")
    with pytest.raises(BadInputError, match="asset kind"):
        products.season_item("demo", "yield", 2025, pgrid.geobox, window, {"xlsx": "a.xlsx"}, {})
    with pytest.raises(BadInputError, match="properties"):
        products.season_item("demo", "yield", 2025, pgrid.geobox, window, {}, {"x": float("nan")})
