"""WriteService: admit, parse, validate against the catalog, stamp time, append to the WAL.

HTTP, MQTT and plugins all write through `WriteService.submit`, so all of them meet the same
admission (`Admission`: the disk budget's 507, the full buffer's 503). Validation is per line
(vectorised per column): a line whose field type conflicts with the table's schema is
rejected alone; with accept_partial=False any bad line rejects the whole body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .errors import CatalogError, LimitExceeded, LineProtocolError, StorageFull
from .lineprotocol import parser
from .metrics import BYTES, LINES, REJECTED
from .model import TIME_COLUMN, ColumnType, LineError, LineErrors, ParsedTable, Precision
from .storage.buffer import Buffer
from .storage.catalog import Catalog, DatabaseDef, SchemaChange
from .storage.wal import TableRows, Wal, WalEntry, WalSeq


@dataclass
class WriteRequest:
    """One body of line protocol for one database."""

    db: str
    body: bytes
    precision: Precision = Precision.AUTO
    accept_partial: bool = True
    no_sync: bool = False
    origin: str = ""  # the plugin trigger writing, "" for users
    protocol: str = "http"  # for metrics: http, mqtt or plugin


@dataclass
class WriteReport:
    """What happened to a write: accepted rows and rejected lines.

    `errors` lists the first MAX_LINE_ERRORS rejected lines by line number; `rejected`
    counts them all and holds every rejected line's number.
    """

    lines: int = 0
    rows: int = 0
    limit_hit: bool = False
    committed: Future[WalSeq] | None = None
    rejected: LineErrors = field(default_factory=LineErrors)

    @property
    def errors(self) -> list[LineError]:
        """The listed rejected lines, by line number."""
        return self.rejected.listed()

    def summary(self) -> str:
        """The partial-write message, with the count when not every rejected line is listed."""
        text = "partial write of line protocol occurred"
        if len(self.rejected) > len(self.errors):
            text += f": {len(self.rejected)} lines were rejected; the first {len(self.errors)} are listed"
        return text


#: Longest a write waits for the persister to drain a full buffer before it gets 503.
ADMIT_TIMEOUT_SECONDS = 30.0
#: How often a write held on the event loop looks again whether the buffer has room.
_ROOM_POLL_SECONDS = 0.05


def _never_refusing() -> str | None:
    return None


class Admission:
    """Whether a write may enter now: the one decision for HTTP, MQTT and plugins.

    In order: while the disk budget holds only data not yet uploaded, 507 with the budget's
    reason; while the buffer is at twice its cap (persisting is behind), the write waits, and
    gets the buffer's 503 after `timeout` seconds. (A stopping server refuses with 503 in
    Store.submit, which guards every LMDB transaction, not only writes.)
    """

    def __init__(
        self,
        buffer: Buffer,
        budget_refusing: Callable[[], str | None] = _never_refusing,
        timeout: float = ADMIT_TIMEOUT_SECONDS,
    ) -> None:
        self.buffer = buffer
        self.budget_refusing = budget_refusing  # the 507 message, or None while writes fit
        self.timeout = timeout

    def admit(self) -> None:
        """On a worker thread: refuse (507), or wait for buffer room and refuse (503) after the timeout."""
        refusing = self.budget_refusing()
        if refusing is not None:
            raise StorageFull(refusing, kind="budget")
        self.buffer.admit(self.timeout)

    async def wait_for_room(self) -> None:
        """On the event loop, before a body is read: wait without a thread while the buffer is
        full; the buffer's 503 after the timeout."""
        deadline = time.monotonic() + self.timeout
        while not self.buffer.has_room():
            if time.monotonic() > deadline:
                self.buffer.admit(0)  # raises the 503 with its explanation
            await asyncio.sleep(_ROOM_POLL_SECONDS)


