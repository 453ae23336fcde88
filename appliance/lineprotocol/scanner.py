"""The exact route's scanner: one line protocol record to its names and raw value tokens.

A record is the text of one logical line (newlines inside quoted strings included). The
scanner checks the syntax and the names and keeps each field value as written (strings still
quoted and escaped) plus the raw timestamp; lineprotocol.columns judges the values later, per
table. Every rejection is a Reject with InfluxDB's wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .columns import MAX_STRING_BYTES, TOO_LONG, Reject, Token, snip
from .syntax import BAD_NAME_CHAR, name_problem, unescape_measurement, unescape_name

ENDS_WITH_BACKSLASH = "Measurements, tag keys and values, and field keys may not end with a backslash"

# A backslash always pairs with the next character (InfluxDB keeps unknown escapes
# literally), so `\\[\s\S]?` is part of every name; `?` lets a trailing one through to the
# ends-with-backslash check.
_MEASUREMENT = re.compile(r"(?:[^\\, \t\n\x00]++|\\[\s\S]?)*+")
_TAG_KEY = re.compile(r"(?:[^\\= \t\n]++|\\[\s\S]?)*+")  # field keys too; commas are legal
_TAG_VALUE = re.compile(r"(?:[^\\, \t\n]++|\\[\s\S]?)*+")
_STRING = re.compile(r'"(?:[^"\\]++|\\[\s\S])*+"')
_VALUE = re.compile(r"[^, ]*+")
_TOKEN = re.compile(r"[^ ]*+")
_SPACES = re.compile(r" *+")
_SERIES_TEXT = re.compile(r"(?:[^\\ ]++|\\[\s\S]?)*+")  # up to the first unescaped space


def series_text_end(line: str) -> int:
    """Where a record's series key text ends: at its first unescaped space (or the end)."""
    return _skip(_SERIES_TEXT, line, 0)


def scan_series(rec: str, max_tags: int | None = None) -> tuple[str, dict[str, str], int]:
    """Measurement and tags at the start of a record, and where the series key ends; Reject
    as soon as there are more than `max_tags` tags (the rest is not read)."""
    n = len(rec)
    pos = _skip(_MEASUREMENT, rec, 0)
    if pos == 0:
        raise Reject("Invalid measurement was provided")
    measurement = _unescape(rec[:pos], unescape_measurement)
    tags: dict[str, str] = {}
    while pos < n and rec[pos] == ",":
        start = pos + 1
        pos = _skip(_TAG_KEY, rec, start)
        if pos == start:
            raise Reject(f"Expected tag key, got {_got(rec, start)}")
        if pos >= n or rec[pos] != "=":
            raise Reject(f"Tag set malformed: could not find equals sign in `{snip(rec[start:])}`")
        key = _unescape(rec[start:pos], unescape_name)
        start = pos + 1
        pos = _skip(_TAG_VALUE, rec, start)
        if pos == start:
            raise Reject(f"Expected tag value, got {_got(rec, start)}")
        tags[key] = _unescape(rec[start:pos], unescape_name)  # a repeated tag: last value wins
        if max_tags is not None and len(tags) > max_tags:
            raise Reject(
                f"the line has more than {max_tags} tags; a table holds at most {max_tags}"
                " columns (catalog.max_columns)"
            )
    return measurement, tags, pos


def scan(
    rec: str, max_columns: int | None = None
) -> tuple[str, dict[str, str], int, tuple[str, ...], tuple[Token, ...]]:
    """Split one record into measurement, tags, series end, field keys and canonical tokens.

    Tokens are the raw text of each field value (strings still quoted and escaped) and the
    raw timestamp (or None) last; their values are checked later, per table. Names are
    checked here (name_problem), and a record with more than `max_columns` tags and fields
    is rejected as soon as the scan passes that many.
    """
    measurement, tags, pos = scan_series(rec, max_columns)
    limit = max_columns - len(tags) if max_columns is not None else -1
    n = len(rec)
    series_end = pos
    if pos >= n or rec[pos] != " ":
        raise Reject(f"Expected at least one space character, got {_got(rec, pos)}")
    pos = _skip(_SPACES, rec, pos)
    keys: list[str] = []
    tokens: list[Token] = []
    while True:
        start = pos
        pos = _skip(_TAG_KEY, rec, start)
        if pos == start or pos >= n or rec[pos] != "=":
            if not keys:
                raise Reject("No fields were provided")
            raise Reject(f"Could not parse entire line. Found trailing content: `{snip(rec[start - 1 :])}`")
        key = _unescape(rec[start:pos], unescape_name)
        pos += 1
        if pos < n and rec[pos] == '"':
            m = _STRING.match(rec, pos)
            if m is None:
                raise Reject(f"invalid field value for field '{key}': unterminated string")
            token, pos = m.group(), m.end()
            if pos < n and rec[pos] not in ", ":
                raise Reject(f"invalid field value for field '{key}': `{snip(rec[pos:])}` after string")
        else:
            end = _skip(_VALUE, rec, pos)
            token, pos = rec[pos:end], end
        keys.append(key)
        tokens.append(token)
        if len(keys) > limit >= 0:
            raise Reject(
                f"the line has more than {max_columns} tags and fields; a table holds at most"
                f" {max_columns} columns (catalog.max_columns): split it into several lines"
            )
        if pos < n and rec[pos] == ",":
            pos += 1
            continue
        break
    timestamp = None
    if pos < n:  # a space: the loop above stops only at a space or the end
        pos = _skip(_SPACES, rec, pos)
        if pos < n:
            end = _skip(_TOKEN, rec, pos)
            timestamp = rec[pos:end]
            pos = _skip(_SPACES, rec, end)
            if pos < n:
                raise Reject(f"Could not parse entire line. Found trailing content: `{snip(rec[pos:])}`")
    tokens.append(timestamp)
    if BAD_NAME_CHAR.search(rec, 0, pos) is not None:  # rare: find which name holds it
        _check_name(measurement, "measurement")
        for k in tags:
            _check_name(k, "tag key")
        for k in keys:
            _check_name(k, "field key")
    return measurement, tags, series_end, tuple(keys), tuple(tokens)


def _check_name(name: str, kind: str) -> None:
    """Reject a name that name_problem refuses, saying which name and why."""
    problem = name_problem(name)
    if problem is not None:
        raise Reject(f"invalid {kind} {snip(ascii(name), 40)}: it {problem}")


def _skip(pattern: re.Pattern[str], rec: str, pos: int) -> int:
    """End of `pattern` matched at pos (every scanner pattern can match empty)."""
    m = pattern.match(rec, pos)
    return m.end() if m is not None else pos


def _unescape(raw: str, unescape: Callable[[str], str]) -> str:
    """A name as written to its text; Reject if it ends with a backslash or is too long."""
    text = unescape(raw)
    if text.endswith("\\"):
        raise Reject(ENDS_WITH_BACKSLASH)
    if len(text) > MAX_STRING_BYTES // 4 and len(text.encode()) > MAX_STRING_BYTES:
        raise Reject(TOO_LONG)
    return text


def _got(rec: str, pos: int) -> str:
    """What the scanner found at `pos`, for a message."""
    return "end of input" if pos >= len(rec) else f"`{snip(rec[pos:])}`"
