"""docs/products.md, the page downstream users read, names every registered product."""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.stages.registry import list_stages

DOC = Path(__file__).resolve().parents[4] / "docs" / "products.md"


def test_the_products_page_has_a_row_for_every_registered_product():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z_0-9<>]+)`", row.split("|")[1])}
    missing = sorted(set(list_stages()) - named)
    assert not missing, f"docs/products.md has no row for {missing}"
