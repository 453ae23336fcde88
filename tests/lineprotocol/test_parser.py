"""Line protocol parser: every rule of the spec (section 9), and fast route == exact route."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.lineprotocol import finish
from appliance.lineprotocol import parser as lineprotocol
from appliance.lineprotocol.parser import _Body, parse
from appliance.lineprotocol.syntax import BAD_NAME_CHAR, name_problem
from appliance.lineprotocol.vector import try_parse
from appliance.model import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    TIME_RANGE,
    ColumnType,
    ParsedTable,
    ParseResult,
    Precision,
)

NOW = 1_700_000_000_123_456_789


Known = dict[str, dict[str, ColumnType]]


def lp(
    body: str | bytes, precision: Precision = Precision.NS, now: int = NOW, known: Known | None = None
) -> ParseResult:
    """Parse with the public entry point, checking both routes give that result without a hitch."""
    data = body.encode() if isinstance(body, str) else body
    result = parse(data, precision, now, known=known)
    assert canon(result) == canon(_Body(data, precision, now, True, known).result(safe=False))
    assert canon(result) == canon(_Body(data, precision, now, False, known).result(safe=False))
    return result


def canon(result: ParseResult) -> Any:
    """Everything observable in a result, with floats compared bit for bit."""

    def values(arr: pa.Array) -> list[Any]:
        return [v.hex() if isinstance(v, float) else v for v in arr.to_pylist()]

    tables = [
        (
            t.name,
            t.num_rows,
            str(t.time.type),
            values(t.time),
            str(t.line_numbers.type),
            values(t.line_numbers),
            [(k, str(a.type), values(a)) for k, a in t.tags.items()],
            [(k, kind, str(a.type), values(a)) for k, (kind, a) in t.fields.items()],
        )
        for t in result.tables
    ]
    errors = [(e.line_number, e.original_line, e.error_message) for e in result.errors]
    return tables, errors, result.lines, sorted(result.rejected.numbers), result.limit_hit


def rows(table: ParsedTable) -> list[dict[str, Any]]:
    """Rows as dicts of the non-null columns, plus `time` and `line`."""
    out = []
    for i in range(table.num_rows):
        row: dict[str, Any] = {"time": table.time[i].as_py(), "line": table.line_numbers[i].as_py()}
        for k, arr in table.tags.items():
            if arr[i].is_valid:
                row[k] = arr[i].as_py()
        for k, (_, arr) in table.fields.items():
            if arr[i].is_valid:
                row[k] = arr[i].as_py()
        out.append(row)
    return out


def one(body: str | bytes, precision: Precision = Precision.NS, now: int = NOW) -> dict[str, Any]:
    """The single row of a one-line body that must parse cleanly."""
    result = lp(body, precision, now)
    assert not result.errors, result.errors
    assert len(result.tables) == 1 and result.tables[0].num_rows == 1
    return {"table": result.tables[0].name, **rows(result.tables[0])[0]}


def error(body: str | bytes, precision: Precision = Precision.NS) -> str:
    """The message of the single error of a body."""
    result = lp(body, precision)
    assert len(result.errors) == 1, result.errors
    return result.errors[0].error_message


# -- output shape -------------------------------------------------------------------------


def test_output_is_arrow_columns_per_table_in_first_seen_order() -> None:
    result = lp(
        'cpu,host=a usage=1.5,n=3i,u=4u,ok=t,s="x" 10\nmem,host=b free=2i 20\ncpu,host=c,dc=eu usage=2.5 30\n'
    )
    assert not result.errors and result.lines == 3
    cpu, mem = result.tables
    assert (cpu.name, cpu.num_rows, mem.name, mem.num_rows) == ("cpu", 2, "mem", 1)
    assert cpu.time.type == pa.int64() and cpu.time.to_pylist() == [10, 30]
    assert cpu.line_numbers.type == pa.int32() and cpu.line_numbers.to_pylist() == [1, 3]
    assert {k: a.type for k, a in cpu.tags.items()} == {"host": pa.string(), "dc": pa.string()}
    assert cpu.tags["dc"].to_pylist() == [None, "eu"]
    kinds = {k: (kind, a.type) for k, (kind, a) in cpu.fields.items()}
    assert kinds == {
        "usage": (ColumnType.FLOAT, pa.float64()),
        "n": (ColumnType.INTEGER, pa.int64()),
        "u": (ColumnType.UINTEGER, pa.uint64()),
        "ok": (ColumnType.BOOLEAN, pa.bool_()),
        "s": (ColumnType.STRING, pa.string()),
    }
    assert cpu.fields["n"][1].to_pylist() == [3, None]
    assert rows(mem) == [{"time": 20, "line": 2, "host": "b", "free": 2}]


def test_rows_of_different_field_sets_stay_in_line_order() -> None:
    body = "\n".join(f"m,d={i % 3} a={i}" if i % 2 else f"m,d={i % 3} b={i}i,a={i}" for i in range(20))
    (table,) = lp(body).tables
    assert table.line_numbers.to_pylist() == list(range(1, 21))
    assert table.fields["a"][1].to_pylist() == [float(i) for i in range(20)]
    assert table.fields["b"][1].to_pylist() == [i if i % 2 == 0 else None for i in range(20)]
    assert list(table.fields) == ["b", "a"]
    assert table.tags["d"].to_pylist() == [str(i % 3) for i in range(20)]


def test_table_order_follows_the_first_accepted_line() -> None:
    result = lp("a x=1\nb x=1\na x=2\n")
    assert [t.name for t in result.tables] == ["a", "b"]
    result = lp("a x=oops\nb x=1\na x=2\n")
    assert [t.name for t in result.tables] == ["b", "a"]


def test_empty_body() -> None:
    assert lp(b"") == ParseResult([], [], 0)
    assert lp(b"\n\n  \n# only a comment\n") == ParseResult([], [], 0)


# -- escapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [(r"we\,ather", "we,ather"), (r"we\ ather", "we ather"), (r"we\\ather", "we\\ather")],
)
def test_measurement_escapes(raw: str, name: str) -> None:
    assert one(f"{raw},t=1 f=1 5")["table"] == name


@pytest.mark.parametrize("raw", [r"m\=x", r"m\ax", r"m\"x", "m=x"])
def test_measurement_other_backslashes_and_equals_stay_literal(raw: str) -> None:
    assert one(f"{raw} f=1 5")["table"] == raw


@pytest.mark.parametrize(
    ("raw", "text"),
    [(r"a\,b", "a,b"), (r"a\=b", "a=b"), (r"a\ b", "a b"), (r"a\\b", "a\\b"), (r"a\xb", r"a\xb")],
)
def test_tag_key_tag_value_and_field_key_escapes(raw: str, text: str) -> None:
    row = one(f"m,{raw}=v,k={raw} f{raw}=1i 5")
    assert row == {"table": "m", text: "v", "k": text, "f" + text: 1, "time": 5, "line": 1}


def test_unescaped_commas_in_tag_keys_and_field_keys_and_equals_in_tag_values() -> None:
    row = one("m,a,b=c=d f,g=1i 5")
    assert row["a,b"] == "c=d" and row["f,g"] == 1


@pytest.mark.parametrize(
    "body",
    [
        "m\\",  # a lone backslash ends the line
        "m\\\\ f=1",  # `\\` unescapes to a trailing backslash
        "m,t=v\\\\ f=1",
        "m,t\\\\=v f=1",
        "m f\\\\=1",
        "m,t=v f=1,g\\\\=2",
    ],
)
def test_component_ending_in_backslash_is_an_error(body: str) -> None:
    assert error(body) == "Measurements, tag keys and values, and field keys may not end with a backslash"


def test_escaped_space_belongs_to_the_name() -> None:
    assert (
        error("m\\ f=1") == "Expected at least one space character, got end of input"
    )  # measurement `m f=1`


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"a\\b"', "a\\b"),
        (r'"a\b"', r"a\b"),
        (r'"a\\\"b"', 'a\\"b'),
        (r'"ends\\"', "ends\\"),
        ('"with, comma=and space"', "with, comma=and space"),
        ('""', ""),
    ],
)
def test_string_field_escapes(raw: str, text: str) -> None:
    assert one(f"m s={raw},n=1i 5")["s"] == text


# -- field types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        ("1", ColumnType.FLOAT, 1.0),
        ("-1.5", ColumnType.FLOAT, -1.5),
        ("1e5", ColumnType.FLOAT, 1e5),
        ("1.5E-3", ColumnType.FLOAT, 1.5e-3),
        ("-2.5e+3", ColumnType.FLOAT, -2500.0),
        ("007", ColumnType.FLOAT, 7.0),
        ("1i", ColumnType.INTEGER, 1),
        ("-9223372036854775808i", ColumnType.INTEGER, -(2**63)),
        ("9223372036854775807i", ColumnType.INTEGER, 2**63 - 1),
        ("0u", ColumnType.UINTEGER, 0),
        ("18446744073709551615u", ColumnType.UINTEGER, 2**64 - 1),
        ('"text"', ColumnType.STRING, "text"),
    ],
)
def test_field_types(raw: str, kind: ColumnType, value: Any) -> None:
    (table,) = lp(f"m f={raw} 5").tables
    got_kind, arr = table.fields["f"]
    assert got_kind is kind and arr.type == kind.arrow_type and arr.to_pylist() == [value]


@pytest.mark.parametrize("raw", ["t", "T", "true", "True", "TRUE"])
def test_true_spellings(raw: str) -> None:
    assert one(f"m f={raw}")["f"] is True


@pytest.mark.parametrize("raw", ["f", "F", "false", "False", "FALSE"])
def test_false_spellings(raw: str) -> None:
    assert one(f"m f={raw}")["f"] is False


@pytest.mark.parametrize(
    "raw",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "tRUE",
        "yes",
        "1.",
        ".5",
        "+1",
        "1e",
        "1.5e+",
        "-1u",
        "1.5i",
        "0x10",
        "1_000",
        "1i2",
        "--1",
        "٣",
        '"a"b',
        "",
        "1 2x",
    ],
)
def test_invalid_field_values_are_rejected(raw: str) -> None:
    result = lp(f"m f={raw} 5\nm g=1 6")
    assert [e.line_number for e in result.errors] == [1]
    assert rows(result.tables[0]) == [{"time": 6, "line": 2, "g": 1.0}]


def test_invalid_value_message_names_the_field() -> None:
    assert error("m temp=warm") == (
        "invalid field value for field 'temp': `warm` is not a float, integer, unsigned integer, "
        "string or boolean"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("9223372036854775808i", "Unable to parse integer value `9223372036854775808i`"),
        ("-9223372036854775809i", "Unable to parse integer value `-9223372036854775809i`"),
        ("18446744073709551616u", "Unable to parse unsigned integer value `18446744073709551616u`"),
    ],
)
def test_integer_ranges_are_checked(raw: str, message: str) -> None:
    assert error(f"m n={raw}") == f"invalid field value for field 'n': {message}"


def test_huge_floats_overflow_to_infinity_like_influxdb() -> None:
    assert one("m f=1e400")["f"] == math.inf


def test_no_fields() -> None:
    assert error("m 5") == "No fields were provided"
    assert error("m,t=1") == "Expected at least one space character, got end of input"
    assert error("m,t=1 ") == "No fields were provided"


def test_structural_errors() -> None:
    assert error(",t=1 f=1") == "Invalid measurement was provided"
    assert error("m, f=1") == "Expected tag key, got ` f=1`"
    assert error("m,t f=1") == "Tag set malformed: could not find equals sign in `t f=1`"
    assert error("m,t= f=1") == "Expected tag value, got ` f=1`"
    assert error("m f=1,g") == "Could not parse entire line. Found trailing content: `,g`"
    assert error("m f=1 5 6") == "Could not parse entire line. Found trailing content: `6`"
    assert error("m\tf=1") == "Expected at least one space character, got `\tf=1`"
    assert error('m s="a"x') == "invalid field value for field 's': `x` after string"


# -- whitespace, comments, CRLF, line numbers -------------------------------------------


def test_blank_lines_comments_and_leading_whitespace() -> None:
    body = "\n# comment a=1\n   \n\t m a=1 5\n  # indented comment\nm a=2 6\n"
    result = lp(body)
    assert result.lines == 2 and not result.errors
    assert result.tables[0].line_numbers.to_pylist() == [4, 6]


def test_separators_are_one_or_more_spaces_and_trailing_spaces_are_allowed() -> None:
    assert one("m,t=1   a=1,b=2i    5   ") == {"table": "m", "t": "1", "a": 1.0, "b": 2, "time": 5, "line": 1}
    assert one("m a=1 ")["a"] == 1.0


def test_crlf_line_endings_are_accepted() -> None:
    result = lp(b'm,t=1 a=1 5\r\nm s="x" 6\r\n\r\n# c\r\nm a=3\r\n')
    assert not result.errors and result.lines == 3
    assert rows(result.tables[0]) == [
        {"t": "1", "a": 1.0, "time": 5, "line": 1},
        {"s": "x", "time": 6, "line": 2},
        {"a": 3.0, "time": NOW, "line": 5},
    ]


def test_multiline_strings_keep_true_line_numbers() -> None:
    body = 'm a=1 1\nm s="two\nlines",a=2 2\nm s="three\n\nlines" 3\nbad\nm a=4 4\n'
    result = lp(body)
    assert rows(result.tables[0]) == [
        {"a": 1.0, "time": 1, "line": 1},
        {"s": "two\nlines", "a": 2.0, "time": 2, "line": 2},
        {"s": "three\n\nlines", "time": 3, "line": 4},
        {"a": 4.0, "time": 4, "line": 8},
    ]
    assert [(e.line_number, e.original_line) for e in result.errors] == [(7, "bad")]
    assert result.lines == 5


def test_escaped_quote_does_not_open_a_string_and_unterminated_string_swallows_the_rest() -> None:
    result = lp('m s="a\\"\nm a=1\n')
    assert [e.line_number for e in result.errors] == [1]
    assert result.tables == [] and result.lines == 1


def test_error_line_numbers_and_original_line() -> None:
    body = "m a=1\n\n  m a=notanumber_and_more_text\nm a=2\n"
    result = lp(body)
    (err,) = result.errors
    assert err.line_number == 3
    assert err.original_line == "m a=notanumber_and_m"  # first 20 bytes of the line
    assert err.to_json()["line_number"] == 3


def test_original_line_is_cut_on_a_character_boundary() -> None:
    err = lp("m é=é€€€€€€€€€€€€ bad").errors[0]
    assert err.original_line == "m é=é€€€€"  # 19 bytes: the next € would straddle byte 20
    assert len(err.original_line.encode()) <= 20


def test_invalid_utf8_rejects_only_that_line() -> None:
    result = lp(b'm a=1 1\nm s="\xff\xfe" 2\nm a=3 3\n')
    assert rows(result.tables[0]) == [{"a": 1.0, "time": 1, "line": 1}, {"a": 3.0, "time": 3, "line": 3}]
    (err,) = result.errors
    assert err.line_number == 2 and "UTF-8" in err.error_message
    assert err.original_line == 'm s="\ufffd\ufffd" 2'


# -- duplicates, type conflicts, name collisions -----------------------------------------


def test_duplicate_field_is_rejected() -> None:
    assert error("m a=1,b=2,a=3") == "invalid line protocol - multiple instances of 'a' field found"


def test_duplicate_tag_last_value_wins() -> None:
    assert one("m,t=1,u=2,t=3 f=1")["t"] == "3"


def test_first_line_fixes_a_field_type_for_the_body() -> None:
    result = lp("m a=1 1\nm a=1i 2\nm a=2 3\nn a=1i 4\n")
    (err,) = result.errors
    assert err.line_number == 2
    assert err.error_message == (
        "invalid column type for column 'a', expected iox::column_type::field::float, "
        "got iox::column_type::field::integer"
    )
    m, n = result.tables
    assert m.fields["a"][1].to_pylist() == [1.0, 2.0]
    assert n.fields["a"][0] is ColumnType.INTEGER  # another table has its own types


def test_rejected_lines_fix_no_types() -> None:
    result = lp("m a=bad,b=1i 1\nm b=1.5 2\nm b=2i 3\n")
    assert [e.line_number for e in result.errors] == [1, 3]
    assert result.tables[0].fields["b"][0] is ColumnType.FLOAT


@pytest.mark.parametrize(
    ("body", "expected", "got"),
    [
        ("m,a=x a=1", "tag", "field::float"),
        ("m,a=x f=1\nm a=1i", "tag", "field::integer"),
        ("m a=1u\nm,a=x f=1", "field::uinteger", "tag"),
        ('m a="s"\nm a=t', "field::string", "field::boolean"),
        ("m time=1", "timestamp", "field::float"),
        ("m,time=x f=1", "timestamp", "tag"),
    ],
)
def test_name_collisions_and_time_column(body: str, expected: str, got: str) -> None:
    result = lp(body)
    (err,) = result.errors
    assert err.line_number == body.count("\n") + 1
    assert err.error_message == (
        f"invalid column type for column '{err.error_message.split(chr(39))[1]}', "
        f"expected iox::column_type::{expected}, got iox::column_type::{got}"
    )


def test_a_new_tag_is_allowed_at_any_time() -> None:
    result = lp("m a=1 1\nm,t=x a=2 2")
    assert not result.errors and result.tables[0].tags["t"].to_pylist() == [None, "x"]


def test_known_column_types_are_judged_like_earlier_lines() -> None:
    known: Known = {"m": {"v": ColumnType.INTEGER, "host": ColumnType.TAG}, "other": {"x": ColumnType.FLOAT}}
    result = lp("m v=2.5 2\nm v=3i 3\nm,host=a v=4i 4\nm host=1i 5\nm,v=x w=1 6\n", known=known)
    assert [(e.line_number, e.error_message) for e in result.errors] == [
        (1, _conflict_message("v", "field::integer", "field::float")),
        (4, _conflict_message("host", "tag", "field::integer")),
        (5, _conflict_message("v", "field::integer", "tag")),
    ]
    (table,) = result.tables
    assert rows(table) == [{"v": 3, "time": 3, "line": 2}, {"host": "a", "v": 4, "time": 4, "line": 3}]
    assert list(table.fields) == ["v"] and list(table.tags) == ["host"]  # no unused known columns


def test_known_types_on_the_fast_route() -> None:
    body = iot_body(300)
    agree: Known = {
        "weather": {
            "hum": ColumnType.INTEGER,
            "site": ColumnType.TAG,
            "gone": ColumnType.BOOLEAN,
            "time": ColumnType.TIME,  # the catalog lists `time` too
        }
    }
    (table,) = lp(body, known=agree).tables
    assert table.num_rows == 300 and "gone" not in table.fields
    clash: Known = {"weather": {"hum": ColumnType.FLOAT}}
    result = lp(body, known=clash)
    assert result.tables == [] and len(result.rejected) == 300


def _conflict_message(name: str, expected: str, got: str) -> str:
    return (
        f"invalid column type for column '{name}', expected iox::column_type::{expected}, "
        f"got iox::column_type::{got}"
    )


# -- timestamps and precision -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "ts", "ns"),
    [
        ("s", 1_700_000_000, 1_700_000_000_000_000_000),
        ("second", 1_700_000_000, 1_700_000_000_000_000_000),
        ("ms", 1_700_000_000_123, 1_700_000_000_123_000_000),
        ("millisecond", 1_700_000_000_123, 1_700_000_000_123_000_000),
        ("us", 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        ("u", 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        ("microsecond", 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        ("ns", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ("n", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ("nanosecond", -5, -5),
        ("s", -2, -2_000_000_000),
    ],
)
def test_precisions(spelling: str, ts: int, ns: int) -> None:
    precision = Precision.parse(spelling, Precision.AUTO)
    assert one(f"m f=1 {ts}", precision)["time"] == ns


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        (1_700_000_000, 1_700_000_000_000_000_000),
        (4_999_999_999, 4_999_999_999_000_000_000),
        (5_000_000_000, 5_000_000_000_000_000),
        (1_700_000_000_123, 1_700_000_000_123_000_000),
        (1_700_000_000_123_456, 1_700_000_000_123_456_000),
        (1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        (-1_700_000_000, -1_700_000_000_000_000_000),
        (0, 0),
    ],
)
def test_auto_precision_guesses_per_timestamp(ts: int, ns: int) -> None:
    assert one(f"m f=1 {ts}", Precision.AUTO)["time"] == ns


def test_auto_guessing_is_per_line() -> None:
    (table,) = lp("m f=1 1700000000\nm f=2 1700000000000000000\n", Precision.AUTO).tables
    assert table.time.to_pylist() == [1_700_000_000_000_000_000] * 2


@pytest.mark.parametrize(
    ("precision", "ns"),
    [
        (Precision.S, 1_700_000_000_000_000_000),
        (Precision.MS, 1_700_000_000_123_000_000),
        (Precision.US, 1_700_000_000_123_456_000),
        (Precision.NS, NOW),
        (Precision.AUTO, NOW),
    ],
)
def test_missing_timestamp_is_now_truncated_to_the_precision(precision: Precision, ns: int) -> None:
    (table,) = lp("m f=1\nm f=2 5\nm f=3", precision).tables
    assert table.time.to_pylist()[0] == ns and table.time.to_pylist()[2] == ns


@pytest.mark.parametrize(
    ("precision", "ts", "name"),
    [
        (Precision.S, 9_223_372_037, "Second"),
        (Precision.MS, -9_223_372_036_855, "Millisecond"),
        (Precision.US, 9_223_372_036_854_776, "Microsecond"),
    ],
)
def test_timestamp_overflow(precision: Precision, ts: int, name: str) -> None:
    assert error(f"m f=1 {ts}", precision) == f"timestamp, {ts}, out of range for precision: {name}"


@pytest.mark.parametrize("ts", ["9223372036854775808", "1.5", "12a", "-", "0x1", "1_0"])
def test_unparsable_timestamps(ts: str) -> None:
    assert error(f"m f=1 {ts}") == f"Unable to parse timestamp value `{ts}`"


def test_times_outside_whole_int64_days_are_rejected_naming_the_timestamp() -> None:
    assert one(f"m f=1 {MAX_TIME_NS}")["time"] == MAX_TIME_NS  # 2262-04-10T23:59:59.999999999Z
    assert one(f"m f=1 {MIN_TIME_NS}", Precision.AUTO)["time"] == MIN_TIME_NS  # 1677-09-22T00:00:00Z
    for ts, precision in [
        (2**63 - 1, Precision.NS),
        (-(2**63), Precision.AUTO),
        (MAX_TIME_NS + 1, Precision.NS),
        (MIN_TIME_NS - 1, Precision.NS),
        (MAX_TIME_NS // 10**9 + 1, Precision.S),
    ]:
        assert error(f"m f=1 {ts}", precision) == (
            f"timestamp, {ts}, is outside the supported range {TIME_RANGE}"
        )
    assert (
        error("m f=1 9223372037", Precision.S) == "timestamp, 9223372037, out of range for precision: Second"
    )


# -- size limits --------------------------------------------------------------------------


def test_string_field_limit_is_one_mebibyte() -> None:
    mib = 1 << 20
    assert len(one(f'm s="{"x" * mib}"')["s"]) == mib
    assert (
        error(f'm s="{"x" * (mib + 1)}"') == "invalid field value for field 's': String is greater than 1MB"
    )
    assert (
        error(f'm s="{"é" * (mib // 2)}x"') == "invalid field value for field 's': String is greater than 1MB"
    )


def test_name_limit_is_one_mebibyte() -> None:
    mib = 1 << 20
    assert error(f"m,t={'v' * (mib + 1)} f=1") == "String is greater than 1MB"
    assert error(f"m {'k' * (mib + 1)}=1") == "String is greater than 1MB"
    assert len(one(f"m,t={'v' * mib} f=1")["t"]) == mib


# -- routes -------------------------------------------------------------------------------


def iot_body(n: int, devices: int = 50) -> str:
    return "\n".join(
        f"weather,device=dev{i % devices:04d},site=s{i % 7},kind=th "
        f'temp={i * 0.25 - 20},hum={i % 100}i,ok={"true" if i % 3 else "F"},status="ok {i % 4}" '
        f"{1_700_000_000_000_000_000 + i}"
        for i in range(n)
    )


def test_regular_lines_take_the_fast_route(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = lineprotocol.scan

    def counting(rec: str, *args: Any) -> Any:
        calls.append(rec)
        return real(rec, *args)

    monkeypatch.setattr(lineprotocol, "scan", counting)
    body = iot_body(2000).replace('"ok ', '"ok_')  # a space in a string needs the exact route
    result = parse(body.encode(), Precision.NS, NOW)
    assert not result.errors and result.tables[0].num_rows == 2000
    assert len(calls) == 1  # only the first line of the table


def test_an_internal_error_never_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    body = b"m a=1 1\nm a=2 2"
    monkeypatch.setattr(finish, "build", boom)  # the fast route breaks: the exact one answers
    assert rows(parse(body, Precision.NS, NOW).tables[0]) == [
        {"a": 1.0, "time": 1, "line": 1},
        {"a": 2.0, "time": 2, "line": 2},
    ]
    monkeypatch.setattr(lineprotocol, "scan", boom)  # both break: one error, no exception
    result = parse(body, Precision.NS, NOW)
    assert (
        result.tables == [] and result.errors[0].error_message == "internal parser error: RuntimeError('bug')"
    )


def test_bad_lines_in_a_regular_body_reject_only_themselves() -> None:
    lines = iot_body(500).split("\n")
    lines[10] = lines[10].replace("hum=", "hum=1.5,h=")  # type conflict
    lines[20] = lines[20].replace("hum=", "hum=x")  # unparsable value
    lines[30] = lines[30].replace("hum=", "hum=99999999999999999999")  # out of range, same shape
    result = lp("\n".join(lines))
    assert [(e.line_number, e.error_message) for e in result.errors] == [
        (
            11,
            "invalid column type for column 'hum', expected iox::column_type::field::integer, "
            "got iox::column_type::field::float",
        ),
        (
            21,
            "invalid field value for field 'hum': `x20i` is not a float, integer, unsigned integer, string or boolean",
        ),
        (31, "invalid field value for field 'hum': Unable to parse integer value `9999999999999999999930i`"),
    ]
    (table,) = result.tables
    assert table.num_rows == 497 and "h" not in table.fields
    assert 11 not in table.line_numbers.to_pylist() and table.line_numbers.to_pylist()[10] == 12


def test_fast_and_exact_routes_agree_on_a_large_mixed_body() -> None:
    lines = iot_body(3000).split("\n")
    lines[100] = lines[100].replace("hum=", "hum=x")
    lines[200] = lines[200].replace("hum=0i", "hum=0.5").replace("hum=", "hum=")
    lines[300] = lines[300].replace("temp=", "temp=1i,temp_=")
    lines[400] = lines[400].replace(",kind=th", ",kind=a\\ b")
    lines[500] = lines[500] + " trailing"
    lines[600] = lines[600].replace("status=", "device=")
    lines[700] = lines[700].replace('"ok', '"o\\"k\n')
    result = lp("\r\n".join(lines))
    assert [e.line_number for e in result.errors] == [101, 201, 301, 501, 601]
    assert result.lines == 3000 and result.tables[0].num_rows == 2995


# -- properties ---------------------------------------------------------------------------

_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="\n\t\r\x00")
_tag_values = st.text(_NAME_CHARS, min_size=1, max_size=8).filter(lambda s: not s.endswith("\\"))
_names = _tag_values.filter(lambda s: s != "time" and not s.startswith("#") and name_problem(s) is None)
_VALUES: dict[ColumnType, st.SearchStrategy[Any]] = {
    ColumnType.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    ColumnType.INTEGER: st.integers(-(2**63), 2**63 - 1),
    ColumnType.UINTEGER: st.integers(0, 2**64 - 1),
    ColumnType.BOOLEAN: st.booleans(),
    ColumnType.STRING: st.text(st.characters(codec="utf-8"), max_size=12),
}


def _escape(text: str, chars: str) -> str:
    text = text.replace("\\", "\\\\")
    for c in chars:
        text = text.replace(c, "\\" + c)
    return text


def _value(kind: ColumnType, v: Any, spelling: int) -> str:
    if kind is ColumnType.FLOAT:
        return repr(v) if spelling % 2 else repr(v).upper()
    if kind is ColumnType.INTEGER:
        return f"{v}i"
    if kind is ColumnType.UINTEGER:
        return f"{v}u"
    if kind is ColumnType.BOOLEAN:
        return ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE")[
            spelling % 5 + 5 * (not v)
        ]
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def points(draw: st.DrawFn) -> tuple[list[tuple[str, dict[str, str], dict[str, Any], int | None]], str]:
    """Valid points whose names never clash, and their line protocol with random spacing."""
    tables = draw(st.lists(_names, min_size=1, max_size=3, unique=True))
    schemas = {}
    for t in tables:
        names = draw(st.lists(_names, min_size=2, max_size=6, unique=True))
        n_tags = draw(st.integers(0, len(names) - 1))
        kinds = {k: draw(st.sampled_from(list(_VALUES))) for k in names[n_tags:]}
        schemas[t] = (names[:n_tags], kinds)
    pts, lines = [], []
    for _ in range(draw(st.integers(1, 12))):
        t = draw(st.sampled_from(tables))
        tag_keys, kinds = schemas[t]
        tags = {k: draw(_tag_values) for k in tag_keys if draw(st.booleans())}
        chosen = draw(st.lists(st.sampled_from(list(kinds)), min_size=1, unique=True))
        fields = {}
        for k in chosen:
            fields[k] = (kinds[k], draw(_VALUES[kinds[k]]))
        ts = draw(st.one_of(st.none(), st.integers(MIN_TIME_NS, MAX_TIME_NS)))
        sp = " " * draw(st.integers(1, 3))
        series = _escape(t, ", ") + "".join(
            f",{_escape(k, ',= ')}={_escape(v, ',= ')}" for k, v in tags.items()
        )
        field_text = ",".join(
            f"{_escape(k, ',= ')}={_value(kind, v, draw(st.integers(0, 9)))}"
            for k, (kind, v) in fields.items()
        )
        line = series + sp + field_text + ("" if ts is None else sp + str(ts))
        lines.append(draw(st.sampled_from(["", " ", "\t"])) + line)
        pts.append((t, tags, {k: v for k, (_, v) in fields.items()}, ts))
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["", "# a comment", "  ", '# x="y'])))
    return pts, draw(st.sampled_from(["\n", "\r\n"])).join(lines)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points())
def test_round_trip(case: tuple[list[Any], str]) -> None:
    pts, body = case
    result = lp(body)
    assert not result.errors, (body, result.errors)
    assert result.lines == len(pts)
    got = {t.name: rows(t) for t in result.tables}
    for name in got:
        expected = [p for p in pts if p[0] == name]
        assert len(expected) == len(got[name])
        for (_, tags, fields, ts), row in zip(expected, got[name], strict=True):
            row.pop("line")
            assert row.pop("time") == (NOW if ts is None else ts)
            assert row == {**tags, **fields}
    assert set(got) == {p[0] for p in pts}


_JUNK = st.one_of(
    st.text(
        st.sampled_from(list('ab=,"\\ \t\r\n#-.eiut0159\x00é\x01\u200b\u200c\u200d\u202e\ufeff\ue000')),
        max_size=40,
    ),
    st.sampled_from(["99999999999999999999i", "18446744073709551616u", "-9223372036854775808", "1e99999"]),
)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """Valid bodies with random edits, so every branch of both routes gets exercised."""
    _, body = draw(points())
    text = body
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(_JUNK) + text[at + cut :]
    data = text.encode()
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[at:]
    return data


_KEYS = ["a", "b", "c", "time", "t", "x\\ y", "k,l", 'q"']
_SERIES = ["m", "m,t=1", "m,t=2,u=x", "m,u=y,t=3", "n,a=1", "m,a=z", "m\\ x,t=1", "m,t=a\\,b", "m,t=1,t=2"]
_TOKENS = [
    "1",
    "-1.5",
    "1e5",
    "2.5E-3",
    "007",
    "2i",
    "-3i",
    "9223372036854775808i",
    "3u",
    "18446744073709551616u",
    "t",
    "FALSE",
    '"s"',
    '""',
    '"a b"',
    '"q\\"x"',
    '"back\\\\"',
    '"multi\nline"',
    "bad",
    "",
    "1e400",
    'x"',
]
_TYPED_TOKENS = [
    ["1", "-1.5", "1e5", "2.5E-3", "007"],
    ["2i", "-3i"],
    ["3u", "0u"],
    ["t", "FALSE"],
    ['"s"', '""', '"a,b"', '"q\\"x"', '"back\\\\"'],
]
_TIMES = [
    "",
    " 5",
    " -5",
    " 1700000000",
    " 1700000000000",
    " 9999999999999",
    " 9223372036854775807",
    " -9223286400000000000",
    " -9223286400000000001",
    " 99999999999999999999",
    " x",
    "  7  ",
]


@st.composite
def repetitive_bodies(draw: st.DrawFn) -> bytes:
    """Lines from a few series and key layouts with mixed value tokens: the fast route's home."""
    layouts = draw(st.lists(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3), min_size=1, max_size=3))
    pools = {k: draw(st.sampled_from(_TYPED_TOKENS)) for k in _KEYS}  # mostly one type per key
    series = draw(st.lists(st.sampled_from(_SERIES), min_size=1, max_size=4))
    lines = []
    for _ in range(draw(st.integers(1, 30))):
        keys = draw(st.sampled_from(layouts))
        odd = draw(st.integers(0, 9)) == 0
        fields = ",".join(f"{k}={draw(st.sampled_from(_TOKENS if odd else pools[k]))}" for k in keys)
        ts = draw(st.sampled_from(_TIMES if odd else _TIMES[:5]))
        lines.append(f"{draw(st.sampled_from(series))} {fields}{ts}")
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode()


