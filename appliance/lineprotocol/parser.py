"""Line protocol parser: a write body to per-table Arrow columns plus per-line errors; pure, no I/O.

Two routes give identical results. The fast route (pieces in lineprotocol.columns) takes a physical line
whose series key (the text before the first unescaped space) was already parsed in this body
and whose field section matches the regex of a known field-key layout; it keeps the raw value
tokens, and Arrow kernels convert each column at the end. Every other line takes the exact
route: InfluxDB's line-splitting state machine (lineprotocol.syntax; newlines may sit inside
quoted strings) and a scanner (lineprotocol.scanner) that stores the same tokens. Tables are
finished by lineprotocol.finish: column-wise when regular, else line by line with exact checks.
Regular bodies as a whole go to lineprotocol.vector first.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from ..log import QuietLog
from ..metrics import VECTOR_FALLBACKS
from ..model import ColumnType, LineErrors, ParsedTable, ParseResult, Precision, strip_bom
from .columns import MAX_STRING_BYTES, NEVER, Fallback, Layout, Reject, Table, split_series
from .finish import Finisher
from .scanner import scan, scan_series, series_text_end
from .syntax import BAD_NAME_CHAR_BUT_JOINERS, RECORD_START, continued, name_problem, skipped, truncate
from .vector import try_parse

log = logging.getLogger("appliance.lineprotocol")

ORIGINAL_LINE_BYTES = 20
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
            data, precision, now_ns, known, scan=scan, max_columns=max_columns, max_new_tables=table_room
        )
    except Exception as exc:  # a bug there must not make parse() raise: the routes below answer
        VECTOR_FALLBACKS.inc()
        _FALLBACK_LOG.log(
            logging.ERROR,
            "vector",
            f"the vectorised line protocol parser failed (the body was parsed on the exact route instead): {exc!r}",
            exc_info=exc,
        )
        result = None
    if result is not None:
        return result
    return _Body(body, precision, now_ns, True, known, max_columns, table_room).result()


#: A bug in the vectorised route costs speed, never data: the body goes the exact route. The
#: metric and this log (once a minute) keep the bug from hiding as merely slower ingest.
_FALLBACK_LOG = QuietLog(log, 60.0)


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
        self.default_time = now_ns if precision is Precision.AUTO else truncate(now_ns, unit)
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
            end = series_text_end(line)
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
                measurement, tags, end = scan_series(key)
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
        if skipped(line):
            # Blank or comment. Unlike InfluxDB, a comment is a whole physical line: a quote in
            # it (`# x="y`) does not swallow the lines after it.
            return
        text = line
        if '"' in line or line.endswith("\\"):
            state = continued(line, RECORD_START)
            parts = [line]
            while state is not None:  # a string left open or a trailing backslash: read on
                nxt = next(it, None)
                if nxt is None:
                    break
                parts.append(nxt[1])
                state = continued(nxt[1], state)
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
            measurement, tags, series_end, keys, tokens = scan(text, self.max_columns)
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
        """Every table with accepted lines, in the order of its first accepted line."""
        done: list[tuple[int, ParsedTable]] = []
        body_errors = self.errors
        finisher = Finisher(self.precision, self.default_time, self.max_columns, self._error)
        for table in self.tables.values():
            layouts = [lay for lay in table.layouts if lay.flat]
            if not layouts:
                continue
            known = self.known.get(table.name, {})
            if finisher.too_many_columns(table, layouts, known):
                self.limit_hit = True
                continue
            self.errors = LineErrors()  # this table's; dropped if the exact pass must redo it
            try:
                if self.fast and sum(lay.rows for lay in layouts) >= _COLUMNWISE_ROWS:
                    out = finisher.columnwise(table, layouts, known)
                else:  # a few rows: Python per value costs less than kernel calls per column
                    out = finisher.row_by_row(table, layouts, known)
            except (Fallback, pa.ArrowException):
                self.errors = LineErrors()  # the exact pass reports them again
                out = finisher.row_by_row(table, layouts, known)
            finally:
                body_errors.extend(self.errors)
                self.errors = body_errors
            if out is not None:
                done.append(out)
        done.sort(key=lambda pair: pair[0])
        return [t for _, t in done]


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
