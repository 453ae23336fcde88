"""Trigger specs, schedules (every/cron), request-response shaping and trigger arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from appliance.engine.triggers import (
    NEVER,
    Schedule,
    TriggerSpec,
    flask_response,
    parse_humantime_ns,
    parse_spec,
    parse_trigger_arguments,
)
from appliance.errors import BadRequest

S = 1_000_000_000
FORMS = (
    "expect one of the following forms: 'table:<TABLE_NAME>', 'all_tables', "
    "'cron:<CRON_EXPRESSION>', 'every:<DURATION>', or 'request:<PATH>'"
)


def ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Nanoseconds since the epoch of a UTC wall-clock time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * S


def fires(spec: str, start_ns: int, n: int) -> list[str]:
    """The next `n` fire times after `start_ns`, as 'Dow YYYY-MM-DD HH:MM:SS' in UTC."""
    schedule = Schedule(parse_spec(spec))
    out, t = [], start_ns
    for _ in range(n):
        t = schedule.next_after(t)
        out.append(Schedule.call_time(t).strftime("%a %Y-%m-%d %H:%M:%S"))
    return out


# -- spec parsing -----------------------------------------------------------------------------


def test_table_spec_trims_the_name() -> None:
    spec = parse_spec("  table:  cpu  ")
    assert spec == TriggerSpec("wal", "table:cpu", table="cpu")


def test_all_tables_spec() -> None:
    assert parse_spec(" all_tables ") == TriggerSpec("wal", "all_tables")


def test_every_spec() -> None:
    spec = parse_spec("every: 1h 30m")
    assert (spec.kind, spec.text, spec.every_ns) == ("schedule", "every:1h 30m", 5400 * S)
    assert spec.cron is None and spec.table is None and spec.path is None


def test_cron_spec_normalises_whitespace() -> None:
    spec = parse_spec("cron:  0  *  * * * * ")
    assert (spec.kind, spec.text, spec.cron) == ("schedule", "cron:0 * * * * *", "0 * * * * *")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("request:hook", "hook"),
        ("request:/hook", "hook"),
        ("request:a/b/c", "a/b/c"),
        ("path:hook", "hook"),
        ("path:/v1/ingest", "v1/ingest"),
        (" request: spaced ", "spaced"),
    ],
)
def test_request_and_path_specs(text: str, path: str) -> None:
    assert parse_spec(text) == TriggerSpec("request", f"request:{path}", path=path)


@pytest.mark.parametrize(
    "text",
    ["", "tables:cpu", "all_tables:x", "ALL_TABLES", "foo", "cron", "schedule:* * * * * *", "Table:cpu"],
)
def test_unknown_specs_give_the_reference_message(text: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_spec(text)
    assert err.value.message == f"failed to parse trigger from {text.strip()}: {FORMS}"
    assert err.value.http_status == 400


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("table:", "table name is empty"),
        ("table:   ", "table name is empty"),
        ("request:", "request path is empty"),
        ("path:/", "request path is empty"),
        ("request:a b", "cannot contain"),
        ("request:a?b=1", "cannot contain"),
        ("every:", "empty"),
        ("every:10", "needs a unit"),
        ("every:10 parsecs", "unknown unit 'parsecs'"),
        ("every:1.5h", "fractions are not supported"),
        ("every:5m!", "cannot read '!'"),
        ("every:10S", "unknown unit 'S'"),
        ("every:0s", "shorter than the 1ms minimum"),
        ("every:999us", "shorter than the 1ms minimum"),
        ("every:1y 1s", "longer than the 1 year maximum"),
        ("every:366d", "longer than the 1 year maximum"),
        ("cron:", "has 0"),
        ("cron:* * * *", "has 4"),
        ("cron:* * * * * * * *", "has 8"),
    ],
)
def test_invalid_specs_explain_why(text: str, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_spec(text)
    message = err.value.message
    assert message.startswith(f"failed to parse trigger from {text.strip()}: {FORMS} (")
    assert reason in message


# -- to_json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("table:cpu", {"single_table_wal_write": {"table_name": "cpu"}}),
        ("all_tables", "all_tables_wal_write"),
        ("cron:0 * * * * *", {"schedule": {"schedule": "0 * * * * *"}}),
        ("cron:*/5 * * * *", {"schedule": {"schedule": "*/5 * * * *"}}),
        ("every:60s", {"every": {"duration": {"secs": 60, "nanos": 0}}}),
        ("every:1m", {"every": {"duration": {"secs": 60, "nanos": 0}}}),
        ("every:1500ms", {"every": {"duration": {"secs": 1, "nanos": 500_000_000}}}),
        ("request:foo", {"request_path": {"path": "foo"}}),
        ("path:/foo/bar", {"request_path": {"path": "foo/bar"}}),
    ],
)
def test_to_json_matches_influxdb_serde_form(text: str, expected: Any) -> None:
    out = parse_spec(text).to_json()
    assert json.loads(out) == expected
    assert " " not in out.replace("0 * * * * *", "").replace("*/5 * * * *", "")  # compact, like serde_json


def test_to_json_exact_strings() -> None:
    assert parse_spec("table:cpu").to_json() == '{"single_table_wal_write":{"table_name":"cpu"}}'
    assert parse_spec("all_tables").to_json() == '"all_tables_wal_write"'
    assert parse_spec("every:60s").to_json() == '{"every":{"duration":{"secs":60,"nanos":0}}}'
    assert parse_spec("request:foo").to_json() == '{"request_path":{"path":"foo"}}'
    assert (
        parse_spec("table:température").to_json() == '{"single_table_wal_write":{"table_name":"température"}}'
    )


# -- humantime --------------------------------------------------------------------------------

MIN = 60 * S
HOUR = 3600 * S
DAY = 86_400 * S


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5ns", 5),
        ("5nsec", 5),
        ("5us", 5_000),
        ("5usec", 5_000),
        ("5µs", 5_000),
        ("5ms", 5_000_000),
        ("5msec", 5_000_000),
        ("5s", 5 * S),
        ("5sec", 5 * S),
        ("1second", S),
        ("5seconds", 5 * S),
        ("5m", 5 * MIN),
        ("5min", 5 * MIN),
        ("1minute", MIN),
        ("5minutes", 5 * MIN),
        ("2h", 2 * HOUR),
        ("2hr", 2 * HOUR),
        ("2hrs", 2 * HOUR),
        ("1hour", HOUR),
        ("2hours", 2 * HOUR),
        ("3d", 3 * DAY),
        ("1day", DAY),
        ("3days", 3 * DAY),
        ("2w", 14 * DAY),
        ("2wk", 14 * DAY),
        ("1week", 7 * DAY),
        ("2weeks", 14 * DAY),
        ("1M", 2_630_016 * S),  # 30.44 days
        ("1month", 2_630_016 * S),
        ("2months", 2 * 2_630_016 * S),
        ("1y", 31_557_600 * S),  # 365.25 days
        ("1yr", 31_557_600 * S),
        ("1year", 31_557_600 * S),
        ("2years", 2 * 31_557_600 * S),
        ("1h 30m", 90 * MIN),
        ("1h30m", 90 * MIN),
        ("1d 2h 3m 4s", DAY + 2 * HOUR + 3 * MIN + 4 * S),
        ("1h30m15s500ms", 90 * MIN + 15 * S + 500_000_000),
        (" 10 s ", 10 * S),
    ],
)
def test_humantime_units(text: str, expected: int) -> None:
    assert parse_humantime_ns(text) == expected


def test_month_and_minute_are_case_sensitive() -> None:
    assert parse_humantime_ns("1M") != parse_humantime_ns("1m")


@pytest.mark.parametrize("text", ["1ms", "1000us", "1y", "365d", "52w", "11M", "8766h"])
def test_every_bounds_inclusive(text: str) -> None:
    assert parse_spec(f"every:{text}").every_ns == parse_humantime_ns(text)


# -- cron -------------------------------------------------------------------------------------

JAN1 = ns(2025, 1, 1)  # a Wednesday


def test_five_field_every_five_minutes() -> None:
    assert fires("cron:*/5 * * * *", ns(2025, 1, 1, 10, 17, 3), 3) == [
        "Wed 2025-01-01 10:20:00",
        "Wed 2025-01-01 10:25:00",
        "Wed 2025-01-01 10:30:00",
    ]


def test_five_field_weekdays_are_crontab_style() -> None:
    assert fires("cron:0 9 * * 1-5", JAN1, 6) == [
        "Wed 2025-01-01 09:00:00",
        "Thu 2025-01-02 09:00:00",
        "Fri 2025-01-03 09:00:00",
        "Mon 2025-01-06 09:00:00",
        "Tue 2025-01-07 09:00:00",
        "Wed 2025-01-08 09:00:00",
    ]


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_five_field_sunday_is_0_or_7(sunday: str) -> None:
    assert fires(f"cron:0 0 * * {sunday}", JAN1, 2) == ["Sun 2025-01-05 00:00:00", "Sun 2025-01-12 00:00:00"]


def test_five_field_day_of_month_or_day_of_week() -> None:
    # Crontab: with both restricted, a day matches either (the 13th, or any Friday).
    assert fires("cron:0 0 13 * 5", JAN1, 4) == [
        "Fri 2025-01-03 00:00:00",
        "Fri 2025-01-10 00:00:00",
        "Mon 2025-01-13 00:00:00",
        "Fri 2025-01-17 00:00:00",
    ]


def test_six_field_seconds_first() -> None:
    assert fires("cron:*/10 * * * * *", ns(2025, 1, 1, 0, 0, 5), 3) == [
        "Wed 2025-01-01 00:00:10",
        "Wed 2025-01-01 00:00:20",
        "Wed 2025-01-01 00:00:30",
    ]
    assert fires("cron:30 15 10 * * *", JAN1, 2) == ["Wed 2025-01-01 10:15:30", "Thu 2025-01-02 10:15:30"]


def test_six_field_sunday_is_1() -> None:
    assert fires("cron:0 0 12 * * 1", JAN1, 3) == [
        "Sun 2025-01-05 12:00:00",
        "Sun 2025-01-12 12:00:00",
        "Sun 2025-01-19 12:00:00",
    ]
    assert fires("cron:0 0 12 * * 7", JAN1, 1) == ["Sat 2025-01-04 12:00:00"]


MON_TO_FRI = [
    "Wed 2025-01-01 12:00:00",
    "Thu 2025-01-02 12:00:00",
    "Fri 2025-01-03 12:00:00",
    "Mon 2025-01-06 12:00:00",
    "Tue 2025-01-07 12:00:00",
    "Wed 2025-01-08 12:00:00",
]


@pytest.mark.parametrize("dow", ["2-6", "MON-FRI", "mon-fri", "Mon,Tue,Wed,Thu,Fri", "2,3,4,5,6", "2-6/1"])
def test_six_field_weekdays(dow: str) -> None:
    assert fires(f"cron:0 0 12 * * {dow}", JAN1, 6) == MON_TO_FRI


def test_six_field_day_of_week_list_and_step() -> None:
    assert fires("cron:0 0 0 * * 1,7", JAN1, 3) == [
        "Sat 2025-01-04 00:00:00",
        "Sun 2025-01-05 00:00:00",
        "Sat 2025-01-11 00:00:00",
    ]
    # */2 starts at 1 (Sunday): Sunday, Tuesday, Thursday, Saturday.
    assert fires("cron:0 0 0 * * */2", JAN1, 4) == [
        "Thu 2025-01-02 00:00:00",
        "Sat 2025-01-04 00:00:00",
        "Sun 2025-01-05 00:00:00",
        "Tue 2025-01-07 00:00:00",
    ]


def test_six_field_question_mark_and_month_names() -> None:
    assert fires("cron:0 0 12 ? * 1", JAN1, 1) == ["Sun 2025-01-05 12:00:00"]
    assert fires("cron:0 0 0 1 * ?", JAN1, 2) == ["Sat 2025-02-01 00:00:00", "Sat 2025-03-01 00:00:00"]
    assert fires("cron:0 0 0 1 MAR-APR,dec ?", JAN1, 3) == [
        "Sat 2025-03-01 00:00:00",
        "Tue 2025-04-01 00:00:00",
        "Mon 2025-12-01 00:00:00",
    ]


def test_six_field_day_of_month_and_day_of_week() -> None:
    # The cron crate needs both to match: Friday the 13th only.
    assert fires("cron:0 0 0 13 * FRI", JAN1, 2) == ["Fri 2025-06-13 00:00:00", "Fri 2026-02-13 00:00:00"]


def test_six_field_steps_and_ranges() -> None:
    assert fires("cron:15/20 * * * * *", JAN1, 4) == [
        "Wed 2025-01-01 00:00:15",
        "Wed 2025-01-01 00:00:35",
        "Wed 2025-01-01 00:00:55",
        "Wed 2025-01-01 00:01:15",
    ]
    assert fires("cron:0 0 8-10/2 * * *", JAN1, 3) == [
        "Wed 2025-01-01 08:00:00",
        "Wed 2025-01-01 10:00:00",
        "Thu 2025-01-02 08:00:00",
    ]


def test_seven_field_year() -> None:
    schedule = Schedule(parse_spec("cron:0 0 0 1 1 ? 2030"))
    first = schedule.next_after(JAN1)
    assert first == ns(2030, 1, 1)
    assert schedule.next_after(first) == NEVER
    assert fires("cron:0 0 0 29 2 * 2028/4", JAN1, 2) == [
        "Tue 2028-02-29 00:00:00",
        "Sun 2032-02-29 00:00:00",
    ]
    assert fires("cron:0 0 0 1 1 * *", JAN1, 1) == ["Thu 2026-01-01 00:00:00"]


@pytest.mark.parametrize(
    ("shorthand", "first"),
    [
        ("@yearly", "Thu 2026-01-01 00:00:00"),
        ("@annually", "Thu 2026-01-01 00:00:00"),
        ("@monthly", "Sat 2025-02-01 00:00:00"),
        ("@weekly", "Sun 2025-01-05 00:00:00"),
        ("@daily", "Thu 2025-01-02 00:00:00"),
        ("@hourly", "Wed 2025-01-01 01:00:00"),
    ],
)
def test_shorthands(shorthand: str, first: str) -> None:
    assert fires(f"cron:{shorthand}", JAN1, 1) == [first]


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("* * * * 8", "out of range"),
        ("*/0 * * * *", "step"),
        ("? * * * *", "Question mark"),
        ("0 0 0 * * 0", "day-of-week 0 is out of range 1-7"),
        ("0 0 0 * * 8", "day-of-week 8 is out of range 1-7"),
        ("60 * * * * *", "second 60 is out of range"),
        ("0 0 24 * * *", "hour 24 is out of range"),
        ("0 0 0 0 * *", "day-of-month 0 is out of range"),
        ("0 0 0 * 13 *", "month 13 is out of range"),
        ("? * * * * *", "'?' is only allowed"),
        ("*/0 * * * * *", "invalid step '0'"),
        ("*/61 * * * * *", "invalid step '61'"),
        ("5-1 * * * * *", "the start is after the end"),
        ("1,,2 * * * * *", "empty item"),
        ("0 0 0 L * *", "invalid day-of-month value 'L'"),
        ("0 0 0 ? * 6#3", "invalid day-of-week value '6#3'"),
        ("0 0 0 * * FOO", "invalid day-of-week value 'FOO'"),
        ("0 0 0 * JANUARYX *", "invalid month value"),
        ("0 0 0 1 1 * 1969", "year 1969 is out of range"),
        ("0 0 0 1 1 * 2100", "year 2100 is out of range"),
        ("0 0 0 30 2 *", "never fires"),
        ("0 0 31 4 *", "never fires"),
        ("@often", "unknown shorthand"),
    ],
)
def test_invalid_cron_rejected_at_parse_time(expr: str, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_spec(f"cron:{expr}")
    assert err.value.message.startswith(f"failed to parse trigger from cron:{expr}: {FORMS} (cron: ")
    assert reason in err.value.message


def test_cron_next_after_is_strict_and_second_aligned() -> None:
    schedule = Schedule(parse_spec("cron:0 0 0 * * *"))
    assert schedule.next_after(ns(2025, 1, 2)) == ns(2025, 1, 3)
    assert schedule.next_after(ns(2025, 1, 2) - 1) == ns(2025, 1, 2)
    every_second = Schedule(parse_spec("cron:* * * * * *"))
    assert every_second.next_after(JAN1 + 1) == JAN1 + S
    assert every_second.next_after(JAN1 + S - 1) == JAN1 + S


def test_schedule_refuses_non_schedule_specs() -> None:
    with pytest.raises(ValueError, match="not a schedule trigger"):
        Schedule(parse_spec("table:cpu"))


# -- every: alignment -------------------------------------------------------------------------


def test_every_is_epoch_aligned() -> None:
    hourly = Schedule(parse_spec("every:1h"))
    assert hourly.next_after(ns(2025, 1, 1, 10, 17, 3)) == ns(2025, 1, 1, 11)
    assert hourly.next_after(ns(2025, 1, 1, 11)) == ns(2025, 1, 1, 12)
    seven = Schedule(parse_spec("every:7s"))
    t = ns(2025, 1, 1, 10, 17, 3) + 123
    nxt = seven.next_after(t)
    assert nxt % (7 * S) == 0 and t < nxt <= t + 7 * S
    assert seven.next_after(nxt) == nxt + 7 * S
    fast = Schedule(parse_spec("every:1ms"))
    assert fast.next_after(JAN1 + 1) == JAN1 + 1_000_000


# -- due(): coalescing missed ticks -----------------------------------------------------------


def test_due_every_coalesces_missed_ticks() -> None:
    period = 10 * S
    schedule = Schedule(parse_spec("every:10s"))
    t = JAN1
    assert schedule.due(t, t + 35 * S) == (t + 3 * period, 2)
    assert schedule.due(t, t + period) == (t + period, 0)
    assert schedule.due(t + 1, t + 30 * S) == (t + 30 * S, 2)  # ticks 10, 20 skipped, 30 due
    with pytest.raises(ValueError, match="no scheduled call is due"):
        schedule.due(t, t + period - 1)


def test_due_cron_coalesces_missed_ticks() -> None:
    schedule = Schedule(parse_spec("cron:*/10 * * * * *"))
    t = JAN1
    assert schedule.due(t, t + 35 * S) == (t + 30 * S, 2)
    assert schedule.due(t - 1, t) == (t, 0)
    with pytest.raises(ValueError, match="no scheduled call is due"):
        schedule.due(t, t + 9 * S)


def test_due_cron_counts_a_long_stall_exactly_and_quickly() -> None:
    every_second = Schedule(parse_spec("cron:* * * * * *"))
    assert every_second.due(JAN1, JAN1 + 3 * DAY + 5 * S) == (JAN1 + 3 * DAY + 5 * S, 3 * 86_400 + 4)
    weekdays = Schedule(parse_spec("cron:0 9 * * 1-5"))
    # Wed 1 Jan 10:00 -> Wed 15 Jan 10:00: 2, 3, 6-10, 13, 14, 15 = 10 ticks, the last one due.
    assert weekdays.due(ns(2025, 1, 1, 10), ns(2025, 1, 15, 10)) == (ns(2025, 1, 15, 9), 9)


@pytest.mark.parametrize(
    "expr",
    [
        "*/20 */7 * * * *",
        "5,35 */13 8-9 * * MON-FRI",
        "0 0 1,15 * 3",
        "*/17 3-4 * * *",
        "0 0 0 * * SUN",
        "0 0 L * *",
    ],
)
def test_due_matches_counting_tick_by_tick(expr: str) -> None:
    schedule = Schedule(parse_spec(f"cron:{expr}"))
    for start, span in [
        (JAN1 + 1234 * S, 7200 * S),
        (JAN1 - 5 * S, 9 * DAY + 17 * S),
        (JAN1 + 7 * HOUR, DAY),
    ]:
        ticks, t = [], start
        while (t := schedule.next_after(t)) <= start + span:
            ticks.append(t)
        if ticks:
            assert schedule.due(start, start + span) == (ticks[-1], len(ticks) - 1)
        else:
            with pytest.raises(ValueError):
                schedule.due(start, start + span)


# -- call_time --------------------------------------------------------------------------------


def test_call_time_is_naive_utc_whole_seconds() -> None:
    value = Schedule.call_time(ns(2025, 3, 4, 5, 6, 7) + 999_999_999)
    assert value == datetime(2025, 3, 4, 5, 6, 7)
    assert value.tzinfo is None and value.microsecond == 0
    assert Schedule(parse_spec("every:1h")).call_time(0) == datetime(1970, 1, 1)


def test_call_time_ignores_the_local_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert Schedule.call_time(ns(2025, 1, 1, 12)) == datetime(2025, 1, 1, 12)
    finally:
        monkeypatch.undo()
        time.tzset()


# -- flask_response ---------------------------------------------------------------------------


class FlaskLike:
    """Enough of a flask.Response for the engine: marker, status_code, get_data(), headers."""

    def __init__(self, data: Any, status: Any = 201, headers: Any = None, marker: Any = True) -> None:
        self.data, self.status_code, self.marker = data, status, marker
        self.headers = headers if headers is not None else {"Content-Type": "text/csv", "X-A": 1}

    def __flask_response__(self) -> Any:
        return self.marker

    def get_data(self) -> Any:
        return self.data

    def __iter__(self) -> Iterator[str]:
        return iter(["iterated"])


class Headers:
    """Like werkzeug's Headers: items() yields pairs, possibly repeated."""

    def items(self) -> list[tuple[str, str]]:
        return [("X-One", "1"), ("X-Two", "2")]


