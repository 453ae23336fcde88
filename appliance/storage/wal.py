"""The LMDB environment and its single writer thread: WAL entries with group commit.

Every LMDB write in the process goes through `Wal.submit`, so there is one writer and
one fsync per group: the thread takes every request waiting at that moment, runs them
in one transaction, commits it (LMDB fsyncs on commit), tells listeners about the new
WAL entries, and only then resolves the callers' futures. An idle server commits at
once; a busy one batches naturally.

Out of space (the disk holding the data dir, or the LMDB map) is a state, not just an
error: `full` says why while commits fail for lack of space (for /health), and a full
map tells `on_map_full` listeners (the persister), since persisting trims the WAL. A full
disk is judged by the disk too (`check_space`, from /health): it ends once the disk has
room again, not when a small commit happens to fit in LMDB's free pages. Commits failing
for any other reason (EIO with room, MDB_PANIC) several times in a row are the `failing`
state, with the reason.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lmdb
import msgpack
import pyarrow as pa

from ..errors import SHUTTING_DOWN, StorageFull, TooLarge, WalError
from ..fileio import free_bytes
from ..log import QuietLog
from ..metrics import WAL_COMMIT_SECONDS, WAL_COMMITS, WAL_ENTRIES
from ..model import WalSeq

log = logging.getLogger("appliance.wal")

#: Named LMDB databases inside the one environment.
DB_NAMES = (
    b"wal",
    b"catalog",
    b"files",
    b"tokens",
    b"meta",
    b"triggers",
    b"logs",
    b"sync",
    b"synced",
    b"sync_del",
)

_SEQ = struct.Struct(">Q")  # big-endian so LMDB's byte order is numeric order

#: Consecutive commits failing for a reason other than space before /health says `failing`.
FAILING_AFTER = 3


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


class WalListener(Protocol):
    """Told about each group commit's WAL entries, in order, on the writer thread."""

    def on_commit(self, entries: list[tuple[WalSeq, WalEntry]]) -> None: ...


TxnFn = Callable[[lmdb.Transaction, "Wal"], Any]


@dataclass
class _Request:
    fn: TxnFn | None
    entry: WalEntry | None
    encoded: bytes | None
    future: Future[Any] = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class WalStats:
    """Counters shown in /health and (later) /metrics."""

    commits: int = 0
    entries: int = 0
    last_commit_seconds: float = 0.0
    max_group: int = 0


