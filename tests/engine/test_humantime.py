"""Durations as `every:` reads them (humantime), and the every: bounds built on them."""

from __future__ import annotations

import pytest

from appliance.engine.humantime import parse_humantime_ns
from appliance.engine.triggers import parse_spec

S = 1_000_000_000

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
