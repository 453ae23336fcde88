"""A JSON timestamp to ns since the epoch, per `time_format` (auto, s, ms, us, ns, rfc3339).

Numbers are read as exact decimals (a float by its shortest repr), so 1.7e9 seconds is exactly
1_700_000_000_000_000_000 ns; `auto` guesses the unit from the size, as line protocol does.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from ..lineprotocol.syntax import NS_PER_SECOND, NS_PER_UNIT, guess_unit
from ..model import MAX_TIME_NS, MIN_TIME_NS, TIME_RANGE

TIME_FORMATS = ("auto", "s", "ms", "us", "ns", "rfc3339")

_I64_MAX = (1 << 63) - 1
_EXPECTED = {
    "auto": "a number (s, ms, us or ns, guessed from its size) or an RFC 3339 time",
    "s": "a number of seconds",
    "ms": "a number of milliseconds",
    "us": "a number of microseconds",
    "ns": "a number of nanoseconds",
    "rfc3339": "an RFC 3339 time such as 2026-11-28T10:00:00Z",
}
_OUT_OF_RANGE = f"is out of range ({TIME_RANGE})"
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)

Scalar = str | int | float | bool | None


def time_ns(value: Scalar, time_format: str) -> int:
    """ns since the epoch, or ValueError saying what was expected."""
    if isinstance(value, str) and (
        time_format == "rfc3339" or time_format == "auto" and not _is_number(value)
    ):
        return _in_range(_rfc3339_ns(value))
    if time_format == "rfc3339":
        raise ValueError(f"is not {_EXPECTED['rfc3339']}")
    try:
        number = _decimal(value)
        if number is None:
            raise ValueError(f"is not {_EXPECTED[time_format]}")
        if abs(number) > _I64_MAX:
            raise ArithmeticError
        unit = NS_PER_UNIT[time_format] if time_format != "auto" else guess_unit(number)
        return _in_range(int((number * unit).to_integral_value(ROUND_HALF_EVEN)))
    except ArithmeticError:  # also Decimal's overflow on exponents like 1e99999999999
        raise ValueError(_OUT_OF_RANGE) from None


def _in_range(ns: int) -> int:
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise ValueError(_OUT_OF_RANGE)
    return ns


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip()) is not None


def _decimal(value: Scalar) -> Decimal | None:
    """A number, a float's shortest repr or a numeric string as an exact Decimal; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    return Decimal(value.strip()) if _is_number(value) else None


def _rfc3339_ns(text: str) -> int:
    """ns since the epoch of an RFC 3339 time (fraction digits past ns are cut), or ValueError."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"is not {_EXPECTED['rfc3339']}")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = m.groups()
    try:
        when = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError as exc:  # month 13, February 30, second 60...
        raise ValueError(f"is not a valid date and time ({exc})") from None
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"has an invalid UTC offset {sign}{off_h}:{off_m}")
        offset = (int(off_h) * 3600 + int(off_m) * 60) * (-1 if sign == "-" else 1)
    seconds = (when - _EPOCH) // _SECOND - offset
    return seconds * NS_PER_SECOND + int((fraction or "")[:9].ljust(9, "0"))
