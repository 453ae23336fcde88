"""Resource tokens against a real server: Grafana gets a read token for one database, the sensor
fleet a write token for another, and neither can do anything else; tokens survive a restart,
are revoked at once, expire, and never appear in clear in the data dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from tests.e2e.test_cli import cli
from tests.server import Server, wait_for

_TOKEN = re.compile(r"apiv3_[A-Za-z0-9_-]+")
_JSON = {"Content-Type": "application/json"}


def _bearer(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def _create(server: Server, *args: str) -> str:
    r = cli(server, "create", "token", *args, "--token", server.token or "")
    assert r.returncode == 0, r.stderr
    found = _TOKEN.findall(r.stdout)
    assert len(found) == 1, r.stdout
    return found[0]


def _write(server: Server, token: str, db: str, lp: str) -> int:
    return server.request("POST", "/api/v3/write_lp", {"db": db}, lp, token=token).status


def _sql(server: Server, token: str, db: str, sql: str) -> tuple[int, str]:
    r = server.request("GET", "/api/v3/query_sql", {"db": db, "q": sql, "format": "json"}, token=token)
    return r.status, r.text


def test_grafana_reads_one_database_and_sensors_write_another(auth_server: Server) -> None:
    s = auth_server
    for db in ("plant", "lab"):
        assert cli(s, "create", "database", db, "--token", s.token or "").returncode == 0
    assert s.write("plant", "temp,room=a v=1 1").status == 204
    grafana = _create(s, "--name", "grafana", "--permission", "db:plant:read", "--expiry", "1y")
    sensors = _create(s, "--name", "sensors", "--permission", "db:lab:write")

    # The sensor fleet, with the InfluxDB 2 client library: writes to its database, nothing else.
    with InfluxDBClient(url=s.url, token=sensors, org="-") as client:
        client.write_api(write_options=SYNCHRONOUS).write("lab", record="hum,dev=1 v=40 2")
        try:
            client.write_api(write_options=SYNCHRONOUS).write("plant", record="hum,dev=1 v=40 2")
            raise AssertionError("a write token for lab wrote to plant")
        except ApiException as e:
            assert e.status == 403 and "db:plant:write" in e.body
    assert _sql(s, sensors, "lab", "SELECT * FROM hum")[0] == 403
    assert s.request("POST", "/api/v3/configure/database", body=b'{"db":"x"}', token=sensors).status == 403
    assert s.request("POST", "/api/v3/persist", token=sensors).status == 403

    # Grafana: reads plant (also through the CLI), nothing else.
    status, body = _sql(s, grafana, "plant", "SELECT v FROM temp")
    assert status == 200 and '"v":1.0' in body
    r = cli(
        s, "query", "-d", "plant", "SELECT count(*) AS n FROM temp", "--format", "csv", "--token", grafana
    )
    assert r.returncode == 0 and "n\n1" in r.stdout, r.stderr
    denied = cli(s, "query", "-d", "lab", "SELECT * FROM hum", "--token", grafana)
    assert denied.returncode == 1 and "403" in denied.stderr and "db:lab:read" in denied.stderr
    assert _write(s, grafana, "plant", "temp,room=a v=2 3") == 403
    assert s.request("GET", "/metrics", token=grafana).status == 403
    assert s.request("GET", "/api/v3/configure/token", token=grafana).status == 403

    # What the admin sees: names, permissions, dates and last use; never a secret.
    shown = cli(s, "show", "tokens", "--format", "json", "--token", s.token or "")
    assert shown.returncode == 0, shown.stderr
    assert grafana not in shown.stdout and sensors not in shown.stdout and "apiv3_" not in shown.stdout
    rows = {row["name"]: row for row in json.loads(shown.stdout)}
    assert rows["grafana"]["permissions"] == "db:plant:read" and rows["grafana"]["expiry"]
    assert rows["grafana"]["last_used"] and rows["sensors"]["permissions"] == "db:lab:write"
    assert rows["_admin"]["permissions"] == "*:*:*"


def test_tokens_survive_a_restart_hashed_and_revoke_at_once(auth_server: Server) -> None:
    s = auth_server
    assert cli(s, "create", "database", "plant", "--token", s.token or "").returncode == 0
    grafana = _create(s, "--name", "grafana", "--permission", "db:plant:read")
    s.stop()
    s.start()
    assert _sql(s, grafana, "plant", "SELECT 1")[0] == 200
    assert _write(s, grafana, "plant", "m v=1 1") == 403  # still only read after the restart
    lmdb_bytes = b"".join(p.read_bytes() for p in (s.data_dir / "lmdb").iterdir() if p.is_file())
    assert grafana.encode() not in lmdb_bytes and s.token and s.token.encode() not in lmdb_bytes
    r = cli(s, "delete", "token", "--name", "grafana", "--token", s.token)
    assert r.returncode == 0, r.stderr
    assert _sql(s, grafana, "plant", "SELECT 1")[0] == 401
    again = cli(s, "delete", "token", "--name", "grafana", "--token", s.token)
    assert again.returncode == 1 and "no token named 'grafana'" in again.stderr


def test_an_expired_token_gets_401(auth_server: Server) -> None:
    s = auth_server
    assert cli(s, "create", "database", "plant", "--token", s.token or "").returncode == 0
    short = _create(s, "--name", "short", "--permission", "db:plant:read", "--expiry", "1s")
    assert _sql(s, short, "plant", "SELECT 1")[0] == 200
    wait_for(lambda: _sql(s, short, "plant", "SELECT 1")[0] == 401, timeout=10, what="the token to expire")


def test_bad_token_requests_get_clear_errors(auth_server: Server) -> None:
    s = auth_server

    def create(*args: str) -> str:
        r = cli(s, "create", "token", *args, "--token", s.token or "")
        assert r.returncode == 1, r.stdout
        return r.stderr

    assert "RESOURCE_TYPE:NAMES:ACTIONS" in create("--name", "x", "--permission", "plant:read")
    assert "invalid action 'delete'" in create("--name", "x", "--permission", "db:plant:delete")
    assert "unknown resource type" in create("--name", "x", "--permission", "table:t:read")
    assert "invalid database name" in create("--name", "x", "--permission", "db:../etc:read")
    assert "--permission" in create("--name", "x")
    assert "with --admin alone" in create("--admin", "--name", "x", "--regenerate")
    assert "do not go together" in create("--admin", "--name", "x", "--permission", "db:a:read")
    assert "--expiry" in create("--name", "x", "--permission", "db:a:read", "--expiry", "soon")
    _create(s, "--name", "dup", "--permission", "db:a:read")
    assert "already exists" in create("--name", "dup", "--permission", "db:a:read")
    for body in (
        b'{"token_name": "y", "permissions": "db:a:read"}',
        b'{"token_name": "y", "permissions": [{"resource_type": "db"}]}',
        b'{"token_name": "y\\u0000", "permissions": ["db:a:read"]}',
        b'{"token_name": "y", "permissions": ["db:a:read"], "expiry_secs": -5}',
        b'{"token_name": "y", "permissions": ["db:a:read"], "expiry_secs": 1e300}',
        b'{"token_name": "y", "permissions": ["db:a:read"], "expiry_secs": 99999999999999999999999}',
        b'{"token_name": "' + b"n" * 10_000 + b'", "permissions": ["db:a:read"]}',
        b'{"token_name": "y", "permissions": [' + b'"db:a:read",' * 1000 + b'"db:a:read"]}',
    ):
        r = s.request("POST", "/api/v3/enterprise/configure/token", body=body, headers=_JSON | _bearer(s))
        assert r.status == 400, (body[:80], r.status, r.text)
    assert s.request("GET", "/health").status == 200
    assert "Traceback" not in s.log()


def test_named_admin_tokens_do_everything(auth_server: Server, tmp_path: Path) -> None:
    s = auth_server
    ops = _create(s, "--admin", "--name", "ops", "--expiry", "30d")
    assert (
        s.request("POST", "/api/v3/configure/database", body=b'{"db":"x"}', headers=_JSON, token=ops).status
        == 200
    )
    assert s.request("GET", "/metrics", token=ops).status == 200
    shown = cli(s, "show", "tokens", "--token", ops)
    assert shown.returncode == 0 and "ops" in shown.stdout and "*:*:*" in shown.stdout
