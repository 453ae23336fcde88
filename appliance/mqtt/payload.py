"""One MQTT message's payload as line protocol: to_lines picks JSON conversion (jsonlines) or,
for a line protocol payload, retag_lines; pure logic, no I/O.

The caller submits the result through the normal write path, so the line protocol parser has
the last word on every line. Names are escaped so that the parser reads back exactly what was
written (the rules are in lineprotocol/syntax.py); what line protocol cannot carry at all
(line breaks, tabs in names, a trailing backslash, a measurement starting with `#`) is left out
with a reason.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from ..lineprotocol.syntax import (
    MEASUREMENT,
    RECORD_START,
    TAG_KEY,
    TAG_VALUE,
    SplitState,
    continued,
    escape_measurement,
    escape_name,
    skipped,
    split_unescaped,
    unescape_measurement,
    unescape_name,
)
from ..model import strip_bom
from .jsonlines import JsonOptions, json_to_lines
from .reasons import Reasons, why_unwritable


def to_lines(
    payload: bytes,
    json_opts: JsonOptions | None,
    measurement: str | None,
    tags: Mapping[str, str],
    arrival_ns: int,
) -> tuple[bytes, Reasons]:
    """A payload as line protocol (JSON converted when `json_opts` is set, else retagged), with
    the reasons for what was left out."""
    if json_opts is not None:
        return json_to_lines(payload, json_opts, measurement, tags, arrival_ns)
    errors = Reasons()
    return retag_lines(strip_bom(payload), measurement, tags, errors), errors


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
    if measurement is not None and why_unwritable(measurement, MEASUREMENT) is None:
        new = escape_measurement(measurement)
    extra = {
        k: f"{escape_name(k)}={escape_name(v)}"
        for k, v in tags.items()
        if v != "" and why_unwritable(k, TAG_KEY) is None and why_unwritable(v, TAG_VALUE) is None
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
