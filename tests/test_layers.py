"""Imports point down the data flow only (STYLE rule 2): a stage never imports a later one.

The unit of layering is a package (`storage`, `engine`, ...) or a top-level module; modules of
one package import each other freely. `lineprotocol.syntax` is its own unit: the rules of the
format, below everything, so that `model` and `units` can use them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"

#: Lowest first; a unit may import only units of strictly lower layers (and itself).
LAYERS: list[set[str]] = [
    {"lineprotocol.syntax"},
    {"errors", "units", "fileio", "backoff"},
    {"model", "log", "metrics"},
    {"threads", "config", "component"},
    {"http.tls"},  # the HTTPS context: for the HTTP server, a gRPC endpoint on its port and the CLI
    {"lineprotocol"},
    {"storage"},
    {"auth", "write"},
    {"query"},
    {"engine"},
    {"sync", "mqtt"},
    {"app"},
    {"http"},
    {"lifecycle"},
    {"cli"},
    {"__main__"},
]
UNITS = {u for layer in LAYERS for u in layer}


def _unit(module: str) -> str:
    """The layering unit a dotted module name belongs to: the longest unit it starts with."""
    found = [u for u in UNITS if module == u or module.startswith(u + ".")]
    assert found, f"module appliance.{module} belongs to no unit in tests/test_layers.py"
    return max(found, key=len)


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _module_name(path: Path) -> tuple[str, str]:
    """(module, the package its relative imports start from)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), ".".join(parts[:-1])
    return ".".join(parts), ".".join(parts[:-1])


def _imports(path: Path) -> set[str]:
    """Every appliance module or package the file imports from, as a dotted name."""
    _, package = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join([*base, node.module] if node.module else base)
            found |= {prefix} if node.module else {".".join([*base, a.name]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("appliance."):
            found.add(node.module.removeprefix("appliance."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("appliance.") for a in node.names if a.name.startswith("appliance.")
            }
    return {t.strip(".") for t in found if t.strip(".") and not t.endswith("__version__")}


def test_imports_point_down_the_flow() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, _ = _module_name(path)
        if not module:
            continue  # appliance/__init__.py
        own = _unit(module)
        for target in _imports(path):
            unit = _unit(target)
            if unit != own and _layer(unit) >= _layer(own):
                wrong.append(f"appliance.{module} imports appliance.{target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_every_package_is_a_unit() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= UNITS, f"packages missing from LAYERS: {sorted(packages - UNITS)}"
