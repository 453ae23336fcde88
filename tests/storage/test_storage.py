"""Component tests over real LMDB in tmp_path: WAL group commit, catalog, buffer dedup, persist."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance.errors import CatalogError, Conflict, LimitExceeded
from appliance.model import ColumnType
from appliance.storage.buffer import Buffer
from appliance.storage.catalog import Catalog, CatalogLimits
from appliance.storage.dedupe import conform
from appliance.storage.dedupe import last_write_wins as dedupe
from appliance.storage.manifest import Manifest
from appliance.storage.persist import PersistArgs, Persister
from appliance.storage.wal import TableRows, Wal, WalEntry


def _batch(hosts: list[str | None], times: list[int], values: list[float | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(hosts, pa.string()),
            pa.array(times, pa.int64()).cast(pa.timestamp("ns")),
            pa.array(values, pa.float64()),
        ],
        names=["host", "time", "usage"],
    )


@pytest.fixture
def wal(tmp_path: Path):
    w = Wal(tmp_path / "lmdb", 1 << 30)
    w.start()
    yield w
    if w.alive:
        w.stop()


def test_wal_entries_survive_reopen_in_order(tmp_path: Path) -> None:
    w = Wal(tmp_path / "lmdb", 1 << 30)
    w.start()
    seqs = [
        w.submit(entry=WalEntry(1, "db", [TableRows(2, "cpu", _batch(["a"], [i], [float(i)]))])).result()
        for i in range(5)
    ]
    w.stop()
    assert seqs == [1, 2, 3, 4, 5]
    w2 = Wal(tmp_path / "lmdb", 1 << 30)
    replayed = list(w2.replay())
    assert [s for s, _ in replayed] == seqs
    assert [e.tables[0].batch.column("usage")[0].as_py() for _, e in replayed] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert w2.last_seq == 5
    w2.env.close()


def test_concurrent_writes_share_group_commits(wal: Wal) -> None:
    seen: list[int] = []

    class Listener:
        def on_commit(self, entries):  # noqa: ANN001
            seen.append(len(entries))

    wal.add_listener(Listener())
    futures = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(50):
            f = wal.submit(entry=WalEntry(1, "db", [TableRows(2, "cpu", _batch([str(n)], [i], [1.0]))]))
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(f.result() for f in futures) == list(range(1, 401))
    assert sum(seen) == 400
    assert wal.stats.max_group > 1, "concurrent writes never shared a commit"


def test_failing_step_does_not_sink_its_group(wal: Wal) -> None:
    def bad(txn, w):  # noqa: ANN001
        raise ValueError("boom")

    f_bad = wal.submit(fn=bad)
    f_good = wal.submit(entry=WalEntry(1, "db", [TableRows(2, "cpu", _batch(["a"], [1], [1.0]))]))
    with pytest.raises(ValueError):
        f_bad.result()
    assert f_good.result() >= 1


def test_trim_removes_only_persisted_entries(wal: Wal) -> None:
    for i in range(4):
        wal.submit(entry=WalEntry(1, "db", [TableRows(2, "cpu", _batch(["a"], [i], [1.0]))])).result()
    wal.submit(fn=lambda txn, w: w.trim(txn, 2)).result()
    assert [s for s, _ in wal.replay()] == [3, 4]


def test_catalog_persists_and_enforces_limits(tmp_path: Path, wal: Wal) -> None:
    cat = Catalog(wal, CatalogLimits(max_databases=2, max_tables=3, max_columns=2))
    cat.create_database("one", 86_400 * 10**9)
    cat.create_table("one", "cpu", ["host"], {"usage": ColumnType.FLOAT})
    with pytest.raises(Conflict):
        cat.create_database("one", None)
    with pytest.raises(CatalogError):
        cat.create_database("bad name!", None)
    cat.create_database("two", None)
    with pytest.raises(LimitExceeded, match="limit of 2 databases"):
        cat.create_database("three", None)
    with pytest.raises(LimitExceeded, match="columns per table limit of 2"):
        cat.create_table("one", "mem", ["a", "b"], {"c": ColumnType.INTEGER})
    reopened = Catalog(wal, CatalogLimits())
    one = reopened.require("one")
    assert one.retention_ns == 86_400 * 10**9
    assert one.tables["cpu"].columns == {
        "time": ColumnType.TIME,
        "host": ColumnType.TAG,
        "usage": ColumnType.FLOAT,
    }
    assert one.tables["cpu"].schema().field("host").type == pa.dictionary(pa.int32(), pa.string())


def test_database_names_follow_influxdb_rules(wal: Wal) -> None:
    cat = Catalog(wal, CatalogLimits())
    for ok in ("a", "db_1-x", "db/rp", "9lives"):
        cat.create_database(ok, None)
    for bad in ("_x", "-x", "a/b/c", "a/", "with space", "x" * 512, ""):
        with pytest.raises(CatalogError):
            cat.create_database(bad, None)


def test_dedupe_merges_copies_field_by_field() -> None:
    schema = pa.schema(
        [
            ("host", pa.dictionary(pa.int32(), pa.string())),
            ("time", pa.timestamp("ns")),
            ("a", pa.float64()),
            ("b", pa.int64()),
        ]
    )
    first = pa.RecordBatch.from_pydict(
        {
            "host": ["x", "y"],
            "time": pa.array([1, 1]).cast(pa.timestamp("ns")),
            "a": [1.0, 2.0],
            "b": [10, None],
        }
    )
    second = pa.RecordBatch.from_pydict(
        {"host": ["x"], "time": pa.array([1]).cast(pa.timestamp("ns")), "b": [20]}
    )
    t = dedupe(conform([first, second], schema))
    rows = t.drop_columns(["time"]).to_pylist()
    assert rows == [{"host": "x", "a": 1.0, "b": 20}, {"host": "y", "a": 2.0, "b": None}]
    assert t.schema == schema


def test_dedupe_treats_missing_tags_as_one_series() -> None:
    schema = pa.schema(
        [("host", pa.dictionary(pa.int32(), pa.string())), ("time", pa.timestamp("ns")), ("a", pa.float64())]
    )
    b = pa.RecordBatch.from_pydict(
        {
            "host": [None, None, "z"],
            "time": pa.array([5, 5, 5]).cast(pa.timestamp("ns")),
            "a": [1.0, 2.0, 3.0],
        }
    )
    assert dedupe(conform([b], schema)).column("a").to_pylist() == [2.0, 3.0]


def test_persist_writes_sorted_zstd_parquet_and_trims_wal(tmp_path: Path, wal: Wal) -> None:
    cat = Catalog(wal, CatalogLimits())
    cat.create_table("db", "cpu", ["host"], {"usage": ColumnType.FLOAT})
    db = cat.require("db")
    buf = Buffer(1 << 30)
    wal.add_listener(buf)
    manifest = Manifest(wal, tmp_path / "parquet")
    gen1 = 600 * 10**9
    p = Persister(PersistArgs(tmp_path, "n1", gen1, 10**12), wal, cat, buf, manifest)
    tid = db.tables["cpu"].id
    wal.submit(
        entry=WalEntry(
            db.id, "db", [TableRows(tid, "cpu", _batch(["b", "a"], [gen1 + 2, gen1 + 1], [2.0, 1.0]))]
        )
    ).result()
    wal.submit(
        entry=WalEntry(db.id, "db", [TableRows(tid, "cpu", _batch(["a"], [3 * gen1], [3.0]))])
    ).result()
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


def test_colliding_finds_only_files_sharing_a_point(tmp_path: Path) -> None:
    from appliance.storage import dedupe as overlap
    from appliance.storage.manifest import ParquetFile
    from appliance.storage.persist import write_parquet

    schema = pa.schema(
        [("host", pa.dictionary(pa.int32(), pa.string())), ("time", pa.timestamp("ns")), ("v", pa.float64())]
    )

    def table(hosts: list[str | None], times: list[int]) -> pa.Table:
        b = pa.RecordBatch.from_pydict(
            {"host": hosts, "time": pa.array(times).cast(pa.timestamp("ns")), "v": [1.0] * len(times)}
        )
        return conform([b], schema)

    files = []
    for i, (hosts, times) in enumerate([([None, "a"], [5, 5]), (["b"], [100])]):
        write_parquet(table(hosts, times), tmp_path / f"f{i}.parquet")
        files.append(ParquetFile(f"f{i}.parquet", 1, "db", 2, "t", 0, len(times), min(times), max(times), i))
    assert overlap.colliding(tmp_path, files, table(["c"], [5]), schema) == []
    assert overlap.colliding(tmp_path, files, table([None], [5]), schema) == [files[0]]
    assert overlap.colliding(tmp_path, files, table(["b", "a"], [100, 6]), schema) == [files[1]]
    merged = overlap.merge(tmp_path, [files[0]], table([None], [5]), schema)
    assert merged.num_rows == 2


def test_buffer_admits_writes_only_below_twice_its_cap() -> None:
    from appliance.errors import WalError

    buf = Buffer(max_bytes=100)
    buf.admit(0.01)  # empty: at once
    big = WalEntry(1, "db", [TableRows(2, "cpu", _batch(["a"] * 20, list(range(20)), [1.0] * 20))])
    buf.on_commit([(1, big)])
    assert buf.nbytes >= 200
    with pytest.raises(WalError, match="buffer is full"):
        buf.admit(0.05)
    threading.Timer(0.05, buf.release, args=(1,)).start()
    buf.admit(5.0)  # released by the persister meanwhile
    assert buf.nbytes == 0
