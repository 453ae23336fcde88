"""The LMDB environment and its single writer thread: group commit for every owner's database.

Each owner (the WAL, the catalog, the manifest, tokens, the engine, the sync queue) opens its
own named database with `Store.database` and keeps the handle. Every LMDB write in the process
goes through `Store.submit`, so there is one writer and one fsync per group: the writer takes
every request waiting at that moment, runs them in one transaction, commits it (LMDB fsyncs on
commit), tells the group hooks (the WAL tells its listeners about the new entries), and only
then resolves the callers' futures. An idle server commits at once; a busy one batches
naturally. The writer is a BackgroundLoop woken by each submit.

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
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lmdb

from ..component import Listeners
from ..errors import SHUTTING_DOWN, StorageFull, WalError
from ..fileio import free_bytes
from ..log import QuietLog
from ..metrics import WAL_COMMIT_SECONDS, WAL_COMMITS
from ..threads import BackgroundLoop

# The writer's messages kept the logger name they had before the Store was split from the WAL:
# log filters (`appliance.wal=debug`) name it.
log = logging.getLogger("appliance.wal")

#: Named databases the process may open. One an older version created and this one no longer
#: opens (`meta`) costs nothing: LMDB counts only the databases opened by this environment.
MAX_DBS = 16

#: Consecutive commits failing for a reason other than space before /health says `failing`.
FAILING_AFTER = 3

#: The writer also drains its queue this often without a wake (a safety net; submits wake it).
IDLE_SECONDS = 1.0

#: One step of a group transaction: runs in a nested transaction; its result resolves the future.
TxnStep = Callable[[lmdb.Transaction], Any]


class GroupHook(Protocol):
    """Told on the writer thread how each group transaction ended, before its futures resolve."""

    def committed(self) -> None: ...

    def aborted(self) -> None: ...


@dataclass
class _Request:
    fn: TxnStep
    size: int  # bytes the step adds that must fit under map_size (0: may use the reserve)
    future: Future[Any] = field(default_factory=Future)


@dataclass
class StoreStats:
    """Commit counters shown in /health."""

    commits: int = 0
    last_commit_seconds: float = 0.0


class Store:
    """Owns the LMDB environment and the only thread that writes to it."""

    def __init__(self, path: Path, map_size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        #: Sized steps (WAL entries) are refused (507) once the stored data reaches this; the map is
        #: larger by a reserve, so the persist that trims the WAL (and other bookkeeping) still commits.
        self.map_size = map_size
        self.env = lmdb.open(
            str(path),
            map_size=map_size + map_reserve(map_size),
            max_dbs=MAX_DBS,
            sync=True,
            metasync=True,
        )
        self.data_dir = path.parent
        self._dbs: dict[bytes, lmdb._Database] = {}
        self._handles: tuple[lmdb._Database, ...] = ()  # replaced whole: the writer iterates it
        self._open_lock = threading.Lock()  # LMDB: one database open at a time per process
        self._page_size = int(self.env.stat()["psize"])
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._opens: queue.SimpleQueue[tuple[bytes, Future[lmdb._Database]]] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._closing = False
        self._hooks: list[GroupHook] = []
        self._busy_since: float | None = None  # monotonic start of the commit in progress
        self._writer: int | None = None  # the thread committing a group now
        #: Why commits fail for lack of space (disk or map), until one succeeds again.
        self.full: str | None = None
        self._full_kind = ""
        #: Why commits keep failing for another reason (EIO with room, MDB_PANIC), until one succeeds.
        self.failing: str | None = None
        self._failures = 0  # consecutive failed commits (not for lack of space)
        self._quiet = QuietLog(log)  # a failing disk logs a line per 10 s, not one per commit
        self._space_lock = threading.Lock()
        #: Called on the writer thread when the map is full (persisting frees WAL pages).
        self.on_map_full: Listeners[[]] = Listeners()  # the map is full: a persist trims the WAL
        self.stats = StoreStats()
        self._loop = BackgroundLoop("wal-writer", self._step, IDLE_SECONDS, log)
        self._started = False

    def database(self, name: bytes) -> lmdb._Database:
        """The named database `name`, created if new; the same handle each time it is asked for.

        Its owner opens it once, outside any step, and keeps the handle; its pages count toward
        map_size from then on.
        """
        if threading.get_ident() == self._writer:
            # Opening takes a write transaction of its own: inside the group's it would wait forever.
            raise RuntimeError(f"database {name!r} must be opened before a step uses it, not inside one")
        with self._open_lock:
            if name not in self._dbs:
                self._dbs[name] = self._open_on_writer(name) if self.alive else self.env.open_db(name)
                self._handles = tuple(self._dbs.values())
            return self._dbs[name]

    def _open_on_writer(self, name: bytes) -> lmdb._Database:
        """Open on the writer thread, between groups: py-lmdb waits for LMDB's write lock holding the
        GIL, so another thread opening while a group runs would never get it (nor release the GIL)."""
        opened: Future[lmdb._Database] = Future()
        self._opens.put((name, opened))
        self._loop.wake()
        return opened.result()

    @property
    def opened(self) -> tuple[bytes, ...]:
        """Names of the databases opened so far, in the order their owners opened them."""
        return tuple(self._dbs)

    def add_group_hook(self, hook: GroupHook) -> None:
        """Tell `hook` how each group transaction ended (on the writer thread, before the futures)."""
        self._hooks.append(hook)

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self._loop.start()

    def stop(self) -> None:
        """Refuse new requests, commit what is queued, then stop the writer thread and close LMDB."""
        with self._submit_lock:
            self._closing = True
        self._loop.stop()
        self._step()  # what was queued before closing and the writer's last step did not take
        self.env.close()

    @property
    def alive(self) -> bool:
        """The writer thread was started and still runs."""
        return self._started and self._loop.alive

    def responsive(self, within: float) -> bool:
        """Alive, and not stuck in one commit (a hung fsync) for more than `within` seconds."""
        busy = self._busy_since
        return self.alive and (busy is None or time.monotonic() - busy < within)

    def health(self) -> dict[str, Any]:
        """The writer loop's health, degraded while out of space or commits keep failing; with why."""
        status = self._loop.health()
        error = self.check_space() or self.failing
        if status["status"] == "ok" and error is not None:
            status = {"status": "degraded", "error": error}
        return {"error": None} | status

    # -- submitting work ----------------------------------------------------
    def submit(self, fn: TxnStep, size: int = 0) -> Future[Any]:
        """Queue a transaction step; the future resolves with its result after the group commits.

        `fn(txn)` runs inside the group transaction, in a nested transaction, so a failing step
        is rolled back alone. `size` is what the step adds that must fit under map_size (a WAL
        entry): such a step is refused while the map is that full. Steps of size 0 may use the
        reserve above it (the persist that trims the WAL, catalog and queue bookkeeping).
        """
        req = _Request(fn, size)
        # Running futures cannot be cancelled: a client that disconnects (asyncio cancels
        # the wrapped future) must not make the writer's set_result fail.
        req.future.set_running_or_notify_cancel()
        with self._submit_lock:  # stop() commits everything queued before it closed
            if self._closing:
                raise WalError(f"the write was not accepted: {SHUTTING_DOWN}")
            self._queue.put(req)
        self._loop.wake()
        return req.future

    def read(self) -> lmdb.Transaction[bytes]:
        """A read-only transaction (use as a context manager)."""
        return self.env.begin(write=False)

    # -- the writer ---------------------------------------------------------
    def _step(self) -> None:
        """Open the databases asked for, then take every request waiting now and commit them as one group."""
        while True:
            try:
                name, opened = self._opens.get_nowait()
            except queue.Empty:
                break
            try:
                opened.set_result(self.env.open_db(name))
            except Exception as e:  # DbsFullError: MAX_DBS too small
                opened.set_exception(e)
        reqs = self._take()
        if reqs:
            self._run_group(reqs)

    def _take(self) -> list[_Request]:
        reqs = []
        while True:
            try:
                reqs.append(self._queue.get_nowait())
            except queue.Empty:
                return reqs

    def _run_group(self, reqs: list[_Request]) -> None:
        try:
            self._busy_since, self._writer = time.monotonic(), threading.get_ident()
            self._commit(reqs)
        except Exception as e:
            # Handled here, not by the loop's backoff: the callers get their error at once and the
            # next group commits without waiting.
            log.exception("WAL group failed")
            failure = WalError(f"write-ahead log failure: {e}")
            self._note_failure(failure)
            self._tell_aborted()
            for req in reqs:
                if not req.future.done():
                    req.future.set_exception(failure)
        finally:
            self._busy_since, self._writer = None, None

    def _commit(self, reqs: list[_Request]) -> None:
        started = time.monotonic()
        results: list[tuple[_Request, Any, BaseException | None]] = []
        try:
            with self.env.begin(write=True) as txn:
                used = self._used_bytes(txn)
                for req in reqs:
                    if req.size and used + req.size > self.map_size:
                        results.append((req, None, _map_full()))  # the reserve is for persisting
                        continue
                    result, error = self._apply(txn, req)
                    if error is None:
                        used += req.size
                    results.append((req, result, error))
                used = self._used_bytes(txn)
        except lmdb.Error as e:
            self._fail_group(reqs, self._storage_error(e, reqs))
            return
        self._note_success()
        self._note_space(next((r[2] for r in results if isinstance(r[2], StorageFull)), None), used)
        self._note_commit(started)
        for hook in self._hooks:
            hook.committed()
        for req, result, error in results:
            if error is not None:
                req.future.set_exception(error)
            else:
                req.future.set_result(result)

    def _apply(self, txn: lmdb.Transaction, req: _Request) -> tuple[Any, BaseException | None]:
        """Run one step in a nested transaction: its failure rolls back only its own changes."""
        try:
            with self.env.begin(write=True, parent=txn) as child:
                return req.fn(child), None
        except lmdb.Error as e:
            return None, self._storage_error(e, [req])
        except Exception as e:  # one request's failure must not sink the group
            return None, e

    def _fail_group(self, reqs: list[_Request], failure: WalError) -> None:
        """The group transaction did not commit: note why, and fail every request in it."""
        if isinstance(failure, StorageFull):
            self._note_space(failure, None)
        else:
            self._note_failure(failure)
        self._tell_aborted()
        for req in reqs:
            req.future.set_exception(failure)

    def _tell_aborted(self) -> None:
        for hook in self._hooks:
            hook.aborted()

    def _note_commit(self, started: float) -> None:
        WAL_COMMITS.inc()
        WAL_COMMIT_SECONDS.observe(time.monotonic() - started)
        self.stats.commits += 1
        self.stats.last_commit_seconds = time.monotonic() - started

    def _used_bytes(self, txn: lmdb.Transaction) -> int:
        """Bytes of pages the opened named databases hold in `txn` (free pages not counted)."""
        pages = 0
        for db in self._handles:
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self._page_size

    # -- out of space and failing commits -------------------------------------
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
        needed = sum(r.size for r in reqs) + DISK_HEADROOM
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
