"""Where a cron expression becomes fire times: compiled for croniter, stepped and counted (pure).

Accepts 5-field crontab (minute first, Sunday = 0 or 7, day-of-month OR day-of-week), 6- or
7-field seconds-first expressions as the Rust `cron` crate InfluxDB 3 uses (Sunday = 1, both
day fields must match, an optional year) and the @-shorthands. Times are whole UTC seconds.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from croniter import CroniterBadDateError, CroniterError, croniter

_S_PER_DAY = 86_400

_MONTH_NAMES = {
    name: i + 1
    for i, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ]
    )
    for name in names
}
# Sunday = 1, as the Rust `cron` crate InfluxDB 3 uses (not crontab's Sunday = 0).
_DOW_NAMES = {
    name: i + 1
    for i, names in enumerate(
        [
            ("sun", "sunday"),
            ("mon", "monday"),
            ("tue", "tues", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thurs", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
        ]
    )
    for name in names
}


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: Mapping[str, int] | None = None
    any_ok: bool = False  # `?` is only meaningful where two fields compete for the day


# croniter stops at 2099, one year short of the cron crate's 2100; we report that at parse time.
_SECONDS_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31, any_ok=True),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day-of-week", 1, 7, _DOW_NAMES, any_ok=True),
    _Field("year", 1970, 2099),
)

# Shorthands written as 6-field (seconds-first, Sunday = 1) expressions, as the cron crate defines them.
_SHORTHANDS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 1",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

# Far enough for a 7-field year list to reach 2099 from 1970; croniter gives up after this.
_MAX_YEARS = 131
_NUMBER = re.compile(r"\d+")


def _field_value(token: str, field: _Field) -> int:
    if _NUMBER.fullmatch(token):
        value = int(token)
    elif field.names is not None and token.lower() in field.names:
        value = field.names[token.lower()]
    else:
        raise ValueError(f"invalid {field.name} value {token!r}")
    if not field.lo <= value <= field.hi:
        raise ValueError(f"{field.name} {value} is out of range {field.lo}-{field.hi}")
    return value


def _expand_field(text: str, field: _Field) -> frozenset[int]:
    """Expand one seconds-first cron field (`*`, `?`, `N`, `A-B`, `X/STEP`, names, lists) to its values."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"empty item in {field.name} field {text!r}")
        base, slash, step_text = item.partition("/")
        if base in ("*", "?"):
            if base == "?" and not field.any_ok:
                raise ValueError(f"'?' is only allowed in day-of-month and day-of-week, not in {field.name}")
            lo, hi = field.lo, field.hi
        elif "-" in base:
            first, _, last = base.partition("-")
            lo, hi = _field_value(first, field), _field_value(last, field)
            if lo > hi:
                raise ValueError(f"invalid {field.name} range {base!r}: the start is after the end")
        else:
            lo = _field_value(base, field)
            # As in the cron crate, `N/STEP` runs from N to the field's maximum.
            hi = field.hi if slash else lo
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or not 1 <= int(step_text) <= field.hi:
                raise ValueError(f"invalid step {step_text!r} in {field.name} field: use 1 to {field.hi}")
            step = int(step_text)
        values.update(range(lo, hi + 1, step))
    return frozenset(values)


def _croniter_list(values: frozenset[int], field: _Field, shift: int = 0) -> str:
    # `*` for a full field keeps croniter on its fast path and its day-matching rules simple.
    if len(values) == field.hi - field.lo + 1:
        return "*"
    return ",".join(str(v + shift) for v in sorted(values))


@dataclass(frozen=True)
class Cron:
    """A cron expression compiled for croniter, plus what tick counting needs."""

    expr: str  # croniter's native order: minute hour dom month dow [second [year]]
    day_expr: str  # the same days at midnight only, to count matching days quickly
    day_or: bool  # crontab ORs a restricted day-of-month with a restricted day-of-week
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]


def _compile_seconds_first(fields: list[str]) -> Cron:
    if len(fields) == 7 and fields[6] == "?":
        fields = [*fields[:6], "*"]
    sets = [_expand_field(text, field) for text, field in zip(fields, _SECONDS_FIELDS, strict=False)]
    sec, minute, hour, dom, month = (_croniter_list(sets[i], _SECONDS_FIELDS[i]) for i in range(5))
    # croniter counts the day of week from Sunday = 0; the cron crate from Sunday = 1.
    dow = _croniter_list(sets[5], _SECONDS_FIELDS[5], shift=-1)
    year = _croniter_list(sets[6], _SECONDS_FIELDS[6]) if len(sets) == 7 else "*"
    days = f"{dom} {month} {dow}"
    suffix = "" if year == "*" else f" {year}"
    return Cron(
        expr=f"{minute} {hour} {days} {sec}{suffix}",
        day_expr=f"0 0 {days} 0{suffix}",
        day_or=False,  # the cron crate requires day-of-month AND day-of-week to match
        seconds=tuple(sorted(sets[0])),
        minutes=tuple(sorted(sets[1])),
        hours=tuple(sorted(sets[2])),
    )


