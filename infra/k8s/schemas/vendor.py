"""Re-create the vendored schemas of this folder from the two PyPI wheels they come from.

    python -m pip download --no-deps dask-kubernetes==2026.3.0 kubernetes-validate==1.37.0 -d W
    python infra/k8s/schemas/vendor.py W/dask_kubernetes-*.whl W/kubernetes_validate-*.whl

Files are copied unchanged, except ``kubernetes/<version>/_definitions.json``, which keeps only
the definitions reachable (through ``$ref``) from the object schemas listed in ``K8S_OBJECTS``
(the full file holds all 707 Kubernetes types, 1.4 MB). PROVENANCE.md records the wheels'
sha256 and each file's source path.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CRD_DIR = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds"
CRDS = ("daskcluster.yaml", "daskworkergroup.yaml")
K8S_VERSION = "v1.33.0"
K8S_DIR = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict"
K8S_OBJECTS = ("secret-v1.json", "configmap-v1.json", "job-batch-v1.json")
#: How the object schemas (first) and the definitions themselves (second) refer to a definition.
REF_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _refs(node: Any) -> set[str]:
    """Names of the definitions a schema node refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        for prefix in REF_PREFIXES:
            if isinstance(ref, str) and ref.startswith(prefix):
                found.add(ref[len(prefix) :])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def pruned_definitions(definitions: dict[str, Any], roots: list[dict[str, Any]]) -> dict[str, Any]:
    """``definitions`` with only the ``$defs`` reachable from ``roots`` (each kept unchanged)."""
    defs = definitions["$defs"]
    todo = set().union(*(_refs(r) for r in roots))
    kept: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept[name] = defs[name]
        todo |= _refs(defs[name]) - kept.keys()
    return {**definitions, "$defs": dict(sorted(kept.items()))}


def main(dask_wheel: Path, k8s_wheel: Path) -> None:
    crd_out = HERE / "crds"
    k8s_out = HERE / "kubernetes" / K8S_VERSION
    crd_out.mkdir(parents=True, exist_ok=True)
    k8s_out.mkdir(parents=True, exist_ok=True)
    for wheel in (dask_wheel, k8s_wheel):
        print(wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest())
    with zipfile.ZipFile(dask_wheel) as z:
        for name in CRDS:
            data = z.read(f"{CRD_DIR}/{name}")
            (crd_out / name).write_bytes(data)
            print(f"{CRD_DIR}/{name}", hashlib.sha256(data).hexdigest())
    with zipfile.ZipFile(k8s_wheel) as z:
        roots = []
        for name in K8S_OBJECTS:
            data = z.read(f"{K8S_DIR}/{name}")
            (k8s_out / name).write_bytes(data)
            roots.append(json.loads(data))
            print(f"{K8S_DIR}/{name}", hashlib.sha256(data).hexdigest())
        full = z.read(f"{K8S_DIR}/_definitions.json")
        print(f"{K8S_DIR}/_definitions.json", hashlib.sha256(full).hexdigest())
        kept = pruned_definitions(json.loads(full), roots)
        (k8s_out / "_definitions.json").write_text(json.dumps(kept, indent=1) + "\n")
        print(f"kept {len(kept['$defs'])} definitions")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vendor.py DASK_KUBERNETES_WHEEL KUBERNETES_VALIDATE_WHEEL")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
