"""lineprotocol.syntax: the rules every reader and writer of line protocol shares."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.engine import linebuilder as engine_api  # compared through its public calls
from appliance.lineprotocol import syntax
from appliance.lineprotocol.parser import parse
from appliance.model import Precision

_TEXT = st.text(st.sampled_from(list('ab \\,="#\t\n\r\x00é\u200b')), max_size=12)


# -- escaping -------------------------------------------------------------------------------


@given(_TEXT, st.booleans())
def test_escape_then_unescape_gives_the_text_back(text: str, every: bool) -> None:
    assert syntax.unescape_measurement(syntax.escape_measurement(text, every_backslash=every)) == text
    assert syntax.unescape_name(syntax.escape_name(text, every_backslash=every)) == text
    assert syntax.unescape_string(syntax.escape_string(text)) == text


@given(_TEXT)
def test_the_builder_escaping_is_the_line_builders(text: str) -> None:
    # Each part of a line LineBuilder accepts is escaped by syntax with every backslash doubled.
    if syntax.builder_measurement_problem(text) is None:
        line = engine_api.LineBuilder(text).int64_field("f", 1).build()
        assert line == f"{syntax.escape_measurement(text, every_backslash=True)} f=1i"
    if text and syntax.builder_tag_value_problem("k", text) is None:
        line = engine_api.LineBuilder("m").tag("k", text).int64_field("f", 1).build()
        assert line == f"m,k={syntax.escape_name(text, every_backslash=True)} f=1i"
        assert parse(line.encode(), Precision.NS, 0).tables[0].tags["k"].to_pylist() == [text]
    if syntax.builder_string_problem("s", text) is None:
        line = engine_api.LineBuilder("m").string_field("s", text).build()
        assert line == f'm s="{syntax.escape_string(text)}"'
        assert parse(line.encode(), Precision.NS, 0).tables[0].fields["s"][1].to_pylist() == [text]


def test_escaping_examples() -> None:
    assert syntax.escape_measurement("a b,c=d") == "a\\ b\\,c=d"
    assert syntax.escape_name("a b,c=d") == "a\\ b\\,c\\=d"
    assert syntax.escape_name("a\\b\\,") == "a\\b\\\\\\,"  # doubled only where the parser would drop it
    assert syntax.escape_name("a\\b", every_backslash=True) == "a\\\\b"
    assert syntax.escape_string('say "hi"\\') == 'say \\"hi\\"\\\\'
    assert syntax.unescape_name("a\\b") == "a\\b"  # an unknown escape stays literal


_NAME = st.text(st.sampled_from(list("ab,= \\é")), min_size=1, max_size=8).filter(
    lambda s: not s.endswith("\\")
)


@given(_NAME, _NAME, _NAME, _NAME, st.text(st.sampled_from(list('ab \\"\n,=')), max_size=8))
def test_escaped_names_read_back_through_the_parser(m: str, tk: str, tv: str, fk: str, sv: str) -> None:
    if fk == "time" or tk == "time" or tk == fk:
        return
    line = (
        f"{syntax.escape_measurement(m)},{syntax.escape_name(tk)}={syntax.escape_name(tv)} "
        f'{syntax.escape_name(fk)}="{syntax.escape_string(sv)}" 1'
    )
    result = parse(line.encode(), Precision.NS, 0)
    assert not result.errors, (line, result.errors)
    (table,) = result.tables
    assert table.name == m
    assert table.tags[tk].to_pylist() == [tv] and table.fields[fk][1].to_pylist() == [sv]


@given(_TEXT, _TEXT, _TEXT)
def test_split_unescaped_keeps_escaped_separators(a: str, b: str, c: str) -> None:
    parts = [syntax.escape_name(p) for p in (a, b, c)]
    for sep in (",", "=", " "):
        if not any(p.endswith("\\") for p in parts):
            assert [syntax.unescape_name(p) for p in syntax.split_unescaped(sep.join(parts), sep)] == [
                a,
                b,
                c,
            ]
    assert syntax.split_unescaped("a,b,c", ",", 1) == ["a", "b,c"]


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "reason"),
    [
        ("", syntax.TAG_VALUE, "is empty"),
        ("a\nb", syntax.MEASUREMENT, "contains a line break, which line protocol cannot carry"),
        ("a\rb", syntax.TAG_VALUE, "contains a line break, which line protocol cannot carry"),
        ("a\tb", syntax.FIELD_KEY, "contains a tab, which line protocol cannot carry"),
        ("a\\", syntax.TAG_KEY, "ends with a backslash, which line protocol cannot carry"),
        ("a\udc80", syntax.TAG_VALUE, "is not valid Unicode (lone surrogate)"),
        ("#a", syntax.MEASUREMENT, "starts with #, which line protocol reads as a comment"),
        ("time", syntax.TAG_KEY, "is reserved for the timestamp column"),
        ("time", syntax.FIELD_KEY, "is reserved for the timestamp column"),
        ("a\u200bb", syntax.FIELD_KEY, syntax.name_problem("a\u200bb")),
        ("a\x00", syntax.MEASUREMENT, syntax.name_problem("a\x00")),
    ],
)
def test_every_carry_problem(text: str, kind: str, reason: str) -> None:
    assert reason is not None and syntax.carry_problem(text, kind) == reason


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("#a", syntax.TAG_KEY),  # only a measurement can start a comment
        ("time", syntax.MEASUREMENT),
        ("time", syntax.TAG_VALUE),
        ("a\u200bb", syntax.TAG_VALUE),  # a value is data: the name rule does not apply
        ("a b,c=d\\e", syntax.FIELD_KEY),  # separators and inner backslashes are escaped
    ],
)
def test_what_line_protocol_carries(text: str, kind: str) -> None:
    assert syntax.carry_problem(text, kind) is None


def test_every_name_problem() -> None:
    assert syntax.name_problem("") == "is empty"
    assert syntax.name_problem("cpu") is None
    assert syntax.name_problem("a\u200db") is None  # a joiner between visible characters
    assert "U+200B at position 2" in (syntax.name_problem("a\u200b") or "")
    joiner = syntax.name_problem("\u200da") or ""
    assert "U+200D at position 1" in joiner and "only between two visible characters" in joiner


@pytest.mark.parametrize(
    "measurement", ["", "a b", "a\nb", "a\tb", "a\x00", "#a", "a\\", "ok", "a,b", "a=b", "é"]
)
def test_the_builder_measurement_rule_is_the_line_builders(measurement: str) -> None:
    problem = syntax.builder_measurement_problem(measurement)
    if problem is None:
        engine_api.LineBuilder(measurement)
    else:
        with pytest.raises(engine_api.InvalidMeasurementError, match="^" + re.escape(problem) + "$"):
            engine_api.LineBuilder(measurement)


@pytest.mark.parametrize("key", ["", "a b", "a,b", "a=b", "a\nb", "a\tb", "a\\", "ok", "#a", "é"])
def test_the_builder_key_rules_are_the_line_builders(key: str) -> None:
    for kind, setter in (("tag", "tag"), ("field", "int64_field")):
        problem = syntax.builder_key_problem(key, kind)
        line = engine_api.LineBuilder("m")
        if problem is None:
            getattr(line, setter)(key, 1)
        else:
            with pytest.raises(engine_api.InvalidKeyError, match="^" + re.escape(problem) + "$"):
                getattr(line, setter)(key, 1)


@pytest.mark.parametrize("value", ["", "a b", "a\nb", "a\rb", "a\tb", "a\\", "a\\b", "\x00"])
def test_the_builder_value_rules_are_the_line_builders(value: str) -> None:
    for problem, call in (
        (syntax.builder_tag_value_problem("k", value), "tag"),
        (syntax.builder_string_problem("k", value), "string_field"),
    ):
        line = engine_api.LineBuilder("m")
        if problem is None:
            getattr(line, call)("k", value)
        else:
            with pytest.raises(engine_api.InvalidLineError, match="^" + re.escape(problem) + "$"):
                getattr(line, call)("k", value)


# -- records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "open_after"),
    [
        (['m s="a', 'b" 1'], [True, False]),  # a newline inside a quoted string
        (['m s="a\\"', 'b" 1'], [True, False]),  # an escaped quote does not close it
        (['m s="a\\\\" 1'], [False]),  # an escaped backslash, then the closing quote
        (["m a=1\\", " 2"], [True, False]),  # a trailing backslash escapes the newline
        (['m,t="x a=1 1'], [False]),  # a quote in the series key is just a character
        (['m a=1,s="x', 'y"', "z"], [True, False, False]),
        (['m "a=1'], [False]),  # a quote before any `=` in the fields opens nothing
    ],
)
def test_the_split_machine(lines: list[str], open_after: list[bool]) -> None:
    state: syntax.SplitState | None = syntax.RECORD_START
    got = []
    for line in lines:
        state = syntax.continued(line, state if state is not None else syntax.RECORD_START)
        got.append(state is not None)
    assert got == open_after
    assert syntax.ends_open("\n".join(lines).encode()) is open_after[-1]


@given(st.text(st.sampled_from(list('m a=1"\\ ,\n#x\t')), max_size=30))
def test_ends_open_fast_path_agrees_with_the_state_machine(text: str) -> None:
    body = text.encode()
    assert syntax.ends_open(body) is syntax.ends_open_exact(body)


def test_comments_and_blank_lines_are_skipped() -> None:
    assert syntax.skipped("") and syntax.skipped("#x") and syntax.skipped("\r")
    assert not syntax.skipped("m a=1")
    assert not syntax.ends_open(b'# x="y\n')  # a comment is a whole physical line


# -- units ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "unit"),
    [
        (0, 1_000_000_000),
        (4_999_999_999, 1_000_000_000),
        (5_000_000_000, 1_000_000),
        (-4_999_999_999, 1_000_000_000),
        (-5_000_000_000, 1_000_000),
        (4_999_999_999_999, 1_000_000),
        (5_000_000_000_000, 1_000),
        (4_999_999_999_999_999, 1_000),
        (5_000_000_000_000_000, 1),
        (2**63 - 1, 1),
    ],
)
def test_auto_precision_thresholds(size: int, unit: int) -> None:
    assert syntax.guess_unit(size) == unit
    assert syntax.guess_unit(Decimal(size)) == unit


def test_auto_precision_in_the_parser() -> None:
    result = parse(b"m a=1 4999999999\nm a=1 5000000000", Precision.AUTO, 0)
    assert result.tables[0].time.to_pylist() == [4_999_999_999_000_000_000, 5_000_000_000_000_000]


def test_units_and_truncation() -> None:
    assert syntax.NS_PER_UNIT == {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
    assert {p.value: p.ns_per_unit for p in Precision} == {**syntax.NS_PER_UNIT, "auto": 1}
    assert syntax.truncate(1_999, 1_000) == 1_000
    assert syntax.truncate(-1_999, 1_000) == -1_000  # toward zero, as Rust divides
