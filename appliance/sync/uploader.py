"""Syncer: the background thread that ships queued Parquet files to the bucket.

Each pass takes the due uploads oldest first, `concurrency` at a time; the first failure
ends the pass (the endpoint is likely down) and the next pass waits a backoff that doubles,
with jitter, up to `retry_max`, forever. Deletes of replaced objects run once their
replacements are synced; each failing delete backs off on its own (its record's retry
time) and never holds up uploads. The state lives in SyncQueue (LMDB), so a restart
carries on. The first pass that reaches the bucket also removes what earlier versions
left under the prefix (`_staging/` copies, folder markers). The loop is a BackgroundLoop
(threads.py): a step that raises is logged, counted and shown in `/health`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..backoff import backoff_delay
from ..config import SyncSettings
from ..metrics import Registry
from ..storage.manifest import Manifest
from ..storage.parquet import path_part
from ..threads import BackgroundLoop, DaemonPool
from .backends import endpoint_label
from .queue import DELETE, QUEUED, SYNCED, SyncQueue, SyncRecord
from .s3 import S3Error
from .store import ObjectStore, Stopped

log = logging.getLogger("appliance.sync")

#: Longest stop() waits for the loop; an upload cut short is sent again after the restart.
STOP_SECONDS = 5.0


@dataclass
class SyncStats:
    """Counters since the start, for status and /metrics."""

    uploaded_files: int = 0
    uploaded_bytes: int = 0
    failed_attempts: int = 0
    deleted_objects: int = 0
    last_success_ns: int | None = None
    last_error: str | None = None
    last_error_ns: int | None = None


class Syncer:
    """Uploads, retries, status, `/health` and `system.sync_queue`."""

    name = "sync"

    def __init__(
        self, settings: SyncSettings, queue: SyncQueue, store: ObjectStore, manifest: Manifest, root: Path
    ) -> None:
        """`root` is the local parquet/ folder; nothing starts yet."""
        self.settings = settings
        self.queue = queue
        self.store = store
        self.manifest = manifest
        self.root = root
        self.stats = SyncStats()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()  # cuts uploads short; the loop has its own
        self._failures = 0  # consecutive failed passes: the backoff exponent
        self._strays_checked = False
        self._not_before = 0.0  # monotonic time of the next pass after a failure
        self._passes: list[Future[None]] = []
        self._lock = threading.Lock()
        self._pool = DaemonPool(settings.concurrency, "sync-upload")  # never holds up exit
        self._started = False
        self._loop = BackgroundLoop("sync", self._step, settings.interval / 1e9, log)
        self._oldest_ns: int | None = None  # of the queued files, refreshed by each pass
        self.queued_bytes = 0  # likewise

    def start(self) -> None:
        """Start the loop: the first pass comes after one interval, or at the first wake."""
        self._refresh()
        self._loop.start()
        log.info(
            "sync to %s (endpoint %s) every %.0fs",
            self.store.url(""),
            endpoint_label(self.settings),
            self.settings.interval / 1e9,
        )

    def stop(self) -> None:
        """Stop the loop and cut uploads short (never publishing them); the queue stays in LMDB."""
        self._stop.set()
        self._loop.stop(STOP_SECONDS)
        self._pool.shutdown()

    def reload(self, settings: SyncSettings) -> None:
        """SIGHUP: take new interval, retry, staleness and bandwidth values (the next wait, the next chunk)."""
        self.settings = settings
        self._loop.interval = settings.interval / 1e9
        self.store.throttle.rate = settings.bandwidth_limit

    def wake(self, *_: Any) -> None:
        """Try now (new files were queued, or an operator asked)."""
        self._loop.wake()

    def sync_now(self) -> Future[None]:
        """Run a pass at once, ignoring every backoff; the future resolves when it is done."""
        done: Future[None] = Future()
        done.set_running_or_notify_cancel()
        with self._lock:
            self._passes.append(done)
            self._not_before = 0.0
        self._loop.wake()
        return done

    # -- the loop ------------------------------------------------------------------------------
    def _step(self) -> None:
        """One tick: a pass unless backing off (an asked-for pass ignores that), then the figures."""
        if not self._started:  # as before the loop helper: the first pass waits an interval
            self._started = True
            return
        with self._lock:
            waiters, self._passes = self._passes, []
        try:
            if waiters or time.monotonic() >= self._not_before:
                self._run_pass(bool(waiters))
            self._refresh()
        finally:
            for w in waiters:
                w.set_result(None)

    def _run_pass(self, asked: bool) -> None:
        try:
            if self._pass(ignore_backoff=asked):
                self._failures, self._not_before = 0, 0.0
            else:
                self._back_off()
        except Exception as e:  # backs off on the syncer's own retry settings, as a failed upload does
            log.exception("sync pass failed")
            self._note_error(str(e))
            self._back_off()

    def _pass(self, ignore_backoff: bool) -> bool:
        """Upload what is due, then run the deletes that may run; False at the first failure."""
        max_wait = self.settings.retry_max
        if not self._strays_checked:
            self._remove_strays()
        uploads, _ = self.queue.due(time.time_ns(), max_wait, ignore_backoff)
        step = self.settings.concurrency
        for i in range(0, len(uploads), step):  # oldest first
            if self._stop.is_set():
                return True
            running = [self._pool.submit(self._upload, rec) for rec in uploads[i : i + step]]
            if not all([f.result() for f in running]):
                return False
        _, deletes = self.queue.due(time.time_ns(), max_wait, ignore_backoff)  # after this pass's uploads
        for rec in deletes:
            if self._stop.is_set():
                break
            self._delete(rec)  # a failure backs off that delete alone
        return True

    def _remove_strays(self) -> None:
        """Once: delete `_staging/` objects and folder markers earlier versions left (logged)."""
        try:
            self.store.remove_strays()
            self._strays_checked = True
        except S3Error as e:  # an answer (no ListBucket permission, say): not worth asking again
            self._strays_checked = True
            log.warning("sync: could not check the bucket for objects earlier versions left: %s", e)
        except Exception as e:  # unreachable: tried again at the next pass
            log.info("sync: checking the bucket for objects earlier versions left failed: %s", e)

    def _upload(self, rec: SyncRecord) -> bool:
        try:
            with self.manifest.pinned():  # the file stays on disk while it is read
                if rec.path not in self.manifest.paths():
                    return True  # replaced or dropped meanwhile; the queue already knows
                started = time.monotonic()
                self.store.put(self.root / rec.path, rec.path, rec.row_count, self._stop)
            self.queue.mark_synced(rec.path)
        except Stopped:
            return True
        except Exception as e:
            self._fail(f"upload of {rec.path} failed: {e}", rec)
            return False
        with self._stats_lock:
            self.stats.uploaded_files += 1
            self.stats.uploaded_bytes += rec.size_bytes
            self.stats.last_success_ns = time.time_ns()
        log.debug("uploaded %s (%d bytes, %.2fs)", rec.path, rec.size_bytes, time.monotonic() - started)
        return True

    def _delete(self, rec: SyncRecord) -> bool:
        try:
            self.store.delete(rec.path)
            self.queue.mark_deleted(rec.path)
        except Exception as e:
            self._fail(f"delete of replaced object {rec.path} failed: {e}", rec)
            return False
        with self._stats_lock:
            self.stats.deleted_objects += 1
        return True

    def _fail(self, error: str, rec: SyncRecord) -> None:
        low, high = self.settings.retry_min / 1e9, self.settings.retry_max / 1e9
        self._note_error(error)
        self.queue.mark_failed(rec, error, int(backoff_delay(rec.attempts, low, high) * 1e9))

    def _note_error(self, error: str) -> None:
        with self._stats_lock:
            self.stats.failed_attempts += 1
            self.stats.last_error, self.stats.last_error_ns = error, time.time_ns()

    def _back_off(self) -> None:
        low, high = self.settings.retry_min / 1e9, self.settings.retry_max / 1e9
        delay = backoff_delay(self._failures, low, high)
        self._failures += 1
        self._not_before = time.monotonic() + delay
        if self._failures <= 3 or self._failures % 20 == 0:  # rate-limited: an outage repeats itself
            log.warning(
                "sync: %s; next attempt in %.1fs (failed pass %d in a row)",
                self.stats.last_error,
                delay,
                self._failures,
            )

    def _refresh(self) -> None:
        """Recompute the oldest waiting file and the bytes waiting (for /health and /metrics,
        which must not scan LMDB)."""
        queued = self.queue.records(QUEUED)
        self._oldest_ns = min((r.queued_ns for r in queued), default=None)
        self.queued_bytes = sum(r.size_bytes for r in queued)

    # -- state ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Queue depth, oldest unsynced age, last success and last error (GET /api/v3/sync)."""
        queued = self.queue.records(QUEUED)
        synced = self.queue.records(SYNCED)
        now = time.time_ns()
        oldest = min((r.queued_ns for r in queued), default=None)
        with self._stats_lock:
            s = SyncStats(**vars(self.stats))
        return {
            "enabled": True,
            "bucket": self.settings.bucket,
            "prefix": self.settings.prefix,
            "endpoint": endpoint_label(self.settings),
            "queued_files": len(queued),
            "queued_bytes": sum(r.size_bytes for r in queued),
            "oldest_unsynced_age_seconds": round((now - oldest) / 1e9, 3) if oldest is not None else None,
            "synced_files": len(synced),
            "synced_bytes": sum(r.size_bytes for r in synced),
            "deletes_pending": self.queue.count(DELETE),
            "uploaded_files": s.uploaded_files,
            "uploaded_bytes": s.uploaded_bytes,
            "failed_attempts": s.failed_attempts,
            "last_success": _iso(s.last_success_ns),
            "last_error": s.last_error,
            "last_error_time": _iso(s.last_error_ns),
        }

    def oldest_age_seconds(self) -> float | None:
        """Age of the oldest queued file as the last pass saw it; None when nothing waits."""
        oldest = self._oldest_ns
        return (time.time_ns() - oldest) / 1e9 if oldest is not None else None

    def register_metrics(self, registry: Registry) -> None:
        """The sync gauges /metrics reads when scraped."""
        registry.gauge(
            "appliance_sync_queued_files",
            "Parquet files waiting for upload.",
            lambda: self.queue.count(QUEUED),
        )
        registry.gauge(
            "appliance_sync_queued_bytes",
            "Bytes waiting for upload.",
            lambda: self.queued_bytes,
        )
        registry.gauge(
            "appliance_sync_oldest_unsynced_age_seconds",
            "Age of the oldest file waiting for upload.",
            lambda: self.oldest_age_seconds() or 0,
        )
        registry.gauge(
            "appliance_sync_uploaded_files_total",
            "Files uploaded and verified.",
            lambda: self.stats.uploaded_files,
            kind="counter",
        )
        registry.gauge(
            "appliance_sync_uploaded_bytes_total",
            "Bytes uploaded and verified.",
            lambda: self.stats.uploaded_bytes,
            kind="counter",
        )
        registry.gauge(
            "appliance_sync_failures_total",
            "Failed upload or delete attempts.",
            lambda: self.stats.failed_attempts,
            kind="counter",
        )
        registry.gauge(
            "appliance_sync_deleted_objects_total",
            "Replaced objects deleted from the bucket.",
            lambda: self.stats.deleted_objects,
            kind="counter",
        )

    def health(self) -> dict[str, Any]:
        """Degraded when the oldest file waiting for upload is older than sync.stale_after.

        Cheap (no LMDB scan): it uses the figures the last pass left.
        """
        age = self.oldest_age_seconds()
        stale = age is not None and age > self.settings.stale_after / 1e9
        loop = self._loop.health()
        return {
            "status": "degraded" if stale or loop["status"] != "ok" else "ok",
            "queued_files": self.queue.count(QUEUED),
            "oldest_unsynced_age_seconds": round(age, 3) if age is not None else None,
            "error": self.stats.last_error if stale else loop.get("error"),
        }

    def system_tables(self, database: str, every_database: bool) -> dict[str, pa.Table]:
        """`system.sync_queue`: the queue's records (of every database, or of `database`), oldest first."""
        prefix = path_part(database) + "/"
        records = sorted(
            (r for r in self.queue.records() if every_database or r.path.startswith(prefix)),
            key=lambda r: r.queued_ns,
        )
        return {
            "sync_queue": pa.table(
                {
                    "path": pa.array([r.path for r in records], pa.string()),
                    "state": pa.array([r.state for r in records], pa.string()),
                    "size_bytes": pa.array([r.size_bytes for r in records], pa.uint64()),
                    "row_count": pa.array([r.row_count for r in records], pa.uint64()),
                    "queued_time": pa.array([r.queued_ns for r in records], pa.timestamp("ns")),
                    "synced_time": pa.array([r.synced_ns or None for r in records], pa.timestamp("ns")),
                    "attempts": pa.array([r.attempts for r in records], pa.uint64()),
                    "next_attempt_time": pa.array([r.next_ns or None for r in records], pa.timestamp("ns")),
                    "last_error": pa.array([r.error or None for r in records], pa.string()),
                }
            )
        }


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
