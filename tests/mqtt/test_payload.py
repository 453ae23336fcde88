"""MQTT payloads to line protocol: topic parsing, JSON conversion and retagging, each output read
back by the real line protocol parser."""

from __future__ import annotations

import calendar
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from appliance.lineprotocol.parser import parse
from appliance.model import ColumnType, Precision, name_problem
from appliance.mqtt.payload import (
    MAX_REASONS,
    JsonOptions,
    PayloadError,
    Reasons,
    TopicParsing,
    json_to_lines,
    retag_lines,
)

NOW = 1_700_000_000_123_456_789
ARRIVAL = 1_800_000_000_000_000_001
SECOND = 1_000_000_000


def read(body: bytes, precision: Precision = Precision.NS) -> list[dict[str, Any]]:
    """Rows the parser reads from `body` (which must parse cleanly), in line order.

    Each row holds its non-null tags and fields plus `_table` and `_time`.
    """
    result = parse(body, precision, NOW)
    assert not result.errors, [(e.line_number, e.error_message) for e in result.errors]
    found = []
    for t in result.tables:
        for i in range(t.num_rows):
            row: dict[str, Any] = {"_table": t.name, "_time": t.time[i].as_py()}
            row.update({k: a[i].as_py() for k, a in t.tags.items() if a[i].is_valid})
            row.update({k: a[i].as_py() for k, (_, a) in t.fields.items() if a[i].is_valid})
            found.append((t.line_numbers[i].as_py(), row))
    return [row for _, row in sorted(found, key=lambda pair: pair[0])]


def kinds(body: bytes) -> dict[str, ColumnType]:
    """Column types of a body's tables, by column name."""
    result = parse(body, Precision.NS, NOW)
    assert not result.errors
    out = {k: ColumnType.TAG for t in result.tables for k in t.tags}
    out.update({k: kind for t in result.tables for k, (kind, _) in t.fields.items()})
    return out