def test_flask_like_object() -> None:
    assert flask_response(FlaskLike("a,b\n")) == (201, {"Content-Type": "text/csv", "X-A": "1"}, b"a,b\n")
    assert flask_response(FlaskLike(b"\x00raw", 200, Headers())) == (
        200,
        {"X-One": "1", "X-Two": "2"},
        b"\x00raw",
    )
    assert flask_response(FlaskLike("x", 200, [("X-Pair", "p")]))[1] == {"X-Pair": "p"}


def test_flask_like_object_errors() -> None:
    with pytest.raises(ValueError, match="expected str"):
        flask_response(FlaskLike(42))
    with pytest.raises(ValueError, match="invalid status code 99"):
        flask_response(FlaskLike("x", 99))
    with pytest.raises(ValueError, match="invalid status code '200'"):
        flask_response(FlaskLike("x", "200"))


def test_flask_marker_false_falls_through_to_later_rules() -> None:
    assert flask_response(FlaskLike("x", marker=False)) == (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"iterated",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (("hi",), (200, {"Content-Type": "text/html; charset=utf-8"}, b"hi")),
        (("hi", 201), (201, {"Content-Type": "text/html; charset=utf-8"}, b"hi")),
        (({"a": 1}, 202), (202, {"Content-Type": "application/json"}, b'{"a": 1}')),
        (([1, 2],), (200, {"Content-Type": "application/json"}, b"[1, 2]")),
        ((42, 200), (200, {"Content-Type": "text/plain; charset=utf-8"}, b"42")),
        ((None,), (200, {"Content-Type": "text/plain; charset=utf-8"}, b"None")),
        ((b"\x89PNG", 200), (200, {"Content-Type": "application/octet-stream"}, b"\x89PNG")),
        ((bytearray(b"ab"),), (200, {"Content-Type": "application/octet-stream"}, b"ab")),
        (("hi", {"X-A": "1"}), (200, {"Content-Type": "text/html; charset=utf-8", "X-A": "1"}, b"hi")),
        (
            ("hi", 404, {"X-A": 5, "content-type": "text/plain"}),
            (404, {"X-A": "5", "content-type": "text/plain"}, b"hi"),
        ),
        (("a,b", 200, {"Content-Type": "text/csv"}), (200, {"Content-Type": "text/csv"}, b"a,b")),
    ],
)
def test_tuple_forms(value: tuple[Any, ...], expected: tuple[int, dict[str, str], bytes]) -> None:
    assert flask_response(value) == expected


