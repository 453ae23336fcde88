"""Databases, tables and typed columns, kept in LMDB and mirrored in memory.

Reads come from memory without a lock. A change is staged in a SchemaChange, committed
to LMDB (and fsynced) under `Catalog.lock`, and only then applied to memory: nothing
another request can see, or a write can depend on, is ever missing after a crash.
Schema changes are rare (a new database, table or column), so their own commit is cheap.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import lmdb
import msgpack
import pyarrow as pa

from ..component import Listeners
from ..errors import CatalogError, Conflict, LimitExceeded, NotFound
from ..lineprotocol.syntax import name_problem
from ..model import TIME_COLUMN, ColumnType
from .store import Store

_DB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(/[A-Za-z0-9_\-]+)?")
INTERNAL_DATABASES = frozenset({"_internal"})
#: Longest database or table name: catalog keys embed it and LMDB keys hold at most 511 bytes.
MAX_NAME_BYTES = 480
#: Longest retention: the cutoff must fit in int64 nanoseconds.
MAX_RETENTION_NS = 100 * 365 * 86_400 * 10**9


def check_database_name(name: str) -> None:
    """Reject names InfluxDB 3 rejects: alnum first, then [A-Za-z0-9_-], one optional '/'."""
    if not name:
        raise CatalogError("database name must not be empty")
    if len(name) > MAX_NAME_BYTES:
        raise CatalogError(f"database name {name[:40]!r}... is longer than {MAX_NAME_BYTES} characters")
    if not _DB_NAME.fullmatch(name):
        raise CatalogError(
            f"invalid database name {name!r}: it must start with a letter or digit and hold"
            " only letters, digits, '_', '-' and at most one '/' (not last)"
        )


def check_table_name(name: str) -> None:
    """A table name must pass name_problem() and be at most MAX_NAME_BYTES of UTF-8."""
    check_column_name(name, "table name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise CatalogError(f"table name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")


def check_column_name(name: str, what: str = "column name") -> None:
    """The rule for table, tag and field names (name_problem), as the write path applies it."""
    problem = name_problem(name)
    if problem is not None:
        raise CatalogError(f"invalid {what} {name!r}: it {problem}")


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
    max_tables_per_database: int = 1000


TxnStep = Callable[[lmdb.Transaction], None]
_NEXT_ID_KEY = b"meta/next_id"


def _db_key(name: str) -> bytes:
    return b"db/" + name.encode()


def _table_key(db_id: int, name: str) -> bytes:
    return b"tbl/%d/" % db_id + name.encode()


@dataclass
class SchemaChange:
    """Catalog changes one request makes: visible to that request, applied after the commit."""

    next_id: int
    databases: dict[str, DatabaseDef] = field(default_factory=dict)  # new ones, by name
    tables: dict[tuple[int, str], TableDef] = field(default_factory=dict)  # new or grown
    retention: dict[str, int | None] = field(default_factory=dict)
    new_tables: int = 0
    new_tables_in: dict[int, int] = field(default_factory=dict)  # by database id

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def __bool__(self) -> bool:
        return bool(self.databases or self.tables or self.retention)


class Catalog:
    """The schema of every database; the one place that decides column types."""

    def __init__(self, store: Store, limits: CatalogLimits) -> None:
        self.store = store
        self._db = store.database(b"catalog")
        self.limits = limits
        #: Held while a change is staged, committed and applied; serialises schema changes.
        self.lock = threading.RLock()
        self._dbs: dict[str, DatabaseDef] = {}
        self._next_id = 1
        #: Told `(db_id, table_id or None)` after a database or table is deleted.
        self.on_drop: Listeners[[int, int | None]] = Listeners()
        self._load()

    def _load(self) -> None:
        with self.store.read() as txn:
            by_id: dict[int, DatabaseDef] = {}
            records = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._db)]
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

    # -- staging changes (call with `lock` held) ---------------------------
    def begin(self) -> SchemaChange:
        """A change to stage new databases, tables and columns in; commit it with `commit`."""
        return SchemaChange(self._next_id)

    def ensure_database(self, name: str, change: SchemaChange) -> DatabaseDef:
        """The database `name`, existing or staged in `change`."""
        existing = self._dbs.get(name) or change.databases.get(name)
        if existing is not None:
            return existing
        check_database_name(name)
        user_dbs = [d for d in [*self._dbs, *change.databases] if d not in INTERNAL_DATABASES]
        if len(user_dbs) >= self.limits.max_databases:
            raise LimitExceeded(
                f"Adding a new database would exceed limit of {self.limits.max_databases} databases"
            )
        db = DatabaseDef(change.take_id(), name, None, time.time_ns())
        change.databases[name] = db
        return db

    def table(self, db: DatabaseDef, name: str, change: SchemaChange) -> TableDef | None:
        """A table as `change` sees it (staged columns included)."""
        return change.tables.get((db.id, name)) or db.tables.get(name)

    def extend_table(
        self, db: DatabaseDef, table: str, new_columns: dict[str, ColumnType], change: SchemaChange
    ) -> TableDef:
        """Stage `table` and/or new columns; the caller has checked type conflicts.

        Raises LimitExceeded when the table or column limits would be passed (nothing staged).
        """
        current = self.table(db, table, change)
        if current is None:
            check_table_name(table)
            if self.table_count() + change.new_tables >= self.limits.max_tables:
                raise LimitExceeded(self._tables_limit())
            if len(db.tables) + change.new_tables_in.get(db.id, 0) >= self.limits.max_tables_per_database:
                raise LimitExceeded(self._database_tables_limit(db.name))
        columns = current.columns if current is not None else {TIME_COLUMN: ColumnType.TIME}
        added = {n: t for n, t in new_columns.items() if n not in columns}
        if current is not None and not added:
            return current
        if len(columns) - 1 + len(added) > self.limits.max_columns:
            raise LimitExceeded(
                "Update to schema would exceed number of columns per table limit of"
                f" {self.limits.max_columns} columns"
            )
        if current is None:
            change.new_tables += 1
            change.new_tables_in[db.id] = change.new_tables_in.get(db.id, 0) + 1
            table_id = change.take_id()
        else:
            table_id = current.id
        updated = TableDef(table_id, table, {**columns, **added})
        change.tables[(db.id, table)] = updated
        return updated

    def table_room(self, db_name: str) -> tuple[int, str]:
        """How many tables a write to `db_name` may still add, and the error for one past that.

        A hint for the parser (it refuses the lines of tables past it early); extend_table decides.
        """
        db = self._dbs.get(db_name)
        total = self.limits.max_tables - self.table_count()
        in_db = self.limits.max_tables_per_database - (len(db.tables) if db is not None else 0)
        if in_db < total:
            return max(in_db, 0), self._database_tables_limit(db_name)
        return max(total, 0), self._tables_limit()

    def _tables_limit(self) -> str:
        return f"Update to schema would exceed number of tables limit of {self.limits.max_tables} tables"

    def _database_tables_limit(self, db_name: str) -> str:
        return (
            f"Update to schema would exceed the limit of {self.limits.max_tables_per_database}"
            f" tables in database {db_name!r} (catalog.max_tables_per_database)"
        )

    def commit(self, change: SchemaChange) -> None:
        """Make `change` durable, then visible; call with `lock` held. On failure nothing changes."""
        if not change:
            return
        by_id = {d.id: d for d in [*self._dbs.values(), *change.databases.values()]}
        try:
            puts = [(_NEXT_ID_KEY, b"%d" % change.next_id)]
            for name, retention in change.retention.items():
                puts.append((_db_key(name), replace(self._dbs[name], retention_ns=retention).encode()))
            puts.extend((_db_key(d.name), d.encode()) for d in change.databases.values())
            puts.extend((_table_key(db_id, t.name), t.encode()) for (db_id, _), t in change.tables.items())
        except (OverflowError, ValueError, TypeError) as e:
            raise CatalogError(f"the change cannot be stored: {e}") from None
        self.store.submit(self._put_all(puts)).result()
        self._next_id = change.next_id
        for d in change.databases.values():
            self._dbs[d.name] = d
        for name, retention in change.retention.items():
            self._dbs[name].retention_ns = retention
        for (db_id, _), t in change.tables.items():
            by_id[db_id].tables[t.name] = t

    # -- explicit configuration ---------------------------------------------
    def create_database(self, name: str, retention_ns: int | None) -> DatabaseDef:
        with self.lock:
            if name in self._dbs:
                raise Conflict("attempted to create a resource that already exists")
            change = self.begin()
            db = self.ensure_database(name, change)
            db.retention_ns = retention_ns
            self.commit(change)
        return db

    def set_retention(self, name: str, retention_ns: int | None) -> None:
        with self.lock:
            self.require(name)
            change = self.begin()
            change.retention[name] = retention_ns
            self.commit(change)

    def create_table(
        self, db_name: str, table: str, tags: list[str], fields: dict[str, ColumnType]
    ) -> TableDef:
        for col in [*tags, *fields]:
            if col == TIME_COLUMN:
                raise CatalogError("a tag or field may not be named 'time'")
            check_column_name(col)
        both = set(tags) & set(fields)
        if both:
            raise CatalogError(f"column {sorted(both)[0]!r} is given as both a tag and a field")
        with self.lock:
            change = self.begin()
            db = self.ensure_database(db_name, change)
            if table in db.tables:
                raise Conflict("attempted to create a resource that already exists")
            created = self.extend_table(db, table, {t: ColumnType.TAG for t in tags} | fields, change)
            self.commit(change)
        return created

    def delete_database(self, name: str) -> None:
        with self.lock:
            db = self.require(name)
            keys = [_db_key(name)] + [_table_key(db.id, t) for t in db.tables]
            self.store.submit(self._delete_all(keys)).result()
            del self._dbs[name]
        self.on_drop.notify(db.id, None)

    def delete_table(self, db_name: str, table: str) -> None:
        with self.lock:
            db = self.require(db_name)
            t = db.tables.get(table)
            if t is None:
                raise NotFound(f"Table not found {table}")
            self.store.submit(self._delete_all([_table_key(db.id, table)])).result()
            del db.tables[table]
        self.on_drop.notify(db.id, t.id)

    def _put_all(self, puts: list[tuple[bytes, bytes]]) -> TxnStep:
        def step(txn: lmdb.Transaction) -> None:
            for key, value in puts:
                txn.put(key, value, db=self._db)

        return step

    def _delete_all(self, keys: list[bytes]) -> TxnStep:
        def step(txn: lmdb.Transaction) -> None:
            for key in keys:
                txn.delete(key, db=self._db)

        return step


def find_table(catalog: Catalog, db_id: int, table_id: int) -> tuple[DatabaseDef, TableDef] | None:
    """The database and table with these ids, or None once either was deleted."""
    for db in catalog.databases():
        if db.id == db_id:
            for t in list(db.tables.values()):
                if t.id == table_id:
                    return db, t
    return None
