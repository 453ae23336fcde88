"""SyncQueue: the store-and-forward state of every Parquet file, kept in LMDB ("sync").

One record per local path, changed only inside WAL-writer transactions, so it survives
kill -9 at any moment together with the manifest it follows:

- `queued`: the file is to be uploaded (attempts, next try, last error);
- `synced`: the bucket holds it (the file may be evicted locally);
- `delete`: the local file was replaced by files whose rows include its own (a late write
  merged, a compaction); its object is deleted once every path in `after` is synced, so
  the bucket never counts a row twice and never lacks one.

Retention, drops and evictions never delete objects: the bucket is the fleet's long-term
store and keeps what the gateway let go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import lmdb
import msgpack

from ..manifest import Change, ParquetFile
from ..wal import Wal

QUEUED, SYNCED, DELETE = "queued", "synced", "delete"


@dataclass
class SyncRecord:
    path: str
    state: str
    size_bytes: int = 0
    row_count: int = 0
    queued_ns: int = 0
    attempts: int = 0
    next_ns: int = 0
    error: str = ""
    synced_ns: int = 0
    after: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> SyncRecord:
        return cls(**msgpack.unpackb(data))


class SyncQueue:
    """Reads and transaction steps over the "sync" database."""

    def __init__(self, wal: Wal) -> None:
        self.wal = wal
        self.db = wal.dbs["sync"]

    # -- reads -----------------------------------------------------------------------------
    def records(self) -> list[SyncRecord]:
        with self.wal.read() as txn:
            return list(self._scan(txn))

    def _scan(self, txn: lmdb.Transaction) -> Iterator[SyncRecord]:
        for _key, value in txn.cursor(db=self.db):
            yield SyncRecord.decode(bytes(value))

    def _get(self, txn: lmdb.Transaction, path: str) -> SyncRecord | None:
        raw = txn.get(path.encode(), db=self.db)
        return SyncRecord.decode(bytes(raw)) if raw is not None else None

    def _put(self, txn: lmdb.Transaction, rec: SyncRecord) -> None:
        txn.put(rec.path.encode(), rec.encode(), db=self.db)

    # -- the manifest hook (inside the writer's transaction) ---------------------------------
    def on_change(
        self, txn: lmdb.Transaction, change: Change, added: list[ParquetFile], removed: list[ParquetFile]
    ) -> None:
        now = time.time_ns()
        new = [a.path for a in added]
        covered = False
        for f in removed:
            rec = self._get(txn, f.path)
            if rec is None:
                continue
            txn.delete(f.path.encode(), db=self.db)
            if change in (Change.PERSIST, Change.COMPACT):
                if rec.state == SYNCED:
                    self._put(txn, SyncRecord(f.path, DELETE, rec.size_bytes, queued_ns=now, after=new))
                else:
                    self._retarget(txn, f.path, new)
            elif change is Change.RETENTION:
                # The rewrite holds a subset of the file's rows: a synced object already covers it.
                covered = rec.state == SYNCED
                if rec.state != SYNCED:
                    self._retarget(txn, f.path, new)
            elif change is Change.DROP and rec.state != SYNCED:
                self._retarget(txn, f.path, None)
        for f in added:
            state = SYNCED if covered else QUEUED
            self._put(
                txn,
                SyncRecord(f.path, state, f.size_bytes, f.row_count, now, synced_ns=now if covered else 0),
            )

    def _retarget(self, txn: lmdb.Transaction, old: str, new: list[str] | None) -> None:
        """Deletes waiting for `old` now wait for `new`; None (a drop) cancels them."""
        for rec in list(self._scan(txn)):
            if rec.state == DELETE and old in rec.after:
                if new is None:
                    txn.delete(rec.path.encode(), db=self.db)
                else:
                    rec.after = [p for p in rec.after if p != old] + new
                    self._put(txn, rec)

    def backfill(self, files: list[ParquetFile]) -> None:
        """Queue files that have no record: written before sync was configured."""

        def step(txn: lmdb.Transaction, wal: Wal) -> int:
            now = time.time_ns()
            missing = [f for f in files if txn.get(f.path.encode(), db=self.db) is None]
            for f in missing:
                self._put(txn, SyncRecord(f.path, QUEUED, f.size_bytes, f.row_count, now))
            return len(missing)

        if files:
            self.wal.submit(fn=step)  # the writer thread starts later; it commits first

    # -- uploader steps -----------------------------------------------------------------------
    def mark_synced(self, path: str) -> None:
        """After a verified upload. A file replaced meanwhile leaves an orphan object: delete it."""

        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            rec = self._get(txn, path)
            now = time.time_ns()
            if rec is not None and rec.state == QUEUED:
                rec.state, rec.synced_ns, rec.error = SYNCED, now, ""
                self._put(txn, rec)
            elif rec is None:
                self._put(txn, SyncRecord(path, DELETE, queued_ns=now))

        self.wal.submit(fn=step).result()

    def mark_failed(self, path: str, error: str, retry_in_ns: int) -> None:
        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            rec = self._get(txn, path)
            if rec is not None and rec.state in (QUEUED, DELETE):
                rec.attempts += 1
                rec.error = error[:500]
                rec.next_ns = time.time_ns() + retry_in_ns
                self._put(txn, rec)

        self.wal.submit(fn=step).result()

    def mark_deleted(self, path: str) -> None:
        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            rec = self._get(txn, path)
            if rec is not None and rec.state == DELETE:
                txn.delete(path.encode(), db=self.db)

        self.wal.submit(fn=step).result()

    def due(self, now_ns: int) -> tuple[list[SyncRecord], list[SyncRecord]]:
        """Uploads whose retry time has come (oldest first), and deletes that may run now."""
        with self.wal.read() as txn:
            records = {r.path: r for r in self._scan(txn)}
        uploads = sorted(
            (r for r in records.values() if r.state == QUEUED and r.next_ns <= now_ns),
            key=lambda r: r.queued_ns,
        )
        deletes = [
            r
            for r in records.values()
            if r.state == DELETE
            and r.next_ns <= now_ns
            and all(records.get(p) is None or records[p].state == SYNCED for p in r.after)
        ]
        return uploads, deletes
