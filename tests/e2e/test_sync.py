"""Object store sync against a real S3 endpoint (moto's server) and a real `appliance serve`."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import s3 as s3_module
from tests.s3 import S3
from tests.server import REPO, Server, wait_for

DAY_NS = 86_400 * 10**9
PREFIX = "fleet"


@pytest.fixture(autouse=True)
def _reap_s3() -> Iterator[None]:
    yield
    s3_module.reap()


@pytest.fixture
def s3() -> S3:
    return S3(proxied=True).start()


def sync_config(s3: S3, **extra: Any) -> str:
    settings = {
        "endpoint": s3.endpoint,
        "bucket": s3.bucket,
        "prefix": PREFIX,
        "region": s3.region,
        "allow_http": True,
        "interval": "1s",
        "retry_min": "100ms",
        "retry_max": "1s",
    }
    storage = {k.removeprefix("storage_"): v for k, v in extra.items() if k.startswith("storage_")}
    settings |= {k: v for k, v in extra.items() if not k.startswith("storage_")}
    lines = ["[sync]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    if storage:
        lines += ["[storage]", *(f"{k} = {json.dumps(v)}" for k, v in storage.items())]
    return "\n".join(lines) + "\n"


def start(tmp_path: Path, s3: S3, config: str | None = None, **kw: Any) -> Server:
    path = tmp_path / "config.toml"
    path.write_text(config if config is not None else sync_config(s3))
    return Server(tmp_path / "data", args=["--config", str(path)], env=s3.env(), **kw).start()


def status(server: Server) -> dict[str, Any]:
    r = server.request("GET", "/api/v3/sync")
    assert r.status == 200, r.body
    return dict(r.json())


def write_rows(server: Server, db: str, table: str, start: int, n: int, base_ns: int | None = None) -> None:
    base = base_ns if base_ns is not None else time.time_ns() - 3600 * 10**9
    body = "\n".join(
        f"{table},dev=d{i % 7} seq={i}i,v={i * 0.5} {base + i * 1_000_000}" for i in range(start, start + n)
    )
    r = server.write(db, body)
    assert r.status == 204, r.body


def persist(server: Server) -> None:
    assert server.request("POST", "/api/v3/persist").status == 200


def parquet_keys(s3: S3) -> list[str]:
    return [k for k in s3.keys(PREFIX + "/") if k.endswith(".parquet")]


def object_keys(s3: S3) -> list[str]:
    """Every key under the prefix."""
    return s3.keys(PREFIX + "/")


def bucket_rows(s3: S3, table: str) -> list[int]:
    """Every `seq` stored in the bucket's objects of `table` (duplicates kept)."""
    seqs: list[int] = []
    for key in parquet_keys(s3):
        if f"/{table}/" in key:
            seqs += pq.read_table(io.BytesIO(s3.get(key))).column("seq").to_pylist()
    return seqs


def local_count(server: Server, db: str, table: str) -> int:
    return int(server.query(db, f"SELECT count(*) AS n FROM {table}")[0]["n"])


#: The only keys the bucket may hold (README: "Sync"): no staging copies, no folder markers.
DATA_KEY = re.compile(
    rf"{PREFIX}/[^/]+/[^/]+/date=\d{{4}}-\d{{2}}-\d{{2}}/node=test-node/\d{{4}}-\d+\.parquet"
)


def assert_only_data_objects(s3: S3) -> None:
    """Every object in the whole bucket is a documented data object (checked on every key)."""
    keys = s3.keys("")
    stray = [k for k in keys if not DATA_KEY.fullmatch(k)]
    assert not stray, f"non-data objects in the bucket: {stray}"


def budget_settled(server: Server) -> bool:
    """Under the disk budget, or over it and refusing writes (the check a persist wakes has run)."""
    disk = status(server)["disk"]
    return bool(disk["refusing_writes"] or disk["used_bytes"] <= disk["max_disk_bytes"])


def drained(server: Server) -> bool:
    st = status(server)
    return st["queued_files"] == 0 and st["deletes_pending"] == 0


