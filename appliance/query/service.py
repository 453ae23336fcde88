"""SQL over the buffer and Parquet together, through DataFusion.

Each query gets its own SessionContext in which every table of the database is one
dataset: the union of its Parquet files and its deduplicated buffer rows, registered
as a table (so `SHOW TABLES` lists it as a BASE TABLE), plus the `system` schema.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SHUTTING_DOWN, ApplianceError, DatabaseNotFound, QueryError, QueryTimeout, QueryTooLarge
from ..metrics import QUERIES, QUERY_SECONDS
from ..model import TIME_COLUMN
from ..storage import dedupe
from ..storage.buffer import Buffer, TableKey
from ..storage.catalog import Catalog, DatabaseDef, TableDef
from ..storage.manifest import Manifest, ParquetFile
from . import system_tables
from .sqlcheck import check_sizes, check_sql, value_budget

if TYPE_CHECKING:
    import pyarrow.dataset as ds
    from datafusion import SessionContext

log = logging.getLogger("appliance.query")


@dataclass(frozen=True)
class QueryLimits:
    memory_bytes: int
    timeout_ns: int
    max_result_bytes: int
    max_sql_bytes: int = 1 << 20


#: How often a waiting query looks at its deadline and at close().
_POLL_SECONDS = 0.1


class QueryService:
    """Runs SQL for one database at a time; thread-safe, call it from an executor."""

    def __init__(
        self,
        catalog: Catalog,
        buffer: Buffer,
        manifest: Manifest,
        parquet_root: Path,
        view_lock: Any,
        limits: QueryLimits,
    ) -> None:
        self.catalog, self.buffer, self.manifest = catalog, buffer, manifest
        self.parquet_root = parquet_root
        self.view_lock = view_lock
        self.limits = limits
        self._rewrites: dict[
            TableKey, tuple[weakref.ref[pa.Table], tuple[str, ...], list[ParquetFile], pa.Table | None]
        ] = {}
        self._rewrites_lock = threading.Lock()
        #: Later stages (the engine) add their own system tables: name -> table, for a database and
        #: whether the caller may see the rows of every database (an admin) or only that one's.
        self.system_providers: list[Callable[[str, bool], dict[str, pa.Table]]] = []
        self._stopping = threading.Event()
        self._guarded: list[Any] | None = None

    def execute(
        self, db_name: str, sql: str, params: dict[str, Any] | None = None, *, every_database: bool
    ) -> pa.Table:
        """Run one read-only SQL statement; raises QueryError (400/408/413/503) or DatabaseNotFound (404).
        Without `every_database`, system tables hold only rows of `db_name` (a resource token)."""
        if self._stopping.is_set():
            raise QueryError(f"query refused: {SHUTTING_DOWN}", http_status=503)
        check_sql(sql, self.limits.max_sql_bytes)
        db = self.catalog.get(db_name)
        if db is None:
            raise DatabaseNotFound(f"query error: database not found: {db_name}")
        started = time.monotonic()
        deadline = started + self.limits.timeout_ns / 1e9
        outcome = "error"
        ctx = df = None
        try:
            # Pinned: DataFusion opens the files while it runs, after the view was taken.
            with self.manifest.pinned():
                ctx = self._context(db, every_database)
                df = ctx.sql_with_options(sql, _read_only(), param_values=_bind(params) if params else None)
                check_sizes(df.logical_plan().display_indent(), value_budget(self.limits.memory_bytes))
                result = self._collect(df, deadline)
                outcome = "ok"
                return result
        except ApplianceError as e:
            log.info("query failed: db=%s status=%d %s", db_name, e.http_status, e.message)
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # DataFusion raises Exceptions, and PanicException (a BaseException)
            error = _query_error(e, self.limits)
            log.info("query failed: db=%s status=%d %s", db_name, error.http_status, error.message)
            raise error from None
        finally:
            df = ctx = None  # drop DataFusion's plan and session here, not with a traceback later
            QUERIES.inc(outcome=outcome)
            QUERY_SECONDS.observe(time.monotonic() - started)

    def close(self) -> None:
        """Cancel every running query (they answer 503) and refuse new ones: the server is stopping."""
        self._stopping.set()

    def _collect(self, df: Any, deadline: float) -> pa.Table:
        """Pull the result's batches until the deadline; at the deadline the engine stops too."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._pull(df, deadline)
        # A plugin calling query() from inside its own asyncio loop: pull on a helper thread.
        box: list[Any] = []
        helper = threading.Thread(target=lambda: box.append(_outcome(self._pull, df, deadline)))
        helper.start()
        helper.join()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _pull(self, df: Any, deadline: float) -> pa.Table:
        schema = df.schema()
        batches: list[pa.RecordBatch] = []
        size = 0
        loop = asyncio.new_event_loop()
        stream = df.execute_stream()
        try:
            while (batch := self._next(loop, stream, deadline)) is not None:
                size += batch.nbytes
                if size > self.limits.max_result_bytes:
                    raise QueryTooLarge(
                        f"query result exceeds {self.limits.max_result_bytes} bytes (query.max_result_bytes);"
                        " add a LIMIT, aggregate, or narrow the time range"
                    )
                batches.append(batch)
        finally:
            stream = None  # dropping the stream aborts DataFusion's tasks for it
            loop.close()
        if not batches:
            return schema.empty_table()  # type: ignore[no-any-return]
        # The batches' own schema: the plan's may declare a column nullable that a function's
        # batches mark not null (`SELECT upper('x')`); the types are the same either way.
        first = batches[0].schema
        if all(batch.schema.equals(first) for batch in batches[1:]):
            return pa.Table.from_batches(batches, schema=first)
        return pa.Table.from_batches(
            [pa.RecordBatch.from_arrays(batch.columns, schema=schema) for batch in batches], schema=schema
        )

    def _next(self, loop: asyncio.AbstractEventLoop, stream: Any, deadline: float) -> pa.RecordBatch | None:
        """The next batch, or None at the end; waits in short slices to see the deadline and close()."""
        task = loop.create_task(_next_batch(stream))
        stop: QueryError | None = None
        while not task.done() and stop is None:
            remaining = deadline - time.monotonic()
            if self._stopping.is_set():
                stop = QueryError(f"query cancelled: {SHUTTING_DOWN}", http_status=503)
            elif remaining <= 0:
                stop = QueryTimeout(timeout_message(self.limits))
            else:
                loop.run_until_complete(asyncio.wait([task], timeout=min(remaining, _POLL_SECONDS)))
        if stop is None:
            return task.result()
        # The binding drops its pending poll of the stream on the loop's next turns. The cancelled
        # task's traceback holds frames that reference the stream: nothing may keep the task, or
        # DataFusion's work goes on until a garbage collection.
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        del stream, task
        try:
            raise stop
        finally:
            del stop  # no cycle through this frame

    def _guards(self) -> list[Any]:
        """Size-checked replacements of builtins whose result grows with an argument's value.

        DataFusion's scalar functions allocate outside its memory pool: `repeat('x', 1e9)` alone
        took gigabytes. Registered under the builtin's name, these refuse first.
        """
        if self._guarded is None:
            from datafusion import udf

            def repeat(text: pa.Array, times: pa.Array) -> pa.Array:
                times = pc.max_element_wise(times, 0)
                lengths = pc.multiply(
                    pc.binary_length(text).cast(pa.float64()), pc.cast(times, pa.float64(), safe=False)
                )
                total = int(pc.sum(lengths).as_py() or 0)
                if total > self.limits.memory_bytes:
                    raise ValueError(
                        f"{_GUARD_MARK}repeat() would build {total} bytes, more than the query memory limit"
                        f" of {self.limits.memory_bytes} bytes (query.memory_limit)"
                    )
                return pc.binary_repeat(text, times)

            def replace(text: pa.Array, old: pa.Array, new: pa.Array) -> pa.Array:
                return _guarded_replace(text, old, new, self.limits.memory_bytes)

            string = pa.string()
            self._guarded = [
                udf(repeat, [string, pa.int64()], string, "immutable", name="repeat"),
                udf(replace, [string, string, string], string, "immutable", name="replace"),
            ]
        return self._guarded

    def _context(self, db: DatabaseDef, every_database: bool) -> SessionContext:
        # Imported on first query: DataFusion and datasets cost ~30 MB that an ingest-only
        # gateway never needs.
        import pyarrow.dataset as ds
        from datafusion import RuntimeEnvBuilder, SessionConfig, SessionContext
        from datafusion.catalog import Schema

        config = SessionConfig().with_information_schema(True).with_target_partitions(2)
        # No spilling: a gateway's disk holds the data; a query over its memory limit fails instead.
        runtime = (
            RuntimeEnvBuilder().with_disk_manager_disabled().with_fair_spill_pool(self.limits.memory_bytes)
        )
        ctx = SessionContext(config, runtime)
        for guarded in self._guards():
            ctx.register_udf(guarded)
        cutoff = time.time_ns() - db.retention_ns if db.retention_ns else None
        tables = dict(db.tables)

        def resolve(name: str) -> ds.Dataset | None:
            table = tables.get(name)
            if table is None:
                return None
            with self.view_lock:  # the table's files and buffer rows of one moment
                files = self.manifest.files(db.id, table.id)
                buffered = self.buffer.table((db.id, table.id), table.schema())
            return self._dataset(db, table, files, buffered, cutoff)

        # Tables resolve when the query names them: a query on one table does not pay for
        # the buffers of all the others. They still list as BASE TABLE in SHOW TABLES.
        ctx.catalog().register_schema("public", lazy_schema(sorted(tables), resolve))
        ctx.catalog().register_schema("system", Schema.memory_schema())
        extra = [provide(db.name, every_database) for provide in self.system_providers]
        for name, table in {
            k: v for d in [system_tables.build(self.manifest, db.id), *extra] for k, v in d.items()
        }.items():
            ctx.register_dataset(f"system.{name}", ds.dataset(table))
        return ctx

    def _dataset(
        self,
        db: DatabaseDef,
        table: TableDef,
        files: list[ParquetFile],
        buffered: pa.Table | None,
        cutoff: int | None,
    ) -> ds.Dataset:
        import pyarrow.dataset as ds

        schema = table.schema()
        parts: list[ds.Dataset] = []
        files = [f for f in files if cutoff is None or f.max_time >= cutoff]
        if buffered is not None and files:
            files, buffered = self._merge_rewrites((db.id, table.id), files, buffered, schema)
        if files:
            paths = [str(self.parquet_root / f.path) for f in files]
            parts.append(ds.dataset(paths, schema=schema, format="parquet"))
        if buffered is not None:
            if cutoff is not None:
                buffered = buffered.filter(
                    pc.greater_equal(buffered.column(TIME_COLUMN).cast(pa.int64()), cutoff)
                )
            parts.append(ds.dataset(buffered))
        if not parts:
            return ds.dataset(schema.empty_table())
        return parts[0] if len(parts) == 1 else ds.dataset(parts)

    def _merge_rewrites(
        self, key: TableKey, files: list[ParquetFile], buffered: pa.Table, schema: pa.Schema
    ) -> tuple[list[ParquetFile], pa.Table]:
        """Fold files holding points the buffer rewrote into the buffer rows, one copy each.

        Rare (a point written again after it was persisted), so the result is cached until
        the buffer or the file set changes; the next persist merges the files for good.
        """
        paths = tuple(f.path for f in files)
        with self._rewrites_lock:
            for stale in [k for k, v in self._rewrites.items() if v[0]() is None]:
                del self._rewrites[stale]  # its buffer rows were persisted meanwhile
            cached = self._rewrites.get(key)
        if cached is not None and cached[0]() is buffered and cached[1] == paths:
            hits, merged = cached[2], cached[3]
        else:
            hits = dedupe.colliding(self.parquet_root, files, buffered, schema)
            merged = dedupe.merge(self.parquet_root, hits, buffered, schema) if hits else None
            with self._rewrites_lock:  # a weak reference: never keeps released buffer rows alive
                self._rewrites[key] = (weakref.ref(buffered), paths, hits, merged)
        if merged is None:
            return files, buffered
        return [f for f in files if f not in hits], merged


