"""Command line: `appliance serve` and client commands mirroring `influxdb3`; parsing only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .. import __version__, config
from ..engine.packages import run_pip
from ..errors import ApplianceError

DEFAULT_HOST = "http://127.0.0.1:8181"

#: serve flags: flag name -> setting (the flag's value overrides the setting).
SERVE_FLAGS: dict[str, str] = {
    "--node-id": "server.node_id",
    "--data-dir": "server.data_dir",
    "--plugin-dir": "engine.plugin_dir",
    "--log-filter": "server.log_filter",
    "--log-format": "server.log_format",
    "--http-bind": "http.bind",
    "--max-http-request-size": "http.max_request_size",
    "--wal-flush-interval": "wal.flush_interval",
    "--gen1-duration": "storage.gen1_duration",
    "--max-buffer-bytes": "storage.max_buffer_bytes",
    "--query-memory-limit": "query.memory_limit",
    "--query-timeout": "query.timeout",
    "--disable-authz": "auth.disable_authz",
    "--mqtt-broker": "mqtt.broker",
    "--mqtt-client-id": "mqtt.client_id",
    "--mqtt-username": "mqtt.username",
}


class CliError(Exception):
    """A problem to report as one line on stderr, with a non-zero exit."""


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["_pip"]:  # pip's own flags (--version, -q...) must not meet argparse
        return run_pip(args_in[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, ApplianceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # files named on the command line: missing, unreadable, unwritable
        print(f"error: {e.strerror}: {e.filename}" if e.filename else f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- parser --------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="appliance",
        description="Edge time-series database: InfluxDB 3 compatible writes, SQL queries, Parquet.",
    )
    p.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", help="run the server", description="Run the appliance server.")
    s.add_argument(
        "--config", help="config file (default /etc/appliance/config.toml when present; env APPLIANCE_CONFIG)"
    )
    for flag, name in SERVE_FLAGS.items():
        setting = next(x for x in config.SETTINGS if x.name == name)
        s.add_argument(
            flag,
            dest=name,
            metavar="VALUE",
            help=f"{setting.help} [{name}; env {setting.env}; default {setting.default!r}]",
        )
    s.add_argument("--without-auth", action="store_true", help="accept requests without a token")
    s.set_defaults(func=_serve)

    w = sub.add_parser(
        "write",
        aliases=["w"],
        help="write line protocol",
        description="Write line protocol from arguments, --file or stdin.",
    )
    _client_flags(w, database=True)
    w.add_argument("lines", nargs="*", help="line protocol (default: read --file or stdin)")
    w.add_argument("-f", "--file", help="read line protocol from this file")
    w.add_argument("-p", "--precision", help="timestamp precision: auto, s, ms, us, ns")
    w.add_argument(
        "--accept-partial",
        action="store_true",
        default=None,
        help="store the good lines when some are bad (the server's default)",
    )
    w.add_argument("--no-sync", action="store_true", help="acknowledge before the WAL commit")
    w.set_defaults(func=_write)

    q = sub.add_parser("query", aliases=["q"], help="run a SQL query", description="Run a SQL query.")
    _client_flags(q, database=True)
    q.add_argument("sql", nargs="?", help="the SQL statement (or use --file)")
    q.add_argument("-f", "--file", help="read the SQL from this file")
    q.add_argument("--format", default="pretty", choices=["pretty", "json", "jsonl", "csv", "parquet"])
    q.add_argument("-o", "--output", help="write the result to this file")
    q.set_defaults(func=_query)

    create = sub.add_parser("create", help="create a database or token").add_subparsers(metavar="WHAT")
    cd = create.add_parser("database", help="create a database")
    _client_flags(cd)
    cd.add_argument("name")
    cd.add_argument("--retention-period", help="e.g. 30d; data older than this is removed")
    cd.set_defaults(func=_create_database)
    tr = create.add_parser(
        "trigger",
        help="create a processing-engine trigger",
        description="Create a trigger that runs a plugin on writes, on a schedule or on HTTP requests.",
    )
    _client_flags(tr, database=True)
    tr.add_argument("name", help="trigger name, unique in its database")
    tr.add_argument(
        "--trigger-spec",
        required=True,
        help="table:NAME, all_tables, every:DURATION, cron:EXPR, request:PATH (or path:PATH)",
    )
    tr.add_argument(
        "--path",
        "--plugin-filename",
        dest="plugin",
        required=True,
        help="plugin file or package directory, relative to the plugin directory, or gh:PATH",
    )
    tr.add_argument("--trigger-arguments", help="arguments passed to the plugin as args: k=v,k2=v2")
    tr.add_argument("--disabled", action="store_true", help="create it disabled")
    tr.add_argument("--run-asynchronous", action="store_true", help="run events concurrently, unordered")
    tr.add_argument(
        "--error-behavior",
        default="log",
        choices=["log", "retry", "disable"],
        help="on a plugin error: log it, retry with backoff, or disable the trigger",
    )
    tr.add_argument(
        "--no-auth",
        action="store_true",
        help="request triggers: serve /api/v3/engine/PATH without a token (local webhooks)",
    )
    tr.set_defaults(func=_create_trigger)
    ct = create.add_parser("token", help="create or regenerate the admin token")
    _client_flags(ct)
    ct.add_argument("--admin", action="store_true", required=True, help="the operator admin token")
    ct.add_argument("--regenerate", action="store_true", help="replace the existing admin token")
    ct.set_defaults(func=_create_token)

    delete = sub.add_parser("delete", help="delete a database").add_subparsers(metavar="WHAT")
    dt = delete.add_parser("trigger", help="delete a trigger")
    _client_flags(dt, database=True)
    dt.add_argument("name")
    dt.add_argument("--force", action="store_true", help="delete it even while enabled")
    dt.set_defaults(func=_delete_trigger)
    for verb, disabled in (("enable", False), ("disable", True)):
        parser = sub.add_parser(verb, help=f"{verb} a trigger").add_subparsers(metavar="WHAT")
        p_tr = parser.add_parser("trigger", help=f"{verb} a trigger")
        _client_flags(p_tr, database=True)
        p_tr.add_argument("name")
        p_tr.set_defaults(func=_set_trigger_state, disabled=disabled)
    dd = delete.add_parser("database", help="delete a database and its data")
    _client_flags(dd)
    dd.add_argument("name")
    dd.set_defaults(func=_delete_database)

    show = sub.add_parser("show", help="list databases or tables").add_subparsers(metavar="WHAT")
    sd = show.add_parser("databases", help="list databases")
    _client_flags(sd)
    sd.set_defaults(func=_show_databases)
    st = show.add_parser("tables", help="list the tables of a database")
    _client_flags(st, database=True)
    st.set_defaults(func=_show_tables)

    sp = show.add_parser("plugins", help="list the plugin files on the server")
    _client_flags(sp, database=True)
    sp.set_defaults(func=_show_plugins)
    sw = show.add_parser("triggers", help="list the triggers of a database")
    _client_flags(sw, database=True)
    sw.set_defaults(func=_show_triggers)

    test = sub.add_parser("test", help="run a plugin once without side effects").add_subparsers(
        metavar="WHAT"
    )
    tw = _test_parser(test, "wal_plugin", "call process_writes with line protocol you give", _test_wal_plugin)
    tw.add_argument("--lp", help="line protocol to feed the plugin")
    tw.add_argument("--file", help="read the line protocol from this local file")
    ts = _test_parser(test, "schedule_plugin", "call process_scheduled_call once", _test_schedule_plugin)
    ts.add_argument("--schedule", help="cron expression giving the call time (default: every second)")

    inst = sub.add_parser("install", help="install Python packages for plugins").add_subparsers(
        metavar="WHAT"
    )
    ip = inst.add_parser(
        "package",
        help="pip-install packages into the plugin environment",
        description="Install packages on the server, into <plugin-dir>/.packages.",
    )
    _client_flags(ip)
    ip.add_argument(
        "packages",
        nargs="*",
        help="package requirements, e.g. requests==2.32.3, requests[socks]>=2, git+https://host/repo.git@tag"
        " or a wheel in the server's plugin directory",
    )
    ip.add_argument(
        "-r",
        "--requirements",
        help="a requirements file in the server's plugin directory (its name relative to that directory)",
    )
    ip.set_defaults(func=_install_package)

    pe = sub.add_parser("persist", help="persist the in-memory buffer to Parquet now")
    _client_flags(pe)
    pe.set_defaults(func=_persist)

    sy = sub.add_parser(
        "sync",
        help="object store sync: status, or upload now",
        description="Show the S3 upload queue, or start an upload pass at once.",
    ).add_subparsers(metavar="WHAT")
    ss = sy.add_parser("status", help="queued files and bytes, oldest unsynced age, last success and error")
    _client_flags(ss)
    ss.set_defaults(func=_sync, now=False)
    sn = sy.add_parser("now", help="upload what is queued now and print the status after the pass")
    _client_flags(sn)
    sn.add_argument("--timeout", default="60s", help="longest to wait for the pass (default 60s)")
    sn.set_defaults(func=_sync, now=True)

    cfg = sub.add_parser("config", help="check a configuration").add_subparsers(metavar="WHAT")
    sample = cfg.add_parser("sample", help="print a config.toml with every setting at its default")
    sample.set_defaults(func=lambda a: print(config.sample(), end="") or 0)
    cc = cfg.add_parser("check", help="validate settings and print each with its source")
    cc.add_argument("--config", help="config file to check")
    cc.set_defaults(func=_config_check)
    return p


def _test_parser(test: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    """`test wal_plugin` and `test schedule_plugin`: the flags both take."""
    p: argparse.ArgumentParser = test.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}: real queries, writes reported, not committed.",
    )
    _client_flags(p, database=True)
    p.add_argument("filename", help="plugin file, relative to the server's plugin directory")
    p.add_argument("--input-arguments", help="args for the plugin: k=v,k2=v2")
    p.add_argument("--cache-name", help="cache namespace to use (default _shared_test)")
    p.set_defaults(func=func)
    return p


def _client_flags(p: argparse.ArgumentParser, database: bool = False) -> None:
    p.add_argument(
        "-H",
        "--host",
        default=os.environ.get("APPLIANCE_HOST", DEFAULT_HOST),
        help=f"server URL (env APPLIANCE_HOST; default {DEFAULT_HOST})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("APPLIANCE_TOKEN"),
        help="auth token (env APPLIANCE_TOKEN; default: the local admin-token file)",
    )
    if database:
        p.add_argument(
            "-d",
            "--database",
            default=os.environ.get("APPLIANCE_DATABASE"),
            help="database name (env APPLIANCE_DATABASE)",
        )


# -- serve ---------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    from ..lifecycle import serve

    overrides = {name: getattr(args, name) for name in SERVE_FLAGS.values()}
    if args.without_auth:
        overrides["auth.enabled"] = False
    return serve(config.load(args.config, overrides), lambda: config.load(args.config, overrides))


def _config_check(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if cfg.mqtt.broker:
        from ..mqtt.ingest import MqttIngest

        MqttIngest(cfg.mqtt)  # subscriptions, credentials and TLS files, as serve checks them
    width = max(len(s.name) for s in config.SETTINGS)
    for name, value, source in config.describe(cfg):
        print(f"{name:<{width}}  {value}  ({source})")
    return 0


# -- client commands -----------------------------------------------------------
class Client:
    """A small HTTP client for the appliance API (stdlib only, so the CLI starts fast)."""

    def __init__(self, host: str, token: str | None) -> None:
        self.host = host.rstrip("/")
        if token is not None:
            self.token: str | None = token
            self.token_source = "the token given with --token or APPLIANCE_TOKEN"
        else:
            self.token, self.token_source = _local_token()

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> bytes:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.host}{path}" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, data=body, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            text = _error_text(e.read())
            if e.code == 401:
                raise CliError(f"401 {text}\n{self._token_hint()}") from None
            raise CliError(f"{e.code} {text}") from None
        except urllib.error.URLError as e:
            raise CliError(
                f"cannot reach {self.host}: {e.reason}; is `appliance serve` running? (set --host or APPLIANCE_HOST)"
            ) from None

    def _token_hint(self) -> str:
        """What a 401 means here: which token was sent, or where the CLI looked for one."""
        fix = (
            "pass the admin token with --token TOKEN or set APPLIANCE_TOKEN (the server keeps it in"
            " <data-dir>/admin-token; for a server started with --data-dir DIR, set"
            " APPLIANCE_SERVER_DATA_DIR=DIR so the CLI finds DIR/admin-token)"
        )
        if self.token is None:
            return f"no token was sent: {self.token_source}; {fix}"
        return f"the server refused {self.token_source}; {fix}"

    def json(self, method: str, path: str, payload: dict[str, Any]) -> bytes:
        return self.request(method, path, body=json.dumps(payload).encode(), content_type="application/json")


def _error_text(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        lines = [str(doc.get("error") or doc.get("message") or text)]
        data = doc.get("data")
        for item in data if isinstance(data, list) else [data] if isinstance(data, dict) else []:
            lines.append(
                f"  line {item.get('line_number')}: {item.get('error_message')} ({item.get('original_line')!r})"
            )
        return "\n".join(lines)
    return text


def _local_token() -> tuple[str | None, str]:
    """The admin token of the local server's data dir when readable, and where it came from (or was sought)."""
    try:
        data_dir = config.load().server.data_dir
    except ApplianceError as e:
        return None, f"the CLI could not read the configuration to find the admin-token file ({e})"
    path = Path(data_dir).expanduser() / "admin-token"
    try:
        token = path.read_text().strip()
    except OSError as e:
        return None, f"the CLI looked for the admin token in {path} ({e.strerror or e})"
    if not token:
        return None, f"the admin-token file {path} is empty"
    return token, f"the admin token read from {path}"


