"""Line protocol parser: a write body to per-table Arrow columns plus per-line errors; pure, no I/O.

Two routes give identical results. The fast route (pieces in lineprotocol.columns) takes a physical line
whose series key (the text before the first unescaped space) was already parsed in this body
and whose field section matches the regex of a known field-key layout; it keeps the raw value
tokens, and Arrow kernels convert each column at the end. Every other line takes the exact
route: InfluxDB's line-splitting state machine (newlines may sit inside quoted strings) and a
scanner that stores the same tokens. A table whose tokens are not uniformly typed, or that has
duplicate fields or name clashes, is finished line by line with exact checks.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterator, Mapping
from itertools import repeat
from typing import Any

import pyarrow as pa

from appliance.model import (
    BAD_NAME_CHAR,
    BAD_NAME_CHAR_BUT_JOINERS,
    ColumnType,
    LineErrors,
    ParsedTable,
    ParseResult,
    Precision,
    name_problem,
    strip_bom,
)

from .columns import (
    MAX_STRING_BYTES,
    NEVER,
    TOO_LONG,
    Fallback,
    Layout,
    Reject,
    Table,
    Token,
    build,
    check_schema,
    classify,
    kind_codes,
    parse_timestamp,
    scale,
    snip,
    split_series,
    time_codes,
)
from .vector import try_parse

ORIGINAL_LINE_BYTES = 20
_ENDS_WITH_BACKSLASH = "Measurements, tag keys and values, and field keys may not end with a backslash"

# Scanner pieces. A backslash always pairs with the next character (InfluxDB keeps unknown
# escapes literally), so `\\[\s\S]?` is part of every name; `?` lets a trailing one through
# to the ends-with-backslash check.
_MEASUREMENT = re.compile(r"(?:[^\\, \t\n\x00]++|\\[\s\S]?)*+")
_TAG_KEY = re.compile(r"(?:[^\\= \t\n]++|\\[\s\S]?)*+")  # field keys too; commas are legal
_TAG_VALUE = re.compile(r"(?:[^\\, \t\n]++|\\[\s\S]?)*+")
_STRING = re.compile(r'"(?:[^"\\]++|\\[\s\S])*+"')
_VALUE = re.compile(r"[^, ]*+")
_TOKEN = re.compile(r"[^ ]*+")
_SPACES = re.compile(r" *+")
_UNESCAPE_MEASUREMENT = re.compile(r"\\([, \\])")
_UNESCAPE_NAME = re.compile(r"\\([,= \\])")
_SPLIT_TOKEN = re.compile(r'\\[\s\S]?|[ "=,]')
_SERIES_TEXT = re.compile(r"(?:[^\\ ]++|\\[\s\S]?)*+")  # up to the first unescaped space
# Bodies whose every record is closed in the common shape (fields `key=value,...`, strings
# quoted and terminated, no trailing backslash): one C-speed match instead of the state
# machine below. Anything it does not match goes to the state machine, which decides.
_CLOSED_KEY = rb'(?:[^\\"=, \n]++|\\[^\n])++'
_CLOSED_VALUE = rb'(?:"(?:[^"\\]++|\\[\s\S])*+"|(?:[^\\", \n]++|\\[^\n])*+)'
_CLOSED_LINE = (
    rb"(?>[ \t]*+#[^\n]*+|[ \t]*+(?:[^ \\\n]++|\\[^\n])*+"
    rb"(?: ++"
    + _CLOSED_KEY
    + b"="
    + _CLOSED_VALUE
    + rb"(?:,"
    + _CLOSED_KEY
    + b"="
    + _CLOSED_VALUE
    + rb')*+(?: [^"\\\n]*+)?)?)'
)
_CLOSED_BODY = re.compile(rb"(?:" + _CLOSED_LINE + rb"\n)*+" + _CLOSED_LINE)
_MRU_LAYOUTS = 4
_CACHED_BAD_RECORDS, _CACHED_BAD_CHARS = 1024, 256
_CHUNK_CHARS = 1 << 20
_COLUMNWISE_ROWS = 8  # fewer rows in a table: finish it row by row
_COMPILE_KEYS, _BYTES_PER_COMPILED_KEY = 256, 256  # layout regexes a body may compile, in keys
_FAST_LAYOUTS_PER_TABLE = 32


def parse(
    body: bytes,
    precision: Precision,
    now_ns: int,
    *,
    known: Mapping[str, Mapping[str, ColumnType]] | None = None,
    max_columns: int | None = None,
    table_room: tuple[int, str] | None = None,
) -> ParseResult:
    """Parse a line protocol body into per-table Arrow columns and per-line errors; never raises.

    `known` maps table -> column -> type for columns that already exist (the catalog). Each
    line is then judged against those types as well as the ones earlier lines of the body
    fixed, as InfluxDB does; without it a column's type comes from its first line here.
    `max_columns` (the catalog's limit) rejects, before any per-field work, a line with more
    tags and fields than a table may hold, and every line of a table whose lines name more
    columns than that between them (`limit_hit`). `table_room` is how many tables the body may
    add that `known` lacks, and the message for the lines of any table past that (`limit_hit`).
    """
    data = strip_bom(body)  # _Body drops it the same way (from the body as sent: only one)
    try:  # regular bodies: whole-body Arrow kernels that release the GIL (None: not regular)
        result = try_parse(
            data, precision, now_ns, known, scan=_scan, max_columns=max_columns, max_new_tables=table_room
        )
    except Exception:  # a bug there must not make parse() raise: the routes below answer
        result = None
    if result is not None:
        return result
    return _Body(body, precision, now_ns, True, known, max_columns, table_room).result()


class _Body:
    """State of one parse() call: the series cache, tables, layouts and errors."""

    def __init__(
        self,
        body: bytes,
        precision: Precision,
        now_ns: int,
        fast: bool,
        known: Mapping[str, Mapping[str, ColumnType]] | None = None,
        max_columns: int | None = None,
        table_room: tuple[int, str] | None = None,
    ) -> None:
        body = strip_bom(body)
        self.body, self.now_ns, self.known = body, now_ns, known or {}
        self.max_columns = max_columns
        self.room = self.start_room = table_room  # new tables the body may still add, and why not
        self.limit_hit = False
        self.precision = precision
        unit = precision.ns_per_unit
        self.default_time = now_ns if precision is Precision.AUTO else _truncate(now_ns, unit)
        self.fast = fast
        self.errors = LineErrors()
        self.tables: dict[str, Table] = {}
        # raw series text -> [layout match, layout append, series id, table, recent layouts]
        self.series: dict[str, list[Any]] = {}
        self.multiline: dict[int, str] = {}
        self.bad_records: dict[str, str] = {}  # short rejected records and why
        self.slow_keys: set[str] = set()  # short series keys the fast route cannot take (yet)
        self.compile_budget = _COMPILE_KEYS + len(body) // _BYTES_PER_COMPILED_KEY
        self.scan_errors = 0
        try:
            self.text = body.decode("utf-8")
            self.dirty = False
        except UnicodeDecodeError:
            # Keep going: bad bytes become lone surrogates and only their line is rejected.
            self.text = body.decode("utf-8", "surrogateescape")
            self.dirty = True
        # Lines are split a chunk at a time (_numbered): a body of millions of short lines never
        # holds a str per line all at once. Chunk starts (line number, text span) find a line later.
        self.chunk_starts: list[int] = []
        self.chunk_spans: list[tuple[int, int]] = []
        self._chunk: tuple[int, list[str]] = (-1, [])

    def result(self, safe: bool = True) -> ParseResult:
        """Parse the body (once per _Body).

        With `safe`, a bug can never make parse() raise: the body is parsed again on the exact
        route, and should that fail too, the failure is reported as an error on line 1.
        """
        try:
            self._run()
            tables = self._finish()
        except Exception as exc:
            if not safe:
                raise
            if self.fast:
                again = _Body(
                    self.body,
                    self.precision,
                    self.now_ns,
                    False,
                    self.known,
                    self.max_columns,
                    self.start_room,
                )
                return again.result()
            errors = LineErrors()
            errors.add(1, _original_line(self.text.partition("\n")[0]), f"internal parser error: {exc!r}")
            return ParseResult([], errors.listed(), 1, errors)
        rows = sum(lay.rows for t in self.tables.values() for lay in t.layouts)
        return ParseResult(tables, self.errors.listed(), rows + self.scan_errors, self.errors, self.limit_hit)

    # -- line routing ---------------------------------------------------------------------

    def _run(self) -> None:
        it = self._numbered()
        if not self.fast:
            for ln, line in it:
                self._slow(ln, line, it)
            return
        if "\r" in self.text or "\\" in self.text or self.dirty:
            for ln, line in it:
                self._checked(ln, line, it)
            return
        get = self.series.get
        for ln, line in it:
            key, _, rest = line.partition(" ")
            ent = get(key)
            if ent is not None:
                m = ent[0](rest)
                if m is not None:
                    ent[1]((ln, ent[2], *m.groups()))
                    continue
            self._medium(ln, line, key, rest, ent, it)

    def _checked(self, ln: int, raw: str, it: Iterator[tuple[int, str]]) -> None:
        """The fast route for bodies with CRLF, backslashes or bad UTF-8 (slower per line)."""
        line = raw[:-1] if raw[-1:] == "\r" else raw
        if self.dirty and _bad_utf8(line):
            self._slow(ln, raw, it)
            return
        if "\\" in line:
            # Escapes in the series key are fine: the cache maps its raw text to its parse.
            end = _skip(_SERIES_TEXT, line, 0)
            if line[end : end + 1] != " ":
                self._slow(ln, raw, it)
                return
            key, rest = line[:end], line[end + 1 :]
        else:
            key, _, rest = line.partition(" ")
        ent = self.series.get(key)
        if ent is not None:
            m = ent[0](rest)
            if m is not None:
                ent[1]((ln, ent[2], *m.groups()))
                return
        self._medium(ln, raw, key, rest, ent, it)

    def _medium(
        self, ln: int, raw: str, key: str, rest: str, ent: list[Any] | None, it: Iterator[tuple[int, str]]
    ) -> None:
        """A fast line whose series is new or whose layout differs from the series' last one."""
        if ent is None:
            if key not in self.slow_keys and self._new_series(ln, key, rest):
                return
        else:
            for lay in ent[4]:
                m = lay.match(rest)
                if m is not None:
                    lay.extend((ln, ent[2], *m.groups()))
                    _use_layout(ent, lay)
                    return
        self._slow(ln, raw, it)

    def _new_series(self, ln: int, key: str, rest: str) -> bool:
        """Store a line of a new series if its table's latest layout reads it.

        The series is cached only then (or by the exact route once a line of it is stored), so
        that lines which are rejected, however many and however different, leave nothing behind.
        """
        parsed = self._fast_series(key)
        table = self.tables.get(parsed[0]) if parsed is not None else None
        if parsed is None or table is None:
            if len(self.slow_keys) < _CACHED_BAD_RECORDS and len(key) <= _CACHED_BAD_CHARS:
                self.slow_keys.add(key)  # a body of junk: do not read the same key again
            return False
        lay = table.last  # always a layout with a regex (_use_layout sets it)
        if lay is None or lay.match is None:
            return False
        if self.max_columns is not None and len(parsed[1]) + len(lay.keys) > self.max_columns:
            return False  # too wide with these tags: the scanner rejects it
        m = lay.match(rest)
        if m is None:
            return False
        # Registered as _register and _use_layout would (the layout is the table's latest).
        table.series.append(parsed[1])
        sid = len(table.series) - 1
        self.series[key] = [lay.match, lay.extend, sid, table, [lay]]
        lay.extend((ln, sid, *m.groups()))
        return True

    def _fast_series(self, key: str) -> tuple[str, dict[str, str]] | None:
        """Measurement and tags of a fast-route line's series key; None when the exact route must decide."""
        if (
            not key
            or key[0] == "#"
            or len(key) > MAX_STRING_BYTES // 4
            or BAD_NAME_CHAR_BUT_JOINERS.search(key)
        ):
            return None  # the exact route decides (a bad character may sit in a value, which is fine)
        if "\\" in key:
            try:
                measurement, tags, end = _scan_series(key)
            except Reject:
                return None
            parsed = (measurement, tags) if end == len(key) else None
        else:
            parsed = split_series(key)
        if parsed is not None and ("\u200c" in key or "\u200d" in key):  # a joiner: fine in a value
            if name_problem(parsed[0]) is not None or any(name_problem(k) is not None for k in parsed[1]):
                return None  # the exact route words the error
        return parsed

    def _register(self, raw: str, measurement: str, tags: dict[str, str]) -> list[Any] | None:
        """Cache a parsed series key; its first layout guess is the table's latest layout.

        None for a new table once the body has used up the room for new tables.
        """
        table = self.tables.get(measurement)
        if table is None:
            if self.room is not None and self.room[0] <= 0 and measurement not in self.known:
                return None
            table = self.tables[measurement] = Table(measurement)
        table.series.append(tags)
        last = table.last
        fits = last is not None and (
            self.max_columns is None or len(tags) + len(last.keys) <= self.max_columns
        )
        recent = [last] if fits else []  # a layout too wide with these tags: the scanner rejects
        first = recent[0] if recent else None
        ent = [
            first.match if first else NEVER,
            first.extend if first else None,
            len(table.series) - 1,
            table,
            recent,
        ]
        self.series[raw] = ent
        return ent

    def _slow(self, ln: int, line: str, it: Iterator[tuple[int, str]]) -> None:
        """Exact route: find the logical line, scan it and store its tokens."""
        line = line.lstrip(" \t")
        if not line or line[0] == "#" or line == "\r":
            # Blank or comment. Unlike InfluxDB, a comment is a whole physical line: a quote in
            # it (`# x="y`) does not swallow the lines after it.
            return
        text = line
        if '"' in line or line.endswith("\\"):
            fields, quoted, depth, escaped = _split_state(line, False, False, 0)
            parts = [line]
            while quoted or escaped:
                nxt = next(it, None)
                if nxt is None:
                    break
                parts.append(nxt[1])
                fields, quoted, depth, escaped = _split_state(nxt[1], fields, quoted, depth)
            text = "\n".join(parts)
        if text.endswith("\r"):  # deliberate difference from InfluxDB: accept CRLF
            text = text[:-1]
        if "\n" in text:
            self.multiline[ln] = text
        reason = self.bad_records.get(text)
        if reason is not None:  # the same bad record again (a body of junk): no second scan
            self.scan_errors += 1
            self._error(ln, reason, text)
            return
        try:
            if self.dirty and _bad_utf8(text):
                raise Reject("invalid UTF-8 in line")
            measurement, tags, series_end, keys, tokens = _scan(text, self.max_columns)
        except Reject as exc:
            self.scan_errors += 1
            self._error(ln, str(exc), text)
            if len(text) <= _CACHED_BAD_CHARS and len(self.bad_records) < _CACHED_BAD_RECORDS:
                self.bad_records[text] = str(exc)
            return
        series = text[:series_end]
        ent = self.series.get(series) or self._register(series, measurement, tags)
        if ent is not None and not ent[3].layouts and self.room is not None and measurement not in self.known:
            if self.room[0] > 0:
                # The table's first scanned line takes room, even if every line of it is later
                # rejected for its values (the room is checked before judging, as the columns are).
                self.room = (self.room[0] - 1, self.room[1])
            else:
                ent = None
        if ent is None:  # a new table past the room left for tables
            self.limit_hit = True
            self.scan_errors += 1
            self._error(ln, self.room[1] if self.room is not None else "", text)
            return
        table: Table = ent[3]
        lay = table.by_keys.get(keys)
        if lay is None:
            # Past a few dozen layouts a table is irregular; compiling more regexes costs more
            # than the fast route saves. A regex costs ~90 us per key to compile: a body gets
            # keys in proportion to its size, so that wide layouts of new tables, one after
            # the other, cannot cost more time compiling than parsing.
            fast = (
                self.fast
                and len(table.layouts) < _FAST_LAYOUTS_PER_TABLE
                and len(keys) <= self.compile_budget
            )
            lay = table.by_keys[keys] = Layout(keys, fast)
            if lay.match is not None:
                self.compile_budget -= len(keys)
            table.layouts.append(lay)
        lay.extend((ln, ent[2], *tokens))
        if lay.match is not None:
            _use_layout(ent, lay)

    def _error(self, ln: int, message: str, record: str | None = None) -> None:
        """Note line `ln` rejected; its text (`record`, else read back) only if it is listed."""
        if self.errors.wants(ln):
            self.errors.add(ln, _original_line(self._record(ln) if record is None else record), message)
        else:
            self.errors.count(ln)

    def _numbered(self) -> Iterator[tuple[int, str]]:
        """(line number, physical line) over the whole text, as enumerate(text.split("\\n"), 1)."""
        return itertools.chain.from_iterable(self._chunks())

    def _chunks(self) -> Iterator[Iterator[tuple[int, str]]]:
        text, n = self.text, len(self.text)
        pos, ln = 0, 1
        while True:
            cut = text.find("\n", pos + _CHUNK_CHARS) if n - pos > _CHUNK_CHARS else -1
            end = n if cut == -1 else cut
            lines = (text if pos == 0 and end == n else text[pos:end]).split("\n")
            self.chunk_starts.append(ln)
            self.chunk_spans.append((pos, end))
            yield enumerate(lines, ln)
            if cut == -1:
                return
            ln += len(lines)
            pos = cut + 1

    def _line(self, ln: int) -> str:
        """Physical line `ln` (after the run: every chunk is known), re-split from its chunk."""
        i = bisect.bisect_right(self.chunk_starts, ln) - 1
        if self._chunk[0] != i:
            start, end = self.chunk_spans[i]
            self._chunk = (i, self.text[start:end].split("\n"))
        return self._chunk[1][ln - self.chunk_starts[i]]

    def _record(self, ln: int) -> str:
        """The text of the record starting on line `ln`, for error reports after parsing."""
        text = self.multiline.get(ln)
        if text is None:
            text = self._line(ln)
            text = (text[:-1] if text.endswith("\r") else text).lstrip(" \t")
        return text

    # -- finishing tables -------------------------------------------------------------------

    def _finish(self) -> list[ParsedTable]:
        done: list[tuple[int, ParsedTable]] = []
        body_errors = self.errors
        for table in self.tables.values():
            layouts = [lay for lay in table.layouts if lay.flat]
            if not layouts:
                continue
            known = self.known.get(table.name, {})
            if self._too_many_columns(table, layouts, known):
                continue
            self.errors = LineErrors()  # this table's; dropped if the exact pass must redo it
            try:
                if self.fast and sum(lay.rows for lay in layouts) >= _COLUMNWISE_ROWS:
                    out = self._fast_finish(table, layouts, known)
                else:  # a few rows: Python per value costs less than kernel calls per column
                    out = self._row_by_row(table, layouts, known)
            except (Fallback, pa.ArrowException):
                self.errors = LineErrors()  # the exact pass reports them again
                out = self._row_by_row(table, layouts, known)
            finally:
                body_errors.extend(self.errors)
                self.errors = body_errors
            if out is not None:
                done.append(out)
        done.sort(key=lambda pair: pair[0])
        return [t for _, t in done]

    def _too_many_columns(self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]) -> bool:
        """Reject every line of a table whose lines name more columns than a table may hold.

        The catalog would refuse the table's new columns all together anyway; judging it here
        keeps a body of many distinct field names from costing work per column and layout.
        The count is taken before the lines are judged, so the keys of lines later rejected
        for their values count too: near the limit a table can be refused whole although its
        good lines alone would fit (deliberate: judging first is the per-column work avoided).
        """
        if self.max_columns is None:
            return False
        names = {k for lay in layouts for k in lay.keys}
        used = {sid for lay in layouts for sid in lay.flat[1 :: lay.stride]}  # series of kept lines
        names.update(k for sid in used for k in table.series[sid])
        names.update(known)
        names.discard("time")
        if len(names) <= self.max_columns:
            return False
        self.limit_hit = True
        message = (
            f"Update to schema would exceed number of columns per table limit of {self.max_columns} columns"
        )
        for lay in layouts:
            for ln in lay.flat[0 :: lay.stride]:
                self._error(ln, message)
        return True

    def _fast_finish(
        self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]
    ) -> tuple[int, ParsedTable] | None:
        """Whole columns when the table is regular, else signature-cached line judging."""
        try:
            return build(table, layouts, self.precision, self.default_time, known=known)
        except (Fallback, pa.ArrowException):
            pass
        kept = self._by_signature(table, layouts, known)
        return build(table, layouts, self.precision, self.default_time, kept) if kept[1] else None

    def _by_signature(
        self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]
    ) -> tuple[list[list[bool]], dict[str, ColumnType]]:
        """Exact line-by-line decisions, judging in full only lines of a new shape or rejected ones.

        A line's signature is its layout, tag-key set, value kinds and timestamp syntax. Types
        are only ever added, so a line whose signature was accepted before is accepted too and
        costs one set lookup; a value out of range in such a line makes build() fall back.
        Returns the kept-row mask per layout and the types of the kept rows' columns, in order.
        """
        tagsets: dict[frozenset[str], int] = {}
        series_sigs = [tagsets.setdefault(frozenset(tags), len(tagsets)) for tags in table.series]
        # One kernel pass over every value token and one over every timestamp, for all layouts
        # at once: a body whose lines each have their own layout costs no kernel calls per line.
        values: list[Token] = []
        stamps: list[Token] = []
        for lay in layouts:
            flat, stride = lay.flat, lay.stride
            for i in range(len(lay.keys)):
                values += flat[2 + i :: stride]
            stamps += flat[stride - 1 :: stride]
        all_codes, all_times = kind_codes(values), time_codes(stamps)
        sigs: list[list[tuple[int, ...]]] = []
        at = done = 0
        for n, lay in enumerate(layouts):
            flat, stride, count = lay.flat, lay.stride, lay.rows
            codes = [all_codes[at + i * count : at + (i + 1) * count] for i in range(len(lay.keys))]
            at += count * len(lay.keys)
            tagset = [series_sigs[sid] for sid in flat[1::stride]]
            sigs.append(list(zip(repeat(n), tagset, all_times[done : done + count], *codes)))
            done += count
        rows = [(lay.flat[r * lay.stride], n, r) for n, lay in enumerate(layouts) for r in range(lay.rows)]
        if len(layouts) > 1:
            rows.sort()
        keep = [[False] * lay.rows for lay in layouts]
        schema, used = dict(known), dict[str, ColumnType]()
        accepted: set[tuple[int, ...]] = set()
        for ln, n, r in rows:
            sig = sigs[n][r]
            if sig not in accepted:
                try:
                    self._judge(schema, used, table, layouts[n], r * layouts[n].stride)
                except Reject as exc:
                    self._error(ln, str(exc))
                    continue
                accepted.add(sig)
            keep[n][r] = True
        return keep, used

    def _row_by_row(
        self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]
    ) -> tuple[int, ParsedTable] | None:
        """Exact per-line finishing in Python: the reference the faster finishers must match."""
        rows = sorted((lay.flat[i], i, lay) for lay in layouts for i in range(0, len(lay.flat), lay.stride))
        schema, used = dict(known), dict[str, ColumnType]()
        accepted: list[tuple[int, dict[str, str], dict[str, Any], int]] = []
        for ln, i, lay in rows:
            try:
                typed, time = self._judge(schema, used, table, lay, i)
            except Reject as exc:
                self._error(ln, str(exc))
                continue
            values = {k: v for k, (_, v) in zip(lay.keys, typed, strict=True)}
            accepted.append((ln, table.series[lay.flat[i + 1]], values, time))
        if not accepted:
            return None
        tag_cols = {
            k: pa.array([a[1].get(k) for a in accepted], pa.string())
            for k, kind in used.items()
            if kind is ColumnType.TAG
        }
        field_cols: dict[str, tuple[ColumnType, pa.Array]] = {
            k: (kind, pa.array([a[2].get(k) for a in accepted], kind.arrow_type))
            for k, kind in used.items()
            if kind is not ColumnType.TAG
        }
        time = pa.array([a[3] for a in accepted], pa.int64())
        line_numbers = pa.array([a[0] for a in accepted], pa.int32())
        parsed = ParsedTable(table.name, len(accepted), time, line_numbers, tag_cols, field_cols)
        return accepted[0][0], parsed

    def _judge(
        self, schema: dict[str, ColumnType], used: dict[str, ColumnType], table: Table, lay: Layout, i: int
    ) -> tuple[list[tuple[ColumnType, Any]], int]:
        """Decide the row at flat[i] given the types fixed so far; if accepted, fix its new ones.

        `schema` holds every type fixed (known ones included), `used` the columns of accepted
        rows in first-seen order, which become the table's columns.

        Checks run in InfluxDB's order: values, timestamp syntax, duplicate fields, column
        types, timestamp range. Raises Reject with the first failure.
        """
        tags = table.series[lay.flat[i + 1]]
        end = i + lay.stride - 1  # the timestamp token
        typed = [classify(k, tok) for k, tok in zip(lay.keys, lay.flat[i + 2 : end], strict=True)]
        ts = parse_timestamp(lay.flat[end])
        if lay.dup:
            name = next(k for n, k in enumerate(lay.keys) if k in lay.keys[:n])
            raise Reject(f"invalid line protocol - multiple instances of '{name}' field found")
        check_schema(schema, tags, lay.keys, [kind for kind, _ in typed])
        time = scale(ts, self.precision, self.default_time)
        for k in tags:
            used.setdefault(k, schema.setdefault(k, ColumnType.TAG))
        for k, (kind, _) in zip(lay.keys, typed, strict=True):
            used.setdefault(k, schema.setdefault(k, kind))
        return typed, time


