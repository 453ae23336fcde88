"""Hostile HTTP clients, black-box against a real server: compressed-body tricks, slow bodies,
idle and slowloris connections, cross-origin pages, malformed requests, and the handshakes of
real InfluxDB client libraries."""

from __future__ import annotations

import gzip
import json
import resource
import select
import socket
import subprocess
import sys
import threading
import time
import unittest.mock
import urllib.parse
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import REPO, Response, Server, wait_for

JSON = {"Content-Type": "application/json"}
GZ = {"Content-Encoding": "gzip"}


def connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    """A raw TCP connection to the server from a given loopback address (127.0.0.x)."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", server.port))
    s.settimeout(10)
    return s


def exchange(server: Server, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send raw bytes; everything the server answers until it closes (or 10 s pass)."""
    with connect(server, source) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def closed_by_server(s: socket.socket, wait: float) -> bool:
    """Whether the server closes this (silent) connection within `wait` seconds."""
    readable, _, _ = select.select([s], [], [], wait)
    if not readable:
        return False
    try:
        return s.recv(65536) == b"" or True  # EOF, or a final response before EOF
    except ConnectionResetError:
        return True


def health_answers(server: Server) -> bool:
    return server.request("GET", "/health", timeout=5).status == 200


def in_thread(fn, *args) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    result: list = []
    t = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    t.start()
    return t, result


def request_trigger(server: Server, name: str) -> None:
    """A no_auth request trigger at /api/v3/engine/<name> whose plugin echoes the body length."""
    plugins = server.data_dir / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "echo.py").write_text(
        "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):\n"
        "    return {'length': len(request_body)}\n"
    )
    assert server.write("db", "m v=1 1", precision="ns").status == 204
    body = {
        "db": "db",
        "trigger_name": name,
        "plugin_filename": "echo.py",
        "trigger_specification": f"request:{name}",
        "trigger_settings": {"run_async": False, "error_behavior": "log"},
        "no_auth": True,
    }
    r = server.request(
        "POST", "/api/v3/configure/processing_engine_trigger", body=json.dumps(body), headers=JSON
    )
    assert r.status == 200, r.body


# -- item 6: gzip members and bombs ----------------------------------------------------
def test_many_gzip_members_are_refused_while_health_answers(auth_server: Server) -> None:
    s = auth_server
    request_trigger(s, "hook")
    empty = gzip.compress(b"")
    members = empty * ((10 * 1024 * 1024 - 1024) // len(empty))  # ~500k empty members, under 10 MiB
    for path, params, token in (("/api/v3/write_lp", {"db": "db"}, None), ("/api/v3/engine/hook", None, "")):
        t, result = in_thread(s.request, "POST", path, params, members, GZ, token, 60.0)
        started = time.monotonic()
        while t.is_alive() and time.monotonic() - started < 30:
            assert health_answers(s)  # the event loop is never blocked by the decoding
            time.sleep(0.1)  # probing /health throughout the decoding is the test
        t.join(30)
        r: Response = result[0]
        assert r.status == 400 and "more than 1000 gzip members" in r.text, (path, r.status, r.body)
    a, b, c = (f"m,i={i} v={i} {i}\n".encode() for i in range(3))
    three = gzip.compress(a) + gzip.compress(b) + gzip.compress(c)
    assert s.request("POST", "/api/v3/write_lp", {"db": "db", "precision": "ns"}, three, GZ).status == 204
    r = s.request("POST", "/api/v3/engine/hook", body=three, headers=GZ, token="")
    assert r.status == 200 and r.json() == {"length": len(a + b + c)}
    assert s.query("db", "SELECT count(*) AS n FROM m WHERE i IS NOT NULL") == [{"n": 3}]


def test_gzip_bomb_gets_413_with_bounded_memory(server: Server) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1024 * 1024)
    bomb = b"".join(packer.compress(zeros) for _ in range(512)) + packer.flush()  # 512 MiB inflated
    assert len(bomb) < 1024 * 1024
    assert health_answers(server)
    before = server.memory_mib()
    send = (server.request, "POST", "/api/v3/write_lp", {"db": "db"}, bomb, GZ)
    threads = [in_thread(*send)[1] for _ in range(4)]
    for result in wait_for(lambda: all(threads) and threads, timeout=60, what="four 413s"):
        r = result[0]
        assert r.status == 413 and "http.max_request_size" in r.text, (r.status, r.body)
    assert health_answers(server)
    # each bomb is decoded only up to the 10 MiB limit; 512 MiB each without the bound
    assert server.memory_mib() - before < 150


