"""The plugin cache: per-trigger and global namespaces under one byte cap, values kept by reference.

The cache measures each value once when it is put (serialised size, or a guarded walk of the
object graph when it cannot be pickled); in-place changes to a stored object are seen at its
next `put`. A cap hit never raises: least-recently-used entries of any namespace go first, and
a single value larger than the whole cap is kept alone and counted in `over_cap`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import pickle
import sys
import threading
import time
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("appliance.engine")

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