def _use_layout(ent: list[Any], lay: Layout) -> None:
    """Make `lay` the first guess for this series (and new series of its table)."""
    ent[0], ent[1] = lay.match, lay.extend
    recent: list[Layout] = ent[4]
    if not recent or recent[0] is not lay:
        if lay in recent:
            recent.remove(lay)
        recent.insert(0, lay)
        del recent[_MRU_LAYOUTS:]
    ent[3].last = lay


def ends_open(body: bytes) -> bool:
    """Whether the body's last record is left open (an unterminated string or a trailing
    backslash), so text appended after a newline would be read as part of it."""
    if (b'"' not in body and b"\\" not in body) or _CLOSED_BODY.fullmatch(body):
        return False
    return _ends_open_exact(body)


def _ends_open_exact(body: bytes) -> bool:
    """ends_open by the line-splitting state machine, line by line (the reference)."""
    fields = quoted = escaped = False
    depth = 0
    for line in body.decode("utf-8", errors="replace").split("\n"):
        if quoted or escaped:
            fields, quoted, depth, escaped = _split_state(line, fields, quoted, depth)
            continue
        line = line.lstrip(" \t")
        if line and line[0] != "#" and line != "\r":
            fields, quoted, depth, escaped = _split_state(line, False, False, 0)
    return quoted or escaped