class Wal:
    """Owns the LMDB environment and the only thread that writes to it."""

    def __init__(self, path: Path, map_size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        #: WAL entries are refused (507) once the stored data reaches this; the map is larger by
        #: a reserve, so the persist that trims the WAL (and other bookkeeping) still commits.
        self.map_size = map_size
        self.env = lmdb.open(
            str(path),
            map_size=map_size + map_reserve(map_size),
            max_dbs=len(DB_NAMES) + 2,
            sync=True,
            metasync=True,
        )
        self.dbs = {name.decode(): self.env.open_db(name) for name in DB_NAMES}
        self._page_size = int(self.env.stat()["psize"])
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._listeners: list[WalListener] = []
        self._busy_since: float | None = None  # monotonic start of the commit in progress
        self.data_dir = path.parent
        #: Why commits fail for lack of space (disk or map), until one succeeds again.
        self.full: str | None = None
        self._full_kind = ""
        #: Why commits keep failing for another reason (EIO with room, MDB_PANIC), until one succeeds.
        self.failing: str | None = None
        self._failures = 0  # consecutive failed commits (not for lack of space)
        self._quiet = QuietLog(log)  # a failing disk logs a line per 10 s, not one per commit
        self._space_lock = threading.Lock()
        #: Called on the writer thread when the map is full (persisting frees WAL pages).
        self.on_map_full: list[Callable[[], None]] = []
        self._next_seq = self._last_seq() + 1
        self.stats = WalStats()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit what is queued, then stop the writer thread and close LMDB."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.env.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def responsive(self, within: float) -> bool:
        """Alive, and not stuck in one commit (a hung fsync) for more than `within` seconds."""
        busy = self._busy_since
        return self.alive and (busy is None or time.monotonic() - busy < within)

    def add_listener(self, listener: WalListener) -> None:
        self._listeners.append(listener)

    # -- submitting work ----------------------------------------------------
    def submit(self, fn: TxnFn | None = None, entry: WalEntry | None = None) -> Future[Any]:
        """Queue a transaction step and/or a WAL entry; the future resolves after commit.

        `fn(txn, wal)` runs inside the group transaction (in a nested transaction, so a
        failing step is rolled back alone); its return value becomes the future's result.
        For an entry, the result is its WalSeq unless `fn` returns something else.
        """
        if self._stopped.is_set():
            raise WalError(f"the write was not accepted: {SHUTTING_DOWN}")
        encoded = entry.encode() if entry is not None else None
        if encoded is not None and len(encoded) > self.map_size // 2:
            # It could never fit (507 "retry" would be a lie): the map also holds the catalog,
            # the queues and other entries until a persist trims them.
            raise TooLarge(
                f"one write of {len(encoded)} bytes (as stored) is more than the write-ahead log can"
                f" take at once (half of wal.map_size={self.map_size}); split it into smaller"
                " writes or raise wal.map_size"
            )
        req = _Request(fn, entry, encoded)
        # Running futures cannot be cancelled: a client that disconnects (asyncio cancels
        # the wrapped future) must not make the writer's set_result fail.
        req.future.set_running_or_notify_cancel()
        self._queue.put(req)
        return req.future

    def read(self) -> lmdb.Transaction:
        """A read-only transaction (use as a context manager)."""
        return self.env.begin(write=False)

    # -- the writer thread --------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            reqs = [r for r in batch if r is not None]
            if reqs:
                try:
                    self._busy_since = time.monotonic()
                    self._commit(reqs)
                except Exception as e:  # the writer thread must outlive any one group
                    log.exception("WAL group failed")
                    failure = WalError(f"write-ahead log failure: {e}")
                    self._note_failure(failure)
                    for req in reqs:
                        if not req.future.done():
                            req.future.set_exception(failure)
            self._busy_since = None
            if stop:
                self._stopped.set()
                return

    def _commit(self, reqs: list[_Request]) -> None:
        started = time.monotonic()
        committed: list[tuple[WalSeq, WalEntry]] = []
        results: list[tuple[_Request, Any, BaseException | None]] = []
        seq = self._next_seq
        try:
            with self.env.begin(write=True) as txn:
                used = self._used_bytes(txn)
                for req in reqs:
                    result: Any = None
                    error: BaseException | None = None
                    if req.encoded is not None and used + len(req.encoded) > self.map_size:
                        results.append((req, None, _map_full()))  # the reserve is for persisting
                        continue
                    try:
                        with self.env.begin(write=True, parent=txn) as child:
                            if req.fn is not None:
                                result = req.fn(child, self)
                            if req.entry is not None and req.encoded is not None:
                                child.put(_SEQ.pack(seq), req.encoded, db=self.dbs["wal"])
                                committed.append((WalSeq(seq), req.entry))
                                used += len(req.encoded)
                                if req.fn is None:
                                    result = WalSeq(seq)
                                seq += 1
                    except lmdb.Error as e:
                        error = self._storage_error(e, [req])
                    except Exception as e:  # one request's failure must not sink the group
                        error = e
                    results.append((req, result, error))
                used = self._used_bytes(txn)
        except lmdb.Error as e:
            failure = self._storage_error(e, reqs)
            if isinstance(failure, StorageFull):
                self._note_space(failure, None)
            else:
                self._note_failure(failure)
            for req in reqs:
                req.future.set_exception(failure)
            return
        self._note_success()
        self._note_space(next((r[2] for r in results if isinstance(r[2], StorageFull)), None), used)
        self._next_seq = seq
        self._note_commit(started, len(committed))
        if committed:
            for listener in self._listeners:
                try:
                    listener.on_commit(committed)
                except Exception:
                    # Acknowledging rows the buffer did not take would lose them at the next
                    # WAL trim. Stop hard instead: the WAL holds them, a restart replays them.
                    log.critical("WAL listener %s failed; stopping", type(listener).__name__, exc_info=True)
                    os._exit(70)
        for req, result, error in results:
            if error is not None:
                req.future.set_exception(error)
            else:
                req.future.set_result(result)

    def _note_commit(self, started: float, entries: int) -> None:
        WAL_COMMITS.inc()
        WAL_ENTRIES.inc(entries)
        WAL_COMMIT_SECONDS.observe(time.monotonic() - started)
        self.stats.commits += 1
        self.stats.entries += entries
        self.stats.last_commit_seconds = time.monotonic() - started
        self.stats.max_group = max(self.stats.max_group, entries)

    # -- replay and trimming ------------------------------------------------
    def _last_seq(self) -> int:
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dbs["wal"])
            return _SEQ.unpack(cur.key())[0] if cur.last() else 0

    @property
    def last_seq(self) -> WalSeq:
        return WalSeq(self._next_seq - 1)

    def replay(self) -> Iterator[tuple[WalSeq, WalEntry]]:
        """Every WAL entry still in LMDB, oldest first (used once, at start-up)."""
        with self.env.begin() as txn:
            for key, value in txn.cursor(db=self.dbs["wal"]):
                yield WalSeq(_SEQ.unpack(key)[0]), WalEntry.decode(value)

    def trim(self, txn: lmdb.Transaction, upto: WalSeq) -> int:
        """Delete WAL entries with seq <= upto inside `txn`; returns how many."""
        cur = txn.cursor(db=self.dbs["wal"])
        removed = 0
        while cur.first() and _SEQ.unpack(cur.key())[0] <= upto:
            cur.delete()
            removed += 1
        return removed

    def _used_bytes(self, txn: lmdb.Transaction) -> int:
        """Bytes of pages the named databases hold in `txn` (free pages not counted)."""
        pages = 0
        for db in self.dbs.values():
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self._page_size

    def _note_space(self, failure: StorageFull | None, used: int | None) -> None:
        """After a commit: enter or leave the out-of-space state (logged once each way).

        Only a commit that ran (even if some of its requests were refused) may end the state:
        a full map once the data fits again, a full disk once the disk has room again. A full
        map wakes a persist.
        """
        if failure is not None:
            self._enter_full(failure)
            if failure.kind == "map":
                for listener in self.on_map_full:
                    try:
                        listener()
                    except Exception:
                        log.exception("map-full listener failed")
        elif self._full_kind == "disk":
            self.check_space()
        elif self.full is not None and (used or 0) < self.map_size:
            self._leave_full()

    def check_space(self) -> str | None:
        """Judge the disk by itself (one statvfs; /health calls it): full below DISK_HEADROOM free.

        Ends a full-disk state once there is room (no write needed), and starts one when the
        disk fills up, even while small commits still fit in LMDB's free pages. Returns `full`.
        """
        free = free_bytes(self.data_dir)
        if free < 0:
            return self.full
        if free < DISK_HEADROOM and self._full_kind != "map":
            if self._full_kind != "disk":
                self._enter_full(StorageFull(disk_full_message(self.data_dir, free, _MAY_FAIL), "disk"))
        elif self._full_kind == "disk" and free >= DISK_HEADROOM:
            self._leave_full()
        return self.full

    def _enter_full(self, failure: StorageFull) -> None:
        with self._space_lock:
            if self.full is None:
                log.error("writes refused with 507: %s", failure.message)
            self.full, self._full_kind = failure.message, failure.kind

    def _leave_full(self) -> None:
        with self._space_lock:
            if self.full is not None:
                log.warning("storage has room again: WAL commits succeed")
            self.full, self._full_kind = None, ""

    def _note_failure(self, failure: WalError) -> None:
        """A commit failed for a reason other than space: `failing` after FAILING_AFTER in a row."""
        self._failures += 1
        self._quiet.log(
            logging.ERROR, "commit", f"WAL commit failed ({self._failures} in a row): {failure.message}"
        )
        if self._failures >= FAILING_AFTER and self.failing is None:
            self.failing = f"{self._failures} write-ahead log commits in a row failed: {failure.message}"
            log.critical("writes are failing: %s", self.failing)

    def _note_success(self) -> None:
        if self.failing is not None:
            log.warning("WAL commits succeed again")
        self._failures, self.failing = 0, None

    def _storage_error(self, e: lmdb.Error, reqs: list[_Request]) -> WalError:
        """A user-facing error for an LMDB failure: no room (disk or map) is 507, the rest 503."""
        if isinstance(e, lmdb.MapFullError):
            return _map_full()
        # ENOSPC is lmdb.DiskError; a write the disk took only part of is LMDB's EIO ("short
        # write, filesystem full?"): an EIO is a full disk when the disk has (almost) no room left.
        needed = sum(len(r.encoded or b"") for r in reqs) + DISK_HEADROOM
        free = free_bytes(self.data_dir)
        if isinstance(e, lmdb.DiskError) or ("Input/output error" in str(e) and 0 <= free < needed):
            return StorageFull(disk_full_message(self.data_dir, free), kind="disk")
        return WalError(
            f"write-ahead log commit failed: {e} (disk holding {self.data_dir}); nothing was stored"
        )


