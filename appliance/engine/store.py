"""Trigger definitions and the plugin log ring, both kept in LMDB so they survive restarts."""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import lmdb
import msgpack
import pyarrow as pa

from ..wal import Wal

log = logging.getLogger("appliance.engine")

LOG_RING_SIZE = 10_000
_SEQ = struct.Struct(">Q")


@dataclass
class TriggerDef:
    """One trigger as created by the user; `disabled` is the state a restart honours."""

    name: str
    database: str
    plugin_filename: str
    spec: str
    run_async: bool = False
    error_behavior: str = "log"
    arguments: dict[str, str] | None = None
    disabled: bool = False
    no_auth: bool = False

    @property
    def key(self) -> str:
        return f"{self.database}/{self.name}"

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> TriggerDef:
        return cls(**msgpack.unpackb(data))


class TriggerStore:
    """Trigger definitions in the LMDB `triggers` database, keyed by database and name."""

    def __init__(self, wal: Wal) -> None:
        self.wal = wal

    def load(self) -> list[TriggerDef]:
        with self.wal.read() as txn:
            return [TriggerDef.decode(bytes(v)) for _, v in txn.cursor(db=self.wal.dbs["triggers"])]

    def put(self, trigger: TriggerDef) -> None:
        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            txn.put(trigger.key.encode(), trigger.encode(), db=wal.dbs["triggers"])

        self.wal.submit(fn=step).result()

    def delete(self, trigger: TriggerDef) -> None:
        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            txn.delete(trigger.key.encode(), db=wal.dbs["triggers"])

        self.wal.submit(fn=step).result()


LOG_SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("ns")),
        ("database", pa.string()),
        ("trigger_name", pa.string()),
        ("log_level", pa.string()),
        ("log_text", pa.string()),
    ]
)


class EngineLog:
    """A bounded ring of plugin log lines: in memory for queries, flushed to LMDB about once a second.

    Flushing in batches keeps a chatty plugin from costing an fsync per line; a crash loses at
    most the last second of log lines, never data.
    """

    def __init__(self, wal: Wal, size: int = LOG_RING_SIZE) -> None:
        self.wal = wal
        self.size = size
        self._lock = threading.Lock()
        self._ring: collections.deque[tuple[int, str, str, str, str]] = collections.deque(maxlen=size)
        self._pending: list[tuple[int, str, str, str, str]] = []
        self._next = 1
        with wal.read() as txn:
            for key, value in txn.cursor(db=wal.dbs["logs"]):
                self._ring.append(tuple(msgpack.unpackb(bytes(value))))  # type: ignore[arg-type]
                self._next = _SEQ.unpack(bytes(key))[0] + 1

    def add(self, database: str, trigger: str, level: str, text: str) -> None:
        """Record one line (also sent to the server log)."""
        record = (time.time_ns(), database, trigger, level, text)
        with self._lock:
            self._ring.append(record)
            self._pending.append(record)
        level_no = {"INFO": logging.INFO, "WARN": logging.WARNING}.get(level, logging.ERROR)
        log.log(level_no, "processing engine: %s/%s: %s", database, trigger, text)

    def flush(self) -> None:
        """Write pending lines to LMDB in one transaction and trim the stored ring."""
        with self._lock:
            pending, self._pending = self._pending, []
            first = self._next
            self._next += len(pending)
        if not pending:
            return
        keep_from = first + len(pending) - self.size

        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            db = wal.dbs["logs"]
            for i, record in enumerate(pending):
                txn.put(_SEQ.pack(first + i), msgpack.packb(list(record)), db=db)
            cur = txn.cursor(db=db)
            while cur.first() and _SEQ.unpack(cur.key())[0] < keep_from:
                cur.delete()

        self.wal.submit(fn=step).result()

    def table(self, database: str | None) -> pa.Table:
        """`system.processing_engine_logs` for one database (all when None)."""
        with self._lock:
            rows = [r for r in self._ring if database is None or r[1] == database]
        cols: list[Any] = list(zip(*rows, strict=True)) if rows else [[] for _ in LOG_SCHEMA]
        return pa.table(
            [
                pa.array(cols[0], pa.int64()).cast(pa.timestamp("ns")),
                *(pa.array(c, pa.string()) for c in cols[1:]),
            ],
            schema=LOG_SCHEMA,
        )