_known = st.dictionaries(
    st.sampled_from(["m", "n"]),
    st.dictionaries(st.sampled_from(_KEYS + ["u"]), st.sampled_from(list(ColumnType)[:6]), max_size=3),
    max_size=2,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repetitive_bodies(), st.sampled_from(list(Precision)), st.one_of(st.none(), _known))
def test_fast_route_equals_exact_route_on_repetitive_bodies(
    body: bytes, precision: Precision, known: Known | None
) -> None:
    fast = _Body(body, precision, NOW, True, known).result(safe=False)
    assert canon(fast) == canon(_Body(body, precision, NOW, False, known).result(safe=False))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_bodies(), st.sampled_from(list(Precision)))
def test_fast_route_equals_exact_route(body: bytes, precision: Precision) -> None:
    fast = _Body(body, precision, NOW, fast=True).result(safe=False)
    assert canon(fast) == canon(_Body(body, precision, NOW, fast=False).result(safe=False))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), _JUNK.map(str.encode)), st.sampled_from(list(Precision)))
def test_never_raises(body: bytes, precision: Precision) -> None:
    result = _Body(body, precision, NOW, fast=True).result(safe=False)  # bugs raise here
    assert canon(result) == canon(parse(body, precision, NOW))
    assert result.lines >= len(result.errors)
    for table in result.tables:
        assert table.num_rows > 0
        for arr in [
            table.time,
            table.line_numbers,
            *table.tags.values(),
            *(a for _, a in table.fields.values()),
        ]:
            assert len(arr) == table.num_rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(mutated_bodies(), repetitive_bodies(), st.binary(max_size=200)),
    st.sampled_from(list(Precision)),
    st.integers(1, 6),
    st.integers(1, 150),
)
def test_fuzz_with_a_column_limit_every_route_agrees_and_nothing_raises(
    body: bytes, precision: Precision, max_columns: int, copies: int
) -> None:
    """Random and mutated bodies (NUL, invisible characters, escapes, huge numbers), repeated so
    that the vectorised route sees some: parse() equals both exact routes, which never raise."""
    if copies > 100 and len(body) < 4000:
        body = b"\n".join([body] * copies)
    room = (copies % 4, "no room") if copies % 5 else None
    got = canon(parse(body, precision, NOW, max_columns=max_columns, table_room=room))
    for fast in (True, False):
        exact = _Body(body, precision, NOW, fast, max_columns=max_columns, table_room=room)
        assert got == canon(exact.result(safe=False))
    vec = try_parse(
        body, precision, NOW, scan=lineprotocol.scan, max_columns=max_columns, max_new_tables=room
    )
    assert vec is None or canon(vec) == got


