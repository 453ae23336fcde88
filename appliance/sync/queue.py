"""SyncQueue: the store-and-forward state of every Parquet file, kept in LMDB.

Records change only inside WAL-writer transactions, so they survive kill -9 at any moment
together with the manifest they follow. One LMDB database per state, keyed by the file's
path relative to parquet/ (which is also its key in the bucket under the prefix):

- `sync` (queued): the file is to be uploaded (attempts, next try, last error). `covered`
  marks a compaction of files the bucket already holds: it may be evicted unsent.
- `synced`: the bucket holds it; the local copy may be evicted.
- `sync_del`: an object to delete once every path in `after` is synced (or gone), because
  the local file was replaced by files holding its rows: a late write merged, a compaction,
  a retention rewrite. Its object may exist even if it was never marked synced (a crash
  between publishing and recording), so a replaced queued file gets one too.

Whole-file retention, drops and evictions never delete synced objects: the bucket keeps
what the gateway let go. A file that expires, is dropped or evicted before it was recorded
as synced is not uploaded, deletes waiting for it are cancelled so the bucket keeps the
rows it has, and its own key gets a delete: its upload may have completed unrecorded (a
stop or a crash between publishing and `mark_synced`), and the bucket must not keep rows
the gateway never counted as sent (a dropped table's, or a duplicate of the cancelled ones).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import lmdb
import msgpack

from ..storage.manifest import Change, ParquetFile
from ..storage.store import Store

QUEUED, SYNCED, DELETE = "queued", "synced", "delete"
_DBS = {QUEUED: b"sync", SYNCED: b"synced", DELETE: b"sync_del"}


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
    covered: bool = False

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> SyncRecord:
        return cls(**msgpack.unpackb(data))


class SyncQueue:
    """Reads and transaction steps over the sync databases."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dbs = {state: store.database(name) for state, name in _DBS.items()}

    # -- reads -----------------------------------------------------------------------------
    def in_use(self) -> bool:
        """Whether sync ever ran here (its state must then follow every change, even with sync off)."""
        with self.store.read() as txn:
            return any(txn.stat(db)["entries"] for db in self.dbs.values())

    def bucket_holds(self) -> set[str]:
        """Local paths the bucket holds: synced, or a compaction of synced files (its inputs stay there)."""
        return {r.path for r in self.records(SYNCED, QUEUED) if r.state == SYNCED or r.covered}

    def records(self, *states: str) -> list[SyncRecord]:
        with self.store.read() as txn:
            return [r for s in states or _DBS for r in self._scan(txn, s)]

    def count(self, state: str) -> int:
        with self.store.read() as txn:
            return int(txn.stat(self.dbs[state])["entries"])

    def _scan(self, txn: lmdb.Transaction, state: str) -> Iterator[SyncRecord]:
        for _key, value in txn.cursor(db=self.dbs[state]):
            yield SyncRecord.decode(bytes(value))

    def _get(self, txn: lmdb.Transaction, path: str) -> SyncRecord | None:
        for state, db in self.dbs.items():
            if state != DELETE and (raw := txn.get(path.encode(), db=db)) is not None:
                return SyncRecord.decode(bytes(raw))
        return None

    def _put(self, txn: lmdb.Transaction, rec: SyncRecord) -> None:
        for state, db in self.dbs.items():
            if state != rec.state and state != DELETE:
                txn.delete(rec.path.encode(), db=db)
        txn.put(rec.path.encode(), rec.encode(), db=self.dbs[rec.state])

    def _drop(self, txn: lmdb.Transaction, path: str) -> None:
        txn.delete(path.encode(), db=self.dbs[QUEUED])
        txn.delete(path.encode(), db=self.dbs[SYNCED])

    # -- the manifest hook (inside the writer's transaction) ---------------------------------
    def on_change(
        self, txn: lmdb.Transaction, change: Change, added: list[ParquetFile], removed: list[ParquetFile]
    ) -> None:
        now = time.time_ns()
        covered = change is Change.COMPACT and bool(removed)
        for f in removed:
            rec = self._get(txn, f.path)
            self._drop(txn, f.path)
            if rec is None:
                covered = False
                continue
            covered = covered and rec.state == SYNCED
            # Its rows moved into the added files of the same table (a merge, a compaction, a
            # retention rewrite): its object goes once they are in the bucket.
            into = [a.path for a in added if (a.db_id, a.table_id) == (f.db_id, f.table_id)]
            if into and change in (Change.PERSIST, Change.COMPACT, Change.RETENTION):
                self._put(txn, SyncRecord(f.path, DELETE, rec.size_bytes, queued_ns=now, after=into))
                if rec.state == QUEUED:
                    self._retarget(txn, f.path, into)
            elif rec.state == QUEUED:
                self._forget_unsent(txn, rec, now)
        for f in added:
            self._put(txn, SyncRecord(f.path, QUEUED, f.size_bytes, f.row_count, now, covered=covered))

    def _forget_unsent(self, txn: lmdb.Transaction, rec: SyncRecord, now: int) -> None:
        """Expired, dropped or evicted before it was recorded as synced: it will not be sent, the
        deletes waiting for it are cancelled (the bucket keeps the rows they hold), and its key
        is deleted in case an upload finished unrecorded (a missing key is a cheap 204)."""
        self._retarget(txn, rec.path, None)
        self._put(txn, SyncRecord(rec.path, DELETE, rec.size_bytes, queued_ns=now))

    def _retarget(self, txn: lmdb.Transaction, old: str, new: list[str] | None) -> None:
        """Deletes waiting for `old` now wait for `new`; None cancels them."""
        for rec in list(self._scan(txn, DELETE)):
            if old in rec.after:
                if new is None:
                    txn.delete(rec.path.encode(), db=self.dbs[DELETE])
                else:
                    rec.after = [p for p in rec.after if p != old] + new
                    self._put(txn, rec)

    def reconcile(self, files: list[ParquetFile]) -> None:
        """At start: queue local files that have no record (written before sync was configured)
        and forget records of files that are gone (as if evicted)."""

        def step(txn: lmdb.Transaction) -> None:
            now = time.time_ns()
            local = {f.path for f in files}
            for f in files:
                if self._get(txn, f.path) is None:
                    self._put(txn, SyncRecord(f.path, QUEUED, f.size_bytes, f.row_count, now))
            for state in (QUEUED, SYNCED):
                for rec in list(self._scan(txn, state)):
                    if rec.path not in local:
                        self._drop(txn, rec.path)
                        if state == QUEUED:
                            self._forget_unsent(txn, rec, now)

        self.store.submit(step)  # the writer thread starts later; this commits first

    # -- uploader steps -----------------------------------------------------------------------
    def mark_synced(self, path: str) -> None:
        """After a verified upload. A file replaced meanwhile leaves an orphan object: delete it."""

        def step(txn: lmdb.Transaction) -> None:
            rec = self._get(txn, path)
            now = time.time_ns()
            if rec is not None and rec.state == QUEUED:
                rec.state, rec.synced_ns, rec.error = SYNCED, now, ""
                self._put(txn, rec)
            elif rec is None and txn.get(path.encode(), db=self.dbs[DELETE]) is None:
                self._put(txn, SyncRecord(path, DELETE, queued_ns=now))

        self.store.submit(step).result()

    def mark_failed(self, rec: SyncRecord, error: str, retry_in_ns: int) -> None:
        def step(txn: lmdb.Transaction) -> None:
            raw = txn.get(rec.path.encode(), db=self.dbs[rec.state])
            if raw is not None:
                cur = SyncRecord.decode(bytes(raw))
                cur.attempts += 1
                cur.error = error[:500]
                cur.next_ns = time.time_ns() + retry_in_ns
                self._put(txn, cur)

        self.store.submit(step).result()

    def mark_deleted(self, path: str) -> None:
        def step(txn: lmdb.Transaction) -> None:
            txn.delete(path.encode(), db=self.dbs[DELETE])

        self.store.submit(step).result()

    def due(
        self, now_ns: int, max_wait_ns: int, ignore_backoff: bool = False
    ) -> tuple[list[SyncRecord], list[SyncRecord]]:
        """Uploads whose retry time has come (oldest first), and deletes that may run now.

        A retry time further away than `max_wait_ns` counts as due (the clock stepped back).
        """

        def ready(r: SyncRecord) -> bool:
            return ignore_backoff or r.next_ns <= now_ns or r.next_ns - now_ns > max_wait_ns

        with self.store.read() as txn:
            uploads = sorted((r for r in self._scan(txn, QUEUED) if ready(r)), key=lambda r: r.queued_ns)
            deletes = [
                r
                for r in self._scan(txn, DELETE)
                if ready(r) and all(txn.get(p.encode(), db=self.dbs[QUEUED]) is None for p in r.after)
            ]
        return uploads, deletes
