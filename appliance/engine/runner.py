"""The engine: runs triggers on WAL commits, on schedules and on HTTP requests.

WAL batches reach a trigger through its own bounded queue right after each group commit
(the WAL writer only enqueues; conversion and plugin code run on the trigger's thread). A
synchronous trigger handles one event at a time in order; an asynchronous one runs events
concurrently on a shared pool. When a synchronous trigger falls behind, the oldest queued
batches are dropped, counted and logged: writes are never held up by a plugin.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import BadRequest, Conflict, NotFound
from ..metrics import PLUGIN_DROPPED, PLUGIN_ERRORS, PLUGIN_RUNS, PLUGIN_SECONDS
from ..model import TIME_COLUMN, Precision, WalSeq
from ..query.service import QueryService
from ..storage.catalog import Catalog
from ..storage.store import Store
from ..storage.wal import WalEntry
from ..write import WriteRequest, WriteService
from . import tables
from .api import PluginApi, PluginCache, api_globals, own_copy
from .dryrun import DryRun
from .loader import PluginLoader, check_filename
from .packages import PackageInstaller
from .pool import DaemonPool
from .store import EngineLog, TriggerDef, TriggerStore, trigger_key
from .triggers import (
    Schedule,
    TriggerSpec,
    check_arguments,
    check_trigger_name,
    flask_response,
    parse_spec,
)

log = logging.getLogger("appliance.engine")

ENTRY_POINTS = {
    "wal": ("process_writes", "process_writes(influxdb3_local, table_batches, args=None)"),
    "schedule": ("process_scheduled_call", "process_scheduled_call(influxdb3_local, call_time, args=None)"),
    "request": (
        "process_request",
        "process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None)",
    ),
}
ERROR_BEHAVIORS = ("log", "retry", "disable")
ASYNC_WORKERS = 8


@dataclass(frozen=True)
class EngineArgs:
    plugin_dir: Path
    plugin_repo: str
    max_retries: int
    call_timeout_s: float
    cache_max_bytes: int
    queue_size: int
    package_manager: str = "pip"


@dataclass
class _Event:
    kind: str
    payload: Any
    skipped: int = 0


@dataclass
class _Running:
    """A started trigger: its definition, parsed spec, queue and worker."""

    trigger: TriggerDef
    spec: TriggerSpec
    queue: deque[_Event] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stopped: bool = False
    dropped: int = 0
    dropped_logged: int = 0
    in_flight: int = 0
    thread: threading.Thread | None = None


class Engine:
    """Owns the triggers: their definitions, running state, plugin calls and logs."""

    def __init__(
        self, args: EngineArgs, store: Store, catalog: Catalog, writes: WriteService, queries: QueryService
    ) -> None:
        self.args = args
        self.catalog, self.writes, self.queries = catalog, writes, queries
        self.store = TriggerStore(store)
        self.logs = EngineLog(store)
        self.cache = PluginCache(args.cache_max_bytes)
        args.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.loader = PluginLoader(args.plugin_dir, args.plugin_repo, api_globals())
        self.dry_run = DryRun(self.loader, self.cache, catalog, queries)
        self.packages = PackageInstaller(args.plugin_dir, args.package_manager)
        self._lock = threading.RLock()
        self._triggers: dict[str, TriggerDef] = {t.key: t for t in self.store.load()}
        self._running: dict[str, _Running] = {}
        self._paths: dict[str, _Running] = {}  # request path -> the running trigger serving it
        self._path_owners: dict[str, str] = {}  # request path -> key of the trigger it belongs to
        self._index_paths()
        self._pool = DaemonPool(ASYNC_WORKERS, "plugin")  # asynchronous WAL and schedule calls
        self.request_pool = DaemonPool(ASYNC_WORKERS, "request-plugin")  # request triggers and dry runs
        self._schedule: list[tuple[int, int, _Running]] = []  # (fire ns, tie-breaker, the run it belongs to)
        self._tick = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self._active: dict[int, tuple[float, TriggerDef, bool]] = {}  # calls in flight, for the watchdog
        self._call_ids = itertools.count()
        self._watch_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        """Start every enabled trigger, the scheduler and the log flusher."""
        for t in list(self._triggers.values()):
            if not t.disabled:
                try:
                    self.loader.resolve(t.plugin_filename)
                    self._start(t)
                except Exception as e:
                    self.logs.add(t.database, t.name, "ERROR", f"trigger did not start: {e}")
        for target, name in ((self._run_schedule, "scheduler"), (self._run_log_flush, "engine-logs")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop triggers (running calls get `grace_s` to finish) and flush the log ring."""
        self._stop.set()
        with self._tick:
            self._tick.notify_all()
        for run in list(self._running.values()):
            self._halt(run)
        deadline = time.monotonic() + grace_s
        for run in list(self._running.values()):
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown()
        self.request_pool.shutdown()
        with self._lock:
            self._running.clear()
            self._paths.clear()
        for th in self._threads:
            th.join(2)
        self.logs.flush()

    # -- trigger management --------------------------------------------------
    def create_trigger(self, trigger: TriggerDef) -> None:
        """Validate, persist and (unless disabled) start a trigger."""
        check_trigger_name(trigger.name)
        check_arguments(trigger.arguments)
        spec = parse_spec(trigger.spec)
        if trigger.error_behavior not in ERROR_BEHAVIORS:
            raise BadRequest(f"invalid error_behavior {trigger.error_behavior!r}: use log, retry or disable")
        if self.catalog.get(trigger.database) is None:
            raise NotFound(f"Database not found {trigger.database}")
        self.loader.fetch(trigger.plugin_filename)  # checks the filename first
        trigger = replace(trigger, spec=spec.text)
        with self._lock:
            if trigger.key in self._triggers:
                raise Conflict("attempted to create a resource that already exists")
            self._check_path_free(spec)
            self.store.put(trigger)
            self._triggers[trigger.key] = trigger
            if spec.path is not None:
                self._path_owners[spec.path] = trigger.key
            if not trigger.disabled:
                self._start(trigger)

    def _check_path_free(self, spec: TriggerSpec) -> None:
        """One request path, one trigger: a second one would silently take the path over."""
        owner = self._path_owners.get(spec.path) if spec.path is not None else None
        if owner is not None:
            other = self._triggers[owner]
            raise Conflict(
                f"request path {spec.path!r} is already served by trigger {other.name!r} in database"
                f" {other.database!r}; delete that trigger or choose another path"
            )

    def _index_paths(self) -> None:
        """Rebuild path -> trigger key: the one trigger each request path belongs to.

        Running triggers first, then enabled ones, so a path two definitions stored by an older
        version both claim stays with the one that serves it. A stored spec that no longer
        parses claims no path: it must not block every new request trigger.
        """
        owners: dict[str, str] = {}
        order = sorted(self._triggers.values(), key=lambda t: (t.key not in self._running, t.disabled))
        for t in order:
            path = _spec_path(t.spec)
            if path is not None:
                owners.setdefault(path, t.key)
        self._path_owners = owners

    def set_disabled(self, database: str, name: str, disabled: bool) -> None:
        """Enable or disable a trigger; the catalog and the running state agree afterwards."""
        with self._lock:
            trigger = self._require(database, name)
            if trigger.disabled != disabled:
                trigger = replace(trigger, disabled=disabled)
                self.store.put(trigger)
                self._triggers[trigger.key] = trigger
            if disabled:
                self._stop_trigger(trigger.key)
            elif trigger.key not in self._running:
                self.loader.resolve(trigger.plugin_filename)
                self._start(trigger)

    def delete_trigger(self, database: str, name: str, force: bool) -> None:
        with self._lock:
            trigger = self._require(database, name)
            if not trigger.disabled and not force:
                raise BadRequest(f"Cannot delete running plugin {name}. Disable it first or use --force.")
            self._stop_trigger(trigger.key)
            self.store.delete(trigger)
            del self._triggers[trigger.key]
            self._index_paths()

    def drop_database(self, db_id: int, table_id: int | None, name: str | None = None) -> None:
        """Catalog drop listener: a deleted database takes its triggers with it."""
        if table_id is not None:
            return
        live = {d.name for d in self.catalog.databases()}
        with self._lock:
            for trigger in [t for t in self._triggers.values() if t.database not in live]:
                self._stop_trigger(trigger.key)
                self.store.delete(trigger)
                del self._triggers[trigger.key]
            self._index_paths()

    def triggers(self, database: str | None = None) -> list[TriggerDef]:
        with self._lock:
            return sorted(
                (t for t in self._triggers.values() if database in (None, t.database)),
                key=lambda t: (t.database, t.name),
            )

    def _require(self, database: str, name: str) -> TriggerDef:
        trigger = self._triggers.get(trigger_key(database, name))
        if trigger is None:
            raise NotFound(f"trigger {name!r} not found in database {database!r}")
        return trigger

    def _start(self, trigger: TriggerDef) -> None:
        """Run a trigger whose plugin file the caller has resolved (or fetched) just before."""
        spec = parse_spec(trigger.spec)
        owner = self._path_owners.get(spec.path) if spec.path is not None else None
        if owner is not None and owner != trigger.key:  # two definitions stored by an older version
            holder = self._triggers[owner]
            raise Conflict(
                f"request path {spec.path!r} is already served by trigger {holder.name!r}"
                f" in database {holder.database!r}"
            )
        run = _Running(trigger, spec)
        self._running[trigger.key] = run
        if spec.kind == "request":
            assert spec.path is not None
            self._paths[spec.path] = run
            return
        if not trigger.run_async:
            run.thread = threading.Thread(
                target=self._work, args=(run,), name=f"trigger-{trigger.name}", daemon=True
            )
            run.thread.start()
        if spec.kind == "schedule":
            self._plan(run, time.time_ns())

    def _stop_trigger(self, key: str) -> None:
        run = self._running.pop(key, None)
        if run is None:
            return
        self._halt(run)
        if run.spec.path is not None and self._paths.get(run.spec.path) is run:
            del self._paths[run.spec.path]
        self.loader.forget(key)
        self.cache.drop_namespace(key)

    def _halt(self, run: _Running) -> None:
        with run.cond:
            run.stopped = True
            run.cond.notify_all()

    # -- WAL trigger events --------------------------------------------------
    def on_commit(self, entries: list[tuple[WalSeq, WalEntry]]) -> None:
        """WAL listener: queue each database's entries to its WAL triggers (no plugin code here)."""
        if self._stop.is_set():
            return
        try:
            for run in list(self._running.values()):
                if run.spec.kind != "wal":
                    continue
                mine = [e for _, e in entries if e.db == run.trigger.database and e.origin != run.trigger.key]
                if mine:
                    self._submit(run, _Event("wal", mine))
        except Exception:  # on the WAL writer thread: a bug here must not stop the server
            log.exception("could not hand a WAL batch to the triggers")

    def _submit(self, run: _Running, event: _Event) -> None:
        if run.trigger.run_async:
            with run.cond:
                if run.in_flight >= self.args.queue_size:  # bounded backlog for async triggers too
                    run.dropped += 1
                    PLUGIN_DROPPED.inc(1, **_labels(run.trigger))
                    return
                run.in_flight += 1
            self._pool.submit(self._call_async, run, event)
            return
        with run.cond:
            if event.kind == "schedule" and any(e.kind == "schedule" for e in run.queue):
                pending = next(e for e in run.queue if e.kind == "schedule")
                pending.payload, pending.skipped = event.payload, pending.skipped + 1 + event.skipped
                return
            if len(run.queue) >= self.args.queue_size:
                run.queue.popleft()
                run.dropped += 1  # logged by the flusher thread, not on the WAL writer thread
                PLUGIN_DROPPED.inc(1, **_labels(run.trigger))
            run.queue.append(event)
            run.cond.notify()

    def _call_async(self, run: _Running, event: _Event) -> None:
        try:
            self._call(run, event)
        finally:
            with run.cond:
                run.in_flight -= 1

    def _work(self, run: _Running) -> None:
        while True:
            with run.cond:
                while not run.queue and not run.stopped:
                    run.cond.wait()
                if run.stopped:
                    return
                event = run.queue.popleft()
            self._call(run, event)

    # -- schedules -----------------------------------------------------------
    def _plan(self, run: _Running, after_ns: int) -> None:
        schedule = Schedule(run.spec)
        with self._tick:
            self._seq += 1
            heapq.heappush(self._schedule, (schedule.next_after(after_ns), self._seq, run))
            self._tick.notify()

    def _run_schedule(self) -> None:
        while not self._stop.is_set():
            with self._tick:
                now = time.time_ns()
                if not self._schedule:
                    self._tick.wait(1.0)
                    continue
                fire, _, run = self._schedule[0]
                if fire > now:
                    self._tick.wait(min((fire - now) / 1e9, 1.0))
                    continue
                heapq.heappop(self._schedule)
            if run.stopped or self._running.get(run.trigger.key) is not run:
                continue  # disabled, deleted or restarted since: its own schedule chain ends here
            last, skipped = Schedule(run.spec).due(fire - 1, now)
            self._submit(run, _Event("schedule", last, skipped))
            self._plan(run, max(now, last))

    # -- requests ------------------------------------------------------------
    def is_public(self, path: str) -> bool:
        """True when the request trigger at `path` was created without auth (local webhooks)."""
        run = self._paths.get(path)
        return run is not None and run.trigger.no_auth

    def handle_request(
        self, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Run the request trigger at `path` and shape its return value as an HTTP response."""
        run = self._paths.get(path)
        if run is None or run.stopped:
            return 404, {"Content-Type": "application/json"}, b'{"error":"not found"}'
        if self.catalog.get(run.trigger.database) is None:
            return 500, {"Content-Type": "application/json"}, b'{"error":"database not found"}'
        future: Future[Any] = self.request_pool.submit(
            self._call, run, _Event("request", (query, headers, body))
        )
        try:
            result = future.result(timeout=self.args.call_timeout_s)
        except FutureTimeout:
            if not future.cancel():  # already running: it finishes, and its writes still land
                self.logs.add(
                    run.trigger.database,
                    run.trigger.name,
                    "WARN",
                    "the request got 504 but the plugin is still running; its writes will be kept",
                )
            self.logs.add(
                run.trigger.database, run.trigger.name, "ERROR", "request plugin exceeded engine.call_timeout"
            )
            return (
                504,
                {"Content-Type": "application/json"},
                _error_json("the plugin did not answer within engine.call_timeout"),
            )
        if isinstance(result, _Failure):
            return 500, {"Content-Type": "application/json"}, _error_json(result.message)
        try:
            return flask_response(result)
        except ValueError as e:
            self.logs.add(run.trigger.database, run.trigger.name, "ERROR", str(e))
            return 500, {"Content-Type": "application/json"}, _error_json(str(e))

    def test_plugin(
        self,
        kind: str,
        filename: str,
        database: str,
        given: str | None,
        arguments: dict[str, str] | None,
        cache_name: Any = None,
    ) -> dict[str, Any]:
        """A dry run (`wal` or `schedule`) on the request pool, within engine.call_timeout."""
        check_filename(filename)
        check_arguments(arguments)
        if cache_name is not None and not isinstance(cache_name, str):
            raise BadRequest("'cache_name' must be a string")
        if cache_name:
            check_trigger_name(cache_name, "cache_name")
        run = self.dry_run.wal if kind == "wal" else self.dry_run.schedule
        future = self.request_pool.submit(run, filename, database, given, arguments, cache_name)
        try:
            result: dict[str, Any] = future.result(timeout=self.args.call_timeout_s)
        except FutureTimeout:
            future.cancel()
            return {
                "log_lines": [],
                "database_writes": {},
                "errors": ["the plugin did not finish within engine.call_timeout"],
            }
        return result

    # -- calling plugins -----------------------------------------------------
    def _call(self, run: _Running, event: _Event) -> Any:
        """One plugin invocation with the trigger's error behaviour; returns the entry point's value."""
        attempts = 1 + (
            self.args.max_retries if run.trigger.error_behavior == "retry" and event.kind != "request" else 0
        )
        delay = 0.5
        for attempt in range(1, attempts + 1):
            outcome = self._invoke(run, event)
            if not isinstance(outcome, _Failure):
                return outcome
            if attempt < attempts and not run.stopped:
                self.logs.add(
                    run.trigger.database,
                    run.trigger.name,
                    "WARN",
                    f"retrying in {delay:g}s (attempt {attempt + 1} of {attempts})",
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        if event.kind != "request" and run.trigger.error_behavior == "disable" and not run.stopped:
            self._halt(run)  # no further queued events run
            self.logs.add(
                run.trigger.database,
                run.trigger.name,
                "ERROR",
                "disabling the trigger after the error (error_behavior=disable)",
            )
            threading.Thread(target=self._disable_quietly, args=(run,), daemon=True).start()
        elif attempts > 1:
            self.logs.add(
                run.trigger.database, run.trigger.name, "ERROR", f"failed after {attempts} attempts"
            )
        return outcome

    def _disable_quietly(self, run: _Running) -> None:
        trigger = run.trigger
        try:
            with self._lock:
                if self._running.get(trigger.key) is run:  # not a trigger re-created meanwhile
                    self.set_disabled(trigger.database, trigger.name, True)
        except Exception:
            log.exception("could not disable trigger %s", trigger.key)

    def _invoke(self, run: _Running, event: _Event) -> Any:
        trigger = run.trigger
        fn_name, signature = ENTRY_POINTS[run.spec.kind]
        api = PluginApi(trigger.database, _Hooks(self, trigger), self.cache.namespace(trigger.key))
        started = time.monotonic()
        call_id = self._watch(trigger, started)
        try:
            module = self.loader.module(trigger.key, trigger.plugin_filename)
            fn = getattr(module, fn_name, None)
            if not callable(fn):
                raise _MissingEntryPoint(
                    f"the {fn_name} function is not present in the plugin. Should be defined as: {signature}"
                )
            self.logs.add(trigger.database, trigger.name, "INFO", _start_text(event))
            result = fn(api, *self._arguments(run, event), own_copy(trigger.arguments))
        except BaseException as e:  # SystemExit and friends too: a plugin never stops the server
            api.discard_writes()
            PLUGIN_ERRORS.inc(1, **_labels(trigger))
            text = _error_text(e)
            self.logs.add(trigger.database, trigger.name, "ERROR", text)
            return _Failure(("Python function call failed: " if event.kind == "request" else "") + text)
        finally:
            with self._watch_lock:
                self._active.pop(call_id, None)
            PLUGIN_RUNS.inc(1, **_labels(trigger))
            PLUGIN_SECONDS.observe(time.monotonic() - started, **_labels(trigger))
        self._write_back(trigger, api.take_writes())
        self.logs.add(
            trigger.database,
            trigger.name,
            "INFO",
            f"finished execution in {_duration(time.monotonic() - started)}",
        )
        return result

    def _arguments(self, run: _Running, event: _Event) -> tuple[Any, ...]:
        if event.kind == "wal":
            return (table_batches(event.payload, run.spec.table),)
        if event.kind == "schedule":
            if event.skipped:
                self.logs.add(
                    run.trigger.database,
                    run.trigger.name,
                    "WARN",
                    f"{event.skipped} scheduled call(s) skipped: the previous run was still going",
                )
            return (Schedule(run.spec).call_time(event.payload),)
        return event.payload  # (query parameters, headers, body)

    def _write_back(self, trigger: TriggerDef, writes: dict[str, list[str]]) -> None:
        for db, lines in writes.items():
            try:
                self._write(trigger, db, "\n".join(lines), no_sync=False)
            except Exception as e:
                self.logs.add(
                    trigger.database, trigger.name, "ERROR", f"error writing back lines to {db}: {e}"
                )

    def _write(self, trigger: TriggerDef, db: str, lines: str, no_sync: bool) -> None:
        report = self.writes.submit(
            WriteRequest(
                db,
                lines.encode(),
                Precision.NS,
                accept_partial=False,
                no_sync=no_sync,
                origin=trigger.key,
                protocol="plugin",
            )
        )
        if report.committed is not None:
            report.committed.result()

    # -- system tables and the log flusher -----------------------------------
    def system_tables(self, database: str) -> dict[str, pa.Table]:
        """`plugin_files`, `processing_engine_logs`, `_triggers` and `_trigger_arguments` of one database."""
        return tables.build(self.args.plugin_dir, self.triggers(database), lambda: self.logs.table(database))

    def health(self) -> dict[str, Any]:
        """The engine's part of /health: triggers running, dropped batches, cache use."""
        with self._lock:
            running = list(self._running.values())
        return {
            "status": "ok",
            "triggers_running": len(running),
            "batches_dropped": sum(r.dropped for r in running),
            "cache": self.cache.stats(),
        }

    def _watch(self, trigger: TriggerDef, started: float) -> int:
        call_id = next(self._call_ids)
        with self._watch_lock:
            self._active[call_id] = (started, trigger, False)
        return call_id

    def _warn_overdue(self) -> None:
        """Log, once per call, every plugin call running past engine.call_timeout."""
        now = time.monotonic()
        with self._watch_lock:
            overdue = [
                (k, t)
                for k, (s, t, warned) in self._active.items()
                if not warned and now - s > self.args.call_timeout_s
            ]
            for k, t in overdue:
                self._active[k] = (self._active[k][0], t, True)
        for _, t in overdue:
            self.logs.add(t.database, t.name, "WARN", "the call is still running after engine.call_timeout")

    def _report_drops(self) -> None:
        for run in list(self._running.values()):
            if run.dropped > run.dropped_logged:
                self.logs.add(
                    run.trigger.database,
                    run.trigger.name,
                    "WARN",
                    f"trigger is behind: dropped {run.dropped - run.dropped_logged} of its oldest queued batches"
                    f" ({run.dropped} so far; engine.queue_size={self.args.queue_size})",
                )
                run.dropped_logged = run.dropped

    def _run_log_flush(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._report_drops()
                self._warn_overdue()
                self.logs.flush()
            except Exception:
                log.exception("could not store engine log lines")


class _Hooks:
    """What the plugin API may ask of the engine, for one trigger."""

    def __init__(self, engine: Engine, trigger: TriggerDef) -> None:
        self.engine, self.trigger = engine, trigger

    def log(self, level: str, text: str) -> None:
        self.engine.logs.add(self.trigger.database, self.trigger.name, level, text)

    def write_lines(self, db: str, lines: str, no_sync: bool) -> None:
        self.engine._write(self.trigger, db, lines, no_sync)

    def query(self, db: str, sql: str, params: dict[str, Any] | None) -> pa.Table:
        return self.engine.queries.execute(db, sql, params)


@dataclass
class _Failure:
    message: str


class _MissingEntryPoint(Exception):
    pass


def table_batches(entries: list[WalEntry], only_table: str | None) -> list[dict[str, Any]]:
    """WAL entries as `process_writes` receives them: per table, rows as dicts, absent columns omitted."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        for rows in entry.tables:
            if only_table is not None and rows.table != only_table:
                continue
            tables.setdefault(rows.table, []).extend(_rows(rows.batch))
    return [{"table_name": name, "rows": rows} for name, rows in tables.items()]


def _rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    names = batch.schema.names
    columns = []
    for name, col in zip(names, batch.columns, strict=True):
        if name == TIME_COLUMN or pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        columns.append(col.to_pylist())
    return [
        {n: v for n, v in zip(names, values, strict=True) if v is not None}
        for values in zip(*columns, strict=True)
    ]


def _start_text(event: _Event) -> str:
    if event.kind == "wal":
        return "starting execution of wal plugin."
    if event.kind == "schedule":
        return f"starting execution with scheduled time {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(event.payload / 1e9))}"
    return "starting execution of request plugin."


def _error_text(e: BaseException) -> str:
    if isinstance(e, _MissingEntryPoint):
        return str(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def _spec_path(spec: str) -> str | None:
    """The request path a stored spec serves; None for other kinds and for specs that no longer parse."""
    try:
        return parse_spec(spec).path
    except Exception:
        return None


def _labels(trigger: TriggerDef) -> dict[str, str]:
    """Metric labels of a trigger: database and name apart, so `x/y`+`z` and `x`+`y/z` stay two series."""
    return {"database": trigger.database, "trigger": trigger.name}


def _error_json(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _duration(seconds: float) -> str:
    ms, us = divmod(int(seconds * 1_000_000), 1000)
    s, ms = divmod(ms, 1000)
    parts = [f"{s}s"] if s else []
    if ms:
        parts.append(f"{ms}ms")
    parts.append(f"{us}us")
    return " ".join(parts)
