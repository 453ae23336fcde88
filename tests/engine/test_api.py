"""The plugin API in isolation: LineBuilder, the cache store and the influxdb3_local object."""

from __future__ import annotations

import datetime
import decimal
import math
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.engine.api import (
    CacheView,
    InfluxDBError,
    InvalidKeyError,
    InvalidLineError,
    InvalidMeasurementError,
    LineBuilder,
    PluginApi,
    PluginCache,
    QueryError,
    api_globals,
    estimate_size,
    table_to_rows,
)
from appliance.errors import LineProtocolError
from appliance.lineprotocol.parser import parse
from appliance.model import MAX_TIME_NS, MIN_TIME_NS, ColumnType, Precision, name_problem

# -- LineBuilder: output --------------------------------------------------------------------


def test_each_field_type() -> None:
    line = (
        LineBuilder("m")
        .int64_field("i", -42)
        .uint64_field("u", 42)
        .float64_field("f", 1.5)
        .float64_field("g", 3)
        .string_field("s", "hi")
        .bool_field("t", True)
        .bool_field("n", False)
        .build()
    )
    assert line == 'm i=-42i,u=42u,f=1.5,g=3.0,s="hi",t=t,n=f'


def test_tags_and_timestamp() -> None:
    line = LineBuilder("cpu").tag("host", "a").tag("region", 7).float64_field("v", 0.25).time_ns(123).build()
    assert line == "cpu,host=a,region=7 v=0.25 123"


def test_measurement_escapes_comma_and_backslash() -> None:
    assert LineBuilder("a,b").int64_field("f", 1).build() == "a\\,b f=1i"
    assert LineBuilder("a\\b").int64_field("f", 1).build() == "a\\\\b f=1i"
    assert LineBuilder("a=b").int64_field("f", 1).build() == "a=b f=1i"


def test_measurement_space_rejected_as_reference() -> None:
    with pytest.raises(InvalidMeasurementError):
        LineBuilder("a b")


def test_measurement_space_escaped_if_set_directly() -> None:
    lb = LineBuilder("m").int64_field("f", 1)
    lb.measurement = "a b"  # a public attribute, as in the reference
    assert lb.build() == "a\\ b f=1i"


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb", "a\tb", "a\x00b", "#comment", "ends\\"])
def test_bad_measurement(name: str) -> None:
    with pytest.raises(InvalidMeasurementError):
        LineBuilder(name)


def test_measurement_must_be_str() -> None:
    with pytest.raises(TypeError):
        LineBuilder(5)  # type: ignore[arg-type]


def test_tag_value_escapes() -> None:
    line = LineBuilder("m").tag("k", "a\\b,c=d e").int64_field("f", 1).build()
    assert line == "m,k=a\\\\b\\,c\\=d\\ e f=1i"


def test_string_field_escapes_backslash_first() -> None:
    assert LineBuilder("m").string_field("s", 'a"b').build() == 'm s="a\\"b"'
    assert LineBuilder("m").string_field("s", "a\\b").build() == 'm s="a\\\\b"'
    assert LineBuilder("m").string_field("s", '\\"').build() == 'm s="\\\\\\""'
    assert LineBuilder("m").string_field("s", "tab\there").build() == 'm s="tab\there"'


def test_keys_with_backslash_are_escaped() -> None:
    assert LineBuilder("m").tag("a\\b", "v").int64_field("c\\d", 1).build() == "m,a\\\\b=v c\\\\d=1i"


@pytest.mark.parametrize("key", ["", "a b", "a,b", "a=b", "a\nb", "a\rb", "a\tb", "ends\\", 5])
def test_bad_keys(key: Any) -> None:
    with pytest.raises(InvalidKeyError):
        LineBuilder("m").tag(key, "v")
    with pytest.raises(InvalidKeyError):
        LineBuilder("m").int64_field(key, 1)
    with pytest.raises(InvalidKeyError):
        LineBuilder("m").string_field(key, "x")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\tb", "ends\\"])