# -- item 9: slow bodies -----------------------------------------------------------
def test_slow_writers_hold_no_write_slot_and_get_408(tmp_path: Path) -> None:
    s = Server(tmp_path / "data", env={"APPLIANCE_HTTP_BODY_TIMEOUT": "6s"}).start()
    head = b"POST /api/v3/write_lp?db=db HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
    slow = [connect(s) for _ in range(12)]
    for c in slow:
        c.sendall(head + b"m")
    stop = threading.Event()

    def trickle() -> None:  # one byte per connection every half second
        while not stop.wait(0.5):
            for c in slow:
                try:
                    c.send(b"x")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # every slow body holds its declared 1000 bytes: the server is reading them all
        wait_for(lambda: gauge(s, "appliance_http_buffered_bytes") == 12 * 1000, 10, "the slow bodies")
        started = time.monotonic()
        assert s.write("db", "m v=1 1", precision="ns", timeout=5).status == 204
        assert time.monotonic() - started < 5  # before any slow body timed out
        assert health_answers(s)
        for c in slow:
            answer = read_all(c)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"http.body_timeout" in answer
    finally:
        stop.set()
        for c in slow:
            c.close()
    assert s.query("db", "SELECT v FROM m") == [{"v": 1.0}]
    assert "http.body_timeout" in s.log() and "Traceback" not in s.log()
    s.stop()


