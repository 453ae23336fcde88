"""The Store: each owner's named database, the single writer (group commit, stop), its health,
and an LMDB environment from before the Store opening with the new code."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import lmdb
import msgpack
import pytest

from appliance.auth import Tokens
from appliance.engine.store import EngineLog, TriggerStore
from appliance.errors import WalError
from appliance.storage.catalog import Catalog, CatalogLimits
from appliance.storage.manifest import Manifest, ParquetFile
from appliance.storage.store import MAX_DBS, Store
from appliance.storage.wal import Wal
from appliance.sync.queue import QUEUED, SyncQueue, SyncRecord
from tests.server import wait_for
from tests.storage.rows import entry

#: The named databases every version before the Store opened (`meta` was never written).
OLD_NAMES = (
    b"wal",
    b"catalog",
    b"files",
    b"tokens",
    b"meta",
    b"triggers",
    b"logs",
    b"sync",
    b"synced",
    b"sync_del",
)
#: What the owners open now: every old name but `meta`.
OPENED = {name for name in OLD_NAMES if name != b"meta"}


def _owners(store: Store, tmp_path: Path) -> tuple[Wal, Catalog, Manifest, Tokens, TriggerStore, SyncQueue]:
    """Every owner of a database, opened the way app.build opens them."""
    wal = Wal(store)
    catalog = Catalog(store, CatalogLimits())
    manifest = Manifest(store, tmp_path / "parquet")
    tokens = Tokens(store, tmp_path)
    triggers = TriggerStore(store)
    EngineLog(store)
    return wal, catalog, manifest, tokens, triggers, SyncQueue(store)


def test_failing_step_does_not_sink_its_group(store: Store, wal: Wal) -> None:
    def bad(txn: lmdb.Transaction) -> None:
        raise ValueError("boom")

    f_bad = store.submit(bad)
    f_good = wal.append(entry("a", 1))
    with pytest.raises(ValueError):
        f_bad.result()
    assert f_good.result() >= 1


def test_each_owner_opens_its_own_database_and_nothing_else(store: Store, tmp_path: Path) -> None:
    _owners(store, tmp_path)
    assert set(store.opened) == OPENED
    assert len(store.opened) <= MAX_DBS
    assert store.database(b"wal") is store.database(b"wal")  # asked again: the same handle


def test_a_data_dir_from_before_the_store_opens_with_its_data(tmp_path: Path) -> None:
    """An environment with the ten old names (`meta` included) and data in each owner's database."""
    path = tmp_path / "lmdb"
    path.mkdir()
    old = lmdb.open(str(path), map_size=1 << 26, max_dbs=len(OLD_NAMES) + 2)
    dbs = {name: old.open_db(name) for name in OLD_NAMES}
    parquet = ParquetFile("db/cpu/f.parquet", 1, "db", 2, "cpu", 10, 1, 0, 0, 1)
    with old.begin(write=True) as txn:
        txn.put(struct.pack(">Q", 7), entry("a", 1).encode(), db=dbs[b"wal"])
        txn.put(b"db/db", msgpack.packb({"id": 1, "name": "db", "retention_ns": None}), db=dbs[b"catalog"])
        txn.put(parquet.path.encode(), parquet.encode(), db=dbs[b"files"])
        txn.put(parquet.path.encode(), SyncRecord(parquet.path, QUEUED).encode(), db=dbs[b"sync"])
    old.close()

    store = Store(path, 1 << 26)
    wal, catalog, manifest, tokens, triggers, queue = _owners(store, tmp_path)
    store.start()
    try:
        assert wal.last_seq == 7 and [s for s, _ in wal.replay()] == [7]
        assert catalog.require("db").id == 1
        assert manifest.paths() == {parquet.path}
        assert [r.path for r in queue.records(QUEUED)] == [parquet.path]
        assert wal.append(entry("a", 2)).result() == 8
        tokens.create_admin()
        assert tokens.admin() is not None and triggers.load() == []
    finally:
        store.stop()
    reopened = Store(path, 1 << 26)
    assert [s for s, _ in Wal(reopened).replay()] == [7, 8]
    with reopened.read() as txn:  # the old database is still there, untouched
        assert txn.stat(reopened.env.open_db(b"meta", txn=txn, create=False))["entries"] == 0
    reopened.env.close()


def test_stop_commits_what_is_queued_and_then_refuses(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb", 1 << 26)
    wal = Wal(store)
    queued = [wal.append(entry("a", i)) for i in range(3)]  # the writer has not started
    store.stop()
    assert [f.result() for f in queued] == [1, 2, 3]
    with pytest.raises(WalError, match="not accepted"):
        store.submit(lambda txn: None)
    reopened = Store(tmp_path / "lmdb", 1 << 26)
    assert [s for s, _ in Wal(reopened).replay()] == [1, 2, 3]
    reopened.env.close()


def test_health_is_the_loops_shape_with_out_of_space_and_failing_commits(store: Store) -> None:
    assert store.health() == {"status": "ok", "error": None}
    store.failing = "3 write-ahead log commits in a row failed: MDB_PANIC"
    assert store.health() == {"status": "degraded", "error": store.failing}


def test_a_writer_thread_that_died_is_failed_and_not_responsive(store: Store) -> None:
    died = threading.Event()

    def fatal(txn: lmdb.Transaction) -> None:
        died.set()
        raise SystemExit("the writer ends")  # not an Exception: it escapes the group's handling

    store.submit(fatal)
    died.wait(5)
    wait_for(lambda: not store.alive, what="the writer thread to end")
    health = store.health()
    assert health["status"] == "failed" and "SystemExit" in health["error"]
    assert not store.responsive(60)


def test_opening_a_database_inside_a_step_is_an_error_not_a_deadlock(store: Store) -> None:
    with pytest.raises(RuntimeError, match="before a step uses it"):
        store.submit(lambda txn: store.database(b"late")).result(timeout=10)


def test_a_database_opened_while_the_writer_commits_does_not_deadlock(store: Store) -> None:
    """py-lmdb holds the GIL while it waits for LMDB's write lock: the writer opens it between groups."""
    inside, release = threading.Event(), threading.Event()

    def slow(txn: lmdb.Transaction) -> None:
        inside.set()
        release.wait(10)  # a group that holds the write lock while Python code runs

    busy = store.submit(slow)
    assert inside.wait(10)
    opener = threading.Thread(target=store.database, args=(b"late",), daemon=True)
    opener.start()
    release.set()
    opener.join(10)
    assert not opener.is_alive(), "opening a database deadlocked with the writer"
    busy.result(timeout=10)
    assert b"late" in store.opened
