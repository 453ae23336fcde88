"""JSON payloads to line protocol: options, shapes, tags, fields, escaping and bad payloads, each
output read back by the real line protocol parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from appliance.model import ColumnType
from appliance.mqtt.jsonlines import JsonOptions, json_to_lines
from appliance.mqtt.reasons import MAX_REASONS
from tests.mqtt.readback import ARRIVAL, NAME, SECOND, TEXT, VALUE, convert, kinds, read, rows

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


def test_json_array_of_junk_lists_the_first_reasons_and_counts_the_rest() -> None:
    payload = json.dumps([{"a": []}] * 1000 + [{"v": 1}]).encode()
    body, errors = json_to_lines(payload, JsonOptions(measurement="m"), None, {}, 7)
    assert body == b"m v=1.0 7"
    assert len(errors) == MAX_REASONS and errors.total == 1000
    assert errors[0] == "element 0: no fields" and errors[-1] == f"element {MAX_REASONS - 1}: no fields"


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
