"""Trigger specifications, schedules and request-plugin responses for the processing engine.

Three jobs, all pure (no I/O, no threads):

- `parse_spec` turns `table:NAME`, `all_tables`, `every:DURATION`, `cron:EXPR`, `request:PATH`
  (or `path:PATH`) into a `TriggerSpec`, with InfluxDB 3's error message for anything else.
- `Schedule` says when an `every:` or `cron:` trigger fires (UTC), and coalesces missed ticks.
- `flask_response` turns a request plugin's return value into (status, headers, body).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from croniter import CroniterBadDateError, CroniterError, croniter

from appliance.errors import BadRequest

from .names import TextRule, check_text, text_problem

__all__ = [
    "MAX_ARGUMENTS",
    "MAX_ARGUMENT_KEY",
    "MAX_ARGUMENT_VALUE",
    "MAX_TRIGGER_NAME",
    "NEVER",
    "Schedule",
    "TriggerKind",
    "TriggerSpec",
    "check_arguments",
    "check_trigger_name",
    "flask_response",
    "parse_humantime_ns",
    "parse_spec",
    "parse_trigger_arguments",
]

TriggerKind = Literal["wal", "schedule", "request"]

#: What `Schedule.next_after` returns once a schedule has no further fire time (a cron year list
#: that has run out): the largest int64, so it sorts after every real instant in a heap.
NEVER: int = 2**63 - 1

_SPEC_FORMS = (
    "expect one of the following forms: 'table:<TABLE_NAME>', 'all_tables', "
    "'cron:<CRON_EXPRESSION>', 'every:<DURATION>', or 'request:<PATH>'"
)

_NS_PER_S = 1_000_000_000
_S_PER_DAY = 86_400

# ---------------------------------------------------------------------------------------------
# Durations (humantime, as InfluxDB 3 parses `every:`)
# ---------------------------------------------------------------------------------------------

_SECOND = _NS_PER_S
_DAY = _S_PER_DAY * _SECOND
# humantime's unit table; month and year are its calendar averages (30.44 d and 365.25 d).
_HUMANTIME_UNITS: dict[str, int] = {
    **dict.fromkeys(("ns", "nsec", "nanos"), 1),
    **dict.fromkeys(("us", "usec", "µs", "μs", "micros"), 1_000),
    **dict.fromkeys(("ms", "msec", "millis"), 1_000_000),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), _SECOND),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60 * _SECOND),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600 * _SECOND),
    **dict.fromkeys(("d", "day", "days"), _DAY),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 7 * _DAY),
    **dict.fromkeys(("M", "month", "months"), 2_630_016 * _SECOND),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), 31_557_600 * _SECOND),
}
_DURATION_PART = re.compile(r"\s*(\d+)\s*([A-Za-zµμ]+)")
_MIN_EVERY_NS = 1_000_000  # InfluxDB panics below 1 ms (its millisecond divisor becomes zero)
_MAX_EVERY_NS = _HUMANTIME_UNITS["y"]


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


# ---------------------------------------------------------------------------------------------
# Cron
# ---------------------------------------------------------------------------------------------

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
class _Cron:
    """A cron expression compiled for croniter, plus what tick counting needs."""

    expr: str  # croniter's native order: minute hour dom month dow [second [year]]
    day_expr: str  # the same days at midnight only, to count matching days quickly
    day_or: bool  # crontab ORs a restricted day-of-month with a restricted day-of-week
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]


def _compile_seconds_first(fields: list[str]) -> _Cron:
    if len(fields) == 7 and fields[6] == "?":
        fields = [*fields[:6], "*"]
    sets = [_expand_field(text, field) for text, field in zip(fields, _SECONDS_FIELDS, strict=False)]
    sec, minute, hour, dom, month = (_croniter_list(sets[i], _SECONDS_FIELDS[i]) for i in range(5))
    # croniter counts the day of week from Sunday = 0; the cron crate from Sunday = 1.
    dow = _croniter_list(sets[5], _SECONDS_FIELDS[5], shift=-1)
    year = _croniter_list(sets[6], _SECONDS_FIELDS[6]) if len(sets) == 7 else "*"
    days = f"{dom} {month} {dow}"
    suffix = "" if year == "*" else f" {year}"
    return _Cron(
        expr=f"{minute} {hour} {days} {sec}{suffix}",
        day_expr=f"0 0 {days} 0{suffix}",
        day_or=False,  # the cron crate requires day-of-month AND day-of-week to match
        seconds=tuple(sorted(sets[0])),
        minutes=tuple(sorted(sets[1])),
        hours=tuple(sorted(sets[2])),
    )


def _compile_crontab(fields: list[str]) -> _Cron:
    expr = " ".join(fields)
    try:
        expanded, _ = croniter.expand(expr)
    except CroniterError as exc:
        raise ValueError(str(exc)) from None

    def ints(values: list[Any], hi: int) -> tuple[int, ...]:
        if values == ["*"]:
            return tuple(range(hi + 1))
        return tuple(sorted(int(v) for v in values))

    return _Cron(
        expr=expr,
        day_expr="0 0 " + " ".join(fields[2:]),
        day_or=True,
        seconds=(0,),
        minutes=ints(expanded[0], 59),
        hours=ints(expanded[1], 23),
    )


@lru_cache(maxsize=512)
def _compile_cron(expr: str) -> _Cron:
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


# ---------------------------------------------------------------------------------------------
# Trigger specifications
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerSpec:
    """A parsed trigger specification; `text` is its normalised form, as stored in the catalog."""

    kind: TriggerKind
    text: str
    table: str | None = None  # WAL triggers: None means all tables
    every_ns: int | None = None
    cron: str | None = None
    path: str | None = None

    def to_json(self) -> str:
        """The serde-JSON form InfluxDB 3 shows in `system.processing_engine_triggers`."""
        value: Any
        if self.kind == "wal":
            value = (
                "all_tables_wal_write"
                if self.table is None
                else {"single_table_wal_write": {"table_name": self.table}}
            )
        elif self.every_ns is not None:
            secs, nanos = divmod(self.every_ns, _NS_PER_S)
            value = {"every": {"duration": {"secs": secs, "nanos": nanos}}}
        elif self.cron is not None:
            value = {"schedule": {"schedule": self.cron}}
        else:
            value = {"request_path": {"path": self.path}}
        # serde_json writes compact JSON and leaves non-ASCII characters alone.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: Longest trigger specification (a cron expression with long lists stays far below it).
MAX_SPEC = 4096


def _bad_spec(spec: str, reason: str | None = None) -> BadRequest:
    shown = spec if len(spec) <= 200 else spec[:200] + "..."
    message = f"failed to parse trigger from {shown}: {_SPEC_FORMS}"
    return BadRequest(f"{message} ({reason})" if reason else message)


def parse_spec(text: str) -> TriggerSpec:
    """Parse a trigger specification string; raises BadRequest with InfluxDB 3's message if invalid."""
    spec = text.strip()
    bad = text_problem(spec, _SPEC)
    if bad is not None:
        raise _bad_spec(repr(spec)[1:-1], bad)
    if spec == "all_tables":
        return TriggerSpec("wal", spec)
    prefix, sep, rest = spec.partition(":")
    if not sep:
        raise _bad_spec(spec)
    rest = rest.strip()
    if prefix == "table":
        if not rest:
            raise _bad_spec(spec, "the table name is empty")
        return TriggerSpec("wal", f"table:{rest}", table=rest)
    if prefix == "every":
        try:
            ns = parse_humantime_ns(rest)
        except ValueError as exc:
            raise _bad_spec(spec, str(exc)) from None
        if ns < _MIN_EVERY_NS:
            raise _bad_spec(spec, f"every: {rest} is shorter than the 1ms minimum")
        if ns > _MAX_EVERY_NS:
            raise _bad_spec(spec, f"every: {rest} is longer than the 1 year maximum")
        return TriggerSpec("schedule", f"every:{rest}", every_ns=ns)
    if prefix == "cron":
        expr = " ".join(rest.split())
        try:
            _compile_cron(expr)
        except ValueError as exc:
            raise _bad_spec(spec, f"cron: {exc}") from None
        return TriggerSpec("schedule", f"cron:{expr}", cron=expr)
    if prefix in ("request", "path"):
        # The path is served at /api/v3/engine/<PATH>, so a leading slash would only double up.
        path = rest.lstrip("/")
        if not path:
            raise _bad_spec(spec, "the request path is empty")
        if any(c.isspace() or c in "?#" for c in path):
            raise _bad_spec(spec, "a request path cannot contain whitespace, '?' or '#'")
        return TriggerSpec("request", f"request:{path}", path=path)
    raise _bad_spec(spec)