def test_tuple_errors() -> None:
    with pytest.raises(ValueError, match="^expected a dictionary in header item$"):
        flask_response(("hi", 200, "X-A: 1"))
    with pytest.raises(ValueError, match="^expected a dictionary in header item$"):
        flask_response(("hi", 200, [("X-A", "1")]))
    with pytest.raises(ValueError, match="dictionary in header item"):
        flask_response(("hi", "201"))
    with pytest.raises(ValueError, match="dictionary in header item"):
        flask_response(("hi", {"X": "1"}, {"Y": "2"}))
    with pytest.raises(ValueError, match="invalid status code 600"):
        flask_response(("hi", 600))
    with pytest.raises(ValueError, match="invalid status code 99"):
        flask_response(("hi", 99, {}))
    with pytest.raises(ValueError, match="invalid status code True"):
        flask_response(("hi", True))


def test_header_names_validated_and_values_stringified() -> None:
    status, headers, _ = flask_response(
        ("hi", 200, {"Bad\nName": "x", "Bad Name": "x", "": "x", 7: "x", "X-Ok": 3.5, "X-Split": "a\r\nb"})
    )
    assert headers == {"Content-Type": "text/html; charset=utf-8", "X-Ok": "3.5", "X-Split": ""}


def test_str_is_html() -> None:
    assert flask_response("<b>hé</b>") == (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        "<b>hé</b>".encode(),
    )


