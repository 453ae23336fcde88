"""Whole-body vectorised line protocol parsing for regular bodies, with pyarrow kernels only.

parser.parse() tries this first. It takes bodies of a simple shape: no backslash, tab,
NUL or lone CR; one space between series key, fields and timestamp; quoted strings free of
space, comma and newline; and no line with an error. Lines become one Arrow string array; each
distinct series key is split once; each table's lines are grouped by field-key layout, so a
value column is checked and converted by a few kernel calls. The kernels release the GIL, so
request threads parse on several cores. For any other body, or whenever something is doubtful,
the answer is None and the exact parser, whose result this one must equal, runs instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..model import ColumnType, ParsedTable, ParseResult, Precision
from .columns import BOOLS, MAX_STRING_BYTES, TRUE, Reject, in_time_range, scale_timestamps
from .syntax import BAD_NAME_CHAR, truncate

Scanner = Callable[[str, int | None], tuple[Any, ...]]  # the exact scanner of one record: parser._scan

_MIN_LINES = 100  # fewer lines: the fixed cost (~90 kernel calls, ~0.4 ms) outweighs the gain
_SAMPLE_BYTES = 1 << 16  # the start of a body looked at to tell junk (counting it all costs ~7%)
_MAX_LAYOUTS = 16  # more series or field layouts than this: irregular, the exact parser's job
_REJECT = (b"\\", b"\t", b"\x00", b"\r")  # escapes, tabs, NULs, lone CRs: the exact scanner's job
_FLOAT = r"^-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$"
_SIGNED = r"^-?[0-9]+$"
_BOOL_SET = pa.array(list(BOOLS), pa.string())
_TRUE_SET = pa.array(list(TRUE), pa.string())
_NO_STOP = (1 << 31) - 1  # binary_slice(stop=None) fails in pyarrow 26 ("Negative buffer resize")
_range = [pa.array([], pa.int32())]


class _Bail(Exception):
    """The body is not in the shape handled here, or would have errors: use the exact parser."""


def try_parse(
    body: bytes,
    precision: Precision,
    now_ns: int,
    known: Mapping[str, Mapping[str, ColumnType]] | None = None,
    *,
    scan: Scanner,
    max_columns: int | None = None,
    max_new_tables: tuple[int, str] | None = None,
) -> ParseResult | None:
    """The exact parser's result for a regular, error-free body; None for any other body.

    `scan` reads the first line of each field layout, so that the exact scanner fixes every
    layout's keys; it must raise Reject for a line it rejects.
    """
    try:
        known = known or {}
        result = _parse(body, precision, now_ns, known, scan, max_columns)
    except (_Bail, Reject, pa.ArrowException):
        return None
    if max_new_tables is not None and sum(t.name not in known for t in result.tables) > max_new_tables[0]:
        return None  # more new tables than there is room for: the exact parser refuses the rest
    return result


def _parse(
    body: bytes,
    precision: Precision,
    now_ns: int,
    known: Mapping[str, Mapping[str, ColumnType]],
    scan: Scanner,
    max_columns: int | None = None,
) -> ParseResult:
    """try_parse() without the safety net: _Bail (or an Arrow error) for any irregular body."""
    lines, numbers = _lines(body)
    n = len(lines)
    parts = pc.split_pattern(lines, " ")
    counts = pc.list_value_length(parts)
    span = pc.min_max(counts).as_py()
    words, starts = parts.values, parts.offsets.slice(0, n)
    if span["min"] < 2 or span["max"] > 3 or pc.min(pc.binary_length(words)).as_py() == 0:
        raise _Bail  # one space must separate the sections: no runs, none at a line's edge
    series = pc.dictionary_encode(words.take(starts))
    fields = words.take(pc.add(starts, _i32(1)))
    if span["min"] == 3:
        stamps = words.take(pc.add(starts, _i32(2)))
    elif span["max"] == 3:
        stamps = words.take(pc.if_else(pc.equal(counts, _i32(3)), pc.add(starts, _i32(2)), None))
    else:
        stamps = pa.nulls(n, pa.string())
    time = _time(stamps, precision, now_ns)

    tables, tag_values, table_of = _series(series.dictionary)
    sids = series.indices
    row_table = table_of.take(sids) if table_of is not None else None
    pieces = _Pieces(pc.split_pattern(fields, ","))
    if max_columns is not None and pc.max(pieces.counts).as_py() > max_columns:
        raise _Bail  # a line with too many fields: the exact parser rejects it early
    out = []
    for t, (name, tag_keys) in enumerate(tables):
        rows = None  # all rows: the body has one table
        if row_table is not None:
            rows = pc.indices_nonzero(pc.equal(row_table, _i32(t))).cast(pa.int32())
        typed = _table_fields(
            pieces,
            rows,
            lambda i: _field_prefixes(scan, lines[i].as_py(), max_columns),
            tag_keys,
            known.get(name, {}),
        )
        if (
            max_columns is not None
            and len({*typed, *tag_keys, *known.get(name, {})} - {"time"}) > max_columns
        ):
            raise _Bail  # more columns than a table holds: the exact parser rejects the table
        t_sids = sids if rows is None else sids.take(rows)
        tags = {k: tag_values[name, k].take(t_sids) for k in tag_keys}
        t_time = time if rows is None else time.take(rows)
        t_numbers = numbers if rows is None else numbers.take(rows)
        out.append(ParsedTable(name, len(t_time), t_time, t_numbers, tags, typed))
    return ParseResult(out, [], n)


def _lines(body: bytes) -> tuple[pa.Array, pa.Array]:
    """The non-blank, non-comment lines of the body and their 1-based line numbers."""
    # One-byte searches only: they run at memchr speed, two-byte ones far slower.
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")  # the exact parser takes CRLF like LF
    if len(body) < _MIN_LINES * 5 or any(c in body for c in _REJECT):  # 5: `m f=1`
        raise _Bail
    if 2 * body.count(b" ", 0, _SAMPLE_BYTES) < body.count(b"\n", 0, _SAMPLE_BYTES):
        raise _Bail  # most lines without a space: junk (or mostly blank), no Arrow work for it
    lines = pc.split_pattern(pa.array([body], pa.string()), "\n").values  # raises on bad UTF-8
    if body[-1:] == b"\n":
        lines = lines.slice(0, len(lines) - 1)  # the empty "line" after the last newline
    if len(body) > MAX_STRING_BYTES and pc.max(pc.binary_length(lines)).as_py() > MAX_STRING_BYTES:
        raise _Bail  # a name or string could pass the 1 MiB limit: the exact parser words the error
    if pc.min(pc.binary_length(lines)).as_py() == 0 or (
        b"#" in body and pc.any(pc.starts_with(lines, "#")).as_py()
    ):
        # Blank lines and comments (physical lines starting with `#`) keep their numbers.
        keep = pc.indices_nonzero(
            pc.and_(pc.greater(pc.binary_length(lines), _i32(0)), pc.invert(pc.starts_with(lines, "#")))
        ).cast(pa.int32())
        lines = lines.take(keep)
    else:
        keep = _arange(len(lines))
    if len(lines) < _MIN_LINES:
        raise _Bail
    return lines, pc.add(keep, _i32(1))


def _series(
    keys: pa.Array,
) -> tuple[list[tuple[str, list[str]]], dict[tuple[str, str], pa.Array], pa.Array | None]:
    """Split the distinct series keys (in first-seen order) into tables and tag values.

    Returns the tables as (measurement, tag keys in first-use order), per (table, tag key) its
    values by series key (null where absent) and each series key's table number (None when
    there is one table).
    """
    layouts = _layouts(
        _Pieces(pc.split_pattern(keys, ",")), None, lambda i: _series_prefixes(keys[i].as_py()), True
    )
    tables: dict[str, list[str]] = {}
    for prefixes, _, _ in layouts:
        tag_keys = tables.setdefault(prefixes[0], [])
        tag_keys += [p[:-1] for p in prefixes[1:] if p[:-1] not in tag_keys]
    names = list(tables)
    if len(layouts) == 1:
        prefixes, _, cols = layouts[0]
        tags = {(names[0], p[:-1]): _after(col, p) for p, col in zip(prefixes[1:], cols[1:], strict=True)}
        return [(names[0], tables[names[0]])], tags, None
    # Each layout holds some series keys; one permutation puts the concatenated parts in order.
    order = pc.sort_indices(pa.concat_arrays([idx for _, idx, _ in layouts]))
    tags = {}
    for name, tag_keys in tables.items():
        for k in tag_keys:
            parts = []
            for prefixes, idx, cols in layouts:
                j = prefixes.index(k + "=", 1) if prefixes[0] == name and k + "=" in prefixes[1:] else 0
                parts.append(_after(cols[j], prefixes[j]) if j else pa.nulls(len(idx), pa.string()))
            tags[name, k] = pa.concat_arrays(parts).take(order)
    table_of = pa.concat_arrays(
        [pa.nulls(len(idx), pa.int32()).fill_null(_i32(names.index(p[0]))) for p, idx, _ in layouts]
    ).take(order)
    return [(name, tables[name]) for name in names], tags, table_of


def _series_prefixes(text: str) -> list[str]:
    """The measurement, then `key=` per tag, of one series key; _Bail unless plainly regular."""
    name, *pairs = text.split(",")
    prefixes = [name]
    for pair in pairs:
        k, eq, v = pair.partition("=")
        if not k or not eq or not v or k == "time":
            raise _Bail  # includes tag keys with a comma, which only the exact scanner splits right
        prefixes.append(k + "=")
    if not name or len(set(prefixes[1:])) != len(pairs):
        raise _Bail  # a repeated tag: the exact parser decides which value wins
    if any(BAD_NAME_CHAR.search(p) for p in prefixes):
        raise _Bail  # a name the exact parser rejects
    return prefixes


def _field_prefixes(scan: Scanner, line: str, max_columns: int | None) -> list[str]:
    """`key=` per field of one line, as the exact scanner reads it; _Bail unless plainly regular."""
    keys: tuple[str, ...] = scan(line, max_columns)[3]
    if len(set(keys)) != len(keys):
        raise _Bail  # a duplicate field is an error
    if any("," in k or '"' in k for k in keys):
        raise _Bail  # a comma would split it here; a quote can move the exact line splitting
    return [k + "=" for k in keys]


class _Pieces:
    """A list array of strings split on `,`, taken apart for strided reads."""

    __slots__ = ("words", "starts", "counts", "last")

    def __init__(self, split: pa.ListArray) -> None:
        self.words = split.values
        self.starts = split.offsets.slice(0, len(split))
        self.counts = pc.list_value_length(split)
        self.last = _i32(len(self.words) - 1)


def _layouts(
    pieces: _Pieces, rows: pa.Array | None, prefixes_of: Callable[[int], list[str]], first_exact: bool = False
) -> list[tuple[list[str], pa.Array, list[pa.Array]]]:
    """Group entries `rows` (None: all) of split texts by layout: the same `key=` prefixes.

    The first ungrouped entry, parsed in Python by `prefixes_of`, gives each next layout; one
    pass of kernels then finds every entry sharing it (`first_exact`: the first piece must equal
    its prefix, not just start with it). Returns per layout its prefixes, its entries
    (ascending) and its pieces, one array per prefix.
    """
    out: list[tuple[list[str], pa.Array, list[pa.Array]]] = []
    while True:
        if len(out) == _MAX_LAYOUTS:
            raise _Bail
        s = pieces.starts if rows is None else pieces.starts.take(rows)
        c = pieces.counts if rows is None else pieces.counts.take(rows)
        prefixes = prefixes_of(0 if rows is None else rows[0].as_py())
        span = pc.min_max(c).as_py()
        uniform = span["min"] == span["max"] == len(prefixes)
        ok = None if uniform else pc.equal(c, _i32(len(prefixes)))
        cols = []
        for j, p in enumerate(prefixes):
            at = pc.add(s, _i32(j)) if j else s
            if not uniform:  # entries with fewer pieces read some other piece; `ok` drops them
                at = pc.min_element_wise(at, pieces.last)
            col = pieces.words.take(at)
            hit = (
                pc.equal(col, pa.scalar(p, pa.string())) if j == 0 and first_exact else pc.starts_with(col, p)
            )
            ok = hit if ok is None else pc.and_(ok, hit)
            cols.append(col)
        entries = rows if rows is not None else _arange(len(c))
        if ok is None:  # no field prefixes at all: not a shape this path reads
            raise _Bail
        if pc.all(ok).as_py():
            out.append((prefixes, entries, cols))
            return out
        if not ok[0].as_py():
            raise _Bail  # the entry that gave the layout does not match it: a misreading
        out.append((prefixes, entries.filter(ok), [col.filter(ok) for col in cols]))
        rows = entries.filter(pc.invert(ok))


def _table_fields(
    pieces: _Pieces,
    rows: pa.Array | None,
    prefixes_of: Callable[[int], list[str]],
    tag_keys: list[str],
    known: Mapping[str, ColumnType],
) -> dict[str, tuple[ColumnType, pa.Array]]:
    """Typed field columns of one table's rows (None: all rows), in first-use order."""
    layouts = _layouts(pieces, rows, prefixes_of)
    # Each column's type, from its first value, is judged before any value work, so that type
    # conflicts and name clashes (errors in the exact parser) fall back early.
    kinds: dict[str, ColumnType] = {}
    for prefixes, _, cols in layouts:
        for p, col in zip(prefixes, cols, strict=True):
            kind = _kind(col[0].as_py()[len(p) - 1 :])
            if kinds.setdefault(p[:-1], kind) is not kind:
                raise _Bail  # a column typed differently by two layouts
    if "time" in kinds or not kinds.keys().isdisjoint(tag_keys):
        raise _Bail  # a field named time, or a tag and a field of one name
    if any(known.get(k, ColumnType.TAG) is not ColumnType.TAG for k in tag_keys):
        raise _Bail
    if any(known.get(k, kind) is not kind for k, kind in kinds.items()):
        raise _Bail
    converted = [
        {p[:-1]: _convert(col, p, kinds[p[:-1]]) for p, col in zip(prefixes, cols, strict=True)}
        for prefixes, _, cols in layouts
    ]
    if len(layouts) == 1:
        return {k: (kinds[k], v) for k, v in converted[0].items()}
    order = pc.sort_indices(pa.concat_arrays([idx for _, idx, _ in layouts]))
    out = {}
    for k, kind in kinds.items():
        parts = [
            conv.get(k, pa.nulls(len(idx), kind.arrow_type))
            for conv, (_, idx, _) in zip(converted, layouts, strict=True)
        ]
        out[k] = (kind, pa.concat_arrays(parts).take(order))
    return out


