"""Hostile input to the processing engine: names that collide, plugins that change their args, admin extras."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from tests.e2e.test_engine import create, plugin
from tests.server import Server, wait_for

JSON = {"Content-Type": "application/json"}
TRIGGER = "/api/v3/configure/processing_engine_trigger"


def _post(server: Server, path: str, body: Any) -> Any:
    return server.request("POST", path, body=json.dumps(body), headers=JSON)


def _make_db(server: Server, name: str) -> None:
    r = _post(server, "/api/v3/configure/database", {"db": name})
    assert r.status == 200, r.text


COUNTER = """
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    n = influxdb3_local.cache.get("n", 0) + 1
    influxdb3_local.cache.put("n", n)
    return {"who": args["who"], "calls": n}
"""


def test_triggers_whose_db_name_pairs_would_join_alike_stay_apart(server: Server) -> None:
    """Database `x/y` + trigger `z` and database `x` + trigger `y/z` are two triggers, with two caches."""
    _make_db(server, "x/y")
    _make_db(server, "x")
    name = plugin(server, "counter.py", COUNTER)
    assert create(server, "x/y", "z", name, "request:one", arguments={"who": "x/y z"}).status == 200
    assert create(server, "x", "y/z", name, "request:two", arguments={"who": "x y/z"}).status == 200
    assert server.request("GET", "/api/v3/engine/one").json() == {"who": "x/y z", "calls": 1}
    assert server.request("GET", "/api/v3/engine/two").json() == {"who": "x y/z", "calls": 1}
    for db, trigger in (("x/y", "z"), ("x", "y/z")):
        rows = server.query(db, "SELECT trigger_name FROM system.processing_engine_triggers")
        assert rows == [{"trigger_name": trigger}]

    server.stop()
    server.start()
    assert server.request("GET", "/api/v3/engine/one").json()["who"] == "x/y z"
    assert server.request("GET", "/api/v3/engine/two").json()["who"] == "x y/z"

    r = server.request("DELETE", TRIGGER, {"db": "x", "trigger_name": "y/z", "force": "true"})
    assert r.status == 200, r.text
    assert server.request("GET", "/api/v3/engine/two").status == 404
    assert server.request("GET", "/api/v3/engine/one").json()["who"] == "x/y z"
    server.stop()
    server.start()
    assert server.request("GET", "/api/v3/engine/two").status == 404
    assert server.query("x/y", "SELECT trigger_name FROM system.processing_engine_triggers") == [
        {"trigger_name": "z"}
    ]


def test_a_second_trigger_on_a_taken_request_path_is_refused(server: Server) -> None:
    _make_db(server, "a")
    _make_db(server, "b")
    name = plugin(server, "counter.py", COUNTER)
    assert create(server, "a", "t", name, "request:hook", arguments={"who": "a"}).status == 200
    r = create(server, "b", "t", name, "request:hook", arguments={"who": "b"})
    assert r.status == 409 and "already served by trigger 't' in database 'a'" in r.text
    assert server.request("GET", "/api/v3/engine/hook").json()["who"] == "a"


def test_triggers_stored_by_older_versions_still_load(tmp_path: Path) -> None:
    """Definitions older versions stored load and list, and none of them stops the server or new triggers.

    Under the old `db/name` key: one whose args got a bool, an int key and bytes from a plugin
    (msgpack refuses int map keys by default), one with a spec that no longer parses, and bytes
    that are no definition at all (skipped with a log line, left in place).
    """
    s = Server(tmp_path / "d").start()
    _make_db(s, "db")
    name = plugin(s, "counter.py", COUNTER)
    assert create(s, "db", "old", name, "request:old", arguments={"who": "old"}).status == 200
    s.stop()
    env = lmdb.open(str(s.data_dir / "lmdb"), max_dbs=20)
    triggers = env.open_db(b"triggers")
    garbage = b"\xc1 not a definition"
    with env.begin(write=True, db=triggers) as txn:
        ((key, value),) = list(txn.cursor())
        record = msgpack.unpackb(value)
        record["arguments"]["use_config_file"] = True  # what the downsampler did to older versions
        record["arguments"][7] = b"seven"
        txn.delete(key)
        txn.put(b"db/old", msgpack.packb(record))
        broken = {**record, "name": "broken", "spec": "request:bad path?x", "arguments": None}
        txn.put(b"db/broken", msgpack.packb(broken))
        txn.put(b"db/garbage", garbage)
    env.close()
    s.start()
    assert s.request("GET", "/api/v3/engine/old").json() == {"who": "old", "calls": 1}
    assert "skipped stored trigger definition b'db/garbage'" in s.log()
    args = s.query(
        "db", "SELECT argument_key, argument_value FROM system.processing_engine_trigger_arguments"
    )
    assert sorted(args, key=lambda r: r["argument_key"]) == [
        {"argument_key": "7", "argument_value": "seven"},
        {"argument_key": "use_config_file", "argument_value": "True"},
        {"argument_key": "who", "argument_value": "old"},
    ]
    specs = s.query(
        "db",
        "SELECT trigger_name, trigger_specification FROM system.processing_engine_triggers"
        " ORDER BY trigger_name",
    )
    assert specs[0] == {"trigger_name": "broken", "trigger_specification": "request:bad path?x"}
    # The definition that no longer parses holds no path: new request triggers can still be created.
    assert create(s, "db", "new", name, "request:new", arguments={"who": "new"}).status == 200
    assert s.request("GET", "/api/v3/engine/new").json() == {"who": "new", "calls": 1}
    r = create(s, "db", "again", name, "request:old", arguments={"who": "x"})
    assert r.status == 409 and "already served by trigger 'old'" in r.text
    for trigger in ("old", "broken"):
        r = s.request("DELETE", TRIGGER, {"db": "db", "trigger_name": trigger, "force": "true"})
        assert r.status == 200, r.text
    # A deleted trigger's path is free again.
    assert create(s, "db", "again", name, "request:old", arguments={"who": "again"}).status == 200
    s.stop()
    s.start()
    assert s.query(
        "db", "SELECT trigger_name FROM system.processing_engine_triggers ORDER BY trigger_name"
    ) == [{"trigger_name": "again"}, {"trigger_name": "new"}]
    assert s.request("GET", "/api/v3/engine/old").json() == {"who": "again", "calls": 1}
    s.stop()
    env = lmdb.open(str(s.data_dir / "lmdb"), max_dbs=20)
    with env.begin(db=env.open_db(b"triggers")) as txn:
        assert txn.get(b"db/garbage") == garbage  # left for inspection
    env.close()


MUTATOR = """
def _mutate(influxdb3_local, kind, args):
    influxdb3_local.info(kind, "saw", sorted(args.items()))
    args["use_config_file"] = True        # what influxdata/downsampler does
    del args["keep"]
    args.clear()
    args.update({"replaced": b"bytes", 1: None})

