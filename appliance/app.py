"""Composition root: builds the components in flow order and stops them in reverse."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import platform
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from . import log as log_module
from .auth import Tokens, bootstrap_admin
from .component import Component, Health, worst
from .config import SETTINGS, Config
from .engine.runner import Engine, EngineArgs
from .errors import ConfigError
from .metrics import REGISTRY, Registry
from .mqtt.ingest import MqttIngest
from .query.service import QueryLimits, QueryService
from .storage.budget import DiskBudget
from .storage.buffer import Buffer
from .storage.catalog import Catalog, CatalogLimits
from .storage.manifest import Manifest
from .storage.persist import PersistArgs, Persister
from .storage.store import Store
from .storage.wal import Wal
from .sync.backends import open_store
from .sync.queue import SyncQueue
from .sync.uploader import Syncer
from .threads import DaemonPool
from .write import Admission, WriteService

log = logging.getLogger("appliance.app")

#: Settings SIGHUP applies without a restart.
RELOADABLE = frozenset(
    {
        "server.log_filter",
        "server.log_format",
        "query.memory_limit",
        "query.timeout",
        "query.max_result_bytes",
        "query.max_sql_bytes",
        "sync.bandwidth_limit",
        "sync.interval",
        "sync.retry_min",
        "sync.retry_max",
        "sync.stale_after",
        "storage.max_disk_bytes",
    }
)


@dataclass
class RequestPools:
    """The `http` component: the executors requests run on, drained at stop, and the query service."""

    write_pool: ThreadPoolExecutor
    query_pool: ThreadPoolExecutor
    admin_pool: ThreadPoolExecutor
    engine_pool: DaemonPool
    queries: QueryService
    name: str = "http"

    def start(self) -> None:
        """The pools start their threads on first use."""

    def stop(self) -> None:
        """Plugins first, then writes and catalog changes finish; running queries stop at their next poll."""
        self.engine_pool.shutdown()
        self.write_pool.shutdown(wait=True)
        self.admin_pool.shutdown(wait=True)
        self.queries.close()  # running queries stop at their next poll (0.1 s): nothing waits for them
        self.query_pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> Health:
        return {"status": "ok"}

    def register_metrics(self, registry: Registry) -> None:
        """The HTTP side's gauges are the connection guard's and the body budget's (lifecycle.py)."""