def _split_state(seg: str, fields: bool, quoted: bool, depth: int) -> tuple[bool, bool, int, bool]:
    """Run InfluxDB's line-splitting state machine over one physical line.

    After the first unescaped space, `=` and `,` outside quotes move `depth`; a `"` toggles
    quoting only while depth > 0 (inside a field value). Returns the state and whether the
    line ends in an unpaired backslash, which escapes the newline.
    """
    escaped = False
    for m in _SPLIT_TOKEN.finditer(seg):
        tok = m.group()
        if tok == " ":
            fields = True
        elif tok[0] == "\\":
            escaped = len(tok) == 1
        elif fields:
            if tok == '"':
                if depth > 0:
                    quoted = not quoted
            elif not quoted:
                depth += 1 if tok == "=" else -1
    return fields, quoted, depth, escaped


def _scan_series(rec: str, max_tags: int | None = None) -> tuple[str, dict[str, str], int]:
    """Measurement and tags at the start of a record, and where the series key ends; Reject
    as soon as there are more than `max_tags` tags (the rest is not read)."""
    n = len(rec)
    pos = _skip(_MEASUREMENT, rec, 0)
    if pos == 0:
        raise Reject("Invalid measurement was provided")
    measurement = _unescape(rec[:pos], _UNESCAPE_MEASUREMENT)
    tags: dict[str, str] = {}
    while pos < n and rec[pos] == ",":
        start = pos + 1
        pos = _skip(_TAG_KEY, rec, start)
        if pos == start:
            raise Reject(f"Expected tag key, got {_got(rec, start)}")
        if pos >= n or rec[pos] != "=":
            raise Reject(f"Tag set malformed: could not find equals sign in `{snip(rec[start:])}`")
        key = _unescape(rec[start:pos], _UNESCAPE_NAME)
        start = pos + 1
        pos = _skip(_TAG_VALUE, rec, start)
        if pos == start:
            raise Reject(f"Expected tag value, got {_got(rec, start)}")
        tags[key] = _unescape(rec[start:pos], _UNESCAPE_NAME)  # a repeated tag: last value wins
        if max_tags is not None and len(tags) > max_tags:
            raise Reject(
                f"the line has more than {max_tags} tags; a table holds at most {max_tags}"
                " columns (catalog.max_columns)"
            )
    return measurement, tags, pos


