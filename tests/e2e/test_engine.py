"""The processing engine end to end: real plugins run by a real server for every trigger type."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from tests.server import REPO, Server, wait_for

JSON = {"Content-Type": "application/json"}


def plugin(server: Server, name: str, code: str) -> str:
    """Write a plugin file into the server's plugin directory; returns its name for a trigger."""
    path = server.data_dir / "plugins" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return name


def create(server: Server, db: str, name: str, filename: str, spec: str, **extra: Any) -> Any:
    body = {
        "db": db,
        "trigger_name": name,
        "plugin_filename": filename,
        "trigger_specification": spec,
        "trigger_settings": {
            "run_async": extra.pop("run_async", False),
            "error_behavior": extra.pop("error_behavior", "log"),
        },
        "trigger_arguments": extra.pop("arguments", None),
        "disabled": extra.pop("disabled", False),
        **extra,
    }
    return server.request(
        "POST", "/api/v3/configure/processing_engine_trigger", body=json.dumps(body), headers=JSON
    )


def logs(server: Server, db: str) -> list[dict[str, Any]]:
    return server.query(
        db, "SELECT trigger_name, log_level, log_text FROM system.processing_engine_logs ORDER BY event_time"
    )


def test_wal_trigger_sees_rows_as_dicts_and_writes_back(server: Server) -> None:
    server.write("db", "m,host=a v=1 1", precision="ns")  # the database must exist
    r = create(
        server,
        "db",
        "echo",
        plugin(
            server,
            "echo.py",
            """
        def process_writes(influxdb3_local, table_batches, args):
            for batch in table_batches:
                for row in batch["rows"]:
                    influxdb3_local.info("row", batch["table_name"], sorted(row.items()))
                    influxdb3_local.write(LineBuilder("derived").tag("host", row.get("host", "none")).float64_field("double", row["v"] * 2).time_ns(row["time"]))
    """,
        ),
        "table:m",
    )
    assert r.status == 200, r.text
    assert server.write("db", "m,host=b v=2 10\nm v=3 20\n", precision="ns").status == 204
    rows = wait_for(
        lambda: (
            server.query("db", "SELECT host, double FROM derived ORDER BY time")
            if _has(server, "db", "derived", 2)
            else None
        )
    )
    assert rows == [{"host": "b", "double": 4.0}, {"host": "none", "double": 6.0}]
    texts = [r["log_text"] for r in logs(server, "db") if r["trigger_name"] == "echo"]
    assert "row m [('host', 'b'), ('time', 10), ('v', 2.0)]" in texts
    assert "row m [('time', 20), ('v', 3.0)]" in texts  # an absent tag is omitted, not None
    assert any(t.startswith("finished execution in") for t in texts)


def stored_log_texts(server: Server) -> list[str]:
    """The plugin log lines stored in LMDB (the server flushes its in-memory ring about once a second)."""
    env = lmdb.open(str(server.data_dir / "lmdb"), max_dbs=20, readonly=True)
    try:
        with env.begin(db=env.open_db(b"logs", create=False)) as txn:
            return [str(msgpack.unpackb(bytes(value))[4]) for _, value in txn.cursor()]
    finally:
        env.close()


def _has(server: Server, db: str, table: str, n: int) -> bool:
    r = server.request("GET", "/api/v3/query_sql", {"db": db, "q": f'SELECT count(*) AS n FROM "{table}"'})
    return r.status == 200 and r.json()[0]["n"] >= n


