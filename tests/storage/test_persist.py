"""Persisting the buffer to Parquet on a real Store: sorted zstd files, WAL trimmed."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance.errors import StorageFull
from appliance.model import ColumnType
from appliance.storage.buffer import Buffer
from appliance.storage.catalog import Catalog, CatalogLimits
from appliance.storage.manifest import Manifest
from appliance.storage.persist import PersistArgs, Persister
from appliance.storage.store import Store
from appliance.storage.wal import TableRows, Wal, WalEntry
from tests.server import wait_for
from tests.storage.rows import batch


def test_persist_writes_sorted_zstd_parquet_and_trims_wal(tmp_path: Path, store: Store, wal: Wal) -> None:
    cat = Catalog(store, CatalogLimits())
    cat.create_table("db", "cpu", ["host"], {"usage": ColumnType.FLOAT})
    db = cat.require("db")
    buf = Buffer(1 << 30)
    wal.on_commit.add(buf.on_commit)
    manifest = Manifest(store, tmp_path / "parquet")
    gen1 = 600 * 10**9
    p = Persister(PersistArgs(tmp_path, "n1", gen1, 10**12), wal, cat, buf, manifest)
    tid = db.tables["cpu"].id
    wal.append(
        WalEntry(db.id, "db", [TableRows(tid, "cpu", batch(["b", "a"], [gen1 + 2, gen1 + 1], [2.0, 1.0]))])
    ).result()
    wal.append(WalEntry(db.id, "db", [TableRows(tid, "cpu", batch(["a"], [3 * gen1], [3.0]))])).result()
    assert p.persist() == 2  # two gen1 windows
    assert list(wal.replay()) == []
    assert buf.nbytes == 0
    files = manifest.files(db.id, tid)
    assert [f.row_count for f in files] == [2, 1] or sorted(f.row_count for f in files) == [1, 2]
    first = min(files, key=lambda f: f.min_time)
    assert first.path.startswith("db/cpu/date=1970-01-01/node=n1/0010-")
    meta = pq.ParquetFile(tmp_path / "parquet" / first.path)
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    t = meta.read()
    assert t.column("host").to_pylist() == ["a", "b"]
    assert t.schema.field("time").type == pa.timestamp("ns")
    assert pa.types.is_dictionary(t.schema.field("host").type)


def test_a_persist_failing_for_a_full_disk_asks_for_room_backs_off_and_recovers(
    tmp_path: Path, store: Store, wal: Wal, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(store, CatalogLimits())
    cat.create_table("db", "cpu", ["host"], {"usage": ColumnType.FLOAT})
    db = cat.require("db")
    buf = Buffer(1 << 30)
    wal.on_commit.add(buf.on_commit)
    p = Persister(
        PersistArgs(tmp_path, "n1", 600 * 10**9, 10**12), wal, cat, buf, Manifest(store, tmp_path / "parquet")
    )
    asked: list[int] = []
    p.on_disk_full.add(asked.append)
    tid = db.tables["cpu"].id
    wal.append(WalEntry(db.id, "db", [TableRows(tid, "cpu", batch(["a"], [1], [1.0]))])).result()

    def no_room(table: pa.Table, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("appliance.storage.persist.write_parquet", no_room)
    p.start()
    try:
        error = p.request().exception(timeout=10)
        assert isinstance(error, StorageFull) and "is full" in error.message
        assert asked and set(asked) == {buf.nbytes} and buf.nbytes > 0  # room for what the buffer holds
        health = p.health()
        assert health["status"] == "degraded" and "is full" in health["error"]
        monkeypatch.undo()
        wait_for(lambda: p.health()["status"] == "ok", what="the retry after the backoff")
        assert buf.nbytes == 0 and list(wal.replay()) == []
    finally:
        p.stop()
