"""Composition root: builds the components in flow order and stops them in reverse."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import platform
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from . import log as log_module
from .auth import Tokens, bootstrap_admin
from .config import SETTINGS, Config
from .engine.pool import DaemonPool
from .engine.runner import Engine, EngineArgs
from .errors import ConfigError
from .metrics import REGISTRY
from .mqtt.ingest import MqttIngest
from .query.service import QueryLimits, QueryService
from .storage.budget import DiskBudget
from .storage.buffer import Buffer
from .storage.catalog import Catalog, CatalogLimits
from .storage.manifest import Manifest
from .storage.persist import PersistArgs, Persister
from .storage.store import Store
from .storage.wal import Wal
from .sync.queue import QUEUED, SyncQueue
from .sync.store import ObjectStore
from .sync.uploader import Syncer
from .write import WriteService

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

#: Longest a write waits for the persister to drain a full buffer before it gets 503.
ADMIT_TIMEOUT_SECONDS = 30.0


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
    write_pool: ThreadPoolExecutor
    query_pool: ThreadPoolExecutor
    admin_pool: ThreadPoolExecutor
    engine: Engine
    engine_pool: DaemonPool
    mqtt: MqttIngest | None = None
    syncer: Syncer | None = None
    budget: DiskBudget | None = None
    #: HTTP queries running at once (query.max_concurrent); the rest wait for a slot.
    query_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    process_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_at: float = field(default_factory=time.time)
    replay_seconds: float = 0.0
    lock_fd: int = -1

    def health(self) -> dict[str, Any]:
        """Each component as ok, degraded or failed, and the overall state (the worst)."""
        # Out of space (disk or map), or commits failing for another reason: the server runs
        # and answers reads, writes fail (507, 503). The disk is judged by statvfs, not by commits.
        components: dict[str, dict[str, Any]] = {
            "http": {"status": "ok"},
            "wal": self.store.health()
            | {
                "last_seq": self.wal.last_seq,
                "commits": self.store.stats.commits,
                "largest_group": self.wal.stats.max_group,
                "replay_seconds": round(self.replay_seconds, 3),
            },
            "persist": self.persister.health() | {"buffer_bytes": self.buffer.nbytes},
        }
        components["engine"] = self.engine.health()
        if self.mqtt is not None:
            components["mqtt"] = self.mqtt.health()
        if self.syncer is not None:
            components["sync"] = self.syncer.health()
        if self.budget is not None:  # the budget shows in persist's state, never hiding a failed persister
            budget = self.budget.health()
            if budget["status"] != "ok" and components["persist"]["status"] != "failed":
                components["persist"] |= budget
        states = {c["status"] for c in components.values()}
        overall = next(s for s in ("failed", "degraded", "ok") if s in states)
        return {"status": overall, "components": components}

    def register_metrics(self) -> None:
        """The gauges /metrics reads from this App's components when it is scraped."""
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
        g(
            "appliance_wal_replay_seconds",
            "Time the last start-up spent replaying the WAL.",
            lambda: self.replay_seconds,
        )
        g(
            "appliance_wal_last_sequence",
            "Sequence number of the newest WAL entry.",
            lambda: self.wal.last_seq,
        )
        g("appliance_buffer_bytes", "Bytes held in the in-memory buffer.", lambda: self.buffer.nbytes)
        g("appliance_parquet_files", "Parquet files on local disk.", lambda: len(self.manifest.paths()))
        g("appliance_parquet_bytes", "Bytes of Parquet on local disk.", self.manifest.total_bytes)
        cache = self.engine.cache
        g("appliance_plugin_cache_bytes", "Bytes held by the plugin cache.", lambda: cache.stats()["bytes"])
        g(
            "appliance_plugin_cache_evictions_total",
            "Plugin cache entries evicted at the cap.",
            lambda: cache.stats()["evictions"],
            kind="counter",
        )
        levels = {"ok": 0, "degraded": 1, "failed": 2}
        g(
            "appliance_component_status",
            "State of each component: 0 ok, 1 degraded, 2 failed.",
            lambda: [((name,), levels[c["status"]]) for name, c in self.health()["components"].items()],
            ["component"],
        )
        if self.mqtt is not None:
            mqtt = self.mqtt
            g("appliance_mqtt_connected", "1 while connected to the broker.", lambda: float(mqtt.connected))
            g(
                "appliance_mqtt_inflight_messages",
                "Messages received and not yet committed.",
                lambda: mqtt.health()["inflight"],
            )
            g(
                "appliance_mqtt_unrouted_messages_total",
                "Messages no subscription matched.",
                lambda: mqtt.unrouted,
                kind="counter",
            )
            for attr, help in (
                ("messages", "Messages written, by subscription."),
                ("lines", "Lines stored, by subscription."),
                ("errors", "Messages with rejected content, by subscription."),
            ):
                g(
                    f"appliance_mqtt_{attr}_total",
                    help,
                    lambda attr=attr: [((r.sub.topic,), getattr(r, attr)) for r in mqtt.routes],  # type: ignore[misc]
                    ["subscription"],
                    kind="counter",
                )
        if self.syncer is not None:
            syncer = self.syncer
            g(
                "appliance_sync_queued_files",
                "Parquet files waiting for upload.",
                lambda: syncer.queue.count(QUEUED),
            )
            g(
                "appliance_sync_queued_bytes",
                "Bytes waiting for upload.",
                lambda: syncer.queued_bytes,
            )
            g(
                "appliance_sync_oldest_unsynced_age_seconds",
                "Age of the oldest file waiting for upload.",
                lambda: syncer.oldest_age_seconds() or 0,
            )
            g(
                "appliance_sync_uploaded_files_total",
                "Files uploaded and verified.",
                lambda: syncer.stats.uploaded_files,
                kind="counter",
            )
            g(
                "appliance_sync_uploaded_bytes_total",
                "Bytes uploaded and verified.",
                lambda: syncer.stats.uploaded_bytes,
                kind="counter",
            )
            g(
                "appliance_sync_failures_total",
                "Failed upload or delete attempts.",
                lambda: syncer.stats.failed_attempts,
                kind="counter",
            )
            g(
                "appliance_sync_deleted_objects_total",
                "Replaced objects deleted from the bucket.",
                lambda: syncer.stats.deleted_objects,
                kind="counter",
            )
        if self.budget is not None:
            budget = self.budget
            g("appliance_disk_budget_bytes", "storage.max_disk_bytes.", lambda: budget.max_bytes)
            g(
                "appliance_disk_evicted_files_total",
                "Local Parquet files evicted for the disk budget.",
                lambda: budget.evicted_files,
                kind="counter",
            )
            g(
                "appliance_disk_refusing_writes",
                "1 while writes are refused with 507.",
                lambda: float(budget.refusing is not None),
            )

    def reload(self, new: Config) -> None:
        """SIGHUP: apply the settings that can change at runtime (RELOADABLE); log the rest."""
        old = self.config
        changed = [s.name for s in SETTINGS if getattr(old, s.field) != getattr(new, s.field)]
        if new.mqtt_subscriptions != old.mqtt_subscriptions:
            changed.append("mqtt.subscription")
        budget_ok = self.budget is not None and new.max_disk_bytes > 0
        applied = [n for n in changed if n in RELOADABLE and (n != "storage.max_disk_bytes" or budget_ok)]
        pending = [n for n in changed if n not in applied]
        # Only what was applied: everything else keeps running as it started (auth, binds, paths).
        by_name = {s.name: s for s in SETTINGS}
        new = dataclasses.replace(old, **{by_name[n].field: getattr(new, by_name[n].field) for n in applied})
        log_module.setup(new.log_filter, new.log_format)
        self.queries.limits = query_limits(new)
        if self.syncer is not None:
            self.syncer.config = new
            self.syncer.store.throttle.rate = new.sync_bandwidth_limit
        if self.budget is not None and budget_ok:
            self.budget.max_bytes = new.max_disk_bytes
            self.budget.wake()
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
        """Stop in reverse flow order: ingest, the engine, persist the buffer, then the WAL writer."""
        if self.mqtt is not None:
            self.mqtt.stop()
        self.engine.stop()
        self.engine_pool.shutdown()
        self.write_pool.shutdown(wait=True)
        self.admin_pool.shutdown(wait=True)
        self.queries.close()  # running queries stop at their next poll (0.1 s): nothing waits for them
        self.query_pool.shutdown(wait=False, cancel_futures=True)
        if self.syncer is not None:
            self.syncer.stop()  # the queue is in LMDB: what is left is sent after the restart
        if self.budget is not None:
            self.budget.stop()
        self.persister.stop()
        self.store.stop()
        os.close(self.lock_fd)
        log.info("stopped")