def _compile_crontab(fields: list[str]) -> Cron:
    expr = " ".join(fields)
    try:
        expanded, _ = croniter.expand(expr)
    except CroniterError as exc:
        raise ValueError(str(exc)) from None

    def ints(values: list[Any], hi: int) -> tuple[int, ...]:
        if values == ["*"]:
            return tuple(range(hi + 1))
        return tuple(sorted(int(v) for v in values))

    return Cron(
        expr=expr,
        day_expr="0 0 " + " ".join(fields[2:]),
        day_or=True,
        seconds=(0,),
        minutes=ints(expanded[0], 59),
        hours=ints(expanded[1], 23),
    )


@lru_cache(maxsize=512)
def compile_cron(expr: str) -> Cron:
    """Compile a cron expression: 5-field crontab, 6/7-field seconds-first, or a shorthand."""
    text = expr.strip()
    text = _SHORTHANDS.get(text.lower(), text)
    if text.startswith("@"):
        raise ValueError(f"unknown shorthand {text!r}: use @yearly, @monthly, @weekly, @daily or @hourly")
    fields = text.split()
    if len(fields) == 5:
        cron = _compile_crontab(fields)
    elif len(fields) in (6, 7):
        cron = _compile_seconds_first(fields)
    else:
        raise ValueError(
            f"a cron expression has 5 fields (minute first), or 6 or 7 with seconds first; {expr.strip()!r} has {len(fields)}"
        )
    # An expression that can never match (30 February) would otherwise sleep forever unnoticed.
    if _cron_next(cron.expr, cron.day_or, -1) is None:
        raise ValueError(f"{expr.strip()!r} never fires")
    return cron


def _cron_iter(expr: str, day_or: bool, start_s: int) -> croniter:
    start = datetime.fromtimestamp(start_s, tz=UTC)
    return croniter(expr, start, day_or=day_or, max_years_between_matches=_MAX_YEARS)


def _cron_next(expr: str, day_or: bool, after_s: int) -> int | None:
    try:
        return int(_cron_iter(expr, day_or, after_s).get_next(float))
    except CroniterBadDateError:
        return None


def _cron_prev(expr: str, day_or: bool, before_s: int) -> int | None:
    try:
        return int(_cron_iter(expr, day_or, before_s).get_prev(float))
    except CroniterBadDateError:
        return None


def next_tick(cron: Cron, after_s: int) -> int | None:
    """The first tick strictly after `after_s`, or None once the schedule has run out of years."""
    return _cron_next(cron.expr, cron.day_or, after_s)


def latest_tick(cron: Cron, before_s: int) -> int | None:
    """The last tick strictly before `before_s`, or None if there is none."""
    return _cron_prev(cron.expr, cron.day_or, before_s)


# Counting works per day rather than per tick, so a long stall on a per-second cron costs
# one step per day, not one per missed second.
def count_ticks(cron: Cron, after_s: int, upto_s: int) -> int:
    """Number of ticks t with after_s < t <= upto_s."""
    day_a, tod_a = divmod(after_s, _S_PER_DAY)
    day_b, tod_b = divmod(upto_s, _S_PER_DAY)
    if day_a == day_b:
        return _ticks_upto(cron, tod_b) - _ticks_upto(cron, tod_a) if _day_matches(cron, day_a) else 0
    per_day = _ticks_upto(cron, _S_PER_DAY - 1)
    count = per_day - _ticks_upto(cron, tod_a) if _day_matches(cron, day_a) else 0
    if _day_matches(cron, day_b):
        count += _ticks_upto(cron, tod_b)
    return count + per_day * _matching_days(cron, day_a + 1, day_b)


def _ticks_upto(c: Cron, tod: int) -> int:
    """Ticks in one matching day at or before second-of-day `tod`."""
    hour, rem = divmod(tod, 3600)
    minute, second = divmod(rem, 60)
    per_hour = len(c.minutes) * len(c.seconds)
    count = bisect.bisect_left(c.hours, hour) * per_hour
    if hour in c.hours:
        count += bisect.bisect_left(c.minutes, minute) * len(c.seconds)
        if minute in c.minutes:
            count += bisect.bisect_right(c.seconds, second)
    return count


def _day_matches(cron: Cron, day: int) -> bool:
    midnight = day * _S_PER_DAY
    return _cron_next(cron.day_expr, cron.day_or, midnight - 1) == midnight


def _matching_days(cron: Cron, first_day: int, end_day: int) -> int:
    """Matching days d with first_day <= d < end_day."""
    if first_day >= end_day:
        return 0
    it = _cron_iter(cron.day_expr, cron.day_or, first_day * _S_PER_DAY - 1)
    count, end = 0, end_day * _S_PER_DAY
    try:
        while it.get_next(float) < end:
            count += 1
    except CroniterBadDateError:
        pass  # the schedule ran out of years inside the window
    return count
