"""The layer rule (ARCHITECTURE.md): modules import downward only, and developer tools are
imported by nothing but the CLI, other developer tools and the tests.

Every ``import`` counts, also those inside functions (they run as soon as the function does).
Run alone with ``python -m pytest tests/unit/test_layers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "operators", "models", "dags")

CORE, LIBRARY, ENGINE, OPERATORS, TOP, DAGS = range(6)
LAYER_NAMES = ("core", "library", "engine", "operators", "CLI / developer tools", "dags")

#: Module prefixes and their layer; the longest matching prefix decides.
LAYERS: dict[str, int] = {
    "pipelines": CORE,  # the package itself: __version__
    "pipelines.errors": CORE,
    "pipelines.processes": CORE,  # processes by pid and start time
    "pipelines.faults": CORE,  # failpoints of the fault-injection tests
    "pipelines.grid": CORE,
    "pipelines.classes": CORE,
    "pipelines.storage": CORE,
    "pipelines.config": CORE,
    "pipelines.inputs": CORE,
    "pipelines.stages.registry": CORE,  # declarations only: functions are named, not imported
    "pipelines.agri.calendar": CORE,  # the crop calendar is part of a province config
    "pipelines.stages": LIBRARY,
    "pipelines.agri": LIBRARY,
    "pipelines.products": LIBRARY,
    "pipelines.load": LIBRARY,
    "pipelines.signed_reads": LIBRARY,  # the reader that signs links as a worker opens them
    "pipelines.geotiff": LIBRARY,
    "pipelines.catalog": LIBRARY,
    "models": LIBRARY,
    "pipelines.engine": ENGINE,
    "operators": OPERATORS,
    "pipelines.cli": TOP,
    "pipelines.production_cli": TOP,
    "pipelines.deploy": TOP,  # terrapipe deploy-render: renders and validates infra/k8s manifests
    "pipelines.web": TOP,  # terrapipe serve: the page over engine, products, agri and the config
    "dags": DAGS,
}
#: The package ``pipelines.stages`` itself only re-exports the registry.
EXACT: dict[str, int] = {"pipelines.stages": CORE}

#: Developer tools: beside the CLI, imported only by the CLI, each other and the tests.
DEV_TOOLS = (
    "pipelines.demo",
    "pipelines.evaluate",
    "pipelines.bench",
    "pipelines.bench_province",
    "pipelines.testing",
    "pipelines.agri.bench",
    "pipelines.agri.eval_crops",
    "pipelines.agri.eval_parcels",
    "pipelines.agri.eval_season",
    "pipelines.agri.eval_yields",
    "models.cli",
    "models.dehaze.train",
    "models.dehaze.evaluate",
    "models.dehaze.data",
    "models.super_resolution.train",
    "models.super_resolution.evaluate",
    "models.super_resolution.data",
)


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def is_cli(module: str) -> bool:
    return module in ("pipelines.cli", "pipelines.production_cli") or module.endswith(".cli")


def is_dev_tool(module: str) -> bool:
    return any(_matches(module, p) for p in DEV_TOOLS)


def layer_of(module: str) -> int:
    """The layer of a first-party module (CLI modules and developer tools sit at the top)."""
    if is_cli(module) or is_dev_tool(module):
        return TOP
    if module in EXACT:
        return EXACT[module]
    best = max((p for p in LAYERS if _matches(module, p)), key=len, default=None)
    if best is None:
        raise AssertionError(f"module {module} has no layer: add it to LAYERS")
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every first-party import in a file, relative imports resolved."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from pkg import mod` imports the submodule when there is one.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else target))
    return [(line, m) for line, m in found if m.split(".")[0] in PACKAGES]


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def violations() -> list[str]:
    out = []
    for path in source_files():
        source = module_name(path)
        for line, target in first_party_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}: {source} imports {target}"
            if is_dev_tool(target) and not (
                is_cli(source) or is_dev_tool(source) or _matches(target, source)
            ):
                out.append(f"{where} (a developer tool: only the CLI may import it)")
                continue
            src_layer, dst_layer = layer_of(source), layer_of(target)
            if dst_layer > src_layer:
                out.append(
                    f"{where} (upward: {LAYER_NAMES[src_layer]} -> {LAYER_NAMES[dst_layer]})"
                )
    return out


def test_every_module_has_a_layer() -> None:
    for path in source_files():
        layer_of(module_name(path))


def test_modules_import_downward_only() -> None:
    found = violations()
    assert not found, "imports against the layer rule:\n" + "\n".join(found)


def test_dags_import_only_operators() -> None:
    for path in (ROOT / "dags").glob("*.py"):
        for line, target in first_party_imports(path):
            assert _matches(target, "operators"), f"{path.name}:{line} imports {target}"


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("pipelines.engine.run", "pipelines.stages.registry", True),
        ("pipelines.stages.haze", "pipelines.engine.run", False),
        ("models.registry", "pipelines.demo.build", False),
        ("pipelines.cli", "pipelines.bench", True),
        ("operators.production", "pipelines.evaluate", False),
    ],
)
def test_the_rule_itself(source: str, target: str, allowed: bool) -> None:
    """The checker refuses what the rule forbids (guards the test against always passing)."""
    dev_ok = not is_dev_tool(target) or is_cli(source) or is_dev_tool(source)
    assert (dev_ok and layer_of(target) <= layer_of(source)) == allowed


def private_imports() -> list[str]:
    """``from module import _name`` across first-party modules (a private name is not a seam)."""
    out = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}")
    return out


def test_no_private_names_cross_modules() -> None:
    found = private_imports()
    assert not found, "private names imported from another module:\n" + "\n".join(found)
