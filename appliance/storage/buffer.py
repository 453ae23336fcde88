"""Recently written rows, in memory as Arrow, fed by the WAL listener.

Rows become visible to queries in the same step that acknowledges their write: the
WAL writer calls `on_commit` before it resolves the write's future. The persister
takes a snapshot, writes Parquet and then releases the rows it persisted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from ..component import Listeners
from ..errors import WalError
from ..model import TIME_COLUMN, WalSeq
from .dedupe import conform, last_write_wins
from .wal import WalEntry

TableKey = tuple[int, int]  # (database id, table id)


@dataclass
class _Chunk:
    seq: WalSeq
    batch: pa.RecordBatch
    arrived_ns: int


@dataclass
class TableBuffer:
    """The buffered chunks of one table and a cached, deduplicated view of them."""

    chunks: list[_Chunk] = field(default_factory=list)
    nbytes: int = 0
    #: Bumped by every change, so a view built meanwhile is never cached as current.
    generation: int = 0
    cached: pa.Table | None = None
    cached_schema: pa.Schema | None = None

    def changed(self) -> None:
        self.generation += 1
        self.cached = None


class Buffer:
    """All tables' buffered rows; a WAL listener."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._drained = threading.Condition(self.lock)
        self.tables: dict[TableKey, TableBuffer] = {}
        self.nbytes = 0
        self.applied_seq = WalSeq(0)
        self.on_full: Listeners[[]] = Listeners()  # over the cap: persist early
        self.oldest_unpersisted_ns: int | None = None

    def on_commit(self, entries: list[tuple[WalSeq, WalEntry]]) -> None:
        """Append committed rows; ask for an early persist when over the byte cap."""
        now = time.time_ns()
        with self.lock:
            for seq, entry in entries:
                for rows in entry.tables:
                    tb = self.tables.setdefault((entry.db_id, rows.table_id), TableBuffer())
                    tb.chunks.append(_Chunk(seq, rows.batch, now))
                    tb.nbytes += rows.batch.nbytes
                    tb.changed()
                    self.nbytes += rows.batch.nbytes
                self.applied_seq = seq
            if self.oldest_unpersisted_ns is None and self.tables:
                self.oldest_unpersisted_ns = now
            full = self.nbytes >= self.max_bytes
        if full:
            self.on_full.notify()

    def table(self, key: TableKey, schema: pa.Schema) -> pa.Table | None:
        """The buffered rows of one table in `schema`, deduplicated; None when empty."""
        with self.lock:
            tb = self.tables.get(key)
            if tb is None or not tb.chunks:
                return None
            if tb.cached is not None and tb.cached_schema == schema:
                return tb.cached
            batches = [c.batch for c in tb.chunks]
            generation = tb.generation
        table = last_write_wins(conform(batches, schema))
        with self.lock:
            if self.tables.get(key) is tb and tb.generation == generation:
                tb.cached, tb.cached_schema = table, schema
        return table

    def snapshot(self) -> tuple[WalSeq, dict[TableKey, list[pa.RecordBatch]]]:
        """Everything buffered now and the WAL seq it reaches, for the persister."""
        with self.lock:
            upto = self.applied_seq
            return upto, {k: [c.batch for c in tb.chunks] for k, tb in self.tables.items() if tb.chunks}

    def release(self, upto: WalSeq) -> None:
        """Forget rows from WAL entries <= upto (they are in Parquet now)."""
        with self.lock:
            for key in list(self.tables):
                tb = self.tables[key]
                keep = [c for c in tb.chunks if c.seq > upto]
                if len(keep) != len(tb.chunks):
                    freed = tb.nbytes - sum(c.batch.nbytes for c in keep)
                    self.nbytes -= freed
                    tb.chunks, tb.nbytes = keep, tb.nbytes - freed
                    tb.changed()
                if not tb.chunks:
                    del self.tables[key]
            self._note_oldest()
            self._drained.notify_all()

    def _note_oldest(self) -> None:
        """When the oldest row still buffered arrived: the gen1 clock runs from there."""
        arrivals = [tb.chunks[0].arrived_ns for tb in self.tables.values() if tb.chunks]
        self.oldest_unpersisted_ns = min(arrivals, default=None)

    def has_room(self) -> bool:
        """Below twice the cap: a new write may enter (write.Admission decides)."""
        return self.nbytes < 2 * self.max_bytes

    def admit(self, timeout: float) -> None:
        """Hold a new write while the buffer is at twice its cap (persisting fell behind).

        This bounds memory by configuration rather than by input; after `timeout` seconds
        the write is refused with 503 so the client retries later.
        """
        with self.lock:
            if self._drained.wait_for(self.has_room, timeout):
                return
        raise WalError(
            f"the in-memory buffer is full ({self.nbytes} bytes, twice storage.max_buffer_bytes)"
            " and persisting to Parquet is behind; retry shortly",
            http_status=503,
        )

    def drop(self, db_id: int, table_id: int | None) -> None:
        """Discard a deleted database's or table's rows."""
        with self.lock:
            for key in [k for k in self.tables if k[0] == db_id and table_id in (None, k[1])]:
                self.nbytes -= self.tables.pop(key).nbytes
            self._note_oldest()
            self._drained.notify_all()

    def prune_before(self, db_id: int, cutoff_ns: int) -> None:
        """Drop rows older than cutoff_ns (retention) from one database's tables."""
        with self.lock:
            for key, tb in self.tables.items():
                if key[0] != db_id:
                    continue
                kept: list[_Chunk] = []
                for c in tb.chunks:
                    times = c.batch.column(TIME_COLUMN)
                    mask = pc.greater_equal(times.cast(pa.int64()), cutoff_ns)
                    if pc.all(mask).as_py():
                        kept.append(c)
                    elif pc.any(mask).as_py():
                        kept.append(_Chunk(c.seq, c.batch.filter(mask), c.arrived_ns))
                tb.chunks = kept
                old = tb.nbytes
                tb.nbytes = sum(c.batch.nbytes for c in kept)
                self.nbytes += tb.nbytes - old
                tb.changed()
            self._note_oldest()
            self._drained.notify_all()
