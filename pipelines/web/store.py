"""What a province's store holds, read from its static STAC catalog.

``<province>/catalog.json`` links one collection per product and each collection links its items
(``./items/<tile_id>/<label>.json``); the index below lists, per product, the labels (dates or
season labels) and per label the tiles with their WGS84 bounding boxes, so that a map tile can be
rendered from the COGs it overlaps. The index is rebuilt when ``catalog.json`` changes (a run
rebuilds it as it ends).
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
        self._digest: str | None = None
        self._products: dict[str, ProductIndex] = {}

    @property
    def catalog_url(self) -> str:
        return products.catalog_url(self.store, self.province)

    def products(self) -> dict[str, ProductIndex]:
        """Product name -> index; empty when the store has no catalog yet."""
        url = self.catalog_url
        if not storage.exists(url):
            return {}
        text = storage.read_text(url)
        digest = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            if digest != self._digest:
                self._products = self._read(json.loads(text))
                self._digest = digest
            return self._products

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

    def _read(self, catalog: dict[str, Any]) -> dict[str, ProductIndex]:
        out: dict[str, ProductIndex] = {}
        for link in catalog.get("links", []):
            if link.get("rel") != "child":
                continue
            name = str(link["href"]).removeprefix("./").split("/", 1)[0]
            by_label: dict[str, list[TileItem]] = {}
            for tile_id, label in products.catalog_items(self.store, self.province, name):
                m_url = products.marker_url(self.store, self.province, name, tile_id, label)
                marker = products.read_marker(m_url)
                if marker is None:
                    continue  # being rewritten, or removed since the catalog was built
                west, south, east, north = (float(v) for v in marker["bbox"][:4])
                by_label.setdefault(label, []).append(
                    TileItem(
                        tile_id,
                        label,
                        (west, south, east, north),
                        m_url,
                        products.cog_url(self.store, self.province, name, tile_id, label),
                    )
                )
            if by_label:
                out[name] = ProductIndex(name, {k: tuple(v) for k, v in by_label.items()})
        return out
