"""The web page's index of a store: products, labels and tiles read from the STAC catalog."""

from __future__ import annotations

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


def test_a_later_run_reads_only_its_months_and_no_tile_twice(tmp_path, pgrid, monkeypatch):  # noqa: F811
    """The index follows a long archive without reading it again: after a run, only the
    months whose record in the collection changed are read, and a tile's bounding box is
    read from one of its items once (before, every item of every product was read)."""
    from pipelines import products

    store = _store(tmp_path, pgrid)
    _run(store, pgrid, WINDOW_1, seed=100)
    markers, periods = [], []
    read_marker, period_items = products.read_marker, products.period_items
    monkeypatch.setattr(
        products, "read_marker", lambda url: markers.append(url) or read_marker(url)
    )
    monkeypatch.setattr(
        products, "period_items", lambda *a: periods.append(a[-1]) or period_items(*a)
    )
    index = StoreIndex(store, PROVINCE)
    assert len(index.product(PRODUCT).items) == 3
    assert periods == ["2024-05"] and len(markers) == 2  # one per tile
    markers.clear()
    periods.clear()
    assert index.product(PRODUCT).labels == WINDOW_1  # nothing changed: nothing read
    assert periods == [] and markers == []
    _run(store, pgrid, WINDOW_2, seed=110)
    assert index.product(PRODUCT).labels == WINDOW_1 + WINDOW_2
    assert periods == ["2024-06"] and markers == []