def test_bad_tag_values(value: str) -> None:
    with pytest.raises(InvalidLineError):
        LineBuilder("m").tag("k", value)


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "\n"])
def test_string_field_newline_rejected(value: str) -> None:
    with pytest.raises(InvalidLineError):
        LineBuilder("m").string_field("s", value)


def test_empty_tag_value_leaves_tag_out() -> None:
    assert LineBuilder("m").tag("k", "").int64_field("f", 1).build() == "m f=1i"
    # and re-setting to empty removes an earlier value
    assert (
        LineBuilder("m").tag("k", "x").tag("j", "y").tag("k", "").int64_field("f", 1).build() == "m,j=y f=1i"
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_nan_inf_rejected(value: float) -> None:
    with pytest.raises(InvalidLineError):
        LineBuilder("m").float64_field("f", value)
    with pytest.raises(ValueError):  # InvalidLineError is a ValueError too
        LineBuilder("m").float64_field("f", value)


def test_float_values_are_exact() -> None:
    for value, text in [(1e16, "1e+16"), (5e-324, "5e-324"), (-0.0, "-0.0"), (0.1, "0.1"), (2, "2.0")]:
        assert LineBuilder("m").float64_field("f", value).build() == f"m f={text}"
    exact: Any = decimal.Decimal("2.5")  # numbers that are not floats are converted
    assert LineBuilder("m").float64_field("f", exact).build() == "m f=2.5"


def test_float_bad_types() -> None:
    for bad in ["1.5", b"1", True, None, [1.0]]:
        with pytest.raises(TypeError):
            LineBuilder("m").float64_field("f", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidLineError):
        LineBuilder("m").float64_field("f", 10**400)


def test_int64_checks() -> None:
    assert LineBuilder("m").int64_field("f", 2**63 - 1).build() == f"m f={2**63 - 1}i"
    assert LineBuilder("m").int64_field("f", -(2**63)).build() == f"m f={-(2**63)}i"
    for bad in [2**63, -(2**63) - 1]:
        with pytest.raises(InvalidLineError):
            LineBuilder("m").int64_field("f", bad)
    for wrong in [1.0, 1.5, "1", True, None]:
        with pytest.raises(TypeError):
            LineBuilder("m").int64_field("f", wrong)  # type: ignore[arg-type]


def test_uint64_checks() -> None:
    assert LineBuilder("m").uint64_field("f", 2**64 - 1).build() == f"m f={2**64 - 1}u"
    assert LineBuilder("m").uint64_field("f", 0).build() == "m f=0u"
    for bad in [-1, 2**64]:
        with pytest.raises(ValueError):  # the reference raised ValueError for negatives
            LineBuilder("m").uint64_field("f", bad)
        with pytest.raises(InvalidLineError):
            LineBuilder("m").uint64_field("f", bad)
    for wrong in [1.0, "1", False]:
        with pytest.raises(TypeError):
            LineBuilder("m").uint64_field("f", wrong)  # type: ignore[arg-type]


def test_string_and_bool_types() -> None:
    with pytest.raises(TypeError):
        LineBuilder("m").string_field("s", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LineBuilder("m").bool_field("b", "false")  # type: ignore[arg-type]
    assert LineBuilder("m").bool_field("b", 0).build() == "m b=f"  # type: ignore[arg-type]


def test_time_ns_checks() -> None:
    assert LineBuilder("m").int64_field("f", 1).time_ns(-5).build() == "m f=1i -5"
    assert LineBuilder("m").int64_field("f", 1).time_ns(5).time_ns(None).build() == "m f=1i"
    for wrong in [1.5, "1", True]:
        with pytest.raises(TypeError):
            LineBuilder("m").time_ns(wrong)  # type: ignore[arg-type]
    with pytest.raises(InvalidLineError):
        LineBuilder("m").time_ns(2**63)


def test_no_fields() -> None:
    with pytest.raises(InvalidLineError, match="At least one field is required"):
        LineBuilder("m").tag("k", "v").build()


def test_insertion_order_and_overwrite() -> None:
    lb = LineBuilder("m").tag("z", "1").tag("a", "2").int64_field("y", 1).float64_field("b", 2.0)
    lb.tag("z", "3").string_field("y", "s")
    assert lb.build() == 'm,z=3,a=2 y="s",b=2.0'


def test_exception_tree() -> None:
    for cls in (InvalidMeasurementError, InvalidKeyError, InvalidLineError):
        assert issubclass(cls, InfluxDBError)
    assert issubclass(InfluxDBError, Exception)
    assert set(api_globals()) >= {
        "LineBuilder",
        "InfluxDBError",
        "InvalidMeasurementError",
        "InvalidKeyError",
        "InvalidLineError",
    }
    assert api_globals()["LineBuilder"] is LineBuilder


# -- LineBuilder: round trip through our own parser ------------------------------------------

# Line protocol's special characters often, any other character (no lone surrogates) too.
_CHARS = st.one_of(
    st.sampled_from(list('\\,= "#=\x00')),
    st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\t"),
)
_MEASUREMENT = st.text(_CHARS, min_size=1, max_size=12).filter(
    lambda s: " " not in s and not s.startswith("#") and not s.endswith("\\") and name_problem(s) is None
)
_KEY = st.text(_CHARS, min_size=1, max_size=8).filter(
    lambda s: (
        not any(c in s for c in " ,=") and not s.endswith("\\") and s != "time" and name_problem(s) is None
    )
)
_TAG_VALUE = st.text(_CHARS, min_size=1, max_size=12).filter(lambda s: not s.endswith("\\"))
_FIELD_VALUE = st.one_of(
    st.tuples(st.just(ColumnType.INTEGER), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(ColumnType.UINTEGER), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(ColumnType.FLOAT), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(
        st.just(ColumnType.STRING),
        st.text(st.one_of(_CHARS, st.just("\t")), max_size=20),
    ),
    st.tuples(st.just(ColumnType.BOOLEAN), st.booleans()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    measurement=_MEASUREMENT,
    tags=st.dictionaries(_KEY, _TAG_VALUE, max_size=4),
    fields=st.dictionaries(_KEY, _FIELD_VALUE, min_size=1, max_size=5),
    ts=st.one_of(st.none(), st.integers(MIN_TIME_NS, MAX_TIME_NS)),
)
def test_round_trip(
    measurement: str,
    tags: dict[str, str],
    fields: dict[str, tuple[ColumnType, Any]],
    ts: int | None,
) -> None:
    tags = {k: v for k, v in tags.items() if k not in fields}  # a tag and a field may not share a name
    lb = LineBuilder(measurement)
    for k, v in tags.items():
        lb.tag(k, v)
    setters: dict[ColumnType, Callable[[str, Any], LineBuilder]] = {
        ColumnType.INTEGER: lb.int64_field,
        ColumnType.UINTEGER: lb.uint64_field,
        ColumnType.FLOAT: lb.float64_field,
        ColumnType.STRING: lb.string_field,
        ColumnType.BOOLEAN: lb.bool_field,
    }
    for k, (kind, v) in fields.items():
        setters[kind](k, v)
    if ts is not None:
        lb.time_ns(ts)
    line = lb.build()
    result = parse(line.encode(), Precision.NS, 77)
    assert result.errors == [], line
    (table,) = result.tables
    assert table.name == measurement
    assert {k: a.to_pylist() for k, a in table.tags.items()} == {k: [v] for k, v in tags.items()}
    assert list(table.fields) == list(fields)
    for k, (kind, v) in fields.items():
        got_kind, arr = table.fields[k]
        assert got_kind == kind
        (got,) = arr.to_pylist()
        if kind == ColumnType.FLOAT:
            assert got.hex() == float(v).hex()  # exact, sign of zero included
        else:
            assert got == v
    assert table.time.to_pylist() == [77 if ts is None else ts]


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


# -- PluginApi ------------------------------------------------------------------------------


class FakeHooks:
    def __init__(self) -> None:
        self.logs: list[tuple[str, str]] = []
        self.written: list[tuple[str, str, bool]] = []
        self.queries: list[tuple[str, str, dict[str, Any] | None]] = []
        self.write_error: Exception | None = None
        self.query_error: Exception | None = None
        self.result = pa.table({"x": [1]})

    def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))

    def write_lines(self, db: str, lines: str, no_sync: bool) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written.append((db, lines, no_sync))

    def query(self, db: str, sql: str, params: dict[str, Any] | None) -> pa.Table:
        if self.query_error is not None:
            raise self.query_error
        self.queries.append((db, sql, params))
        return self.result


def make_api(hooks: FakeHooks | None = None) -> tuple[PluginApi, FakeHooks]:
    hooks = hooks or FakeHooks()
    return PluginApi("home", hooks, PluginCache().namespace("home/t")), hooks


class MultiLine:
    def build(self) -> str:
        return "a f=1\nb f=2\n"


def test_logging_joins_arguments() -> None:
    api, hooks = make_api()
    api.info("rows", 3, {"a": 1})
    api.warn()
    api.error("failed:", ValueError("boom"), None)
    assert hooks.logs == [("INFO", "rows 3 {'a': 1}"), ("WARN", ""), ("ERROR", "failed: boom None")]


def test_buffered_writes_per_database() -> None:
    api, hooks = make_api()
    api.write(LineBuilder("m").int64_field("f", 1))
    api.write_to_db("other", LineBuilder("n").int64_field("f", 2))
    api.write(MultiLine())
    assert hooks.written == []  # nothing is written before the plugin returns
    assert api.take_writes() == {"home": ["m f=1i", "a f=1\nb f=2"], "other": ["n f=2i"]}
    assert api.take_writes() == {}
    api.write(LineBuilder("m").int64_field("f", 1))
    api.discard_writes()
    assert api.take_writes() == {}


def test_write_needs_build() -> None:
    api, _ = make_api()
    with pytest.raises(TypeError):
        api.write("m f=1")
    with pytest.raises(InvalidLineError):
        api.write(LineBuilder("m"))  # no field: the builder's own error
    assert api.take_writes() == {}


def test_write_sync() -> None:
    api, hooks = make_api()
    api.write_sync(LineBuilder("m").int64_field("f", 1), True)
    api.write_sync(LineBuilder("m").int64_field("f", 2), no_sync=False)
    api.write_sync(LineBuilder("m").int64_field("f", 3))  # no_sync optional here
    api.write_sync_to_db("other", MultiLine(), no_sync=True)
    api.write_sync_to_db("x", LineBuilder("m").int64_field("f", 4), False)
    assert hooks.written == [
        ("home", "m f=1i", True),
        ("home", "m f=2i", False),
        ("home", "m f=3i", False),
        ("other", "a f=1\nb f=2", True),
        ("x", "m f=4i", False),
    ]
    assert api.take_writes() == {}


def test_write_sync_error_text() -> None:
    api, hooks = make_api()
    hooks.write_error = RuntimeError("disk full")
    with pytest.raises(Exception, match="^error writing line protocol to home: disk full$"):
        api.write_sync(LineBuilder("m").int64_field("f", 1), False)
    hooks.write_error = LineProtocolError(
        "parsing failed", data=[{"line_number": 1, "original_line": "m", "error_message": "No fields"}]
    )
    with pytest.raises(
        Exception, match="^error writing line protocol to db2: parsing failed \\(line 1: No fields\\)$"
    ):
        api.write_sync_to_db("db2", MultiLine(), True)


def test_cache_property() -> None:
    api, _ = make_api()
    assert isinstance(api.cache, CacheView)
    api.cache.put("k", 1)
    assert api.cache.get("k") == 1


def test_query_binds_params_and_database() -> None:
    api, hooks = make_api()
    assert api.query("SELECT 1") == [{"x": 1}]
    api.query("SELECT $a, $b, $c, $d", {"a": "s", "b": 1, "c": 1.5, "d": True})
    api.query("SELECT 1", database="other")
    api.query("SELECT $a", params={"a": "p"})
    assert hooks.queries == [
        ("home", "SELECT 1", None),
        ("home", "SELECT $a, $b, $c, $d", {"a": "s", "b": 1, "c": 1.5, "d": True}),
        ("other", "SELECT 1", None),
        ("home", "SELECT $a", {"a": "p"}),
    ]


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, b"x", datetime.date(2024, 1, 1)])
def test_query_param_types(value: Any) -> None:
    api, hooks = make_api()
    with pytest.raises(TypeError, match="'bad'"):
        api.query("SELECT $bad", {"ok": 1, "bad": value})
    assert hooks.queries == []