def lazy_schema(names: list[str], resolve: Callable[[str], ds.Dataset | None]) -> Any:
    """A DataFusion schema whose tables are built on first use by `resolve`."""
    from datafusion.catalog import SchemaProvider, Table

    class LazySchema(SchemaProvider):
        def __init__(self) -> None:
            self._built: dict[str, Table | None] = {}

        def owner_name(self) -> str | None:
            return None

        # datafusion 55 declares a method returning a set, but its Rust side reads an attribute
        # holding a sequence: a property returning a list is what works.
        @property
        def table_names(self) -> list[str]:  # type: ignore[override]
            return names

        def table(self, name: str) -> Table | None:
            if name not in self._built:
                dataset = resolve(name)
                self._built[name] = Table(dataset) if dataset is not None else None
            return self._built[name]

        def table_exist(self, name: str) -> bool:
            return name in names

        def register_table(self, name: str, table: Any) -> None:
            raise QueryError("tables are created by writing to them, not by SQL")

        def deregister_table(self, name: str, cascade: bool = True) -> None:
            raise QueryError("tables are deleted with DELETE /api/v3/configure/table, not by SQL")

    return LazySchema()


def _bind(params: dict[str, Any]) -> dict[str, Any]:
    for name, value in params.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise QueryError(f"query parameter {name!r} must be a string, number, boolean or null")
    return dict(params)


