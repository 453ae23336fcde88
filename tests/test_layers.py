"""Imports point down the data flow only (STYLE rule 2): a stage never imports a later one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"

#: Lowest first; a module may import only modules of strictly lower layers.
LAYERS: list[set[str]] = [
    {"errors", "units", "fileio", "backoff"},
    {"model", "log", "metrics", "notify"},
    {"engine.names"},
    {"config"},
    {
        "_lpfast",
        "mqtt.payload",
        "formats",
        "sqlcheck",
        "sync.s3",
        "engine.api",
        "engine.triggers",
        "engine.loader",
        "engine.packages",
        "engine.pool",
    },
    {"_lpvec"},
    {"lineprotocol"},
    {"wal"},
    {"catalog", "auth", "engine.store"},
    {"buffer", "write"},
    {"manifest"},
    {"overlap"},
    {"persist", "system_tables", "sync.queue"},
    {"sync.budget", "sync.store"},
    {"query"},
    {"engine.dryrun", "engine.tables"},
    {"engine.runner"},
    {"mqtt.ingest", "sync.uploader"},
    {"app"},
    {"http.routes", "http.connections"},
    {"http.body"},
    {"http.handlers"},
    {"http.server"},
    {"server"},
    {"cli"},
    {"__main__"},
]


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if module in names:
            return i
    raise AssertionError(f"module appliance.{module} is not placed in a layer in tests/test_layers.py")


def _imports(path: Path, module: str) -> set[str]:
    package = module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            prefix = ".".join([*base, node.module] if node.module else base)
            targets = [prefix] if node.module else [".".join([*base, a.name]) for a in node.names]
            for t in targets:
                found.add(t)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("appliance."):
            found.add(node.module.removeprefix("appliance."))
    return {t for t in found if t and not t.endswith("__version__")}  # package attribute, not a module


def test_imports_point_down_the_flow() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if module in ("__init__", "http", "engine", "mqtt", "sync"):
            continue
        own = _layer(module)
        for target in _imports(path, module):
            if target in ("", "http", "engine", "mqtt", "sync") or target == module:
                continue
            if _layer(target) >= own:
                wrong.append(f"appliance.{module} imports appliance.{target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)
