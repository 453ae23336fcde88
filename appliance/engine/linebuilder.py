"""`LineBuilder`: one line of line protocol built by a plugin, refused at the call that would make it invalid.

Decisions where InfluxDB 3 Core leaves room (see DESIGN.md, "Where we are deliberately better"):
`LineBuilder` refuses anything that would produce a line the server must reject, at the call
that introduced it: newlines, tabs and NUL in names, names or tag values ending in a
backslash (line protocol cannot express them), NaN and infinities, integers out of range.
Wrong Python types raise `TypeError`; bad values raise `InvalidLineError`, which is also a
`ValueError` so code written for the reference (`uint64_field` raised ValueError) still works.
A tag set to the empty string is left out of the line, as InfluxDB's client libraries do,
because `k=` is invalid line protocol. Schema rules (a field named `time`, a tag and a field
sharing a name, type conflicts) stay with the write path, which knows the catalog.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ..lineprotocol import syntax

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


class InfluxDBError(Exception):
    """Base of the errors LineBuilder raises."""


class InvalidMeasurementError(InfluxDBError):
    """A measurement name that cannot be written as line protocol."""


class InvalidKeyError(InfluxDBError):
    """A tag or field key that cannot be written as line protocol."""


class InvalidLineError(InfluxDBError, ValueError):
    """A line or value that cannot be written as line protocol."""


def _name(text: str) -> str:
    # Every backslash doubled, as the reference LineBuilder writes them (the parser reads both).
    return syntax.escape_name(text, every_backslash=True)


def _as_int(kind: str, key: str, value: Any) -> int:
    # operator.index takes int and int-like numbers (numpy integers) but not floats or strings;
    # bool is an int to Python yet almost always a bug in a numeric field.
    if isinstance(value, bool):
        raise TypeError(f"{kind} field '{key}' needs an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{kind} field '{key}' needs an integer, got {type(value).__name__}") from None


class LineBuilder:
    """Builds one line of line protocol: `LineBuilder("m").tag(...).float64_field(...).build()`."""

    def __init__(self, measurement: str) -> None:
        if not isinstance(measurement, str):
            raise TypeError(f"measurement must be a str, got {type(measurement).__name__}")
        problem = syntax.builder_measurement_problem(measurement)
        if problem is not None:
            raise InvalidMeasurementError(problem)
        self.measurement = measurement
        # Public, as in the reference: tag values raw, field values already encoded.
        self.tags: dict[str, str] = {}
        self.fields: dict[str, str] = {}
        self._timestamp_ns: int | None = None

    @staticmethod
    def _validate_key(key: str, kind: str) -> None:
        if not isinstance(key, str):
            raise InvalidKeyError(f"{kind} key must be a str, got {type(key).__name__}")
        problem = syntax.builder_key_problem(key, kind)
        if problem is not None:
            raise InvalidKeyError(problem)

    def tag(self, key: str, value: Any) -> LineBuilder:
        """Set tag `key` to `str(value)`; an empty value leaves the tag out."""
        self._validate_key(key, "tag")
        text = str(value)
        problem = syntax.builder_tag_value_problem(key, text)
        if problem is not None:
            raise InvalidLineError(problem)
        if text == "":
            self.tags.pop(key, None)  # re-setting still overwrites an earlier value
        else:
            self.tags[key] = text
        return self

    def int64_field(self, key: str, value: int) -> LineBuilder:
        """Set a signed 64-bit integer field."""
        self._validate_key(key, "field")
        number = _as_int("int64", key, value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise InvalidLineError(f"int64 field '{key}' value {number} is out of range")
        self.fields[key] = f"{number}i"
        return self

    def uint64_field(self, key: str, value: int) -> LineBuilder:
        """Set an unsigned 64-bit integer field."""
        self._validate_key(key, "field")
        number = _as_int("uint64", key, value)
        if number < 0:
            raise InvalidLineError(f"uint64 field '{key}' cannot be negative")
        if number > _UINT64_MAX:
            raise InvalidLineError(f"uint64 field '{key}' value {number} is out of range")
        self.fields[key] = f"{number}u"
        return self

    def float64_field(self, key: str, value: float) -> LineBuilder:
        """Set a float field; NaN and infinities are refused."""
        self._validate_key(key, "field")
        if isinstance(value, str | bytes | bool):
            raise TypeError(f"float64 field '{key}' needs a number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:
            raise InvalidLineError(f"float64 field '{key}' value is out of range") from None
        except (TypeError, ValueError):
            raise TypeError(f"float64 field '{key}' needs a number, got {type(value).__name__}") from None
        if not math.isfinite(number):
            raise InvalidLineError(
                f"float64 field '{key}' cannot be {number} (line protocol has no NaN or inf)"
            )
        # repr() is the shortest text that reads back as the same double, and the server's
        # parser takes all of its forms (1.0, 1e+16, 5e-324, -0.0).
        self.fields[key] = repr(number)
        return self

    def string_field(self, key: str, value: str) -> LineBuilder:
        """Set a string field."""
        self._validate_key(key, "field")
        if not isinstance(value, str):
            raise TypeError(f"string field '{key}' needs a str, got {type(value).__name__}")
        problem = syntax.builder_string_problem(key, value)
        if problem is not None:
            raise InvalidLineError(problem)
        self.fields[key] = f'"{syntax.escape_string(value)}"'
        return self

    def bool_field(self, key: str, value: bool) -> LineBuilder:
        """Set a boolean field from the truth of `value`."""
        self._validate_key(key, "field")
        if isinstance(value, str | bytes):  # "false" is truthy: refuse rather than guess
            raise TypeError(f"bool field '{key}' needs a bool, got {type(value).__name__}")
        self.fields[key] = "t" if value else "f"
        return self

    def time_ns(self, timestamp_ns: int | None) -> LineBuilder:
        """Set the timestamp in nanoseconds since the epoch (None: the server's time)."""
        if timestamp_ns is None:
            self._timestamp_ns = None
            return self
        if isinstance(timestamp_ns, bool):
            raise TypeError("timestamp needs an integer of nanoseconds, got bool")
        try:
            number = operator.index(timestamp_ns)
        except TypeError:
            raise TypeError(
                f"timestamp needs an integer of nanoseconds, got {type(timestamp_ns).__name__}"
            ) from None
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise InvalidLineError(f"timestamp {number} is out of range")
        self._timestamp_ns = number
        return self

    def build(self) -> str:
        """Return the line; raises InvalidLineError when no field was set."""
        line = syntax.escape_measurement(self.measurement, every_backslash=True)
        if self.tags:
            line += "," + ",".join(f"{_name(k)}={_name(v)}" for k, v in self.tags.items())
        if not self.fields:
            raise InvalidLineError(f"At least one field is required: {line}")
        line += " " + ",".join(f"{_name(k)}={v}" for k, v in self.fields.items())
        if self._timestamp_ns is not None:
            line += f" {self._timestamp_ns}"
        return line
