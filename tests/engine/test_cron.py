"""Where a cron expression becomes fire times: 5-, 6- and 7-field cron, shorthands, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from appliance.engine.schedule import NEVER, Schedule
from appliance.engine.triggers import parse_spec
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
