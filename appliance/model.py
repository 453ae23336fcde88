"""Data types shared by every stage: precision, column types and parsed table batches."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

import pyarrow as pa

WalSeq = NewType("WalSeq", int)

TIME_COLUMN = "time"


class Precision(enum.Enum):
    """Timestamp precision of a write; AUTO guesses per timestamp from its magnitude."""

    AUTO = "auto"
    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"

    @classmethod
    def parse(cls, text: str | None, default: Precision) -> Precision:
        """Map every spelling InfluxDB accepts (`s`, `second`, `u`, `n`...) to a Precision."""
        if text is None or text == "":
            return default
        try:
            return _PRECISION_SPELLINGS[text.strip().lower()]
        except KeyError:
            raise ValueError(f"invalid precision {text!r}: use auto, s, ms, us or ns") from None

    @property
    def ns_per_unit(self) -> int:
        return _NS_PER_UNIT[self]


_PRECISION_SPELLINGS = {
    "auto": Precision.AUTO,
    "s": Precision.S,
    "second": Precision.S,
    "seconds": Precision.S,
    "ms": Precision.MS,
    "millisecond": Precision.MS,
    "milliseconds": Precision.MS,
    "us": Precision.US,
    "u": Precision.US,
    "microsecond": Precision.US,
    "microseconds": Precision.US,
    "ns": Precision.NS,
    "n": Precision.NS,
    "nanosecond": Precision.NS,
    "nanoseconds": Precision.NS,
}
_NS_PER_UNIT = {
    Precision.AUTO: 1,
    Precision.S: 1_000_000_000,
    Precision.MS: 1_000_000,
    Precision.US: 1_000,
    Precision.NS: 1,
}


class ColumnType(enum.Enum):
    """Type of a column in the catalog; the value is the name the configure API uses."""

    TAG = "tag"
    FLOAT = "float64"
    INTEGER = "int64"
    UINTEGER = "uint64"
    STRING = "utf8"
    BOOLEAN = "bool"
    TIME = "time"

    @property
    def iox_name(self) -> str:
        """The name InfluxDB 3 uses in type-conflict messages."""
        return _IOX_NAMES[self]

    @property
    def arrow_type(self) -> pa.DataType:
        """Arrow type of this column as stored in Parquet and seen by SQL."""
        return _ARROW_TYPES[self]

    @classmethod
    def from_api(cls, name: str) -> ColumnType:
        """Parse a field type as the configure/table API spells it."""
        try:
            kind = _API_NAMES[name.strip().lower()]
        except KeyError:
            raise ValueError(
                f"unknown field type {name!r}: use utf8, int64, uint64, float64 or bool"
            ) from None
        return kind


_IOX_NAMES = {
    ColumnType.TAG: "iox::column_type::tag",
    ColumnType.FLOAT: "iox::column_type::field::float",
    ColumnType.INTEGER: "iox::column_type::field::integer",
    ColumnType.UINTEGER: "iox::column_type::field::uinteger",
    ColumnType.STRING: "iox::column_type::field::string",
    ColumnType.BOOLEAN: "iox::column_type::field::boolean",
    ColumnType.TIME: "iox::column_type::timestamp",
}
_ARROW_TYPES = {
    ColumnType.TAG: pa.dictionary(pa.int32(), pa.string()),
    ColumnType.FLOAT: pa.float64(),
    ColumnType.INTEGER: pa.int64(),
    ColumnType.UINTEGER: pa.uint64(),
    ColumnType.STRING: pa.string(),
    ColumnType.BOOLEAN: pa.bool_(),
    ColumnType.TIME: pa.timestamp("ns"),
}
_API_NAMES = {
    "utf8": ColumnType.STRING,
    "string": ColumnType.STRING,
    "int64": ColumnType.INTEGER,
    "integer": ColumnType.INTEGER,
    "uint64": ColumnType.UINTEGER,
    "uinteger": ColumnType.UINTEGER,
    "float64": ColumnType.FLOAT,
    "float": ColumnType.FLOAT,
    "bool": ColumnType.BOOLEAN,
    "boolean": ColumnType.BOOLEAN,
}


@dataclass
class LineError:
    """One rejected line: 1-based line number, the start of the line and the reason."""

    line_number: int
    original_line: str
    error_message: str

    def to_json(self) -> dict[str, object]:
        return {
            "error_message": self.error_message,
            "line_number": self.line_number,
            "original_line": self.original_line,
        }


@dataclass
class ParsedTable:
    """The rows one write body holds for one table, as Arrow columns.

    Every array has `num_rows` entries. `tags` are pa.string() with nulls where a
    line lacks the tag; `fields` are typed by ColumnType.arrow_type with nulls where
    a line lacks the field; `time` is int64 nanoseconds since the epoch; `line_numbers`
    (int32) gives each row's 1-based line in the body, for error reporting.
    """

    name: str
    num_rows: int
    time: pa.Array
    line_numbers: pa.Array
    tags: dict[str, pa.Array] = field(default_factory=dict)
    fields: dict[str, tuple[ColumnType, pa.Array]] = field(default_factory=dict)


@dataclass
class ParseResult:
    """What the parser makes of one body: tables in first-seen order, and rejected lines."""

    tables: list[ParsedTable]
    errors: list[LineError]
    lines: int  # non-blank, non-comment lines seen (accepted + rejected)