def test_dict_and_list_are_json() -> None:
    assert flask_response({"ok": True, "n": [1]}) == (
        200,
        {"Content-Type": "application/json"},
        b'{"ok": true, "n": [1]}',
    )
    assert flask_response([]) == (200, {"Content-Type": "application/json"}, b"[]")
    with pytest.raises(ValueError, match="could not convert the return value to JSON"):
        flask_response({"when": datetime(2025, 1, 1)})


@pytest.mark.parametrize("value", [b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")])
def test_bare_bytes_are_octet_stream(value: Any) -> None:
    assert flask_response(value) == (200, {"Content-Type": "application/octet-stream"}, b"\x00\xff")


def test_other_iterables_concatenate_str_and_utf8_bytes() -> None:
    def gen() -> Iterator[Any]:
        yield "a"
        yield b"b\xc3\xa9"
        yield b"\xff"  # not UTF-8: skipped
        yield 3  # neither str nor bytes: skipped
        yield "c"

    assert flask_response(gen()) == (200, {"Content-Type": "text/html; charset=utf-8"}, "abéc".encode())
    assert flask_response(("a", "b", "c", "d")) == (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"abcd",
    )
    assert flask_response(()) == (200, {"Content-Type": "text/html; charset=utf-8"}, b"")
    assert flask_response({"x"}) == (200, {"Content-Type": "text/html; charset=utf-8"}, b"x")


def test_iteration_failure_is_an_error() -> None:
    def broken() -> Iterator[str]:
        yield "a"
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="iterating the return value failed: boom"):
        flask_response(broken())


@pytest.mark.parametrize("value", [None, 42, 1.5, True, object()])
def test_unsupported_return_types(value: Any) -> None:
    with pytest.raises(ValueError, match="^Unsupported return type from Python function$"):
        flask_response(value)


# -- trigger arguments ------------------------------------------------------------------------


def test_trigger_arguments() -> None:
    assert parse_trigger_arguments("k=v,k2=v2") == {"k": "v", "k2": "v2"}
    assert parse_trigger_arguments("url=http://h/?a=b,empty=") == {"url": "http://h/?a=b", "empty": ""}
    assert parse_trigger_arguments("a=1, b=2,") == {"a": "1", "b": "2"}
    assert parse_trigger_arguments("a=1,a=2") == {"a": "2"}
    assert parse_trigger_arguments("msg=hello world") == {"msg": "hello world"}


@pytest.mark.parametrize("text", [None, "", "   ", ","])
def test_trigger_arguments_empty(text: str | None) -> None:
    assert parse_trigger_arguments(text) is None


@pytest.mark.parametrize(("text", "item"), [("a=1,oops", "'oops'"), ("=v", "'=v'"), ("novalue", "'novalue'")])
def test_trigger_arguments_errors(text: str, item: str) -> None:
    with pytest.raises(BadRequest, match=f"invalid trigger argument {item}"):
        parse_trigger_arguments(text)
