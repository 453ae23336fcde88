"""Restarts, deletes, limits and timers: state that must survive or disappear exactly as documented."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

from tests.server import Server, wait_for

JSON = {"Content-Type": "application/json"}


def test_rejected_write_that_created_schema_survives_restart(tmp_path: Path) -> None:
    s = Server(tmp_path / "d", env={"APPLIANCE_CATALOG_MAX_COLUMNS": "2"}).start()
    r = s.request("POST", "/write", {"db": "d"}, "n,h=a w=1 2\nm a=1,b=2,c=3 3")
    assert r.status in (400, 422)
    assert s.request("POST", "/write", {"db": "d"}, "n,h=a w=2 4").status == 204
    s.kill()
    s.start()
    assert s.query("d", "SELECT w FROM n") == [{"w": 2.0}]
    s.stop()


def test_deleted_database_never_comes_back(tmp_path: Path) -> None:
    s = Server(tmp_path / "d").start()
    s.write("a", 'm secret="deleted-db-row" 1', precision="ns")
    assert s.request("DELETE", "/api/v3/configure/database", {"db": "a"}).status == 200
    s.kill()
    s.start()
    s.write("b", "m v=1 1", precision="ns")
    s.kill()
    s.start()
    assert s.query("b", "SELECT * FROM m") == [{"time": "1970-01-01T00:00:00.000000001", "v": 1.0}]
    assert s.request("GET", "/api/v3/query_sql", {"db": "a", "q": "SELECT 1"}).status == 404
    s.write("a", "m v=2 2", precision="ns")  # recreated: a new, empty database
    assert s.query("a", "SELECT * FROM m") == [{"time": "1970-01-01T00:00:00.000000002", "v": 2.0}]
    s.stop()


def test_deleted_table_files_are_removed(server: Server) -> None:
    server.write("db", "gone v=1 1\nkept v=2 2\n")
    server.request("POST", "/api/v3/persist")
    assert server.request("DELETE", "/api/v3/configure/table", {"db": "db", "table": "gone"}).status == 200
    files = server.query("db", "SELECT table_name FROM system.parquet_files")
    assert files == [{"table_name": "kept"}]
    assert not list((server.data_dir / "parquet" / "db" / "gone").rglob("*.parquet"))


def test_no_sync_write_is_acknowledged_and_visible(server: Server) -> None:
    assert server.write("db", "m v=1 1", no_sync="true").status == 204
    wait_for(lambda: server.query("db", "SELECT count(*) AS n FROM m") == [{"n": 1}], 5, "the row")


def test_gen1_window_paces_persists_under_steady_ingest(tmp_path: Path) -> None:
    s = Server(tmp_path / "d", args=["--gen1-duration", "2s"]).start()
    try:
        end = time.monotonic() + 6
        i = 0
        while time.monotonic() < end:
            s.write("db", f"m,i={i} v={i}")
            i += 1
            time.sleep(0.02)  # steady ingest spread over three 2 s windows is what is tested
        files = s.query("db", "SELECT row_count FROM system.parquet_files")
        assert 2 <= len(files) <= 8, f"{len(files)} files for a 6 s run with 2 s windows"
        total = s.query("db", "SELECT count(*) AS n FROM m")[0]["n"]
        assert total == i
    finally:
        s.stop()


def test_retention_removes_expired_files_from_disk(tmp_path: Path) -> None:
    s = Server(tmp_path / "d", env={"APPLIANCE_STORAGE_RETENTION_CHECK_INTERVAL": "1s"}).start()
    try:
        s.request(
            "POST",
            "/api/v3/configure/database",
            body=json.dumps({"db": "r", "retention_period": "1h"}),
            headers=JSON,
        )
        now = time.time_ns()
        hour = 3600 * 10**9
        s.write("r", f"m v=1 {now - 5 * hour}\nm v=2 {now - 3 * hour}\n")  # one file, all expired
        s.write("r", f"m v=3 {now}\n")
        s.request("POST", "/api/v3/persist")

        def unexpired() -> list[dict[str, Any]] | None:
            files = s.query("r", "SELECT row_count, min_time FROM system.parquet_files")
            return files if all(f["min_time"] >= now - hour for f in files) else None

        files = wait_for(unexpired, 10, "the expired file to go")
        assert sum(f["row_count"] for f in files) == 1
        assert len(list((s.data_dir / "parquet").rglob("*.parquet"))) == len(files)
        assert s.query("r", "SELECT v FROM m") == [{"v": 3.0}]
    finally:
        s.stop()


def test_zero_retention_is_refused(server: Server) -> None:
    r = server.request(
        "POST",
        "/api/v3/configure/database",
        body=json.dumps({"db": "z", "retention_period": "0s"}),
        headers=JSON,
    )
    assert r.status == 400 and "longer than zero" in r.text


def test_second_server_on_same_data_dir_refuses_to_start(server: Server, tmp_path: Path) -> None:
    server.write("db", "m v=1 1")
    other = Server(server.data_dir)
    try:
        other.start(timeout=10)
        raise AssertionError("a second server started on a data dir in use")
    except RuntimeError as e:
        assert "in use by another appliance process" in str(e)
    assert server.query("db", "SELECT v FROM m") == [{"v": 1.0}]


def test_bad_input_never_gives_500(server: Server) -> None:
    r = server.request(
        "POST", "/api/v3/write_lp", {"db": "x"}, b"\x1f\x8b not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert r.status == 400
    r = server.request(
        "POST", "/api/v3/query_sql", body=json.dumps({"db": "x", "q": "SELECT 1", "format": 5}), headers=JSON
    )
    assert r.status == 400
    r = server.request(
        "POST", "/api/v3/query_sql", body=json.dumps({"db": ["x"], "q": "SELECT 1"}), headers=JSON
    )
    assert r.status == 400
    r = server.request(
        "POST",
        "/api/v3/configure/table",
        body=json.dumps({"db": "x", "table": "t", "tags": [], "fields": [{"name": 5, "type": "int64"}]}),
        headers=JSON,
    )
    assert r.status == 400
    r = server.request(
        "POST",
        "/api/v3/configure/table",
        body=json.dumps({"db": "x", "table": "t", "tags": [{"a": 1}], "fields": []}),
        headers=JSON,
    )
    assert r.status == 400
    r = server.request("POST", "/api/v3/configure/database", body="{not json", headers=JSON)
    assert r.status == 400
    assert server.request("GET", "/health").status == 200


def test_table_named_dotdot_survives_restart(server: Server) -> None:
    server.write("db", ".. v=1 1\n. v=2 2\n")
    server.request("POST", "/api/v3/persist")
    server.stop()
    server.start()
    assert server.query("db", 'SELECT v FROM ".."') == [{"v": 1.0}]
    assert server.query("db", 'SELECT v FROM "."') == [{"v": 2.0}]


def test_names_too_long_for_storage_are_rejected_per_line(server: Server) -> None:
    long_name = "t" * 600
    r = server.write("db", f"{long_name} v=1 1\nok v=2 2\n", precision="ns")
    assert r.status == 400
    assert [d["line_number"] for d in r.json()["data"]] == [1]
    assert "longer than 480 bytes" in r.json()["data"][0]["error_message"]
    assert server.write("db", "ok v=3 3", precision="ns").status == 204
    wide = "温度" * 50  # 300 bytes of UTF-8: fine for the catalog, too long as a quoted file name
    assert server.write("db", f"{wide} v=4 4", precision="ns").status == 204
    assert server.request("POST", "/api/v3/persist").status == 200
    server.stop()
    server.start()
    assert server.query("db", f'SELECT v FROM "{wide}"') == [{"v": 4.0}]
    assert server.query("db", "SELECT count(*) AS n FROM ok") == [{"n": 2}]


def test_retention_longer_than_storable_is_refused(server: Server) -> None:
    r = server.request(
        "POST",
        "/api/v3/configure/database",
        body=json.dumps({"db": "z", "retention_period": "1000y"}),
        headers=JSON,
    )
    assert r.status == 400 and "100 years" in r.text
    assert server.request("GET", "/api/v3/configure/database", {"format": "json"}).json() == []


def test_gzip_must_be_complete_and_may_have_several_members(server: Server) -> None:
    a = "".join(f"m,i={i} v={i} {i}\n" for i in range(50)).encode()
    b = "".join(f"m,i={i} v={i} {i}\n" for i in range(50, 100)).encode()
    gz = {"Content-Encoding": "gzip"}
    whole = gzip.compress(a)
    r = server.request(
        "POST", "/api/v3/write_lp", {"db": "g", "precision": "ns"}, whole[: len(whole) // 2], headers=gz
    )
    assert r.status == 400 and "truncated" in r.text
    r = server.request(
        "POST",
        "/api/v3/write_lp",
        {"db": "g", "precision": "ns"},
        gzip.compress(a) + gzip.compress(b),
        headers=gz,
    )
    assert r.status == 204
    assert server.query("g", "SELECT count(*) AS n FROM m") == [{"n": 100}]


def test_wrong_method_and_deep_json_are_client_errors(server: Server) -> None:
    assert server.request("GET", "/api/v3/write_lp", {"db": "x"}).status == 405
    r = server.request("POST", "/api/v3/configure/database", body="[" * 100_000, headers=JSON)
    assert r.status == 400


def test_rewrite_after_gen1_change_stays_one_row(tmp_path: Path) -> None:
    hour = 3600 * 10**9
    base = (time.time_ns() // hour - 3) * hour
    s = Server(tmp_path / "d", args=["--gen1-duration", "1h"]).start()
    s.write("db", f"m,k=a v=1 {base}\nm,k=a v=2 {base + 30 * 60 * 10**9}\n", precision="ns")
    s.request("POST", "/api/v3/persist")
    s.stop()
    s.args = ["--gen1-duration", "10m"]
    s.start()
    s.write("db", f"m,k=a v=10 {base}\nm,k=a v=20 {base + 30 * 60 * 10**9}\n", precision="ns")
    s.request("POST", "/api/v3/persist")
    assert s.query("db", "SELECT v FROM m ORDER BY time") == [{"v": 10.0}, {"v": 20.0}]
    s.stop()
