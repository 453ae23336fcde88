"""WAL entries on the Store: appended in the writer's group transaction, replayed, trimmed.

`Wal.append` submits an entry to the Store's writer, which commits it with everything else
waiting (one fsync per group). A seq is only handed out for good once its group commits:
`committed` then tells the listeners (the buffer, the engine) about the group's entries, in
order, before any caller's future resolves. A persist trims the entries its files hold in the
same transaction that records the files (`trim`). Replay reads what is left at start-up.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack
import pyarrow as pa

from ..component import Listeners
from ..errors import TooLarge
from ..metrics import WAL_ENTRIES, Registry
from ..model import WalSeq
from .store import Store

log = logging.getLogger("appliance.wal")

_SEQ = struct.Struct(">Q")  # big-endian so LMDB's byte order is numeric order


@dataclass
class TableRows:
    """Validated rows for one table, as stored in the WAL and the buffer."""

    table_id: int
    table: str
    batch: pa.RecordBatch


@dataclass
class WalEntry:
    """One acknowledged write: rows for one database, in several tables."""

    db_id: int
    db: str
    tables: list[TableRows]
    #: Trigger (plugin) that wrote it, so it does not re-trigger itself; "" for users.
    origin: str = ""

    def encode(self) -> bytes:
        """Serialise as msgpack with one Arrow IPC stream per table."""
        tables = []
        for t in self.tables:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, t.batch.schema) as writer:
                writer.write_batch(t.batch)
            tables.append([t.table_id, t.table, sink.getvalue().to_pybytes()])
        return msgpack.packb([1, self.db_id, self.db, tables, self.origin])

    @classmethod
    def decode(cls, data: bytes) -> WalEntry:
        _version, db_id, db, tables, origin = msgpack.unpackb(data)
        rows = []
        for table_id, table, ipc in tables:
            reader = pa.ipc.open_stream(ipc)
            batches = list(reader)
            batch = (
                batches[0]
                if len(batches) == 1
                else pa.Table.from_batches(batches, reader.schema).combine_chunks().to_batches()[0]
            )
            rows.append(TableRows(table_id, table, batch))
        return cls(db_id, db, rows, origin)

    @property
    def num_rows(self) -> int:
        return sum(t.batch.num_rows for t in self.tables)


@dataclass
class WalStats:
    """Counters shown in /health and /metrics."""

    entries: int = 0
    max_group: int = 0  # most entries one group commit held


class Wal:
    """The write-ahead log: the `wal` database of the Store, keyed by big-endian WalSeq.

    As a component (`wal` in /health) it stands for the Store's writer too: the WAL is what it commits.
    """

    name = "wal"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._db = store.database(b"wal")
        #: Told about each group commit's entries, in order, on the writer thread, before any future resolves.
        self.on_commit: Listeners[[list[tuple[WalSeq, WalEntry]]]] = Listeners()
        self._next_seq = self._last_seq() + 1
        # The group being committed (writer thread only): seqs handed out, and their entries.
        self._seq = self._next_seq
        self._group: list[tuple[WalSeq, WalEntry]] = []
        self.stats = WalStats()
        self.replay_seconds = 0.0  # how long the last start-up's replay took
        store.add_group_hook(self)

    def start(self) -> None:
        self.store.start()

    def stop(self) -> None:
        self.store.stop()

    def health(self) -> dict[str, Any]:
        """The writer's health (out of space, failing commits, a dead thread) and the WAL's counters."""
        return self.store.health() | {
            "last_seq": self.last_seq,
            "commits": self.store.stats.commits,
            "largest_group": self.stats.max_group,
            "replay_seconds": round(self.replay_seconds, 3),
        }

    def register_metrics(self, registry: Registry) -> None:
        """The WAL gauges /metrics reads when scraped."""
        registry.gauge(
            "appliance_wal_replay_seconds",
            "Time the last start-up spent replaying the WAL.",
            lambda: self.replay_seconds,
        )
        registry.gauge(
            "appliance_wal_last_sequence", "Sequence number of the newest WAL entry.", lambda: self.last_seq
        )

    def append(self, entry: WalEntry) -> Future[WalSeq]:
        """Queue an entry; the future gives its WalSeq once its group committed and listeners saw it."""
        encoded = entry.encode()
        if len(encoded) > self.store.map_size // 2:
            # It could never fit (507 "retry" would be a lie): the map also holds the catalog,
            # the queues and other entries until a persist trims them.
            raise TooLarge(
                f"one write of {len(encoded)} bytes (as stored) is more than the write-ahead log can"
                f" take at once (half of wal.map_size={self.store.map_size}); split it into smaller"
                " writes or raise wal.map_size"
            )

        def step(txn: lmdb.Transaction) -> WalSeq:
            seq = WalSeq(self._seq)
            txn.put(_SEQ.pack(seq), encoded, db=self._db)
            self._group.append((seq, entry))
            self._seq += 1
            return seq

        return self.store.submit(step, size=len(encoded))

    # -- the Store's group hook (writer thread) ------------------------------
    def committed(self) -> None:
        """The group committed: its seqs are taken for good, and the listeners hear of its entries."""
        entries, self._group = self._group, []
        self._next_seq = self._seq
        WAL_ENTRIES.inc(len(entries))
        self.stats.entries += len(entries)
        self.stats.max_group = max(self.stats.max_group, len(entries))
        if entries:
            for listener in self.on_commit:
                try:
                    listener(entries)
                except Exception:
                    # Acknowledging rows the buffer did not take would lose them at the next
                    # WAL trim. Stop hard instead: the WAL holds them, a restart replays them.
                    log.critical(
                        "WAL listener %s failed; stopping",
                        getattr(listener, "__qualname__", listener),
                        exc_info=True,
                    )
                    os._exit(70)

    def aborted(self) -> None:
        """The group did not commit: its seqs are handed out again."""
        self._group, self._seq = [], self._next_seq

    # -- replay and trimming ------------------------------------------------
    def _last_seq(self) -> int:
        with self.store.read() as txn:
            cur = txn.cursor(db=self._db)
            return _SEQ.unpack(cur.key())[0] if cur.last() else 0

    @property
    def last_seq(self) -> WalSeq:
        return WalSeq(self._next_seq - 1)

    def replay(self) -> Iterator[tuple[WalSeq, WalEntry]]:
        """Every WAL entry still in LMDB, oldest first (used once, at start-up)."""
        with self.store.read() as txn:
            for key, value in txn.cursor(db=self._db):
                yield WalSeq(_SEQ.unpack(key)[0]), WalEntry.decode(value)

    def trim(self, txn: lmdb.Transaction, upto: WalSeq) -> int:
        """Delete WAL entries with seq <= upto inside `txn` (a Store step); returns how many."""
        cur = txn.cursor(db=self._db)
        removed = 0
        while cur.first() and _SEQ.unpack(cur.key())[0] <= upto:
            cur.delete()
            removed += 1
        return removed
