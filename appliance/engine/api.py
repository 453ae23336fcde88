"""The plugin contract: the `influxdb3_local` object a plugin's entry point receives, and its globals.

This module is pure: the engine supplies logging, writing and querying through `EngineHooks`,
so the API can be tested (and used for dry runs) without a server. `LineBuilder` lives in
`linebuilder`, the cache behind `influxdb3_local.cache` in `cache`, and the conversion of query
results to plain Python in `query.rows`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

import pyarrow as pa

from ..errors import ApplianceError
from ..query.rows import table_rows
from .cache import CacheView
from .linebuilder import (
    InfluxDBError,
    InvalidKeyError,
    InvalidLineError,
    InvalidMeasurementError,
    LineBuilder,
)


class EngineHooks(Protocol):
    """What the engine provides to a PluginApi: logging, synchronous writes and SQL."""

    def log(self, level: str, text: str) -> None:
        """Record a plugin log line; level is INFO, WARN or ERROR."""

    def write_lines(self, db: str, lines: str, no_sync: bool) -> None:
        """Write line protocol now; raise with a message on failure."""

    def query(self, db: str, sql: str, params: dict[str, Any] | None) -> pa.Table:
        """Run SQL with `$name` parameters bound."""


class QueryError(Exception):
    """A plugin's query failed."""


_PARAM_TYPES = (str, int, float, bool)


def _built_lines(line_builder: Any) -> str:
    build = getattr(line_builder, "build", None)
    if not callable(build):
        raise TypeError(
            f"expected a LineBuilder or an object with build(), got {type(line_builder).__name__}"
        )
    text = build()
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(f"build() must return str, got {type(text).__name__}")
    # Only blank lines at the ends go: a newline inside must stay (it may sit in a quoted string).
    return text.strip("\r\n")


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    # A rejected write carries the per-line reasons in `data`; the plugin needs them to debug.
    if isinstance(err, ApplianceError) and isinstance(err.data, list):
        reasons = [
            f"line {d.get('line_number')}: {d.get('error_message')}"
            for d in err.data
            if isinstance(d, dict) and "error_message" in d
        ]
        if reasons:
            text += " (" + "; ".join(reasons) + ")"
    return text


class PluginApi:
    """The `influxdb3_local` object passed to a plugin's entry point for one call."""

    def __init__(self, database: str, hooks: EngineHooks, cache: CacheView) -> None:
        self._database = database
        self._hooks = hooks
        self._cache = cache
        # Plugins may write from their own threads; the buffer is shared with them.
        self._lock = threading.Lock()
        self._writes: dict[str, list[str]] = {}

    @property
    def database(self) -> str:
        """The trigger's database."""
        return self._database

    @property
    def cache(self) -> CacheView:
        """The plugin's cache (its trigger namespace, and the global one with use_global=True)."""
        return self._cache

    def info(self, *args: Any) -> None:
        """Log the arguments, space-joined, at INFO."""
        self._hooks.log("INFO", " ".join(str(a) for a in args))

    def warn(self, *args: Any) -> None:
        """Log the arguments, space-joined, at WARN."""
        self._hooks.log("WARN", " ".join(str(a) for a in args))

    def error(self, *args: Any) -> None:
        """Log the arguments, space-joined, at ERROR."""
        self._hooks.log("ERROR", " ".join(str(a) for a in args))

    def write(self, line_builder: Any) -> None:
        """Buffer the line(s) for the trigger's database, written after the plugin returns."""
        self._buffer(self._database, line_builder)

    def write_to_db(self, db_name: str, line_builder: Any) -> None:
        """Buffer the line(s) for `db_name`, written after the plugin returns."""
        self._buffer(_check_db(db_name), line_builder)

    def _buffer(self, db: str, line_builder: Any) -> None:
        text = _built_lines(line_builder)
        if text:
            with self._lock:
                self._writes.setdefault(db, []).append(text)

    def take_writes(self) -> dict[str, list[str]]:
        """Return the buffered writes per database (each item one or more lines) and clear them."""
        with self._lock:
            writes, self._writes = self._writes, {}
        return writes

    def discard_writes(self) -> None:
        """Drop the buffered writes (the plugin raised)."""
        with self._lock:
            self._writes = {}

    def write_sync(self, line_builder: Any, no_sync: bool = False) -> None:
        """Write the line(s) to the trigger's database now, waiting until accepted."""
        self._write_now(self._database, line_builder, no_sync)

    def write_sync_to_db(self, db_name: str, line_builder: Any, no_sync: bool = False) -> None:
        """Write the line(s) to `db_name` now, waiting until accepted."""
        self._write_now(_check_db(db_name), line_builder, no_sync)

    def _write_now(self, db: str, line_builder: Any, no_sync: bool) -> None:
        text = _built_lines(line_builder)
        if not text:
            return
        try:
            self._hooks.write_lines(db, text, bool(no_sync))
        except Exception as err:
            raise Exception(f"error writing line protocol to {db}: {_describe(err)}") from err

    def query(
        self,
        query: str,
        args: Mapping[str, Any] | None = None,
        database: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Run SQL (`$name` parameters from `args`) and return the rows as dicts of plain Python values."""
        if params is not None:  # the issue and some docs call it params; the reference, args
            if args is not None:
                raise TypeError("query() got both args and params")
            args = params
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        db = self._database if database is None else _check_db(database)
        bound = _check_params(args)
        try:
            table = self._hooks.query(db, query, bound)
        except Exception as e:
            raise QueryError(f"error: {_describe(e)} executing query on {db}: {query}") from e
        return table_rows(table)


def own_copy(arguments: Mapping[str, str] | None) -> dict[str, str] | None:
    """The args one plugin call gets: its own dict, as InfluxDB 3 passes it (None stays None).

    Plugins change their args (the public downsampler sets args["use_config_file"] = True);
    that must not reach the stored definition or the next call.
    """
    return None if arguments is None else dict(arguments)


def _check_db(db: Any) -> str:
    if not isinstance(db, str):
        raise TypeError(f"database name must be a str, got {type(db).__name__}")
    return db


def _check_params(args: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if args is None:
        return None
    if not isinstance(args, Mapping):
        raise TypeError(f"query parameters must be a dict, got {type(args).__name__}")
    bound: dict[str, Any] = {}
    for name, value in args.items():
        if not isinstance(name, str):
            raise TypeError(f"query parameter names must be str, got {type(name).__name__}")
        if not isinstance(value, _PARAM_TYPES):
            raise TypeError(
                f"query parameter '{name}' must be str, int, float or bool, got {type(value).__name__}"
            )
        bound[name] = value
    return bound


def api_globals() -> dict[str, Any]:
    """Names the engine makes available to plugins without an import."""
    return {
        "LineBuilder": LineBuilder,
        "InfluxDBError": InfluxDBError,
        "InvalidMeasurementError": InvalidMeasurementError,
        "InvalidKeyError": InvalidKeyError,
        "InvalidLineError": InvalidLineError,
        "QueryError": QueryError,
    }