def _kind(token: str) -> ColumnType:
    """The type a field value token (`=` first) would have, if it is valid at all."""
    if token[1:2] == '"':
        return ColumnType.STRING
    if token[1:] in BOOLS:
        return ColumnType.BOOLEAN
    return {"i": ColumnType.INTEGER, "u": ColumnType.UINTEGER}.get(token[-1:], ColumnType.FLOAT)


def _convert(col: pa.Array, prefix: str, kind: ColumnType) -> pa.Array:
    """The values of `key=value` pieces that must all be valid values of type `kind`."""
    skip = len(prefix.encode())
    if kind is ColumnType.STRING:
        # Quote, no quote, quote: with no backslash in the body, a string without escapes.
        if not (
            pc.all(pc.starts_with(col, prefix + '"')).as_py()
            and pc.all(pc.ends_with(col, '"')).as_py()
            and pc.min(pc.binary_length(col)).as_py() >= skip + 2
        ):
            raise _Bail
        values = _slice(col, skip + 1, -1)
        if pc.max(pc.find_substring(values, '"')).as_py() != -1:
            raise _Bail
        return values
    if kind is ColumnType.BOOLEAN:
        tokens = _slice(col, skip, _NO_STOP)
        if not pc.all(pc.is_in(tokens, value_set=_BOOL_SET)).as_py():
            raise _Bail
        return pc.is_in(tokens, value_set=_TRUE_SET)
    if kind is ColumnType.FLOAT:
        tokens = _slice(col, skip, _NO_STOP)
        if not pc.all(pc.match_substring_regex(tokens, _FLOAT)).as_py():
            raise _Bail  # the cast alone would also take `+1`, `.5`, `nan` and `inf`
        return pc.cast(tokens, pa.float64())
    if not pc.all(pc.ends_with(col, "i" if kind is ColumnType.INTEGER else "u")).as_py():
        raise _Bail
    digits = _slice(col, skip, -1)
    _check_digits(digits, signed=kind is ColumnType.INTEGER)
    return pc.cast(digits, kind.arrow_type)  # out of range raises: an error line