def test_tables_past_the_room_left_are_refused_in_order() -> None:
    body = b"a v=1 1\nb v=x 1\nb v=1 2\nc v=1 1\nknown v=1 1\nd v=1 1\na v=2 2"
    result = lp_room(body, (2, "no room for it"))
    assert [t.name for t in result.tables] == ["a", "b", "known"] and result.limit_hit
    assert [(e.line_number, e.error_message) for e in result.errors][1:] == [
        (4, "no room for it"),
        (6, "no room for it"),
    ]


def lp_room(body: bytes, room: tuple[int, str]) -> ParseResult:
    known: Known = {"known": {"v": ColumnType.FLOAT}}
    result = parse(body, Precision.NS, NOW, known=known, table_room=room)
    for fast in (True, False):
        assert canon(result) == canon(
            _Body(body, Precision.NS, NOW, fast, known, None, room).result(safe=False)
        )
    return result


def test_the_bad_name_characters_are_the_unicode_categories_named() -> None:
    wanted = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co"}
    bad = [c for c in range(0x110000) if unicodedata.category(chr(c)) in wanted]
    assert [c for c in range(0x110000) if BAD_NAME_CHAR.match(chr(c))] == bad


@pytest.mark.parametrize(
    "char", ["\x00", "\x1f", "\x7f", "\x85", "\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\ue000"]
)
def test_names_with_control_or_invisible_characters_are_rejected_naming_them(char: str) -> None:
    code = f"U+{ord(char):04X}"
    for line, kind in [
        (f"m{char} f=1", "measurement"),
        (f"m,t{char}=v f=1", "tag key"),
        (f"m f{char}=1", "field key"),
    ]:
        message = error(line)
        if char == "\x00" and kind == "measurement":
            continue  # as in InfluxDB, NUL ends a measurement: "Expected at least one space..."
        assert message.startswith(f"invalid {kind} ") and code in message, message
    # as values they are data
    assert one(f'm,t=a{char}b s="x{char}y" 1')["t"] == f"a{char}b"