#: Longest trigger name, in characters.
MAX_TRIGGER_NAME = 255
#: At most this many trigger arguments, keys of at most MAX_ARGUMENT_KEY characters and values of at
#: most MAX_ARGUMENT_VALUE: a definition stays small enough to list, log and store.
MAX_ARGUMENTS = 256
MAX_ARGUMENT_KEY = 255
MAX_ARGUMENT_VALUE = 65_536


TRIGGER_NAME = TextRule(MAX_TRIGGER_NAME, printable=True)
ARGUMENT_KEY = TextRule(MAX_ARGUMENT_KEY)
ARGUMENT_VALUE = TextRule(MAX_ARGUMENT_VALUE, multiline=True, empty_ok=True, show=False)
_SPEC = TextRule(MAX_SPEC, printable=True, empty_ok=True)


def check_trigger_name(name: str, what: str = "trigger name") -> None:
    """A trigger name is 1 to MAX_TRIGGER_NAME printable characters; BadRequest naming the problem if not."""
    check_text(name, what, TRIGGER_NAME)


def check_arguments(args: Mapping[str, str] | None) -> None:
    """Trigger or dry-run arguments: bounded count and sizes, no control characters (BadRequest if not).

    Values may span lines (SQL, JSON, a PEM certificate): tabs and line breaks are kept.
    """
    if not args:
        return
    if len(args) > MAX_ARGUMENTS:
        raise BadRequest(f"too many trigger arguments: {len(args)}, at most {MAX_ARGUMENTS} are allowed")
    for key, value in args.items():
        check_text(key, "trigger argument name", ARGUMENT_KEY)
        check_text(value, f"value of trigger argument {key!r}", ARGUMENT_VALUE)


