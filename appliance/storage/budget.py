"""DiskBudget: keep local Parquet under storage.max_disk_bytes.

Over the budget, files the bucket already holds are evicted locally, oldest data first
(queries then see what remains local; the rest lives in the bucket). Files still waiting
for upload are never deleted: when only they are left and the budget is reached, writes
are refused with 507 until uploads catch up. Without [sync] the oldest files are evicted
whatever they hold: retention by size, and the log says so.

A persist that fails for a full disk (the disk holding the data dir, whatever the budget)
asks for room: with [sync], files the bucket holds are evicted, oldest first, at least as
many bytes as the buffer holds. Without [sync] nothing is evicted for it.

The check runs on a BackgroundLoop: every CHECK_SECONDS and after every persist (`wake`); a
check that keeps failing backs off and is logged once per minute, and /health says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..metrics import Registry
from ..threads import BackgroundLoop
from .manifest import Manifest, ParquetFile
from .persist import Persister

log = logging.getLogger("appliance.budget")

#: How often usage is checked, seconds (and after every persist, through wake()).
CHECK_SECONDS = 2.0
#: Evict down to this share of the budget, so eviction does not run on every persist.
LOW_WATER = 0.9


class DiskBudget:
    """Keeps local Parquet under max_bytes by evicting what the bucket holds; refuses writes when it cannot."""

    name = "persist"  # reported with the persister: its refusals are the persist stage's state

    def __init__(
        self,
        max_bytes: int,
        manifest: Manifest,
        persister: Persister,
        bucket_holds: Callable[[], set[str]] | None,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.max_bytes = max_bytes
        self.manifest = manifest
        self.persister = persister
        self.bucket_holds = bucket_holds  # with [sync]: the local paths the bucket holds
        self.refusing: str | None = None  # the 507 message while writes are refused
        self.evicted_files = 0
        self.evicted_bytes = 0
        self._loop = BackgroundLoop("disk-budget", self.check, check_seconds, log, backoff_min=check_seconds)
        persister.on_disk_full.add(self.relieve)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def wake(self, *_: Any) -> None:
        """Check now (a persist changed the files on disk, or the budget was changed)."""
        self._loop.wake()

    def register_metrics(self, registry: Registry) -> None:
        """The disk budget gauges /metrics reads when scraped."""
        registry.gauge("appliance_disk_budget_bytes", "storage.max_disk_bytes.", lambda: self.max_bytes)
        registry.gauge(
            "appliance_disk_evicted_files_total",
            "Local Parquet files evicted for the disk budget.",
            lambda: self.evicted_files,
            kind="counter",
        )
        registry.gauge(
            "appliance_disk_refusing_writes",
            "1 while writes are refused with 507.",
            lambda: float(self.refusing is not None),
        )

    def reload(self, max_bytes: int) -> None:
        """SIGHUP: a new storage.max_disk_bytes, checked at once."""
        self.max_bytes = max_bytes
        self.wake()

    def health(self) -> dict[str, Any]:
        """The check loop's health; degraded while writes are refused, with the reason."""
        status = self._loop.health()
        if status["status"] == "ok" and self.refusing is not None:
            status = {"status": "degraded", "error": self.refusing}
        return {"error": None} | status

    def used(self) -> int:
        return self.manifest.total_bytes()

    def check(self) -> None:
        """Evict what may go until under the budget; refuse writes if that is not enough."""
        used = self.used()
        if used <= self.max_bytes:
            self.refusing = None
            return
        target = int(self.max_bytes * LOW_WATER)
        victims: list[ParquetFile] = []
        for f in sorted(self._evictable(), key=lambda f: (f.max_time, f.path)):
            if used <= target:
                break
            victims.append(f)
            used -= f.size_bytes
        if victims:
            self.persister.evict(victims)
            self.evicted_files += len(victims)
            self.evicted_bytes += sum(f.size_bytes for f in victims)
            how = (
                "already in the bucket"
                if self.bucket_holds is not None
                else "no [sync] configured: retention by size"
            )
            log.warning(
                "disk budget storage.max_disk_bytes=%d: evicted %d oldest Parquet file(s) (%d bytes; %s)",
                self.max_bytes,
                len(victims),
                sum(f.size_bytes for f in victims),
                how,
            )
        used = self.used()
        if used > self.max_bytes:
            if self.refusing is None:
                log.error("disk budget full of data waiting for upload; refusing writes with 507")
            self.refusing = (
                f"local disk budget reached: {used} bytes of Parquet, storage.max_disk_bytes is"
                f" {self.max_bytes}, and every remaining file still waits for upload to the bucket;"
                " writes resume once uploads catch up (check GET /api/v3/sync) or the budget is raised"
            )
        else:
            self.refusing = None

    def relieve(self, needed: int) -> None:
        """The disk is full (a persist failed): evict synced files, oldest first, for `needed` bytes.

        Only with [sync]: every file evicted is in the bucket. At least one file goes.
        """
        if self.bucket_holds is None:
            return
        victims: list[ParquetFile] = []
        freed = 0
        for f in sorted(self._evictable(), key=lambda f: (f.max_time, f.path)):
            if victims and freed >= needed:
                break
            victims.append(f)
            freed += f.size_bytes
        if not victims:
            log.error("disk full and no local file is in the bucket yet: nothing can be evicted")
            return
        self.persister.evict(victims)
        self.evicted_files += len(victims)
        self.evicted_bytes += freed
        log.warning(
            "disk full: evicted %d oldest Parquet file(s) already in the bucket (%d bytes)",
            len(victims),
            freed,
        )

    def _evictable(self) -> list[ParquetFile]:
        """Files the bucket holds: synced, or a compaction of synced files (its inputs stay there)."""
        files = self.manifest.files()
        if self.bucket_holds is None:
            return files
        held = self.bucket_holds()
        return [f for f in files if f.path in held]

    def status(self) -> dict[str, Any]:
        return {
            "max_disk_bytes": self.max_bytes,
            "used_bytes": self.used(),
            "refusing_writes": self.refusing is not None,
            "evicted_files": self.evicted_files,
            "evicted_bytes": self.evicted_bytes,
        }