@pytest.mark.parametrize("name", ["می\u200cخواهم", "🏳️\u200d🌈", "a\u200db", "x\u200c\u0301y"])
def test_a_zero_width_joiner_between_visible_characters_is_part_of_a_name(name: str) -> None:
    assert name_problem(name) is None
    escaped = name.replace(" ", "\\ ")
    for _ in range(2):  # the second line takes the cached fast route
        row = one(f"{escaped},t{escaped}=v {escaped}=1 1")
        assert row["table"] == name and row[f"t{name}"] == "v" and row[name] == 1.0
    body = "\n".join(f"{escaped},t{name}=v{i} f{name}=1,g=2 {i}" for i in range(50)).encode()
    result = lp(body)
    assert not result.errors and result.tables[0].name == name and result.tables[0].num_rows == 50
    assert set(result.tables[0].tags) == {f"t{name}"} and f"f{name}" in result.tables[0].fields


@pytest.mark.parametrize("name", ["\u200dab", "ab\u200c", "a\u200d\u200db", "a\u200b\u200db", "a\\ \u200db"])
def test_a_zero_width_joiner_at_either_end_or_beside_another_invisible_character_is_refused(
    name: str,
) -> None:
    for line, kind in [
        (f"{name} f=1", "measurement"),
        (f"m,{name}=v f=1", "tag key"),
        (f"m {name}=1", "field key"),
    ]:
        assert error(line).startswith(f"invalid {kind} "), line
        errors = lp(f"{line}\n{line}").errors  # the second through the series cache
        assert [e.line_number for e in errors] == [1, 2] and errors[1].error_message.startswith(
            f"invalid {kind} "
        )


