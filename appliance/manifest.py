"""The durable list of Parquet files (in LMDB) and its in-memory mirror."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import lmdb
import msgpack

from .wal import Wal


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


class Manifest:
    """Which Parquet files exist, per table; changed only inside WAL-writer transactions."""

    def __init__(self, wal: Wal) -> None:
        self.wal = wal
        self.lock = threading.Lock()
        self._files: dict[str, ParquetFile] = {}
        with wal.read() as txn:
            for _key, value in txn.cursor(db=wal.dbs["files"]):
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

    def put(self, txn: lmdb.Transaction, added: list[ParquetFile], removed: list[ParquetFile]) -> None:
        """Record a change inside the WAL writer's transaction (memory follows via apply)."""
        db = self.wal.dbs["files"]
        for f in removed:
            txn.delete(f.path.encode(), db=db)
        for f in added:
            txn.put(f.path.encode(), f.encode(), db=db)

    def apply(self, added: list[ParquetFile], removed: list[ParquetFile]) -> None:
        """Mirror a committed change in memory."""
        with self.lock:
            for f in removed:
                self._files.pop(f.path, None)
            for f in added:
                self._files[f.path] = f