# -- layout and status ----------------------------------------------------------------------------
def test_files_appear_in_the_bucket_at_the_documented_keys(tmp_path: Path, s3: S3) -> None:
    server = start(tmp_path, s3)
    write_rows(server, "iot", "cpu", 0, 100, base_ns=1_764_000_000_000_000_000)  # 2025-11-24T16:00Z
    write_rows(server, "iot", "mem", 0, 50, base_ns=1_764_000_000_000_000_000)
    persist(server)
    wait_for(lambda: drained(server), what="the queue to drain")
    local = sorted(
        str(p.relative_to(tmp_path / "data" / "parquet"))
        for p in (tmp_path / "data" / "parquet").rglob("*.parquet")
    )
    assert parquet_keys(s3) == [f"{PREFIX}/{rel}" for rel in local]
    assert [k.split("/")[1:5] for k in parquet_keys(s3)] == [
        ["iot", "cpu", "date=2025-11-24", "node=test-node"],
        ["iot", "mem", "date=2025-11-24", "node=test-node"],
    ]
    assert object_keys(s3) == parquet_keys(s3)  # no .partial objects left behind
    assert_only_data_objects(s3)
    assert sorted(bucket_rows(s3, "cpu")) == list(range(100))
    st = status(server)
    assert st["enabled"] and st["synced_files"] == 2 and st["last_success"] and st["last_error"] is None
    assert st["oldest_unsynced_age_seconds"] is None
    rows = server.query("iot", "SELECT state, row_count FROM system.sync_queue ORDER BY path")
    assert rows == [{"state": "synced", "row_count": 100}, {"state": "synced", "row_count": 50}]
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "sync", "status", "--host", server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "queued_files" in out.stdout and "synced_files" in out.stdout
    assert server.request("GET", "/health").json()["components"]["sync"]["status"] == "ok"


