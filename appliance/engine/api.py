"""What a plugin sees: `LineBuilder`, the cache store, and the `influxdb3_local` API object.

This module is pure: the engine supplies logging, writing and querying through `EngineHooks`,
so the API can be tested (and used for dry runs) without a server.

Decisions where InfluxDB 3 Core leaves room (see DESIGN.md, "Where we are deliberately better"):

- `LineBuilder` refuses anything that would produce a line the server must reject, at the call
  that introduced it: newlines, tabs and NUL in names, names or tag values ending in a
  backslash (line protocol cannot express them), NaN and infinities, integers out of range.
  Wrong Python types raise `TypeError`; bad values raise `InvalidLineError`, which is also a
  `ValueError` so code written for the reference (`uint64_field` raised ValueError) still works.
  A tag set to the empty string is left out of the line, as InfluxDB's client libraries do,
  because `k=` is invalid line protocol. Schema rules (a field named `time`, a tag and a field
  sharing a name, type conflicts) stay with the write path, which knows the catalog.
- The cache measures each value once when it is put (serialised size, or a guarded walk of the
  object graph when it cannot be pickled); in-place changes to a stored object are seen at its
  next `put`. A cap hit never raises: least-recently-used entries of any namespace go first, and
  a single value larger than the whole cap is kept alone and counted in `over_cap`.
- `query()` turns every Arrow type into plain Python: timestamps and durations become int
  nanoseconds, dates and times ISO strings, decimals float, lists lists, structs and maps dicts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import operator
import pickle
import sys
import threading
import time
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from appliance.errors import ApplianceError

log = logging.getLogger("appliance.engine")

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


# -- LineBuilder ------------------------------------------------------------------------------


class InfluxDBError(Exception):
    """Base of the errors LineBuilder raises."""


class InvalidMeasurementError(InfluxDBError):
    """A measurement name that cannot be written as line protocol."""


class InvalidKeyError(InfluxDBError):
    """A tag or field key that cannot be written as line protocol."""


class InvalidLineError(InfluxDBError, ValueError):
    """A line or value that cannot be written as line protocol."""


# Characters line protocol has no escape for: a newline ends the line, and the server's parser
# ends a name at a tab (not a separator, yet never part of a name) or, in a measurement, a NUL.
_NEVER_IN_NAMES = ("\n", "\r", "\t")


def _escape_name(text: str) -> str:
    # Backslash first, or the escapes added for the other characters would be doubled.
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_measurement(text: str) -> str:
    # The server unescapes `\\`, `\,` and `\ ` in measurements; `=` needs no escape there.
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _as_int(kind: str, key: str, value: Any) -> int:
    # operator.index takes int and int-like numbers (numpy integers) but not floats or strings;
    # bool is an int to Python yet almost always a bug in a numeric field.
    if isinstance(value, bool):
        raise TypeError(f"{kind} field '{key}' needs an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{kind} field '{key}' needs an integer, got {type(value).__name__}") from None


class LineBuilder:
    """Builds one line of line protocol: `LineBuilder("m").tag(...).float64_field(...).build()`."""

    def __init__(self, measurement: str) -> None:
        if not isinstance(measurement, str):
            raise TypeError(f"measurement must be a str, got {type(measurement).__name__}")
        if measurement == "":
            raise InvalidMeasurementError("Measurement name cannot be empty")
        if " " in measurement:  # as the reference LineBuilder
            raise InvalidMeasurementError("Measurement name cannot contain spaces")
        if any(c in measurement for c in (*_NEVER_IN_NAMES, "\x00")):
            raise InvalidMeasurementError(
                f"Measurement name {measurement!r} cannot contain newlines, tabs or NUL"
            )
        if measurement.startswith("#"):  # the line would be read as a comment
            raise InvalidMeasurementError(f"Measurement name {measurement!r} cannot start with '#'")
        if measurement.endswith("\\"):
            raise InvalidMeasurementError(f"Measurement name {measurement!r} cannot end with a backslash")
        self.measurement = measurement
        # Public, as in the reference: tag values raw, field values already encoded.
        self.tags: dict[str, str] = {}
        self.fields: dict[str, str] = {}
        self._timestamp_ns: int | None = None

    @staticmethod
    def _validate_key(key: str, kind: str) -> None:
        if not isinstance(key, str):
            raise InvalidKeyError(f"{kind} key must be a str, got {type(key).__name__}")
        if not key:
            raise InvalidKeyError(f"{kind} key cannot be empty")
        for char, what in ((" ", "spaces"), (",", "commas"), ("=", "equals signs")):
            if char in key:
                raise InvalidKeyError(f"{kind} key '{key}' cannot contain {what}")
        if any(c in key for c in _NEVER_IN_NAMES):
            raise InvalidKeyError(f"{kind} key {key!r} cannot contain newlines or tabs")
        if key.endswith("\\"):
            raise InvalidKeyError(f"{kind} key {key!r} cannot end with a backslash")

    def tag(self, key: str, value: Any) -> LineBuilder:
        """Set tag `key` to `str(value)`; an empty value leaves the tag out."""
        self._validate_key(key, "tag")
        text = str(value)
        if any(c in text for c in _NEVER_IN_NAMES):
            raise InvalidLineError(f"tag '{key}' value {text!r} cannot contain newlines or tabs")
        if text.endswith("\\"):
            raise InvalidLineError(f"tag '{key}' value {text!r} cannot end with a backslash")
        if text == "":
            self.tags.pop(key, None)  # re-setting still overwrites an earlier value
        else:
            self.tags[key] = text
        return self

    def int64_field(self, key: str, value: int) -> LineBuilder:
        """Set a signed 64-bit integer field."""
        self._validate_key(key, "field")
        number = _as_int("int64", key, value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise InvalidLineError(f"int64 field '{key}' value {number} is out of range")
        self.fields[key] = f"{number}i"
        return self

    def uint64_field(self, key: str, value: int) -> LineBuilder:
        """Set an unsigned 64-bit integer field."""
        self._validate_key(key, "field")
        number = _as_int("uint64", key, value)
        if number < 0:
            raise InvalidLineError(f"uint64 field '{key}' cannot be negative")
        if number > _UINT64_MAX:
            raise InvalidLineError(f"uint64 field '{key}' value {number} is out of range")
        self.fields[key] = f"{number}u"
        return self

    def float64_field(self, key: str, value: float) -> LineBuilder:
        """Set a float field; NaN and infinities are refused."""
        self._validate_key(key, "field")
        if isinstance(value, str | bytes | bool):
            raise TypeError(f"float64 field '{key}' needs a number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:
            raise InvalidLineError(f"float64 field '{key}' value is out of range") from None
        except (TypeError, ValueError):
            raise TypeError(f"float64 field '{key}' needs a number, got {type(value).__name__}") from None
        if not math.isfinite(number):
            raise InvalidLineError(
                f"float64 field '{key}' cannot be {number} (line protocol has no NaN or inf)"
            )
        # repr() is the shortest text that reads back as the same double, and the server's
        # parser takes all of its forms (1.0, 1e+16, 5e-324, -0.0).
        self.fields[key] = repr(number)
        return self

    def string_field(self, key: str, value: str) -> LineBuilder:
        """Set a string field."""
        self._validate_key(key, "field")
        if not isinstance(value, str):
            raise TypeError(f"string field '{key}' needs a str, got {type(value).__name__}")
        if "\n" in value or "\r" in value:
            raise InvalidLineError(f"string field '{key}' cannot contain newlines")
        self.fields[key] = f'"{_escape_string(value)}"'
        return self

    def bool_field(self, key: str, value: bool) -> LineBuilder:
        """Set a boolean field from the truth of `value`."""
        self._validate_key(key, "field")
        if isinstance(value, str | bytes):  # "false" is truthy: refuse rather than guess
            raise TypeError(f"bool field '{key}' needs a bool, got {type(value).__name__}")
        self.fields[key] = "t" if value else "f"
        return self

    def time_ns(self, timestamp_ns: int | None) -> LineBuilder:
        """Set the timestamp in nanoseconds since the epoch (None: the server's time)."""
        if timestamp_ns is None:
            self._timestamp_ns = None
            return self
        if isinstance(timestamp_ns, bool):
            raise TypeError("timestamp needs an integer of nanoseconds, got bool")
        try:
            number = operator.index(timestamp_ns)
        except TypeError:
            raise TypeError(
                f"timestamp needs an integer of nanoseconds, got {type(timestamp_ns).__name__}"
            ) from None
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise InvalidLineError(f"timestamp {number} is out of range")
        self._timestamp_ns = number
        return self

    def build(self) -> str:
        """Return the line; raises InvalidLineError when no field was set."""
        line = _escape_measurement(self.measurement)
        if self.tags:
            line += "," + ",".join(f"{_escape_name(k)}={_escape_name(v)}" for k, v in self.tags.items())
        if not self.fields:
            raise InvalidLineError(f"At least one field is required: {line}")
        line += " " + ",".join(f"{_escape_name(k)}={v}" for k, v in self.fields.items())
        if self._timestamp_ns is not None:
            line += f" {self._timestamp_ns}"
        return line


# -- cache ------------------------------------------------------------------------------------

SWEEP_INTERVAL_S = 10.0
# Dict slot, key object and bookkeeping of one entry: many tiny values must still fill the cap.
_ENTRY_OVERHEAD = 100
_WALK_MAX_DEPTH = 32
_WALK_MAX_OBJECTS = 100_000
_UNKNOWN_SIZE = 64
# Shared, not owned by the value: walking into them would charge one entry for a whole module.
_NO_DESCENT = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
)


