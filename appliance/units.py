"""Parsing of human-written durations ("10m", "1h30m", "30d") and byte sizes ("64MiB")."""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "sec": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "min": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "hr": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "day": 86400 * 1_000_000_000,
    "days": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
    "y": 365 * 86400 * 1_000_000_000,
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
        return text * 1_000_000_000
    s = text.strip().lower()
    if s.isdigit():
        return int(s) * 1_000_000_000
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