def timeout_message(limits: QueryLimits) -> str:
    return (
        f"query exceeded its time limit of {limits.timeout_ns / 1e9:g}s (query.timeout);"
        " narrow the time range or raise the limit"
    )


def _read_only() -> Any:
    """DataFusion's options that refuse DDL (CREATE ...), DML (COPY, INSERT) and SET-like statements."""
    from datafusion import SQLOptions

    return SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


async def _next_batch(stream: Any) -> pa.RecordBatch | None:
    try:
        return (await stream.__anext__()).to_pyarrow()
    except StopAsyncIteration:
        return None


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except BaseException as e:  # handed to the calling thread, which raises it
        return False, e


#: Marks a guard's refusal inside the text DataFusion wraps around a Python exception.
_GUARD_MARK = "value limit: "


def _guarded_replace(text: pa.Array, old: pa.Array, new: pa.Array, limit: int) -> pa.Array:
    """DataFusion's replace(text, from, to), refused when the batch's result would exceed limit.

    One `from` of n bytes replaced by a `to` of m bytes grows the text by m - n per occurrence:
    the result's size is known before it is built. An empty `from` leaves the text as it is.
    """
    if old.null_count == 0 and new.null_count == 0 and len(text) and pc.count_distinct(old).as_py() == 1:
        if pc.count_distinct(new).as_py() == 1:
            pattern, replacement = old[0].as_py(), new[0].as_py()
            if pattern == "":
                return text  # (Arrow's replace_substring never ends on an empty pattern)
            found = int(pc.sum(pc.count_substring(text, pattern)).as_py() or 0)
            grown = len(replacement.encode()) - len(pattern.encode())
            total = int(pc.sum(pc.binary_length(text)).as_py() or 0) + found * max(grown, 0)
            _check_built("replace", total, limit)
            return pc.replace_substring(text, pattern, replacement)
    rows = list(zip(text.to_pylist(), old.to_pylist(), new.to_pylist(), strict=True))
    total = 0
    for value, pattern, replacement in rows:
        if value is not None and pattern and replacement is not None:
            total += len(value.encode()) + value.count(pattern) * max(
                len(replacement.encode()) - len(pattern.encode()), 0
            )
    _check_built("replace", total, limit)
    return pa.array(
        [
            None
            if value is None or pattern is None or replacement is None
            else value.replace(pattern, replacement)
            if pattern
            else value
            for value, pattern, replacement in rows
        ],
        pa.string(),
    )


