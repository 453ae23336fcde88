"""Trigger definitions and the plugin log ring, both kept in LMDB so they survive restarts."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import struct
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import lmdb
import msgpack
import pyarrow as pa

from ..storage.store import Store

log = logging.getLogger("appliance.engine")

LOG_RING_SIZE = 10_000
_SEQ = struct.Struct(">Q")
#: Marks the digest keys of this format apart from the `db/name` text keys older versions stored
#: (re-keyed by `TriggerStore.load`); a database name can hold no NUL, so no old key starts with it.
_STORE_PREFIX = b"\x00"


def trigger_key(database: str, name: str) -> str:
    """The identity string of trigger `name` in `database` (see `TriggerDef.key`)."""
    return json.dumps([database, name], ensure_ascii=False)


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
        """The trigger's identity as one string: unambiguous even when names contain '/'.

        `db/name` would make database `x/y` + trigger `z` the same as database `x` + trigger `y/z`;
        a JSON pair cannot collide. It keys the engine's maps, the plugin cache namespace and the
        `origin` of the trigger's own writes.
        """
        return trigger_key(self.database, self.name)

    @property
    def store_key(self) -> bytes:
        """The LMDB key: a digest of `key`, so any name length fits LMDB's 511-byte key limit."""
        return _STORE_PREFIX + hashlib.sha256(self.key.encode()).digest()

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> TriggerDef:
        # Older versions stored what a plugin put into its args dict (a bool, an int key, bytes):
        # int map keys must load, and arguments are strings, whatever was stored.
        trigger = cls(**msgpack.unpackb(data, strict_map_key=False))
        if trigger.arguments is not None:
            trigger.arguments = {_text(k): _text(v) for k, v in dict(trigger.arguments).items()}
        return trigger


class TriggerStore:
    """Trigger definitions in the LMDB `triggers` database, keyed by database and name."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._db = store.database(b"triggers")

    def load(self) -> list[TriggerDef]:
        """Every stored trigger; definitions stored under older `db/name` keys are re-keyed first."""
        with self.store.read() as txn:
            records = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._db)]
        stored: list[tuple[bytes, TriggerDef]] = []
        for k, v in records:
            try:
                stored.append((k, TriggerDef.decode(v)))
            except Exception as e:
                # One unreadable definition must not stop the server; its bytes stay for inspection.
                log.error(
                    "skipped stored trigger definition %r: cannot decode it (%s: %.200s)",
                    k,
                    type(e).__name__,
                    e,
                )
        old = [(k, t) for k, t in stored if k != t.store_key]
        if old:

            def step(txn: lmdb.Transaction) -> None:
                for k, t in old:
                    txn.delete(k, db=self._db)
                    txn.put(t.store_key, t.encode(), db=self._db)

            self.store.submit(step).result()
            log.info("re-keyed %d stored trigger definition(s) to the current format", len(old))
        return [t for _, t in stored]

    def put(self, trigger: TriggerDef) -> None:
        def step(txn: lmdb.Transaction) -> None:
            txn.put(trigger.store_key, trigger.encode(), db=self._db)

        self.store.submit(step).result()

    def delete(self, trigger: TriggerDef) -> None:
        def step(txn: lmdb.Transaction) -> None:
            txn.delete(trigger.store_key, db=self._db)

        self.store.submit(step).result()


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

    def __init__(self, store: Store, size: int = LOG_RING_SIZE) -> None:
        self.store = store
        self._db = store.database(b"logs")
        self.size = size
        self._lock = threading.Lock()
        self._ring: collections.deque[tuple[int, str, str, str, str]] = collections.deque(maxlen=size)
        self._pending: list[tuple[int, str, str, str, str]] = []
        self._next = 1
        with store.read() as txn:
            for key, value in txn.cursor(db=self._db):
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

        def step(txn: lmdb.Transaction) -> None:
            db = self._db
            for i, record in enumerate(pending):
                txn.put(_SEQ.pack(first + i), msgpack.packb(list(record)), db=db)
            cur = txn.cursor(db=db)
            while cur.first() and _SEQ.unpack(cur.key())[0] < keep_from:
                cur.delete()

        self.store.submit(step).result()

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


def _text(value: Any) -> str:
    """A stored argument key or value as text: bytes decode as UTF-8 (replacing what is not)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