def test_without_sync_the_status_says_it_is_off(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    assert status(server) == {"enabled": False}
    assert server.request("POST", "/api/v3/sync").status == 404


# -- outages and crashes --------------------------------------------------------------------------
def test_outage_keeps_accepting_and_every_row_lands_once_after(tmp_path: Path, s3: S3) -> None:
    server = start(tmp_path, s3)
    s3.down()
    for batch in range(5):
        write_rows(server, "iot", "cpu", batch * 200, 200)
        persist(server)
    st = wait_for(lambda: (s := status(server))["last_error"] and s, what="a failed upload")
    assert (
        st["queued_files"] >= 1 and st["queued_bytes"] > 0 and st["oldest_unsynced_age_seconds"] is not None
    )
    assert parquet_keys(s3) == []
    s3.up()
    after = server.request("POST", "/api/v3/sync", {"timeout": "30s"}).json()
    assert after["last_success"] is not None
    wait_for(lambda: drained(server), what="the queue to drain")
    assert sorted(bucket_rows(s3, "cpu")) == list(range(1000))
    assert local_count(server, "iot", "cpu") == 1000


def test_kill9_during_uploads_then_restart_uploads_everything_once(tmp_path: Path, s3: S3) -> None:
    config = sync_config(s3, bandwidth_limit="256KiB")  # slow uploads, so the kill lands mid-way
    server = start(tmp_path, s3, config)
    for batch in range(6):
        body = "\n".join(
            f'big,dev=d{i % 50} seq={i}i,pad="{"x" * 40}{i}" {1_764_000_000_000_000_000 + i * 1000}'
            for i in range(batch * 20000, (batch + 1) * 20000)
        )
        assert server.write("iot", body).status == 204
        persist(server)
    wait_for(lambda: status(server)["synced_files"] >= 1, what="a first upload")
    assert status(server)["queued_files"] >= 1
    server.kill()
    server.start()
    wait_for(lambda: drained(server), timeout=60, what="the queue to drain after the restart")
    seqs = bucket_rows(s3, "big")
    assert len(seqs) == 120_000 and len(set(seqs)) == 120_000
    assert_only_data_objects(s3)


# -- disk budget ----------------------------------------------------------------------------------
def file_sizes(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in (tmp_path / "data" / "parquet").rglob("*.parquet"))


def test_budget_evicts_only_synced_files_and_refuses_writes_when_only_unsynced_remain(
    tmp_path: Path, s3: S3
) -> None:
    budget = 60_000
    server = start(tmp_path, s3, sync_config(s3, storage_max_disk_bytes=budget))
    for batch in range(6):  # each persist makes one ~20 KB file
        write_rows(server, "iot", "cpu", batch * 2000, 2000)
        persist(server)
        wait_for(lambda: drained(server), what="the upload")
    wait_for(lambda: file_sizes(tmp_path) <= budget, what="eviction under the budget")
    assert sorted(bucket_rows(s3, "cpu")) == list(range(12000))  # the bucket keeps everything
    assert 0 < local_count(server, "iot", "cpu") < 12000  # queries see what remains local
    assert "evicted" in server.log() and "already in the bucket" in server.log()
    # Now nothing more can be uploaded: the budget fills with unsynced files, then writes stop.
    s3.down()
    refused = None
    for batch in range(6, 30):
        r = server.write("iot", f"cpu,dev=x seq={batch}i {time.time_ns()}")
        if r.status == 507:
            refused = r
            break
        write_rows(server, "iot", "cpu", batch * 2000, 2000)
        persist(server)
        wait_for(lambda: budget_settled(server), what="the budget check after the persist")
    assert refused is not None, status(server)
    assert "waits for upload" in refused.text and "storage.max_disk_bytes" in refused.text
    queued = status(server)["queued_files"]
    assert queued >= 1
    health = server.request("GET", "/health").json()
    assert health["components"]["persist"]["status"] == "degraded"
    # Uploads resume: synced files become evictable and writes are accepted again.
    s3.up()
    wait_for(lambda: server.write("iot", f"cpu,dev=y seq=1i {time.time_ns()}").status == 204, timeout=60)


def test_budget_without_sync_evicts_oldest_files(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[storage]\nmax_disk_bytes = 40000\n")
    server = Server(tmp_path / "data", args=["--config", str(config)]).start()
    for batch in range(5):
        write_rows(
            server, "iot", "cpu", batch * 2000, 2000, base_ns=1_764_000_000_000_000_000 + batch * 10**12
        )
        persist(server)
    wait_for(lambda: file_sizes(tmp_path) <= 40000, what="eviction")
    # The budget logs after it evicts: wait for the line rather than read the log at once.
    wait_for(lambda: "retention by size" in server.log(), what="the eviction's log line")
    remaining = server.query("iot", "SELECT min(seq) AS lo, max(seq) AS hi FROM cpu")[0]
    assert remaining["lo"] > 0 and remaining["hi"] == 9999  # the oldest went first


# -- compaction and another engine ----------------------------------------------------------------
def test_compaction_merges_a_closed_day_and_replaces_its_objects(tmp_path: Path, s3: S3) -> None:
    config = sync_config(s3, storage_compact_interval="1s")
    server = start(tmp_path, s3, config)
    yesterday = (time.time_ns() // DAY_NS - 1) * DAY_NS
    for batch in range(4):  # four small files of yesterday
        write_rows(server, "iot", "cpu", batch * 500, 500, base_ns=yesterday + batch * 3 * 3600 * 10**9)
        persist(server)
    wait_for(lambda: len(server.query("iot", "SELECT * FROM system.parquet_files")) == 1, what="compaction")
    wait_for(lambda: drained(server) and len(parquet_keys(s3)) == 1, what="old objects replaced")
    assert sorted(bucket_rows(s3, "cpu")) == list(range(2000))
    assert local_count(server, "iot", "cpu") == 2000
    merged = pq.ParquetFile(io.BytesIO(s3.get(parquet_keys(s3)[0])))
    assert merged.metadata.num_rows == 2000 and merged.metadata.num_row_groups == 1
    assert_only_data_objects(s3)


def test_another_engine_reads_the_bucket_with_hive_partitions(tmp_path: Path, s3: S3) -> None:
    from datafusion import SessionContext

    server = start(tmp_path, s3)
    write_rows(server, "iot", "cpu", 0, 3000, base_ns=1_764_000_000_000_000_000)
    write_rows(server, "iot", "cpu", 3000, 1000, base_ns=1_764_000_000_000_000_000 + DAY_NS)
    persist(server)
    wait_for(lambda: drained(server), what="the upload")
    s3.download(PREFIX + "/", tmp_path / "bucket")
    ctx = SessionContext()
    ctx.register_parquet(
        "cpu",
        str(tmp_path / "bucket" / "iot" / "cpu") + "/",
        table_partition_cols=[("date", pa.string()), ("node", pa.string())],
    )
    theirs = ctx.sql("SELECT count(*) AS n, sum(v) AS s FROM cpu WHERE node = 'test-node'").to_pylist()
    ours = server.query("iot", "SELECT count(*) AS n, sum(v) AS s FROM cpu")
    assert theirs == ours == [{"n": 4000, "s": sum(i * 0.5 for i in range(4000))}]
    days = ctx.sql("SELECT date, count(*) AS n FROM cpu GROUP BY date ORDER BY date").to_pylist()
    assert days == [{"date": "2025-11-24", "n": 3000}, {"date": "2025-11-25", "n": 1000}]
    assert ctx.sql("SELECT count(*) AS n FROM cpu WHERE node = 'other'").to_pylist() == [{"n": 0}]


def test_a_late_write_into_a_synced_file_leaves_one_copy_in_the_bucket(tmp_path: Path, s3: S3) -> None:
    server = start(tmp_path, s3)
    base = 1_764_000_000_000_000_000
    write_rows(server, "iot", "cpu", 0, 100, base_ns=base)
    persist(server)
    wait_for(lambda: drained(server), what="the first upload")
    first = parquet_keys(s3)
    s3.down()
    write_rows(server, "iot", "cpu", 0, 10, base_ns=base)  # the same points again: they replace the old
    persist(server)
    assert parquet_keys(s3) == first  # the old object stays while its replacement cannot be sent
    assert status(server)["deletes_pending"] == 1
    s3.up()
    server.request("POST", "/api/v3/sync")
    wait_for(lambda: drained(server), what="the replacement and the delete")
    assert parquet_keys(s3) != first and len(parquet_keys(s3)) == 1
    assert sorted(bucket_rows(s3, "cpu")) == list(range(100))
    assert_only_data_objects(s3)


def test_compaction_during_an_outage_keeps_the_old_objects_until_the_merged_one_is_up(
    tmp_path: Path, s3: S3
) -> None:
    server = start(tmp_path, s3, sync_config(s3, storage_compact_interval="1s"))
    yesterday = (time.time_ns() // DAY_NS - 1) * DAY_NS
    for batch in range(3):
        write_rows(server, "iot", "cpu", batch * 100, 100, base_ns=yesterday + batch * 3 * 3600 * 10**9)
        persist(server)
        wait_for(lambda: drained(server), what="the upload")
    assert len(parquet_keys(s3)) == 3
    s3.down()
    wait_for(lambda: len(server.query("iot", "SELECT * FROM system.parquet_files")) == 1, what="compaction")
    assert len(parquet_keys(s3)) == 3 and sorted(bucket_rows(s3, "cpu")) == list(range(300))
    s3.up()
    wait_for(lambda: drained(server) and len(parquet_keys(s3)) == 1, timeout=60, what="the swap")
    assert sorted(bucket_rows(s3, "cpu")) == list(range(300))
    assert_only_data_objects(s3)


def test_retention_with_sync_never_double_counts(tmp_path: Path, s3: S3) -> None:
    server = start(tmp_path, s3, sync_config(s3, storage_retention_check_interval="1s"))
    start_ns = time.time_ns() - (2 * 3600 + 300) * 10**9  # 200 rows, 6 s apart, across the 2 h cutoff
    body = "\n".join(f"cpu,dev=d seq={i}i {start_ns + i * 6 * 10**9}" for i in range(200))
    assert server.write("iot", body).status == 204
    persist(server)
    wait_for(lambda: drained(server), what="the upload")
    r = server.request(
        "PUT",
        "/api/v3/configure/database",
        body=json.dumps({"db": "iot", "retention_period": "2h"}),
        headers={"Content-Type": "application/json"},
    )
    assert r.status < 300, r.body
    wait_for(lambda: local_count(server, "iot", "cpu") < 200, what="retention")
    # A late rewrite of points in the rewritten file merges it again.
    again = "\n".join(f"cpu,dev=d seq={i}i {start_ns + i * 6 * 10**9}" for i in range(190, 200))
    assert server.write("iot", again).status == 204
    persist(server)
    wait_for(lambda: drained(server), what="the bucket to follow")
    kept = {row["seq"] for row in server.query("iot", "SELECT seq FROM cpu")}
    seqs = bucket_rows(s3, "cpu")
    assert len(seqs) == len(set(seqs)), "a row is in the bucket twice"
    assert kept <= set(seqs), "a row the appliance still holds is missing from the bucket"
    assert_only_data_objects(s3)


def test_duckdb_reads_the_bucket_as_the_readme_shows(tmp_path: Path, s3: S3) -> None:
    import duckdb

    server = start(tmp_path, s3)
    write_rows(server, "iot", "weather", 0, 500, base_ns=1_764_000_000_000_000_000)
    write_rows(server, "iot", "weather", 500, 250, base_ns=1_764_000_000_000_000_000 + DAY_NS)
    persist(server)
    wait_for(lambda: drained(server), what="the upload")
    s3.download(PREFIX + "/", tmp_path / "fleet")
    glob = str(tmp_path / "fleet" / "iot" / "weather" / "*" / "*" / "*.parquet")
    con = duckdb.connect()
    rows = con.execute(
        "SELECT node, date, count(*) AS n, sum(v) AS s FROM read_parquet(?, hive_partitioning = true)"
        " WHERE date >= '2025-11-01' GROUP BY node, date ORDER BY node, date",
        [glob],
    ).fetchall()
    con.close()
    assert [(node, str(date), n) for node, date, n, _ in rows] == [
        ("test-node", "2025-11-24", 500),
        ("test-node", "2025-11-25", 250),
    ]
    ours = server.query("iot", "SELECT sum(v) AS s FROM weather")[0]["s"]
    assert sum(s for *_, s in rows) == ours


# -- what the bucket holds --------------------------------------------------------------------------
def test_a_stop_during_an_upload_never_publishes_part_of_a_file(tmp_path: Path, s3: S3) -> None:
    server = start(tmp_path, s3, sync_config(s3, bandwidth_limit="128KiB"))  # uploads take seconds
    for batch in range(3):
        body = "\n".join(
            f'big,dev=d{i % 50} seq={i}i,pad="{"x" * 40}{i}" {1_764_000_000_000_000_000 + i * 1000}'
            for i in range(batch * 20000, (batch + 1) * 20000)
        )
        assert server.write("iot", body).status == 204
        persist(server)
    proxy = s3.proxy
    assert proxy is not None
    wait_for(lambda: proxy.connections and status(server)["queued_files"], what="an upload under way")
    server.stop()  # SIGTERM while files are on their way
    assert_only_data_objects(s3)
    for key in parquet_keys(s3):  # whatever got there is whole
        assert pq.ParquetFile(io.BytesIO(s3.get(key))).metadata.num_rows == 20000
    server.start()
    wait_for(lambda: drained(server), timeout=60, what="the queue to drain after the restart")
    seqs = bucket_rows(s3, "big")
    assert len(seqs) == 60_000 and len(set(seqs)) == 60_000
    assert_only_data_objects(s3)


def big_parquet(path: Path, mib: int) -> int:
    """A Parquet file of about `mib` MiB that does not compress; returns its row count."""
    import os

    rows = (mib << 20) // 8
    values = pa.Array.from_buffers(pa.float64(), rows, [None, pa.py_buffer(os.urandom(rows * 8))])
    pq.write_table(pa.table({"v": values}), path, compression="none")
    return rows


def store_for(s3: S3, **over: Any) -> Any:
    """An ObjectStore on the test bucket (prefix "fleet"), settings overridable."""
    from types import SimpleNamespace

    from appliance.sync.s3store import S3Store

    settings: dict[str, Any] = {
        "bucket": s3.bucket,
        "prefix": PREFIX,
        "endpoint": s3.endpoint,
        "bandwidth_limit": 0,
        "region": s3.region,
        "path_style": True,
        "credentials_file": "",
        "profile": "default",
        "access_key_id": s3.access_key,
        "secret_access_key": s3.secret_key,
    }
    return S3Store(SimpleNamespace(**(settings | over)))  # type: ignore[arg-type]


class Watcher:
    """Polls the bucket while an upload runs: any object under a data key that is not the whole
    file (wrong size, or a footer that does not read with the right row count) is recorded."""

    def __init__(self, s3: S3, size: int, rows: int) -> None:
        self.s3, self.size, self.rows = s3, size, rows
        self.bad: list[str] = []
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._check()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._check()

    def _check(self) -> None:
        for obj in self.s3.objects(PREFIX + "/"):
            self.seen += 1
            if obj["Size"] != self.size:
                self.bad.append(f"{obj['Key']}: {obj['Size']} bytes")
                continue
            try:
                found = pq.ParquetFile(io.BytesIO(self.s3.get(obj["Key"]))).metadata.num_rows
            except Exception as e:  # deleted meanwhile, or unreadable
                if obj["Key"] in self.s3.keys(PREFIX + "/"):
                    self.bad.append(f"{obj['Key']}: {e}")
                continue
            if found != self.rows:
                self.bad.append(f"{obj['Key']}: {found} rows")


def open_uploads(s3: S3) -> list[str]:
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])]


def test_a_local_read_error_mid_file_never_publishes_part_of_it(tmp_path: Path, s3: S3) -> None:
    """A file larger than one part goes as a multipart upload; a read error half-way aborts it."""
    local = tmp_path / "big.parquet"
    rows = big_parquet(local, 24)
    size = local.stat().st_size

    class Failing(type(Path())):  # type: ignore[misc]
        def open(self, *a: Any, **k: Any) -> Any:  # the disk fails after 12 MiB
            f = Path(str(self)).open(*a, **k)
            real = f.read

            def read(n: int = -1) -> bytes:
                if f.tell() >= 12 << 20:
                    raise OSError(5, "Input/output error")
                return real(n)

            f.read = read
            return f

    store = store_for(s3)
    rel = "iot/big/date=2025-11-24/node=test-node/1600-1.parquet"
    with Watcher(s3, size, rows) as watch:
        with pytest.raises(OSError, match="Input/output error"):
            store.put(Failing(str(local)), rel, rows, threading.Event())
    assert watch.bad == [] and s3.keys(PREFIX + "/") == []
    assert open_uploads(s3) == []  # aborted, not left to a lifecycle rule
    with Watcher(s3, size, rows) as watch:
        store.put(local, rel, rows, threading.Event())
    assert watch.bad == [] and watch.seen and s3.keys(PREFIX + "/") == [f"{PREFIX}/{rel}"]


def test_a_stop_during_a_multipart_upload_aborts_it(tmp_path: Path, s3: S3) -> None:
    from appliance.sync.store import Stopped

    local = tmp_path / "big.parquet"
    rows = big_parquet(local, 20)
    store = store_for(s3, bandwidth_limit=4 << 20)  # 5 s for the file
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    with Watcher(s3, local.stat().st_size, rows) as watch, pytest.raises(Stopped):
        store.put(local, "iot/big/date=2025-11-24/node=test-node/1600-1.parquet", rows, stop)
    assert watch.bad == [] and s3.keys(PREFIX + "/") == [] and open_uploads(s3) == []


def test_a_stop_during_a_large_upload_publishes_nothing_and_the_restart_sends_it_whole(
    tmp_path: Path, s3: S3
) -> None:
    """SIGTERM while a >8 MiB file (several parts) is on its way: no object under its key is
    ever incomplete (the bucket is watched throughout), and after the restart it is there once."""
    import secrets

    server = start(tmp_path, s3, sync_config(s3, bandwidth_limit="2MiB"))
    # The persister also persists when the wall clock crosses a gen1 boundary (every 10 minutes):
    # writing across one would split the data into files smaller than one part.
    gen1_s = 600
    wait_for(lambda: time.time() % gen1_s < gen1_s - 60, timeout=70, what="a minute clear of a gen1 boundary")
    base = 1_764_000_000_000_000_000
    for part in range(4):  # ~24 MB of hex that does not compress much: a file over one part
        body = "\n".join(
            f'blob seq={i}i,pad="{secrets.token_hex(48)}" {base + i * 1000}'
            for i in range(part * 50_000, (part + 1) * 50_000)
        )
        assert server.write("iot", body).status == 204
    persist(server)
    local = next((tmp_path / "data" / "parquet").rglob("*.parquet"))
    assert local.stat().st_size > 9 << 20
    with Watcher(s3, local.stat().st_size, 200_000) as watch:
        wait_for(lambda: open_uploads(s3), what="the multipart upload to start")
        server.stop()  # SIGTERM half-way
        assert s3.keys(PREFIX + "/") == [] and open_uploads(s3) == []  # aborted on the way out
        server.start()
        server.request("POST", "/api/v3/sync")
        wait_for(lambda: drained(server), timeout=60, what="the upload after the restart")
    assert watch.bad == [] and watch.seen
    seqs = bucket_rows(s3, "blob")
    assert len(seqs) == 200_000 and len(set(seqs)) == 200_000
    assert_only_data_objects(s3)


def test_pyarrow_part_size_is_what_the_memory_sum_assumes(s3: S3) -> None:
    """tests/test_systemd_unit.py's SYNC_UPLOAD_MIB counts two of pyarrow's 10 MiB parts (its
    fallback without static credentials); a larger part size must update that sum."""
    store = store_for(s3)
    with store.fs.open_output_stream(f"{s3.bucket}/probe") as out:
        out.write(b"\0" * (21 << 20))
    etag = s3.client().head_object(Bucket=s3.bucket, Key="probe")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # 21 MiB in 10 MiB parts


def test_a_delete_accepts_only_no_such_key_as_already_gone(s3: S3) -> None:
    store = store_for(s3)
    store.delete("iot/cpu/date=2025-11-24/node=test-node/0000-1.parquet")  # never there: fine
    missing = store_for(s3, bucket="no-such-bucket")
    with pytest.raises(OSError, match="404 NoSuchBucket"):
        missing.delete("iot/cpu/date=2025-11-24/node=test-node/0000-1.parquet")


def test_virtual_hosted_style_on_an_ip_endpoint_falls_back_to_path_style(tmp_path: Path, s3: S3) -> None:
    store = store_for(s3, path_style=False)  # the endpoint is http://127.0.0.1:port
    assert store._options["force_virtual_addressing"] is False and store.s3.host.startswith("127.0.0.1:")
    local = tmp_path / "small.parquet"
    pq.write_table(pa.table({"v": [1, 2, 3]}), local)
    store.put(local, "iot/cpu/date=2025-11-24/node=test-node/0000-1.parquet", 3, threading.Event())
    store.delete("iot/cpu/date=2025-11-24/node=test-node/0000-1.parquet")
    assert s3.keys("") == []


def test_a_garbled_answer_is_an_os_error_not_an_http_exception() -> None:
    import socket

    from appliance.sync.s3 import Credentials, S3Client

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):  # every attempt
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"this is not HTTP\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    client = S3Client(f"http://127.0.0.1:{port}", "edge", "us-east-1", True, Credentials("k", "s"))
    with pytest.raises(OSError, match="DELETE s3://edge/x failed"):
        client.delete("x")
    listener.close()


