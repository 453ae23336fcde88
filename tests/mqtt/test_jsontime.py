"""JSON timestamps: every time_format, line protocol's auto precision, and unreadable times."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.model import Precision
from appliance.mqtt.jsonlines import JsonOptions
from tests.mqtt.readback import ARRIVAL, SECOND, convert, read, rows, unix_ns

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
