"""HTTPS against a real `appliance serve`: curl, influxdb-client and the CLI through a test CA;
untrusted and plain-HTTP clients, the minimum TLS version, the connection guard over TLS,
certificate reload on SIGHUP, and settings that refuse to start."""

from __future__ import annotations

import http.client
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from tests.e2e.test_cli import cli as appliance_cli
from tests.server import REPO, Server, wait_for
from tests.tlsca import CertAuthority, ServerCert, encrypted_key


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m appliance ARGS` against `server` (its admin token, its https:// URL)."""
    return appliance_cli(server, *args, token=server.token)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("curl")
    assert tool, "curl not found: install it (apt-get install curl)"
    return subprocess.run(
        [tool, "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30
    )


def closed_by_server(s: socket.socket | ssl.SSLSocket, wait: float) -> bool:
    """Whether the server closes this silent connection within `wait` seconds (EOF, reset or close_notify)."""
    readable, _, _ = select.select([s], [], [], wait)
    if not readable:
        return False
    try:
        return s.recv(65536) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def client_hello() -> bytes:
    """The first flight of a TLS client: a ClientHello, as bytes to send by hand."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def serial_seen(server: Server) -> int:
    """The serial number of the certificate a new connection to the server gets."""
    with socket.create_connection(("127.0.0.1", server.port), 5) as raw:
        with server.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
            cert = s.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def assert_clean_log(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log


def test_https_serves_curl_influxdb_client_and_the_cli(tmp_path: Path, server_cert: ServerCert) -> None:
    s = Server(tmp_path / "data", auth=True, tls=server_cert).start()
    assert s.url.startswith("https://") and f"listening on {s.url}" in s.log()
    auth = f"Authorization: Bearer {s.token}"
    ca = str(server_cert.ca)

    r = curl(
        "--cacert", ca, "-H", auth, f"{s.url}/api/v3/write_lp?db=plant", "--data-binary", "m,src=curl v=1 1"
    )
    assert r.returncode == 0 and r.stdout == "", r
    r = curl(
        "--cacert", ca, "-H", auth, f"https://localhost:{s.port}/api/v3/query_sql?db=plant&q=SELECT+v+FROM+m"
    )
    assert r.returncode == 0 and '"v":1.0' in r.stdout, r

    with InfluxDBClient(url=s.url, token=s.token or "", org="", ssl_ca_cert=ca) as v2:
        v2.write_api(write_options=SYNCHRONOUS).write("plant", record="m,src=v2 v=2 2", write_precision="ns")

    assert cli(s, "write", "-d", "plant", "--tls-ca", ca, "m,src=cli v=3 3", "-p", "ns").returncode == 0
    r = cli(s, "query", "-d", "plant", "--tls-ca", ca, "--format", "csv", "SELECT src, v FROM m ORDER BY v")
    assert r.returncode == 0 and r.stdout.splitlines() == ["src,v", "curl,1.0", "v2,2.0", "cli,3.0"], r

    # clients that do not trust the CA are refused by their own verification, with a clear hint
    r = cli(s, "query", "-d", "plant", "SELECT 1")
    assert r.returncode == 1 and "--tls-ca" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (
        curl("-H", auth, f"{s.url}/health").returncode == 60
    )  # curl: peer certificate cannot be authenticated
    with pytest.raises(urllib.error.URLError) as e:
        urllib.request.urlopen(f"{s.url}/health", timeout=10)
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    r = cli(s, "query", "-d", "plant", "--tls-no-verify", "SELECT count(*) AS n FROM m")
    assert r.returncode == 0 and "3" in r.stdout, r

    # plain HTTP on the TLS port: no answer, the connection is closed at once
    with socket.create_connection(("127.0.0.1", s.port), 5) as raw:
        raw.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode())
        raw.settimeout(5)
        assert b"200" not in raw.recv(65536)
    r = cli(s, "query", "-d", "plant", "--host", f"http://127.0.0.1:{s.port}", "SELECT 1")
    assert r.returncode == 1 and "https://" in r.stderr, r.stderr
    # a client that hangs up halfway through its handshake
    with socket.create_connection(("127.0.0.1", s.port), 5) as raw:
        raw.sendall(client_hello()[:40])
    assert s.request("GET", "/health").status == 200
    assert_clean_log(s)
    s.stop()


def test_minimum_version_13_refuses_a_tls_12_client(tmp_path: Path, server_cert: ServerCert) -> None:
    s = Server(tmp_path / "data", tls=server_cert, args=["--tls-minimum-version", "tls-1.3"]).start()
    old = s.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(urllib.error.URLError) as e:
        urllib.request.urlopen(f"{s.url}/health", timeout=10, context=old)
    assert isinstance(e.value.reason, ssl.SSLError), e.value
    r = curl("--cacert", str(server_cert.ca), "--tls-max", "1.2", f"{s.url}/health")
    assert r.returncode != 0, r

    new = s.client_context()
    new.minimum_version = ssl.TLSVersion.TLSv1_3
    with urllib.request.urlopen(f"{s.url}/health", timeout=10, context=new) as answer:
        assert answer.status == 200
    assert_clean_log(s)
    s.stop()


def test_the_connection_guard_holds_over_tls(tmp_path: Path, server_cert: ServerCert) -> None:
    env = {
        "APPLIANCE_HTTP_HEADER_TIMEOUT": "1s",
        "APPLIANCE_HTTP_SEND_TIMEOUT": "1s",
        "APPLIANCE_HTTP_MAX_CONNECTIONS_PER_IP": "3",
    }
    s = Server(tmp_path / "data", tls=server_cert, env=env).start()
    # a TLS client that finishes its handshake and then sends no request head
    silent_tls = s.client_context().wrap_socket(
        socket.create_connection(("127.0.0.1", s.port), 5), server_hostname="127.0.0.1"
    )
    # a TCP client that never starts its handshake
    silent_tcp = socket.create_connection(("127.0.0.1", s.port), 5)
    try:
        assert closed_by_server(silent_tls, 5), "a silent TLS connection stayed open"
        assert closed_by_server(silent_tcp, 5), "a connection without a handshake stayed open"
    finally:
        silent_tls.close()
        silent_tcp.close()

    # the per-address cap: the fourth connection from 127.0.0.1 is closed before its handshake
    held = [http.client.HTTPSConnection("127.0.0.1", s.port, context=s.client_context()) for _ in range(3)]
    try:
        for c in held:  # each answered once, so the server has counted it
            c.request("GET", "/health")
            assert c.getresponse().read()
        fourth = http.client.HTTPSConnection("127.0.0.1", s.port, context=s.client_context(), timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            fourth.request("GET", "/health")
        fourth.close()
    finally:
        for c in held:
            c.close()
    assert refused(s, "max_connections_per_ip") == 1

    # a client that never reads its (large) response is dropped after http.send_timeout
    assert s.write("db", "m v=1 1", precision="ns").status == 204
    sql = "SELECT concat(repeat('x', 1000), CAST(value AS VARCHAR)) AS s FROM generate_series(1, 5000)"
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", s.port))
    slow = s.client_context().wrap_socket(reader, server_hostname="127.0.0.1")
    try:
        query = urllib.parse.urlencode({"db": "db", "q": sql})
        slow.sendall(f"GET /api/v3/query_sql?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        wait_for(lambda: "http.send_timeout" in s.log(), 20, "the slow reader to be dropped")
    finally:
        slow.close()
    assert s.request("GET", "/health").status == 200
    assert_clean_log(s)
    s.stop()


def refused(server: Server, reason: str) -> int:
    """appliance_http_refused_total{reason=...} as /metrics tells it now."""
    text = server.request("GET", "/metrics").text
    prefix = f'appliance_http_refused_total{{reason="{reason}"}} '
    return next((int(float(x[len(prefix) :])) for x in text.splitlines() if x.startswith(prefix)), 0)


def open_fds(server: Server) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def https_from(server: Server, source: str) -> int:
    """The status of GET /health over a new HTTPS connection from a given loopback address (0: the
    connection was closed before an answer)."""
    c = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=server.client_context(), timeout=10, source_address=(source, 0)
    )
    try:
        c.request("GET", "/health")
        return c.getresponse().status
    except (ssl.SSLError, ConnectionError):
        return 0
    finally:
        c.close()


def test_connections_that_never_start_a_handshake_are_capped_per_address(
    tmp_path: Path, server_cert: ServerCert
) -> None:
    env = {"APPLIANCE_HTTP_HEADER_TIMEOUT": "3s", "APPLIANCE_HTTP_MAX_CONNECTIONS_PER_IP": "4"}
    s = Server(tmp_path / "data", tls=server_cert, env=env).start()
    fds_before = open_fds(s)

    def silent() -> socket.socket:  # a TCP connection from 127.0.0.5 that never sends a ClientHello
        c = socket.socket()
        c.bind(("127.0.0.5", 0))
        c.connect(("127.0.0.1", s.port))
        return c

    held = [silent() for _ in range(4)]
    flood: list[socket.socket] = []
    try:
        wait_for(lambda: "appliance_http_connections 5" in s.request("GET", "/metrics").text, 10, "4 counted")
        flood = [silent() for _ in range(200)]
        wait_for(lambda: refused(s, "max_connections_per_ip") == 200, 10, "the flood to be refused")
        assert all(closed_by_server(c, 5) for c in flood), "a connection over the cap stayed open"
        assert open_fds(s) <= fds_before + len(held) + 4  # the flood holds none of the server's files
        assert https_from(s, "127.0.0.1") == 200  # another address is served meanwhile
        assert not any(closed_by_server(c, 0) for c in held)  # the first four are counted, not refused

        # the four time out at http.header_timeout, handshake included; the address is served again
        assert all(closed_by_server(c, 10) for c in held), "a silent connection stayed open"
        wait_for(lambda: https_from(s, "127.0.0.5") == 200, 10, "127.0.0.5 served again")
    finally:
        for c in held + flood:
            c.close()
    assert refused(s, "header_timeout") >= 4
    assert "no complete TLS handshake and request head within 3 s" in s.log()

    # failed handshakes (plain HTTP, a ClientHello cut short) are counted out once each
    for i in range(12):
        with socket.create_connection(("127.0.0.1", s.port), 5, source_address=("127.0.0.6", 0)) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 else client_hello()[:40])
            if i % 2:
                assert closed_by_server(c, 5)
    gauge = "appliance_http_connections 1\n"  # this scrape's own connection only
    wait_for(lambda: gauge in s.request("GET", "/metrics").text, 10, "every connection counted out")
    assert https_from(s, "127.0.0.6") == 200
    assert_clean_log(s)
    s.stop()


def test_a_request_sent_with_the_last_handshake_flight_is_served(
    tmp_path: Path, server_cert: ServerCert
) -> None:
    """A TLS 1.3 client may send its request in the same packet as its handshake's Finished: the
    server decrypts it before its HTTP side has started, and must still answer it."""
    s = Server(tmp_path / "data", tls=server_cert).start()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = s.client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", s.port), 5) as raw:
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        client.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw.sendall(outgoing.read())  # the client's Finished and the request, in one write
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := raw.recv(65536)):
            incoming.write(chunk)
            try:
                answer += client.read(65536)
            except ssl.SSLWantReadError:
                pass
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert_clean_log(s)
    s.stop()


def test_sighup_reloads_the_certificate(tmp_path: Path, test_ca: CertAuthority) -> None:
    live = tmp_path / "tls"
    live.mkdir()
    first = test_ca.issue("reload-1")
    for source, name in ((first.cert, "cert.pem"), (first.key, "key.pem")):
        shutil.copy(source, live / name)
    in_place = ServerCert(live / "cert.pem", live / "key.pem", first.ca, first.serial)
    s = Server(tmp_path / "data", tls=in_place).start()
    assert s.proc is not None
    assert serial_seen(s) == first.serial
    kept = http.client.HTTPSConnection("127.0.0.1", s.port, context=s.client_context(), timeout=10)
    kept.request("GET", "/health")
    assert kept.getresponse().read()

    second = test_ca.issue("reload-2")  # a renewal: new key, new serial, same paths
    shutil.copy(second.cert, live / "cert.pem")
    shutil.copy(second.key, live / "key.pem")
    s.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded the TLS certificate" in s.log(), 10, "the reload")
    assert serial_seen(s) == second.serial
    kept.request("GET", "/health")  # the connection opened before the reload goes on
    assert kept.getresponse().status == 200
    assert isinstance(kept.sock, ssl.SSLSocket)
    assert int(str((kept.sock.getpeercert() or {})["serialNumber"]), 16) == first.serial
    kept.close()

    # a broken renewal: the certificate of one pair with the key of another
    third = test_ca.issue("reload-3")
    shutil.copy(third.cert, live / "cert.pem")
    s.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "certificate reload failed" in s.log(), 10, "the failed reload")
    line = next(x for x in s.log().splitlines() if "certificate reload failed" in x)
    assert str(live / "key.pem") in line and "ERROR" in line, line
    assert serial_seen(s) == second.serial
    assert s.request("GET", "/health").status == 200
    assert "Traceback" not in s.log()
    s.stop()


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`appliance serve ARGS` expected to refuse to start: its exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    cmd = [sys.executable, "-m", "appliance", "serve", "--data-dir", str(tmp_path / "data"), "--node-id", "t"]
    return subprocess.run(
        [*cmd, "--http-bind", "127.0.0.1:0", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_tls_settings_refuse_to_start(
    tmp_path: Path, test_ca: CertAuthority, server_cert: ServerCert
) -> None:
    other = test_ca.issue("other")
    encrypted = encrypted_key(server_cert.key, tmp_path / "encrypted.key")
    cert, key = str(server_cert.cert), str(server_cert.key)
    cases = {
        "only-cert": (["--tls-cert", cert], ["http.tls_cert", "http.tls_key"]),
        "missing": (
            ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key],
            ["http.tls_cert", "nope.pem"],
        ),
        "mismatch": (
            ["--tls-cert", cert, "--tls-key", str(other.key)],
            ["http.tls_key", "not the private key"],
        ),
        "encrypted": (["--tls-cert", cert, "--tls-key", str(encrypted)], ["http.tls_key", "passphrase"]),
        "key-as-cert": (["--tls-cert", key, "--tls-key", key], ["http.tls_cert", "no usable certificate"]),
        "version": (["--tls-cert", cert, "--tls-key", key, "--tls-minimum-version", "1.1"], ["1.2 or 1.3"]),
    }
    for name, (args, words) in cases.items():
        r = serve(tmp_path / name, *args)
        assert r.returncode == 1, (name, r)
        assert all(w in r.stderr for w in words) and "Traceback" not in r.stderr, (name, r.stderr)
        assert not (tmp_path / name / "data" / "lmdb").exists(), f"{name}: refused after opening the data dir"


def test_config_check_loads_the_certificate(
    tmp_path: Path, test_ca: CertAuthority, server_cert: ServerCert
) -> None:
    other = test_ca.issue("check-other")
    config = tmp_path / "config.toml"

    def check(key: Path) -> subprocess.CompletedProcess[str]:
        config.write_text(f'[http]\ntls_cert = "{server_cert.cert}"\ntls_key = "{key}"\n')
        return subprocess.run(
            [sys.executable, "-m", "appliance", "config", "check", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    good, bad = check(server_cert.key), check(other.key)
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1 and "not the private key of the certificate" in bad.stderr
