"""The plugin cache store: namespaces, ttl, LRU eviction under the byte cap, size estimates."""

from __future__ import annotations

import math
import socket
import threading
from collections import deque
from typing import Any

import pytest

from appliance.engine.cache import PluginCache, estimate_size

# -- cache --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_put_get_delete() -> None:
    cache = PluginCache()
    view = cache.namespace("db/t1")
    assert view.get("k") is None
    assert view.get("k", 5) == 5
    view.put("k", {"a": 1})
    assert view.get("k") == {"a": 1}
    assert cache.entries == 1 and cache.bytes > 0
    assert view.delete("k") is True
    assert view.delete("k") is False
    assert view.get("k", "gone") == "gone"
    assert cache.entries == 0 and cache.bytes == 0


def test_cache_by_reference() -> None:
    view = PluginCache().namespace("t")
    window: deque[int] = deque(maxlen=3)
    view.put("w", window)
    view.get("w").append(1)
    assert view.get("w") is window and list(window) == [1]
    conn = socket.socket()  # a live object: not picklable, still stored
    try:
        view.put("conn", conn)
        assert view.get("conn") is conn
    finally:
        conn.close()


def test_cache_namespaces() -> None:
    cache = PluginCache()
    a, b = cache.namespace("a"), cache.namespace("b")
    a.put("k", 1)
    b.put("k", 2)
    a.put("k", "g", use_global=True)
    assert (a.get("k"), b.get("k")) == (1, 2)
    assert b.get("k", use_global=True) == "g"
    assert a.get("k", use_global=None) == 1
    assert b.delete("k", use_global=True) is True
    assert a.get("k", use_global=True) is None
    # a trigger literally named like the global marker is still its own namespace
    assert cache.namespace("<global>").get("k") is None


def test_cache_ttl() -> None:
    clock = FakeClock()
    cache = PluginCache(clock=clock)
    view = cache.namespace("t")
    view.put("short", 1, ttl=5)
    view.put("forever", 2)
    view.put("zero", 3, ttl=0)
    assert view.get("zero") is None
    clock.now += 4.9
    assert view.get("short") == 1
    clock.now += 0.2
    assert view.get("short", "expired") == "expired"
    assert view.get("forever") == 2
    assert cache.entries == 1
    assert cache.expired == 2
    view.put("x", 1, ttl=1)
    clock.now += 2
    assert view.delete("x") is False  # expired counts as absent


def test_cache_ttl_replaced_by_put_without_ttl() -> None:
    clock = FakeClock()
    cache = PluginCache(clock=clock)
    view = cache.namespace("t")
    view.put("k", "old", ttl=1)
    view.put("k", "new")  # the old expiry must not remove the new value
    view.put("j", "a", ttl=1)
    view.delete("j")
    view.put("j", "b", ttl=100)
    clock.now += 5
    assert cache.sweep() == 0
    assert view.get("k") == "new" and view.get("j") == "b"
    for i in range(5000):  # overwritten expiry marks do not pile up
        view.put("k", i, ttl=50)
    assert len(cache._expiry) <= 2 * cache.entries + 1024
    clock.now += 60
    assert cache.sweep() == 1 and view.get("k") is None and view.get("j") == "b"


@pytest.mark.parametrize("ttl", [-1, -0.5, math.nan, math.inf])
def test_cache_bad_ttl(ttl: float) -> None:
    view = PluginCache().namespace("t")
    with pytest.raises(ValueError):
        view.put("k", 1, ttl=ttl)
    with pytest.raises(TypeError):
        view.put("k", 1, ttl="5")  # type: ignore[arg-type]


def test_cache_sweep_every_ten_seconds() -> None:
    clock = FakeClock()
    cache = PluginCache(clock=clock)
    view = cache.namespace("t")
    for i in range(5):
        view.put(f"k{i}", i, ttl=1)
    clock.now += 2
    assert cache.entries == 5  # nothing touched them yet
    view.get("unrelated")  # less than 10 s since the last sweep: no sweep
    assert cache.entries == 5
    clock.now += 8
    cache.namespace("other")  # 10 s now: swept
    assert cache.entries == 0 and cache.bytes == 0
    view.put("a", 1, ttl=1)
    clock.now += 2
    assert cache.sweep() == 1