def _client(args: argparse.Namespace) -> Client:
    return Client(args.host, args.token)


def _database(args: argparse.Namespace) -> str:
    if not args.database:
        raise CliError("no database given: pass -d NAME or set APPLIANCE_DATABASE")
    return str(args.database)


def _write(args: argparse.Namespace) -> int:
    if args.lines:
        body = "\n".join(args.lines).encode()
    elif args.file:
        body = Path(args.file).read_bytes()
    else:
        body = sys.stdin.buffer.read()
    params = {
        "db": _database(args),
        "precision": args.precision,
        "accept_partial": "true" if args.accept_partial else None,
        "no_sync": "true" if args.no_sync else None,
    }
    _client(args).request("POST", "/api/v3/write_lp", params, body, "text/plain")
    print("success", file=sys.stderr)
    return 0


def _query(args: argparse.Namespace) -> int:
    sql = Path(args.file).read_text() if args.file else args.sql
    if not sql:
        raise CliError("no query given: pass the SQL as an argument or with --file")
    out = _client(args).json(
        "POST", "/api/v3/query_sql", {"db": _database(args), "q": sql, "format": args.format}
    )
    if args.output:
        Path(args.output).write_bytes(out)
    elif args.format == "parquet":
        raise CliError("parquet output is binary: write it to a file with -o FILE")
    else:
        _print_body(out)
    return 0


