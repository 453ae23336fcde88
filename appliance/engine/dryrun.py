"""Testing a plugin without side effects: real queries, writes collected instead of committed."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ..lineprotocol import parser
from ..lineprotocol.syntax import NS_PER_SECOND
from ..model import TIME_COLUMN, ParsedTable, Precision
from ..query.rows import column_rows
from ..query.service import QueryService
from ..storage.catalog import Catalog
from .api import PluginApi, own_copy
from .cache import PluginCache
from .loader import PluginLoader
from .schedule import Schedule
from .triggers import parse_spec

DEFAULT_TEST_SCHEDULE = "* * * * * *"
_keys = itertools.count()


@dataclass
class _Collector:
    """Hooks for a dry run: logs and writes are kept for the response, queries are real."""

    queries: QueryService
    log_lines: list[str] = field(default_factory=list)
    writes: dict[str, list[str]] = field(default_factory=dict)

    def log(self, level: str, text: str) -> None:
        self.log_lines.append(f"{level}: {text}")

    def write_lines(self, db: str, lines: str, no_sync: bool) -> None:
        self.writes.setdefault(db, []).extend(lines.splitlines())

    def query(self, db: str, sql: str, params: dict[str, Any] | None) -> pa.Table:
        return self.queries.execute(db, sql, params, every_database=True)  # plugins are trusted code


class DryRun:
    """Runs `process_writes` or `process_scheduled_call` once, the way `appliance test` does."""

    def __init__(
        self, loader: PluginLoader, cache: PluginCache, catalog: Catalog, queries: QueryService
    ) -> None:
        self.loader, self.cache, self.catalog, self.queries = loader, cache, catalog, queries

    def wal(
        self,
        filename: str,
        database: str,
        input_lp: str,
        arguments: dict[str, str] | None,
        cache_name: str | None,
    ) -> dict[str, Any]:
        parsed = parser.parse(input_lp.encode(), Precision.NS, time.time_ns())
        if parsed.errors:
            e = parsed.errors[0]
            return _result([], {}, [f"line {e.line_number}: {e.error_message} ({e.original_line!r})"])
        batches = [{"table_name": t.name, "rows": _rows(t)} for t in parsed.tables]
        return self._run(filename, database, "process_writes", (batches,), arguments, cache_name)

    def schedule(
        self,
        filename: str,
        database: str,
        schedule: str | None,
        arguments: dict[str, str] | None,
        cache_name: str | None,
    ) -> dict[str, Any]:
        if self.catalog.get(database) is None:
            return {**_result([], {}, ["couldn't find db"]), "trigger_time": None}
        spec = parse_spec(f"cron:{schedule or DEFAULT_TEST_SCHEDULE}")
        fire = Schedule(spec).next_after(time.time_ns())
        out = self._run(
            filename, database, "process_scheduled_call", (Schedule.call_time(fire),), arguments, cache_name
        )
        out["trigger_time"] = datetime.fromtimestamp(fire // NS_PER_SECOND, tz=UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        return out

    def _run(
        self,
        filename: str,
        database: str,
        entry: str,
        inputs: tuple[Any, ...],
        arguments: dict[str, str] | None,
        cache_name: str | None,
    ) -> dict[str, Any]:
        hooks = _Collector(self.queries)
        api = PluginApi(database, hooks, self.cache.namespace(f"test:{cache_name or '_shared_test'}"))
        key = f"dry-run-{next(_keys)}"
        errors: list[str] = []
        hooks.log("INFO", "starting execution of test plugin.")
        started = time.monotonic()
        try:
            module = self.loader.module(key, filename)
            fn = getattr(module, entry, None)
            if not callable(fn):
                raise AttributeError(f"the {entry} function is not present in the plugin")
            fn(api, *inputs, own_copy(arguments))
        except BaseException as e:  # a test run reports what a real run would log
            api.discard_writes()
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.loader.forget(key)
        for db, lines in api.take_writes().items():
            hooks.writes.setdefault(db, []).extend(lines)
        hooks.log("INFO", f"finished execution in {time.monotonic() - started:.3f}s")
        errors.extend(self._validate(hooks.writes))
        return _result(hooks.log_lines, hooks.writes, errors)

    def _validate(self, writes: dict[str, list[str]]) -> list[str]:
        """What the collected writes would meet: the parser's and the catalog's complaints."""
        problems: list[str] = []
        for db, lines in writes.items():
            current = self.catalog.get(db)
            known = {n: t.columns for n, t in current.tables.items()} if current is not None else None
            result = parser.parse("\n".join(lines).encode(), Precision.NS, time.time_ns(), known=known)
            problems.extend(f"{db}: line {e.line_number}: {e.error_message}" for e in result.errors)
        return problems


def _result(log_lines: list[str], writes: dict[str, list[str]], errors: list[str]) -> dict[str, Any]:
    return {"log_lines": log_lines, "database_writes": writes, "errors": errors}


def _rows(table: ParsedTable) -> list[dict[str, Any]]:
    """A parsed table's rows as `process_writes` receives them: tags, fields, time; NULLs left out."""
    columns = {
        **table.tags,
        **{name: arr for name, (_, arr) in table.fields.items()},
        TIME_COLUMN: table.time,
    }
    return column_rows(columns, table.num_rows, omit_nulls=True)
