"""Object store sync against a real S3 endpoint (moto's server) and a real `appliance serve`."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
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
        time.sleep(2.5)  # the budget check runs every 2 s
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
    assert "retention by size" in server.log()
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
    assert s3.proxy is not None
    wait_for(lambda: s3.proxy.connections and status(server)["queued_files"], what="an upload under way")
    server.stop()  # SIGTERM while files are on their way
    assert_only_data_objects(s3)
    for key in parquet_keys(s3):  # whatever got there is whole
        assert pq.ParquetFile(io.BytesIO(s3.get(key))).metadata.num_rows == 20000
    server.start()
    wait_for(lambda: drained(server), timeout=60, what="the queue to drain after the restart")
    seqs = bucket_rows(s3, "big")
    assert len(seqs) == 60_000 and len(set(seqs)) == 60_000
    assert_only_data_objects(s3)


def test_deletes_are_signed_as_the_aws_sdk_signs_them() -> None:
    """Our one-request SigV4 signer against botocore's, on a key that needs escaping."""
    import datetime as dt

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from appliance.sync.store import _sign

    host, path = (
        "edge.s3.eu-west-1.amazonaws.com",
        "/fleet/i%3Dot/cpu/date%3D2025-11-24/node%3Dn/1600-1.parquet",
    )
    for token in ("", "session-token"):
        creds = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
        request = AWSRequest(method="DELETE", url=f"https://{host}{path}", headers={})
        S3SigV4Auth(Credentials(*creds[:2], token or None), "s3", "eu-west-1").add_auth(request)
        when = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        ours = _sign("DELETE", host, path, "eu-west-1", creds, when)
        assert ours["authorization"] == request.headers["Authorization"]
