"""Parsing of human-written durations ("10m", "1h30m", "30d") and byte sizes ("64MiB")."""

from __future__ import annotations

import re

from .lineprotocol.syntax import NS_PER_SECOND, NS_PER_UNIT

_S = NS_PER_SECOND
_DURATION_UNITS = {
    **NS_PER_UNIT,
    "µs": NS_PER_UNIT["us"],
    "sec": _S,
    "m": 60 * _S,
    "min": 60 * _S,
    "h": 3600 * _S,
    "hr": 3600 * _S,
    "d": 86400 * _S,
    "day": 86400 * _S,
    "days": 86400 * _S,
    "w": 7 * 86400 * _S,
    "y": 365 * 86400 * _S,
}
_DURATION_PART = re.compile(r"(\d+)\s*([a-zµ]+)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_duration_ns(text: str | int) -> int:
    """Parse "10m", "1h30m", "30d" (or bare seconds as int) into nanoseconds."""
    if isinstance(text, int):
        return text * _S
    s = text.strip().lower()
    if s.isdigit():
        return int(s) * _S
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(s):
        if s[pos : m.start()].strip() or m.group(2) not in _DURATION_UNITS:
            break
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"invalid duration {text!r}: write it like 10s, 5m, 1h30m or 30d")
    return total


def parse_size(text: str | int) -> int:
    """Parse a byte size: an int, or "64MiB", "10MB", "512k"."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: write it like 1048576, 64MiB or 10MB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
