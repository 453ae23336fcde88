"""End-to-end: a real `appliance serve` process, real HTTP over loopback."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import time

import pyarrow.parquet as pq

from tests.server import Server


def test_write_then_query_at_once(server: Server) -> None:
    r = server.write("home", 'cpu,host=a usage=1.5,count=3i,ok=true,msg="hi" 1700000000000000000\n')
    assert r.status == 204, r.body
    rows = server.query("home", "SELECT * FROM cpu")
    assert rows == [
        {"count": 3, "host": "a", "msg": "hi", "ok": True, "time": "2023-11-14T22:13:20", "usage": 1.5}
    ]


def test_partial_write_stores_good_lines_and_lists_bad_ones(server: Server) -> None:
    body = 'm,t=1 f=1 1\nm,t=2 f= 2\nm,t=3 f=3 3\nm,t=4 f="str" 4\n'
    r = server.write("db", body, precision="s")
    assert r.status == 400
    doc = r.json()
    assert doc["error"] == "partial write of line protocol occurred"
    assert [d["line_number"] for d in doc["data"]] == [2, 4]
    assert doc["data"][0]["original_line"] == "m,t=2 f= 2"
    assert (
        "expected iox::column_type::field::float, got iox::column_type::field::string"
        in doc["data"][1]["error_message"]
    )
    assert server.query("db", "SELECT t FROM m ORDER BY t") == [{"t": "1"}, {"t": "3"}]


def test_accept_partial_false_rejects_everything(server: Server) -> None:
    r = server.write("db", "m f=1 1\nm f=oops 2\n", accept_partial="false")
    assert r.status == 400
    doc = r.json()
    assert doc["error"] == "line protocol parsing error"
    assert doc["data"]["line_number"] == 2
    r = server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT count(*) AS n FROM m"})
    assert r.status == 404 or r.json() == [{"n": 0}]


def test_type_conflict_across_writes_is_rejected_per_line(server: Server) -> None:
    assert server.write("db", "m v=1i 1").status == 204
    r = server.write("db", "m v=2.5 2\nm v=3i 3")
    assert r.status == 400
    assert r.json()["data"][0]["error_message"] == (
        "invalid column type for column 'v', expected iox::column_type::field::integer,"
        " got iox::column_type::field::float"
    )
    assert [row["v"] for row in server.query("db", "SELECT v FROM m ORDER BY time")] == [1, 3]


def test_v1_and_v2_writes_default_to_ns_and_are_all_or_nothing(server: Server) -> None:
    assert server.request("POST", "/write", {"db": "v1"}, "m f=1 1000000000").status == 204
    assert (
        server.request("POST", "/api/v2/write", {"bucket": "v2", "org": "x"}, "m f=1 1000000000").status
        == 204
    )
    assert server.query("v1", "SELECT time FROM m") == [{"time": "1970-01-01T00:00:01"}]
    r = server.request("POST", "/api/v2/write", {"bucket": "v2"}, "m f=2 2\nm f=\n")
    assert r.status == 400
    assert r.json()["code"] == "invalid" and "line 2" in r.json()["message"]
    r = server.request("POST", "/write", {"db": "v1"}, "m f=\n")
    assert r.status == 400 and "error" in r.json()
    assert server.request("POST", "/write", {"db": "v1", "rp": "short"}, "m f=5 1").status == 204
    assert server.query("v1/short", "SELECT f FROM m") == [{"f": 5.0}]


def test_request_errors_are_clear(server: Server) -> None:
    r = server.request("POST", "/api/v3/write_lp", {}, "m f=1")
    assert r.status == 400 and "missing query parameter 'db'" in r.text
    r = server.write("db", "")
    assert r.status == 400 and "incoming write was empty" in r.text
    r = server.write("bad name", "m f=1")
    assert r.status == 400 and "invalid database name" in r.text
    r = server.write("db", "m f=1", precision="fortnight")
    assert r.status == 400 and "invalid precision" in r.text
    assert server.request("GET", "/nope").status == 404


def test_gzip_bodies_and_size_limit(tmp_path) -> None:
    s = Server(tmp_path / "d", args=["--max-http-request-size", "2048"]).start()
    try:
        lines = "".join(f"m,i={i} f={i} {i}\n" for i in range(50)).encode()
        r = s.request(
            "POST",
            "/api/v3/write_lp",
            {"db": "g"},
            gzip.compress(lines),
            headers={"Content-Encoding": "gzip"},
        )
        assert r.status == 204, r.body
        assert s.query("g", "SELECT count(*) AS n FROM m") == [{"n": 50}]
        big = "".join(f"m,i={i} f={i} {i}\n" for i in range(500)).encode()
        r = s.request(
            "POST", "/api/v3/write_lp", {"db": "g"}, gzip.compress(big), headers={"Content-Encoding": "gzip"}
        )
        assert r.status == 413 and "2048" in r.text
        assert s.request("GET", "/health").status == 200
    finally:
        s.stop()


def test_schema_evolution_reads_null_in_older_rows(server: Server) -> None:
    server.write("db", "m,a=1 x=1 1", precision="s")
    server.request("POST", "/api/v3/persist")
    server.write("db", "m,a=2,b=new x=2,y=5i 2", precision="s")
    rows = server.query("db", "SELECT a, b, x, y FROM m ORDER BY time")
    assert rows == [{"a": "1", "x": 1.0}, {"a": "2", "b": "new", "x": 2.0, "y": 5}]


def test_identifiers_as_influxdb_users_write_them(server: Server) -> None:
    server.write("db", "cpu v=1 1\nmy.table v=2 2\n")
    assert server.query("db", "SELECT v FROM 'cpu'") == [{"v": 1.0}]
    assert server.query("db", 'SELECT v FROM "my.table"') == [{"v": 2.0}]


def test_show_tables_and_information_schema(server: Server) -> None:
    server.write("db", 'cpu,host=a usage=1,n=1i,u=1u,s="x",b=t 1')
    tables = server.query("db", "SHOW TABLES")
    cpu = [t for t in tables if t["table_name"] == "cpu"]
    assert cpu and cpu[0]["table_type"] == "BASE TABLE"
    cols = server.query(
        "db", "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'cpu'"
    )
    types = {c["column_name"]: c["data_type"] for c in cols}
    assert types == {
        "b": "Boolean",
        "host": "Dictionary(Int32, Utf8)",
        "n": "Int64",
        "s": "Utf8",
        "time": "Timestamp(ns)",
        "u": "UInt64",
        "usage": "Float64",
    }
    assert server.query("db", "SHOW COLUMNS FROM cpu")


def test_formats_and_accept_header(server: Server) -> None:
    server.write("db", "m,t=a v=1 1000000000")
    csv = server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT t, v FROM m", "format": "csv"})
    assert csv.headers["Content-Type"].startswith("text/csv") and csv.text.splitlines() == ["t,v", "a,1.0"]
    jl = server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT t FROM m", "format": "jsonl"})
    assert [json.loads(x) for x in jl.text.splitlines()] == [{"t": "a"}]
    pq_body = server.request(
        "GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT * FROM m", "format": "parquet"}
    )
    assert pq.read_table(io.BytesIO(pq_body.body)).num_rows == 1
    pretty = server.request(
        "GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT t FROM m"}, headers={"Accept": "text/plain"}
    )
    assert "| t |" in pretty.text.replace("  ", " ") or "| t" in pretty.text
    bad = server.request(
        "GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT 1"}, headers={"Accept": "image/png"}
    )
    assert bad.status == 400 and "invalid mime type" in bad.text
    post = server.request(
        "POST",
        "/api/v3/query_sql",
        body=json.dumps({"db": "db", "q": "SELECT v FROM m WHERE t = $t", "params": {"t": "a"}}),
        headers={"Content-Type": "application/json"},
    )
    assert post.status == 200 and post.json() == [{"v": 1.0}]


def test_query_errors(server: Server) -> None:
    server.write("db", "m v=1 1")
    r = server.request("GET", "/api/v3/query_sql", {"db": "nope", "q": "SELECT 1"})
    assert r.status == 404 and "nope" in r.json()["error"]
    r = server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELEC oops"})
    assert r.status == 400 and r.text
    r = server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT * FROM missing_table"})
    assert r.status == 400 and "missing_table" in r.text
    r = server.request("GET", "/api/v3/query_influxql", {"db": "db", "q": "SELECT * FROM m"})
    assert r.status == 501 and "SQL" in r.json()["error"]


def test_query_timeout_is_a_clear_4xx(tmp_path) -> None:
    s = Server(tmp_path / "d", args=["--query-timeout", "1ms"]).start()
    try:
        s.write("db", "m v=1 1")
        r = s.request(
            "GET",
            "/api/v3/query_sql",
            {"db": "db", "q": "SELECT count(*) FROM generate_series(1, 300000000)"},
        )
        assert r.status == 408 and "query.timeout" in r.text
        assert s.request("GET", "/health").status == 200
    finally:
        s.stop()


def test_query_memory_limit_is_a_clear_4xx(tmp_path) -> None:
    s = Server(tmp_path / "d", args=["--query-memory-limit", "1MiB"]).start()
    try:
        s.write("db", "m v=1 1")
        r = s.request(
            "GET",
            "/api/v3/query_sql",
            {"db": "db", "q": "SELECT array_agg(value) FROM generate_series(1, 3000000)"},
        )
        assert r.status == 400 and "query.memory_limit" in r.text
        assert s.query("db", "SELECT v FROM m") == [{"v": 1.0}]
    finally:
        s.stop()


def test_same_point_twice_is_one_row_last_write_wins(server: Server) -> None:
    server.write("db", "m,host=a x=1,y=1 10\n")
    server.write("db", "m,host=a y=2 10\nm,host=b x=5 10\n")
    rows = server.query("db", "SELECT host, x, y FROM m ORDER BY host")
    assert rows == [{"host": "a", "x": 1.0, "y": 2.0}, {"host": "b", "x": 5.0}]
    server.request("POST", "/api/v3/persist")
    assert server.query("db", "SELECT host, x, y FROM m ORDER BY host") == rows


def test_persist_then_restart_keeps_everything(server: Server) -> None:
    server.write("db", "".join(f"m,d=d{i % 3} v={i} {i}\n" for i in range(100)))
    r = server.request("POST", "/api/v3/persist")
    assert r.status == 200 and r.json()["files"] >= 1
    files = server.query("db", "SELECT table_name, row_count FROM system.parquet_files")
    assert sum(f["row_count"] for f in files) == 100
    server.write("db", "m,d=d9 v=1000 1000")  # in the WAL only until the clean stop persists it
    assert server.stop() == 0
    assert "persisted files=1 rows=1" in server.log()
    server.start()
    assert server.query("db", "SELECT count(*) AS n, sum(v) AS s FROM m") == [
        {"n": 101, "s": float(sum(range(100)) + 1000)}
    ]
    parquet_root = server.data_dir / "parquet" / "db" / "m"
    assert any(p.suffix == ".parquet" for p in parquet_root.rglob("*"))


def test_configure_database_and_table(server: Server) -> None:
    j = {"Content-Type": "application/json"}
    assert (
        server.request(
            "POST",
            "/api/v3/configure/database",
            body=json.dumps({"db": "iot", "retention_period": "30d"}),
            headers=j,
        ).status
        == 200
    )
    r = server.request("POST", "/api/v3/configure/database", body=json.dumps({"db": "iot"}), headers=j)
    assert r.status == 409
    listed = server.request("GET", "/api/v3/configure/database", {"format": "json"}).json()
    assert {"iox::database": "iot"} in listed
    body = {"db": "iot", "table": "env", "tags": ["room"], "fields": [{"name": "temp", "type": "float64"}]}
    assert server.request("POST", "/api/v3/configure/table", body=json.dumps(body), headers=j).status == 200
    r = server.write("iot", "env,room=k temp=1i 1")
    assert r.status == 400 and "expected iox::column_type::field::float" in r.text
    assert server.request("DELETE", "/api/v3/configure/table", {"db": "iot", "table": "env"}).status == 200
    assert server.request("DELETE", "/api/v3/configure/database", {"db": "iot"}).status == 200
    assert server.request("DELETE", "/api/v3/configure/database", {"db": "iot"}).status == 404
    r = server.request(
        "POST", "/api/v3/configure/database", body="db=x", headers={"Content-Type": "text/plain"}
    )
    assert r.status == 415


def test_retention_removes_old_data(tmp_path) -> None:
    s = Server(tmp_path / "d", args=[]).start()
    try:
        j = {"Content-Type": "application/json"}
        s.request(
            "POST",
            "/api/v3/configure/database",
            body=json.dumps({"db": "r", "retention_period": "1h"}),
            headers=j,
        )
        now = time.time_ns()
        s.write("r", f"m v=1 {now - 2 * 3600 * 10**9}\nm v=2 {now}\n")
        assert s.query("r", "SELECT v FROM m") == [{"v": 2.0}]
        s.request("POST", "/api/v3/persist")
        assert s.query("r", "SELECT v FROM m") == [{"v": 2.0}]
    finally:
        s.stop()


def test_auth_is_on_by_default(auth_server: Server) -> None:
    token_file = auth_server.data_dir / "admin-token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    token = auth_server.token
    assert token and token.startswith("apiv3_")
    assert token not in auth_server.log()
    assert auth_server.request("GET", "/health", token="").status == 200
    assert auth_server.request("GET", "/ping", token="").status == 200
    r = auth_server.request("POST", "/api/v3/write_lp", {"db": "a"}, "m f=1", token="")
    assert r.status == 401 and r.json() == {"error": "the request was not authenticated"}
    assert (
        auth_server.request("POST", "/api/v3/write_lp", {"db": "a"}, "m f=1", token="apiv3_wrong").status
        == 401
    )
    assert auth_server.write("a", "m f=1 1").status == 204
    r = auth_server.request(
        "POST", "/api/v3/write_lp", {"db": "a"}, "m f=2 2", headers={"Authorization": f"Token {token}"}
    )
    assert r.status == 204
    assert auth_server.request("POST", "/write", {"db": "a", "p": token}, "m f=3 3", token="").status == 204
    for empty in ("Bearer", "Bearer ", "Token "):  # no token at all: 401, as without the header
        r = auth_server.request(
            "GET", "/api/v3/query_sql", {"db": "a", "q": "SELECT 1"}, headers={"Authorization": empty}
        )
        assert r.status == 401, (empty, r.body)
    r = auth_server.request(
        "GET", "/api/v3/query_sql", {"db": "a", "q": "x"}, headers={"Authorization": "Foo x"}
    )
    assert r.status == 400 and "malformed" in r.text


def test_regenerated_admin_token_replaces_the_old_one(auth_server: Server) -> None:
    old = auth_server.token
    r = auth_server.request("POST", "/api/v3/configure/token/admin/regenerate")
    assert r.status == 201
    new = r.json()["token"]
    assert new != old and (auth_server.data_dir / "admin-token").read_text().strip() == new
    assert (
        auth_server.request("GET", "/api/v3/configure/database", {"format": "json"}, token=old).status == 401
    )
    assert (
        auth_server.request("GET", "/api/v3/configure/database", {"format": "json"}, token=new).status == 200
    )


def test_without_auth_disables_token_endpoints(server: Server) -> None:
    assert server.request("POST", "/api/v3/configure/token/admin").status == 405


def test_rewrite_after_persist_is_still_one_row(server: Server) -> None:
    server.write("db", "m,host=a x=1,y=1 10\nm,host=b x=7 10\nm,host=a x=3 20\n")
    server.request("POST", "/api/v3/persist")
    server.write("db", "m,host=a y=2 10\n")  # the same point again, now in the buffer
    expected = [{"host": "a", "x": 1.0, "y": 2.0}, {"host": "a", "x": 3.0}, {"host": "b", "x": 7.0}]
    assert server.query("db", "SELECT host, x, y FROM m ORDER BY host, time") == expected
    server.request("POST", "/api/v3/persist")  # merged into one file for good
    assert server.query("db", "SELECT host, x, y FROM m ORDER BY host, time") == expected
    files = server.query("db", "SELECT row_count FROM system.parquet_files")
    assert sum(f["row_count"] for f in files) == 3
    server.stop()
    server.start()
    assert server.query("db", "SELECT host, x, y FROM m ORDER BY host, time") == expected
