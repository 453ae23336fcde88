"""The durable list of Parquet files (in LMDB), its in-memory mirror, and safe file removal."""

from __future__ import annotations

import enum
import itertools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import msgpack

from ..component import Listeners
from .store import Store

log = logging.getLogger("appliance.manifest")


@dataclass(frozen=True)
class ParquetFile:
    """One persisted Parquet file; `path` is relative to the data dir's parquet/ folder."""

    path: str
    db_id: int
    db: str
    table_id: int
    table: str
    size_bytes: int
    row_count: int
    min_time: int
    max_time: int
    created_ns: int

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> ParquetFile:
        return cls(**msgpack.unpackb(data))


class Change(enum.Enum):
    """Why files enter or leave the manifest; the sync queue treats each differently."""

    PERSIST = "persist"  # new files; removed ones had their rows merged into the new ones
    COMPACT = "compact"  # removed files' rows are all in the added ones
    RETENTION = "retention"  # expired: one file removed, at most one added with its newer rows
    DROP = "drop"  # a deleted database or table
    EVICT = "evict"  # over the disk budget: the bucket keeps the data


#: Called inside the WAL writer's transaction with every change (the sync queue).


class Manifest:
    """Which Parquet files exist, per table (the `files` database); changed only in Store steps.

    Queries open files lazily, after they collected the file list, so a file that leaves
    the manifest is deleted from disk only once no query that might still read it runs
    (`pinned`).
    """

    def __init__(self, store: Store, root: Path) -> None:
        self._db = store.database(b"files")
        self.root = root
        self.lock = threading.Lock()
        self._files: dict[str, ParquetFile] = {}
        self._generation = 0
        self._pins: dict[int, int] = {}  # pin id -> generation when the query started
        self._pin_ids = itertools.count()
        self._retired: list[tuple[int, str]] = []  # (generation it left the manifest, path)
        #: Called inside the transaction that records a change (the sync queue follows it there).
        self.on_change: Listeners[[lmdb.Transaction, Change, list[ParquetFile], list[ParquetFile]]] = (
            Listeners()
        )
        self.on_applied: Listeners[[]] = Listeners()  # told after each committed change
        with store.read() as txn:
            for _key, value in txn.cursor(db=self._db):
                f = ParquetFile.decode(bytes(value))
                self._files[f.path] = f

    def files(self, db_id: int | None = None, table_id: int | None = None) -> list[ParquetFile]:
        """Files of one table (or database, or all), oldest first."""
        with self.lock:
            found = [
                f for f in self._files.values() if db_id in (None, f.db_id) and table_id in (None, f.table_id)
            ]
        return sorted(found, key=lambda f: (f.created_ns, f.path))

    def paths(self) -> set[str]:
        with self.lock:
            return set(self._files)

    def put(
        self, txn: lmdb.Transaction, change: Change, added: list[ParquetFile], removed: list[ParquetFile]
    ) -> None:
        """Record a change inside the WAL writer's transaction (memory follows via apply)."""
        for f in removed:
            txn.delete(f.path.encode(), db=self._db)
        for f in added:
            txn.put(f.path.encode(), f.encode(), db=self._db)
        self.on_change.notify(txn, change, added, removed)

    def total_bytes(self) -> int:
        with self.lock:
            return sum(f.size_bytes for f in self._files.values())

    def apply(self, added: list[ParquetFile], removed: list[ParquetFile]) -> None:
        """Mirror a committed change in memory; removed files are deleted once unpinned."""
        with self.lock:
            self._generation += 1
            for f in removed:
                self._files.pop(f.path, None)
                self._retired.append((self._generation, f.path))
            for f in added:
                self._files[f.path] = f
        self._reap()
        self.on_applied.notify()

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Keep every file listed at entry on disk until exit."""
        with self.lock:
            pin = next(self._pin_ids)
            self._pins[pin] = self._generation
        try:
            yield
        finally:
            with self.lock:
                del self._pins[pin]
            self._reap()

    def _reap(self) -> None:
        with self.lock:
            oldest = min(self._pins.values(), default=None)
            ready = [p for g, p in self._retired if oldest is None or g <= oldest]
            self._retired = [(g, p) for g, p in self._retired if not (oldest is None or g <= oldest)]
        for path in ready:
            try:
                (self.root / path).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not delete %s: %s", path, e)