def convert(
    payload: Any,
    opts: JsonOptions | None = None,
    measurement: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[bytes, list[str]]:
    """json_to_lines on a JSON document (bytes are sent as they are); measurement `m` by default."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return json_to_lines(data, opts or JsonOptions(measurement="m"), measurement, tags or {}, ARRIVAL)


def rows(payload: Any, opts: JsonOptions | None = None, **kw: Any) -> list[dict[str, Any]]:
    """The rows a payload becomes, asserting it converted without a complaint."""
    body, errors = convert(payload, opts, **kw)
    assert errors == []
    return read(body)


def unix_ns(text: str) -> int:
    """ns of a UTC time written YYYY-MM-DDTHH:MM:SS, computed apart from the code under test."""
    return (
        calendar.timegm(tuple(int(x) for x in text.replace("T", "-").replace(":", "-").split("-"))) * SECOND
    )


# -- TopicParsing -------------------------------------------------------------------------


def test_topic_levels_become_tags_and_the_measurement() -> None:
    parsing = TopicParsing.compile("_/{site}/{device}/{measurement}")
    assert parsing.apply("sensors/lab/dev1/temp") == ("temp", {"site": "lab", "device": "dev1"})


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("a/lab/dev", {"site": "lab", "device": "dev"}),  # exactly the pattern's depth
        ("a/lab/dev/x", {"site": "lab", "device": "dev"}),  # deeper topics from a `#` filter
        ("a/lab/dev/x/y/z", {"site": "lab", "device": "dev"}),
        ("b/lab2/dev9/temp/extra", {"site": "lab2", "device": "dev9"}),  # any first level under `+`
    ],
)
def test_levels_past_the_pattern_are_ignored(topic: str, expected: dict[str, str]) -> None:
    assert TopicParsing.compile("+/{site}/{device}").apply(topic) == (None, expected)


def test_skipped_levels_past_the_last_named_one_need_not_exist() -> None:
    assert TopicParsing.compile("{site}/_/+").apply("lab") == (None, {"site": "lab"})


def test_topic_tag_adds_the_whole_topic() -> None:
    assert TopicParsing.compile("", "topic").apply("a/b c/d") == (None, {"topic": "a/b c/d"})
    parsed = TopicParsing.compile("_/{measurement}", "topic").apply("s/temp/x")
    assert parsed == ("temp", {"topic": "s/temp/x"})
    # A pattern of skipped levels is fine when topic_tag names something.
    assert TopicParsing.compile("_/+", "t").apply("x") == (None, {"t": "x"})


def test_empty_pattern_means_no_topic_parsing() -> None:
    parsing = TopicParsing.compile("")
    assert parsing.apply("any/topic/at/all") == (None, {})
    assert parsing.apply("") == (None, {})


def test_topic_with_too_few_levels_names_the_topic_and_the_missing_elements() -> None:
    parsing = TopicParsing.compile("_/{site}/{device}/{measurement}")
    with pytest.raises(PayloadError) as exc:
        parsing.apply("sensors/lab")
    message = str(exc.value)
    assert '"sensors/lab"' in message and "{device}, {measurement}" in message and "\n" not in message
    assert message.endswith("needs 4 for {device}, {measurement}")


def test_empty_tag_level_is_left_out() -> None:
    assert TopicParsing.compile("{a}/{b}/{c}").apply("x//z") == (None, {"a": "x", "c": "z"})
    assert TopicParsing.compile("{a}/{b}").apply("/y") == (None, {"b": "y"})


def test_empty_measurement_level_is_an_error() -> None:
    with pytest.raises(
        PayloadError, match=r'topic "s//x": level 2 \(\{measurement\}\): measurement "" is empty'
    ):
        TopicParsing.compile("_/{measurement}/{d}").apply("s//x")


@pytest.mark.parametrize(
    ("pattern", "topic", "fragment"),
    [
        ("{a}", "x\ty", "contains a tab"),
        ("{a}", "x\\", "ends with a backslash"),
        ("{measurement}", "#x", "starts with #"),
        ("", "line\nbreak", "contains a line break"),
    ],
)
def test_topic_values_line_protocol_cannot_carry_are_errors(pattern: str, topic: str, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        TopicParsing.compile(pattern, "" if pattern else "topic").apply(topic)


@pytest.mark.parametrize(
    ("pattern", "topic_tag", "fragment"),
    [
        ("sensors/{site}", "", 'level 1 "sensors" is not allowed; use _ or + to skip a level'),
        ("_/#", "", 'level 2 "#" is not allowed'),
        ("_//{site}", "", "level 2 is empty"),
        ("/{site}", "", "level 1 is empty"),
        ("{site}/", "", "level 2 is empty"),
        ("{site", "", 'level 1 "{site" is not allowed'),
        ("{}", "", 'level 1 "{}" is not allowed'),
        ("{a}b", "", 'level 1 "{a}b" is not allowed'),
        ("+x/{a}", "", 'level 1 "+x" is not allowed'),
        ("{site}/{site}", "", "{site} appears at levels 1 and 2"),
        ("{measurement}/_/{measurement}", "", "{measurement} appears at levels 1 and 3"),
        ("_/+", "", "names no level"),
        ("_", "", "names no level"),
        ("{time}", "", 'tag key "time" is reserved'),
        ("{a\tb}", "", "contains a tab"),
        ("{site}", "site", 'topic_tag "site" is also a {name}'),
        ("", "time", 'topic_tag: tag key "time" is reserved'),
    ],
)
def test_bad_patterns_are_config_errors_naming_pattern_and_element(
    pattern: str, topic_tag: str, fragment: str
) -> None:
    with pytest.raises(ValueError) as exc:
        TopicParsing.compile(pattern, topic_tag)
    assert not isinstance(exc.value, PayloadError)
    message = str(exc.value)
    assert fragment in message and "\n" not in message
    if pattern and "topic_tag" not in fragment:
        assert json.dumps(pattern) in message


def test_special_characters_in_topic_levels_survive_the_write() -> None:
    measurement, tags = TopicParsing.compile("{measurement}/{site}/{k}", "topic").apply("my m,1/a b,c=d/x\\y")
    assert (measurement, tags) == ("my m,1", {"topic": "my m,1/a b,c=d/x\\y", "site": "a b,c=d", "k": "x\\y"})
    got = rows({"v": 1}, JsonOptions(), measurement=measurement, tags=tags)
    assert got == [{"_table": "my m,1", "_time": ARRIVAL, **tags, "v": 1.0}]


# -- JsonOptions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"time_format": "seconds"}, 'time_format "seconds" is unknown: use auto, s, ms, us, ns, rfc3339'),
        ({"measurement": "m", "measurement_key": "k"}, "measurement or measurement_key, not both"),
        ({"measurement": "#m"}, "starts with #"),
        ({"tag_keys": ("a",), "field_keys": ("a",)}, 'key "a" is in both tag_keys and field_keys'),
        ({"tag_keys": ("t",), "time_key": "t"}, 'key "t" is in both tag_keys and time_key'),
        ({"field_keys": ("n",), "measurement_key": "n"}, 'key "n" is in both field_keys and measurement_key'),
    ],
)
def test_bad_json_options_are_config_errors(kw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        JsonOptions(**kw)


def test_json_options_accept_lists_from_config() -> None:
    opts = JsonOptions(tag_keys=["a"], field_keys=["b"])  # type: ignore[arg-type]
    assert opts.tag_keys == ("a",) and opts.field_keys == ("b",)
    assert hash(opts) == hash(JsonOptions(tag_keys=("a",), field_keys=("b",)))


# -- json_to_lines: shapes ------------------------------------------------------------------


def test_object_becomes_one_line_at_arrival_time() -> None:
    body, errors = convert({"temp": 21.5, "ok": True, "state": "idle"})
    assert errors == []
    assert body == b'm temp=21.5,ok=true,state="idle" ' + str(ARRIVAL).encode()
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "temp": 21.5, "ok": True, "state": "idle"}]
    assert kinds(body) == {"temp": ColumnType.FLOAT, "ok": ColumnType.BOOLEAN, "state": ColumnType.STRING}


def test_array_of_objects_becomes_one_line_each() -> None:
    got = rows([{"v": 1}, {"v": 2, "w": 3}, {"w": 4}])
    assert [{k: v for k, v in r.items() if k != "_time"} for r in got] == [
        {"_table": "m", "v": 1.0},
        {"_table": "m", "v": 2.0, "w": 3.0},
        {"_table": "m", "w": 4.0},
    ]


def test_empty_array_is_nothing_to_write() -> None:
    assert convert([]) == (b"", [])


def test_integers_and_floats_are_both_float_fields() -> None:
    first, _ = convert({"temp": 21})
    second, _ = convert({"temp": 21.5})
    body = first + b"\n" + second
    assert [r["temp"] for r in read(body)] == [21.0, 21.5]
    assert kinds(body) == {"temp": ColumnType.FLOAT}


@pytest.mark.parametrize(
    "value", [0, -3, 1e20, 10**30, 1.5e-7, -0.0, 5e-324, 1.7976931348623157e308, 2**53 + 1, 123456789.125]
)
def test_every_json_number_reads_back_as_that_float(value: int | float) -> None:
    (row,) = rows({"v": value})
    assert row["v"] == float(value) and isinstance(row["v"], float)


def test_nested_objects_and_arrays_are_flattened_with_underscores() -> None:
    payload = {"a": {"b": 1, "c": [2, 3]}, "d": [{"e": True}, [4]], "f": {}, "g": []}
    (row,) = rows(payload)
    assert row == {
        "_table": "m",
        "_time": ARRIVAL,
        "a_b": 1.0,
        "a_c_0": 2.0,
        "a_c_1": 3.0,
        "d_0_e": True,
        "d_1_0": 4.0,
    }


def test_tag_field_and_time_keys_name_flattened_keys() -> None:
    opts = JsonOptions(measurement="m", tag_keys=("meta_id",), field_keys=("data_t",), time_key="meta_ts")
    (row,) = rows({"meta": {"id": "x", "ts": 1_700_000_000}, "data": {"t": 20, "h": 30}}, opts)
    assert row == {"_table": "m", "_time": 1_700_000_000 * SECOND, "meta_id": "x", "data_t": 20.0}


def test_a_key_flattened_twice_keeps_the_first_value_and_says_so() -> None:
    body, errors = convert(json.loads('{"a_b": 1, "a": {"b": 2}, "c": 3}'))
    assert read(body)[0] == {"_table": "m", "_time": ARRIVAL, "a_b": 1.0, "c": 3.0}
    assert errors == ['key "a_b": appears twice once nested keys are joined with _; first kept']


def test_null_fields_are_skipped() -> None:
    (row,) = rows({"a": None, "b": 1})
    assert row == {"_table": "m", "_time": ARRIVAL, "b": 1.0}


def test_deep_nesting_is_one_error_not_a_crash() -> None:
    assert convert(b'{"a":' * 5000 + b"1" + b"}" * 5000) == (b"", ["invalid JSON: nested too deeply"])
    assert convert(b"[" * 100_000 + b"]" * 100_000) == (b"", ["invalid JSON: nested too deeply"])
    (row,) = rows(json.loads('{"a":' * 200 + "1" + "}" * 200))  # deep but fine: one long key
    assert row["a" + "_a" * 199] == 1.0


# -- json_to_lines: measurement and tags ----------------------------------------------------


def test_measurement_precedence_key_then_topic_then_option() -> None:
    assert rows({"v": 1}, JsonOptions(measurement="cfg"))[0]["_table"] == "cfg"
    assert rows({"v": 1}, JsonOptions(measurement="cfg"), measurement="topic")[0]["_table"] == "topic"
    opts = JsonOptions(measurement_key="kind")
    assert rows({"kind": "payload", "v": 1}, opts, measurement="topic") == [
        {"_table": "payload", "_time": ARRIVAL, "v": 1.0}
    ]


@pytest.mark.parametrize(
    ("point", "fragment"),
    [
        ({"v": 1}, 'key "kind": missing'),
        ({"kind": 3, "v": 1}, 'key "kind": the measurement must be a string, got a number'),
        ({"kind": None, "v": 1}, "got null"),
        ({"kind": "", "v": 1}, 'measurement "" is empty'),
        ({"kind": "#x", "v": 1}, "starts with #"),
    ],
)
def test_bad_measurement_key_value_drops_that_element(point: dict[str, Any], fragment: str) -> None:
    body, errors = convert([{"kind": "ok", "v": 0}, point], JsonOptions(measurement_key="kind"))
    assert [r["_table"] for r in read(body)] == ["ok"]
    assert len(errors) == 1 and errors[0].startswith("element 1: ") and fragment in errors[0]


def test_no_measurement_anywhere_is_one_error() -> None:
    assert convert([{"v": 1}, {"v": 2}], JsonOptions()) == (
        b"",
        ["no measurement: set measurement, measurement_key or {measurement} in topic_parsing"],
    )


def test_tag_keys_take_strings_numbers_and_bools_as_their_json_text() -> None:
    opts = JsonOptions(measurement="m", tag_keys=("s", "i", "f", "b", "n", "missing", "e"))
    (row,) = rows({"s": "x", "i": 3, "f": 2.5, "b": True, "n": None, "e": "", "v": 1}, opts)
    assert row == {"_table": "m", "_time": ARRIVAL, "s": "x", "i": "3", "f": "2.5", "b": "true", "v": 1.0}


def test_point_tags_override_topic_tags() -> None:
    opts = JsonOptions(measurement="m", tag_keys=("device",))
    got = rows([{"device": "d9", "v": 1}, {"v": 2}], opts, tags={"device": "topic", "site": "lab"})
    assert [(r["device"], r["site"]) for r in got] == [("d9", "lab"), ("topic", "lab")]


def test_a_field_named_like_a_tag_is_left_out_with_a_reason() -> None:
    body, errors = convert({"device": "d1", "v": 1}, tags={"device": "topic"})
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "device": "topic", "v": 1.0}]
    assert errors == [
        'key "device": is also a tag of this point (add it to tag_keys to let the payload set the tag); '
        "field left out"
    ]


def test_a_field_named_time_is_left_out_with_a_reason() -> None:
    body, errors = convert({"time": 5, "v": 1})
    assert read(body)[0] == {"_table": "m", "_time": ARRIVAL, "v": 1.0}
    assert errors == ['key "time": field key "time" is reserved for the timestamp column; field left out']


# -- json_to_lines: fields ------------------------------------------------------------------


def test_field_keys_pick_exactly_those_keys() -> None:
    opts = JsonOptions(measurement="m", field_keys=("temp", "absent", "hum"))
    (row,) = rows({"temp": 1, "hum": 2, "noise": 3}, opts)
    assert row == {"_table": "m", "_time": ARRIVAL, "temp": 1.0, "hum": 2.0}


def test_no_field_keys_present_is_no_fields() -> None:
    body, errors = convert({"noise": 3}, JsonOptions(measurement="m", field_keys=("temp", "hum")))
    assert body == b"" and errors == ['no fields (field_keys: "temp", "hum")']


def test_point_without_fields_is_an_error_for_that_element() -> None:
    opts = JsonOptions(measurement="m", tag_keys=("id",), time_key="ts")
    body, errors = convert([{"id": "a", "ts": 1}, {"id": "b", "v": None}, {"id": "c", "v": 1}], opts)
    assert [r["id"] for r in read(body)] == ["c"]
    assert errors == ["element 0: no fields", "element 1: no fields"]


def test_nan_and_infinity_are_skipped_with_a_reason() -> None:
    body, errors = convert(b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1, "e": 1e400}')
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "d": 1.0}]
    assert errors == [
        'key "a": NaN is not a finite number; field left out',
        'key "b": Infinity is not a finite number; field left out',
        'key "c": -Infinity is not a finite number; field left out',
        'key "e": Infinity is not a finite number; field left out',
    ]


def test_integer_too_large_for_a_float_is_skipped() -> None:
    body, errors = convert(b'{"a": 1' + b"0" * 400 + b', "b": 2}')
    assert read(body)[0]["b"] == 2.0 and "a" not in read(body)[0]
    assert (
        len(errors) == 1
        and errors[0].startswith('key "a": number 1000')
        and "too large for a float" in errors[0]
    )


# -- json_to_lines: time --------------------------------------------------------------------

T0 = unix_ns("2026-11-28T10:00:00")


@pytest.mark.parametrize(
    ("time_format", "value", "expected"),
    [
        ("s", 1_700_000_000, 1_700_000_000 * SECOND),
        ("s", 1_700_000_000.5, 1_700_000_000_500_000_000),
        ("s", "1700000000.123456789", 1_700_000_000_123_456_789),
        ("s", -1.5, -1_500_000_000),
        ("ms", 1_700_000_000_123, 1_700_000_000_123_000_000),
        ("ms", 1_700_000_000_123.25, 1_700_000_000_123_250_000),
        ("us", 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        ("us", "1700000000123456.5", 1_700_000_000_123_456_500),
        ("ns", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ("ns", "1700000000123456789", 1_700_000_000_123_456_789),
        ("ns", 0, 0),
        ("rfc3339", "2026-11-28T10:00:00Z", T0),
        ("rfc3339", "2026-11-28T10:00:00.123456789Z", T0 + 123_456_789),
        ("rfc3339", "2026-11-28T10:00:00.5Z", T0 + 500_000_000),
        ("rfc3339", "2026-11-28T10:00:00.000000001+01:00", T0 - 3600 * SECOND + 1),
        ("rfc3339", "2026-11-28T10:00:00.123456789+01:00", T0 - 3600 * SECOND + 123_456_789),
        ("rfc3339", "2026-11-28T10:00:00-05:30", T0 + 19_800 * SECOND),
        ("rfc3339", "2026-11-28t10:00:00z", T0),
        ("rfc3339", "2026-11-28 10:00:00Z", T0),
        ("rfc3339", "2026-11-28T10:00:00.1234567891Z", T0 + 123_456_789),  # past ns: cut
        ("rfc3339", "1969-12-31T23:59:59.999999999Z", -1),
        ("auto", 1_700_000_000, 1_700_000_000 * SECOND),  # seconds
        ("auto", 1_700_000_000.25, 1_700_000_000_250_000_000),
        ("auto", 4_999_999_999, 4_999_999_999 * SECOND),  # last value read as seconds
        ("auto", 5_000_000_000, 5_000_000_000_000_000),  # first value read as ms
        ("auto", 1_700_000_000_123, 1_700_000_000_123_000_000),  # ms
        ("auto", 1_700_000_000_123_456, 1_700_000_000_123_456_000),  # us
        ("auto", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),  # ns
        ("auto", "1700000000", 1_700_000_000 * SECOND),  # a numeric string is a number
        ("auto", "2026-11-28T10:00:00.000000042+00:00", T0 + 42),
    ],
)
def test_time_formats(time_format: str, value: Any, expected: int) -> None:
    opts = JsonOptions(measurement="m", time_key="ts", time_format=time_format)
    (row,) = rows({"ts": value, "v": 1}, opts)
    assert row == {"_table": "m", "_time": expected, "v": 1.0}


def test_time_matches_line_protocol_auto_precision() -> None:
    opts = JsonOptions(measurement="m", time_key="ts")
    for value in (1, 4_999_999_999, 5_000_000_000, 4_999_999_999_999, 5 * 10**12, 5 * 10**15, -7 * 10**12):
        (row,) = rows({"ts": value, "v": 1}, opts)
        (same,) = read(f"m v=1 {value}".encode(), Precision.AUTO)
        assert row["_time"] == same["_time"], value


@pytest.mark.parametrize(
    ("time_format", "value", "fragment"),
    [
        ("s", "soon", 'key "ts": "soon" is not a number of seconds'),
        ("ms", True, 'key "ts": true is not a number of milliseconds'),
        ("ns", "1700000000123456789x", "is not a number of nanoseconds"),
        (
            "rfc3339",
            1_700_000_000,
            'key "ts": 1700000000 is not an RFC 3339 time such as 2026-11-28T10:00:00Z',
        ),
        ("rfc3339", "2026-11-28T10:00:00", "is not an RFC 3339 time"),  # no offset
        ("rfc3339", "2026-11-28", "is not an RFC 3339 time"),
        ("rfc3339", "2026-13-01T00:00:00Z", 'key "ts": "2026-13-01T00:00:00Z" is not a valid date and time'),
        ("rfc3339", "2026-02-30T00:00:00Z", "is not a valid date and time"),
        ("rfc3339", "2026-11-28T10:00:00+24:00", "has an invalid UTC offset +24:00"),
        ("rfc3339", "2026-11-28T10:00:00.Z", "is not an RFC 3339 time"),
        ("auto", "yesterday", 'key "ts": "yesterday" is not an RFC 3339 time'),
        ("auto", False, "is not a number (s, ms, us or ns, guessed from its size) or an RFC 3339 time"),
        ("s", 1e300, "is out of range (1677-09-22T00:00:00Z to 2262-04-10T23:59:59.999999999Z)"),
        ("ns", -(2**63), "is out of range"),
        ("ns", 2**63 - 1, "is out of range"),
        ("s", 9_223_286_400, "is out of range"),
        ("rfc3339", "2262-04-11T00:00:00Z", "is out of range"),
        ("rfc3339", "1677-09-21T23:59:59.999999999Z", "is out of range"),
        ("ns", 2**63, "is out of range"),
        ("s", "1e99999999999999999999", "is out of range"),
        ("rfc3339", "2300-01-01T00:00:00Z", "is out of range"),
    ],
)
def test_unreadable_time_drops_the_element_naming_key_and_value(
    time_format: str, value: Any, fragment: str
) -> None:
    opts = JsonOptions(measurement="m", time_key="ts", time_format=time_format)
    body, errors = convert([{"v": 1}, {"ts": value, "v": 2}], opts)
    assert [r["v"] for r in read(body)] == [1.0]
    assert len(errors) == 1 and errors[0].startswith("element 1: ") and fragment in errors[0], errors


def test_missing_or_null_time_key_means_arrival_time() -> None:
    opts = JsonOptions(measurement="m", time_key="ts", time_format="s")
    got = rows([{"v": 1}, {"ts": None, "v": 2}], opts)
    assert [r["_time"] for r in got] == [ARRIVAL, ARRIVAL]


def test_time_key_is_not_a_field() -> None:
    opts = JsonOptions(measurement="m", time_key="ts", time_format="s")
    body, errors = convert({"ts": 1, "v": 1}, opts)
    assert body == b"m v=1.0 1000000000" and errors == []


# -- json_to_lines: bad payloads ------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v": ', "invalid JSON at line 1 column 7: Expecting value"),
        (b'{\n  "v": 1\n  "w": 2\n}', "invalid JSON at line 3 column 3: Expecting ',' delimiter"),
        (b"", "invalid JSON at line 1 column 1: Expecting value"),
        (b"21.5", "payload must be a JSON object or an array of objects, got a number"),
        (b'"hello"', "payload must be a JSON object or an array of objects, got a string"),
        (b"null", "payload must be a JSON object or an array of objects, got null"),
        (b'{"v": 1}\xff', "payload is not UTF-8: invalid byte at offset 8"),
    ],
)
def test_unusable_payload_gives_one_reason_and_nothing_to_write(payload: bytes, reason: str) -> None:
    assert convert(payload) == (b"", [reason])


def test_bom_is_accepted() -> None:
    assert read(convert(b'\xef\xbb\xbf{"v": 1}')[0])[0]["v"] == 1.0


def test_bad_elements_do_not_affect_good_ones() -> None:
    opts = JsonOptions(measurement="m", time_key="ts", time_format="s")
    payload = [{"v": 1}, 3, "x", [1], None, {"v": 2, "ts": "later"}, {"v": 3, "w": float("nan")}, {"v": 4}]
    body, errors = convert(json.dumps(payload).encode(), opts)
    assert [r["v"] for r in read(body)] == [1.0, 3.0, 4.0]
    assert errors == [
        "element 1: must be a JSON object, got a number",
        "element 2: must be a JSON object, got a string",
        "element 3: must be a JSON object, got an array",
        "element 4: must be a JSON object, got null",
        'element 5: key "ts": "later" is not a number of seconds',
        'element 6: key "w": NaN is not a finite number; field left out',
    ]


# -- escaping -------------------------------------------------------------------------------

NASTY = [
    "a b",
    "a,b",
    "a=b",
    'a"b',
    "a\\b",
    "a\\\\b",
    "a\\,b",
    "a\\ b",
    "a\\=b",
    "a\\\\,b",
    '\\"',
    " lead",
    "trail ",
    "  ",
    ",",
    "=",
    "#hash",
    "ünï cödé 😀",
]


@pytest.mark.parametrize("text", NASTY)
def test_names_and_values_round_trip_in_every_position(text: str) -> None:
    measurement = "m" + text  # a measurement cannot start with #; the rest is covered
    opts = JsonOptions(tag_keys=("k" + text,))
    payload = {"k" + text: text, "f" + text: text, "n": 1}
    got = rows(payload, opts, measurement=measurement, tags={"t" + text: text + "!"})
    assert got == [
        {
            "_table": measurement,
            "_time": ARRIVAL,
            "t" + text: text + "!",
            "k" + text: text,
            "f" + text: text,
            "n": 1.0,
        }
    ]


def test_escaped_output_is_the_expected_text() -> None:
    opts = JsonOptions(tag_keys=("t k",))
    body, _ = convert({"t k": "a,b=c", "f=x": 'say "hi" \\o/', "g\\h": 1}, opts, measurement="my m,x=y")
    assert (
        body == b'my\\ m\\,x=y,t\\ k=a\\,b\\=c f\\=x="say \\"hi\\" \\\\o/",g\\h=1.0 ' + str(ARRIVAL).encode()
    )


@pytest.mark.parametrize(
    ("payload", "opts", "reason"),
    [
        (
            {"s": "two\nlines", "v": 1},
            None,
            'key "s": string value "two\\nlines" contains a line break; field left out',
        ),
        ({"s": "cr\r", "v": 1}, None, 'key "s": string value "cr\\r" contains a line break; field left out'),
        ({"a\nb": 1, "v": 1}, None, 'key "a\\nb": field key "a\\nb" contains a line break'),
        ({"a\tb": 1, "v": 1}, None, 'key "a\\tb": field key "a\\tb" contains a tab'),
        ({"a\\": 1, "v": 1}, None, 'key "a\\\\": field key "a\\\\" ends with a backslash'),
        ({"": 1, "v": 1}, None, 'key "": field key "" is empty; field left out'),
        (
            {"t": "x\ty", "v": 1},
            JsonOptions(measurement="m", tag_keys=("t",)),
            'tag value "x\\ty" contains a tab',
        ),
        (
            {"t": "x\\", "v": 1},
            JsonOptions(measurement="m", tag_keys=("t",)),
            "ends with a backslash, which line protocol cannot carry; tag left out",
        ),
        (
            {"t\n": "x", "v": 1},
            JsonOptions(measurement="m", tag_keys=("t\n",)),
            'tag key "t\\n" contains a line',
        ),
        (
            {"time": "x", "v": 1},
            JsonOptions(measurement="m", tag_keys=("time",)),
            'tag key "time" is reserved',
        ),
    ],
)
def test_what_line_protocol_cannot_carry_is_left_out_with_a_reason(
    payload: dict[str, Any], opts: JsonOptions | None, reason: str
) -> None:
    body, errors = convert(payload, opts)
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "v": 1.0}]
    assert len(errors) == 1 and reason in errors[0], errors


def test_unrepresentable_topic_tag_is_left_out_with_a_reason() -> None:
    body, errors = convert({"v": 1}, tags={"site": "a\tb", "ok": "yes", "empty": ""})
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "ok": "yes", "v": 1.0}]
    assert errors == [
        'topic tag "site": tag value "a\\tb" contains a tab, which line protocol cannot carry; tag left out'
    ]


@pytest.mark.parametrize("bad", ["\x00", "\x7f", "\u200b", "\u202e", "\ufeff", "\u2028", "\ue000"])
def test_names_with_control_or_invisible_characters_are_left_out_and_values_kept(bad: str) -> None:
    body, errors = convert({"usage" + bad: 2, "v": 1, "s": "a" + bad}, JsonOptions(measurement="m"))
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "v": 1.0, "s": "a" + bad}]
    assert len(errors) == 1 and errors[0].startswith('key "usage') and ": field key" in errors[0]
    assert f"contains U+{ord(bad):04X}" in errors[0] and errors[0].endswith("field left out")
    body, errors = convert({"v": 1, "t": "x" + bad}, JsonOptions(measurement="m", tag_keys=("t",)))
    assert read(body) == [{"_table": "m", "_time": ARRIVAL, "v": 1.0, "t": "x" + bad}] and errors == []
    body, errors = convert({"v": 1}, measurement="m" + bad)
    assert body == b"" and f"contains U+{ord(bad):04X}" in errors[0]


def test_unrepresentable_measurement_from_topic_or_payload() -> None:
    assert convert({"v": 1}, measurement="#m") == (
        b"",
        ['measurement "#m" starts with #, which line protocol reads as a comment'],
    )
    body, errors = convert({"kind": "a\nb", "v": 1}, JsonOptions(measurement_key="kind"))
    assert body == b"" and errors == [
        'key "kind": measurement "a\\nb" contains a line break, which line protocol cannot carry'
    ]


# Printable text: no control characters (so no newline, tab or NUL) and no lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
VALUE = TEXT.filter(lambda s: s != "" and not s.endswith("\\"))
NAME = VALUE.filter(lambda s: s != "time" and name_problem(s) is None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    measurement=NAME.filter(lambda s: not s.startswith("#")),
    tag_key=NAME,
    tag_value=VALUE,
    field_key=NAME,
    string=TEXT,
    topic_tag=st.tuples(NAME, VALUE),
)
def test_arbitrary_printable_names_and_values_round_trip_exactly(
    measurement: str, tag_key: str, tag_value: str, field_key: str, string: str, topic_tag: tuple[str, str]
) -> None:
    assume(len({tag_key, field_key, topic_tag[0], "n"}) == 4)
    opts = JsonOptions(tag_keys=(tag_key,))
    payload = [
        {tag_key: tag_value, field_key: string, "n": 1.5},
        {tag_key: tag_value + "2", field_key: string + '"'},
    ]
    body, errors = convert(payload, opts, measurement=measurement, tags=dict([topic_tag]))
    assert errors == []
    common = {"_table": measurement, "_time": ARRIVAL, topic_tag[0]: topic_tag[1]}
    assert read(body) == [
        {**common, tag_key: tag_value, field_key: string, "n": 1.5},
        {**common, tag_key: tag_value + "2", field_key: string + '"'},
    ]


# -- retag_lines ----------------------------------------------------------------------------


def test_retag_without_topic_data_returns_the_body_unchanged() -> None:
    body = b"m,t=1 f=1 5\nnot line protocol at all"
    assert retag_lines(body, None, {}) is body


def test_retag_adds_topic_tags() -> None:
    out = retag_lines(b"cpu,host=a usage=1.5 10", None, {"site": "lab", "rack": "r1"})
    assert out == b"cpu,host=a,site=lab,rack=r1 usage=1.5 10"
    assert read(out) == [
        {"_table": "cpu", "_time": 10, "host": "a", "site": "lab", "rack": "r1", "usage": 1.5}
    ]


def test_retag_replaces_the_measurement() -> None:
    out = retag_lines(b"cpu,host=a usage=1.5 10\nmem free=2i 20", "from topic", {})
    assert [r["_table"] for r in read(out)] == ["from topic", "from topic"]
    assert out == b"from\\ topic,host=a usage=1.5 10\nfrom\\ topic free=2i 20"


def test_retag_keeps_the_payloads_own_tags() -> None:
    out = retag_lines(b"m,site=payload f=1 1", None, {"site": "topic", "extra": "x"})
    assert read(out) == [{"_table": "m", "_time": 1, "site": "payload", "extra": "x", "f": 1.0}]


def test_retag_handles_escapes_in_the_payload() -> None:
    body = b'my\\ m\\,1,a\\,b=c\\ d,e\\=f=g\\,h f\\ 1="x, y=z \\"q\\"",g=1i 5'
    out = retag_lines(body, None, {"a,b": "topic", "e=f": "topic", "new tag": "v,1=2"})
    assert read(out) == [
        {
            "_table": "my m,1",
            "_time": 5,
            "a,b": "c d",
            "e=f": "g,h",
            "new tag": "v,1=2",
            "f 1": 'x, y=z "q"',
            "g": 1,
        }
    ]
    renamed = retag_lines(body, "n", {})
    assert renamed == b'n,a\\,b=c\\ d,e\\=f=g\\,h f\\ 1="x, y=z \\"q\\"",g=1i 5'


def test_retag_keeps_comments_blank_lines_whitespace_and_crlf() -> None:
    body = b"# a comment,with=stuff x=1\n\n   \n  cpu v=1 1\r\n\tmem v=2 2\r\n#another\n"
    out = retag_lines(body, None, {"site": "lab"})
    assert (
        out
        == b"# a comment,with=stuff x=1\n\n   \n  cpu,site=lab v=1 1\r\n\tmem,site=lab v=2 2\r\n#another\n"
    )
    assert [(r["_table"], r["site"]) for r in read(out)] == [("cpu", "lab"), ("mem", "lab")]


def test_retag_does_not_touch_the_continuation_of_a_multiline_string() -> None:
    body = b'm s="first\nnot,a=series key",n=1 1\nm2 v=2 2\nm3 s="end\\\\" 3'
    out = retag_lines(body, None, {"site": "lab"})
    assert (
        out == b'm,site=lab s="first\nnot,a=series key",n=1 1\nm2,site=lab v=2 2\nm3,site=lab s="end\\\\" 3'
    )
    assert [r.get("s") for r in read(out)] == ["first\nnot,a=series key", None, "end\\"]


def test_retag_keeps_lines_that_do_not_parse_as_they_are() -> None:
    bad = [
        b"garbage",
        b",t=1 f=1",
        b"m,novalue f=1",
        b"m,=v f=1",
        b"m,k= f=1",
        b"m\\\\ f=1",
        b"m,t=v\\\\ f=1",
        b"m\tx f=1",
    ]
    body = b"\n".join([b"ok v=1 1", *bad])
    out = retag_lines(body, "new", {"site": "lab"})
    assert out.split(b"\n") == [b"new,site=lab v=1 1", *bad]
    result = parse(out, Precision.NS, NOW)
    assert result.tables[0].num_rows == 1 and len(result.errors) == len(bad)


def test_retag_lists_the_first_unreadable_lines_and_counts_the_rest() -> None:
    body = b"x\n" * 1000 + b"ok v=1 1"
    errors = Reasons()
    out = retag_lines(body, None, {"dev": "a"}, errors)
    assert out.endswith(b"\nok,dev=a v=1 1") and out.count(b"\n") == 1000
    assert len(errors) == MAX_REASONS and errors.omitted == 1000 - MAX_REASONS and errors.total == 1000
    assert errors[0].startswith("line 1: its series key") and errors[-1].startswith(f"line {MAX_REASONS}:")
    plain: list[str] = []  # a plain list gets the listed ones and one line counting the rest
    retag_lines(body, None, {"dev": "a"}, plain)
    assert (
        plain[:-1] == errors
        and plain[-1] == f"and {1000 - MAX_REASONS} more lines whose series key could not be read"
    )


def test_json_array_of_junk_lists_the_first_reasons_and_counts_the_rest() -> None:
    payload = json.dumps([{"a": []}] * 1000 + [{"v": 1}]).encode()
    body, errors = json_to_lines(payload, JsonOptions(measurement="m"), None, {}, 7)
    assert body == b"m v=1.0 7"
    assert len(errors) == MAX_REASONS and errors.total == 1000
    assert errors[0] == "element 0: no fields" and errors[-1] == f"element {MAX_REASONS - 1}: no fields"


def test_reasons_keep_the_first_ones_and_count_the_rest() -> None:
    r = Reasons(limit=2)
    r.extend(["a", "b", "c"])
    r.append("d")
    inner = Reasons(limit=1)
    inner.extend(["e", "f"])
    r.extend(inner)
    assert r == ["a", "b"] and r.omitted == 4 and r.total == 6


def test_retag_keeps_bytes_that_are_not_utf8() -> None:
    body = b"m,t=\xff v=1 1\nm v=\xfe 2"
    assert retag_lines(body, None, {"a": "b"}) == b"m,t=\xff,a=b v=1 1\nm,a=b v=\xfe 2"


def test_retag_leaves_timestamps_to_the_writes_precision() -> None:
    out = retag_lines(b"m v=1 1700000000", None, {"a": "b"})
    assert read(out, Precision.S) == [{"_table": "m", "_time": 1_700_000_000 * SECOND, "a": "b", "v": 1.0}]


def test_retag_ignores_values_line_protocol_cannot_carry() -> None:
    body = b"m v=1 1"
    assert retag_lines(body, "#x", {"": "v", "k": "a\nb"}) == body
    assert retag_lines(body, "a\tb", {"ok": "yes", "e": ""}) == b"m,ok=yes v=1 1"


def test_topic_parsing_and_retag_together() -> None:
    measurement, tags = TopicParsing.compile("_/{site}/{measurement}").apply("plant/hall 2/power/extra")
    out = retag_lines(b"meter,phase=1 watts=230.5 1\nmeter,phase=2 watts=231 2", measurement, tags)
    assert read(out) == [
        {"_table": "power", "_time": 1, "phase": "1", "site": "hall 2", "watts": 230.5},
        {"_table": "power", "_time": 2, "phase": "2", "site": "hall 2", "watts": 231.0},
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    measurement=st.none() | NAME.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(NAME, VALUE, max_size=3),
    own_key=NAME,
    own_value=VALUE,
    string=TEXT,
)
def test_retag_round_trips_arbitrary_names(
    measurement: str | None, tags: dict[str, str], own_key: str, own_value: str, string: str
) -> None:
    assume("s" not in tags and own_key != "s")
    body, errors = convert(
        {own_key: own_value, "s": string}, JsonOptions(tag_keys=(own_key,)), measurement="orig"
    )
    assert errors == []
    row = {
        **tags,
        own_key: own_value,  # the payload's own tag wins
        "_table": measurement if measurement is not None else "orig",
        "_time": ARRIVAL,
        "s": string,
    }
    assert read(retag_lines(body + b"\n# note\n" + body, measurement, tags)) == [row, row]


def test_every_short_string_of_escape_characters_round_trips() -> None:
    """All strings of up to 4 characters from the ones escaping is about, in every position."""
    alphabet = '\\ ,="a#'
    texts = [""]
    for _ in range(4):
        texts += [t + c for t in texts if len(t) == len(texts[-1]) for c in alphabet]
    texts = sorted(set(texts))
    bodies, expected = [], []
    for text in texts:
        if text.endswith("\\"):
            continue  # cannot be carried; covered above
        opts = JsonOptions(measurement_key="kind", tag_keys=("k" + text,))
        body, errors = convert({"kind": "m" + text, "k" + text: "v" + text, "f" + text: text}, opts)
        assert errors == []
        bodies.append(body)
        expected.append({"_table": "m" + text, "_time": ARRIVAL, "k" + text: "v" + text, "f" + text: text})
    assert len(expected) > 2000
    assert read(b"\n".join(bodies)) == expected


def test_retag_lines_reports_lines_it_cannot_retag() -> None:
    errors: list[str] = []
    out = retag_lines(b"m,t,=v f=1 1\ncpu,h=a u=1 2", None, {"site": "x"}, errors)
    assert out == b"m,t,=v f=1 1\ncpu,h=a,site=x u=1 2"
    assert errors == ["line 1: its series key could not be read, so the topic tags were not added"]


def _loads_problem(text: str) -> str | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except (ValueError, RecursionError):
        return "other"
    return None


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["", " ", "\n "]),
    st.text(st.sampled_from(list(' \n[]{},:"1a-.e0tnulrs\\')), max_size=30),
    st.sampled_from(["", "]", '{"v":1}]', "1,2]"]),
)
def test_arrays_read_element_by_element_fail_as_json_loads_does(lead: str, middle: str, tail: str) -> None:
    text = lead + "[" + middle + tail
    body, errors = json_to_lines(text.encode(), JsonOptions(measurement="m"), None, {}, 7)
    want = _loads_problem(text)
    if want is None:
        assert not any(e.startswith("invalid JSON") for e in errors), (text, errors)
    elif want != "other":
        assert errors == [want] and body == b"", (text, errors)


def test_a_large_array_is_not_held_as_objects_all_at_once() -> None:
    import tracemalloc

    payload = b"[" + b",".join([b'{"a":[],"v":1}'] * 100_000) + b"]"
    tracemalloc.start()
    body, errors = json_to_lines(payload, JsonOptions(measurement="m"), None, {}, 7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert body.count(b"\n") == 99_999 and errors == []
    assert peak < 20 << 20, peak  # ~10 MB: the lines themselves (was 33 MB with every element parsed at once)
