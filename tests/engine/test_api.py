"""The influxdb3_local object in isolation: logging, buffered and synchronous writes, queries."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pyarrow as pa
import pytest

from appliance.engine.api import PluginApi, QueryError
from appliance.engine.cache import CacheView, PluginCache
from appliance.engine.linebuilder import InvalidLineError, LineBuilder
from appliance.errors import LineProtocolError

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
