"""The vectorised parser (lineprotocol.vector): taken for regular bodies, and always equal to the exact route."""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.lineprotocol import parser as lineprotocol
from appliance.lineprotocol import vector
from appliance.lineprotocol.parser import _Body, parse
from appliance.log import QuietLog
from appliance.metrics import VECTOR_FALLBACKS
from appliance.model import MAX_TIME_NS, ColumnType, ParseResult, Precision
from tests.lineprotocol.test_parser import canon

NOW = 1_700_000_000_123_456_789
Known = dict[str, dict[str, ColumnType]]


@pytest.fixture(autouse=True, scope="module")
def _small_bodies_too() -> Iterator[None]:
    """Let bodies of a few lines take the vectorised route, so that examples stay small and quick."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vector, "_MIN_LINES", 1)
        yield


def vec(body: bytes, precision: Precision = Precision.NS, known: Known | None = None) -> ParseResult | None:
    """The vectorised result (None: it declined), checked against the exact route when given."""
    got = vector.try_parse(body, precision, NOW, known, scan=lineprotocol.scan)
    exact = _Body(body, precision, NOW, False, known).result(safe=False)
    if got is not None:
        assert canon(got) == canon(exact)
        assert not exact.errors
    assert canon(parse(body, precision, NOW, known=known)) == canon(exact)
    return got


def iot(n: int = 40, devices: int = 7) -> list[str]:
    return [
        f"weather,device=dev{i % devices:04d},site=s{i % 3},kind=th "
        f'temp={i * 0.25 - 5},hum={i % 100}i,ok={"true" if i % 3 else "F"},status="ok_{i % 4}" '
        f"{1_700_000_000_000_000_000 + i}"
        for i in range(n)
    ]


def body_of(lines: list[str], sep: str = "\n") -> bytes:
    return sep.join(lines).encode()


# -- taken ----------------------------------------------------------------------------------


def test_the_common_shape_is_taken() -> None:
    result = vec(body_of(iot(5000, 1000)) + b"\n")
    assert result is not None and result.lines == 5000
    (table,) = result.tables
    assert list(table.tags) == ["device", "site", "kind"]
    assert {k: kind for k, (kind, _) in table.fields.items()} == {
        "temp": ColumnType.FLOAT,
        "hum": ColumnType.INTEGER,
        "ok": ColumnType.BOOLEAN,
        "status": ColumnType.STRING,
    }
    assert table.line_numbers.type == pa.int32() and table.line_numbers.to_pylist() == list(range(1, 5001))


@pytest.mark.parametrize("precision", list(Precision))
def test_precisions_and_missing_timestamps(precision: Precision) -> None:
    lines = [
        line.rsplit(" ", 1)[0] + ("" if i % 3 else f" {1_700_000_000 + i}") for i, line in enumerate(iot())
    ]
    assert vec(body_of(lines), precision) is not None


def test_several_tables_series_layouts_and_field_layouts() -> None:
    lines = iot(60)
    for i in range(0, 60, 4):
        lines[i] = lines[i].replace("weather", "cpu").replace("ok=", "x=1u,ok=")
    for i in range(1, 60, 5):
        lines[i] = lines[i].replace(",kind=th", "").replace("hum=", "extra=-3i,hum=")
    lines[7] = lines[7].replace("device=dev0000,site=s1", "site=s1,device=dev0000")  # tag order
    result = vec(body_of(lines))
    assert result is not None and [t.name for t in result.tables] == ["cpu", "weather"]
    cpu, weather = result.tables
    assert list(cpu.fields) == ["temp", "hum", "x", "ok", "status", "extra"]
    assert list(weather.fields) == ["temp", "extra", "hum", "ok", "status"]
    assert weather.tags["kind"].null_count > 0


def test_crlf_blank_lines_and_comments_keep_line_numbers() -> None:
    lines = iot(30)
    lines[3:3] = ["", "# a comment, with a = sign", ""]
    result = vec(("\n\n" + "\r\n".join(lines) + "\r\n\r\n").encode())
    assert result is not None
    numbers = result.tables[0].line_numbers.to_pylist()
    assert numbers[:5] == [3, 4, 5, 9, 10] and len(numbers) == 30


def test_names_and_strings_in_the_simple_shape() -> None:
    lines = [
        f'm=é,"t"=v={i % 2},ü=x f="a=b#é",g="",h={i}u,i=-{i}i,j=1E5,k=-0.5e-3,l=007,b=TRUE {i}'
        for i in range(20)
    ]
    result = vec(body_of(lines))
    assert result is not None
    (table,) = result.tables
    assert table.name == "m=é" and list(table.tags) == ['"t"', "ü"]
    assert table.tags['"t"'].to_pylist()[:2] == ["v=0", "v=1"]
    assert table.fields["f"][1][0].as_py() == "a=b#é" and table.fields["g"][1][0].as_py() == ""


@pytest.mark.parametrize(
    "line",
    [
        "m,t=a f=1e400,g=-1e-400,h=4.9e-324,i=-0,j=1E+05 0000000000000000000000005",
        "m,t=a g=00000000000000000000000002i,h=-0i,u=000000000000000000000003u -0",
        "m,t=a g=-9223372036854775808i,h=9223372036854775807i,u=18446744073709551615u 9223286399999999999",
        'm,t=a\u2028,u=\x85 s="a\xa0b\x0b" -9223286400000000000',
    ],
)
def test_edge_values_are_taken(line: str) -> None:
    assert vec(body_of([line] * 20)) is not None


def test_known_types_that_agree() -> None:
    known: Known = {
        "weather": {"hum": ColumnType.INTEGER, "site": ColumnType.TAG, "time": ColumnType.TIME},
        "other": {"temp": ColumnType.STRING},
    }
    assert vec(body_of(iot()), known=known) is not None


# -- declined -------------------------------------------------------------------------------


def _edit(i: int, old: str, new: str) -> bytes:
    lines = iot()
    assert old in lines[i]
    lines[i] = lines[i].replace(old, new)
    return body_of(lines)


@pytest.mark.parametrize(
    "body",
    [
        _edit(5, "kind=th", "kind=t\\ h"),  # escapes
        _edit(5, "kind=th", "kind=t\th"),
        _edit(5, " temp=", "  temp="),  # a run of spaces
        _edit(5, "weather", " weather"),  # leading space
        _edit(39, "1700000000000000039", "1700000000000000039 "),  # trailing space
        _edit(5, '"ok_1"', '"ok 1"'),  # a space in a string
        _edit(5, '"ok_1"', '"ok,1"'),
        _edit(5, '"ok_1"', '"ok\n1"'),  # a newline in a string: one record over two lines
        _edit(5, "temp=", "temp=1,temp="),  # duplicate field
        _edit(5, "hum=5i", "hum=5.5"),  # type conflict
        _edit(5, "hum=5i", "hum=99999999999999999999i"),  # out of range
        _edit(5, "hum=5i", "hum=0x5i"),
        _edit(5, "temp=-3.75", "temp=nan"),
        _edit(5, "temp=-3.75", "temp=+3.75"),
        _edit(5, "temp=-3.75", "temp=.75"),
        _edit(5, "ok=true", "ok=yes"),
        _edit(5, "status=", "site="),  # a tag and a field of one name
        _edit(5, "status=", "time="),
        _edit(5, ",kind=th", ",time=th"),
        _edit(5, ",kind=th", ",kind=th,kind=x"),  # a repeated tag
        _edit(5, ",kind=th", ",ki,nd=th"),  # a comma in a tag key
        _edit(5, ",kind=th", ",kind="),
        _edit(5, "1700000000000000005", "17e3"),
        _edit(5, "1700000000000000005", "99999999999999999999"),
        _edit(5, "1700000000000000005", "1 2"),
        _edit(5, "weather,", "#weather,") + b"\xff",  # invalid UTF-8
        _edit(5, "weather", "\\"),
    ],
)
def test_irregular_bodies_are_declined(body: bytes) -> None:
    assert vec(body) is None


def test_small_bodies_and_known_conflicts_are_declined(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vec(body_of(["m f=1"])) is not None
    monkeypatch.setattr(vector, "_MIN_LINES", 4)
    assert vec(body_of(iot(3))) is None
    assert vec(body_of(iot()), known={"weather": {"hum": ColumnType.FLOAT}}) is None
    assert vec(body_of(iot()), known={"weather": {"device": ColumnType.STRING}}) is None
    assert vec(body_of(iot()), Precision.S) is None  # ns timestamps overflow in seconds


def test_too_many_layouts_are_declined() -> None:
    lines = [f"m f{i}=1 {i}" for i in range(40)]
    assert vec(body_of(lines)) is None


def test_a_string_past_one_mebibyte_is_declined() -> None:
    lines = iot()
    lines[3] = lines[3].replace('"ok_3"', '"' + "x" * (1 << 20) + '"')
    assert vec(body_of(lines)) is None


def test_a_bug_in_the_vectorised_route_never_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(vector, "_parse", boom)
    body = body_of(iot())
    assert canon(parse(body, Precision.NS, NOW)) == canon(_Body(body, Precision.NS, NOW, False).result())


def test_a_bug_in_the_vectorised_route_is_counted_and_logged_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("bug")

    now = [1000.0]
    monkeypatch.setattr(vector, "_parse", boom)
    monkeypatch.setattr(
        lineprotocol,
        "_FALLBACK_LOG",
        QuietLog(logging.getLogger("appliance.lineprotocol"), 60.0, lambda: now[0]),
    )
    body = body_of(iot())
    exact = canon(_Body(body, Precision.NS, NOW, False).result())
    before = VECTOR_FALLBACKS.value()
    with caplog.at_level(logging.ERROR, logger="appliance.lineprotocol"):
        for _ in range(3):
            assert canon(parse(body, Precision.NS, NOW)) == exact  # no data lost
        assert VECTOR_FALLBACKS.value() == before + 3
        (first,) = caplog.records
        assert first.name == "appliance.lineprotocol" and "RuntimeError('bug')" in first.getMessage()
        assert first.exc_info is not None and first.exc_info[1] is not None  # the traceback, the first time
        now[0] += 60.0
        parse(body, Precision.NS, NOW)
    assert VECTOR_FALLBACKS.value() == before + 4
    second = caplog.records[1]
    assert len(caplog.records) == 2 and "2 more since the last such line" in second.getMessage()
    assert not second.exc_info


# -- properties -----------------------------------------------------------------------------

_CHARS = string.ascii_letters + string.digits + "_-.:/'é€ü"
_MEASUREMENT = st.text(st.sampled_from(list(_CHARS + '="#')), min_size=1, max_size=6).filter(
    lambda s: not s.startswith("#")
)
_TAG_KEY = st.text(st.sampled_from(list(_CHARS + '"#')), min_size=1, max_size=6).filter(lambda s: s != "time")
_FIELD_KEY = st.text(st.sampled_from(list(_CHARS + "#")), min_size=1, max_size=6).filter(
    lambda s: s != "time"
)
_STR = st.text(st.characters(codec="utf-8", exclude_characters=' ,"\\\n\r\t\x00'), max_size=8)
_TAG_VALUES = ["a", "b", "é=1", "#x", 'q"']
_KINDS = [ColumnType.FLOAT, ColumnType.INTEGER, ColumnType.UINTEGER, ColumnType.BOOLEAN, ColumnType.STRING]
_SPELLINGS = ["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"]
_STAMPS = {  # the range of timestamps each precision takes (MIN_TIME_NS = -MAX_TIME_NS - 1)
    Precision.AUTO: MAX_TIME_NS,
    Precision.S: MAX_TIME_NS // 10**9,
    Precision.MS: MAX_TIME_NS // 10**6,
    Precision.US: MAX_TIME_NS // 10**3,
    Precision.NS: MAX_TIME_NS,
}


def _value(draw: st.DrawFn, kind: ColumnType) -> str:
    if kind is ColumnType.FLOAT:
        v = draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-999, 999)))
        return repr(v) if draw(st.booleans()) else repr(v).upper()
    if kind is ColumnType.INTEGER:
        return f"{draw(st.integers(-(2**63), 2**63 - 1))}i"
    if kind is ColumnType.UINTEGER:
        return f"{draw(st.integers(0, 2**64 - 1))}u"
    if kind is ColumnType.BOOLEAN:
        return draw(st.sampled_from(_SPELLINGS))
    return f'"{draw(_STR)}"'


def _not_in(items: list[str], key: str) -> bool:
    return key not in items


@st.composite
def regular_bodies(draw: st.DrawFn) -> tuple[bytes, Precision, Known | None]:
    """Error-free bodies in the simple shape: several tables, series and field layouts."""
    precision = draw(st.sampled_from(list(Precision)))
    limit = _STAMPS[precision]
    tables = draw(st.lists(_MEASUREMENT, min_size=1, max_size=3, unique=True))
    schema = {}
    for t in tables:
        tag_keys = draw(st.lists(_TAG_KEY, max_size=4, unique=True))
        field_keys = draw(
            st.lists(
                _FIELD_KEY.filter(functools.partial(_not_in, tag_keys)), min_size=1, max_size=5, unique=True
            )
        )
        kinds = {k: draw(st.sampled_from(_KINDS)) for k in field_keys}
        tag_sets = draw(st.lists(st.permutations(tag_keys), min_size=1, max_size=2))
        layouts = draw(st.lists(st.permutations(field_keys), min_size=1, max_size=3))
        schema[t] = (tag_sets, [lay[: draw(st.integers(1, len(lay)))] for lay in layouts], kinds)
    lines = []
    for _ in range(draw(st.integers(1, 40))):
        t = draw(st.sampled_from(tables))
        tag_sets, layouts, kinds = schema[t]
        tags = draw(st.sampled_from(tag_sets))
        tags = tags[: len(tags) - draw(st.integers(0, 1))]  # at most 12 series layouts in all
        series = t + "".join(f",{k}={draw(st.sampled_from(_TAG_VALUES))}" for k in tags)
        fields = ",".join(f"{k}={_value(draw, kinds[k])}" for k in draw(st.sampled_from(layouts)))
        stamp = draw(st.one_of(st.none(), st.integers(-limit, limit)))
        lines.append(f"{series} {fields}" + ("" if stamp is None else f" {stamp}"))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", "# comment x=1", "#"])))
    known = None
    if draw(st.booleans()):  # some of the body's own columns, some unused ones and `time`
        known = {"other": {"x": ColumnType.FLOAT}}
        for t, (tag_sets, _, kinds) in schema.items():
            cols = sorted({k: ColumnType.TAG for ts in tag_sets for k in ts}.items()) + sorted(kinds.items())
            known[t] = dict(draw(st.lists(st.sampled_from(cols + [("time", ColumnType.TIME)]), max_size=4)))
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    return (sep.join(lines) + draw(st.sampled_from(["", sep]))).encode(), precision, known


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regular_bodies())
def test_regular_bodies_are_taken_and_equal_the_exact_route(
    case: tuple[bytes, Precision, Known | None],
) -> None:
    assert vec(*case) is not None


_JUNK = st.sampled_from(
    [" ", "  ", ",", "=", '"', "\\", "i", "u", "e", ".", "-", "+", "#", "\n", "\r", "\t", "x=1", "9" * 20]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    regular_bodies(),
    st.lists(st.tuples(st.integers(0, 10**6), _JUNK, st.integers(0, 2)), min_size=1, max_size=3),
)
def test_edited_bodies_equal_the_exact_route(
    case: tuple[bytes, Precision, Known | None], edits: list[tuple[int, str, int]]
) -> None:
    body, precision, known = case
    text = body.decode()
    for at, junk, cut in edits:
        at %= len(text) + 1
        text = text[:at] + junk + text[at + cut :]
    vec(text.encode(), precision, known)