def test_tag_values_and_strings_with_joiners_are_data_on_every_route() -> None:
    body = "\n".join(f'm,t=\u200d{i}\u200c f=1,s="\u200d" {i}' for i in range(50)).encode()
    result = lp(body)
    assert not result.errors and result.tables[0].tags["t"][0].as_py() == "\u200d0\u200c"


def test_a_byte_order_mark_at_the_start_of_a_body_is_dropped() -> None:
    assert one(b"\xef\xbb\xbfm v=1 1") == {"table": "m", "v": 1.0, "time": 1, "line": 1}
    body = b"\xef\xbb\xbf" + b"\n".join(b"m v=%d %d" % (i, i) for i in range(1, 50))
    result = lp(body)
    assert not result.errors and result.tables[0].num_rows == 49
    # Only one, and only at the start: elsewhere it is part of a name, which may not hold one.
    assert "U+FEFF" in error(b"\xef\xbb\xbf\xef\xbb\xbfm v=1 1")
    assert lp(b"m v=1 1\n\xef\xbb\xbfm v=2 2").errors[0].line_number == 2


def test_a_line_with_more_fields_than_a_table_holds_is_rejected_without_scanning_them_all() -> None:
    body = ("m,a=1,b=2 " + ",".join(f"f{i}=1" for i in range(200_000))).encode()
    result = parse(body, Precision.NS, NOW, max_columns=500)
    assert [e.error_message for e in result.errors] == [
        "the line has more than 500 tags and fields; a table holds at most 500 columns"
        " (catalog.max_columns): split it into several lines"
    ]
    assert one("m,a=1,b=2 f1=1,f2=2 1")["f2"] == 2.0
    assert parse(b"m,a=1,b=2 f1=1 1", Precision.NS, NOW, max_columns=3).errors == []
    assert parse(b"m,a=1,b=2 f1=1,f2=2 1", Precision.NS, NOW, max_columns=3).errors[0].line_number == 1


