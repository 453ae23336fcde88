"""What a caller without a token learns, and who may serve without auth (issue 13, items 4 and 5),
against a real `appliance serve` over loopback."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from appliance import __version__
from tests.server import REPO, Server, free_port, wait_for

#: A secret-looking text in a component's error: the MQTT broker's host name, which the MQTT
#: part of /health repeats in its "cannot connect" error (.invalid never resolves).
SECRET = "apiv3_S3cr3tL00king"
PUBLIC_KEYS = {"name", "message", "status", "state", "checks", "components"}


def _unreachable_broker_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[mqtt]\nbroker = "mqtt://{SECRET}.invalid:1883"\nreconnect_min = "100ms"\nreconnect_max = "1s"\n\n'
        '[[mqtt.subscription]]\ntopic = "a/#"\ndatabase = "iot"\n'
    )
    return path


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`appliance serve` expected to refuse to start (a timeout means it served)."""
    cmd = [sys.executable, "-m", "appliance", "serve", "--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def _config_check(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "appliance", "config", "check", "--config", str(path)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def _assert_public(body: dict[str, Any], text: str) -> None:
    """The allow-listed shape: states only, nothing a component measured or said."""
    assert set(body) == PUBLIC_KEYS, body
    assert all(set(c) == {"status"} for c in body["components"].values()), body
    assert all(set(c) == {"name", "status"} for c in body["checks"]), body
    for leak in (SECRET, "cannot connect", __version__, "last_seq", "buffer_bytes", "process_id", "error"):
        assert leak not in text, (leak, text)


# -- /health -------------------------------------------------------------------------------------
def test_health_without_a_token_tells_each_state_and_nothing_else(tmp_path: Path) -> None:
    s = Server(tmp_path / "data", auth=True, args=["--config", str(_unreachable_broker_config(tmp_path))])
    s.start()
    full = wait_for(
        lambda: (h := s.request("GET", "/health").json())["components"]["mqtt"].get("error") and h,
        what="the MQTT connection error",
    )
    assert SECRET in full["components"]["mqtt"]["error"] and SECRET in full["message"]  # the admin sees it
    assert full["version"] == __version__ and "last_seq" in full["components"]["wal"]
    for path in ("/health", "/api/v1/health"):
        for token in ("", "wrong-token"):
            r = s.request("GET", path, token=token)
            body = r.json()
            assert r.status == 200 and body["state"] == "degraded" and body["status"] == "pass"
            assert body["message"] == "degraded" and body["name"] == "appliance"
            assert body["components"] == {
                name: {"status": c["status"]} for name, c in full["components"].items()
            }
            assert body["checks"] == full["checks"]
            _assert_public(body, r.text)
    s.stop()


def test_influxdb2_client_health_works_without_a_token(auth_server: Server) -> None:
    influxdb_client = pytest.importorskip("influxdb_client")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # health() is deprecated in favour of ping()
        with influxdb_client.InfluxDBClient(url=auth_server.url, token="", org="o") as v2:
            health = v2.health()  # on any error it returns name "influxdb": this name proves it parsed ours
    assert (health.name, health.status, health.message) == (
        "appliance",
        "pass",
        "ready for queries and writes",
    )
    assert {c.name for c in health.checks} >= {"http", "wal", "persist", "engine"}
    assert health.version is None


# -- /ping ---------------------------------------------------------------------------------------
def test_ping_without_a_token_names_the_product_only(auth_server: Server) -> None:
    s = auth_server
    anonymous = s.request("GET", "/ping", token="")
    assert anonymous.status == 200 and anonymous.json() == {"product_name": "appliance"}
    assert anonymous.headers["X-Influxdb-Version"] == __version__  # the v1 client's ping() reads it
    assert anonymous.headers["X-Influxdb-Build"] == "appliance"
    admin = s.request("POST", "/ping").json()
    assert admin["version"] == __version__ and admin["process_id"] and admin["product_name"] == "appliance"
    assert s.request("GET", "/ping", token="wrong-token").json() == {"product_name": "appliance"}
    influxdb = pytest.importorskip("influxdb")
    v1 = influxdb.InfluxDBClient("127.0.0.1", s.port)  # no credentials
    assert v1.ping() == __version__
    v1.close()


# -- CORS ----------------------------------------------------------------------------------------
def test_health_and_ping_follow_cors_origins(tmp_path: Path) -> None:
    s = Server(tmp_path / "data", auth=True, env={"APPLIANCE_HTTP_CORS_ORIGINS": "https://grafana.lan:3000"})
    s.start()
    for method, path in (("GET", "/health"), ("GET", "/api/v1/health"), ("GET", "/ping"), ("HEAD", "/ping")):
        for token in ("", None):
            evil = s.request(method, path, token=token, headers={"Origin": "https://evil.example"})
            assert evil.status in (200, 204) and "Access-Control-Allow-Origin" not in evil.headers, path
            ok = s.request(method, path, token=token, headers={"Origin": "https://grafana.lan:3000"})
            assert ok.headers.get("Access-Control-Allow-Origin") == "https://grafana.lan:3000", path
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    assert s.request("OPTIONS", "/health", headers=preflight).status == 403
    s.stop()


# -- auth off on a network address ---------------------------------------------------------------
def test_auth_off_on_a_network_address_is_refused_unless_confirmed(tmp_path: Path) -> None:
    port = free_port()
    out = _serve(tmp_path, "--without-auth", "--http-bind", f"0.0.0.0:{port}")
    assert out.returncode == 1, out
    error = out.stderr.strip()
    assert error.startswith("error: refusing to serve without auth on 0.0.0.0:") and error.count("\n") == 0
    for way_out in (
        f"--http-bind 127.0.0.1:{port}",
        "appliance create token",
        "--allow-unauthenticated-network",
    ):
        assert way_out in error, way_out
    assert "read, write and delete" in error
    assert not (tmp_path / "data").exists()  # refused before anything was opened
    config = tmp_path / "open.toml"
    config.write_text(f'[http]\nbind = "[::]:{port}"\n\n[auth]\nenabled = false\n')
    out = _serve(tmp_path, "--config", str(config))
    assert out.returncode == 1 and "refusing to serve without auth on [::]:" in out.stderr, out


def test_the_confirmation_starts_it_with_a_warning_at_every_start(tmp_path: Path) -> None:
    s = Server(tmp_path / "data")
    s.args = ["--http-bind", f"0.0.0.0:{s.port}", "--allow-unauthenticated-network"]
    s.start()
    assert s.request("GET", "/api/v3/configure/database", {"format": "json"}).status == 200
    s.stop()
    config = tmp_path / "open.toml"
    config.write_text(f'[http]\nbind = "0.0.0.0:{s.port}"\n\n[auth]\nallow_unauthenticated_network = true\n')
    s.args = ["--config", str(config), "--http-bind", f"0.0.0.0:{s.port}"]  # the setting confirms
    s.start()
    s.stop()
    warnings_logged = [
        line for line in s.log().splitlines() if "confirmed by auth.allow_unauthenticated_network" in line
    ]
    assert len(warnings_logged) == 2 and all(
        "WARNING" in line and "0.0.0.0" in line for line in warnings_logged
    )


def test_auth_off_on_loopback_needs_no_confirmation(server: Server) -> None:
    assert "reachable from the network" not in server.log()


def test_config_check_reports_the_refusal(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[http]\nbind = "0.0.0.0:8181"\n\n[auth]\nenabled = false\n')
    out = _config_check(config)
    assert out.returncode == 1 and "refusing to serve without auth on 0.0.0.0:8181" in out.stderr, out
    config.write_text(config.read_text() + "allow_unauthenticated_network = true\n")
    out = _config_check(config)
    assert out.returncode == 0, out
    assert "warning: auth is off and http.bind 0.0.0.0:8181 is reachable from the network" in out.stderr
    assert any(
        line.split()[:2] == ["auth.allow_unauthenticated_network", "True"] for line in out.stdout.splitlines()
    )
    config.write_text(config.read_text().replace("= true", '= "maybe"'))
    out = _config_check(config)
    assert out.returncode == 1 and "setting auth.allow_unauthenticated_network" in out.stderr, out
    assert "expected true or false" in out.stderr