def process_writes(influxdb3_local, table_batches, args=None):
    _mutate(influxdb3_local, "wal", args)

def process_scheduled_call(influxdb3_local, call_time, args=None):
    _mutate(influxdb3_local, "schedule", args)

def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    seen = sorted(args.items())
    _mutate(influxdb3_local, "request", args)
    return {"saw": seen}
"""


def test_a_plugin_that_changes_its_args_changes_nothing_stored(server: Server) -> None:
    from tests.e2e.test_cli import cli

    server.write("db", "m v=1 1", precision="ns")
    name = plugin(server, "mutator.py", MUTATOR)
    args = {"keep": "1", "window": "5m"}
    original = "[('keep', '1'), ('window', '5m')]"
    assert create(server, "db", "req", name, "request:mut", arguments=args).status == 200
    assert create(server, "db", "wal", name, "table:m", arguments=args).status == 200
    assert create(server, "db", "tick", name, "every:1s", arguments=args).status == 200
    for _ in range(2):
        r = server.request("GET", "/api/v3/engine/mut")
        assert r.status == 200 and r.json() == {"saw": [["keep", "1"], ["window", "5m"]]}
    assert server.write("db", "m v=2 2", precision="ns").status == 204
    assert server.write("db", "m v=3 3", precision="ns").status == 204

    def saw(kind: str) -> list[str]:
        rows = server.query("db", "SELECT log_text FROM system.processing_engine_logs")
        return [r["log_text"] for r in rows if r["log_text"].startswith(f"{kind} saw")]

    def two_calls(kind: str) -> list[str]:
        texts = saw(kind)
        return texts if len(texts) >= 2 else []

    for kind in ("wal", "schedule"):
        texts = wait_for(functools.partial(two_calls, kind), what=f"two {kind} calls")
        assert set(texts) == {f"{kind} saw {original}"}
    stored = server.query(
        "db",
        "SELECT trigger_name, argument_key, argument_value FROM system.processing_engine_trigger_arguments"
        " ORDER BY trigger_name, argument_key",
    )
    assert stored == [
        {"trigger_name": t, "argument_key": k, "argument_value": v}
        for t in ("req", "tick", "wal")
        for k, v in sorted(args.items())
    ]
    assert server.query("db", "SELECT count(*) AS n FROM m") == [{"n": 3}]
    shown = cli(server, "show", "triggers", "-d", "db")
    assert shown.returncode == 0 and "tick" in shown.stdout, shown.stderr
    # A disable stores the definition again: what is stored is still the original.
    r = server.request("POST", f"{TRIGGER}/disable", {"db": "db", "trigger_name": "req"})
    assert r.status == 200
    server.stop()
    server.start()
    assert server.query(
        "db",
        "SELECT argument_key, argument_value FROM system.processing_engine_trigger_arguments"
        " WHERE trigger_name = 'req' ORDER BY argument_key",
    ) == [{"argument_key": k, "argument_value": v} for k, v in sorted(args.items())]

    body = {"filename": name, "database": "db", "input_lp": "m v=1 1", "input_arguments": args}
    for _ in range(2):
        doc = _post(server, "/api/v3/plugin_test/wal", body).json()
        assert f"INFO: wal saw {original}" in doc["log_lines"], doc


def test_install_packages_refuses_options_and_echoes_no_file(server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:TOPSECRET-7731:19000:0:99999:7:::\n")
    install = "/api/v3/configure/plugin_environment/install_packages"
    for packages in (
        ["-r", str(secret)],
        ["--requirement", str(secret)],
        [f"--requirement={secret}"],
        ["-c", str(secret)],
        [str(secret)],
        [f"x @ {secret.as_uri()}"],
        ["x @ ftp://host/x.whl"],
        [f"git+file://{secret.parent}"],
        ["git+https://host/r.git@--upload-pack=touch"],
        ["x @ https://host/${APPLIANCE_TOKEN}.whl"],
        [secret.with_suffix(".whl").as_uri()],
        ["requests\u0000"],
        ["a" * 2000],
        [""],
        [f"pkg{i}" for i in range(101)],
    ):
        r = _post(server, install, {"packages": packages})
        assert r.status == 400, (packages, r.text)
        assert "TOPSECRET" not in r.text and "Traceback" not in r.text
        assert len(r.body) < 1000
    assert "pip options are not accepted" in _post(server, install, {"packages": ["-r", str(secret)]}).text

    plugins = server.data_dir / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    # pip fails on a wheel that is not there: the client gets one line, not pip's whole output.
    r = _post(server, install, {"packages": [f"x @ {(plugins / 'x-1.0-py3-none-any.whl').as_uri()}"]})
    assert r.status == 400 and r.text.count("\n") == 0 and "pip failed installing x @ file:" in r.text, r.text

    requirements = "/api/v3/configure/plugin_environment/install_requirements"
    for location in (
        str(secret),
        "../secret.txt",
        f"../../{secret.name}",
        "/etc/shadow",
        "bad\u0000name",
        "x" * 5000,
    ):
        r = _post(server, requirements, {"requirements_location": location})
        assert r.status == 400, (location, r.text)
        assert "TOPSECRET" not in r.text
    r = _post(server, requirements, {"requirements_location": str(secret)})
    assert "outside the plugin directory" in r.text
    (plugins / "link.txt").symlink_to(secret)
    r = _post(server, requirements, {"requirements_location": "link.txt"})
    assert r.status == 400 and "outside the plugin directory" in r.text and "TOPSECRET" not in r.text
    (plugins / "requirements.txt").write_text(f"# plugins\nrequests>=2\n-r {secret}\n")
    r = _post(server, requirements, {"requirements_location": "requirements.txt"})
    assert r.status == 400 and "line 3" in r.text and "pip options are not accepted" in r.text, r.text
    assert "TOPSECRET" not in r.text
    # Any file of the plugin directory can be named: an error gives its line number and reason, never the line.
    (plugins / "secrets.toml").write_text('token = "TOPSECRET-7731"\n')
    r = _post(server, requirements, {"requirements_location": "secrets.toml"})
    assert r.status == 400 and "'secrets.toml', line 1: not a package requirement" in r.text, r.text
    assert "TOPSECRET" not in r.text
    (plugins / "secrets.toml").write_text("requests\n--index-url TOPSECRET-7731\n")
    r = _post(server, requirements, {"requirements_location": "secrets.toml"})
    assert r.status == 400 and "line 2" in r.text and "TOPSECRET" not in r.text, r.text
    r = _post(server, requirements, {"requirements_location": "missing.txt"})
    assert r.status == 404 and "not found in the plugin directory" in r.text
    assert server.request("GET", "/health").status == 200


def test_bad_plugin_filenames_trigger_names_and_arguments_get_400(server: Server) -> None:
    server.write("db", "m v=1 1", precision="ns")
    name = plugin(server, "ok.py", COUNTER)
    bad_files = {
        "bad\u0000name.py": "control character U+0000",
        "esc\u001b[2J.py": "control character U+001B",
        "x" * 5000 + ".py": "at most 1024 are allowed",
        "d/" + "x" * 300 + ".py": "longer than 255 bytes",
        "../outside.py": "Path traversal detected",
        "/etc/passwd": "Path traversal detected",
        "gh:ok\u0000.py": "control character U+0000",
        "gh:../../etc/passwd": "Path traversal detected",
        "gh:" + "y" * 5000: "at most 1024 are allowed",
        "": "missing or invalid 'plugin_filename'",
    }
    for filename, message in bad_files.items():
        r = create(server, "db", "t", filename, "request:t")
        assert r.status == 400 and message in r.text, (filename[:20], r.status, r.text[:300])
        for kind in ("wal", "schedule"):
            body = {"filename": filename, "database": "db", "input_lp": "m v=1 1"}
            r = _post(server, f"/api/v3/plugin_test/{kind}", body)
            # A name no file can have is a 400; a traversal is reported like any failed dry run.
            refused = r.status == 400 or (
                r.status == 200 and any("traversal" in e for e in r.json()["errors"])
            )
            assert refused and "Traceback" not in r.text, (kind, filename[:20], r.status, r.text[:300])
    bad_triggers: list[tuple[str, Any, str]] = [
        ("tab\tname", None, "invalid trigger name 'tab\\tname'"),
        ("nul\u0000", None, "U+0000"),
        ("zero\u200bwidth", None, "U+200B"),
        ("n" * 256, None, "at most 255 are allowed"),
        ("t", {"k": "v\u0000"}, "value of trigger argument 'k': it contains the control character U+0000"),
        ("t", {"k\n": "v"}, "invalid trigger argument name 'k\\n'"),
        ("t", {"k": "v" * 70_000}, "at most 65536 are allowed"),
        ("t", {f"k{i}": "v" for i in range(300)}, "too many trigger arguments"),
    ]
    for trigger, arguments, message in bad_triggers:
        r = create(server, "db", trigger, name, "request:t", arguments=arguments)
        assert r.status == 400 and message in r.json()["error"], (trigger[:20], r.status, r.text[:300])
    for spec in ("table:m\u0000", "request:a\u0001b", "every:" + "1s " * 3000):
        r = create(server, "db", "t", name, spec)
        assert r.status == 400 and "failed to parse trigger" in r.text and len(r.body) < 1000, r.text[:300]
    r = _post(
        server,
        "/api/v3/plugin_test/wal",
        {"filename": name, "database": "db", "input_lp": "m v=1", "input_arguments": {"k": "\u0007"}},
    )
    assert r.status == 400 and "U+0007" in r.text
    assert server.query("db", "SELECT count(*) AS n FROM system.processing_engine_triggers") == [{"n": 0}]
    # Names that are merely unusual are fine, and so are plugin files named with NBSP, an
    # ideographic space or a ZWJ emoji sequence, and multi-line argument values (SQL, JSON, PEM).
    assert (
        create(server, "db", "ünïcode name/with slash", name, "request:u", arguments={"k": "a b"}).status
        == 200
    )
    pem = "-----BEGIN CERTIFICATE-----\r\nMIIB\n-----END CERTIFICATE-----\n"
    values = {"sql": "SELECT *\n\tFROM m\n\tWHERE v > 1", "json": '{\n  "a": 1\n}', "pem": pem}
    echo = "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):\n    return args\n"
    for i, filename in enumerate(
        ("my\u00a0plugin.py", "日本\u3000語.py", "\U0001f468\u200d\U0001f469\u200d\U0001f467.py")
    ):
        plugin(server, filename, echo)
        r = create(server, "db", f"echo{i}", filename, f"request:echo{i}", arguments=values)
        assert r.status == 200, (filename, r.text)
        assert server.request("GET", f"/api/v3/engine/echo{i}").json() == values
    files = server.query("db", "SELECT file_name FROM system.plugin_files WHERE file_name <> 'ok.py'")
    assert sorted(f["file_name"] for f in files) == sorted(
        ["my\u00a0plugin.py", "日本\u3000語.py", "\U0001f468\u200d\U0001f469\u200d\U0001f467.py"]
    )
    assert server.request("GET", "/health").status == 200


def test_gh_plugins_with_names_near_the_file_system_limit_download(tmp_path: Path) -> None:
    """A gh: name whose parts pass the 255-byte check is stored (the temp file once made it a 500)."""
    import http.server
    import threading

    long_name = "d/" + "p" * 252 + ".py"  # the last part is 255 bytes: + ".tmp" would not fit
    repo = tmp_path / "repo"
    (repo / "d").mkdir(parents=True)
    (repo / long_name).write_text(COUNTER)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(repo))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    s = Server(tmp_path / "d", env={"APPLIANCE_ENGINE_PLUGIN_REPO": url}).start()
    try:
        _make_db(s, "db")
        r = create(s, "db", "long", "gh:" + long_name, "request:long", arguments={"who": "gh"})
        assert r.status == 200, r.text
        assert s.request("GET", "/api/v3/engine/long").json() == {"who": "gh", "calls": 1}
        cached = s.data_dir / "plugins" / ".gh" / "d"
        assert [p.name for p in cached.iterdir()] == ["p" * 252 + ".py"]
        (s.data_dir / "plugins" / ".gh").rename(s.data_dir / "plugins" / "gh-moved")
        (s.data_dir / "plugins" / ".gh").write_text("not a folder")
        r = create(s, "db", "blocked", "gh:" + long_name, "request:blocked")
        assert r.status == 400 and "cannot store plugin" in r.text and "Traceback" not in r.text, r.text
        assert s.request("GET", "/health").status == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
        s.stop()
