"""Recently written rows, in memory as Arrow, fed by the WAL listener.

Rows become visible to queries in the same step that acknowledges their write: the
WAL writer calls `on_commit` before it resolves the write's future. The persister
takes a snapshot, writes Parquet and then releases the rows it persisted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .errors import WalError
from .model import TIME_COLUMN, WalSeq
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

    def __init__(self, max_bytes: int, on_full: Callable[[], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._drained = threading.Condition(self.lock)
        self.tables: dict[TableKey, TableBuffer] = {}
        self.nbytes = 0
        self.applied_seq = WalSeq(0)
        self.on_full = on_full
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
        if full and self.on_full is not None:
            self.on_full()

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
        table = dedupe(conform(batches, schema))
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

    def admit(self, timeout: float) -> None:
        """Hold a new write while the buffer is at twice its cap (persisting fell behind).

        This bounds memory by configuration rather than by input; after `timeout` seconds
        the write is refused with 503 so the client retries later.
        """
        with self.lock:
            if self._drained.wait_for(lambda: self.nbytes < 2 * self.max_bytes, timeout):
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


def conform(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """Cast chunks with differing column sets to one schema; absent columns become null.

    Runs of chunks with the same schema (many small writes of one shape) are cast together,
    one kernel call per column instead of one per chunk. Order is kept: later writes win.
    """
    runs: list[list[pa.RecordBatch]] = []
    for b in batches:
        if runs and runs[-1][0].schema.equals(b.schema):
            runs[-1].append(b)
        else:
            runs.append([b])
    out = []
    for run in runs:
        part = pa.Table.from_batches(run).combine_chunks()  # one chunk: one cast, a faster sort later
        cols = []
        for f in schema:
            i = part.schema.get_field_index(f.name)
            if i < 0:
                cols.append(pa.nulls(part.num_rows, f.type))
            else:
                col = part.column(i)
                cols.append(col if col.type == f.type else col.cast(f.type))
        out.append(pa.Table.from_arrays(cols, schema=schema))
    return pa.concat_tables(out) if out else schema.empty_table()


def tag_columns(schema: pa.Schema) -> list[str]:
    """Tag columns of a storage schema (tags are the dictionary-encoded columns), by name."""
    return sorted(f.name for f in schema if pa.types.is_dictionary(f.type))


def _sort_keys(table: pa.Table, tags: list[str]) -> pa.Table:
    """The identifying columns (tags, time) with tags as plain strings, for sorting and comparing."""
    cols = {}
    for k in [*tags, TIME_COLUMN]:
        col = table.column(k)
        cols[k] = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
    return pa.table(cols)


def sort_for_storage(table: pa.Table) -> pa.Table:
    """Sort by tags, then time, as Parquet files are laid out (stable: arrival order kept)."""
    keys = _sort_keys(table, tag_columns(table.schema))
    order = pc.sort_indices(keys, [(k, "ascending", "at_start") for k in keys.column_names])
    return table.take(order)


def dedupe(table: pa.Table) -> pa.Table:
    """Sorted by tags then time, with one row per point: later writes win field by field."""
    if table.num_rows < 2:
        return table
    ordered = sort_for_storage(table)
    tags = tag_columns(table.schema)
    keys = _sort_keys(ordered, tags)
    if not _has_adjacent_duplicates(keys):
        return ordered
    fields = [n for n in table.column_names if n not in keys.column_names]
    plain = keys
    for f in fields:
        plain = plain.append_column(f, ordered.column(f))
    # use_threads=False keeps rows in order, so "last" means the latest write.
    grouped = plain.group_by(keys.column_names, use_threads=False).aggregate([(f, "last") for f in fields])
    grouped = grouped.rename_columns([*keys.column_names, *fields])
    return sort_for_storage(grouped.select(table.column_names).cast(table.schema))


def _has_adjacent_duplicates(keys: pa.Table) -> bool:
    n = keys.num_rows
    same = None
    for col in keys.columns:
        if col.null_count:
            col = pc.fill_null(col, "\x00") if pa.types.is_string(col.type) else col
        eq = pc.fill_null(pc.equal(col.slice(1, n - 1), col.slice(0, n - 1)), False)
        same = eq if same is None else pc.and_(same, eq)
    return same is not None and bool(pc.any(same).as_py())