def _check_built(name: str, total: int, limit: int) -> None:
    if total > limit:
        raise ValueError(
            f"{_GUARD_MARK}{name}() would build {total} bytes, more than the query memory limit of {limit}"
            " bytes (query.memory_limit)"
        )


_GUARD_ERROR = re.compile(re.escape(_GUARD_MARK) + r"(.*?)['\"]\)")
_REFUSED = re.compile(r"(?:DDL|DML|Statement) not supported: (\w[\w ]*)|Unsupported SQL statement: (\w+)")
#: Paths of the installation (site-packages, cargo registry) that DataFusion messages may carry.
_PATHS = re.compile(r"(?:/[\w.+-]+)+/(?:site-packages|\.cargo|registry)/\S*")
_PYERR = re.compile(r"PyErr \{ type: <class '([\w.]+)'>, value: \w+\((['\"])(.*?)\2\)")
_PREFIXES = ("DataFusion error: ", "External error: ", "Execution error: ")


def _query_error(e: BaseException, limits: QueryLimits) -> QueryError:
    """One clean line for the client: no traceback, no install paths."""
    text = str(e)
    if (refused := _REFUSED.search(text)) is not None:
        what = (refused.group(1) or refused.group(2) or "this statement").strip()
        return QueryError(
            f"queries are read-only: {what} is not allowed (only SELECT, WITH, EXPLAIN, SHOW and DESCRIBE run)"
        )
    if (guard := _GUARD_ERROR.search(text)) is not None:
        return QueryError(f"query refused: {guard.group(1)}")
    if "Resources exhausted" in text or "Memory Exhausted" in text:
        return QueryError(
            f"query exceeded its memory limit of {limits.memory_bytes} bytes (query.memory_limit);"
            " aggregate more, narrow the time range or raise the limit"
        )
    if (pyerr := _PYERR.search(text)) is not None:  # a Python UDF failed: its exception, not its traceback
        text = f"{pyerr.group(1).rsplit('.', 1)[-1]}: {pyerr.group(3)}"
    if type(e).__name__ == "PanicException":
        text = f"the SQL engine failed on this query ({text.splitlines()[0] if text else 'panic'})"
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(e).__name__)
    while line.startswith(_PREFIXES):
        line = next(line[len(p) :] for p in _PREFIXES if line.startswith(p))
    return QueryError(_PATHS.sub("<path>", line)[:1000])