def _check_digits(tokens: pa.Array, signed: bool) -> None:
    """_Bail unless every token is ASCII digits, after a `-` if signed (the cast takes `0x..`)."""
    if pc.all(pc.ascii_is_decimal(tokens)).as_py():
        return
    if not signed or not pc.all(pc.match_substring_regex(tokens, _SIGNED)).as_py():
        raise _Bail


def _time(stamps: pa.Array, precision: Precision, now_ns: int) -> pa.Array:
    """Timestamps in ns by the precision (AUTO: guessed per value); the default for missing ones."""
    # now, truncated toward zero to the precision (AUTO: as is)
    default = now_ns if precision is Precision.AUTO else truncate(now_ns, precision.ns_per_unit)
    if stamps.null_count == len(stamps):
        return pa.nulls(len(stamps), pa.int64()).fill_null(pa.scalar(default, pa.int64()))
    _check_digits(stamps, signed=True)
    # Beyond int64, or overflow when scaled, raises: an error line for the exact parser.
    ts = scale_timestamps(pc.cast(stamps, pa.int64()), precision)
    if not in_time_range(ts):
        raise _Bail  # the exact parser names the timestamp
    return ts.fill_null(pa.scalar(default, pa.int64())) if ts.null_count else ts


def _after(col: pa.Array, prefix: str) -> pa.Array:
    """The pieces without `prefix` (which each starts with); _Bail if one is then empty."""
    out = _slice(col, len(prefix.encode()), _NO_STOP)
    if pc.min(pc.binary_length(out)).as_py() == 0:
        raise _Bail
    return out


def _slice(col: pa.Array, start: int, stop: int) -> pa.Array:
    """Byte slice of strings; the cuts sit next to ASCII bytes, so the UTF-8 stays valid."""
    return pc.binary_slice(col.view(pa.binary()), start, stop).view(pa.string())


def _arange(n: int) -> pa.Array:
    """0..n-1 as int32, sliced from a cached array (pyarrow has no arange kernel)."""
    cached = _range[0]
    if len(cached) < n:
        cached = _range[0] = pa.array(range(max(n, 2 * len(cached), 4096)), pa.int32())
    return cached.slice(0, n)


# Typed scalars: for a plain int pyarrow widens int32 results and, on every call, tries (and
# without numpy fails) an import.
def _i32(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int32())


def _i64(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.int64())
