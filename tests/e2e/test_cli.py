"""The CLI against a real server: the commands an operator types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.server import REPO, Server


def cli(
    server: Server,
    *args: str,
    stdin: bytes | None = None,
    home: Path | None = None,
    token: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m appliance ARGS` against `server`, with none of the caller's APPLIANCE_ or
    INFLUXDB3_ settings; `home` is the data dir whose admin-token file the CLI reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "INFLUXDB3_"))}
    env["APPLIANCE_HOST"] = server.url
    if home is not None:
        env["APPLIANCE_SERVER_DATA_DIR"] = str(home)
    if token is not None:
        env["APPLIANCE_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        cwd=REPO,
        env=env,
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m appliance ARGS` without a server in mind."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_write_query_and_show(server: Server, tmp_path: Path) -> None:
    r = cli(
        server,
        "write",
        "-d",
        "home",
        "--precision",
        "s",
        stdin=b"room,name=k temp=21.5 1735689600\nroom,name=l temp=22 1735689600\n",
    )
    assert r.returncode == 0, r.stderr
    r = cli(server, "write", "-d", "home", "room,name=m temp=1 1735689601", "-p", "s")
    assert r.returncode == 0, r.stderr
    r = cli(server, "query", "-d", "home", "--format", "csv", "SELECT name, temp FROM room ORDER BY name")
    assert r.returncode == 0 and r.stdout.splitlines() == ["name,temp", "k,21.5", "l,22.0", "m,1.0"]
    r = cli(server, "query", "-d", "home", "SELECT count(*) AS n FROM room")
    assert "| n |" in r.stdout and "| 3 |" in r.stdout
    out = tmp_path / "r.parquet"
    assert (
        cli(
            server, "query", "-d", "home", "--format", "parquet", "-o", str(out), "SELECT * FROM room"
        ).returncode
        == 0
    )
    assert pq.read_table(out).num_rows == 3
    assert "room" in cli(server, "show", "tables", "-d", "home").stdout
    assert "home" in cli(server, "show", "databases").stdout
    assert cli(server, "create", "database", "iot", "--retention-period", "7d").returncode == 0
    assert "iot" in cli(server, "show", "databases").stdout
    assert cli(server, "delete", "database", "iot").returncode == 0
    r = cli(server, "persist")
    assert r.returncode == 0 and "persisted 1 file" in r.stdout


def test_errors_are_one_clear_line(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.lp"
    bad.write_text("m f=1 1\nm f= 2\n")
    r = cli(server, "write", "-d", "db", "--file", str(bad))
    assert r.returncode == 1
    assert "line 2" in r.stderr and "Traceback" not in r.stderr
    r = cli(server, "query", "SELECT 1")
    assert r.returncode == 1 and "-d NAME" in r.stderr
    r = cli(server, "query", "-d", "nope", "SELECT 1")
    assert r.returncode == 1 and "404" in r.stderr
    r = run("query", "-H", "http://127.0.0.1:1", "-d", "x", "SELECT 1")
    assert r.returncode == 1 and "is `appliance serve` running?" in r.stderr


def test_client_finds_the_local_admin_token(auth_server: Server) -> None:
    r = cli(auth_server, "write", "-d", "a", "m f=1 1", home=auth_server.data_dir)
    assert r.returncode == 0, r.stderr
    env_token = cli(
        auth_server, "query", "-d", "a", "SELECT f FROM m", "--format", "json", "--token", "apiv3_nope"
    )
    assert env_token.returncode == 1 and "401" in env_token.stderr
    r = cli(auth_server, "create", "token", "--admin", "--regenerate", home=auth_server.data_dir)
    assert r.returncode == 0 and "apiv3_" in r.stdout
    assert cli(auth_server, "query", "-d", "a", "SELECT f FROM m", home=auth_server.data_dir).returncode == 0


def test_help_and_version() -> None:
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["write", "--help"],
        ["query", "--help"],
        ["create", "database", "--help"],
    ):
        r = run(*args)
        assert r.returncode == 0 and "usage:" in r.stdout
    r = run("--version")
    assert r.stdout.startswith("appliance ")


def test_config_check_names_bad_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\ngen1_duration = "5m"\n[http]\nbindd = "x"\n')
    r = run("config", "check", "--config", str(cfg))
    assert r.returncode == 1 and "http.bindd" in r.stderr
    cfg.write_text('[storage]\ngen1_duration = "5m"\n')
    r = run("config", "check", "--config", str(cfg), env={**os.environ, "APPLIANCE_QUERY_TIMEOUT": "5s"})
    assert r.returncode == 0
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()}
    assert "300000000000" in lines["storage.gen1_duration"] and "file" in lines["storage.gen1_duration"]
    assert "env APPLIANCE_QUERY_TIMEOUT" in lines["query.timeout"]


def test_401_says_where_the_cli_looked_for_the_token(auth_server: Server, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    r = cli(auth_server, "query", "-d", "a", "SELECT 1", home=elsewhere)
    assert r.returncode == 1 and "401" in r.stderr, r.stderr
    assert f"looked for the admin token in {elsewhere / 'admin-token'}" in r.stderr
    assert "--token" in r.stderr and "APPLIANCE_TOKEN" in r.stderr and "APPLIANCE_SERVER_DATA_DIR" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli(auth_server, "show", "databases", "--token", "apiv3_nope")
    assert r.returncode == 1 and "refused the token given with --token or APPLIANCE_TOKEN" in r.stderr
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "admin-token").write_text("apiv3_stale\n")
    r = cli(auth_server, "show", "databases", home=stale)
    assert r.returncode == 1 and f"refused the admin token read from {stale / 'admin-token'}" in r.stderr


def test_readme_mqtt_block_starts_as_pasted(tmp_path: Path) -> None:
    """The README's first [mqtt] block passes `config check` (which reads credential files as serve does)."""
    import re

    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[mqtt]" in b)
    path = tmp_path / "config.toml"
    path.write_text(block)
    r = run("config", "check", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "mqtt.broker" in r.stdout
    assert "appliance serve --config config.toml" in readme
