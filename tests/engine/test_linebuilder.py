"""LineBuilder in isolation: its output, what it refuses, and the round trip through our parser."""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.engine.api import api_globals
from appliance.engine.linebuilder import (
    InfluxDBError,
    InvalidKeyError,
    InvalidLineError,
    InvalidMeasurementError,
    LineBuilder,
)
from appliance.lineprotocol.parser import parse
from appliance.lineprotocol.syntax import name_problem
from appliance.model import MAX_TIME_NS, MIN_TIME_NS, ColumnType, Precision

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
