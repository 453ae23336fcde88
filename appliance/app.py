"""Composition root: builds the components in flow order and stops them in reverse."""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import Tokens, bootstrap_admin
from .buffer import Buffer
from .catalog import Catalog, CatalogLimits
from .config import Config
from .engine.pool import DaemonPool
from .engine.runner import Engine, EngineArgs
from .errors import ConfigError
from .manifest import Manifest
from .mqtt.ingest import MqttIngest
from .persist import PersistArgs, Persister
from .query import QueryLimits, QueryService
from .sync.budget import DiskBudget
from .sync.queue import SyncQueue
from .sync.store import ObjectStore
from .sync.uploader import Syncer
from .wal import Wal
from .write import WriteService

log = logging.getLogger("appliance.app")

#: Longest a write waits for the persister to drain a full buffer before it gets 503.
ADMIT_TIMEOUT_SECONDS = 30.0


@dataclass
class App:
    """Every long-lived component of one appliance process."""

    config: Config
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
    process_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_at: float = field(default_factory=time.time)
    replay_seconds: float = 0.0
    lock_fd: int = -1

    def health(self) -> dict[str, Any]:
        """Each component as ok, degraded or failed, and the overall state (the worst)."""
        persist = "failed" if not self.persister.alive else "degraded" if self.persister.last_error else "ok"
        components: dict[str, dict[str, Any]] = {
            "http": {"status": "ok"},
            "wal": {
                "status": "ok" if self.wal.alive else "failed",
                "last_seq": self.wal.last_seq,
                "commits": self.wal.stats.commits,
                "largest_group": self.wal.stats.max_group,
            },
            "persist": {
                "status": persist,
                "error": self.persister.last_error,
                "buffer_bytes": self.buffer.nbytes,
            },
        }
        components["engine"] = self.engine.health()
        if self.mqtt is not None:
            components["mqtt"] = self.mqtt.health()
        if self.syncer is not None:
            components["sync"] = self.syncer.health()
        if self.budget is not None and self.budget.refusing:
            components["persist"] |= {"status": "degraded", "error": self.budget.refusing}
        states = {c["status"] for c in components.values()}
        overall = next(s for s in ("failed", "degraded", "ok") if s in states)
        return {"status": overall, "components": components}

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
        self.query_pool.shutdown(wait=True, cancel_futures=True)
        if self.syncer is not None:
            self.syncer.stop()  # the queue is in LMDB: what is left is sent after the restart
        if self.budget is not None:
            self.budget.stop()
        self.persister.stop()
        self.wal.stop()
        os.close(self.lock_fd)
        log.info("stopped")


def build(config: Config) -> App:
    """Open storage, replay the WAL into the buffer and start the background threads."""
    # Their configuration errors come before anything is opened.
    mqtt = MqttIngest(config) if config.mqtt_broker else None
    store = ObjectStore(config) if config.sync_bucket else None
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)
    wal = Wal(data_dir / "lmdb", config.map_size)
    catalog = Catalog(wal, CatalogLimits(config.max_databases, config.max_tables, config.max_columns))
    manifest = Manifest(wal, data_dir / "parquet")
    buffer = Buffer(config.max_buffer_bytes)
    queue = None
    if store is not None:
        queue = SyncQueue(wal)
        manifest.hooks.append(queue.on_change)  # queued in the transaction that records a file
        queue.backfill(manifest.files())
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
    replay_seconds = _replay(wal, catalog, buffer)
    wal.add_listener(buffer)
    catalog.add_drop_listener(persister.drop)
    wal.start()
    persister.start()
    tokens = Tokens(wal, data_dir)
    if config.auth_enabled:
        bootstrap_admin(tokens)
    queries = QueryService(
        catalog,
        buffer,
        manifest,
        data_dir / "parquet",
        persister.view_lock,
        QueryLimits(config.memory_limit, config.timeout, config.max_result_bytes),
    )
    budget = DiskBudget(config.max_disk_bytes, manifest, persister, queue) if config.max_disk_bytes else None

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
        wal,
        catalog,
        writes,
        queries,
    )
    wal.add_listener(engine)  # after replay: replayed writes never feed plugins
    catalog.add_drop_listener(engine.drop_database)
    queries.system_providers.append(engine.system_tables)
    engine.start()
    syncer = None
    if store is not None and queue is not None:
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
    return App(
        config=config,
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
        query_pool=ThreadPoolExecutor(2, thread_name_prefix="query"),
        # Catalog and token changes: never stuck behind writes waiting for buffer space.
        admin_pool=ThreadPoolExecutor(2, thread_name_prefix="admin"),
        mqtt=mqtt,
        syncer=syncer,
        budget=budget,
        replay_seconds=replay_seconds,
        lock_fd=lock,
    )


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
