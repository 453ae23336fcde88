"""One MQTT message (topic + payload) as line protocol; pure logic, no I/O.

TopicParsing turns topic levels into a measurement and tags. json_to_lines turns a JSON
payload into lines with an explicit ns timestamp; retag_lines adds topic tags to a line
protocol payload. The caller submits the result through the normal write path, so the line
protocol parser has the last word on every line.

Names are escaped so that the parser reads back exactly what was written: `,` and space in a
measurement, `,` `=` and space in tag keys, tag values and field keys, and a backslash only
where the parser would otherwise take it as part of an escape (before one of those, before
another backslash). String field values escape `\\` and `"`. What line protocol cannot carry
at all (line breaks, tabs in names, a trailing backslash, a measurement starting with `#`)
is left out with a reason.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from appliance.lineprotocol.syntax import (
    FIELD_KEY,
    MEASUREMENT,
    NS_PER_SECOND,
    NS_PER_UNIT,
    RECORD_START,
    TAG_KEY,
    TAG_VALUE,
    SplitState,
    carry_problem,
    continued,
    encodable,
    escape_measurement,
    escape_name,
    escape_string,
    guess_unit,
    skipped,
    split_unescaped,
    unescape_measurement,
    unescape_name,
)
from appliance.model import MAX_LINE_ERRORS, MAX_TIME_NS, MIN_TIME_NS, TIME_RANGE

TIME_FORMATS = ("auto", "s", "ms", "us", "ns", "rfc3339")
NO_MEASUREMENT = "no measurement: set measurement, measurement_key or {measurement} in topic_parsing"

_MEASUREMENT, _TAG_KEY, _TAG_VALUE, _FIELD_KEY = MEASUREMENT, TAG_KEY, TAG_VALUE, FIELD_KEY
_SKIP_LEVEL = ("_", "+")
_MEASUREMENT_LEVEL = "measurement"
_NAMED = re.compile(r"\{([^{}]*)\}")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
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


#: Reasons listed per message, as many as a write lists rejected lines; past this many they are
#: only counted (Reasons.omitted).
MAX_REASONS = MAX_LINE_ERRORS


class Reasons(list[str]):
    """Why parts of a payload were left out: the first `limit` reasons listed, the rest counted.

    A list, so code that appends reasons needs no change; memory stays bounded whatever the
    payload holds (a million bad lines or JSON elements cost one counter).
    """

    def __init__(self, limit: int = MAX_REASONS) -> None:
        super().__init__()
        self.limit = limit
        self.omitted = 0

    def append(self, reason: str) -> None:
        if len(self) < self.limit:
            super().append(reason)
        else:
            self.omitted += 1

    def extend(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.append(reason)
        if isinstance(reasons, Reasons):
            self.omitted += reasons.omitted

    @property
    def total(self) -> int:
        """Every reason noted, listed or not."""
        return len(self) + self.omitted


class PayloadError(ValueError):
    """A message that cannot become line protocol; str() is a one-line reason a user can act on."""


class _Dropped(Exception):
    """One JSON point is left out; the message is the reason."""


# -- topics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicParsing:
    """Compiled `topic_parsing` pattern, e.g. "_/{site}/{device}/{measurement}"."""

    pattern: str = ""
    topic_tag: str = ""
    _named: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    @classmethod
    def compile(cls, pattern: str, topic_tag: str = "") -> TopicParsing:
        """Check a pattern (ValueError naming the bad element) and compile it."""
        return cls(pattern, topic_tag)

    def __post_init__(self) -> None:
        named = _compile_levels(self.pattern) if self.pattern else []
        if self.topic_tag:
            _check_config_name(self.topic_tag, "topic_tag")
            if any(name == self.topic_tag for _, name in named):
                raise ValueError(
                    f"topic_tag {_show(self.topic_tag)} is also a {{name}} in topic_parsing {_show(self.pattern)}"
                )
        elif self.pattern and not named:
            raise ValueError(
                f"topic_parsing {_show(self.pattern)} names no level: use {{name}} for a tag or "
                "{measurement} for the measurement in at least one level, or set topic_tag"
            )
        object.__setattr__(self, "_named", tuple(named))

    @property
    def gives_measurement(self) -> bool:
        """Whether a topic level is the measurement ({measurement})."""
        return any(name == _MEASUREMENT_LEVEL for _, name in self._named)

    def apply(self, topic: str) -> tuple[str | None, dict[str, str]]:
        """The measurement (None: not from the topic) and tags of a topic, or PayloadError."""
        tags: dict[str, str] = {}
        if self.topic_tag:
            _check_topic_value(topic, topic, _TAG_VALUE, f"topic_tag {_show(self.topic_tag)}")
            tags[self.topic_tag] = topic
        if not self._named:
            return None, tags
        levels = topic.split("/")
        missing = [f"{{{name}}}" for i, name in self._named if i >= len(levels)]
        if missing:
            raise PayloadError(
                f"topic {_show(topic)} has {len(levels)} levels; topic_parsing {_show(self.pattern)} "
                f"needs {self._named[-1][0] + 1} for {', '.join(missing)}"
            )
        measurement = None
        for i, name in self._named:
            where = f"level {i + 1} ({{{name}}})"
            if name == _MEASUREMENT_LEVEL:
                measurement = levels[i]
                _check_topic_value(topic, measurement, _MEASUREMENT, where)
            elif levels[i]:  # an empty tag value is left out, as line protocol has none
                _check_topic_value(topic, levels[i], _TAG_VALUE, where)
                tags[name] = levels[i]
        return measurement, tags


def _compile_levels(pattern: str) -> list[tuple[int, str]]:
    """(level index, name) of each named level, {measurement} included; ValueError if bad."""
    named: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for i, element in enumerate(pattern.split("/")):
        if element in _SKIP_LEVEL:
            continue
        m = _NAMED.fullmatch(element)
        if m is None or not m.group(1):
            raise ValueError(_bad_element(pattern, i, element))
        name = m.group(1)
        if name in seen:
            raise ValueError(
                f"topic_parsing {_show(pattern)}: {element} appears at levels {seen[name] + 1} and {i + 1}; "
                "each name may be used once"
            )
        seen[name] = i
        if name != _MEASUREMENT_LEVEL:
            _check_config_name(name, f"topic_parsing {_show(pattern)}: level {i + 1}")
        named.append((i, name))
    return named


def _bad_element(pattern: str, i: int, element: str) -> str:
    allowed = "use _ or + to skip a level, {name} for a tag, or {measurement} for the measurement"
    if not element:
        what = "is empty"
    elif element == "#":
        what = '"#" is not allowed (levels past the pattern are ignored anyway)'
    else:
        what = f"{_show(element)} is not allowed"
    return f"topic_parsing {_show(pattern)}: level {i + 1} {what}; {allowed}"


def _check_config_name(name: str, where: str) -> None:
    problem = _problem(name, _TAG_KEY)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def _check_topic_value(topic: str, value: str, kind: str, where: str) -> None:
    problem = _problem(value, kind)
    if problem is not None:
        raise PayloadError(f"topic {_show(topic)}: {where}: {problem}")


# -- JSON ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonOptions:
    """How a JSON payload becomes points; names refer to flattened keys (`a_b` for {"a": {"b": ..}})."""

    measurement: str = ""  # fixed measurement name
    measurement_key: str = ""  # take the measurement from this JSON key (string value)
    tag_keys: tuple[str, ...] = ()  # JSON keys that become tags
    field_keys: tuple[str, ...] = ()  # empty: every remaining value becomes a field
    time_key: str = ""  # JSON key holding the timestamp; empty: arrival time
    time_format: str = "auto"  # auto, s, ms, us, ns, rfc3339

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag_keys", tuple(self.tag_keys))
        object.__setattr__(self, "field_keys", tuple(self.field_keys))
        if self.time_format not in TIME_FORMATS:
            raise ValueError(
                f"time_format {_show(self.time_format)} is unknown: use {', '.join(TIME_FORMATS)}"
            )
        if self.measurement and self.measurement_key:
            raise ValueError("set measurement or measurement_key, not both")
        if self.measurement:
            problem = _problem(self.measurement, _MEASUREMENT)
            if problem is not None:
                raise ValueError(problem)
        roles = [("tag_keys", k) for k in self.tag_keys] + [("field_keys", k) for k in self.field_keys]
        roles += [
            (name, k)
            for name, k in (("measurement_key", self.measurement_key), ("time_key", self.time_key))
            if k
        ]
        first: dict[str, str] = {}
        for role, key in roles:
            if key in first:
                raise ValueError(f"key {_show(key)} is in both {first[key]} and {role}; a key has one role")
            first[key] = role


def json_to_lines(
    payload: bytes, opts: JsonOptions, measurement: str | None, tags: Mapping[str, str], arrival_ns: int
) -> tuple[bytes, Reasons]:
    """Line protocol (ns timestamps) for a JSON object or array of objects, and the reasons for
    what was left out (the first MAX_REASONS, the rest counted); never raises for payload content."""
    errors = Reasons()
    doc, problem = _load(payload)
    default = measurement if measurement is not None else opts.measurement or None
    if problem is None and not opts.measurement_key:
        problem = NO_MEASUREMENT if default is None else _problem(default, _MEASUREMENT)
        if problem is not None and isinstance(doc, _Elements):
            problem = _json_problem(lambda: sum(1 for _ in doc)) or problem  # invalid JSON says more
    if problem is not None:
        errors.append(problem)
        return b"", errors
    topic_tags = _topic_tags(tags, errors)
    points, prefix = (doc, "element {}: ") if isinstance(doc, _Elements) else ([doc], "")
    lines = []

    def convert() -> None:
        for i, point in enumerate(points):
            reasons = Reasons()
            line = _point_line(point, opts, default or "", topic_tags, arrival_ns, reasons)
            if reasons:
                if len(errors) >= errors.limit:  # listed in full already: only count
                    errors.omitted += reasons.total
                else:
                    errors.extend(prefix.format(i) + r for r in reasons)
                    errors.omitted += reasons.omitted
            if line is not None:
                lines.append(line)

    problem = _json_problem(convert)  # an array is read element by element: it may fail late
    if problem is not None:
        errors = Reasons()
        errors.append(problem)
        return b"", errors
    return "\n".join(lines).encode("utf-8"), errors


def _load(payload: bytes) -> tuple[Any, str | None]:
    """The parsed payload (an array as _Elements, read as it is used), or the one reason it is
    unusable as a whole (an array's syntax errors show up while its elements are read)."""
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"payload is not UTF-8: invalid byte at offset {exc.start}"
    start = _JSON_SPACE.match(text).end()  # type: ignore[union-attr]
    if text.startswith("[", start):
        return _Elements(text, start + 1), None
    doc: Any = None

    def load() -> None:
        nonlocal doc
        doc = json.loads(text)

    problem = _json_problem(load)
    if problem is None and not isinstance(doc, dict):
        problem = f"payload must be a JSON object or an array of objects, got {_kind(doc)}"
    return doc, problem


def _json_problem(run: Callable[[], object]) -> str | None:
    """None if run() reads its JSON without error, else why the payload is not valid JSON."""
    try:
        run()
    except json.JSONDecodeError as exc:
        return f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return f"invalid JSON: {exc}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    return None


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_DECODER = json.JSONDecoder()


class _Elements:
    """The elements of a JSON array, parsed one at a time as they are iterated: a payload of
    a million small objects never exists as a million dicts at once. Iterating raises what
    json.loads would for the same text (JSONDecodeError at the same line and column)."""

    def __init__(self, text: str, pos: int) -> None:
        self.text, self.pos = text, pos  # just after the opening bracket

    def __iter__(self) -> Iterator[Any]:
        text, space = self.text, _JSON_SPACE
        pos = space.match(text, self.pos).end()  # type: ignore[union-attr]
        if not text.startswith("]", pos):
            while True:
                value, pos = _JSON_DECODER.raw_decode(text, pos)
                yield value
                pos = space.match(text, pos).end()  # type: ignore[union-attr]
                if text.startswith(",", pos):
                    pos = space.match(text, pos + 1).end()  # type: ignore[union-attr]
                elif text.startswith("]", pos):
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        end = space.match(text, pos + 1).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)