def test_query_args_must_be_a_dict() -> None:
    api, _ = make_api()
    with pytest.raises(TypeError):
        api.query("SELECT 1", ["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        api.query("SELECT 1", {"a": 1}, params={"a": 1})


def test_query_error_text() -> None:
    api, hooks = make_api()
    hooks.query_error = RuntimeError("table 'nope' not found")
    with pytest.raises(QueryError) as info:
        api.query("SELECT * FROM nope", database="db2")
    assert str(info.value) == "error: table 'nope' not found executing query on db2: SELECT * FROM nope"
    assert isinstance(info.value, Exception)


def test_query_conversion() -> None:
    api, hooks = make_api()
    hooks.result = pa.table(
        {
            "time": pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns")),
            "time_s": pa.array([2, None], pa.timestamp("s", tz="UTC")),
            "time_us": pa.array([3, 4], pa.timestamp("us")),
            "host": pa.array(["a", None]).dictionary_encode(),
            "name": pa.array(["x", "y"], pa.large_string()),
            "u": pa.array([2**64 - 1, None], pa.uint64()),
            "i": pa.array([-1, None], pa.int64()),
            "small": pa.array([7, None], pa.int32()),
            "f": pa.array([1.5, None], pa.float64()),
            "b": pa.array([True, None]),
            "n": pa.array([None, None], pa.null()),
            "day": pa.array([datetime.date(2024, 1, 2), None], pa.date32()),
            "dec": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(5, 2)),
            "ts_list": pa.array([[1, None], None], pa.list_(pa.timestamp("ms"))),
            "rec": pa.array([{"a": 1}, None], pa.struct([("a", pa.int64())])),
            "dur": pa.array([5, None], pa.duration("us")),
            "tod": pa.array([3_723_000_000_001, None], pa.time64("ns")),
            "raw": pa.array([b"x", None]),
            "map": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
        }
    )
    rows = api.query("SELECT *")
    assert rows == [
        {
            "time": 1_700_000_000_123_456_789,
            "time_s": 2_000_000_000,
            "time_us": 3_000,
            "host": "a",
            "name": "x",
            "u": 2**64 - 1,
            "i": -1,
            "small": 7,
            "f": 1.5,
            "b": True,
            "n": None,
            "day": "2024-01-02",
            "dec": 1.25,
            "ts_list": [1_000_000, None],
            "rec": {"a": 1},
            "dur": 5_000,
            "tod": "01:02:03.000000001",
            "raw": b"x",
            "map": {"k": 1},
        },
        {
            "time": None,
            "time_s": None,
            "time_us": 4_000,
            "host": None,
            "name": "y",
            "u": None,
            "i": None,
            "small": None,
            "f": None,
            "b": None,
            "n": None,
            "day": None,
            "dec": None,
            "ts_list": None,
            "rec": None,
            "dur": None,
            "tod": None,
            "raw": None,
            "map": None,
        },
    ]
    assert type(rows[0]["host"]) is str and type(rows[0]["time"]) is int


def test_query_conversion_chunks_slices_and_empty() -> None:
    chunked = pa.chunked_array(
        [pa.array([1, 2], pa.timestamp("ns")), pa.array([3], pa.timestamp("ns"))],
    )
    sliced = pa.array([[1], [2, 3], None, [4]], pa.list_(pa.timestamp("ns"))).slice(1, 3)
    table = pa.table({"t": chunked, "l": sliced})
    assert table_to_rows(table) == [{"t": 1, "l": [2, 3]}, {"t": 2, "l": None}, {"t": 3, "l": [4]}]
    assert table_to_rows(pa.table({"t": pa.array([], pa.timestamp("ns"))})) == []
    batch = pa.record_batch({"x": pa.array(["a"]).dictionary_encode()})
    assert table_to_rows(batch) == [{"x": "a"}]