def _print_body(out: bytes) -> None:
    text = out.decode()
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")


def _create_database(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"db": args.name}
    if args.retention_period:
        payload["retention_period"] = args.retention_period
    _client(args).json("POST", "/api/v3/configure/database", payload)
    print(f"Database {args.name!r} created")
    return 0


def _delete_database(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", "/api/v3/configure/database", {"db": args.name})
    print(f"Database {args.name!r} deleted")
    return 0


def _show_databases(args: argparse.Namespace) -> int:
    _print_body(_client(args).request("GET", "/api/v3/configure/database", {"format": "pretty"}))
    return 0


def _show_tables(args: argparse.Namespace) -> int:
    return _show_query(
        args,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )


def _show_query(args: argparse.Namespace, sql: str) -> int:
    """The `show ...` commands: one SQL query on the database, printed as a table."""
    _print_body(
        _client(args).json("POST", "/api/v3/query_sql", {"db": _database(args), "q": sql, "format": "pretty"})
    )
    return 0


def _create_trigger(args: argparse.Namespace) -> int:
    from ..engine.triggers import parse_trigger_arguments

    payload = {
        "db": _database(args),
        "trigger_name": args.name,
        "plugin_filename": args.plugin,
        "trigger_specification": args.trigger_spec,
        "trigger_settings": {"run_async": args.run_asynchronous, "error_behavior": args.error_behavior},
        "trigger_arguments": parse_trigger_arguments(args.trigger_arguments),
        "disabled": args.disabled,
        "no_auth": args.no_auth,
    }
    _client(args).json("POST", "/api/v3/configure/processing_engine_trigger", payload)
    print(f"Trigger {args.name!r} created")
    return 0


def _delete_trigger(args: argparse.Namespace) -> int:
    params = {"db": _database(args), "trigger_name": args.name, "force": "true" if args.force else None}
    _client(args).request("DELETE", "/api/v3/configure/processing_engine_trigger", params)
    print(f"Trigger {args.name!r} deleted")
    return 0


def _set_trigger_state(args: argparse.Namespace) -> int:
    verb = "disable" if args.disabled else "enable"
    params = {"db": _database(args), "trigger_name": args.name}
    _client(args).request("POST", f"/api/v3/configure/processing_engine_trigger/{verb}", params)
    print(f"Trigger {args.name!r} {verb}d")
    return 0


def _show_triggers(args: argparse.Namespace) -> int:
    return _show_query(args, "SELECT * FROM system.processing_engine_triggers ORDER BY trigger_name")


def _test_wal_plugin(args: argparse.Namespace) -> int:
    lp = Path(args.file).read_text() if args.file else args.lp
    if not lp:
        raise CliError("no line protocol given: pass --lp '...' or --file FILE")
    return _run_test(args, "wal", {"input_lp": lp})


def _test_schedule_plugin(args: argparse.Namespace) -> int:
    return _run_test(args, "schedule", {"schedule": args.schedule})


def _run_test(args: argparse.Namespace, kind: str, given: dict[str, Any]) -> int:
    """POST a dry run and print its report; exit 1 when the plugin reported errors."""
    from ..engine.triggers import parse_trigger_arguments

    payload = {
        "filename": args.filename,
        "database": _database(args),
        "input_arguments": parse_trigger_arguments(args.input_arguments),
        "cache_name": args.cache_name,
        **given,
    }
    result = json.loads(_client(args).json("POST", f"/api/v3/plugin_test/{kind}", payload))
    print(json.dumps(result, indent=2))
    return 1 if result.get("errors") else 0


def _install_package(args: argparse.Namespace) -> int:
    if args.requirements:
        payload: dict[str, Any] = {"requirements_location": args.requirements}
        _client(args).json("POST", "/api/v3/configure/plugin_environment/install_requirements", payload)
    elif args.packages:
        _client(args).json(
            "POST", "/api/v3/configure/plugin_environment/install_packages", {"packages": args.packages}
        )
    else:
        raise CliError("nothing to install: name packages or pass -r requirements.txt")
    print("installed")
    return 0


def _show_plugins(args: argparse.Namespace) -> int:
    return _show_query(
        args, "SELECT plugin_name, file_path, size_bytes FROM system.plugin_files ORDER BY file_path"
    )


def _create_token(args: argparse.Namespace) -> int:
    path = "/api/v3/configure/token/admin" + ("/regenerate" if args.regenerate else "")
    doc = json.loads(_client(args).request("POST", path))
    print(f"New admin token (shown once; the server also stored it in its admin-token file):\n{doc['token']}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.now:
        print("uploading queued files...", file=sys.stderr)
        doc = json.loads(client.request("POST", "/api/v3/sync", {"timeout": args.timeout}))
    else:
        doc = json.loads(client.request("GET", "/api/v3/sync"))
    if not doc.get("enabled"):
        print("sync is not configured (set sync.bucket in the config file)")
    rows: list[tuple[str, Any]] = []
    for key, value in doc.items():  # the disk budget is a nested object: disk.used_bytes...
        items = value.items() if isinstance(value, dict) else [("", value)]
        rows += [(f"{key}.{k}" if k else key, v) for k, v in items]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0 if doc.get("enabled") else 1


def _persist(args: argparse.Namespace) -> int:
    doc = json.loads(_client(args).request("POST", "/api/v3/persist"))
    print(f"persisted {doc['files']} file(s) in {doc['seconds']}s")
    return 0
