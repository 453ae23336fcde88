"""Value rules and column-wise machinery of the line protocol parser (used by lineprotocol).

A token is a field value as written (strings still quoted and escaped) or a timestamp. One
at a time, classify(), parse_timestamp() and scale() turn tokens into values or raise Reject
with the user-facing reason. Column-wise, a Layout's regex matches the field section of a
fast-route line, and build() converts a table's token columns with Arrow kernels, raising
Fallback when that would not be exact, so that lineprotocol judges the table line by line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..model import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    ColumnType,
    ParsedTable,
    Precision,
    time_problem,
)
from .syntax import AUTO_UNITS, UNESCAPE_STRING_RE2, guess_unit, unescape_string

MAX_STRING_BYTES = 1 << 20
TOO_LONG = "String is greater than 1MB"
_I64_MIN, _I64_MAX, _U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
_PRECISION_NAMES = {
    Precision.S: "Second",
    Precision.MS: "Millisecond",
    Precision.US: "Microsecond",
    Precision.NS: "Nanosecond",
}
TRUE = ("t", "T", "true", "True", "TRUE")
FALSE = ("f", "F", "false", "False", "FALSE")
BOOLS = {**dict.fromkeys(TRUE, True), **dict.fromkeys(FALSE, False)}
Token = str | None  # a field value as written (strings quoted and escaped), or a timestamp

_INT = re.compile(r"-?[0-9]+i")
_UINT = re.compile(r"[0-9]+u")
_FLOAT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TIMESTAMP = re.compile(r"-?[0-9]+")

_FEW_LAYOUTS = 16  # more layouts in a table: gather its tokens column-wise (_gather_many)
NEVER: Callable[[str], re.Match[str] | None] = re.compile(r"(?!)").fullmatch
# Layout regexes only use keys that are their own raw spelling and cannot move InfluxDB's
# quote tracking (which counts unescaped `=` and `,` after the first space), and values that
# cannot open a quote the tracking would see: so a matching physical line is a whole record.
_FAST_KEY = re.compile(r'[^\\ ,="\t\n\r\x00]+')
_FAST_VALUE = r'("(?:[^"\\]++|\\[\s\S])*+"|[^," \\]*+)'
_FAST_TAIL = r"(?: ++(-?[0-9]++))? *+"
_MAX_PATTERN = 65536

_CHECKS = {  # whole-token patterns for the column-wise type check (RE2 syntax)
    ColumnType.BOOLEAN: "^(?:" + "|".join(TRUE + FALSE) + ")$",
    ColumnType.INTEGER: "^-?[0-9]+i$",
    ColumnType.UINTEGER: "^[0-9]+u$",
    ColumnType.FLOAT: r"^-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$",
}
_TRUE_CHECK = "^(?:" + "|".join(TRUE) + ")$"
_KINDS = (ColumnType.BOOLEAN, ColumnType.INTEGER, ColumnType.UINTEGER, ColumnType.FLOAT)  # codes 2..5


class Reject(Exception):
    """A line is rejected; the message is the user-facing reason."""


class Fallback(Exception):
    """A table cannot be converted column-wise; finish it line by line."""


class Layout:
    """Rows of one table that carry the same field keys in the same order.

    Rows are stored flat, `stride` items each: line number, series id, one token per key and
    the timestamp token; slicing `flat[i::stride]` then yields a column without a Python loop.
    `match` is the layout's regex (None when its keys are not fast-route material).
    """

    __slots__ = ("keys", "index", "dup", "stride", "flat", "extend", "match")

    def __init__(self, keys: tuple[str, ...], fast: bool) -> None:
        self.keys = keys
        self.index = {k: i for i, k in enumerate(keys)}
        self.dup = len(self.index) != len(keys)
        self.stride = len(keys) + 3
        self.flat: list[Any] = []
        self.extend = self.flat.extend
        self.match: Callable[[str], re.Match[str] | None] | None = None
        if fast and all(_FAST_KEY.fullmatch(k) for k in keys) and sum(map(len, keys)) < _MAX_PATTERN:
            body = ",".join(re.escape(k) + "=" + _FAST_VALUE for k in keys)
            self.match = re.compile(" *+" + body + _FAST_TAIL).fullmatch

    @property
    def rows(self) -> int:
        return len(self.flat) // self.stride


class Table:
    """One measurement of a body: its series (tag sets) and layouts in first-seen order."""

    __slots__ = ("name", "series", "layouts", "by_keys", "last")

    def __init__(self, name: str) -> None:
        self.name = name
        self.series: list[dict[str, str]] = []
        self.layouts: list[Layout] = []
        self.by_keys: dict[tuple[str, ...], Layout] = {}
        self.last: Layout | None = None  # the layout new series of this table try first


def split_series(key: str) -> tuple[str, dict[str, str]] | None:
    """Measurement and tags of a series key free of backslashes, tabs and NULs; None if unsure."""
    measurement, *pairs = key.split(",")
    if not measurement:
        return None
    tags: dict[str, str] = {}
    for pair in pairs:
        k, eq, v = pair.partition("=")
        if not k or not eq or not v:
            return None  # includes tag keys with a comma, which only the scanner splits right
        tags[k] = v  # a repeated tag: last value wins
    return measurement, tags


def build(
    table: Table,
    layouts: list[Layout],
    precision: Precision,
    default_time: int,
    kept: tuple[list[list[bool]], dict[str, ColumnType]] | None = None,
    known: Mapping[str, ColumnType] | None = None,
) -> tuple[int, ParsedTable]:
    """Convert a table's token columns with Arrow kernels; raise Fallback on anything irregular.

    Without `kept`, every row is taken and must be regular: no duplicate field in a line, no
    tag/field name clash, no column named `time`, one type per column, agreeing with `known`
    (the types that exist already). With `kept` (a row mask per layout and the types of the
    kept rows' columns, as line-by-line judging fixed them) only those rows are taken. Values
    out of range also raise. Returns the first line number and the table.
    """
    if kept is None:
        if any(lay.dup for lay in layouts):
            raise Fallback
        names = list(dict.fromkeys(k for lay in layouts for k in lay.keys))
    else:
        names = [k for k, kind in kept[1].items() if kind is not ColumnType.TAG]
    if len(layouts) > _FEW_LAYOUTS:
        line_numbers, sid_array, time_tokens, columns = _gather_many(layouts, names, kept)
    else:
        line_numbers, sid_array, time_tokens, columns = _gather_few(layouts, names, kept)
    if len(layouts) > 1:  # layouts are stored apart; one permutation restores line order
        order = pc.sort_indices(line_numbers)
        line_numbers, sid_array, time_tokens = (
            line_numbers.take(order),
            sid_array.take(order),
            time_tokens.take(order),
        )
        columns = {k: arr.take(order) for k, arr in columns.items()}
    if len(line_numbers) == 0:
        raise Fallback
    if kept is None:
        used = pc.unique(sid_array).to_pylist()
        tag_names = list(dict.fromkeys(k for s in used for k in table.series[s]))
        if "time" in columns or "time" in tag_names or not columns.keys().isdisjoint(tag_names):
            raise Fallback
        if known and any(known.get(k, ColumnType.TAG) is not ColumnType.TAG for k in tag_names):
            raise Fallback
    else:
        tag_names = [k for k, kind in kept[1].items() if kind is ColumnType.TAG]
    tags = {k: pa.array([s.get(k) for s in table.series], pa.string()).take(sid_array) for k in tag_names}
    fields = {k: _field(arr) for k, arr in columns.items()}
    expected = kept[1] if kept is not None else known or {}
    if any(expected.get(k, kind) is not kind for k, (kind, _) in fields.items()):
        raise Fallback  # with `kept` this cannot happen: the line judge fixed these types
    time = _time(time_tokens, precision, default_time)
    first = line_numbers[0].as_py()
    return first, ParsedTable(table.name, len(line_numbers), time, line_numbers, tags, fields)


_Gathered = tuple[pa.Array, pa.Array, pa.Array, dict[str, pa.Array]]
_Kept = tuple[list[list[bool]], dict[str, ColumnType]] | None


def _gather_few(layouts: list[Layout], names: list[str], kept: _Kept) -> _Gathered:
    """Line numbers, series ids, timestamp and value tokens (layout after layout), per layout."""
    lines, sids, times = [], [], []
    parts: dict[str, list[pa.Array]] = {k: [] for k in names}
    for n, lay in enumerate(layouts):
        flat, stride = lay.flat, lay.stride
        mask = pa.array(kept[0][n], pa.bool_()) if kept is not None else None
        lines.append(_take(pa.array(flat[0::stride], pa.int32()), mask))
        sids.append(_take(pa.array(flat[1::stride], pa.int32()), mask))
        times.append(_take(pa.array(flat[stride - 1 :: stride], pa.string()), mask))
        for k, col in parts.items():
            i = lay.index.get(k)
            col.append(
                _take(
                    pa.array(flat[2 + i :: stride] if i is not None else [None] * lay.rows, pa.string()), mask
                )
            )
    columns = {k: _concat(col) for k, col in parts.items()}
    return _concat(lines), _concat(sids), _concat(times), columns


def _gather_many(layouts: list[Layout], names: list[str], kept: _Kept) -> _Gathered:
    """_gather_few for many layouts (a body whose lines each have other fields): the tokens of
    every layout go into one array with their column and row, and each column is scattered
    from it, so the kernel calls are per column, not per layout and column."""
    column_of = {k: j for j, k in enumerate(names)}
    lines: list[int] = []
    sids: list[int] = []
    stamps: list[Token] = []
    tokens: list[Token] = []
    cols: list[int] = []
    rows_at: list[int] = []
    for lay in layouts:
        flat, stride, rows, start = lay.flat, lay.stride, lay.rows, len(lines)
        lines += flat[0::stride]
        sids += flat[1::stride]
        stamps += flat[stride - 1 :: stride]
        for k, i in lay.index.items():
            j = column_of.get(k)
            if j is not None:
                tokens += flat[2 + i :: stride]
                cols += [j] * rows
                rows_at += range(start, start + rows)
    n = len(lines)
    cells = pa.table({"c": pa.array(cols, pa.int32()), "r": pa.array(rows_at, pa.int32())})
    order = pc.sort_indices(cells, sort_keys=[("c", "ascending"), ("r", "ascending")])
    values = pa.array(tokens, pa.string()).take(order)
    at = cells.column("r").combine_chunks().take(order)
    counts = pc.value_counts(cells.column("c").combine_chunks()).to_pylist()
    count = {c["values"]: c["counts"] for c in counts}
    every = pa.array(range(n), pa.int32())
    columns: dict[str, pa.Array] = {}
    offset = 0
    for j, k in enumerate(names):
        m = count.get(j, 0)
        mine, where = values.slice(offset, m), at.slice(offset, m)
        offset += m
        if m == n:
            columns[k] = mine
        else:
            hit = pc.is_in(every, value_set=where)
            columns[k] = pc.replace_with_mask(pa.nulls(n, pa.string()), hit, mine)
    line_numbers = pa.array(lines, pa.int32())
    sid_array = pa.array(sids, pa.int32())
    time_tokens = pa.array(stamps, pa.string())
    if kept is not None:
        mask = pa.array([b for per_layout in kept[0] for b in per_layout], pa.bool_())
        line_numbers, sid_array, time_tokens = (
            line_numbers.filter(mask),
            sid_array.filter(mask),
            time_tokens.filter(mask),
        )
        columns = {k: arr.filter(mask) for k, arr in columns.items()}
    return line_numbers, sid_array, time_tokens, columns


def kind_codes(tokens: list[Token]) -> list[int]:
    """Per field token: 0 missing, 1 string, 2 bool, 3 int, 4 uint, 5 float, 6 unparsable.

    Syntax only: a value out of range still gets its type's code.
    """
    arr = pa.array(tokens, pa.string())
    code: Any = _i8(6)
    for n, kind in reversed(list(enumerate(_KINDS, 2))):
        code = pc.if_else(pc.fill_null(pc.match_substring_regex(arr, _CHECKS[kind]), False), _i8(n), code)
    code = pc.if_else(pc.fill_null(pc.starts_with(arr, '"'), False), _i8(1), code)
    return list(pc.if_else(arr.is_null(), _i8(0), code).to_pylist())


def time_codes(tokens: list[Token]) -> list[int]:
    """Per timestamp token: 0 missing, 1 an integer (maybe out of range), 2 unparsable."""
    arr = pa.array(tokens, pa.string())
    code = pc.if_else(pc.fill_null(pc.match_substring_regex(arr, r"^-?[0-9]+$"), False), _i8(1), _i8(2))
    return list(pc.if_else(arr.is_null(), _i8(0), code).to_pylist())


def classify(key: str, token: Token) -> tuple[ColumnType, Any]:
    """Type and value of one field token, or Reject naming the field."""
    assert token is not None
    if token[:1] == '"':
        text = unescape_string(token[1:-1])
        if len(text) > MAX_STRING_BYTES // 4 and len(text.encode()) > MAX_STRING_BYTES:
            raise Reject(f"invalid field value for field '{key}': {TOO_LONG}")
        return ColumnType.STRING, text
    flag = BOOLS.get(token)
    if flag is not None:
        return ColumnType.BOOLEAN, flag
    last = token[-1:]
    if last == "i" and _INT.fullmatch(token):
        value = _int(token[:-1])
        if value is None or not _I64_MIN <= value <= _I64_MAX:
            raise Reject(
                f"invalid field value for field '{key}': Unable to parse integer value `{snip(token, 40)}`"
            )
        return ColumnType.INTEGER, value
    if last == "u" and _UINT.fullmatch(token):
        value = _int(token[:-1])
        if value is None or value > _U64_MAX:
            raise Reject(
                f"invalid field value for field '{key}': Unable to parse unsigned integer value `{snip(token, 40)}`"
            )
        return ColumnType.UINTEGER, value
    if _FLOAT.fullmatch(token):
        return ColumnType.FLOAT, float(token)
    raise Reject(
        f"invalid field value for field '{key}': `{snip(token, 40)}` is not a float, integer, "
        "unsigned integer, string or boolean"
    )


def check_schema(
    schema: dict[str, ColumnType], tags: dict[str, str], keys: tuple[str, ...], kinds: list[ColumnType]
) -> None:
    """Reject a line whose tags or fields clash with the types the body's earlier lines fixed."""
    for k in tags:
        have = ColumnType.TIME if k == "time" else schema.get(k)
        if have is not None and have is not ColumnType.TAG:
            raise Reject(_conflict(k, have, ColumnType.TAG))
    for k, kind in zip(keys, kinds, strict=True):
        have = ColumnType.TIME if k == "time" else schema.get(k)
        if have is None and k in tags:
            have = ColumnType.TAG
        if have is not None and have is not kind:
            raise Reject(_conflict(k, have, kind))


def _conflict(name: str, expected: ColumnType, got: ColumnType) -> str:
    return f"invalid column type for column '{name}', expected {expected.iox_name}, got {got.iox_name}"


def parse_timestamp(token: Token) -> int | None:
    """The integer of a timestamp token (None if absent), or Reject."""
    if token is None:
        return None
    value = _int(token) if _TIMESTAMP.fullmatch(token) else None
    if value is None or not _I64_MIN <= value <= _I64_MAX:
        raise Reject(f"Unable to parse timestamp value `{snip(token, 40)}`")
    return value


def _int(text: str) -> int | None:
    """int() of an ASCII digit string, None when far too long (int() caps at 4300 digits)."""
    sign = "-" if text[:1] == "-" else ""
    digits = text[len(sign) :].lstrip("0") or "0"
    return int(sign + digits) if len(digits) <= 20 else None


def scale(ts: int | None, precision: Precision, default_time: int) -> int:
    """A parsed timestamp in ns under the precision (AUTO: guessed per value), or Reject."""
    if ts is None:
        return default_time
    unit = guess_unit(ts) if precision is Precision.AUTO else precision.ns_per_unit
    ns = ts * unit
    if not _I64_MIN <= ns <= _I64_MAX:
        name = _PRECISION_NAMES.get(precision, "Auto")
        raise Reject(f"timestamp, {ts}, out of range for precision: {name}")
    problem = time_problem(ns)
    if problem is not None:
        raise Reject(f"timestamp, {ts}, {problem}")
    return ns


def _take(arr: pa.Array, mask: pa.Array | None) -> pa.Array:
    return arr if mask is None else arr.filter(mask)


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _field(arr: pa.Array) -> tuple[ColumnType, pa.Array]:
    """Convert a column of tokens that must all have the type of its first token."""
    sample = arr.drop_null()[0].as_py()
    if sample[:1] == '"':
        # Only strings start with a quote, in both routes.
        if not pc.all(pc.starts_with(arr, '"')).as_py():
            raise Fallback
        out = pc.utf8_slice_codeunits(arr, 1, -1)
        if pc.any(pc.match_substring(out, "\\")).as_py():
            out = pc.replace_substring_regex(out, *UNESCAPE_STRING_RE2)
        if pc.max(pc.binary_length(out)).as_py() > MAX_STRING_BYTES:
            raise Fallback
        return ColumnType.STRING, out
    if sample in BOOLS:
        kind = ColumnType.BOOLEAN
    else:
        kind = {"i": ColumnType.INTEGER, "u": ColumnType.UINTEGER}.get(sample[-1:], ColumnType.FLOAT)
    if not pc.all(pc.match_substring_regex(arr, _CHECKS[kind])).as_py():
        raise Fallback
    if kind is ColumnType.BOOLEAN:
        return kind, pc.match_substring_regex(arr, _TRUE_CHECK)
    if kind is not ColumnType.FLOAT:
        arr = pc.utf8_slice_codeunits(arr, 0, -1)
    return kind, pc.cast(arr, kind.arrow_type)  # out of range raises ArrowInvalid


def _time(arr: pa.Array, precision: Precision, default_time: int) -> pa.Array:
    """Timestamps in ns: tokens scaled by the precision (or its guess), default for missing ones."""
    if arr.null_count == len(arr):
        return pa.nulls(len(arr), pa.int64()).fill_null(default_time)
    if not pc.all(pc.match_substring_regex(arr, r"^-?[0-9]+$")).as_py():
        raise Fallback
    ts = scale_timestamps(pc.cast(arr, pa.int64()), precision)
    if not in_time_range(ts):
        raise Fallback  # the exact pass names the timestamp
    return ts.fill_null(default_time) if ts.null_count else ts


def in_time_range(ts: pa.Array) -> bool:
    """Whether every (non-null) time in ns lies in MIN_TIME_NS..MAX_TIME_NS."""
    span = pc.min_max(ts).as_py()
    return span["min"] is None or (span["min"] >= MIN_TIME_NS and span["max"] <= MAX_TIME_NS)


def scale_timestamps(ts: pa.Array, precision: Precision) -> pa.Array:
    """int64 timestamps in the write's unit to ns (AUTO guesses per value); overflow raises ArrowInvalid."""
    if precision is Precision.AUTO:
        size = pc.abs_checked(ts)
        unit: Any = _i64(1)
        for limit, factor in reversed(AUTO_UNITS):
            unit = pc.if_else(pc.less(size, _i64(limit)), _i64(factor), unit)
        return pc.multiply_checked(ts, unit)
    if precision.ns_per_unit != 1:
        return pc.multiply_checked(ts, _i64(precision.ns_per_unit))
    return ts


def _i64(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int64())


def _i8(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int8())


def snip(text: str, limit: int = 10) -> str:
    """Text shortened for an error message, as InfluxDB does."""
    return text if len(text) <= limit else text[:limit] + "..."
