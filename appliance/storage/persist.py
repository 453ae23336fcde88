"""Buffer snapshots to Parquet (temp, fsync, rename), then the manifest, then WAL trimming.

A persist writes one file per table and gen1 window, records the files and trims the
WAL entries they cover in one LMDB transaction (so a crash leaves either the WAL
entries or the files, never both or neither), then swaps buffer rows for files under
`view_lock` so a query sees each row exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
import pyarrow as pa
import pyarrow.compute as pc

from ..component import Listeners
from ..metrics import PERSISTS, Registry
from ..model import TIME_COLUMN, WalSeq
from ..threads import BackgroundLoop
from . import dedupe
from .buffer import Buffer
from .catalog import Catalog, TableDef, find_table
from .dedupe import conform, last_write_wins
from .manifest import Change, Manifest, ParquetFile
from .parquet import lowest_window, path_part, read_parquet, window_of, write_parquet
from .store import disk_full_error
from .wal import Wal

log = logging.getLogger("appliance.persist")

#: What a failed persist leaves behind (for the out-of-space message).
_KEPT = "nothing was persisted; the rows stay in memory and in the write-ahead log"


@dataclass(frozen=True)
class PersistArgs:
    data_dir: Path
    node_id: str
    gen1_ns: int
    retention_check_ns: int
    compact_target_bytes: int = 0  # 0: never compact
    compact_interval_ns: int = 3600 * 10**9


class Persister:
    """Background loop: persists per gen1 window, early when the buffer is full, on demand.

    A failed pass (a full disk, say) is retried after the loop's backoff; wakes do not cut it
    short, and the failure shows in `health` until a persist succeeds again.
    """

    name = "persist"

    def __init__(
        self, args: PersistArgs, wal: Wal, catalog: Catalog, buffer: Buffer, manifest: Manifest
    ) -> None:
        self.args = args
        self.root = args.data_dir / "parquet"
        self.wal, self.catalog, self.buffer, self.manifest = wal, catalog, buffer, manifest
        #: Held while files and buffer rows are swapped, and by queries while they collect both.
        self.view_lock = threading.RLock()
        self._woken = threading.Event()  # a persist was asked for (wake, request)
        self._waiters: list[Future[int]] = []
        self._waiters_lock = threading.Lock()
        self._retry = False  # the last pass failed: persist again after the backoff (a full disk freed)
        self._next_retention = time.monotonic()
        self._next_compaction = time.monotonic() + args.compact_interval_ns / 1e9
        self._loop = BackgroundLoop("persister", self._pass, 1.0, log, backoff_min=1.0, backoff_max=60.0)
        self._file_seq = 0
        self._persist_lock = threading.Lock()
        self._trimmed: WalSeq = WalSeq(0)
        #: Told, with the bytes a persist needs, when it failed for a full disk (DiskBudget evicts
        #: synced files then).
        self.on_disk_full: Listeners[[int]] = Listeners()  # a persist failed for a full disk: bytes wanted

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        self.remove_dead_files()
        self.remove_orphans()
        self._loop.start()

    def stop(self) -> None:
        """Stop the loop, then persist what is buffered (a clean shutdown empties the WAL)."""
        self._loop.stop()
        try:
            self.persist()
        except Exception:
            log.exception("final persist failed; the WAL still holds the data")

    def health(self) -> dict[str, Any]:
        """failed if the loop's thread died, degraded while passes fail (with the error), else ok."""
        return {"error": None} | self._loop.health() | {"buffer_bytes": self.buffer.nbytes}

    def register_metrics(self, registry: Registry) -> None:
        """The buffer and local Parquet gauges /metrics reads when scraped."""
        registry.gauge(
            "appliance_buffer_bytes", "Bytes held in the in-memory buffer.", lambda: self.buffer.nbytes
        )
        registry.gauge(
            "appliance_parquet_files", "Parquet files on local disk.", lambda: len(self.manifest.paths())
        )
        registry.gauge(
            "appliance_parquet_bytes", "Bytes of Parquet on local disk.", self.manifest.total_bytes
        )

    def request(self) -> Future[int]:
        """Ask for a persist now; the future gives the number of files written."""
        fut: Future[int] = Future()
        fut.set_running_or_notify_cancel()  # a disconnecting client must not cancel it
        with self._waiters_lock:
            self._waiters.append(fut)
        self.wake()
        return fut

    def wake(self) -> None:
        """Ask for an early persist (the buffer reached its cap); never cuts a failure's backoff short."""
        self._woken.set()
        # A full buffer wakes this on every commit: while passes fail, only the backoff retries.
        if not self._loop.failures:
            self._loop.wake()

    # -- the loop -----------------------------------------------------------
    def _pass(self) -> float:
        """Retention when due, a persist when asked for or due, compaction when due; the next wait."""
        woke = self._woken.is_set()
        self._woken.clear()
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        # Retention first and on its own: it frees the disk a failing persist needs.
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + self.args.retention_check_ns / 1e9
            self._retain()
        try:
            if woke or waiters or self._retry or self._window_passed():
                written = self.persist()
                self._retry = False
                for w in waiters:
                    w.set_result(written)
                waiters = []
            if self.args.compact_target_bytes and time.monotonic() >= self._next_compaction:
                day = 86_400 * 10**9
                self.compact(self.args.compact_target_bytes, time.time_ns() // day * day)
                self._next_compaction = time.monotonic() + self.args.compact_interval_ns / 1e9
        except Exception as exc:
            failure = self._failed(exc, waiters)
            if failure is exc:
                raise
            raise failure from exc  # the loop keeps it as last_error, logs it and backs off
        return 0.0 if self._woken.is_set() else min(self._seconds_to_window_end(), 1.0)

    def _failed(self, exc: Exception, waiters: list[Future[int]]) -> Exception:
        """A pass failed: retry the persist after the backoff; a full disk asks for room first."""
        full = disk_full_error(self.args.data_dir, exc, _KEPT)
        failure: Exception = full if full is not None else exc
        self._retry = True
        for w in waiters:
            w.set_exception(failure)
        if full is not None:
            self._relieve_disk()
            self._next_retention = 0.0  # expired files go before the retry too
        return failure

    def _retain(self) -> None:
        """Enforce retention; a failure is logged and retried at the next check, never blocks persists."""
        try:
            self.enforce_retention()
        except Exception as exc:
            full = disk_full_error(self.args.data_dir, exc, "retention is retried at its next check")
            if full is not None:
                log.error("retention failed: %s", full)
            else:
                log.exception("retention failed; retried at its next check")

    def _relieve_disk(self) -> None:
        """Ask for room (DiskBudget evicts files the bucket holds): what the buffer holds, at least."""
        for listener in self.on_disk_full:
            try:
                listener(self.buffer.nbytes)
            except Exception:
                log.exception("disk-full listener failed")

    def _seconds_to_window_end(self) -> float:
        now = time.time_ns()
        return (self.args.gen1_ns - now % self.args.gen1_ns) / 1e9

    def _window_passed(self) -> bool:
        """True once the wall clock crossed a gen1 boundary since the oldest buffered write."""
        oldest = self.buffer.oldest_unpersisted_ns
        if oldest is None:
            return False
        g = self.args.gen1_ns
        return time.time_ns() // g > oldest // g

    # -- persisting ---------------------------------------------------------
    def persist(self) -> int:
        """Write everything buffered now to Parquet; returns the number of files written."""
        with self._persist_lock:
            upto, snapshot = self.buffer.snapshot()
            if not snapshot:
                if upto > self._trimmed:  # entries replay skipped (deleted tables) still go
                    self._record(Change.PERSIST, [], [], upto)
                    self._trimmed = upto
                return 0
            started = time.monotonic()
            added: list[ParquetFile] = []
            removed: list[ParquetFile] = []
            for (db_id, table_id), batches in snapshot.items():
                found = find_table(self.catalog, db_id, table_id)
                if found is None:
                    continue  # deleted while buffered; trimming the WAL drops its rows
                db, tdef = found
                schema = tdef.schema()
                table = last_write_wins(conform(batches, schema))
                # A point persisted before and written again: merge, so no two files hold it.
                hits = dedupe.colliding(self.root, self.manifest.files(db_id, table_id), table, schema)
                if hits:
                    table = dedupe.merge(self.root, hits, table, schema)
                    removed.extend(hits)
                for window_start, part in self._split_windows(table):
                    try:
                        added.append(self._write(db.name, db_id, tdef, window_start, part))
                    except Exception:
                        self._discard(added)  # never recorded: would only fill the disk
                        raise
            self._record(Change.PERSIST, added, removed, upto)
            PERSISTS.inc(len(added))
            self._trimmed = upto
            rows = sum(f.row_count for f in added)
            log.info(
                "persisted files=%d rows=%d upto_seq=%d seconds=%.2f",
                len(added),
                rows,
                upto,
                time.monotonic() - started,
            )
            return len(added)

    def _discard(self, files: list[ParquetFile]) -> None:
        for f in files:
            (self.root / f.path).unlink(missing_ok=True)

    def _record(
        self, change: Change, added: list[ParquetFile], removed: list[ParquetFile], upto: WalSeq | None = None
    ) -> None:
        """Record the files and trim the WAL up to `upto` in one transaction, then swap the view.

        If the commit fails, the new files are deleted: nothing refers to them.
        """

        def step(txn: lmdb.Transaction) -> None:
            self.manifest.put(txn, change, added, removed)
            if upto is not None:
                self.wal.trim(txn, upto)

        try:
            self.wal.store.submit(step).result()
        except Exception:
            self._discard(added)
            raise
        with self.view_lock:
            self.manifest.apply(added, removed)
            if upto is not None:
                self.buffer.release(upto)

    def _split_windows(self, table: pa.Table) -> list[tuple[int, pa.Table]]:
        g = self.args.gen1_ns
        times = table.column(TIME_COLUMN).cast(pa.int64())
        # Integer division truncates toward zero; step negative times down to floor, but never
        # below the lowest window int64 holds (older rows than the write path now takes).
        windows = pc.multiply(pc.divide(times, g), g)
        below = pc.and_(pc.less(times, 0), pc.not_equal(windows, times))
        lowest = lowest_window(g)
        stepped = pc.if_else(
            pc.less(windows, lowest + g), pa.scalar(lowest, pa.int64()), pc.subtract(windows, g)
        )
        windows = pc.if_else(below, stepped, windows)
        uniq = pc.unique(windows).to_pylist()
        if len(uniq) == 1:
            return [(uniq[0], table)]
        return [(w, table.filter(pc.equal(windows, w))) for w in sorted(uniq)]

    def _write(self, db: str, db_id: int, tdef: TableDef, window_start: int, table: pa.Table) -> ParquetFile:
        self._file_seq = max(self._file_seq + 1, time.time_ns() // 1000)
        start = datetime.fromtimestamp(window_start / 1e9, tz=UTC)
        rel = "/".join(
            [
                path_part(db),
                path_part(tdef.name),
                f"date={start:%Y-%m-%d}",
                f"node={self.args.node_id}",
                f"{start:%H%M}-{self._file_seq}.parquet",
            ]
        )
        write_parquet(table, self.root / rel)
        times = table.column(TIME_COLUMN).cast(pa.int64())
        return ParquetFile(
            path=rel,
            db_id=db_id,
            db=db,
            table_id=tdef.id,
            table=tdef.name,
            size_bytes=(self.root / rel).stat().st_size,
            row_count=table.num_rows,
            min_time=pc.min(times).as_py(),
            max_time=pc.max(times).as_py(),
            created_ns=time.time_ns(),
        )

    # -- compaction and eviction ---------------------------------------------
    def compact(self, target_bytes: int, before_ns: int) -> int:
        """Merge each table's files of one day (days ending before `before_ns`) into files of up to
        `target_bytes`, so another engine reads few large row groups; returns files merged away.

        Rows move within one transaction (new file in, old files out), so none is lost or
        counted twice; the sync queue deletes the old objects once the new one is uploaded.
        """
        merged = 0
        for chunk in _compaction_chunks(self.manifest.files(), target_bytes, before_ns):
            with self._persist_lock:
                live = self.manifest.paths()
                if any(f.path not in live for f in chunk):
                    continue  # changed meanwhile (retention, a late write, a drop)
                found = find_table(self.catalog, chunk[0].db_id, chunk[0].table_id)
                if found is None:
                    continue
                db, tdef = found
                schema = tdef.schema()
                batches = [b for f in chunk for b in read_parquet(self.root / f.path).to_batches()]
                table = last_write_wins(conform(batches, schema))
                g = self.args.gen1_ns
                new = self._write(db.name, db.id, tdef, window_of(chunk[0].min_time, g), table)
                self._record(Change.COMPACT, [new], chunk)
                merged += len(chunk)
                log.info(
                    "compacted table=%s files=%d rows=%d into %s",
                    tdef.name,
                    len(chunk),
                    new.row_count,
                    new.path,
                )
        return merged

    def evict(self, files: list[ParquetFile]) -> None:
        """Delete local files the bucket holds (over the disk budget); queries stop seeing them."""
        with self._persist_lock:
            live = self.manifest.paths()
            gone = [f for f in files if f.path in live]
            if gone:
                self._record(Change.EVICT, [], gone)

    # -- retention and deletion ---------------------------------------------
    def enforce_retention(self) -> None:
        """Remove rows older than each database's retention period, from memory and disk."""
        now = time.time_ns()
        for db in self.catalog.databases():
            if db.retention_ns is None:
                continue
            cutoff = now - db.retention_ns
            self.buffer.prune_before(db.id, cutoff)
            with self._persist_lock:
                self._expire_files(db.id, cutoff)

    def _expire_files(self, db_id: int, cutoff: int) -> None:
        """Remove expired files; rewrite those partly expired (one change per file)."""
        removed = rewrote = 0
        for f in self.manifest.files(db_id):
            if f.min_time >= cutoff:
                continue
            added: list[ParquetFile] = []
            found = find_table(self.catalog, f.db_id, f.table_id)
            if f.max_time >= cutoff and found is not None:
                table = read_parquet(self.root / f.path)
                kept = table.filter(pc.greater_equal(table.column(TIME_COLUMN).cast(pa.int64()), cutoff))
                if kept.num_rows:
                    window_start = window_of(cutoff, self.args.gen1_ns)
                    added.append(self._write(f.db, f.db_id, found[1], window_start, kept))
            self._record(Change.RETENTION, added, [f])
            removed += 1
            rewrote += len(added)
        if removed:
            log.info("retention removed files=%d rewrote=%d", removed, rewrote)

    def drop(self, db_id: int, table_id: int | None) -> None:
        """Delete the files of a deleted database or table (a catalog drop listener)."""
        with self._persist_lock:  # a persist running now must not add files after this
            self.buffer.drop(db_id, table_id)
            removed = self.manifest.files(db_id, table_id)
            if removed:
                self._record(Change.DROP, [], removed)

    def remove_dead_files(self) -> None:
        """Forget files of tables deleted before a crash let the drop finish."""
        dead = [f for f in self.manifest.files() if find_table(self.catalog, f.db_id, f.table_id) is None]
        if dead:
            log.info("removing %d file(s) of deleted tables", len(dead))
            self._record(Change.DROP, [], dead)

    def remove_orphans(self) -> None:
        """Delete files a crash left behind before they reached the manifest."""
        known = self.manifest.paths()
        if not self.root.exists():
            return
        for p in self.root.rglob("*"):
            if p.is_file() and p.relative_to(self.root).as_posix() not in known:
                log.info("removing orphan file %s", p)
                p.unlink(missing_ok=True)


def _compaction_chunks(
    files: list[ParquetFile], target_bytes: int, before_ns: int
) -> list[list[ParquetFile]]:
    """Runs of two or more files of one table and day folder, each run up to target_bytes."""
    by_day: dict[tuple[int, int, str], list[ParquetFile]] = {}
    for f in files:
        day = f.path.rsplit("/", 3)[-3]  # date=YYYY-MM-DD
        if f.max_time < before_ns and f.size_bytes < target_bytes // 2:  # big enough: left alone
            by_day.setdefault((f.db_id, f.table_id, day), []).append(f)
    chunks = []
    for group in by_day.values():
        run: list[ParquetFile] = []
        for f in sorted(group, key=lambda f: (f.created_ns, f.path)):  # later files win in dedupe
            if run and sum(x.size_bytes for x in run) + f.size_bytes > target_bytes:
                chunks.append(run)
                run = []
            run.append(f)
        chunks.append(run)
    return [c for c in chunks if len(c) > 1]
