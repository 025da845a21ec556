"""What a province's store holds, read from its static STAC catalog.

``<province>/catalog.json`` links one collection per product, each collection one catalog per
month of its items (:mod:`pipelines.products.catalog`); the index below lists, per product, the
labels (dates or season labels) and per label the tiles with their WGS84 bounding boxes, so that
a map tile can be rendered from the COGs it overlaps. A product is read again when its
collection changes (a run's catalog step records each month's items there), and then only the
months whose record changed. A tile's bounding box is the one its month catalog's link records;
for a month catalog written before links recorded it, it is read once, from one of its items.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from pipelines import products, storage
from pipelines.errors import BadInputError


@dataclass(frozen=True)
class TileItem:
    """One (product, tile, label): its STAC item and where its COG lies."""

    tile_id: str
    label: str
    bbox: tuple[float, float, float, float]
    """WGS84 lon/lat bounds (west, south, east, north), degrees."""
    item_url: str
    cog_url: str


@dataclass(frozen=True)
class ProductIndex:
    """One product: its items grouped by label, labels sorted."""

    name: str
    items: dict[str, tuple[TileItem, ...]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted(self.items)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        boxes = [i.bbox for items in self.items.values() for i in items]
        return (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )


class StoreIndex:
    """The products of ``province`` in ``store``, from its catalog; thread safe."""

    def __init__(self, store: str, province: str) -> None:
        self.store = store
        self.province = province
        self._lock = threading.Lock()
        self._products: dict[str, ProductIndex] = {}
        self._collections: dict[str, str] = {}
        """Product -> digest of the collection its index was read from."""
        self._periods: dict[tuple[str, str], tuple[str, list[products.PeriodItem]]] = {}
        """(product, period) -> (the period's record in its collection, its items)."""
        self._bboxes: dict[tuple[str, str], tuple[float, float, float, float]] = {}
        """(product, tile id) -> the tile's WGS84 bounds."""

    @property
    def catalog_url(self) -> str:
        return products.catalog_url(self.store, self.province)

    def products(self) -> dict[str, ProductIndex]:
        """Product name -> index; empty when the store has no catalog yet."""
        url = self.catalog_url
        if not storage.exists(url):
            return {}
        names = []
        for link in json.loads(storage.read_text(url)).get("links", []):
            if link.get("rel") == "child":
                names.append(str(link["href"]).removeprefix("./").split("/", 1)[0])
        texts = {}
        for name in names:
            c_url = products.collection_url(self.store, self.province, name)
            if storage.exists(c_url):
                texts[name] = storage.read_text(c_url)
        with self._lock:
            for name, text in texts.items():
                digest = hashlib.sha256(text.encode()).hexdigest()
                if digest != self._collections.get(name):
                    self._products[name] = self._read(name, json.loads(text))
                    self._collections[name] = digest
            return {n: self._products[n] for n in texts if self._products[n].items}

    def product(self, name: str) -> ProductIndex:
        """The index of product ``name``; BadInputError naming the products present."""
        found = self.products()
        if name not in found:
            raise BadInputError(
                "product",
                name,
                f"a product of {self.province} in {self.store}: {sorted(found) or 'none yet'}",
            )
        return found[name]

    def items(self, product: str, label: str) -> tuple[TileItem, ...]:
        """The tiles of ``product`` at ``label``; BadInputError naming the labels present."""
        index = self.product(product)
        if label not in index.items:
            raise BadInputError(f"{product}.label", label, f"one of {index.labels}")
        return index.items[label]

    def item(self, product: str, tile_id: str, label: str) -> TileItem:
        """One tile item; BadInputError naming the tiles present at that label."""
        for it in self.items(product, label):
            if it.tile_id == tile_id:
                return it
        known = sorted(i.tile_id for i in self.items(product, label))
        raise BadInputError(f"{product}.{label}.tile_id", tile_id, f"one of {known}")

    def _read(self, name: str, collection: dict[str, Any]) -> ProductIndex:
        """A product's index from its collection: the items of each period (read again only
        for a period whose record changed), the bounding box of each tile not seen before (from
        its link, else from one of its items)."""
        items: list[products.PeriodItem] = []
        for period, link in sorted(products.collection_periods(collection).items()):
            record = json.dumps(link, sort_keys=True)
            cached = self._periods.get((name, period))
            if cached is None or cached[0] != record:
                found = products.period_links(self.store, self.province, name, period)
                cached = (record, found)
                self._periods[(name, period)] = cached
            items.extend(cached[1])
        labels_of: dict[str, list[str]] = {}
        for item in items:
            labels_of.setdefault(item.tile_id, []).append(item.label)
            if item.bbox is not None:
                self._bboxes.setdefault((name, item.tile_id), item.bbox)
        new = [t for t in labels_of if (name, t) not in self._bboxes]

        def bbox(tile_id: str) -> tuple[float, float, float, float] | None:
            for label in labels_of[tile_id]:  # the first item of the tile that reads
                url = products.marker_url(self.store, self.province, name, tile_id, label)
                marker = products.read_marker(url)
                if marker is not None:
                    west, south, east, north = (float(v) for v in marker["bbox"][:4])
                    return (west, south, east, north)
            return None

        for tile_id, box in zip(new, storage.concurrently(bbox, new, url=self.store), strict=True):
            if box is not None:
                self._bboxes[(name, tile_id)] = box
        by_label: dict[str, list[TileItem]] = {}
        for tile_id, label in ((i.tile_id, i.label) for i in items):
            box = self._bboxes.get((name, tile_id))
            if box is None:
                continue  # no item of the tile reads: being rewritten, or removed
            by_label.setdefault(label, []).append(
                TileItem(
                    tile_id,
                    label,
                    box,
                    products.marker_url(self.store, self.province, name, tile_id, label),
                    products.cog_url(self.store, self.province, name, tile_id, label),
                )
            )
        return ProductIndex(name, {k: tuple(v) for k, v in by_label.items()})