class WriteService:
    """The one write path shared by every protocol."""

    def __init__(
        self,
        catalog: Catalog,
        wal: Wal,
        admission: Admission | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.catalog = catalog
        self.wal = wal
        self.admission = admission  # None: every write is admitted (tests without a buffer)
        self.clock = clock

    async def wait_for_room(self) -> None:
        """Hold an HTTP write on the event loop while memory is at its cap (see Admission)."""
        if self.admission is not None:
            await self.admission.wait_for_room()

    def submit(self, req: WriteRequest) -> WriteReport:
        """Parse, validate and queue a write; `report.committed` resolves once it is durable.

        Raises LineProtocolError when accept_partial is off and a line is bad (nothing is
        written), and LimitExceeded when the database itself cannot be created.
        """
        if self.admission is not None:
            self.admission.admit()
        parsed = parser.parse(
            req.body,
            req.precision,
            self.clock(),
            known=_KnownColumns(self.catalog.get(req.db)),
            max_columns=self.catalog.limits.max_columns,
            table_room=self.catalog.table_room(req.db),
        )
        report = WriteReport(lines=parsed.lines, rejected=parsed.rejected, limit_hit=parsed.limit_hit)
        BYTES.inc(len(req.body), protocol=req.protocol)
        if report.rejected and not req.accept_partial:
            REJECTED.inc(parsed.lines, protocol=req.protocol)
            raise _first_error(report.rejected)
        with self.catalog.lock:
            change = self.catalog.begin()
            db = self.catalog.ensure_database(req.db, change)
            conflicts = LineErrors()
            batches = [self._validate(db, t, conflicts, report, change) for t in parsed.tables]
            if conflicts:
                _describe(conflicts, req.body)
                report.rejected.extend(conflicts)
            if report.rejected and not req.accept_partial:
                REJECTED.inc(parsed.lines, protocol=req.protocol)
                raise _first_error(report.rejected)  # nothing staged is kept
            self.catalog.commit(change)  # durable before any write can depend on it
            rows = [
                TableRows(db.tables[name].id, name, batch)
                for name, batch in (b for b in batches if b is not None)
                if batch.num_rows
            ]
        report.rows = sum(t.batch.num_rows for t in rows)
        if rows:
            report.committed = self.wal.append(WalEntry(db.id, db.name, rows, req.origin))
        LINES.inc(report.rows, protocol=req.protocol)
        REJECTED.inc(len(report.rejected), protocol=req.protocol)
        if req.no_sync and report.committed is not None:
            done: Future[WalSeq] = Future()
            done.set_result(WalSeq(0))
            report.committed = done
        return report

    def _validate(
        self, db: DatabaseDef, t: ParsedTable, errors: LineErrors, report: WriteReport, change: SchemaChange
    ) -> tuple[str, pa.RecordBatch] | None:
        """Rows of `t` that fit the table's schema (new columns staged in `change`)."""
        existing = self.catalog.table(db, t.name, change)
        known = existing.columns if existing is not None else {}
        incoming: dict[str, tuple[ColumnType, pa.Array]] = {
            name: (ColumnType.TAG, arr) for name, arr in t.tags.items()
        }
        incoming.update(t.fields)
        rejected = pa.array([False] * t.num_rows)
        for name, (kind, arr) in incoming.items():
            expected = known.get(name)
            if expected is None or expected == kind or arr.null_count == len(arr):
                continue
            bad = arr.is_valid()
            _report(
                errors,
                t.line_numbers,
                pc.and_not(bad, rejected),
                f"invalid column type for column '{name}', expected {expected.iox_name}, got {kind.iox_name}",
            )
            rejected = pc.or_(rejected, bad)
        keep = pc.invert(rejected)
        any_rejected = pc.any(rejected).as_py()
        new_columns = {
            name: kind
            for name, (kind, arr) in incoming.items()
            if name not in known
            and (
                arr.null_count < len(arr)
                if not any_rejected
                else pc.any(pc.and_(arr.is_valid(), keep)).as_py()
            )
        }
        if new_columns or existing is None:
            try:
                self.catalog.extend_table(db, t.name, new_columns, change)
            except CatalogError as e:  # a limit, or a table name the catalog cannot hold
                report.limit_hit = report.limit_hit or isinstance(e, LimitExceeded)
                _report(errors, t.line_numbers, keep, e.message)
                return None
        names = sorted(incoming)
        arrays = [incoming[n][1] for n in names]
        arrays.append(t.time.cast(pa.timestamp("ns")))
        batch = pa.RecordBatch.from_arrays(arrays, names=[*names, TIME_COLUMN])
        if any_rejected:
            batch = batch.filter(keep)
        return t.name, batch


class _KnownColumns(Mapping[str, Mapping[str, ColumnType]]):
    """Read-only view of a database's column types for the parser (no copy per write).

    TableDef.columns is replaced, never mutated, when a table grows, so each lookup sees a
    consistent set; a column added meanwhile is caught again by validation.
    """

    def __init__(self, db: DatabaseDef | None) -> None:
        self._tables = db.tables if db is not None else {}

    def __getitem__(self, table: str) -> Mapping[str, ColumnType]:
        return self._tables[table].columns

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tables))

    def __len__(self) -> int:
        return len(self._tables)


def _report(errors: LineErrors, line_numbers: pa.Array, mask: pa.Array, message: str) -> None:
    """Note every row selected by mask as rejected (their text is filled in by _describe)."""
    for n in line_numbers.filter(mask).to_pylist():
        errors.add(n, "", message)  # kept in full only among the first listed


def _describe(errors: LineErrors, body: bytes) -> None:
    """Fill in the start of each listed line (at most MAX_LINE_ERRORS: one split of the body)."""
    listed = errors.listed()
    if not listed:
        return
    lines = pc.split_pattern(pa.array([body], pa.binary()), b"\n").values
    for e in listed:
        if e.line_number <= len(lines):
            e.original_line = lines[e.line_number - 1].as_py().lstrip()[:20].decode("utf-8", errors="replace")


def _first_error(errors: LineErrors) -> LineProtocolError:
    return LineProtocolError("line protocol parsing error", data=errors.first().to_json())