def _scan(
    rec: str, max_columns: int | None = None
) -> tuple[str, dict[str, str], int, tuple[str, ...], tuple[Token, ...]]:
    """Split one record into measurement, tags, series end, field keys and canonical tokens.

    Tokens are the raw text of each field value (strings still quoted and escaped) and the
    raw timestamp (or None) last; their values are checked later, per table. Names are
    checked here (name_problem), and a record with more than `max_columns` tags and fields
    is rejected as soon as the scan passes that many.
    """
    measurement, tags, pos = _scan_series(rec, max_columns)
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
        key = _unescape(rec[start:pos], _UNESCAPE_NAME)
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
    problem = name_problem(name)
    if problem is not None:
        raise Reject(f"invalid {kind} {snip(ascii(name), 40)}: it {problem}")


def _skip(pattern: re.Pattern[str], rec: str, pos: int) -> int:
    """End of `pattern` matched at pos (every scanner pattern can match empty)."""
    m = pattern.match(rec, pos)
    return m.end() if m is not None else pos


def _unescape(raw: str, pattern: re.Pattern[str]) -> str:
    text = pattern.sub(r"\1", raw) if "\\" in raw else raw
    if text.endswith("\\"):
        raise Reject(_ENDS_WITH_BACKSLASH)
    if len(text) > MAX_STRING_BYTES // 4 and len(text.encode()) > MAX_STRING_BYTES:
        raise Reject(TOO_LONG)
    return text


def _truncate(ns: int, unit: int) -> int:
    """Round toward zero to a multiple of unit (Rust integer division)."""
    q = abs(ns) // unit * unit
    return q if ns >= 0 else -q


def _bad_utf8(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _original_line(record: str) -> str:
    """First 20 bytes of the record, cut back to a character boundary as InfluxDB does."""
    raw = record.encode("utf-8", "surrogateescape")
    cut = min(len(raw), ORIGINAL_LINE_BYTES)
    while ORIGINAL_LINE_BYTES - 3 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return raw[:cut].decode("utf-8", "replace")


def _got(rec: str, pos: int) -> str:
    return "end of input" if pos >= len(rec) else f"`{snip(rec[pos:])}`"