def _topic_tags(tags: Mapping[str, str], errors: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tags.items():
        _add_tag(out, key, value, errors, "topic tag")
    return out


def _add_tag(tags: dict[str, str], key: str, value: str, errors: list[str], what: str) -> None:
    """Set tags[key] unless the value is empty (line protocol has no empty tag) or cannot be written."""
    if value == "":
        return
    problem = _problem(key, _TAG_KEY) or _problem(value, _TAG_VALUE)
    if problem is not None:
        errors.append(f"{what} {_show(key)}: {problem}; tag left out")
    else:
        tags[key] = value


def _point_line(
    point: Any,
    opts: JsonOptions,
    default: str,
    topic_tags: dict[str, str],
    arrival_ns: int,
    errors: list[str],
) -> str | None:
    """One JSON object as a line, reasons for what was skipped going to `errors`; None if dropped."""
    if not isinstance(point, dict):
        errors.append(f"must be a JSON object, got {_kind(point)}")
        return None
    try:
        flat = _flatten(point, errors)
        name = _point_measurement(flat, opts.measurement_key) if opts.measurement_key else default
        time_ns = _point_time(flat, opts, arrival_ns)
        tags = _point_tags(flat, opts.tag_keys, topic_tags, errors)
        fields = _point_fields(flat, opts, tags, errors)
    except _Dropped as exc:
        errors.append(str(exc))
        return None
    series = "".join([escape_measurement(name)] + [f",{_name(k)}={_name(v)}" for k, v in tags.items()])
    return f"{series} {','.join(f'{_name(k)}={v}' for k, v in fields.items())} {time_ns}"


def _flatten(point: dict[str, Any], errors: list[str]) -> dict[str, Scalar]:
    """Scalar values by flattened key (`a_b`, `a_c_0`); a key made twice keeps its first value."""
    flat: dict[str, Scalar] = {}
    stack: list[tuple[str, Any]] = list(reversed(point.items()))
    while stack:  # no recursion: nesting depth is the payload's choice
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(reversed([(f"{key}_{k}", v) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{key}_{i}", v) for i, v in enumerate(value)]))
        elif key in flat:
            errors.append(f"key {_show(key)}: appears twice once nested keys are joined with _; first kept")
        else:
            flat[key] = value
    return flat


def _point_measurement(flat: dict[str, Scalar], key: str) -> str:
    value = flat.get(key)
    if key not in flat:
        raise _Dropped(f"key {_show(key)}: missing; measurement_key names it")
    if not isinstance(value, str):
        raise _Dropped(f"key {_show(key)}: the measurement must be a string, got {_kind(value)}")
    problem = _problem(value, _MEASUREMENT)
    if problem is not None:
        raise _Dropped(f"key {_show(key)}: {problem}")
    return value


def _point_tags(
    flat: dict[str, Scalar], tag_keys: tuple[str, ...], topic_tags: dict[str, str], errors: list[str]
) -> dict[str, str]:
    """Topic tags, then the point's tag_keys (overriding); null, missing and "" are left out."""
    tags = dict(topic_tags)
    for key in tag_keys:
        value = flat.get(key)
        if value is None:
            continue
        _add_tag(tags, key, value if isinstance(value, str) else json.dumps(value), errors, "key")
    return tags


def _point_fields(
    flat: dict[str, Scalar], opts: JsonOptions, tags: dict[str, str], errors: list[str]
) -> dict[str, str]:
    """Field values as line protocol text by field key; _Dropped when none is left."""
    if opts.field_keys:
        keys = [k for k in opts.field_keys if k in flat]
    else:
        other = {*opts.tag_keys, opts.measurement_key, opts.time_key} - {""}
        keys = [k for k in flat if k not in other]
    fields = {}
    for key in keys:
        value = flat[key]
        if value is None:
            continue
        try:
            fields[key] = _field_text(key, value, tags)
        except ValueError as exc:
            errors.append(f"key {_show(key)}: {exc}; field left out")
    if not fields:
        hint = f" (field_keys: {', '.join(map(_show, opts.field_keys))})" if opts.field_keys else ""
        raise _Dropped(f"no fields{hint}")
    return fields


def _field_text(key: str, value: str | int | float | bool, tags: dict[str, str]) -> str:
    """A field as written after `key=`; every number a float, so 21 and 21.5 share a column.

    ValueError with the reason when line protocol cannot carry it.
    """
    if key in tags:
        raise ValueError("is also a tag of this point (add it to tag_keys to let the payload set the tag)")
    problem = _problem(key, _FIELD_KEY)
    if problem is not None:
        raise ValueError(problem)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"string value {_show(value)} contains a line break")
        if not encodable(value):
            raise ValueError("string value is not valid Unicode (lone surrogate)")
        return '"' + escape_string(value) + '"'
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"number {_snip(str(value))} is too large for a float") from None
    if not math.isfinite(number):
        raise ValueError(f"{json.dumps(number)} is not a finite number")
    return repr(number)  # "21.0", "1e+20", "1.5e-07": the parser's float syntax


# -- time ---------------------------------------------------------------------------------


def _point_time(flat: dict[str, Scalar], opts: JsonOptions, arrival_ns: int) -> int:
    """The point's time in ns: time_key's value, or the arrival time when absent or null."""
    value = flat.get(opts.time_key) if opts.time_key else None
    if value is None:
        return arrival_ns
    try:
        return _time_ns(value, opts.time_format)
    except ValueError as exc:
        raise _Dropped(f"key {_show(opts.time_key)}: {_snip(json.dumps(value))} {exc}") from None


def _time_ns(value: Scalar, time_format: str) -> int:
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


# -- line protocol payloads ---------------------------------------------------------------


def retag_lines(
    body: bytes, measurement: str | None, tags: Mapping[str, str], errors: list[str] | None = None
) -> bytes:
    """Each line with its measurement replaced (if given) and the topic tags added where the line
    has no tag of that name; lines that do not parse, comments and continuations are kept as is.
    A line kept as is because its series key could not be read is reported in `errors`.

    Never raises: TopicParsing.apply refuses topic values that line protocol cannot carry, and
    any such measurement or tag passed here anyway is ignored.
    """
    if measurement is None and not tags:
        return body
    new = None
    if measurement is not None and _problem(measurement, _MEASUREMENT) is None:
        new = escape_measurement(measurement)
    extra = {
        k: f"{_name(k)}={_name(v)}"
        for k, v in tags.items()
        if v != "" and _problem(k, _TAG_KEY) is None and _problem(v, _TAG_VALUE) is None
    }
    if new is None and not extra:
        return body
    sink = errors if isinstance(errors, Reasons) or errors is None else Reasons()
    out = io.StringIO()  # line by line: no list of a million lines, whatever the payload holds
    state: SplitState | None = None  # quoting state while a record spans lines
    text = io.StringIO(body.decode("utf-8", "surrogateescape"), newline="\n")
    for number, raw in enumerate(text, 1):
        line, end = (raw[:-1], "\n") if raw.endswith("\n") else (raw, "")
        if state is not None:
            out.write(raw)
            state = continued(line, state)
            continue
        content = line.lstrip(" \t")
        if skipped(content):
            out.write(raw)
            continue
        retagged = _retag(content, new, extra)
        if retagged is content and sink is not None:
            sink.append(f"line {number}: its series key could not be read, so the topic tags were not added")
        out.write(line[: len(line) - len(content)])
        out.write(retagged)
        out.write(end)
        if '"' in content or content.endswith("\\"):
            state = continued(content, RECORD_START)
    if errors is not None and sink is not errors and sink is not None:
        errors.extend(sink)
        if sink.omitted:
            errors.append(f"and {sink.omitted} more lines whose series key could not be read")
    return out.getvalue().encode("utf-8", "surrogateescape")


def _retag(line: str, measurement: str | None, extra: dict[str, str]) -> str:
    """One record's first line with a new series key; unchanged when its series key does not parse."""
    split = split_unescaped(line, " ", 1)
    if len(split) < 2 or "\t" in split[0]:
        return line
    old, *pairs = split_unescaped(split[0], ",")
    if not old or "\x00" in old or unescape_measurement(old).endswith("\\"):
        return line
    have = set()
    for pair in pairs:
        key, *value = split_unescaped(pair, "=", 1)
        names = [unescape_name(raw) for raw in (key, *value)]
        if len(names) < 2 or not all(names) or any(n.endswith("\\") for n in names):
            return line
        have.add(names[0])
    added = [text for k, text in extra.items() if k not in have]
    return ",".join([measurement if measurement is not None else old, *pairs, *added]) + " " + split[1]


# -- names --------------------------------------------------------------------------------


def _problem(text: str, kind: str) -> str | None:
    """Why line protocol cannot carry `text` as a `kind` (measurement, tag key...), or None."""
    reason = carry_problem(text, kind)
    return None if reason is None else f"{kind} {_show(text)} {reason}"


def _name(text: str) -> str:
    """A tag key, tag value or field key escaped."""
    return escape_name(text)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def _show(text: str) -> str:
    """A name or value quoted for a message (JSON string syntax), shortened when long."""
    return _snip(json.dumps(text, ensure_ascii=not encodable(text)))


def _snip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
