"""Imports point down the data flow only (STYLE rule 2): a stage never imports a later one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"
PACKAGES = ("__init__", *(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()))

#: Lowest first; a module may import only modules of strictly lower layers.
LAYERS: list[set[str]] = [
    {"errors", "units", "fileio", "backoff"},
    {"model", "log", "metrics"},
    {"threads"},
    {"engine.names"},
    {"config"},
    {
        "lineprotocol.columns",
        "mqtt.payload",
        "query.formats",
        "query.sqlcheck",
        "sync.s3",
        "engine.api",
        "engine.triggers",
        "engine.loader",
        "engine.packages",
        "engine.pool",
    },
    {"lineprotocol.vector"},
    {"lineprotocol.parser"},
    {"storage.store"},
    {"storage.wal"},
    {"storage.catalog", "auth", "engine.store"},
    {"storage.manifest"},
    {"storage.dedupe"},
    {"storage.buffer", "write"},
    {"storage.persist", "query.system_tables", "sync.queue"},
    {"storage.budget", "sync.store"},
    {"query.service"},
    {"engine.dryrun", "engine.tables"},
    {"engine.runner"},
    {"mqtt.ingest", "sync.uploader"},
    {"app"},
    {"http.routes", "http.connections"},
    {"http.body"},
    {"http.handlers"},
    {"http.server"},
    {"lifecycle"},
    {"cli.main"},
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
        if module in PACKAGES:
            continue
        own = _layer(module)
        for target in _imports(path, module):
            if target in ("", *PACKAGES) or target == module:
                continue
            if _layer(target) >= own:
                wrong.append(f"appliance.{module} imports appliance.{target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)
