"""Where a JSON payload becomes line protocol: JsonOptions and json_to_lines.

An object, or an array of objects read element by element, becomes one line per object: nested
keys are flattened (`a_b`), `tag_keys` become tags, the rest (or `field_keys`) float, string or
boolean fields, and `time_key` the timestamp (arrival time otherwise). What line protocol cannot
carry is left out with a reason; the line protocol parser still has the last word on every line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..lineprotocol.syntax import (
    FIELD_KEY,
    MEASUREMENT,
    TAG_KEY,
    TAG_VALUE,
    encodable,
    escape_measurement,
    escape_name,
    escape_string,
)
from .jsontime import TIME_FORMATS, Scalar, time_ns
from .reasons import Reasons, json_kind, quote, shorten, why_unwritable

NO_MEASUREMENT = "no measurement: set measurement, measurement_key or {measurement} in topic_parsing"


class _Dropped(Exception):
    """One JSON point is left out; the message is the reason."""


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
                f"time_format {quote(self.time_format)} is unknown: use {', '.join(TIME_FORMATS)}"
            )
        if self.measurement and self.measurement_key:
            raise ValueError("set measurement or measurement_key, not both")
        if self.measurement:
            problem = why_unwritable(self.measurement, MEASUREMENT)
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
                raise ValueError(f"key {quote(key)} is in both {first[key]} and {role}; a key has one role")
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
        problem = NO_MEASUREMENT if default is None else why_unwritable(default, MEASUREMENT)
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
        problem = f"payload must be a JSON object or an array of objects, got {json_kind(doc)}"
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
    problem = why_unwritable(key, TAG_KEY) or why_unwritable(value, TAG_VALUE)
    if problem is not None:
        errors.append(f"{what} {quote(key)}: {problem}; tag left out")
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
        errors.append(f"must be a JSON object, got {json_kind(point)}")
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
    series = "".join(
        [escape_measurement(name)] + [f",{escape_name(k)}={escape_name(v)}" for k, v in tags.items()]
    )
    return f"{series} {','.join(f'{escape_name(k)}={v}' for k, v in fields.items())} {time_ns}"


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
            errors.append(f"key {quote(key)}: appears twice once nested keys are joined with _; first kept")
        else:
            flat[key] = value
    return flat


def _point_measurement(flat: dict[str, Scalar], key: str) -> str:
    value = flat.get(key)
    if key not in flat:
        raise _Dropped(f"key {quote(key)}: missing; measurement_key names it")
    if not isinstance(value, str):
        raise _Dropped(f"key {quote(key)}: the measurement must be a string, got {json_kind(value)}")
    problem = why_unwritable(value, MEASUREMENT)
    if problem is not None:
        raise _Dropped(f"key {quote(key)}: {problem}")
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
            errors.append(f"key {quote(key)}: {exc}; field left out")
    if not fields:
        hint = f" (field_keys: {', '.join(map(quote, opts.field_keys))})" if opts.field_keys else ""
        raise _Dropped(f"no fields{hint}")
    return fields


def _field_text(key: str, value: str | int | float | bool, tags: dict[str, str]) -> str:
    """A field as written after `key=`; every number a float, so 21 and 21.5 share a column.

    ValueError with the reason when line protocol cannot carry it.
    """
    if key in tags:
        raise ValueError("is also a tag of this point (add it to tag_keys to let the payload set the tag)")
    problem = why_unwritable(key, FIELD_KEY)
    if problem is not None:
        raise ValueError(problem)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"string value {quote(value)} contains a line break")
        if not encodable(value):
            raise ValueError("string value is not valid Unicode (lone surrogate)")
        return '"' + escape_string(value) + '"'
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"number {shorten(str(value))} is too large for a float") from None
    if not math.isfinite(number):
        raise ValueError(f"{json.dumps(number)} is not a finite number")
    return repr(number)  # "21.0", "1e+20", "1.5e-07": the parser's float syntax


def _point_time(flat: dict[str, Scalar], opts: JsonOptions, arrival_ns: int) -> int:
    """The point's time in ns: time_key's value, or the arrival time when absent or null."""
    value = flat.get(opts.time_key) if opts.time_key else None
    if value is None:
        return arrival_ns
    try:
        return time_ns(value, opts.time_format)
    except ValueError as exc:
        raise _Dropped(f"key {quote(opts.time_key)}: {shorten(json.dumps(value))} {exc}") from None
