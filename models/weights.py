"""Committed model weights: save with checksum and model card, load only after verifying it.

Layout inside the package: ``models/weights/<name>.pt`` (a torch state dict),
``models/weights/<name>.pt.sha256`` (``sha256sum -c`` format) and ``models/cards/<name>.json``
(a STAC Item with the MLM extension that describes inputs, outputs, training data and metrics).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import BadInputError

if TYPE_CHECKING:
    import torch

MODELS_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = MODELS_DIR / "weights"
CARDS_DIR = MODELS_DIR / "cards"
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def card_path(name: str) -> Path:
    return CARDS_DIR / f"{name}.json"


def read_card(name: str) -> dict[str, Any]:
    """The model card (STAC MLM item) of ``name``."""
    path = card_path(name)
    if not path.exists():
        raise BadInputError("model card", str(path), "a committed card (train the model first)")
    return json.loads(path.read_text())


def card_sha256(card: dict[str, Any]) -> str:
    """The weights checksum recorded in a model card."""
    return str(card["assets"]["weights"]["terrapipe:sha256"])


#: Checksums read from committed cards, by card path, with the (mtime, size) they were read at.
_CARD_CHECKSUMS: dict[Path, tuple[tuple[int, int], str]] = {}


def committed_sha256(name: str) -> str | None:
    """The weights checksum of ``name``'s committed card (None: no card), read again only when
    the card file changes: staleness checks ask it once per product marker, thousands of
    times a province."""
    path = card_path(name)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    known = _CARD_CHECKSUMS.get(path)
    if known is None or known[0] != key:
        known = _CARD_CHECKSUMS[path] = (key, card_sha256(read_card(name)))
    return known[1]


def verify_weights(path: str | Path, expected_sha256: str) -> None:
    """Raise a clear error unless ``path`` exists and its sha256 is ``expected_sha256``."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError("weights", str(path), "an existing weights file (.pt)")
    found = sha256_file(path)
    if found != expected_sha256:
        raise BadInputError(
            "weights",
            str(path),
            f"a file with sha256 {expected_sha256}",
            f"its sha256 is {found}: the file is corrupt or not the weights the card describes",
        )


def load_state(path: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read only after its checksum matched (never unpickles code)."""
    if expected_sha256 is not None:
        verify_weights(path, expected_sha256)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_model(name: str, net: torch.nn.Module, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``net``'s weights, their ``.sha256`` and the STAC MLM card; return the card written.

    ``card`` holds the MLM fields (``mlm:name``, ``mlm:architecture``, ``mlm:input``,
    ``mlm:output``...) plus ``training`` and ``metrics`` dicts; the asset is filled in here.
    """
    import torch

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    CARDS_DIR.mkdir(parents=True, exist_ok=True)
    path = weights_path(name)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, path)
    sha = sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{sha}  {path.name}\n")
    properties = {k: v for k, v in card.items() if k not in ("training", "metrics")}
    properties.setdefault("mlm:name", name)
    properties.setdefault("mlm:framework", "pytorch")
    properties.setdefault("mlm:framework_version", torch.__version__.split("+")[0])
    properties.setdefault("mlm:total_parameters", int(sum(p.numel() for p in net.parameters())))
    properties.setdefault("mlm:accelerator", "cuda")
    properties.setdefault("mlm:accelerator_constrained", False)
    properties["datetime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    properties["terrapipe:training"] = card.get("training", {})
    properties["terrapipe:metrics"] = card.get("metrics", {})
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA, FILE_SCHEMA],
        "id": f"terrapipe-{name}",
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": {
            "weights": {
                "href": f"../weights/{path.name}",
                "type": "application/octet-stream; application=pytorch",
                "title": f"{name} state dict",
                "roles": ["mlm:model", "mlm:weights"],
                "mlm:artifact_type": "torch.save",
                "file:size": path.stat().st_size,
                "file:checksum": "1220" + sha,
                "terrapipe:sha256": sha,
            }
        },
    }
    card_path(name).write_text(json.dumps(item, indent=1) + "\n")
    return item
