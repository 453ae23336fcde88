"""Hostile SQL against a real server: no file written or read, no crash, bounded memory and time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.server import Response, Server, wait_for

RUNAWAY = "SELECT count(*) FROM generate_series(1, 15000000000)"


def _post(server: Server, sql: str, timeout: float = 60.0, **extra: Any) -> Response:
    body = json.dumps({"db": "h", "q": sql, "format": "json", **extra})
    return server.request(
        "POST", "/api/v3/query_sql", body=body, headers={"Content-Type": "application/json"}, timeout=timeout
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _burning(pid: int, seconds: float) -> None:
    """Wait until the process has used `seconds` more CPU: a query is running, not just sent."""
    before = _cpu_seconds(pid)
    wait_for(lambda: _cpu_seconds(pid) - before >= seconds, what=f"{seconds} s of CPU (a running query)")


def _start(tmp_path: Path, **env: str) -> Server:
    server = Server(tmp_path / "data", env=env).start()
    assert server.write("h", "cpu,host=a usage=1\ncpu,host=b usage=2 2").status == 204
    return server


@pytest.fixture
def hserver(tmp_path: Path) -> Any:
    server = _start(tmp_path)
    yield server
    if server.proc is not None:
        server.stop()


# -- item 1: queries are read-only ---------------------------------------------------------
def test_statements_that_write_or_read_files_are_refused(hserver: Server, tmp_path: Path) -> None:
    target = tmp_path / "written.csv"
    statements = [
        f"COPY (SELECT 1) TO '{target}' STORED AS CSV",
        f"COPY cpu TO '{target}'",
        f"CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{target}'",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TABLE t2 AS SELECT 1",
        "INSERT INTO cpu (host, usage) VALUES ('c', 3)",
        "DROP TABLE cpu",
        "SET datafusion.execution.batch_size = 1",
        "EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'",
    ]
    for sql in statements:
        r = _post(hserver, sql)
        assert r.status == 400, (sql, r.status, r.body)
        assert b"queries are read-only" in r.body and b"not allowed" in r.body, r.body
        assert b"\n" not in r.body.strip()
    assert not target.exists()
    # Which paths exist is not revealed: an existing file, a folder and a missing path answer alike.
    answers = {
        _post(hserver, f"CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{path}'").body
        for path in ("/etc/shadow", "/root/", "/no/such/path")
    }
    assert len(answers) == 1, answers
    assert _post(hserver, "SELECT * FROM '/etc/passwd'").status == 400
    # reads still work, tables are unchanged
    assert hserver.query("h", "SELECT count(*) AS n FROM cpu") == [{"n": 2}]
    tables = hserver.query("h", "SHOW TABLES")
    assert {"table_name": "cpu", "table_type": "BASE TABLE"}.items() <= next(
        t for t in tables if t["table_name"] == "cpu"
    ).items()
    for sql in ["EXPLAIN SELECT * FROM cpu", "DESCRIBE cpu", "SELECT * FROM information_schema.columns"]:
        assert _post(hserver, sql).status == 200, sql
    r = _post(
        hserver, "SELECT usage FROM cpu WHERE host IN ($a, $b) ORDER BY usage", params={"a": "a", "b": "z"}
    )
    assert r.status == 200 and r.json() == [{"usage": 1.0}]


# -- item 3: over-deep expressions ---------------------------------------------------------
def test_deep_expression_is_refused_and_server_lives(hserver: Server) -> None:
    r = _post(hserver, "SELECT " + "+".join(["1"] * 10_000))
    assert r.status == 400 and b"too complex" in r.body, r.body
    assert hserver.request("GET", "/health").status == 200
    r = _post(hserver, "SELECT usage FROM cpu WHERE " + " OR ".join(["usage = 1"] * 3000))
    assert r.status == 400
    # long-ish queries people write still run
    assert _post(hserver, "SELECT " + "+".join(["1"] * 200) + " AS n").json() == [{"n": 200}]
    in_list = ",".join(f"'h{i}'" for i in range(1000))
    r = _post(hserver, f"SELECT count(*) AS n FROM cpu WHERE host IN ('a', {in_list})")
    assert r.json() == [{"n": 1}]
    r = _post(hserver, "SELECT usage FROM cpu WHERE " + " OR ".join(f"host = 'h{i}'" for i in range(300)))
    assert r.status == 200
    # a query text over query.max_sql_bytes
    r = _post(hserver, "SELECT 1 AS n -- " + "x" * (1 << 20))
    assert r.status == 400 and b"query.max_sql_bytes" in r.body


def test_constant_scalar_queries_answer(hserver: Server) -> None:
    r = _post(
        hserver,
        "SELECT lpad(host, 10 + 2, '0') AS a, lpad(host, CAST(3 AS BIGINT), '0') AS b FROM cpu LIMIT 1",
    )
    assert r.status == 200 and r.json() == [{"a": "00000000000a", "b": "00a"}], r.body
    r = _post(hserver, "SELECT upper('x') AS u, repeat('-', 8) AS r, range(1, 4) AS g")
    assert r.status == 200 and r.json() == [{"u": "X", "r": "--------", "g": [1, 2, 3]}], r.body
    r = _post(hserver, "SELECT lpad(host, 5, '0') AS p FROM cpu ORDER BY p")
    assert r.status == 200 and r.json() == [{"p": "0000a"}, {"p": "0000b"}], r.body


# -- item 4: memory of scalar functions and rendering --------------------------------------
def test_amplifying_function_is_refused_within_memory(hserver: Server) -> None:
    assert hserver.proc is not None
    assert _post(hserver, "SELECT repeat(host, 3) AS r FROM cpu ORDER BY r").json() == [
        {"r": "aaa"},
        {"r": "bbb"},
    ]
    baseline = hserver.memory_mib()
    for sql in [
        "SELECT length(concat(repeat('x',1000000000), repeat('y',1000000000)))",
        "SELECT length(repeat(host, 1000000000)) FROM cpu",
        "SELECT length(repeat('x', 9223372036854775807))",
        "SELECT length(lpad('x', 1000000000))",
        "SELECT length(rpad('x', 1000000000, 'ab'))",
        "SELECT cardinality(array_repeat(1, 1000000000))",
        "SELECT cardinality(range(1, 1000000000))",
        "WITH c AS (SELECT lpad(host, $n) AS s FROM cpu) SELECT length(s) FROM c",
        "SELECT length(lpad('x', 1000 * 1000000))",
        "SELECT length(concat(" + ", ".join(["repeat('x', 100000000)"] * 30) + "))",
        "SELECT cardinality(array_repeat(array_repeat(1, 10000), 10000))",
        "WITH c AS (SELECT 1000000000 AS k) SELECT length(lpad('x', k)) FROM c",
        "SELECT sum(length(lpad(CAST(value AS VARCHAR), 10000000))) FROM generate_series(1, 100)",
        # each size is small; replace() would make 10 rows x 8,000 x 8,000 bytes
        "SELECT length(replace(repeat(CAST(value % 2 AS VARCHAR), 8000), '0', repeat('y', 8000)))"
        " FROM generate_series(1, 10)",
    ]:
        r = _post(hserver, sql, params={"n": 1_000_000_000} if "$n" in sql else None)
        assert r.status == 400 and (b"query.memory_limit" in r.body or b"must be constants" in r.body), r.body
        assert b"Traceback" not in r.body and b"\n" not in r.body.strip()
    assert hserver.memory_mib() - baseline < 300
    r = _post(
        hserver,
        "SELECT length(replace(repeat(CAST(value % 2 AS VARCHAR), 8000), '0', repeat('y', 8000)))"
        " FROM generate_series(1, 10)",
    )
    assert b"replace() would build" in r.body, r.body
    assert _post(hserver, "SELECT replace(host, 'a', 'zz') AS r FROM cpu ORDER BY r").json() == [
        {"r": "b"},
        {"r": "zz"},
    ]


def test_rendering_memory_stays_near_the_result_limit(tmp_path: Path) -> None:
    server = _start(tmp_path, APPLIANCE_QUERY_MAX_RESULT_BYTES="32MiB")
    assert server.proc is not None
    assert _post(server, "SELECT 1 AS n").status == 200
    baseline = server.memory_mib()
    sql = "SELECT value AS v FROM generate_series(1000000, 2999999)"  # 16 MB of Arrow
    for fmt in ["json", "pretty", "csv", "jsonl"]:
        r = _post(server, sql, format=fmt)
        assert r.status == 200 and len(r.body) > 16_000_000, (fmt, r.status, r.body[:200])
    assert _post(server, sql.replace("2999999", "9999999")).status == 413  # 64 MB of Arrow
    # the result and its body, each under the limit, and one chunk of work in flight
    assert server.memory_mib() - baseline < 3 * 32 + 40
    server.stop()


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "pretty", "parquet"])
def test_rendered_body_counts_against_result_limit(tmp_path: Path, fmt: str) -> None:
    server = _start(tmp_path, APPLIANCE_QUERY_MAX_RESULT_BYTES="1MiB")
    name = "c" * 200
    # 800 KB of Arrow data; as text every row repeats the long name (JSON) or is padded (pretty)
    sql = f'SELECT value AS "{name}", value % 7 AS x FROM generate_series(1, 60000)'
    r = _post(server, sql, format=fmt)
    if fmt == "parquet":  # compressed: fits
        assert r.status == 200
    elif fmt == "csv":  # 60k short lines: fits in 1 MiB
        assert r.status == 200 and r.body.count(b"\n") == 60001
    else:
        assert r.status == 413 and b"query.max_result_bytes" in r.body, (r.status, r.body[:200])
    r = _post(server, "SELECT value FROM generate_series(1, 10)", format=fmt)
    assert r.status == 200
    server.stop()


# -- item 7: runaway queries end at their deadline -----------------------------------------
def test_runaway_queries_stop_at_deadline(tmp_path: Path) -> None:
    server = _start(
        tmp_path,
        APPLIANCE_QUERY_TIMEOUT="2s",
        APPLIANCE_QUERY_MAX_RESULT_BYTES="256MiB",
        TMPDIR=str(tmp_path),
    )
    assert server.proc is not None
    answers: list[tuple[int, float]] = []

    def runaway() -> None:
        started = time.monotonic()
        answers.append((_post(server, RUNAWAY).status, time.monotonic() - started))

    threads = [threading.Thread(target=runaway) for _ in range(2)]
    for t in threads:
        t.start()
    _burning(server.proc.pid, 0.5)
    # slots are left for other queries while two runaways run
    assert server.query("h", "SELECT count(*) AS n FROM cpu") == [{"n": 2}]
    for t in threads:
        t.join(30)
    assert [status for status, _ in answers] == [408, 408]
    assert all(took < 2 + 8 for _, took in answers), answers  # slack for a loaded 2-core machine
    # the engine stopped too: the process goes idle (two runaways would burn ~6 s of CPU in 3 s)
    cpu = _cpu_seconds(server.proc.pid)
    time.sleep(3)  # what is measured is CPU used over a span of time: it must pass
    assert _cpu_seconds(server.proc.pid) - cpu < 2.0
    assert server.query("h", "SELECT count(*) AS n FROM cpu") == [{"n": 2}]
    # a sort over the memory limit fails instead of spilling to disk
    spill = _post(
        server, "SELECT value FROM generate_series(1, 50000000) ORDER BY value DESC LIMIT 1 OFFSET 5"
    )
    assert spill.status in (400, 408), spill.body
    assert [
        p.name for p in tmp_path.iterdir() if p.name not in ("data",) and not p.name.endswith(".log")
    ] == []
    assert server.stop() == 0


def test_rendering_counts_against_the_deadline(tmp_path: Path) -> None:
    # The query takes ~0.05 s here, its pretty rendering ~8 s (wide characters take the slow path):
    # both are 10x or more away from the 0.5 s deadline, so no machine answers 200 or times out
    # the query itself.
    server = _start(tmp_path, APPLIANCE_QUERY_TIMEOUT="500ms")
    assert server.proc is not None
    slow = _post(server, "SELECT value AS v, 'ü' AS u FROM generate_series(1, 3000000)", format="pretty")
    assert slow.status == 408 and b"rendered" in slow.body, (slow.status, slow.body[:200])
    cpu = _cpu_seconds(server.proc.pid)
    time.sleep(1.5)  # what is measured is CPU used over a span of time: it must pass
    assert _cpu_seconds(server.proc.pid) - cpu < 0.75  # the rendering stopped too
    assert server.query("h", "SELECT count(*) AS n FROM cpu") == [{"n": 2}]
    assert server.stop() == 0


def test_sigterm_ends_a_running_query(tmp_path: Path) -> None:
    server = _start(tmp_path, APPLIANCE_QUERY_TIMEOUT="10m")
    assert server.proc is not None
    answers: list[int] = []
    t = threading.Thread(target=lambda: answers.append(_post(server, RUNAWAY, timeout=30).status))
    t.start()
    _burning(server.proc.pid, 0.3)
    proc = server.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    server.proc = None
    t.join(10)


# -- item 13: one clean line -----------------------------------------------------------------
def test_query_errors_are_one_clean_line(hserver: Server) -> None:
    for sql in [
        "SELEC 1",
        "SELECT nope FROM cpu",
        "SELECT * FROM missing",
        "SELECT 1/0",
        "SELECT repeat('x', 2.5)",
    ]:
        r = _post(hserver, sql)
        assert r.status == 400, (sql, r.body)
        text = r.body.decode()
        assert "\n" not in text.strip() and "Traceback" not in text and "site-packages" not in text, text
        assert ".cargo" not in text and "PyErr" not in text, text
    log = hserver.log()
    assert "Traceback" not in log
    assert log.count("query failed") == 5


# -- fuzz: SQL-ish input never crashes the server --------------------------------------------
def test_fuzzed_sql_gets_only_client_answers(hserver: Server) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    valid = [
        "SELECT * FROM cpu",
        "SELECT host, avg(usage) FROM cpu GROUP BY host",
        "SELECT date_bin(INTERVAL '1 minute', time) AS t, max(usage) FROM cpu GROUP BY 1",
        "SHOW TABLES",
        "SELECT usage FROM cpu WHERE host IN ('a', 'b') ORDER BY time DESC LIMIT 1",
    ]
    pieces = st.sampled_from(
        [
            "(",
            ")",
            "+",
            "||",
            "'",
            '"',
            "--",
            "/*",
            "*/",
            "\x00",
            ",",
            " SELECT ",
            " FROM ",
            "1",
            "$1",
            "::int",
            "$$",
            "$t$",
            "+/*",
            "*/*",
            "-- '",
            "E'\\'",
            '""',
        ]
    )
    chain = "+".join(["1"] * 12_000)  # would crash the engine if a check missed it

    @st.composite
    def mutated(draw: Any) -> str:
        sql = draw(st.sampled_from(valid))
        for _ in range(draw(st.integers(0, 4))):
            at = draw(st.integers(0, len(sql)))
            insert = draw(
                st.one_of(pieces, st.text(max_size=8), pieces.map(lambda p: p * 3000), st.just(chain))
            )
            sql = sql[:at] + insert + sql[at:]
        return sql

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated(), st.text(max_size=200)))
    def probe(sql: str) -> None:
        r = _post(hserver, sql or " ")
        assert 200 <= r.status < 500 and r.status != 408, (sql[:200], r.status, r.body[:300])

    probe()
    assert hserver.request("GET", "/health").status == 200
