"""ObjectStore: what the syncer needs of a bucket, behind one protocol; Throttle and Stopped for every backend.

A store holds complete data objects and nothing else, under the same relative paths as the
local parquet/ folder: `<prefix>/<db>/<table>/date=…/node=…/<file>`. Backends: S3Store
(s3store.py, any S3-compatible endpoint) and FileStore (filestore.py, a folder such as a
mounted NAS path); settings.py picks one from `sync.bucket`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol


class Stopped(Exception):
    """The appliance is stopping: the upload was not made (it will be sent after the restart)."""


class Throttle:
    """A token bucket shared by all uploads: at most `rate` bytes per second (0: unlimited)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        """Wait until `n` more bytes fit in the rate."""
        rate = self.rate  # SIGHUP may change it meanwhile
        if rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / rate
        if start > now:
            time.sleep(start - now)


class ObjectStore(Protocol):
    """One bucket and prefix; every method raises OSError when the store fails."""

    #: Paces every upload; the syncer's reload changes its rate.
    throttle: Throttle

    def url(self, rel: str) -> str:
        """Where the object of local path `rel` (relative to parquet/) lives, for logs and status."""
        ...

    def put(self, local: Path, rel: str, rows: int, stop: threading.Event) -> None:
        """Store `local` under `rel` whole and verified (size, footer row count), or raise.

        Never leaves part of a file or a wrong object under `rel`; a set `stop` raises Stopped.
        """
        ...

    def head(self, rel: str) -> int | None:
        """The size of the object under `rel`, None when there is none."""
        ...

    def delete(self, rel: str) -> None:
        """Delete the object under `rel`; one already gone is fine."""
        ...

    def remove_strays(self) -> int:
        """Delete what earlier versions or a crash left under the prefix; how many went."""
        ...