def estimate_size(value: Any) -> int:
    """Bytes `value` is charged in the cache: its pickled size, else a guarded object walk; never raises."""
    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # live objects (sockets, locks, clients) do not pickle; measure them instead
        pass
    try:
        return _walk_size(value)
    except Exception:  # a hostile __sizeof__ or attribute must not fail the plugin's put
        return _UNKNOWN_SIZE


def _own_size(obj: Any) -> int:
    try:
        return sys.getsizeof(obj)
    except Exception:
        return _UNKNOWN_SIZE


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, str | bytes | bytearray | int | float | complex | bool | type(None)):
        return []
    if isinstance(obj, _NO_DESCENT):
        return []
    try:
        if isinstance(obj, dict):
            return [x for item in list(obj.items()) for x in item]
        if isinstance(obj, list | tuple | set | frozenset | deque):
            return list(obj)
    except RuntimeError:  # another thread resized it while we copied: count what we have
        return []
    found: list[Any] = []
    # object.__getattribute__ skips custom __getattr__/__getattribute__ hooks, so measuring a
    # proxy or client object never runs its code.
    try:
        found.append(object.__getattribute__(obj, "__dict__"))
    except Exception:
        pass
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                found.append(object.__getattribute__(obj, name))
            except Exception:
                pass
    return found