def parse_trigger_arguments(text: str | None) -> dict[str, str] | None:
    """Parse `--trigger-arguments k=v,k2=v2` (each item split at its first `=`); None when empty."""
    if text is None or not text.strip():
        return None
    args: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue  # a trailing or doubled comma carries no argument
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BadRequest(f"invalid trigger argument {item.strip()!r}: write it as KEY=VALUE")
        args[key] = value
    return args or None


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class Schedule:
    """When an `every:` or `cron:` trigger fires, in UTC; cheap to build from a TriggerSpec."""

    def __init__(self, spec: TriggerSpec) -> None:
        if spec.kind != "schedule":
            raise ValueError(f"trigger {spec.text!r} is not a schedule trigger")
        self.spec = spec
        self._period_ns = spec.every_ns
        self._cron = _compile_cron(spec.cron) if spec.cron is not None else None

    def next_after(self, t_ns: int) -> int:
        """The next fire time strictly after `t_ns` (ns since the epoch), or NEVER if none is left."""
        if self._period_ns is not None:
            # Epoch-aligned, as InfluxDB 3: every:1h fires at the top of each UTC hour.
            return (t_ns // self._period_ns + 1) * self._period_ns
        assert self._cron is not None
        # Cron ticks are whole seconds: strictly after t is strictly after floor(t).
        nxt = _cron_next(self._cron.expr, self._cron.day_or, t_ns // _NS_PER_S)
        return NEVER if nxt is None else nxt * _NS_PER_S

    def due(self, last_fire_ns: int, now_ns: int) -> tuple[int, int]:
        """(latest tick in (last_fire, now], ticks skipped before it); ValueError if none is due."""
        if self._period_ns is not None:
            period = self._period_ns
            latest = now_ns // period * period
            if latest <= last_fire_ns:
                raise ValueError("no scheduled call is due yet")
            return latest, latest // period - last_fire_ns // period - 1
        assert self._cron is not None
        now_s = now_ns // _NS_PER_S
        latest_s = _cron_prev(self._cron.expr, self._cron.day_or, now_s + 1)
        if latest_s is None or latest_s * _NS_PER_S <= last_fire_ns:
            raise ValueError("no scheduled call is due yet")
        return latest_s * _NS_PER_S, self._count_ticks(last_fire_ns // _NS_PER_S, latest_s) - 1

    @staticmethod
    def call_time(fire_ns: int) -> datetime:
        """The `call_time` a plugin receives: the scheduled instant as a naive UTC datetime, whole seconds."""
        return datetime.fromtimestamp(fire_ns // _NS_PER_S, tz=UTC).replace(tzinfo=None)

    # Counting works per day rather than per tick, so a long stall on a per-second cron costs
    # one step per day, not one per missed second.
    def _count_ticks(self, after_s: int, upto_s: int) -> int:
        """Number of cron ticks t with after_s < t <= upto_s."""
        day_a, tod_a = divmod(after_s, _S_PER_DAY)
        day_b, tod_b = divmod(upto_s, _S_PER_DAY)
        if day_a == day_b:
            return self._ticks_upto(tod_b) - self._ticks_upto(tod_a) if self._day_matches(day_a) else 0
        per_day = self._ticks_upto(_S_PER_DAY - 1)
        count = per_day - self._ticks_upto(tod_a) if self._day_matches(day_a) else 0
        if self._day_matches(day_b):
            count += self._ticks_upto(tod_b)
        return count + per_day * self._matching_days(day_a + 1, day_b)

    def _ticks_upto(self, tod: int) -> int:
        """Ticks in one matching day at or before second-of-day `tod`."""
        assert self._cron is not None
        c = self._cron
        hour, rem = divmod(tod, 3600)
        minute, second = divmod(rem, 60)
        per_hour = len(c.minutes) * len(c.seconds)
        count = bisect.bisect_left(c.hours, hour) * per_hour
        if hour in c.hours:
            count += bisect.bisect_left(c.minutes, minute) * len(c.seconds)
            if minute in c.minutes:
                count += bisect.bisect_right(c.seconds, second)
        return count

    def _day_matches(self, day: int) -> bool:
        assert self._cron is not None
        midnight = day * _S_PER_DAY
        return _cron_next(self._cron.day_expr, self._cron.day_or, midnight - 1) == midnight

    def _matching_days(self, first_day: int, end_day: int) -> int:
        """Matching days d with first_day <= d < end_day."""
        assert self._cron is not None
        if first_day >= end_day:
            return 0
        it = _cron_iter(self._cron.day_expr, self._cron.day_or, first_day * _S_PER_DAY - 1)
        count, end = 0, end_day * _S_PER_DAY
        try:
            while it.get_next(float) < end:
                count += 1
        except CroniterBadDateError:
            pass  # the schedule ran out of years inside the window
        return count


# ---------------------------------------------------------------------------------------------
# Request plugin return value -> HTTP response
# ---------------------------------------------------------------------------------------------

_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_OCTETS = "application/octet-stream"
# RFC 9110 token characters: anything else in a header name would corrupt the response head.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid status code {value!r}: expected an int between 100 and 599")
    if not 100 <= value <= 599:
        raise ValueError(f"invalid status code {value}: expected an int between 100 and 599")
    return value


def _header_items(headers: Any) -> Iterable[Any]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    items = getattr(headers, "items", None)
    # werkzeug's Headers has items(); a list of pairs is what Flask also accepts.
    return list(items()) if callable(items) else list(headers)


def _merge_headers(base: dict[str, str], extra: Any) -> dict[str, str]:
    """Add plugin headers over `base`: names compared case-insensitively, invalid names dropped."""
    merged = dict(base)
    for item in _header_items(extra):
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            continue
        text = str(value)
        # A CR or LF would split the header; InfluxDB 3 also turns an invalid value into "".
        if any(c in text for c in "\r\n\0"):
            text = ""
        for existing in [k for k in merged if k.lower() == name.lower()]:
            del merged[existing]
        merged[name] = text
    return merged


def _body(value: Any) -> tuple[bytes, str]:
    """A tuple's body element: str as HTML, dict/list as JSON, bytes as octets, else str() as text."""
    if isinstance(value, str):
        return value.encode(), _HTML
    if isinstance(value, (dict, list)):
        return _json(value), _JSON
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), _OCTETS
    return str(value).encode(), _TEXT


def _json(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"could not convert the return value to JSON: {exc}") from None


def _flask_object(value: Any) -> tuple[int, dict[str, str], bytes]:
    status = _status(getattr(value, "status_code", None))
    data = value.get_data()
    if isinstance(data, str):
        body = data.encode()
    elif isinstance(data, (bytes, bytearray)):
        body = bytes(data)  # real Flask Response.get_data() returns bytes; InfluxDB only takes str
    else:
        raise ValueError(f"get_data() of the returned response gave {type(data).__name__}, expected str")
    headers = getattr(value, "headers", None)
    return status, _merge_headers({}, headers) if headers is not None else {}, body


def _tuple(value: tuple[Any, ...]) -> tuple[int, dict[str, str], bytes]:
    body, content_type = _body(value[0])
    status, headers = 200, None
    if len(value) >= 2:
        second = value[1]
        if isinstance(second, int):
            status = _status(second)  # a bool lands here too, and is refused as a status
        elif isinstance(second, Mapping) and len(value) == 2:
            headers = second
        else:
            raise ValueError(
                f"expected an int status code or a dictionary in header item, got {type(second).__name__}"
            )
    if len(value) == 3:
        if not isinstance(value[2], Mapping):
            raise ValueError("expected a dictionary in header item")
        headers = value[2]
    base = {"Content-Type": content_type}
    return status, _merge_headers(base, headers) if headers is not None else base, body


def _concatenate(value: Iterable[Any]) -> bytes:
    parts: list[str] = []
    try:
        for item in value:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, (bytes, bytearray)):
                try:
                    parts.append(bytes(item).decode())
                except UnicodeDecodeError:
                    continue  # InfluxDB 3 keeps only the bytes items that are valid UTF-8
    except Exception as exc:
        raise ValueError(f"iterating the return value failed: {exc}") from None
    return "".join(parts).encode()


def flask_response(value: Any) -> tuple[int, dict[str, str], bytes]:
    """Shape a request plugin's return value as (status, headers, body), Flask-style; ValueError if it can't."""
    marker = getattr(value, "__flask_response__", None)
    if callable(marker):
        try:
            is_flask = bool(marker())
        except Exception as exc:
            raise ValueError(f"__flask_response__() of the returned object failed: {exc}") from None
        if is_flask:
            return _flask_object(value)
    if isinstance(value, tuple) and 1 <= len(value) <= 3:
        return _tuple(value)
    if isinstance(value, str):
        return 200, {"Content-Type": _HTML}, value.encode()
    if isinstance(value, (dict, list)):
        return 200, {"Content-Type": _JSON}, _json(value)
    # Ours: bytes are a body (files, images, protobuf), not an iterable of ints giving an empty body.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 200, {"Content-Type": _OCTETS}, bytes(value)
    if value is not None and isinstance(value, Iterable):
        return 200, {"Content-Type": _HTML}, _concatenate(value)
    raise ValueError("Unsupported return type from Python function")