def test_static_credentials_are_resolved_once_and_pyarrow_gets_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3
) -> None:
    shared = tmp_path / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n"
        f"[edge]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
        "aws_session_token = tok\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    # sync.profile without sync.credentials_file: the shared file's [edge], for both clients.
    store = store_for(s3, access_key_id="", secret_access_key="", profile="edge")
    assert (store.s3.creds.key_id, store.s3.creds.token) == (s3.access_key, "tok")
    o = store._options
    assert (o["access_key"], o["secret_key"], o["session_token"]) == (s3.access_key, s3.secret_key, "tok")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    store = store_for(s3, access_key_id="", secret_access_key="", credentials_file=str(shared))
    assert store.s3.creds.key_id == store._options["access_key"] == "from-env"  # the README's order


def test_objects_earlier_versions_left_are_removed_at_start(tmp_path: Path, s3: S3) -> None:
    data = f"{PREFIX}/iot/cpu/date=2025-11-24/node=test-node/1600-1.parquet"
    strays = [
        f"{PREFIX}/_staging/iot/cpu/date=2025-11-24/node=test-node/1600-2.parquet",
        f"{PREFIX}/_staging/iot/cpu/date=2025-11-24/node=test-node/",
        f"{PREFIX}/iot/cpu/date=2025-11-24/node=test-node/",
    ]
    for key in [data, *strays, "elsewhere/keep/"]:
        s3.put(key, b"x" if key.endswith(".parquet") else b"")
    server = start(tmp_path, s3)
    wait_for(lambda: not set(strays) & set(s3.keys("")), what="the strays to go")
    assert sorted(s3.keys("")) == sorted([data, "elsewhere/keep/"])  # outside the prefix: not ours
    assert "removed 3 object(s) earlier versions left" in server.log()