def hog(server: Server, source: str, declared: int, sent: int) -> socket.socket:
    """A write that declares `declared` bytes, sends `sent` of them (from a thread, as fast as the
    server reads), then goes silent."""
    c = connect(server, source)
    head = b"POST /api/v3/write_lp?db=db HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % declared

    def send() -> None:
        try:
            c.sendall(head + b"m v=1 1\n" * (sent // 8))
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    return c


def gauge(server: Server, name: str) -> float:
    """The value of an unlabelled gauge on the server's /metrics."""
    for line in server.request("GET", "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not on /metrics")


def refused(r: Response) -> Response | None:
    """The response if it is a 503 (for polling until the server refuses), else None."""
    return r if r.status == 503 else None


def test_bodies_in_memory_are_bounded_in_bytes(tmp_path: Path) -> None:
    env = {
        "APPLIANCE_HTTP_MAX_BUFFERED_BYTES": "128KiB",
        "APPLIANCE_HTTP_BODY_TIMEOUT": "1s",  # the longest a body waits for room
        "APPLIANCE_HTTP_BODY_IDLE_TIMEOUT": "8s",
        "APPLIANCE_HTTP_BODY_MIN_RATE": "1",
    }
    s = Server(tmp_path / "data", args=["--max-http-request-size", "65536"], env=env).start()
    hogs = [hog(s, f"127.0.0.{2 + i}", 65536, 60 * 1024) for i in range(2)]  # all the room, reserved
    try:
        # No room, even for a small body, once the hogs' bodies have reached the server:
        r = wait_for(lambda: refused(s.write("db", "m v=2 2", precision="ns", timeout=10)), 10, "a 503")
        assert r.status == 503 and "http.max_buffered_bytes" in r.text, (r.status, r.body)
        assert r.headers["Retry-After"] == "5"  # Telegraf and the client libraries wait, then retry
        for c in hogs:  # cut off once silent for http.body_idle_timeout
            answer = read_all(c)
            assert answer.startswith(b"HTTP/1.1 408") and b"http.body_idle_timeout" in answer, answer[:300]
    finally:
        for c in hogs:
            c.close()
    assert s.write("db", "m v=3 3\n" * 2000, precision="ns", timeout=10).status == 204  # room again
    for _ in range(3):  # bodies that fail half-way give their bytes back
        with connect(s) as c:
            c.sendall(
                b"POST /api/v3/write_lp?db=db HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            c.sendall(b"%x\r\n%s\r\n" % (40 * 1024, b"m v=4 4\n" * (5 * 1024)))
            time.sleep(0.3)  # a slow client: the bad chunk comes later, after the server buffered the first
            c.sendall(b"zz\r\n")
            assert read_all(c).startswith(b"HTTP/1.1 400")
    assert s.write("db", "m v=5 5\n" * 7000, precision="ns", timeout=10).status == 204
    s.stop()


def test_a_burst_of_concurrent_writes_takes_turns_in_a_small_budget(tmp_path: Path) -> None:
    """Room for a whole body is reserved before it is read, first come first served: bodies never
    hold part of the budget while waiting for the rest, so a burst is served, not refused."""
    env = {"APPLIANCE_HTTP_MAX_BUFFERED_BYTES": "2MiB", "APPLIANCE_HTTP_BODY_TIMEOUT": "60s"}
    s = Server(tmp_path / "data", args=["--max-http-request-size", "1MiB"], env=env).start()
    lines = b"".join(
        b"cpu,host=h%d usage=%d.5 %d\n" % (i % 50, i % 100, 1700000000000000000 + i) for i in range(30000)
    )
    plain = lines[: lines.rindex(b"\n", 0, 900_000) + 1]
    packed = gzip.compress(plain)
    sends: list[tuple[bytes, dict[str, str]]] = [(plain, {}) for _ in range(24)] + [
        (packed, GZ) for _ in range(16)
    ]
    results = [
        in_thread(
            s.request, "POST", "/api/v3/write_lp", {"db": "db", "precision": "ns"}, body, headers, None, 120.0
        )[1]
        for body, headers in sends
    ]
    for result in wait_for(lambda: all(results) and results, timeout=120, what="40 writes"):
        assert result[0].status == 204, (result[0].status, result[0].body[:200])
    assert health_answers(s)
    s.stop()


def test_a_client_that_sends_fast_then_stalls_is_cut_off(tmp_path: Path) -> None:
    """Bytes already sent earn no extra time: a body that stops arriving gets 408 after
    http.body_idle_timeout; one address holds at most twice http.max_request_size of the budget."""
    env = {"APPLIANCE_HTTP_MAX_BUFFERED_BYTES": "24MiB", "APPLIANCE_HTTP_BODY_IDLE_TIMEOUT": "2s"}
    s = Server(tmp_path / "data", env=env).start()
    ten = 10 * 1024 * 1024
    hogs = [hog(s, "127.0.0.2", ten, ten - 100 * 1024) for _ in range(2)]
    hogs.append(hog(s, "127.0.0.2", ten, 0))  # over the address's share: waits, blocking no one
    try:
        wait_for(  # the two hogs hold their address's share; the third waits for room
            lambda: (
                gauge(s, "appliance_http_buffered_bytes") == 2 * ten
                and gauge(s, "appliance_http_bodies_waiting") == 1
            ),
            10,
            "the hogs to hold the budget",
        )
        started = time.monotonic()
        body = b"m,src=other v=1 1\n" * 50_000  # 900 KB from another address
        r = s.request("POST", "/api/v3/write_lp", {"db": "db", "precision": "ns"}, body, timeout=10)
        assert r.status == 204, (r.status, r.body)
        assert time.monotonic() - started < 5  # not after the hogs (liveness)
        for c in hogs:
            answer = read_all(c)
            assert answer.startswith(b"HTTP/1.1 408") and b"http.body_idle_timeout" in answer, answer[:300]
    finally:
        for c in hogs:
            c.close()
    assert s.query("db", "SELECT src FROM m") == [{"src": "other"}]
    assert health_answers(s)
    s.stop()


def test_a_client_that_never_reads_its_response_is_dropped(tmp_path: Path) -> None:
    s = Server(tmp_path / "data", env={"APPLIANCE_HTTP_SEND_TIMEOUT": "2s"}).start()
    assert s.write("db", "m v=1 1", precision="ns").status == 204
    sql = "SELECT concat(repeat('x', 1000), CAST(value AS VARCHAR)) AS s FROM generate_series(1, 5000)"
    head = f"GET /api/v3/query_sql?db=db&q={urllib.parse.quote(sql)} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    rounds = []
    for _ in range(2):
        readers = []
        for _ in range(4):  # ~5 MB each, into a 4 KiB receive buffer nobody reads
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", s.port))
            c.sendall(head.encode())
            readers.append(c)
        try:
            time.sleep(4)  # the readers never read: http.send_timeout (2 s) has to pass
            assert health_answers(s)
            for c in readers:
                c.settimeout(10)
                got = read_all(c)
                assert len(got) < 5_000_000, len(got)  # dropped before all of it was sent
        finally:
            for c in readers:
                c.close()
        rounds.append(s.memory_mib("VmRSS"))
    metrics = s.request("GET", "/metrics").text
    assert 'appliance_http_refused_total{reason="send_timeout"} 8' in metrics, metrics
    assert rounds[1] - rounds[0] < 100, rounds  # the unsent responses are not kept
    assert "http.send_timeout" in s.log() and "Traceback" not in s.log()
    s.stop()


def test_engine_requests_count_against_the_budget_while_the_plugin_runs(tmp_path: Path) -> None:
    env = {"APPLIANCE_HTTP_MAX_BUFFERED_BYTES": "1MiB", "APPLIANCE_HTTP_BODY_TIMEOUT": "1s"}
    s = Server(tmp_path / "data", args=["--max-http-request-size", "1MiB"], env=env).start()
    plugins = s.data_dir / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    running = tmp_path / "plugin-running"
    (plugins / "slow.py").write_text(
        "import pathlib, time\n"
        "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):\n"
        f"    pathlib.Path({str(running)!r}).touch()\n"
        "    time.sleep(6)\n"
        "    return {'length': len(request_body)}\n"
    )
    assert s.write("db", "m v=1 1", precision="ns").status == 204
    trigger = {
        "db": "db",
        "trigger_name": "slow",
        "plugin_filename": "slow.py",
        "trigger_specification": "request:slow",
        "trigger_settings": {"run_async": False, "error_behavior": "log"},
    }
    r = s.request(
        "POST", "/api/v3/configure/processing_engine_trigger", body=json.dumps(trigger), headers=JSON
    )
    assert r.status == 200, r.body
    body = b"x" * (1024 * 1024)
    t, result = in_thread(s.request, "POST", "/api/v3/engine/slow", None, body)
    wait_for(running.exists, what="the plugin to run")  # the body is read; the plugin holds it
    r = s.write("db", "m v=2 2", precision="ns", timeout=10)
    assert r.status == 503 and "http.max_buffered_bytes" in r.text, (r.status, r.body)
    t.join(30)
    assert result[0].status == 200 and result[0].json() == {"length": len(body)}
    assert s.write("db", "m v=3 3", precision="ns", timeout=10).status == 204
    s.stop()


def test_json_api_bodies_are_capped(server: Server) -> None:
    big = json.dumps({"db": "db", "pad": "x" * (1024 * 1024)})
    r = server.request("POST", "/api/v3/configure/database", body=big, headers=JSON)
    assert r.status == 413 and "JSON API requests are at most 1048576 bytes" in r.text, (r.status, r.body)
    # a query may be as long as query.max_sql_bytes (1 MiB): its JSON body may be twice that
    big = json.dumps({"db": "db", "q": "SELECT 1", "pad": "x" * (2 * 1024 * 1024)})
    r = server.request("POST", "/api/v3/query_sql", body=big, headers=JSON)
    assert r.status == 413 and "JSON API requests are at most 2097152 bytes" in r.text, (r.status, r.body)
    assert server.write("db", "m v=1 1", precision="ns").status == 204
    ok = json.dumps({"db": "db", "q": "SELECT v FROM m", "pad": "x" * 500_000})  # decoded off the loop
    r = server.request("POST", "/api/v3/query_sql", body=ok, headers=JSON)
    assert r.status == 200 and r.json() == [{"v": 1.0}], (r.status, r.body)


def test_transfer_codings_other_than_chunked_are_refused(server: Server) -> None:
    for coding in (b"gzip, chunked", b"deflate, chunked"):
        packed = gzip.compress(b"m v=1 1\n")
        raw = (
            b"POST /api/v3/write_lp?db=db HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Transfer-Encoding: " + coding + b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
        )
        answer = exchange(server, raw)
        assert answer.startswith((b"HTTP/1.1 501", b"HTTP/1.1 400")), answer[:300]
    assert server.request("GET", "/api/v3/configure/database", {"format": "json"}).json() == []


# -- item 10: idle, slowloris, caps --------------------------------------------------
@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Server]:
    env = {
        "APPLIANCE_HTTP_HEADER_TIMEOUT": "2s",
        "APPLIANCE_HTTP_KEEPALIVE_TIMEOUT": "2s",
        "APPLIANCE_HTTP_MAX_CONNECTIONS": "600",
        "APPLIANCE_HTTP_MAX_CONNECTIONS_PER_IP": "60",
    }
    s = Server(tmp_path / "data", env=env).start()
    yield s
    if s.proc is not None:
        s.stop()


def test_idle_and_slowloris_connections_are_closed_while_the_server_answers(guarded: Server) -> None:
    s = guarded
    idle = [connect(s, f"127.0.0.{2 + i // 50}") for i in range(300)]  # 50 from each of 6 addresses
    loris = [connect(s, "127.0.0.9") for _ in range(20)]
    stop = threading.Event()

    def drip() -> None:  # one header byte per connection every second
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for i in range(len(head)):
            if stop.wait(1.0 if i else 0):
                return
            for c in loris:
                try:
                    c.send(head[i : i + 1])
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    try:
        # the server holds all 320 (and this scrape's own connection) while the heads drip in
        wait_for(lambda: gauge(s, "appliance_http_connections") >= 321, 10, "the server to count them")
        assert health_answers(s)
        assert s.write("db", "m v=1 1", precision="ns", timeout=5).status == 204
        deadline = time.monotonic() + 8
        for c in idle + loris:
            assert closed_by_server(c, max(deadline - time.monotonic(), 0.1)), "a connection stayed open"
        assert health_answers(s)
    finally:
        stop.set()
        for c in idle + loris:
            c.close()
    assert "http.header_timeout" in s.log() and "Traceback" not in s.log()


def test_connections_over_the_per_address_cap_are_refused(guarded: Server) -> None:
    s = guarded
    held = [connect(s, "127.0.0.5") for _ in range(60)]
    try:
        # the held ones and this scrape's own connection
        wait_for(lambda: gauge(s, "appliance_http_connections") >= 61, 10, "the server to count them")
        refused = exchange(s, b"", source="127.0.0.5")
        assert refused.startswith(b"HTTP/1.1 503") and b"http.max_connections_per_ip" in refused
        assert health_answers(s)  # another address is not affected
        metrics = s.request("GET", "/metrics").text
        assert 'appliance_http_refused_total{reason="max_connections_per_ip"} 1' in metrics, metrics
        for c in held:
            assert closed_by_server(c, 8)
    finally:
        for c in held:
            c.close()
    ping = b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    wait_for(  # refused with 503 until the server has counted the closed connections out
        lambda: exchange(s, ping, "127.0.0.5").startswith(b"HTTP/1.1 200"), 10, "the address served again"
    )


def test_connections_over_the_total_cap_are_refused_but_local_clients_are_served(tmp_path: Path) -> None:
    env = {"APPLIANCE_HTTP_MAX_CONNECTIONS": "40", "APPLIANCE_HTTP_HEADER_TIMEOUT": "3s"}
    s = Server(tmp_path / "data", env=env).start()
    held = [connect(s, f"127.0.0.{2 + i % 4}") for i in range(40)]
    try:
        # the held ones and this scrape's own connection (127.0.0.1 is exempt from the total cap)
        wait_for(lambda: gauge(s, "appliance_http_connections") >= 41, 10, "the server to count them")
        refused = exchange(s, b"", source="127.0.0.7")
        assert refused.startswith(b"HTTP/1.1 503") and b"http.max_connections" in refused
        assert health_answers(s)  # 127.0.0.1: this machine's own clients are still served
        assert s.write("db", "m v=1 1", precision="ns", timeout=5).status == 204
    finally:
        for c in held:
            c.close()
    s.stop()


def test_idle_keepalive_connections_are_closed(guarded: Server) -> None:
    with connect(guarded) as c:
        c.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
        assert not closed_by_server(c, 1.0)  # kept alive for a while ...
        assert closed_by_server(c, 5.0)  # ... then closed (http.keepalive_timeout = 2 s)


# -- item 11: CORS and Host ----------------------------------------------------------
def preflight(server: Server, origin: str) -> Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    return server.request("OPTIONS", "/api/v3/write_lp", headers=headers)


def test_no_cors_by_default(server: Server) -> None:
    r = server.request(
        "GET", "/api/v3/configure/database", {"format": "json"}, headers={"Origin": "https://evil.example"}
    )
    assert r.status == 200 and not any(k.lower().startswith("access-control") for k in r.headers)
    r = preflight(server, "https://evil.example")
    assert r.status == 403 and "http.cors_origins" in r.text
    assert not any(k.lower().startswith("access-control") for k in r.headers)


def test_cors_allow_list(tmp_path: Path) -> None:
    s = Server(tmp_path / "data", env={"APPLIANCE_HTTP_CORS_ORIGINS": "https://dash.lan:3000"}).start()
    ok = {"Origin": "https://dash.lan:3000"}
    r = s.request("GET", "/health", headers=ok)
    assert (
        r.headers.get("Access-Control-Allow-Origin") == "https://dash.lan:3000"
        and "Origin" in r.headers["Vary"]
    )
    r = preflight(s, "https://dash.lan:3000")
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "https://dash.lan:3000"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    r = s.request("GET", "/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    assert preflight(s, "https://evil.example").status == 403
    s.stop()


def test_unexpected_host_is_refused_on_loopback(tmp_path: Path) -> None:
    s = Server(tmp_path / "data", env={"APPLIANCE_HTTP_ALLOWED_HOSTS": "gateway.lan"}).start()

    def status(host: str) -> int:
        return s.request(
            "GET", "/api/v3/configure/database", {"format": "json"}, headers={"Host": host}
        ).status

    for good in (
        "localhost",
        f"localhost:{s.port}",
        f"127.0.0.1:{s.port}",
        "127.0.0.2",
        "[::1]:8181",
        "gateway.lan:8181",
    ):
        assert status(good) == 200, good
    for bad in ("evil.example", f"evil.example:{s.port}", "localhost.evil.example", "127.0.0.1.nip.io"):
        assert status(bad) == 421, bad
    r = s.request("POST", "/api/v3/write_lp", {"db": "x"}, "m v=1", headers={"Host": "rebind.evil.example"})
    assert r.status == 421 and "http.allowed_hosts" in r.text
    s.stop()
    s = Server(tmp_path / "data2").start()  # without the setting, only loopback names and addresses
    assert s.request("GET", "/health", headers={"Host": "gateway.lan"}).status == 421
    s.stop()


# -- item 13: malformed requests ---------------------------------------------------
MALFORMED = {
    "request line too long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "header too long": b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    "bad method": b"G@T / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "bad method, second request": b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\nG@T / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "bad version": b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n",
    "bad chunked encoding": b"POST /api/v3/write_lp?db=x HTTP/1.1\r\nHost: localhost\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "invalid URL": b"GET http://[::1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "non-UTF-8 path": b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "non-UTF-8 query": b"GET /api/v3/query_sql?db=\xff HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "NUL in header": b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n",
    "duplicate Content-Length": b"POST /ping HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "TLS on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50,
}


def test_malformed_requests_get_one_clean_line_and_no_traceback(server: Server) -> None:
    for name, data in MALFORMED.items():
        for _ in range(3):
            answer = exchange(server, data)
            head, _, body = answer.rpartition(b"\r\n\r\n")
            status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/") else 0
            assert 400 <= status < 500, (name, answer[:300])
            text = body.decode()
            assert text.count("\n") <= 1 and "Traceback" not in text and "b'" not in text, (name, text)
    for _ in range(3):  # a body cut short by the client going away
        with connect(server) as c:
            c.sendall(
                b"POST /api/v3/write_lp?db=x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nm v="
            )
            time.sleep(0.2)  # the client goes away mid-body, after the server started reading it
    late = exchange_in_two_parts(server)
    assert b" 400 " in late.split(b"\r\n")[0] and b"malformed" in late, late
    assert health_answers(server)
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    assert sum("bad request from" in line for line in log.splitlines()) <= 2  # rate-limited


def exchange_in_two_parts(server: Server) -> bytes:
    """A chunked write whose broken chunk arrives after the handler started reading."""
    with connect(server) as c:
        c.sendall(
            b"POST /api/v3/write_lp?db=x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nm v=1\r\n"
        )
        time.sleep(0.3)  # a slow client: the broken chunk comes once the handler is reading the body
        c.sendall(b"zz\r\nabc\r\n0\r\n\r\n")
        return read_all(c)


# -- item 20: real client handshakes -------------------------------------------------
def test_influxdb_clients_handshake(auth_server: Server) -> None:
    influxdb_client = pytest.importorskip("influxdb_client")
    influxdb = pytest.importorskip("influxdb")
    s = auth_server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # health() is deprecated in favour of ping()
        with influxdb_client.InfluxDBClient(url=s.url, token=s.token, org="o") as v2:
            health = v2.health()
            assert health.status == "pass" and health.name == "appliance", health
            assert v2.ping() is True and v2.version()
        v1 = influxdb.InfluxDBClient("127.0.0.1", s.port)
        assert v1.ping()  # expects 204 with X-Influxdb-Version
        v1.close()
    report = s.request("GET", "/health").json()
    assert report["status"] == "pass" and report["state"] == "ok" and "wal" in report["components"]
    assert {c["name"] for c in report["checks"]} >= {"http", "wal", "persist", "engine"}
    anonymous = s.request("GET", "/health", token="").json()  # state, not internals
    assert anonymous["status"] == "pass" and anonymous["state"] == "ok"
    assert all(c == {"status": "ok"} for c in anonymous["components"].values())
    assert {c["name"] for c in anonymous["checks"]} == {c["name"] for c in report["checks"]}
    assert s.request("GET", "/health", token="wrong").json().keys() == anonymous.keys()
    r = s.request("GET", "/ping", token="", headers={"Accept": "*/*"})
    assert r.status == 200 and r.json() == {"product_name": "appliance"} and r.headers["X-Influxdb-Version"]
    r = s.request("HEAD", "/ping", token="")
    assert r.status == 204 and r.headers["X-Influxdb-Version"]
    r = s.request(
        "GET", "/api/v3/configure/database", {"format": "json"}, headers={"Authorization": "Bearer "}
    )
    assert r.status == 401
    bad_bytes = b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n"
    raw = b"GET /api/v3/configure/database?format=json HTTP/1.1\r\nHost: localhost\r\n" + bad_bytes + b"\r\n"
    assert exchange(s, raw).startswith(b"HTTP/1.1 401")
    assert "Traceback" not in s.log()


def test_connection_cap_fits_a_low_open_file_limit() -> None:
    """With LimitNOFILE=600 the server serves at most 600 - FD_RESERVE - 2 x 64 connections
    (room for this machine's own clients, 64 each on 127.0.0.1 and ::1, beyond the cap), logged."""
    code = "from appliance.lifecycle import _fit_fd_limit; print(_fit_fd_limit(512, 64))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600)),
        check=True,
    )
    assert out.stdout.strip() == "216"


def test_ipv6_clients_are_capped_by_their_64() -> None:
    from appliance.http.connections import client_key

    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" and client_key("::1") == "::1"


def test_aiohttp_internals_we_rely_on_exist() -> None:
    """appliance.http.connections subclasses aiohttp's connection handler and builds its server
    by hand; pyproject pins the aiohttp versions this is tested with. A new aiohttp that renames
    these fails here, not in production."""
    import inspect

    from aiohttp import web, web_protocol
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.web_protocol import RequestHandler

    assert "exc" in web_protocol._ErrInfo.__annotations__
    for name in ("_messages", "_loop", "transport", "_paused"):
        assert name in RequestHandler.__slots__ or name in BaseProtocol.__slots__, name
    for name in ("handle_error", "log_exception", "force_close", "data_received", "connection_made"):
        assert callable(getattr(RequestHandler, name)), name
    for name in ("pause_writing", "resume_writing"):
        assert callable(getattr(BaseProtocol, name)), name
    assert "request_factory" in inspect.signature(web.Server.__init__).parameters
    assert "handler_cancellation" in inspect.signature(web.Server.__init__).parameters
    assert callable(web.AppRunner._make_server)

    async def build() -> None:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        plain = await runner._make_server()
        assert (
            callable(plain.request_handler)
            and callable(plain.request_factory)
            and isinstance(plain._kwargs, dict)
        )
        assert isinstance(plain.handler_cancellation, bool)
        await runner.cleanup()

    import asyncio

    asyncio.run(build())


def test_gzip_is_decoded_off_the_event_loop() -> None:
    """Every gzip piece is decoded on the reader's pool, never on the event loop's thread."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import streams
    from aiohttp.test_utils import make_mocked_request

    from appliance.http import body as body_module

    threads: list[threading.Thread] = []
    real_feed = body_module.GzipStream.feed

    def feed(self, data):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread())
        return real_feed(self, data)

    async def read() -> bytes:
        protocol = unittest.mock.Mock(_reading_paused=False)
        stream = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
        packed = b"".join(gzip.compress(b"m,i=%d v=1 1\n" % i) for i in range(999))
        for i in range(0, len(packed), 4096):
            stream.feed_data(packed[i : i + 4096])
        stream.feed_eof()
        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(packed))}
        request = make_mocked_request("POST", "/", headers=headers, payload=stream)
        limits = body_module.BodyLimits(10 * 1024 * 1024, 30.0, 16384, 10.0)
        budget = body_module.ByteBudget(64 * 1024 * 1024, 20 * 1024 * 1024)
        with ThreadPoolExecutor(1) as pool:
            reader = body_module.BodyReader(limits, budget, pool)
            async with reader.received(request) as data:
                assert budget.free == budget.capacity - len(data)
        assert budget.free == budget.capacity
        return data

    with unittest.mock.patch.object(body_module.GzipStream, "feed", feed):
        data = asyncio.run(read())
    assert data.count(b"\n") == 999
    assert threads and all(t is not threading.main_thread() for t in threads)


def test_many_real_gzip_members_decode_while_health_answers(server: Server) -> None:
    """999 members (under the limit) of real data, nearly 10 MiB decoded: /health answers throughout."""
    member = b"".join(b"cpu,host=h%d usage=%d.5 %d\n" % (i % 7, i % 100, i) for i in range(400))[:10_000]
    member = member[: member.rindex(b"\n") + 1]
    members = b"".join(gzip.compress(member.replace(b"cpu", b"c%03d" % k)) for k in range(999))
    t, result = in_thread(
        server.request, "POST", "/api/v3/write_lp", {"db": "db", "precision": "ns"}, members, GZ, None, 60.0
    )
    started = time.monotonic()
    while t.is_alive() and time.monotonic() - started < 30:
        assert health_answers(server)
        time.sleep(0.05)  # probing /health throughout the decoding is the test
    t.join(30)
    assert result[0].status == 204, (result[0].status, result[0].body[:300])


def test_auth_off_on_a_network_address_checks_the_host(tmp_path: Path) -> None:
    """Without auth, a page that rebinds its DNS name to the appliance could use the whole API:
    only IP addresses, localhost and http.allowed_hosts are answered, and a warning is logged."""
    s = Server(tmp_path / "data")
    s.args = ["--http-bind", f"0.0.0.0:{s.port}", "--allow-unauthenticated-network"]
    s.start()
    r = s.request(
        "GET", "/api/v3/configure/database", {"format": "json"}, headers={"Host": "rebind.evil.example"}
    )
    assert r.status == 421 and "http.allowed_hosts" in r.text
    assert s.request("GET", "/api/v3/configure/database", {"format": "json"}).status == 200  # an IP Host
    assert "auth is off and http.bind 0.0.0.0" in s.log()
    s.stop()
    s = Server(tmp_path / "data2", auth=True)
    s.args = ["--http-bind", f"0.0.0.0:{s.port}"]
    s.start()  # with auth the token is the guard: any Host name of the LAN works
    r = s.request("GET", "/api/v3/configure/database", {"format": "json"}, headers={"Host": "gateway.lan"})
    assert r.status == 200, r.body
    assert "auth is off" not in s.log()
    s.stop()