@dataclass
class App:
    """Every long-lived component of one appliance process."""

    config: Config
    store: Store
    wal: Wal
    catalog: Catalog
    buffer: Buffer
    manifest: Manifest
    persister: Persister
    writes: WriteService
    queries: QueryService
    tokens: Tokens
    pools: RequestPools
    engine: Engine
    mqtt: MqttIngest | None = None
    syncer: Syncer | None = None
    budget: DiskBudget | None = None
    #: The components with the common shape (component.Component), in flow order.
    components: list[Component] = field(default_factory=list)
    #: HTTP queries running at once (query.max_concurrent); the rest wait for a slot.
    query_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    process_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_at: float = field(default_factory=time.time)
    lock_fd: int = -1

    def health(self) -> dict[str, Any]:
        """Each component as ok, degraded or failed, and the overall state (the worst).

        Components that share a name report one entry: a later one that is not ok shows its
        state and error there, unless the earlier one already failed (the disk budget's
        refusals show as the persist stage's, never hiding a failed persister).
        """
        components: dict[str, Health] = {}
        for component in self.components:
            health, prior = component.health(), components.get(component.name)
            if prior is None:
                components[component.name] = health
            elif health["status"] != "ok" and prior["status"] != "failed":
                prior |= health
        overall = worst([c["status"] for c in components.values()])
        return {"status": overall, "components": components}

    def register_metrics(self) -> None:
        """The process's gauges, then each component's, read when /metrics is scraped."""
        g = REGISTRY.gauge
        g(
            "appliance_build_info",
            "Version of the appliance and of Python.",
            lambda: [((__version__, platform.python_version()), 1)],
            ["version", "python"],
        )
        g("appliance_process_resident_memory_bytes", "Resident memory of the process.", _rss_bytes)
        g(
            "appliance_process_cpu_seconds_total",
            "CPU time of the process.",
            lambda: sum(os.times()[:2]),
            kind="counter",
        )
        g(
            "appliance_process_start_time_seconds",
            "Start time of the process (Unix seconds).",
            lambda: self.started_at,
        )
        levels = {"ok": 0, "degraded": 1, "failed": 2}
        g(
            "appliance_component_status",
            "State of each component: 0 ok, 1 degraded, 2 failed.",
            lambda: [((name,), levels[c["status"]]) for name, c in self.health()["components"].items()],
            ["component"],
        )
        for component in self.components:
            component.register_metrics(REGISTRY)

    def reload(self, new: Config) -> None:
        """SIGHUP: apply the settings that can change at runtime (RELOADABLE); log the rest."""
        old = self.config
        changed = [s.name for s in SETTINGS if s.value(old) != s.value(new)]
        if new.mqtt.subscriptions != old.mqtt.subscriptions:
            changed.append("mqtt.subscription")
        budget_ok = self.budget is not None and new.storage.max_disk_bytes > 0
        applied = [n for n in changed if n in RELOADABLE and (n != "storage.max_disk_bytes" or budget_ok)]
        pending = [n for n in changed if n not in applied]
        # Only what was applied: everything else keeps running as it started (auth, binds, paths).
        new = old.with_settings(new, applied)
        log_module.setup(new.server.log_filter, new.server.log_format)
        self.queries.limits = query_limits(new)
        if self.syncer is not None:
            self.syncer.reload(new.sync)
        if self.budget is not None and budget_ok:
            self.budget.reload(new.storage.max_disk_bytes)
        self.config = new
        log.info(
            "reloaded configuration: applied %s; %s",
            ", ".join(applied) or "nothing changed",
            f"restart to apply {', '.join(pending)}" if pending else "nothing needs a restart",
        )

    def sync_status(self) -> dict[str, Any]:
        """GET /api/v3/sync: the upload queue and the local disk budget."""
        status: dict[str, Any] = self.syncer.status() if self.syncer is not None else {"enabled": False}
        if self.budget is not None:
            status["disk"] = self.budget.status()
        return status

    def stop(self) -> None:
        """Stop in reverse flow order: ingest, the engine, the request pools, sync, persist, the WAL."""
        for component in reversed(self.components):
            component.stop()
        os.close(self.lock_fd)
        log.info("stopped")


def catalog_limits(config: Config) -> CatalogLimits:
    """The [catalog] settings as the Catalog takes them."""
    c = config.catalog
    return CatalogLimits(c.max_databases, c.max_tables, c.max_columns, c.max_tables_per_database)


def persist_args(config: Config) -> PersistArgs:
    """The [storage] settings (and where and as which node) as the Persister takes them."""
    s = config.storage
    return PersistArgs(
        Path(config.server.data_dir),
        config.server.node_id,
        s.gen1_duration,
        s.retention_check_interval,
        s.compact_target_bytes,
        s.compact_interval,
    )


def engine_args(config: Config) -> EngineArgs:
    """The [engine] settings as the Engine takes them."""
    e = config.engine
    return EngineArgs(
        Path(e.plugin_dir),
        e.plugin_repo,
        e.max_retries,
        e.call_timeout / 1e9,
        e.cache_max_bytes,
        e.queue_size,
        e.package_manager,
    )


def query_limits(config: Config) -> QueryLimits:
    """The query settings as the QueryService takes them."""
    return QueryLimits(
        config.query.memory_limit,
        config.query.timeout,
        config.query.max_result_bytes,
        config.query.max_sql_bytes,
    )