def test_signed_requests_match_botocore_for_awkward_keys_and_addressing() -> None:
    """Our SigV4 requests against botocore's own (URL and Authorization), for keys that need
    escaping, path-style and virtual-hosted addressing, an IP endpoint and a session token."""
    import datetime as dt
    import urllib.parse

    import botocore.session
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config as BotoConfig

    from appliance.sync.s3 import Credentials, S3Client, sign

    keys = [
        "fleet/my db/cpu/date=2025-11-24/node=n/1600-1.parquet",
        "pré/ü+b=c/ä€😀/a~b%20c.parquet",
        "p//double/x+y=z",
    ]
    setups = [  # region, endpoint, path_style
        ("eu-west-1", "", False),
        ("us-east-1", "https://minio.example:9000", True),
        ("us-east-1", "https://minio.example:9000", False),
        ("us-east-1", "http://127.0.0.1:9000", False),  # an IP: path style, as botocore does
    ]
    checked = 0
    for region, endpoint, path_style in setups:
        for token in ("", "tok/+=en"):
            creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
            ours = S3Client(endpoint, "edge", region, path_style, creds)
            session = botocore.session.get_session()
            session.set_credentials(creds.key_id, creds.secret, token or None)
            style = "path" if path_style and endpoint else "virtual" if endpoint else "auto"
            client = session.create_client(
                "s3",
                region_name=region,
                endpoint_url=endpoint or None,
                config=BotoConfig(s3={"addressing_style": style}),
            )
            sent: dict[str, Any] = {}

            def capture(request: Any, sent: dict[str, Any] = sent, **_: Any) -> AWSResponse:
                sent["url"], sent["headers"], sent["method"] = request.url, request.headers, request.method
                return AWSResponse(
                    request.url, 204, {}, type("Raw", (), {"stream": lambda self, **k: iter([b""])})()
                )

            client.meta.events.register("before-send", capture)
            for key in keys:
                calls: list[tuple[Callable[..., object], dict[str, Any]]] = [
                    (client.delete_object, {"Key": key}),
                    (client.abort_multipart_upload, {"Key": key, "UploadId": "u/1+2"}),
                    (client.list_objects_v2, {"Prefix": key, "MaxKeys": 1000}),
                ]
                for call, args in calls:
                    try:
                        call(Bucket="edge", **args)
                    except Exception:
                        pass  # our fake answer does not parse for every operation; the request was sent
                    url = urllib.parse.urlsplit(sent["url"])
                    is_list = sent["method"] == "GET"
                    assert url.netloc == ours.host, (endpoint, path_style, url.netloc)
                    assert url.path == ours.path("" if is_list else key) or (
                        is_list and url.path == ours.path("") + "/"
                    )
                    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                    header = {
                        k: v.decode() if isinstance(v, bytes) else v for k, v in sent["headers"].items()
                    }
                    when = dt.datetime.strptime(header["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
                    ours_signed = sign(
                        sent["method"],
                        ours.host,
                        url.path,
                        query,
                        region,
                        creds,
                        when,
                        header["X-Amz-Content-SHA256"],
                    )
                    assert ours_signed["authorization"] == header["Authorization"], (
                        endpoint,
                        key,
                        sent["method"],
                    )
                    checked += 1
    assert checked == len(setups) * 2 * len(keys) * 3