def test_a_line_with_more_tags_than_a_table_holds_is_rejected_before_the_rest_is_read() -> None:
    tags = ",".join(f"t{i}=a" for i in range(600))
    for rest in [" f=1 1", ",broken\\", "=junk f="]:  # what follows the 501st tag is never read
        for body in [f"m,{tags}{rest}", f"m\\ x,{tags}{rest}", "m,a=1 f=1 1\n" * 2 + f"m,{tags}{rest}"]:
            errors = parse(body.encode(), Precision.NS, NOW, max_columns=500).errors
            assert [e.error_message for e in errors] == [
                "the line has more than 500 tags; a table holds at most 500 columns (catalog.max_columns)"
            ], body[-40:]
    assert not parse(f"m,{tags} f=1 1".encode(), Precision.NS, NOW, max_columns=601).errors


def test_a_table_naming_more_columns_than_it_may_hold_is_rejected_whole() -> None:
    body = "\n".join(f"m f{i}=1 {i}" for i in range(1, 8)) + "\nother v=1 1"
    result = parse(body.encode(), Precision.NS, NOW, max_columns=5)
    assert result.limit_hit and [t.name for t in result.tables] == ["other"]
    assert [e.line_number for e in result.errors] == list(range(1, 8))
    ok = parse(body.encode(), Precision.NS, NOW, max_columns=5, known={"m": {"f1": ColumnType.FLOAT}})
    assert ok.limit_hit
    assert not parse(body.encode(), Precision.NS, NOW, max_columns=7).limit_hit


