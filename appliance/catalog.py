"""Databases, tables and typed columns, kept in LMDB and mirrored in memory.

Reads come from memory without a lock held for long. Changes happen under one lock,
update memory at once and are made durable by the WAL writer: schema changes that a
write needs travel in the same LMDB transaction as the write itself.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgpack
import pyarrow as pa

from .errors import CatalogError, Conflict, LimitExceeded, NotFound
from .model import TIME_COLUMN, ColumnType
from .wal import Wal, WalEntry

_DB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(/[A-Za-z0-9_\-]+)?")
INTERNAL_DATABASES = frozenset({"_internal"})


def check_database_name(name: str) -> None:
    """Reject names InfluxDB 3 rejects: alnum first, then [A-Za-z0-9_-], one optional '/'."""
    if not name:
        raise CatalogError("database name must not be empty")
    if len(name) > 511:
        raise CatalogError(f"database name {name[:40]!r}... is longer than 511 characters")
    if not _DB_NAME.fullmatch(name):
        raise CatalogError(
            f"invalid database name {name!r}: it must start with a letter or digit and hold"
            " only letters, digits, '_', '-' and at most one '/' (not last)"
        )


def check_table_name(name: str) -> None:
    """A table name must be non-empty and printable."""
    if not name or not name.isprintable():
        raise CatalogError(f"invalid table name {name!r}: it must be non-empty and printable")


@dataclass
class TableDef:
    """A table: its id, name and columns in the order they were created."""

    id: int
    name: str
    columns: dict[str, ColumnType] = field(default_factory=dict)
    _schema: pa.Schema | None = field(default=None, repr=False, compare=False)

    def schema(self) -> pa.Schema:
        """Arrow schema as queries and Parquet see it: columns by name, tags dictionary-encoded."""
        if self._schema is None:
            self._schema = pa.schema([pa.field(n, self.columns[n].arrow_type) for n in sorted(self.columns)])
        return self._schema

    def encode(self) -> bytes:
        return msgpack.packb(
            {"id": self.id, "name": self.name, "columns": [[n, t.value] for n, t in self.columns.items()]}
        )

    @classmethod
    def decode(cls, data: bytes) -> TableDef:
        d = msgpack.unpackb(data)
        return cls(d["id"], d["name"], {n: ColumnType(t) for n, t in d["columns"]})


@dataclass
class DatabaseDef:
    """A database: its id, name, optional retention and tables."""

    id: int
    name: str
    retention_ns: int | None = None
    created_ns: int = 0
    tables: dict[str, TableDef] = field(default_factory=dict)

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "id": self.id,
                "name": self.name,
                "retention_ns": self.retention_ns,
                "created_ns": self.created_ns,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> DatabaseDef:
        d = msgpack.unpackb(data)
        return cls(d["id"], d["name"], d["retention_ns"], d.get("created_ns", 0))


@dataclass(frozen=True)
class CatalogLimits:
    max_databases: int = 100
    max_tables: int = 2000
    max_columns: int = 500


TxnStep = Callable[[lmdb.Transaction, Wal], None]
DropListener = Callable[[int, int | None], None]


_NEXT_ID_KEY = b"meta/next_id"


def _db_key(name: str) -> bytes:
    return b"db/" + name.encode()


def _table_key(db_id: int, name: str) -> bytes:
    return b"tbl/%d/" % db_id + name.encode()


class Catalog:
    """The schema of every database; the one place that decides column types.

    Every change is made in memory under `lock` and queued for the WAL writer before the
    lock is released, so the commit order matches the order of the changes in memory.
    """

    def __init__(self, wal: Wal, limits: CatalogLimits) -> None:
        self.wal = wal
        self.limits = limits
        self.lock = threading.RLock()
        self._dbs: dict[str, DatabaseDef] = {}
        self._next_id = 1
        #: Set when a commit carrying catalog changes failed: memory is ahead of LMDB.
        self._dirty = False
        self._drop_listeners: list[DropListener] = []
        self._load()

    def _load(self) -> None:
        cat = self.wal.dbs["catalog"]
        with self.wal.read() as txn:
            by_id: dict[int, DatabaseDef] = {}
            records = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=cat)]
        for key, value in records:
            if key == _NEXT_ID_KEY:
                self._next_id = max(self._next_id, int(value))
            elif key.startswith(b"db/"):
                d = DatabaseDef.decode(value)
                by_id[d.id] = d
                self._dbs[d.name] = d
                self._next_id = max(self._next_id, d.id + 1)
        for key, value in records:
            if key.startswith(b"tbl/"):
                db_id = int(key.split(b"/")[1])
                t = TableDef.decode(value)
                if db_id in by_id:
                    by_id[db_id].tables[t.name] = t
                self._next_id = max(self._next_id, t.id + 1)

    def add_drop_listener(self, listener: DropListener) -> None:
        """Call `listener(db_id, table_id or None)` after a database or table is deleted."""
        self._drop_listeners.append(listener)

    # -- reads --------------------------------------------------------------
    def databases(self) -> list[DatabaseDef]:
        return sorted(self._dbs.values(), key=lambda d: d.name)

    def get(self, name: str) -> DatabaseDef | None:
        return self._dbs.get(name)

    def require(self, name: str) -> DatabaseDef:
        d = self._dbs.get(name)
        if d is None:
            raise NotFound(f"Database not found {name}")
        return d

    def table_count(self) -> int:
        return sum(len(d.tables) for d in self._dbs.values())

    # -- changes that travel with a write ----------------------------------
    def ensure_database(self, name: str, steps: list[TxnStep]) -> DatabaseDef:
        """The database `name`, created (in memory, durable via `steps`) if missing."""
        with self.lock:
            existing = self._dbs.get(name)
            if existing is not None:
                return existing
            check_database_name(name)
            user_dbs = [d for d in self._dbs if d not in INTERNAL_DATABASES]
            if len(user_dbs) >= self.limits.max_databases:
                raise LimitExceeded(
                    f"Adding a new database would exceed limit of {self.limits.max_databases} databases"
                )
            db = DatabaseDef(self._take_id(steps), name, None, time.time_ns())
            self._dbs[name] = db
            steps.append(_put_step(_db_key(name), db.encode()))
            return db

    def extend_table(
        self, db: DatabaseDef, table: str, new_columns: dict[str, ColumnType], steps: list[TxnStep]
    ) -> TableDef:
        """Create `table` and/or add columns to it; the caller has checked type conflicts.

        Raises LimitExceeded when the table or column limits would be passed (nothing changes).
        """
        with self.lock:
            current = db.tables.get(table)
            if current is None:
                check_table_name(table)
                if self.table_count() >= self.limits.max_tables:
                    raise LimitExceeded(
                        "Update to schema would exceed number of tables limit of"
                        f" {self.limits.max_tables} tables"
                    )
            columns = current.columns if current is not None else {TIME_COLUMN: ColumnType.TIME}
            added = {n: t for n, t in new_columns.items() if n not in columns}
            if current is not None and not added:
                return current
            if len(columns) - 1 + len(added) > self.limits.max_columns:
                raise LimitExceeded(
                    "Update to schema would exceed number of columns per table limit of"
                    f" {self.limits.max_columns} columns"
                )
            table_id = current.id if current is not None else self._take_id(steps)
            updated = TableDef(table_id, table, {**columns, **added})
            db.tables[table] = updated
            steps.append(_put_step(_table_key(db.id, table), updated.encode()))
            return updated

    def _take_id(self, steps: list[TxnStep]) -> int:
        """A new id, never reused: the counter is stored with the change that uses it."""
        taken = self._next_id
        self._next_id += 1
        steps.append(_put_step(_NEXT_ID_KEY, b"%d" % self._next_id))
        return taken

    def submit(self, steps: list[TxnStep], entry: WalEntry | None = None) -> Future[Any]:
        """Queue catalog steps (and a WAL entry) for commit; call with `lock` held."""
        if self._dirty:
            steps = [self._resync_step(), *steps]
        fut = self.wal.submit(fn=run_steps(steps) if steps else None, entry=entry)
        if steps:
            fut.add_done_callback(self._note_outcome)
        return fut

    def _note_outcome(self, fut: Future[Any]) -> None:
        if fut.exception() is not None:
            self._dirty = True  # the next change rewrites the whole catalog

    def _resync_step(self) -> TxnStep:
        puts = [(_NEXT_ID_KEY, b"%d" % self._next_id)]
        for db in self._dbs.values():
            puts.append((_db_key(db.name), db.encode()))
            puts.extend((_table_key(db.id, t.name), t.encode()) for t in db.tables.values())

        def step(txn: lmdb.Transaction, wal: Wal) -> None:
            for key, value in puts:
                txn.put(key, value, db=wal.dbs["catalog"])
            self._dirty = False

        return step

    # -- explicit configuration (each waits for its own commit) ------------
    def create_database(self, name: str, retention_ns: int | None) -> DatabaseDef:
        with self.lock:
            if name in self._dbs:
                raise Conflict("attempted to create a resource that already exists")
            steps: list[TxnStep] = []
            db = self.ensure_database(name, steps)
            db.retention_ns = retention_ns
            steps.append(_put_step(_db_key(name), db.encode()))
            fut = self.submit(steps)
        fut.result()
        return db

    def set_retention(self, name: str, retention_ns: int | None) -> None:
        with self.lock:
            db = self.require(name)
            db.retention_ns = retention_ns
            fut = self.submit([_put_step(_db_key(name), db.encode())])
        fut.result()

    def create_table(
        self, db_name: str, table: str, tags: list[str], fields: dict[str, ColumnType]
    ) -> TableDef:
        for col in [*tags, *fields]:
            if col == TIME_COLUMN:
                raise CatalogError("a tag or field may not be named 'time'")
            if not col or not col.isprintable():
                raise CatalogError(f"invalid column name {col!r}: it must be non-empty and printable")
        both = set(tags) & set(fields)
        if both:
            raise CatalogError(f"column {sorted(both)[0]!r} is given as both a tag and a field")
        with self.lock:
            steps: list[TxnStep] = []
            try:
                db = self.ensure_database(db_name, steps)
                if table in db.tables:
                    raise Conflict("attempted to create a resource that already exists")
                columns = {t: ColumnType.TAG for t in tags} | fields
                created = self.extend_table(db, table, columns, steps)
            finally:
                fut = self.submit(steps) if steps else None  # a created database stays
        if fut is not None:
            fut.result()
        return created

    def delete_database(self, name: str) -> None:
        with self.lock:
            db = self.require(name)
            del self._dbs[name]
            keys = [_db_key(name)] + [_table_key(db.id, t) for t in db.tables]
            fut = self.submit([_delete_step(keys)])
        fut.result()
        for listener in self._drop_listeners:
            listener(db.id, None)

    def delete_table(self, db_name: str, table: str) -> None:
        with self.lock:
            db = self.require(db_name)
            t = db.tables.pop(table, None)
            if t is None:
                raise NotFound(f"Table not found {table}")
            fut = self.submit([_delete_step([_table_key(db.id, table)])])
        fut.result()
        for listener in self._drop_listeners:
            listener(db.id, t.id)


def run_steps(steps: list[TxnStep]) -> Callable[[lmdb.Transaction, Wal], None]:
    """Bundle catalog steps into one function for `Wal.submit`."""

    def run(txn: lmdb.Transaction, wal: Wal) -> None:
        for step in steps:
            step(txn, wal)

    return run


def _put_step(key: bytes, value: bytes) -> TxnStep:
    def step(txn: lmdb.Transaction, wal: Wal) -> None:
        txn.put(key, value, db=wal.dbs["catalog"])

    return step


def _delete_step(keys: list[bytes]) -> TxnStep:
    def step(txn: lmdb.Transaction, wal: Wal) -> None:
        for key in keys:
            txn.delete(key, db=wal.dbs["catalog"])

    return step


def find_table(catalog: Catalog, db_id: int, table_id: int) -> tuple[DatabaseDef, TableDef] | None:
    """The database and table with these ids, or None once either was deleted."""
    for db in catalog.databases():
        if db.id == db_id:
            for t in list(db.tables.values()):
                if t.id == table_id:
                    return db, t
    return None
