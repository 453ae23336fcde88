"""Helpers for the MQTT conversion tests: JSON converted with fixed times, every output read back
by the real line protocol parser, and strategies for printable names and values."""

from __future__ import annotations

import calendar
import json
from typing import Any

from hypothesis import strategies as st

from appliance.lineprotocol.parser import parse
from appliance.lineprotocol.syntax import name_problem
from appliance.model import ColumnType, Precision
from appliance.mqtt.jsonlines import JsonOptions, json_to_lines

NOW = 1_700_000_000_123_456_789
ARRIVAL = 1_800_000_000_000_000_001
SECOND = 1_000_000_000


def read(body: bytes, precision: Precision = Precision.NS) -> list[dict[str, Any]]:
    """Rows the parser reads from `body` (which must parse cleanly), in line order.

    Each row holds its non-null tags and fields plus `_table` and `_time`.
    """
    result = parse(body, precision, NOW)
    assert not result.errors, [(e.line_number, e.error_message) for e in result.errors]
    found = []
    for t in result.tables:
        for i in range(t.num_rows):
            row: dict[str, Any] = {"_table": t.name, "_time": t.time[i].as_py()}
            row.update({k: a[i].as_py() for k, a in t.tags.items() if a[i].is_valid})
            row.update({k: a[i].as_py() for k, (_, a) in t.fields.items() if a[i].is_valid})
            found.append((t.line_numbers[i].as_py(), row))
    return [row for _, row in sorted(found, key=lambda pair: pair[0])]


def kinds(body: bytes) -> dict[str, ColumnType]:
    """Column types of a body's tables, by column name."""
    result = parse(body, Precision.NS, NOW)
    assert not result.errors
    out = {k: ColumnType.TAG for t in result.tables for k in t.tags}
    out.update({k: kind for t in result.tables for k, (kind, _) in t.fields.items()})
    return out


def convert(
    payload: Any,
    opts: JsonOptions | None = None,
    measurement: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[bytes, list[str]]:
    """json_to_lines on a JSON document (bytes are sent as they are); measurement `m` by default."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return json_to_lines(data, opts or JsonOptions(measurement="m"), measurement, tags or {}, ARRIVAL)


def rows(payload: Any, opts: JsonOptions | None = None, **kw: Any) -> list[dict[str, Any]]:
    """The rows a payload becomes, asserting it converted without a complaint."""
    body, errors = convert(payload, opts, **kw)
    assert errors == []
    return read(body)


def unix_ns(text: str) -> int:
    """ns of a UTC time written YYYY-MM-DDTHH:MM:SS, computed apart from the code under test."""
    return (
        calendar.timegm(tuple(int(x) for x in text.replace("T", "-").replace(":", "-").split("-"))) * SECOND
    )


# Printable text: no control characters (so no newline, tab or NUL) and no lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
VALUE = TEXT.filter(lambda s: s != "" and not s.endswith("\\"))
NAME = VALUE.filter(lambda s: s != "time" and name_problem(s) is None)