def map_reserve(map_size: int) -> int:
    """LMDB map room beyond wal.map_size, for the transactions that free it (a 16th, at least 16 MiB)."""
    return max(16 << 20, map_size // 16)


def _map_full() -> StorageFull:
    return StorageFull(
        "the write-ahead log is full (wal.map_size); nothing was stored. A persist has been"
        " started to free it: retry shortly, or raise wal.map_size",
        kind="map",
    )


#: An EIO on commit with less free space than the group plus this is taken for a full disk;
#: a disk with less than this free is full, one with more has room again.
DISK_HEADROOM = 1 << 20
_MAY_FAIL = "writes fail with 507 until there is room"


def disk_full_message(data_dir: Path, free: int, outcome: str = "nothing was stored") -> str:
    """The 507 text for a full disk: which disk, what happened, and what to do."""
    room = f"{free} bytes free" if free >= 0 else "free space unknown"
    return (
        f"the disk holding {data_dir} is full ({room}); {outcome}. Free space on that disk (or move"
        " server.data_dir to a larger disk); it carries on by itself once there is room"
    )


def disk_full_error(data_dir: Path, e: BaseException, outcome: str) -> StorageFull | None:
    """A StorageFull for an ENOSPC/EDQUOT OSError (Parquet writer, mkdir, fsync); None for anything else."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(disk_full_message(data_dir, free_bytes(data_dir), outcome), kind="disk")
    return None
