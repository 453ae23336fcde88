"""The engine: runs triggers on WAL commits, on schedules and on HTTP requests.

`Engine` is the facade the app and the HTTP handlers use; it wires the parts together:
`registry` (definitions, running state, request paths), `fanout` (WAL batches to each
trigger's queue and worker), `schedule` (the scheduler thread), `calls` (one plugin call with
retries and error behaviour), `watchdog` (overdue calls, dropped batches) and the plugin log
ring (`store.EngineLog`), flushed to LMDB by its own loop. Every background loop is a
`BackgroundLoop`, and `health()` reports the worst of them, with the error.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import metrics
from ..errors import BadRequest
from ..model import WalSeq
from ..query.service import QueryService
from ..storage.catalog import Catalog
from ..storage.store import Store
from ..storage.wal import WalEntry
from ..threads import BackgroundLoop, DaemonPool
from ..write import WriteService
from . import tables
from .api import api_globals
from .cache import PluginCache
from .calls import CallContext, Calls
from .dryrun import DryRun
from .fanout import Fanout
from .loader import PluginLoader, check_filename
from .packages import PackageInstaller
from .registry import Registry, Running
from .responses import RequestResult
from .schedule import Scheduler
from .store import EngineLog, TriggerDef, TriggerStore
from .triggers import check_arguments, check_trigger_name
from .watchdog import Watchdog

log = logging.getLogger("appliance.engine")

ASYNC_WORKERS = 8
LOG_FLUSH_INTERVAL_S = 1.0
_STATES = ("failed", "degraded", "ok")


@dataclass(frozen=True)
class EngineArgs:
    """The engine's settings as plain values (from the config's engine section)."""

    plugin_dir: Path
    plugin_repo: str
    max_retries: int
    call_timeout_s: float
    cache_max_bytes: int
    queue_size: int
    package_manager: str = "pip"


class Engine:
    """Owns the triggers: their definitions, running state, plugin calls and logs."""

    name = "engine"

    def __init__(
        self, args: EngineArgs, store: Store, catalog: Catalog, writes: WriteService, queries: QueryService
    ) -> None:
        self.args = args
        self.catalog, self.writes, self.queries = catalog, writes, queries
        self.logs = EngineLog(store)
        self.cache = PluginCache(args.cache_max_bytes)
        args.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.loader = PluginLoader(args.plugin_dir, args.plugin_repo, api_globals())
        self.dry_run = DryRun(self.loader, self.cache, catalog, queries)
        self.packages = PackageInstaller(args.plugin_dir, args.package_manager)
        self.registry = Registry(TriggerStore(store), catalog, self.loader, self)
        self._pool = DaemonPool(ASYNC_WORKERS, "plugin")  # asynchronous WAL and schedule calls
        self.request_pool = DaemonPool(ASYNC_WORKERS, "request-plugin")  # request triggers and dry runs
        self.watchdog = Watchdog(args.call_timeout_s, args.queue_size, self.logs, self.registry.running)
        self.calls = Calls(
            CallContext(
                self.logs,
                self.loader,
                self.cache,
                writes,
                queries,
                self.watchdog,
                args.max_retries,
                self.registry.disable_run,
            )
        )
        self.fanout = Fanout(args.queue_size, self._pool, self.calls.call, self.registry.running)
        self.scheduler = Scheduler(self.fanout.submit, self.registry.is_current)
        # Retried every second while failing (a full disk), as before; only the log lines are rate-limited.
        self._log_flusher = BackgroundLoop(
            "engine-logs",
            self.logs.flush,
            LOG_FLUSH_INTERVAL_S,
            log,
            backoff_min=LOG_FLUSH_INTERVAL_S,
            backoff_max=LOG_FLUSH_INTERVAL_S,
        )
        self._loops = (self.scheduler.loop, self._log_flusher, self.watchdog.loop)
        self._stopping = False

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        """Start every enabled trigger, the scheduler, the log flusher and the watchdog."""
        for t, e in self.registry.start_all():
            self.logs.add(t.database, t.name, "ERROR", f"trigger did not start: {e}")
        for loop in self._loops:
            loop.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop triggers (running calls get `grace_s` to finish) and flush the log ring."""
        self._stopping = True
        self.scheduler.loop.stop(2)
        runs = self.registry.halt_all()
        deadline = time.monotonic() + grace_s
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown()
        self.request_pool.shutdown()
        for loop in self._loops:
            loop.stop(2)
        self.logs.flush()

    def run_started(self, run: Running) -> None:
        """A trigger was registered as running: its worker (synchronous triggers) and its schedule."""
        if run.spec.kind == "request":
            return
        if not run.trigger.run_async:
            self.fanout.start_worker(run)
        if run.spec.kind == "schedule":
            self.scheduler.plan(run, time.time_ns())

    def run_stopped(self, run: Running) -> None:
        """A trigger stopped: its module instance and its cache namespace go."""
        self.loader.forget(run.trigger.key)
        self.cache.drop_namespace(run.trigger.key)

    # -- trigger management --------------------------------------------------
    def create_trigger(self, trigger: TriggerDef) -> None:
        """Validate, persist and (unless disabled) start a trigger."""
        self.registry.create(trigger)

    def set_disabled(self, database: str, name: str, disabled: bool) -> None:
        """Enable or disable a trigger; the catalog and the running state agree afterwards."""
        self.registry.set_disabled(database, name, disabled)

    def delete_trigger(self, database: str, name: str, force: bool) -> None:
        """Delete a trigger (a running one only with `force`)."""
        self.registry.delete(database, name, force)

    def drop_database(self, db_id: int, table_id: int | None, name: str | None = None) -> None:
        """Catalog drop listener: a deleted database takes its triggers with it."""
        self.registry.drop_database(db_id, table_id, name)

    def triggers(self, database: str | None = None) -> list[TriggerDef]:
        """Trigger definitions of one database (all when None)."""
        return self.registry.triggers(database)

    # -- events --------------------------------------------------------------
    def on_commit(self, entries: list[tuple[WalSeq, WalEntry]]) -> None:
        """WAL listener: queue each database's entries to its WAL triggers (no plugin code here)."""
        if not self._stopping:
            self.fanout.on_commit(entries)

    def request_trigger(self, path: str) -> TriggerDef | None:
        """The request trigger serving `path`, if any (its database and no_auth decide who may call it)."""
        run = self.registry.serving(path)
        return run.trigger if run is not None else None

    def handle_request(
        self,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        expected: TriggerDef | None = None,
    ) -> RequestResult:
        """Run the request trigger at `path`: its shaped reply, or why there is none. With `expected`,
        only that trigger runs (the one whose caller was checked, not one swapped in meanwhile)."""
        run = self.registry.serving(path)
        if run is None or run.stopped or (expected is not None and run.trigger is not expected):
            return RequestResult("no_trigger")
        if self.catalog.get(run.trigger.database) is None:
            return RequestResult("no_database")
        return self.calls.request(run, (query, headers, body), self.request_pool, self.args.call_timeout_s)

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

    # -- reporting -----------------------------------------------------------
    def system_tables(self, database: str, every_database: bool) -> dict[str, pa.Table]:
        """`plugin_files`, `processing_engine_logs`, `_triggers` and `_trigger_arguments` of one database;
        without `every_database`, `plugin_files` lists only the plugins of that database's triggers."""
        triggers = self.triggers(database)
        used = None if every_database else {t.plugin_filename for t in triggers}
        return tables.build(self.args.plugin_dir, triggers, lambda: self.logs.table(database), used)

    def register_metrics(self, registry: metrics.Registry) -> None:
        """The plugin cache gauges /metrics reads when scraped."""
        cache = self.cache
        g = registry.gauge
        g("appliance_plugin_cache_bytes", "Bytes held by the plugin cache.", lambda: cache.stats()["bytes"])
        g(
            "appliance_plugin_cache_evictions_total",
            "Plugin cache entries evicted at the cap.",
            lambda: cache.stats()["evictions"],
            kind="counter",
        )

    def health(self) -> dict[str, Any]:
        """The engine's part of /health: the worst of its loops (with their errors), triggers, cache."""
        running = self.registry.running()
        loops = {loop.name: loop.health() for loop in self._loops}
        status = next(s for s in _STATES if s in {h["status"] for h in loops.values()} | {"ok"})
        out: dict[str, Any] = {"status": status}
        if status != "ok":
            out["error"] = "; ".join(f"{n}: {h['error']}" for n, h in loops.items() if h["status"] != "ok")
        return out | {
            "triggers_running": len(running),
            "batches_dropped": sum(r.dropped for r in running),
            "cache": self.cache.stats(),
        }