def test_error_details_are_bounded_and_every_line_counted() -> None:
    body = b"x\n" * 10_000 + b"m f=1 1"
    result = parse(body, Precision.NS, NOW)
    assert len(result.errors) == 100 and [e.line_number for e in result.errors] == list(range(1, 101))
    assert len(result.rejected) == 10_000 and result.tables[0].num_rows == 1


@st.composite
def many_layout_bodies(draw: st.DrawFn) -> bytes:
    """Tables whose lines each carry other fields (more layouts than the per-layout gathering takes)."""
    keys = [f"k{i}" for i in range(draw(st.integers(2, 30)))]
    lines = []
    for n in range(draw(st.integers(17, 60))):
        chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=6, unique=True))
        tokens = [
            draw(st.sampled_from(_TOKENS)) if draw(st.integers(0, 19)) == 0 else f"{n}i" for _ in chosen
        ]
        series = draw(st.sampled_from(["m", "m,t=a", "m,u=b", "n"]))
        lines.append(f"{series} {','.join(f'{k}={v}' for k, v in zip(chosen, tokens, strict=True))} {n}")
    return "\n".join(lines).encode()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(many_layout_bodies(), st.one_of(st.none(), st.integers(3, 40)))
def test_tables_of_many_layouts_equal_the_exact_route(body: bytes, max_columns: int | None) -> None:
    fast = _Body(body, Precision.NS, NOW, True, max_columns=max_columns).result(safe=False)
    assert canon(fast) == canon(
        _Body(body, Precision.NS, NOW, False, max_columns=max_columns).result(safe=False)
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_bodies(), repetitive_bodies()), st.integers(1, 40))
def test_splitting_the_text_in_chunks_changes_nothing(body: bytes, chunk: int) -> None:
    """Lines are split a chunk at a time; records spanning chunks and errors reported after the
    run (which re-split a chunk) come out as with one chunk."""
    whole = canon(_Body(body, Precision.NS, NOW, True).result(safe=False))
    default, lineprotocol._CHUNK_CHARS = lineprotocol._CHUNK_CHARS, chunk
    try:
        for fast in (True, False):
            assert canon(_Body(body, Precision.NS, NOW, fast).result(safe=False)) == whole
    finally:
        lineprotocol._CHUNK_CHARS = default