def test_cache_lru_eviction_order() -> None:
    size = estimate_size("x" * 1000)
    cache = PluginCache(max_bytes=4 * (size + 200))
    a, b = cache.namespace("a"), cache.namespace("b")
    a.put("1", "x" * 1000)
    b.put("2", "x" * 1000)
    a.put("3", "x" * 1000, use_global=True)
    b.put("4", "x" * 1000)
    assert cache.evictions == 0 and cache.entries == 4
    assert a.get("1") is not None  # now "2" is the least recently used
    a.put("5", "x" * 1000)
    assert cache.evictions == 1
    assert b.get("2") is None
    assert a.get("1") is not None and b.get("4") is not None and a.get("3", use_global=True) is not None
    assert cache.bytes <= cache.max_bytes


def test_cache_expired_go_before_live() -> None:
    clock = FakeClock()
    size = estimate_size("x" * 1000)
    cache = PluginCache(max_bytes=2 * (size + 200), clock=clock)
    view = cache.namespace("t")
    view.put("live", "x" * 1000)
    view.put("dying", "y" * 1000, ttl=1)
    clock.now += 2
    view.put("new", "z" * 1000)
    assert view.get("live") is not None
    assert cache.evictions == 0 and cache.expired == 1


def test_cache_value_over_cap_never_raises() -> None:
    cache = PluginCache(max_bytes=10_000)
    view = cache.namespace("t")
    view.put("small", 1)
    big = "x" * 50_000
    view.put("big", big)  # no exception: stored alone
    assert view.get("big") is big
    assert view.get("small") is None
    assert cache.over_cap == 1 and cache.evictions == 1 and cache.entries == 1
    view.put("small", 1)  # the oversized value goes as soon as anything else needs room
    assert view.get("big") is None and view.get("small") == 1
    assert cache.bytes <= cache.max_bytes


def test_cache_put_replaces_and_recounts() -> None:
    cache = PluginCache()
    view = cache.namespace("t")
    view.put("k", "x" * 10_000)
    big = cache.bytes
    view.put("k", "x")
    assert cache.entries == 1 and cache.bytes < big - 9_000


def test_cache_drop_namespace() -> None:
    cache = PluginCache()
    a, b = cache.namespace("a"), cache.namespace("b")
    a.put("1", 1)
    a.put("2", 2)
    a.put("g", 3, use_global=True)
    b.put("1", 4)
    assert cache.drop_namespace("a") == 2
    assert a.get("1") is None and a.get("g", use_global=True) == 3 and b.get("1") == 4
    assert cache.entries == 2


def test_cache_rejects_bad_cap() -> None:
    with pytest.raises(ValueError):
        PluginCache(max_bytes=0)


class _Hostile:
    """Fails everything a size estimate might touch."""

    def __reduce__(self) -> Any:
        raise RuntimeError("no pickling")

    def __sizeof__(self) -> int:
        raise RuntimeError("no size")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no attributes")


class _Slotted:
    __slots__ = ("payload", "lock")

    def __init__(self) -> None:
        self.payload = "p" * 10_000
        self.lock = threading.Lock()


def test_estimate_size_never_raises() -> None:
    assert estimate_size(_Hostile()) > 0
    cyclic: list[Any] = [threading.Lock()]
    cyclic.append(cyclic)
    assert estimate_size(cyclic) > 0
    assert estimate_size(_Slotted()) > 10_000  # unpicklable: measured by walking the slots
    thread = threading.Thread(target=lambda: None)
    assert estimate_size({"t": thread, "data": "d" * 20_000}) > 20_000
    deep: list[Any] = []
    node = deep
    for _ in range(5000):  # deeper than the recursion limit
        child: list[Any] = [threading.Lock()]
        node.append(child)
        node = child
    assert estimate_size(deep) > 0
    assert estimate_size("x" * 100_000) >= 100_000


def test_cache_thread_safety_smoke() -> None:
    cache = PluginCache(max_bytes=50_000)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            view = cache.namespace(f"t{n % 3}")
            for i in range(400):
                key = f"k{i % 37}"
                view.put(key, "v" * (i % 500), ttl=None if i % 2 else 60, use_global=i % 5 == 0)
                view.get(key, use_global=i % 7 == 0)
                if i % 11 == 0:
                    view.delete(key)
                if i % 97 == 0:
                    cache.sweep()
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 0 <= cache.bytes <= cache.max_bytes
    assert cache.bytes == sum(e.size for e in cache._entries.values())
    assert cache.entries == len(cache._entries)