def query_limits(config: Config) -> QueryLimits:
    """The query settings as the QueryService takes them."""
    return QueryLimits(config.memory_limit, config.timeout, config.max_result_bytes, config.max_sql_bytes)


def build(config: Config) -> App:
    """Open storage, replay the WAL into the buffer and start the background threads."""
    # Their configuration errors come before anything is opened.
    mqtt = MqttIngest(config) if config.mqtt_broker else None
    store = ObjectStore(config) if config.sync_bucket else None
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)
    lmdb_store = Store(data_dir / "lmdb", config.map_size)
    wal = Wal(lmdb_store)
    catalog = Catalog(
        lmdb_store,
        CatalogLimits(
            config.max_databases, config.max_tables, config.max_columns, config.max_tables_per_database
        ),
    )
    manifest = Manifest(lmdb_store, data_dir / "parquet")
    buffer = Buffer(config.max_buffer_bytes)
    queue = SyncQueue(lmdb_store)
    if store is not None or queue.in_use():  # once used, it follows every change, even while off
        manifest.hooks.append(queue.on_change)  # queued in the transaction that records a file
        queue.reconcile(manifest.files())
    persister = Persister(
        PersistArgs(
            data_dir,
            config.node_id,
            config.gen1_duration,
            config.retention_check_interval,
            config.compact_target_bytes,
            config.compact_interval,
        ),
        wal,
        catalog,
        buffer,
        manifest,
    )
    buffer.on_full = persister.wake
    lmdb_store.on_map_full.append(persister.wake)  # persisting trims the WAL, which frees map pages
    replay_seconds = _replay(wal, catalog, buffer)
    wal.add_listener(buffer)
    catalog.add_drop_listener(persister.drop)
    lmdb_store.start()
    persister.start()
    tokens = Tokens(lmdb_store, data_dir)
    if config.auth_enabled:
        bootstrap_admin(tokens)
    queries = QueryService(
        catalog,
        buffer,
        manifest,
        data_dir / "parquet",
        persister.view_lock,
        query_limits(config),
    )
    budget = None
    if config.max_disk_bytes:
        budget = DiskBudget(config.max_disk_bytes, manifest, persister, queue if store is not None else None)

    def admit() -> None:
        if budget is not None:
            budget.admit()
        buffer.admit(ADMIT_TIMEOUT_SECONDS)

    writes = WriteService(catalog, wal, admit)
    engine = Engine(
        EngineArgs(
            Path(config.plugin_dir),
            config.plugin_repo,
            config.max_retries,
            config.call_timeout / 1e9,
            config.cache_max_bytes,
            config.queue_size,
            config.package_manager,
        ),
        lmdb_store,
        catalog,
        writes,
        queries,
    )
    wal.add_listener(engine)  # after replay: replayed writes never feed plugins
    catalog.add_drop_listener(engine.drop_database)
    queries.system_providers.append(engine.system_tables)
    engine.start()
    syncer = None
    if store is not None:
        syncer = Syncer(config, queue, store, manifest)
        manifest.applied.append(syncer.wake)
        queries.system_providers.append(syncer.system_tables)
        syncer.start()
    if budget is not None:
        manifest.applied.append(budget.wake)
        budget.start()
    if mqtt is not None:
        queries.system_providers.append(mqtt.system_tables)
        mqtt.start(writes)
    app = App(
        config=config,
        store=lmdb_store,
        wal=wal,
        catalog=catalog,
        buffer=buffer,
        manifest=manifest,
        persister=persister,
        writes=writes,
        queries=queries,
        engine=engine,
        # Request plugins run here, never on the event loop: they may call this server's own API.
        engine_pool=DaemonPool(8, "engine"),
        tokens=tokens,
        write_pool=ThreadPoolExecutor(4, thread_name_prefix="write"),
        # One thread per admitted HTTP query: a runaway query holds its slot only until its deadline.
        query_pool=ThreadPoolExecutor(config.max_concurrent, thread_name_prefix="query"),
        query_slots=asyncio.Semaphore(config.max_concurrent),
        # Catalog and token changes: never stuck behind writes waiting for buffer space.
        admin_pool=ThreadPoolExecutor(2, thread_name_prefix="admin"),
        mqtt=mqtt,
        syncer=syncer,
        budget=budget,
        replay_seconds=replay_seconds,
        lock_fd=lock,
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
