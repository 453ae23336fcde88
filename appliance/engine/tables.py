"""The engine's system tables: plugin files, trigger definitions, their arguments and the log ring.

Every query of a database builds these, so they never raise: whatever a stored trigger holds is
rendered as text of its column's type, and a table that still cannot be built is logged and shown
empty. (A plugin that changed its args dict once made every query of its database fail.)
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..lineprotocol.syntax import NS_PER_UNIT
from .loader import GH_CACHE
from .packages import PACKAGES_DIR
from .store import LOG_SCHEMA, TriggerDef
from .triggers import parse_spec

log = logging.getLogger("appliance.engine")


def build(
    plugin_dir: Path,
    triggers: list[TriggerDef],
    logs: Callable[[], pa.Table],
    used: set[str] | None = None,
) -> dict[str, pa.Table]:
    """The engine's system tables for one database's triggers (plugin files: all, or only those of the
    `used` trigger plugin file names); never raises."""
    builders: dict[str, Callable[[], pa.Table]] = {
        "plugin_files": lambda: plugin_files(plugin_dir, used),
        "processing_engine_logs": logs,
        "processing_engine_triggers": lambda: _triggers_table(triggers),
        "processing_engine_trigger_arguments": lambda: _arguments_table(triggers),
    }
    out: dict[str, pa.Table] = {}
    for name, make in builders.items():
        try:
            out[name] = make()
        except Exception:
            log.exception("could not build system.%s; it is shown empty", name)
            out[name] = _EMPTY[name]
    return out


#: Folders of the plugin directory that hold no plugin files: installed packages, the gh: cache
#: (its files are listed by trigger, not here) and bytecode. Not even walked: .packages can be large.
_NOT_PLUGINS = frozenset({PACKAGES_DIR, GH_CACHE, "__pycache__"})


def plugin_files(root: Path, used: set[str] | None = None) -> pa.Table:
    """`system.plugin_files`: every plugin file in the plugin directory (installed packages excluded),
    or only the plugins named by `used` (trigger plugin file names: a file or a folder)."""
    tops = None if used is None else {Path(u).parts[0] for u in used if u and not u.startswith("gh:")}
    rows: list[tuple[str, str, str, int, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_PLUGINS)
        for name in sorted(f for f in files if f.endswith(".py")):
            p = Path(folder) / name
            try:
                st = p.stat()
            except OSError:  # removed meanwhile, or a dangling link
                continue
            rel = p.relative_to(root)
            if stat.S_ISREG(st.st_mode) and (tops is None or rel.parts[0] in tops):
                rows.append((rel.parts[0], name, str(rel), st.st_size, st.st_mtime_ns // NS_PER_UNIT["ms"]))
    rows.sort(key=lambda r: r[2])
    return _table(rows, _PLUGIN_FILES_SCHEMA)


def _table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    cols: list[Any] = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.table([pa.array(c, t) for c, t in zip(cols, schema.types, strict=True)], schema=schema)


_PLUGIN_FILES_SCHEMA = pa.schema(
    [
        ("plugin_name", pa.string()),
        ("file_name", pa.string()),
        ("file_path", pa.string()),
        ("size_bytes", pa.int64()),
        ("last_modified", pa.int64()),
    ]
)
_TRIGGERS_SCHEMA = pa.schema(
    [
        ("trigger_name", pa.string()),
        ("plugin_filename", pa.string()),
        ("trigger_specification", pa.string()),
        ("disabled", pa.bool_()),
        ("error_behavior", pa.string()),
        ("run_async", pa.bool_()),
    ]
)
_ARGUMENTS_SCHEMA = pa.schema(
    [("trigger_name", pa.string()), ("argument_key", pa.string()), ("argument_value", pa.string())]
)
_EMPTY = {
    "plugin_files": _PLUGIN_FILES_SCHEMA.empty_table(),
    "processing_engine_logs": LOG_SCHEMA.empty_table(),
    "processing_engine_triggers": _TRIGGERS_SCHEMA.empty_table(),
    "processing_engine_trigger_arguments": _ARGUMENTS_SCHEMA.empty_table(),
}


def _spec_json(spec: str) -> str:
    try:
        return parse_spec(spec).to_json()
    except Exception:  # a spec stored by a version that parsed it differently
        return str(spec)


def _triggers_table(triggers: list[TriggerDef]) -> pa.Table:
    """`system.processing_engine_triggers`, every value rendered as its column's type."""
    rows = [
        (
            str(t.name),
            str(t.plugin_filename),
            _spec_json(t.spec),
            bool(t.disabled),
            str(t.error_behavior),
            bool(t.run_async),
        )
        for t in triggers
    ]
    return _table(rows, _TRIGGERS_SCHEMA)


def _arguments_table(triggers: list[TriggerDef]) -> pa.Table:
    """`system.processing_engine_trigger_arguments`: one row per argument, keys and values as text."""
    rows = [(str(t.name), str(k), str(v)) for t in triggers for k, v in dict(t.arguments or {}).items()]
    return _table(rows, _ARGUMENTS_SCHEMA)