def _walk_size(value: Any) -> int:
    total = 0
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and len(seen) < _WALK_MAX_OBJECTS:
        obj, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += _own_size(obj)
        if depth < _WALK_MAX_DEPTH:
            stack.extend((child, depth + 1) for child in _children(obj))
    return total


class _Entry:
    __slots__ = ("value", "size", "expires")

    def __init__(self, value: Any, size: int, expires: float | None) -> None:
        self.value = value
        self.size = size
        self.expires = expires


class _Global:
    """Namespace marker of the global cache, distinct from every trigger's name."""

    def __repr__(self) -> str:
        return "<global>"


_GLOBAL = _Global()
_Namespace = str | _Global


class PluginCache:
    """The engine's one cache store: per-trigger and global namespaces under one byte cap with LRU eviction."""

    def __init__(
        self, max_bytes: int = 32 * 1024 * 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be positive, got {max_bytes}")
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.RLock()
        # Oldest use first: get and put move an entry to the end, eviction pops the front.
        self._entries: OrderedDict[tuple[_Namespace, Hashable], _Entry] = OrderedDict()
        self._bytes = 0
        self._evictions = 0
        self._expired = 0
        self._over_cap = 0
        self._last_sweep = clock()
        # (expires, tie-breaker, slot, entry): marks of replaced or deleted entries stay until
        # popped or until the heap is rebuilt, hence the identity check against the entry.
        self._expiry: list[tuple[float, int, tuple[_Namespace, Hashable], _Entry]] = []
        self._expiry_seq = itertools.count()

    @property
    def max_bytes(self) -> int:
        """The byte cap of the whole store."""
        return self._max_bytes

    @property
    def evictions(self) -> int:
        """Entries removed to stay under the cap (expiry not included)."""
        return self._evictions

    @property
    def expired(self) -> int:
        """Entries removed because their ttl ran out."""
        return self._expired

    @property
    def over_cap(self) -> int:
        """Values stored although larger than the whole cap (kept alone)."""
        return self._over_cap

    @property
    def entries(self) -> int:
        """Entries held now, expired ones not yet swept included."""
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Estimated bytes held now."""
        return self._bytes

    def stats(self) -> dict[str, int]:
        """All counters at once, for metrics and system tables."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self._max_bytes,
                "evictions": self._evictions,
                "expired": self._expired,
                "over_cap": self._over_cap,
            }

    def namespace(self, name: str) -> CacheView:
        """The cache a trigger's plugin sees, with `name` as its own namespace."""
        self.maybe_sweep()
        return CacheView(self, name)

    def drop_namespace(self, name: str) -> int:
        """Remove every entry of a trigger's namespace (trigger disabled or deleted); returns how many."""
        with self._lock:
            doomed = [k for k in self._entries if k[0] == name]
            for k in doomed:
                self._bytes -= self._entries.pop(k).size
            return len(doomed)

    def sweep(self) -> int:
        """Remove every expired entry now; returns how many."""
        with self._lock:
            now = self._clock()
            self._last_sweep = now
            return self._drop_expired(now)

    def _drop_expired(self, now: float) -> int:
        # A heap of expiry times keeps this proportional to what expired, not to the store's
        # size: it runs before every eviction, and a full cache evicts on every put.
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, _, slot, entry = heapq.heappop(self._expiry)
            if self._entries.get(slot) is entry:  # else replaced or deleted since: a stale mark
                del self._entries[slot]
                self._bytes -= entry.size
                dropped += 1
        self._expired += dropped
        return dropped

    def maybe_sweep(self) -> None:
        """Sweep when the last sweep is at least SWEEP_INTERVAL_S old."""
        if self._clock() - self._last_sweep >= SWEEP_INTERVAL_S:
            self.sweep()

    def put(self, namespace: _Namespace, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Store `value` by reference under (namespace, key); never raises for size."""
        expires_in = _check_ttl(ttl)
        hash(key)  # an unhashable key fails here, before the value is measured
        # Measure outside the lock: pickling a large value must not stall other triggers.
        size = estimate_size(value) + _own_size(key) + _ENTRY_OVERHEAD
        with self._lock:
            now = self._clock()
            slot = (namespace, key)
            old = self._entries.pop(slot, None)
            if old is not None:
                self._bytes -= old.size
            expires = None if expires_in is None else now + expires_in
            entry = self._entries[slot] = _Entry(value, size, expires)
            self._bytes += size
            if expires is not None:
                heapq.heappush(self._expiry, (expires, next(self._expiry_seq), slot, entry))
            if len(self._expiry) > 2 * len(self._entries) + 1024:
                self._rebuild_expiry()
            if self._bytes > self._max_bytes:
                self._make_room(slot, now)

    def get(self, namespace: _Namespace, key: Hashable, default: Any = None) -> Any:
        """The value under (namespace, key), or `default` when absent or expired."""
        with self._lock:
            slot = (namespace, key)
            entry = self._entries.get(slot)
            if entry is None:
                return default
            if entry.expires is not None and self._clock() >= entry.expires:
                del self._entries[slot]
                self._bytes -= entry.size
                self._expired += 1
                return default
            self._entries.move_to_end(slot)
            return entry.value

    def delete(self, namespace: _Namespace, key: Hashable) -> bool:
        """Remove (namespace, key); True when a live entry was there."""
        with self._lock:
            entry = self._entries.pop((namespace, key), None)
            if entry is None:
                return False
            self._bytes -= entry.size
            if entry.expires is not None and self._clock() >= entry.expires:
                self._expired += 1
                return False  # it had already expired: to the plugin it was not there
            return True

    def _rebuild_expiry(self) -> None:
        # Overwritten and deleted entries leave marks behind; drop them so the heap stays small.
        self._expiry = [
            (e.expires, next(self._expiry_seq), slot, e)
            for slot, e in self._entries.items()
            if e.expires is not None
        ]
        heapq.heapify(self._expiry)

    def _make_room(self, keep: tuple[_Namespace, Hashable], now: float) -> None:
        self._drop_expired(now)  # expired entries go before any live one is evicted
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            slot, entry = self._entries.popitem(last=False)  # `keep` is newest, never first here
            self._bytes -= entry.size
            self._evictions += 1
            log.debug("plugin cache evicted %r from %r (%d bytes)", slot[1], slot[0], entry.size)
        if self._bytes > self._max_bytes:
            self._over_cap += 1
            log.warning(
                "plugin cache: value %r in %r is %d bytes, more than the whole cap of %d; kept alone",
                keep[1],
                keep[0],
                self._bytes,
                self._max_bytes,
            )


def _check_ttl(ttl: float | None) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    seconds = float(ttl)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"ttl must be a finite, non-negative number of seconds, got {ttl}")
    return seconds


class CacheView:
    """`influxdb3_local.cache`: one trigger's namespace plus the global one, in a shared PluginCache."""

    def __init__(self, store: PluginCache, namespace: str) -> None:
        self._store = store
        self._namespace = namespace

    @property
    def namespace(self) -> str:
        """The trigger namespace this view reads and writes by default."""
        return self._namespace

    def _ns(self, use_global: bool | None) -> _Namespace:
        return _GLOBAL if use_global else self._namespace

    def put(self, key: str, value: Any, ttl: float | None = None, use_global: bool | None = False) -> None:
        """Store `value` (by reference) under `key`, expiring after `ttl` seconds when given."""
        self._store.maybe_sweep()
        self._store.put(self._ns(use_global), key, value, ttl)

    def get(self, key: str, default: Any = None, use_global: bool | None = False) -> Any:
        """The value under `key`, or `default` when absent or expired."""
        self._store.maybe_sweep()
        return self._store.get(self._ns(use_global), key, default)

    def delete(self, key: str, use_global: bool | None = False) -> bool:
        """Remove `key`; True when it was there."""
        self._store.maybe_sweep()
        return self._store.delete(self._ns(use_global), key)


# -- influxdb3_local --------------------------------------------------------------------------


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
        return table_to_rows(table)


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


# -- Arrow to plain Python --------------------------------------------------------------------

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def table_to_rows(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows of `table` as dicts: timestamps int ns, tags str, NULL None (see module docstring)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    names = table.column_names
    if not names:
        return [{} for _ in range(table.num_rows)]
    columns = [_chunked_to_list(col) for col in table.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _chunked_to_list(column: pa.ChunkedArray) -> list[Any]:
    values: list[Any] = []
    for chunk in column.chunks:
        values.extend(array_to_list(chunk))
    return values


def array_to_list(arr: pa.Array) -> list[Any]:
    """One Arrow array as plain Python values; never needs pandas."""
    try:
        return _convert(arr)
    except Exception:  # a type we did not foresee: text beats failing the plugin's query
        try:
            return arr.cast(pa.string()).to_pylist()
        except Exception:
            return [None if not s.is_valid else repr(s) for s in arr]


def _scaled(arr: pa.Array, unit: str) -> list[Any]:
    factor = _NS_PER_UNIT[unit]
    ints = arr.cast(pa.int64()).to_pylist()
    # Python ints: seconds far from 1970 still scale exactly instead of overflowing int64.
    return ints if factor == 1 else [None if v is None else v * factor for v in ints]


def _time_of_day(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, frac = divmod(ns, 1_000_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:09d}".rstrip("0") if frac else text


def _regroup(arr: pa.Array, flat: list[Any]) -> list[Any]:
    lengths = pc.list_value_length(arr).to_pylist()
    out: list[Any] = []
    pos = 0
    for n in lengths:
        if n is None:
            out.append(None)
        else:
            out.append(flat[pos : pos + n])
            pos += n
    return out


def _convert(arr: pa.Array) -> list[Any]:
    t = arr.type
    if isinstance(t, pa.ExtensionType):
        return _convert(arr.storage)
    if pa.types.is_dictionary(t):
        return _convert(arr.dictionary_decode())
    if pa.types.is_run_end_encoded(t):
        return _convert(pc.run_end_decode(arr))
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return _scaled(arr, t.unit)
    if pa.types.is_time(t):
        return [_time_of_day(v) for v in _scaled(arr, t.unit)]
    if pa.types.is_date(t):
        return [None if d is None else d.isoformat() for d in arr.to_pylist()]
    if pa.types.is_decimal(t):
        return [None if d is None else float(d) for d in arr.to_pylist()]
    if pa.types.is_float16(t):
        return arr.cast(pa.float64()).to_pylist()
    if pa.types.is_null(t):
        return [None] * len(arr)
    if pa.types.is_map(t):
        entries_type = pa.list_(pa.struct([("key", t.key_type), ("value", t.item_type)]))
        pairs = _convert(arr.cast(entries_type))
        return [None if p is None else _map_dict(p) for p in pairs]
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        return _regroup(arr, _convert(arr.flatten()))
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        children = [_convert(child) for child in arr.flatten()]
        valid = arr.is_valid().to_pylist()
        rows = list(zip(*children, strict=True)) if children else [()] * len(arr)
        return [
            dict(zip(names, row, strict=True)) if ok else None for ok, row in zip(valid, rows, strict=True)
        ]
    if t == pa.month_day_nano_interval():
        return [
            None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
            for v in arr.to_pylist()
        ]
    return arr.to_pylist()


def _map_dict(pairs: list[dict[str, Any]]) -> dict[Any, Any] | list[Any]:
    try:
        return {p["key"]: p["value"] for p in pairs}
    except TypeError:  # an unhashable key (a list): keep the pairs
        return [(p["key"], p["value"]) for p in pairs]


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
