"""Data types shared by every stage: precision, column types and parsed table batches."""

from __future__ import annotations

import enum
import heapq
import itertools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NewType

import pyarrow as pa
import pyarrow.compute as pc

from .lineprotocol.syntax import NS_PER_UNIT
from .lineprotocol.syntax import TIME_COLUMN as TIME_COLUMN  # the column every table has

# The rules for names (name_problem) live with line protocol's other rules, in lineprotocol.syntax.

WalSeq = NewType("WalSeq", int)

#: The times a point may carry: the whole UTC days that int64 nanoseconds hold, 1677-09-22
#: to 2262-04-10. Every gen1 window and `date=` folder of a time in this range is itself a
#: valid int64 time; the partial first and last days (and -2^63, which some readers take for
#: a missing time, and 2^63-1, which DuckDB reads as infinity) are left out.
MIN_TIME_NS = -9_223_286_400 * 10**9
MAX_TIME_NS = 9_223_286_400 * 10**9 - 1
TIME_RANGE = "1677-09-22T00:00:00Z to 2262-04-10T23:59:59.999999999Z"

#: A UTF-8 byte order mark, as Notepad and PowerShell's Out-File save UTF-8.
_BOM = b"\xef\xbb\xbf"


def strip_bom(body: bytes) -> bytes:
    """`body` without one leading UTF-8 byte order mark: it is not line 1's data."""
    return body[len(_BOM) :] if body.startswith(_BOM) else body


def time_problem(ns: int) -> str | None:
    """Why a time in ns cannot be stored (None: it can)."""
    if MIN_TIME_NS <= ns <= MAX_TIME_NS:
        return None
    return f"is outside the supported range {TIME_RANGE}"


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
        """Nanoseconds per unit of this precision (AUTO: 1; the unit is guessed per timestamp)."""
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
_NS_PER_UNIT = {Precision.AUTO: 1} | {p: NS_PER_UNIT[p.value] for p in Precision if p is not Precision.AUTO}


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


#: Rejected lines a write reports in full; past it they are only counted (InfluxDB also
#: bounds its list), so that the report of a body of bad lines stays small.
MAX_LINE_ERRORS = 100
_ORDER = itertools.count()  # heap tie-breaker: LineErrors do not compare


class LineErrors:
    """The rejected lines of one write: the first `limit` by line number in full, all counted.

    Memory stays proportional to the body: 4 bytes per rejected line (their numbers, which
    MQTT needs to tell which message a line came from) plus at most `limit` LineErrors.
    """

    def __init__(self, limit: int = MAX_LINE_ERRORS) -> None:
        self.limit = limit
        self.numbers = array("i")  # every rejected line, in the order reported
        self._kept: list[tuple[int, int, LineError]] = []  # max-heap on line number (negated)

    def __len__(self) -> int:
        return len(self.numbers)

    def __bool__(self) -> bool:
        return bool(self.numbers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineErrors):
            return NotImplemented
        return sorted(self.numbers) == sorted(other.numbers) and self.listed() == other.listed()

    __hash__ = None  # type: ignore[assignment]

    def wants(self, line_number: int) -> bool:
        """Whether a LineError for this line would be kept (else add() only counts it)."""
        return len(self._kept) < self.limit or line_number < -self._kept[0][0]

    def add(self, line_number: int, original_line: str, message: str) -> None:
        """Note a rejected line (call once per line)."""
        self.numbers.append(line_number)
        if self.wants(line_number):
            self._keep(LineError(line_number, original_line, message))

    def count(self, line_number: int) -> None:
        """Note a rejected line that wants() said would not be kept."""
        self.numbers.append(line_number)

    def extend(self, other: LineErrors) -> None:
        """Take every line another LineErrors noted."""
        self.numbers.extend(other.numbers)
        for _, _, e in other._kept:
            if self.wants(e.line_number):
                self._keep(e)

    def _keep(self, e: LineError) -> None:
        """Keep `e` (wants() said so), dropping the highest line kept if full."""
        item = (-e.line_number, next(_ORDER), e)
        if len(self._kept) < self.limit:
            heapq.heappush(self._kept, item)
        else:
            heapq.heapreplace(self._kept, item)

    def sorted_numbers(self) -> Sequence[int]:
        """Every rejected line number, ascending, without a Python int per line (for bisect)."""
        n = len(self.numbers)
        if n == 0:
            return []
        arr = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(self.numbers)])
        if n == 1 or pc.all(pc.less(arr.slice(0, n - 1), arr.slice(1))).as_py():
            return memoryview(self.numbers)  # noted in order already (the common case)
        ordered = pc.array_take(arr, pc.array_sort_indices(arr))
        buf = ordered.buffers()[1]
        assert buf is not None
        return memoryview(buf).cast("i")[ordered.offset : ordered.offset + n]

    def listed(self) -> list[LineError]:
        """The kept LineErrors, by line number."""
        return sorted((e for _, _, e in self._kept), key=lambda e: e.line_number)

    def first(self) -> LineError:
        return min((e for _, _, e in self._kept), key=lambda e: e.line_number)


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
    errors: list[LineError]  # the first MAX_LINE_ERRORS rejected lines, by line number
    lines: int  # non-blank, non-comment lines seen (accepted + rejected)
    rejected: LineErrors = field(default_factory=LineErrors)  # every rejected line, counted
    limit_hit: bool = False  # a table's lines name more columns than a table may hold