def test_own_writes_do_not_retrigger_but_other_triggers_see_them(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    loop = plugin(
        server,
        "loop.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            if any(row.get("done") for batch in table_batches for row in batch["rows"]):
                influxdb3_local.info("done")  # the test's sentinel: every batch before it was handled
                return
            n = influxdb3_local.cache.get("n", 0) + 1
            influxdb3_local.cache.put("n", n)
            for batch in table_batches:
                for row in batch["rows"]:
                    influxdb3_local.write(LineBuilder("m").float64_field("v", row["v"] + 1).time_ns(row["time"] + 1))
            influxdb3_local.info("calls", n)
    """,
    )
    watch = plugin(
        server,
        "watch.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            if any(row.get("done") for batch in table_batches for row in batch["rows"]):
                influxdb3_local.info("done")  # the test's sentinel: every batch before it was handled
                return
            influxdb3_local.info("saw", sum(len(b["rows"]) for b in table_batches))
    """,
    )
    assert create(server, "db", "loop", loop, "table:m").status == 200
    assert create(server, "db", "watch", watch, "all_tables").status == 200
    server.write("db", "m v=10 100", precision="ns")
    wait_for(lambda: _has(server, "db", "m", 3))
    # A sentinel written after loop's own write: once both triggers have logged it, a re-trigger by
    # that write (queued before it) would have run.
    server.write("db", "m done=true 1000", precision="ns")
    wait_for(
        lambda: (
            {(r["trigger_name"], r["log_text"]) for r in logs(server, "db")}
            >= {("loop", "done"), ("watch", "done")}
        )
    )
    texts = [(r["trigger_name"], r["log_text"]) for r in logs(server, "db")]
    assert [t for n, t in texts if n == "loop" and t.startswith("calls")] == ["calls 1"]
    assert ("watch", "saw 1") in texts and texts.count(
        ("watch", "saw 1")
    ) == 2  # the user's write and loop's write


def test_schedule_trigger_runs_epoch_aligned_with_module_state(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(
        server,
        "tick.py",
        """
        calls = 0
        def process_scheduled_call(influxdb3_local, call_time, args):
            global calls
            calls += 1
            assert call_time.tzinfo is None and call_time.microsecond == 0
            influxdb3_local.write(LineBuilder("ticks").tag("who", args["who"]).int64_field("n", calls))
    """,
    )
    assert create(server, "db", "tick", name, "every:1s", arguments={"who": "a"}).status == 200
    rows = wait_for(
        lambda: (
            server.query("db", "SELECT n FROM ticks ORDER BY n") if _has(server, "db", "ticks", 3) else None
        )
    )
    assert [r["n"] for r in rows][:3] == [1, 2, 3]  # module state persists across calls of one trigger


def test_cron_five_field_is_accepted(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(server, "c.py", "def process_scheduled_call(influxdb3_local, call_time, args):\n    pass\n")
    assert create(server, "db", "c5", name, "cron:*/5 * * * *").status == 200
    assert create(server, "db", "c6", name, "cron:*/2 * * * * *").status == 200
    r = create(server, "db", "bad", name, "cron:not a cron")
    assert r.status == 400 and "failed to parse trigger" in r.text


def test_request_trigger_return_values(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(
        server,
        "req.py",
        """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            kind = query_parameters.get("kind")
            if kind == "text":
                return "hello"
            if kind == "bytes":
                return b"\\x00\\x01"
            if kind == "tuple":
                return {"made": True}, 201, {"X-Extra": "1"}
            if kind == "raise":
                raise ValueError("nope")
            if kind == "none":
                return None
            if kind == "headers":
                return {"auth": "authorization" in request_headers, "ua": request_headers.get("user-agent", "")}
            return {"q": query_parameters, "body": request_body.decode(), "args": args}
    """,
    )
    assert create(server, "db", "req", name, "request:api/v1/thing", arguments={"a": "1"}).status == 200
    r = server.request("POST", "/api/v3/engine/api/v1/thing", {"x": "y z"}, b"payload")
    assert r.status == 200 and r.json() == {"q": {"x": "y z"}, "body": "payload", "args": {"a": "1"}}
    r = server.request("GET", "/api/v3/engine/api/v1/thing", {"kind": "text"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html") and r.text == "hello"
    r = server.request("GET", "/api/v3/engine/api/v1/thing", {"kind": "bytes"})
    assert r.headers["Content-Type"] == "application/octet-stream" and r.body == b"\x00\x01"
    r = server.request("GET", "/api/v3/engine/api/v1/thing", {"kind": "tuple"})
    assert r.status == 201 and r.headers["X-Extra"] == "1" and r.json() == {"made": True}
    r = server.request("GET", "/api/v3/engine/api/v1/thing", {"kind": "raise"})
    assert r.status == 500 and "nope" in r.json()["error"]
    r = server.request("GET", "/api/v3/engine/api/v1/thing", {"kind": "none"})
    assert r.status == 500 and "Unsupported return type" in r.json()["error"]
    r = server.request(
        "GET", "/api/v3/engine/api/v1/thing", {"kind": "headers"}, headers={"Authorization": "Bearer x"}
    )
    assert r.json()["auth"] is False
    r = server.request("GET", "/api/v3/engine/nothing/here")
    assert r.status == 404 and r.json() == {"error": "not found"}


def test_request_plugin_may_call_the_servers_own_api(server: Server) -> None:
    server.write("db", "m v=5 1", precision="ns")
    name = plugin(
        server,
        "self.py",
        f"""
        import json, urllib.request
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            with urllib.request.urlopen("{server.url}/ping") as r:
                ping = json.loads(r.read())
            with urllib.request.urlopen("{server.url}/api/v3/engine/other") as r:
                other = r.read().decode()
            return {{"ping": bool(ping["version"]), "other": other, "rows": influxdb3_local.query("SELECT v FROM m")}}
    """,
    )
    other = plugin(server, "other.py", "def process_request(a, q, h, b, args):\n    return 'inner'\n")
    create(server, "db", "outer", name, "request:outer")
    create(server, "db", "inner", other, "path:other")
    r = server.request("GET", "/api/v3/engine/outer", timeout=20)
    assert r.status == 200 and r.json() == {"ping": True, "other": "inner", "rows": [{"v": 5.0}]}


def test_trigger_lifecycle_and_errors(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(server, "p.py", "def process_writes(influxdb3_local, table_batches, args):\n    pass\n")
    assert create(server, "db", "t", name, "table:m").status == 200
    assert create(server, "db", "t", name, "table:m").status == 409
    r = create(server, "nodb", "t", name, "table:m")
    assert r.status == 404 and "Database not found" in r.text
    r = create(server, "db", "t2", "missing.py", "table:m")
    assert r.status == 404 and "Plugin not found" in r.text
    r = create(server, "db", "t3", "../../etc/passwd", "table:m")
    assert r.status == 400 and "Path traversal detected" in r.text
    r = create(server, "db", "t4", name, "sometimes")
    assert r.status == 400 and "expect one of the following forms" in r.text
    r = server.request(
        "DELETE", "/api/v3/configure/processing_engine_trigger", {"db": "db", "trigger_name": "t"}
    )
    assert r.status == 400 and "Disable it first or use --force" in r.text
    assert (
        server.request(
            "POST", "/api/v3/configure/processing_engine_trigger/disable", {"db": "db", "trigger_name": "t"}
        ).status
        == 200
    )
    shown = server.query(
        "db", "SELECT trigger_name, disabled, trigger_specification FROM system.processing_engine_triggers"
    )
    assert shown == [
        {
            "trigger_name": "t",
            "disabled": True,
            "trigger_specification": '{"single_table_wal_write":{"table_name":"m"}}',
        }
    ]
    assert (
        server.request(
            "DELETE", "/api/v3/configure/processing_engine_trigger", {"db": "db", "trigger_name": "t"}
        ).status
        == 200
    )
    assert server.query("db", "SELECT trigger_name FROM system.processing_engine_triggers") == []


def test_triggers_logs_and_disable_survive_restart(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    bad = plugin(
        server,
        "bad.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.info("about to fail")
            raise SystemExit("a plugin must not stop the server")
    """,
    )
    good = plugin(
        server,
        "good.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.info("good ran", {"rows": sum(len(b["rows"]) for b in table_batches)})
    """,
    )
    assert create(server, "db", "bad", bad, "table:m", error_behavior="disable").status == 200
    assert create(server, "db", "good", good, "table:m", arguments={"k": "v"}).status == 200
    server.write("db", "m v=1 2", precision="ns")
    wait_for(
        lambda: (
            server.query(
                "db", "SELECT disabled FROM system.processing_engine_triggers WHERE trigger_name = 'bad'"
            )
            == [{"disabled": True}]
        )
    )
    assert server.request("GET", "/health").status == 200
    texts = [r["log_text"] for r in logs(server, "db")]
    assert "good ran {'rows': 1}" in texts and any("SystemExit" in t for t in texts)
    server.stop()  # a clean stop flushes the log ring to LMDB (Engine.stop): nothing to wait for
    server.start()
    after = [r["log_text"] for r in logs(server, "db")]
    assert "good ran {'rows': 1}" in after
    assert server.query(
        "db", "SELECT trigger_name, disabled FROM system.processing_engine_triggers ORDER BY trigger_name"
    ) == [
        {"trigger_name": "bad", "disabled": True},
        {"trigger_name": "good", "disabled": False},
    ]
    assert server.query(
        "db", "SELECT argument_key, argument_value FROM system.processing_engine_trigger_arguments"
    ) == [{"argument_key": "k", "argument_value": "v"}]
    server.write("db", "m v=2 3", precision="ns")
    wait_for(lambda: [r for r in logs(server, "db") if r["log_text"] == "good ran {'rows': 1}"][1:])


def test_plugin_file_changes_are_picked_up(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(server, "r.py", "def process_request(a, q, h, b, args):\n    return 'one'\n")
    create(server, "db", "r", name, "request:r")
    assert server.request("GET", "/api/v3/engine/r").text == "one"
    path = server.data_dir / "plugins" / name
    before = path.stat().st_mtime_ns
    plugin(server, "r.py", "def process_request(a, q, h, b, args):\n    return 'two'\n")
    later = before + 10**9  # the loader compares mtimes: a new one even if both writes share a clock tick
    os.utime(path, ns=(later, later))
    assert server.request("GET", "/api/v3/engine/r").text == "two"


def test_multi_file_plugin_package(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    plugin(server, "pkg/helpers.py", "def shout(s):\n    return s.upper()\n")
    plugin(
        server,
        "pkg/__init__.py",
        "from .helpers import shout\ndef process_request(a, q, h, b, args):\n    return shout('hi')\n",
    )
    assert create(server, "db", "pkg", "pkg", "request:pkg").status == 200
    assert server.request("GET", "/api/v3/engine/pkg").text == "HI"


def test_request_triggers_need_a_token_unless_no_auth(auth_server: Server) -> None:
    s = auth_server
    s.write("db", "m v=0 1", precision="ns")
    name = plugin(s, "open.py", "def process_request(a, q, h, b, args):\n    return 'ok'\n")
    assert create(s, "db", "closed", name, "request:closed").status == 200
    assert create(s, "db", "open", name, "request:open", no_auth=True).status == 200
    assert s.request("GET", "/api/v3/engine/closed", token="").status == 401
    assert s.request("GET", "/api/v3/engine/closed").text == "ok"
    assert s.request("GET", "/api/v3/engine/open", token="").text == "ok"


EXAMPLES = REPO / "plugins"


@pytest.fixture
def examples(server: Server) -> Server:
    shutil.copytree(EXAMPLES, server.data_dir / "plugins", dirs_exist_ok=True)
    return server


def test_example_webhook_writes_json_as_points(examples: Server) -> None:
    s = examples
    s.write("iot", "m v=0 1", precision="ns")
    assert (
        create(s, "iot", "hook", "webhook/webhook.py", "request:ingest", arguments={"table": "events"}).status
        == 200
    )
    body = json.dumps(
        [
            {"device": "d1", "temp": 21.5, "count": 3, "ok": True, "time": 1_000},
            {"device": "d2", "temp": 22.0},
        ]
    )
    r = s.request("POST", "/api/v3/engine/ingest", body=body)
    assert r.status == 200 and r.json() == {"written": 2}
    rows = s.query("iot", "SELECT device, temp, count, ok FROM events ORDER BY device")
    assert rows == [{"device": "d1", "temp": 21.5, "count": 3, "ok": True}, {"device": "d2", "temp": 22.0}]
    assert s.request("POST", "/api/v3/engine/ingest", body="not json").status == 400


def test_example_threshold_alert(examples: Server) -> None:
    s = examples
    s.write("iot", "weather,site=a temp=1 1", precision="ns")
    args = {"field": "temp", "above": "30"}
    assert (
        create(s, "iot", "hot", "threshold_alert/threshold_alert.py", "table:weather", arguments=args).status
        == 200
    )
    s.write("iot", "weather,site=a temp=25 10\nweather,site=b temp=35.5 20\n", precision="ns")
    rows = wait_for(
        lambda: (
            s.query("iot", "SELECT source, site, value, threshold, message FROM alerts")
            if _has(s, "iot", "alerts", 1)
            else None
        )
    )
    assert rows == [
        {
            "source": "weather",
            "site": "b",
            "value": 35.5,
            "threshold": 30.0,
            "message": "temp 35.5 above 30.0",
        }
    ]


def test_example_downsampler(examples: Server) -> None:
    s = examples
    now = time.time_ns()
    minute = 60 * 10**9
    base = now - now % (5 * minute) - 10 * minute
    s.write(
        "iot",
        "".join(f"weather,site=a temp={t} {base + i * minute}\n" for i, t in enumerate([10, 20, 30, 40, 50])),
        precision="ns",
    )
    args = {"source": "weather", "target": "weather_5m", "interval": "5 minutes", "window": "1 hour"}
    assert create(s, "iot", "ds", "downsampler/downsampler.py", "every:1s", arguments=args).status == 200
    rows = wait_for(
        lambda: (
            s.query("iot", "SELECT site, temp FROM weather_5m") if _has(s, "iot", "weather_5m", 1) else None
        )
    )
    assert rows == [{"site": "a", "temp": 30.0}]


def _wheel(tmp: Path) -> Path:
    """A minimal pure-Python wheel built by hand: installs with pip offline, no build step."""
    import zipfile

    path = tmp / "appliance_test_pkg-1.0-py3-none-any.whl"
    files = {
        "appliance_test_pkg.py": "VALUE = 42\n",
        "appliance_test_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: appliance-test-pkg\nVersion: 1.0\n",
        "appliance_test_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "appliance_test_pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**files, "appliance_test_pkg-1.0.dist-info/RECORD": record}.items():
            z.writestr(name, text)
    return path


def test_installed_packages_are_importable_by_plugins(server: Server, tmp_path: Path) -> None:
    """A wheel in the plugin directory installs by bare path, by `name @ file:` and from a hashed requirements file."""
    import hashlib

    server.write("db", "m v=0 1", precision="ns")
    plugins = server.data_dir / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(plugins)
    install = "/api/v3/configure/plugin_environment/install_packages"

    def post(path: str, body: dict[str, Any]) -> Any:
        return server.request("POST", path, body=json.dumps(body), headers=JSON, timeout=300)

    r = post(install, {"packages": [str(wheel)]})
    assert r.status == 200, r.text
    name = plugin(
        server,
        "uses_pkg.py",
        "import appliance_test_pkg\ndef process_request(a, q, h, b, args):\n    return {'value': appliance_test_pkg.VALUE}\n",
    )
    create(server, "db", "pkg", name, "request:pkg")
    assert server.request("GET", "/api/v3/engine/pkg").json() == {"value": 42}
    r = post(install, {"packages": [f"appliance-test-pkg @ {wheel.as_uri()}"]})
    assert r.status == 200, r.text
    # What pip-compile --generate-hashes writes: a continued line with --hash options, comments.
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (plugins / "requirements.txt").write_text(
        f"--prefer-binary\n{wheel.name} \\\n    --hash=sha256:{digest}\n    # via plugins\n"
    )
    requirements = "/api/v3/configure/plugin_environment/install_requirements"
    r = post(requirements, {"requirements_location": "requirements.txt"})
    assert r.status == 200, r.text
    (plugins / "requirements.txt").write_text(f"{wheel.name} --hash=sha256:{'0' * 64}\n")
    r = post(requirements, {"requirements_location": "requirements.txt"})
    assert r.status == 400 and "pip failed" in r.text and "HASHES" in r.text, r.text
    r = post(install, {"packages": [f"appliance-test-pkg @ {(plugins / 'missing.whl').as_uri()}"]})
    assert r.status == 400 and "pip failed" in r.text
    assert server.request("GET", "/api/v3/engine/pkg").json() == {"value": 42}


def test_package_manager_disabled_refuses(tmp_path: Path) -> None:
    s = Server(tmp_path / "d", env={"APPLIANCE_ENGINE_PACKAGE_MANAGER": "disabled"}).start()
    r = s.request(
        "POST",
        "/api/v3/configure/plugin_environment/install_packages",
        body=json.dumps({"packages": ["x"]}),
        headers=JSON,
    )
    assert r.status == 403 and "Package installation has been disabled" in r.text
    s.stop()


def test_dry_run_endpoints_report_without_writing(server: Server) -> None:
    server.write("db", "m,host=a v=1 1", precision="ns")
    name = plugin(
        server,
        "dry.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            for b in table_batches:
                influxdb3_local.info("got", b["table_name"], len(b["rows"]), args)
                influxdb3_local.write(LineBuilder("out").float64_field("n", len(b["rows"])))
            influxdb3_local.write(LineBuilder("m").string_field("v", "wrong type"))
            influxdb3_local.info("seen", influxdb3_local.query("SELECT count(*) AS c FROM m")[0]["c"])
        def process_scheduled_call(influxdb3_local, call_time, args):
            influxdb3_local.info("at", call_time.isoformat())
    """,
    )
    body = {
        "filename": name,
        "database": "db",
        "input_lp": "cpu,h=x u=1 1\ncpu,h=y u=2 2",
        "input_arguments": {"k": "v"},
    }
    r = server.request("POST", "/api/v3/plugin_test/wal", body=json.dumps(body), headers=JSON)
    doc = r.json()
    assert r.status == 200
    assert "INFO: got cpu 2 {'k': 'v'}" in doc["log_lines"] and "INFO: seen 1" in doc["log_lines"]
    assert doc["database_writes"]["db"][0].startswith("out n=2")
    assert any("expected iox::column_type::field::float" in e for e in doc["errors"])
    assert (
        server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT * FROM out"}).status == 400
    )  # nothing written
    r = server.request(
        "POST",
        "/api/v3/plugin_test/schedule",
        body=json.dumps({"filename": name, "database": "db", "schedule": "0 0 * * * *"}),
        headers=JSON,
    )
    doc = r.json()
    assert doc["trigger_time"].endswith(":00:00Z") and doc["errors"] == []
    r = server.request(
        "POST",
        "/api/v3/plugin_test/schedule",
        body=json.dumps({"filename": name, "database": "nope"}),
        headers=JSON,
    )
    assert r.json()["errors"] == ["couldn't find db"]


def test_retry_then_log_and_slow_trigger_drops_oldest(tmp_path: Path) -> None:
    s = Server(
        tmp_path / "d",
        env={
            "APPLIANCE_ENGINE_QUEUE_SIZE": "2",
            "APPLIANCE_ENGINE_MAX_RETRIES": "2",
            "APPLIANCE_ENGINE_CALL_TIMEOUT": "1s",
        },
    ).start()
    s.write("db", "m v=0 1", precision="ns")
    flaky = plugin(
        s,
        "flaky.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            n = influxdb3_local.cache.get("n", 0) + 1
            influxdb3_local.cache.put("n", n)
            if n < 3:
                raise RuntimeError(f"attempt {n} fails")
            influxdb3_local.info("succeeded on attempt", n)
    """,
    )
    slow = plugin(
        s,
        "slow.py",
        """
        import time
        def process_writes(influxdb3_local, table_batches, args):
            time.sleep(1.5)
    """,
    )
    assert create(s, "db", "flaky", flaky, "table:m", error_behavior="retry").status == 200
    assert create(s, "db", "slow", slow, "table:m").status == 200
    for i in range(6):
        assert (
            s.write("db", f"m v={i} {10 + i}", precision="ns").status == 204
        )  # writes never wait for plugins
    texts = wait_for(
        lambda: (
            [r["log_text"] for r in logs(s, "db") if "succeeded on attempt 3" == r["log_text"]]
            and [r["log_text"] for r in logs(s, "db")]
        )
    )
    assert sum(t.startswith("retrying in") for t in texts) == 2
    wait_for(lambda: any("trigger is behind: dropped" in r["log_text"] for r in logs(s, "db")))
    wait_for(lambda: any("still running after engine.call_timeout" in r["log_text"] for r in logs(s, "db")))
    s.stop()


def test_cli_manages_triggers(server: Server) -> None:
    import os
    import subprocess
    import sys

    server.write("db", "m v=0 1", precision="ns")
    name = plugin(server, "cli.py", "def process_request(a, q, h, b, args):\n    return args\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | {
        "APPLIANCE_HOST": server.url
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = cli(
        "create",
        "trigger",
        "web",
        "-d",
        "db",
        "--path",
        name,
        "--trigger-spec",
        "request:web",
        "--trigger-arguments",
        "a=1,b=x=y",
    )
    assert r.returncode == 0, r.stderr
    assert server.request("GET", "/api/v3/engine/web").json() == {"a": "1", "b": "x=y"}
    assert "web" in cli("show", "triggers", "-d", "db").stdout
    assert name in cli("show", "plugins", "-d", "db").stdout
    assert server.request("GET", "/health").json()["components"]["engine"]["triggers_running"] == 1
    assert cli("disable", "trigger", "web", "-d", "db").returncode == 0
    assert server.request("GET", "/api/v3/engine/web").status == 404
    assert cli("enable", "trigger", "web", "-d", "db").returncode == 0
    assert server.request("GET", "/api/v3/engine/web").status == 200
    r = cli("delete", "trigger", "web", "-d", "db")
    assert r.returncode == 1 and "--force" in r.stderr
    assert cli("delete", "trigger", "web", "-d", "db", "--force").returncode == 0
    lp = "cpu u=1 1"
    wal = plugin(
        server,
        "walcli.py",
        "def process_writes(influxdb3_local, table_batches, args):\n    influxdb3_local.info('rows', len(table_batches[0]['rows']))\n",
    )
    r = cli("test", "wal_plugin", wal, "-d", "db", "--lp", lp)
    assert r.returncode == 0 and "INFO: rows 1" in r.stdout


def test_gh_plugins_download_once_and_start_offline(tmp_path: Path) -> None:
    import http.server
    import threading

    repo = tmp_path / "repo" / "examples"
    repo.mkdir(parents=True)
    (repo / "hello.py").write_text(
        "def process_request(a, q, h, b, args):\n    return 'from the repository'\n"
    )
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "repo"))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    s = Server(tmp_path / "d", env={"APPLIANCE_ENGINE_PLUGIN_REPO": url}).start()
    try:
        s.write("db", "m v=0 1", precision="ns")
        assert create(s, "db", "gh", "gh:examples/hello.py", "request:hello").status == 200
        r = create(s, "db", "gh2", "gh:examples/missing.py", "request:missing")
        assert r.status == 400 and "error fetching plugin from repository: 404" in r.text
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert s.request("GET", "/api/v3/engine/hello").text == "from the repository"
    r = create(s, "db", "gh3", "gh:examples/other.py", "request:other")
    assert r.status == 400 and "unreachable" in r.text
    s.stop()
    s.start()  # the repository is gone: the cached copy starts the trigger
    assert s.request("GET", "/api/v3/engine/hello").text == "from the repository"
    s.stop()


def test_schedule_does_not_multiply_after_disable_enable(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(
        server,
        "count.py",
        """
        import time
        def process_scheduled_call(influxdb3_local, call_time, args):
            influxdb3_local.write(LineBuilder("calls").int64_field("at", time.time_ns()))
    """,
    )
    assert create(server, "db", "count", name, "every:1s", run_async=True).status == 200
    for verb in ("disable", "enable") * 3:
        q = {"db": "db", "trigger_name": "count"}
        assert server.request("POST", f"/api/v3/configure/processing_engine_trigger/{verb}", q).status == 200
    wait_for(lambda: _has(server, "db", "calls", 1))

    def three_seconds_of_calls() -> dict[str, int] | None:
        calls = server.query("db", "SELECT min(at) AS a, max(at) AS b, count(*) AS n FROM calls")[0]
        return calls if calls["n"] and calls["b"] - calls["a"] >= 3 * 10**9 else None

    n = wait_for(three_seconds_of_calls, what="calls spanning 3 s")["n"]
    assert n <= 5, f"{n} calls in about 3 s: the schedule ran more than once per tick"


@pytest.mark.slow  # ~20 s: shutdown waits out the 10 s request grace
def test_a_looping_plugin_does_not_hold_up_shutdown(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(
        server,
        "forever.py",
        """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            influxdb3_local.info("looping")
            while True:
                pass
    """,
    )
    assert create(server, "db", "forever", name, "request:forever").status == 200
    import threading

    def call() -> None:
        try:
            server.request("GET", "/api/v3/engine/forever", timeout=30)
        except OSError:
            pass  # the server went away while the plugin was still looping: expected

    threading.Thread(target=call, daemon=True).start()
    wait_for(lambda: "looping" in [r["log_text"] for r in logs(server, "db")], what="the plugin to loop")
    started = time.monotonic()
    assert server.stop(timeout=30) == 0
    assert time.monotonic() - started < 45  # the 10 s request grace, slowed by the looping thread's GIL use


def test_api_calls_cache_cap_and_write_to_other_databases(tmp_path: Path) -> None:
    s = Server(tmp_path / "d", env={"APPLIANCE_ENGINE_CACHE_MAX_BYTES": "4KiB"}).start()
    s.write("db", "m v=0 1", precision="ns")
    s.write("other", "x v=0 1", precision="ns")
    name = plugin(
        s,
        "api.py",
        """
        import collections
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            cache = influxdb3_local.cache
            cache.put("big", "x" * 10_000)  # over the 4 KiB cap: evicts the rest, never raises
            seen = cache.get("seen") or collections.deque(maxlen=3)
            seen.append(query_parameters.get("n"))
            cache.put("seen", seen)  # stored by reference; evicts "big", the least recently used
            cache.put("shared", "global value", use_global=True)
            influxdb3_local.write_to_db("other", LineBuilder("x").float64_field("v", 1.0).time_ns(2))
            influxdb3_local.write_sync_to_db("other", LineBuilder("x").float64_field("v", 2.0).time_ns(3), False)
            influxdb3_local.write_sync(LineBuilder("m").float64_field("v", 3.0).time_ns(4), no_sync=True)
            rows = influxdb3_local.query("SELECT v FROM m WHERE v > $min ORDER BY v", {"min": 0.5})
            return {"seen": list(seen), "rows": rows, "global": cache.get("shared", use_global=True)}
    """,
    )
    reader = plugin(
        s,
        "reader.py",
        """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            return {"global": influxdb3_local.cache.get("shared", use_global=True), "local": influxdb3_local.cache.get("seen")}
    """,
    )
    assert create(s, "db", "api", name, "request:api").status == 200
    assert create(s, "db", "reader", reader, "request:reader").status == 200
    first = s.request("GET", "/api/v3/engine/api", {"n": "1"}).json()
    assert first["rows"] == [{"v": 3.0}] and first["global"] == "global value" and first["seen"] == ["1"]
    assert s.request("GET", "/api/v3/engine/reader").json() == {"global": "global value", "local": None}
    assert s.query("other", "SELECT v FROM x ORDER BY time") == [{"v": 0.0}, {"v": 1.0}, {"v": 2.0}]
    cache = s.request("GET", "/health").json()["components"]["engine"]["cache"]
    assert cache["evictions"] >= 1 and cache["bytes"] <= cache["max_bytes"] + 11_000
    s.stop()


def test_replay_at_startup_does_not_feed_plugins(server: Server) -> None:
    server.write("db", "m v=0 1", precision="ns")
    name = plugin(
        server,
        "count_calls.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.info("called with", sum(len(b["rows"]) for b in table_batches))
    """,
    )
    assert create(server, "db", "count", name, "table:m").status == 200
    server.write("db", "m v=1 2", precision="ns")
    wait_for(lambda: any(r["log_text"] == "called with 1" for r in logs(server, "db")))
    wait_for(lambda: "called with 1" in stored_log_texts(server), what="the log line in LMDB")
    server.kill()  # the write is only in the WAL: the restart replays it
    server.start()
    assert server.query("db", "SELECT count(*) AS n FROM m") == [{"n": 2}]
    # A sentinel write after the restart: the trigger sees it after anything a replay would have fed.
    server.write("db", "m v=3 3\nm v=4 4", precision="ns")
    wait_for(lambda: any(r["log_text"] == "called with 2" for r in logs(server, "db")), what="the sentinel")
    calls = [r for r in logs(server, "db") if r["log_text"].startswith("called with 1")]
    assert len(calls) == 1