def build(config: Config) -> App:
    """Open storage, replay the WAL into the buffer and start the components in flow order.

    Long on purpose: the whole wiring, read top to bottom, is the data flow.
    """
    # Their configuration errors come before anything is opened.
    mqtt = MqttIngest(config.mqtt) if config.mqtt.broker else None
    object_store = open_store(config.sync) if config.sync.bucket else None
    data_dir = Path(config.server.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)
    store = Store(data_dir / "lmdb", config.wal.map_size)
    wal = Wal(store)
    catalog = Catalog(store, catalog_limits(config))
    manifest = Manifest(store, data_dir / "parquet")
    buffer = Buffer(config.storage.max_buffer_bytes)
    queue = SyncQueue(store)
    if object_store is not None or queue.in_use():  # once used, it follows every change, even while off
        manifest.on_change.add(queue.on_change)  # queued in the transaction that records a file
        queue.reconcile(manifest.files())
    persister = Persister(persist_args(config), wal, catalog, buffer, manifest)
    buffer.on_full.add(persister.wake)
    store.on_map_full.add(persister.wake)  # persisting trims the WAL, which frees map pages
    wal.replay_seconds = _replay(wal, catalog, buffer)
    wal.on_commit.add(buffer.on_commit)
    catalog.on_drop.add(persister.drop)
    wal.start()  # the Store's writer
    persister.start()
    tokens = Tokens(store, data_dir)
    if config.auth.enabled:
        bootstrap_admin(tokens)
    queries = QueryService(
        catalog, buffer, manifest, data_dir / "parquet", persister.view_lock, query_limits(config)
    )
    budget = None
    if config.storage.max_disk_bytes:
        budget = DiskBudget(
            config.storage.max_disk_bytes,
            manifest,
            persister,
            queue.bucket_holds if object_store is not None else None,
        )
    writes = WriteService(catalog, wal, Admission(buffer, budget_refusal(budget)))
    engine = Engine(engine_args(config), store, catalog, writes, queries)
    wal.on_commit.add(engine.on_commit)  # after replay: replayed writes never feed plugins
    catalog.on_drop.add(engine.drop_database)
    queries.system_providers.append(engine.system_tables)
    engine.start()
    syncer = None
    if object_store is not None:
        syncer = Syncer(config.sync, queue, object_store, manifest, data_dir / "parquet")
        manifest.on_applied.add(syncer.wake)
        queries.system_providers.append(syncer.system_tables)
        syncer.start()
    if budget is not None:
        manifest.on_applied.add(budget.wake)
        budget.start()
    if mqtt is not None:
        queries.system_providers.append(mqtt.system_tables)
        mqtt.bind(writes)
        mqtt.start()
    # Request plugins run on engine_pool, never on the event loop: they may call this server's own API.
    pools = RequestPools(
        write_pool=ThreadPoolExecutor(4, thread_name_prefix="write"),
        # One thread per admitted HTTP query: a runaway query holds its slot only until its deadline.
        query_pool=ThreadPoolExecutor(config.query.max_concurrent, thread_name_prefix="query"),
        # Catalog and token changes: never stuck behind writes waiting for buffer space.
        admin_pool=ThreadPoolExecutor(2, thread_name_prefix="admin"),
        engine_pool=DaemonPool(8, "engine"),
        queries=queries,
    )
    app = App(
        config=config,
        store=store,
        wal=wal,
        catalog=catalog,
        buffer=buffer,
        manifest=manifest,
        persister=persister,
        writes=writes,
        queries=queries,
        engine=engine,
        tokens=tokens,
        pools=pools,
        query_slots=asyncio.Semaphore(config.query.max_concurrent),
        mqtt=mqtt,
        syncer=syncer,
        budget=budget,
        lock_fd=lock,
        # Flow order: reported in /health and /metrics in it, stopped in reverse. build() above starts
        # each once what it needs exists (the WAL writer first, MQTT ingest last).
        components=[c for c in (wal, persister, budget, syncer, pools, engine, mqtt) if c is not None],
    )
    app.register_metrics()
    return app


def _rss_bytes() -> float:
    """Resident set size from /proc (Linux); 0 elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


def budget_refusal(budget: DiskBudget | None) -> Callable[[], str | None]:
    """What write admission asks the disk budget: its 507 message while it refuses writes."""
    return (lambda: budget.refusing) if budget is not None else (lambda: None)


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the life of the process (one owner only)."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"data dir {data_dir} is in use by another appliance process; stop it first"
            " or give this one its own --data-dir"
        ) from None
    return fd


def _replay(wal: Wal, catalog: Catalog, buffer: Buffer) -> float:
    """Load every WAL entry into the buffer (no listeners besides the buffer are told)."""
    started = time.monotonic()
    entries = rows = 0
    live = {(db.id, t.id) for db in catalog.databases() for t in db.tables.values()}
    for seq, entry in wal.replay():
        entry.tables = [t for t in entry.tables if (entry.db_id, t.table_id) in live]
        buffer.on_commit([(seq, entry)])
        entries += 1
        rows += entry.num_rows
    seconds = time.monotonic() - started
    log.info("replayed WAL entries=%d rows=%d seconds=%.2f", entries, rows, seconds)
    return seconds
