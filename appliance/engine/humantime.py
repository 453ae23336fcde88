"""Durations as InfluxDB 3 reads `every:` (Rust's humantime): "10s", "1h 30m", "2M", "1y".

Not `appliance.units.parse_duration_ns`, on purpose: the inputs differ. humantime is case
sensitive ("M" is a month, "m" a minute), takes a bare number as an error rather than seconds,
knows months and its calendar-average year (365.25 d, not 365 d), and accepts the long unit
names ("minutes", "weeks", "nsec"); the config grammar lowercases and reads "10" as ten seconds.
"""

from __future__ import annotations

import re

from ..lineprotocol.syntax import NS_PER_SECOND, NS_PER_UNIT

_DAY = 86_400 * NS_PER_SECOND
# humantime's unit table; month and year are its calendar averages (30.44 d and 365.25 d).
_HUMANTIME_UNITS: dict[str, int] = {
    **dict.fromkeys(("ns", "nsec", "nanos"), NS_PER_UNIT["ns"]),
    **dict.fromkeys(("us", "usec", "µs", "μs", "micros"), NS_PER_UNIT["us"]),
    **dict.fromkeys(("ms", "msec", "millis"), NS_PER_UNIT["ms"]),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), NS_PER_SECOND),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60 * NS_PER_SECOND),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600 * NS_PER_SECOND),
    **dict.fromkeys(("d", "day", "days"), _DAY),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 7 * _DAY),
    **dict.fromkeys(("M", "month", "months"), 2_630_016 * NS_PER_SECOND),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), 31_557_600 * NS_PER_SECOND),
}
_DURATION_PART = re.compile(r"\s*(\d+)\s*([A-Za-zµμ]+)")


def parse_humantime_ns(text: str) -> int:
    """Parse a humantime duration ("10s", "1h 30m", "1h30m", "2M", "1y") into nanoseconds."""
    s = text.strip()
    if not s:
        raise ValueError("the duration is empty: write it like 10s, 5m or 1h 30m")
    total, pos = 0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            rest = s[pos:].strip()
            if rest.isdigit():
                why = "a number needs a unit"
            elif re.match(r"\d+\.", rest):
                why = "fractions are not supported (write 1h 30m, not 1.5h)"
            else:
                why = f"cannot read {rest!r}"
            raise ValueError(f"invalid duration {text.strip()!r}: {why}; write it like 10s, 5m or 1h 30m")
        number, unit = m.groups()
        scale = _HUMANTIME_UNITS.get(unit)
        if scale is None:
            raise ValueError(
                f"invalid duration {text.strip()!r}: unknown unit {unit!r} "
                "(use ns, us, ms, s, m, h, d, w, M for months or y)"
            )
        total += int(number) * scale
        pos = m.end()
    return total
