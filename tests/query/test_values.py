"""Values as text in query results (timestamps, floats, strings, nested and rare types).

Expected texts were taken from DataFusion 55's own writers (arrow-rs), which InfluxDB 3 uses.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.query.formats import render
from tests.query.tables import T0, rows, ts


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "2025-02-25T20:39:34"),
        (984_000_000, "2025-02-25T20:39:34.984"),
        (500_000_000, "2025-02-25T20:39:34.500"),  # chrono keeps groups of 3 digits
        (984_098_000, "2025-02-25T20:39:34.984098"),
        (984_098_100, "2025-02-25T20:39:34.984098100"),
        (1, "2025-02-25T20:39:34.000000001"),
    ],
)
def test_json_timestamp_precision(nanos: int, text: str) -> None:
    assert rows(pa.table({"time": ts(T0 + nanos)})) == [{"time": text}]


def test_timestamps_before_1970_and_other_units() -> None:
    table = pa.table(
        {
            "neg": ts(-1_500_000_000),
            "s": ts(1_500_000_000, unit="s"),
            "ms": ts(1_500, unit="ms"),
            "us": ts(-1, unit="us"),
        }
    )
    assert rows(table) == [
        {
            "neg": "1969-12-31T23:59:58.500",
            "s": "2017-07-14T02:40:00",
            "ms": "1970-01-01T00:00:01.500",
            "us": "1969-12-31T23:59:59.999999",
        }
    ]


def test_zoned_timestamps_carry_their_offset() -> None:
    table = pa.table(
        {
            "utc": ts(1_500_000_000, tz="UTC"),
            "plus2": ts(1_500_000_000, tz="+02:00"),
            "kolkata": ts(0, tz="Asia/Kolkata"),
        }
    )
    assert rows(table) == [
        {
            "utc": "1970-01-01T00:00:01.500Z",
            "plus2": "1970-01-01T02:00:01.500+02:00",
            "kolkata": "1970-01-01T05:30:00+05:30",
        }
    ]


def test_json_uint64_and_int64_extremes_are_exact() -> None:
    table = pa.table(
        {
            "u": pa.array([2**64 - 1], pa.uint64()),
            "i": pa.array([-(2**63)], pa.int64()),
            "i8": pa.array([-5], pa.int8()),
        }
    )
    assert render(table, "json") == b'[{"u":18446744073709551615,"i":-9223372036854775808,"i8":-5}]'


def test_json_nan_and_infinity_become_null() -> None:
    # arrow-json writes non-finite floats as an explicit null (JSON has no NaN).
    table = pa.table({"a": [math.nan], "b": [math.inf], "c": [-math.inf], "d": [1.0]})
    assert render(table, "json") == b'[{"a":null,"b":null,"c":null,"d":1.0}]'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (123456789.0, "123456789.0"),
        (1e10, "1.0e10"),
        (1.5e10, "1.5e10"),
        (1e20, "1.0e20"),
        (0.00001, "0.00001"),
        (1e-6, "1.0e-6"),
        (1.2345678901234567e19, "1.2345678901234567e19"),
    ],
)
def test_json_floats_print_as_arrow_json(value: float, text: str) -> None:
    assert render(pa.table({"f": [value]}), "json") == ('[{"f":' + text + "}]").encode()


def test_json_string_escaping() -> None:
    values = ['say "hi"', "back\\slash", "line\nbreak\ttab", "bell\x01", "ünïcødé ✓", ""]
    body = render(pa.table({"s": values}), "json")
    assert [r["s"] for r in json.loads(body)] == values
    assert b"\\u0001" in body and "ünïcødé ✓".encode() in body  # not ASCII-escaped


def test_dictionary_tags_are_strings() -> None:
    tags = pa.DictionaryArray.from_arrays(pa.array([1, 0, None, 1], pa.int32()), pa.array(['a"b', "site7"]))
    assert rows(pa.table({"tag": tags})) == [{"tag": "site7"}, {"tag": 'a"b'}, {}, {"tag": "site7"}]


def test_other_types_as_arrow_json_writes_them() -> None:
    table = pa.table(
        {
            "dec": pa.array([Decimal("1.50")], pa.decimal128(10, 2)),
            "date": pa.array([19756], pa.date32()),
            "dur": pa.array([90_500_000_000], pa.duration("ns")),
            "dur0": pa.array([0], pa.duration("s")),
            "durneg": pa.array([-1_000], pa.duration("ms")),
            "bin": pa.array([b"abc"], pa.binary()),
            "lst": pa.array([[1, 2, None]], pa.list_(pa.int64())),
            "st": pa.array([{"a": 1, "b": None}], pa.struct([("a", pa.int64()), ("b", pa.string())])),
            "nul": pa.nulls(1),
            "time_of_day": pa.array([43_200_500_000_000], pa.time64("ns")),
        }
    )
    assert render(table, "json") == (
        b'[{"dec":1.50,"date":"2024-02-03","dur":"PT90.5S","dur0":"P0D","durneg":"-PT1S",'
        b'"bin":"616263","lst":[1,2,null],"st":{"a":1},"time_of_day":"12:00:00.500"}]'
    )


def test_nested_lists_of_strings_and_timestamps() -> None:
    table = pa.table(
        {
            "names": pa.array([["a", 'q"'], None, []], pa.list_(pa.string())),
            "times": pa.array([[0], [1_000_000], None], pa.list_(pa.timestamp("ns"))),
            "m": pa.array([[("k1", 1), ("k2", None)], None, []], pa.map_(pa.string(), pa.int64())),
        }
    )
    assert render(table, "jsonl") == (
        b'{"names":["a","q\\""],"times":["1970-01-01T00:00:00"],"m":{"k1":1}}\n'
        b'{"times":["1970-01-01T00:00:00.001"]}\n'
        b'{"names":[],"m":{}}\n'
    )


def test_dictionaries_differing_between_chunks() -> None:
    a = pa.table({"tag": pa.array(["x", "y"]).dictionary_encode()})
    b = pa.table({"tag": pa.array(["z", "x"]).dictionary_encode()})
    assert rows(pa.concat_tables([a, b])) == [{"tag": v} for v in "xyzx"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none() | st.integers(-(2**63), 2**63 - 1),
            st.none() | st.floats(allow_nan=False, allow_infinity=False),
            st.none() | st.text(),
            st.none() | st.booleans(),
        ),
        max_size=20,
    )
)
def test_json_round_trips_values(data: list[tuple]) -> None:
    names = ("i", "f", "s", "b")
    table = pa.table(
        {
            "i": pa.array([r[0] for r in data], pa.int64()),
            "f": pa.array([r[1] for r in data], pa.float64()),
            "s": pa.array([r[2] for r in data], pa.string()),
            "b": pa.array([r[3] for r in data], pa.bool_()),
        }
    )
    expected = [{k: v for k, v in zip(names, r, strict=True) if v is not None} for r in data]
    assert json.loads(render(table, "json")) == expected
    lines = render(table, "jsonl").decode().split("\n")[:-1]  # not splitlines(): U+0085 stays in strings
    assert [json.loads(line) for line in lines] == expected


def test_csv_floats_print_as_arrow_displays_them() -> None:
    table = pa.table({"f": [1.0, 1e20, 1e-7, 1e15, 1e16, math.nan, -math.inf, 0.00001, 1.5e-5]})
    assert render(table, "csv").decode().splitlines()[1:] == [
        "1.0",
        "1e20",
        "1e-7",
        "1000000000000000.0",
        "1e16",
        "NaN",
        "-inf",
        "0.00001",
        "0.000015",
    ]


def test_csv_float32_notation_band() -> None:
    table = pa.table({"f": pa.array([1.3863265e13, 2.1746189e-6, 1.5], pa.float32())})
    assert render(table, "csv") == b"f\n1.3863265e13\n0.0000021746189\n1.5\n"


def test_view_types_from_datafusion() -> None:
    # DataFusion reads Parquet strings as Utf8View by default.
    table = pa.table(
        {
            "s": pa.array(['a"b', None], pa.string_view()),
            "b": pa.array([b"ab", None], pa.binary_view()),
            "l": pa.array([[1], None], pa.list_view(pa.int64())),
        }
    )
    assert render(table, "json") == b'[{"s":"a\\"b","b":"6162","l":[1]},{}]'
    assert render(table, "csv") == b's,b,l\n"a""b",6162,[1]\n,,\n'
