"""The web page's index of a store: products, labels and tiles read from the STAC catalog."""

from __future__ import annotations

from pipelines import products, storage
from pipelines.products import init_cube, update_catalog
from pipelines.web.store import StoreIndex
from tests.unit.pipelines.products.test_products import (
    PRODUCT,
    PROVINCE,
    VARIABLES,
    WINDOW_1,
    WINDOW_2,
    _write,
    pgrid,  # noqa: F401 (fixture)
)


def _run(store: str, pgrid, window: list[str], seed: int) -> None:  # noqa: F811
    """A run of two tiles over ``window``, then its catalog step (its month)."""
    for i, tile in enumerate(pgrid.tiles[:2]):
        _write(store, pgrid, tile, window, seed=seed + i)
    update_catalog(store, PROVINCE, [window[0][:7]])


def _store(tmp_path, pgrid) -> str:  # noqa: F811
    store = str(tmp_path / "store")
    init_cube(store, PROVINCE, PRODUCT, pgrid, WINDOW_1 + WINDOW_2, VARIABLES)
    return store


def test_the_index_shows_a_later_runs_dates_without_a_restart(tmp_path, pgrid):  # noqa: F811
    """A page left open over a province sees each run's new dates once its catalog step has
    run. Before, the index was rebuilt only when ``catalog.json`` changed, and a run that adds
    dates to products already there leaves that file as it was: the page showed the dates of
    its start until it was restarted."""
    store = _store(tmp_path, pgrid)
    _run(store, pgrid, WINDOW_1, seed=80)
    index = StoreIndex(store, PROVINCE)
    assert index.product(PRODUCT).labels == WINDOW_1
    _run(store, pgrid, WINDOW_2, seed=90)
    assert index.product(PRODUCT).labels == WINDOW_1 + WINDOW_2
    assert sorted(i.tile_id for i in index.items(PRODUCT, WINDOW_2[0])) == sorted(
        t.tile_id for t in pgrid.tiles[:2]
    )


def _counting(monkeypatch) -> tuple[list[str], list[str]]:
    """The marker URLs and the periods the index reads from now on."""
    from pipelines import products

    markers: list[str] = []
    periods: list[str] = []
    read_marker, period_links = products.read_marker, products.period_links
    monkeypatch.setattr(
        products, "read_marker", lambda url: markers.append(url) or read_marker(url)
    )
    monkeypatch.setattr(
        products, "period_links", lambda *a: periods.append(a[-1]) or period_links(*a)
    )
    return markers, periods


def test_a_later_run_reads_only_its_months_and_no_item(tmp_path, pgrid, monkeypatch):  # noqa: F811
    """The index follows a long archive without reading it again: after a run, only the
    months whose record in the collection changed are read, and a tile's bounding box comes
    from its month catalog's link (before, one item a tile and product was read; before that,
    every item of every product)."""
    store = _store(tmp_path, pgrid)
    _run(store, pgrid, WINDOW_1, seed=100)
    markers, periods = _counting(monkeypatch)
    index = StoreIndex(store, PROVINCE)
    assert len(index.product(PRODUCT).items) == 3
    assert periods == ["2024-05"] and markers == []
    first = pgrid.tiles[0]
    (item,) = [i for i in index.items(PRODUCT, WINDOW_1[0]) if i.tile_id == first.tile_id]
    marker = products.read_marker(
        products.marker_url(store, PROVINCE, PRODUCT, first.tile_id, WINDOW_1[0])
    )
    assert marker is not None and item.bbox == tuple(marker["bbox"])  # the item's own bounds
    markers.clear()
    periods.clear()
    assert index.product(PRODUCT).labels == WINDOW_1  # nothing changed: nothing read
    assert periods == [] and markers == []
    _run(store, pgrid, WINDOW_2, seed=110)
    assert index.product(PRODUCT).labels == WINDOW_1 + WINDOW_2
    assert periods == ["2024-06"] and markers == []


def test_a_month_catalog_without_bounds_reads_one_item_a_tile(tmp_path, pgrid, monkeypatch):  # noqa: F811
    """A month catalog written before its links recorded bounds: each tile's bounding box is
    read once, from one of its items."""
    import json

    store = _store(tmp_path, pgrid)
    _run(store, pgrid, WINDOW_1, seed=100)
    path = products.period_url(store, PROVINCE, PRODUCT, WINDOW_1[0][:7])
    doc = json.loads(storage.read_text(path))
    for link in doc["links"]:
        link.pop(products.LINK_BBOX, None)
    storage.write_text(path, json.dumps(doc))
    markers, _ = _counting(monkeypatch)
    index = StoreIndex(store, PROVINCE)
    assert len(index.product(PRODUCT).items) == 3
    assert len(markers) == 2  # one per tile
    assert all(i.bbox for label in WINDOW_1 for i in index.items(PRODUCT, label))
