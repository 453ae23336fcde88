"""The only reader of config.toml and APPLIANCE_* variables: settings, defaults, help, validation.

Precedence, highest first: command-line flag, `APPLIANCE_<SECTION>_<KEY>` environment
variable, the config file, the default.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .log import parse_filter
from .units import parse_duration_ns, parse_size

DEFAULT_CONFIG_PATHS = (Path("/etc/appliance/config.toml"),)


def _path(v: Any) -> str:
    return str(Path(str(v)).expanduser())


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _positive_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError(f"must be a positive integer, got {v!r}")
    return n


def _bind(v: Any) -> str:
    host, sep, port = str(v).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    return str(v)


def _list(v: Any) -> tuple[str, ...]:
    """A TOML list of strings, or one string of comma-separated items (environment, flags)."""
    items = v if isinstance(v, list | tuple) else str(v).split(",")
    if not all(isinstance(x, str) for x in items):
        raise ValueError(f"expected a list of strings, got {v!r}")
    return tuple(x.strip() for x in items if x.strip())


def _origins(v: Any) -> tuple[str, ...]:
    origins = tuple(o.rstrip("/").lower() for o in _list(v))
    for o in origins:
        scheme, sep, host = o.partition("://")
        if o != "*" and (scheme not in ("http", "https") or not sep or not host or "/" in host):
            raise ValueError(f"expected origins like https://dash.example:3000 (or *), got {o!r}")
    return origins


def _hosts(v: Any) -> tuple[str, ...]:
    hosts = tuple(h.lower() for h in _list(v))
    for h in hosts:
        if not all(c.isalnum() or c in "-._" for c in h):  # IP addresses are always accepted
            raise ValueError(f"expected host names without a port, like gateway.lan, got {h!r}")
    return hosts


def _gen1(v: Any) -> int:
    ns = parse_duration_ns(v)
    if ns < 1_000_000_000:
        raise ValueError(f"must be at least 1s, got {v!r}")
    return ns


def _package_manager(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in ("pip", "disabled"):
        raise ValueError(f"expected pip or disabled, got {v!r}")
    return s


def _disable_authz(v: Any) -> tuple[str, ...]:
    items = tuple(sorted({x.strip().lower() for x in str(v).split(",") if x.strip()}))
    unknown = set(items) - {"health", "ping", "metrics"}
    if unknown:
        raise ValueError(f"unknown endpoint(s) {', '.join(sorted(unknown))}: use health, ping or metrics")
    return items


def _endpoint(v: Any) -> str:
    s = str(v).strip().rstrip("/")
    if s and not (s.startswith("http://") or s.startswith("https://")):
        raise ValueError(f"expected http://HOST:PORT or https://HOST, got {v!r}")
    if "@" in s:
        raise ValueError("put the credentials in the environment or sync.credentials_file, not in the URL")
    return s


def _prefix(v: Any) -> str:
    return str(v).strip().strip("/")


def _path_or_empty(v: Any) -> str:
    return _path(v) if str(v).strip() else ""


def _log_format(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in ("text", "json"):
        raise ValueError(f"expected text or json, got {v!r}")
    return s


def _log_filter(v: Any) -> str:
    s = str(v).strip()
    try:
        parse_filter(s)
    except ConfigError as e:
        raise ValueError(e.message) from None
    return s


#: Broker URL schemes: Mosquitto's and Telegraf's spellings; the value says whether TLS is on.
MQTT_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True, "tls": True}


def _broker(v: Any) -> str:
    s = str(v).strip()
    if not s:
        return ""
    scheme, sep, rest = s.partition("://")
    if "@" in rest:
        raise ValueError("put the credentials in mqtt.username and mqtt.password_file, not in the URL")
    host, _, port = rest.rstrip("/").rpartition(":") if ":" in rest else (rest.rstrip("/"), "", "")
    if not sep or scheme.lower() not in MQTT_SCHEMES or not host or (port and not port.isdigit()):
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT (also tcp://, ssl://), got {v!r}")
    if port and not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range")
    return s


def _seconds_between(low: int, high: int) -> Callable[[Any], int]:
    """A duration of whole seconds within [low, high] (MQTT carries them in 16 or 32 bits)."""

    def parse(v: Any) -> int:
        ns = parse_duration_ns(v)
        if not low <= ns // 1_000_000_000 <= high or ns % 1_000_000_000:
            raise ValueError(f"must be whole seconds between {low}s and {high}s, got {v!r}")
        return ns

    return parse


def _positive_duration(v: Any) -> int:
    ns = parse_duration_ns(v)
    if ns <= 0:
        raise ValueError(f"must be more than 0, got {v!r}")
    return ns


def _positive_size(v: Any) -> int:
    n = parse_size(v)
    if n <= 0:
        raise ValueError(f"must be more than 0, got {v!r}")
    return n


def _mqtt_protocol(v: Any) -> str:
    s = str(v).strip().lower().removeprefix("v")
    if s in ("3.1.1", "311", "3"):
        return "3.1.1"
    if s in ("5", "5.0"):
        return "5"
    raise ValueError(f"expected 3.1.1 or 5, got {v!r}")


@dataclass(frozen=True)
class Setting:
    """One setting: where it lives in config.toml, its default, how to parse it, and help."""

    section: str
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    attr: str = ""  # Config attribute when the key alone would be ambiguous
    secret: bool = False  # never printed or logged

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def field(self) -> str:
        return self.attr or self.key

    @property
    def env(self) -> str:
        return f"APPLIANCE_{self.section.upper()}_{self.key.upper()}"


SETTINGS: tuple[Setting, ...] = (
    Setting("server", "node_id", "", str, "Node id used in Parquet paths; empty means the host name."),
    Setting(
        "server",
        "data_dir",
        "~/.appliance",
        _path,
        "Directory for the LMDB WAL/catalog, Parquet files and the admin token.",
    ),
    Setting(
        "server",
        "log_filter",
        "info",
        _log_filter,
        "Log level, optionally per component: info or info,appliance.wal=debug.",
    ),
    Setting(
        "server",
        "log_format",
        "text",
        _log_format,
        "Log lines on stderr: text (LEVEL component: message; journald priorities under systemd) or json.",
    ),
    Setting("http", "bind", "127.0.0.1:8181", _bind, "Address and port the HTTP API listens on."),
    Setting(
        "http",
        "max_request_size",
        10 * 1024 * 1024,
        parse_size,
        "Largest request body accepted, after gzip decoding (413 above it).",
    ),
    Setting(
        "http",
        "max_buffered_bytes",
        "64MiB",
        _positive_size,
        "Request bodies held in memory at once, all connections together (at least max_request_size);"
        " room for a whole body is reserved before it is read (its Content-Length, or max_request_size"
        " if chunked or gzip), in arrival order; one client address holds at most twice"
        " max_request_size of it; a body that finds no room waits up to body_timeout, then 503.",
    ),
    Setting(
        "http",
        "body_timeout",
        "30s",
        _positive_duration,
        "Grace time for a request body: within it any rate is fine; after it body_min_rate applies (408);"
        " also the longest a body waits for room in max_buffered_bytes (503).",
    ),
    Setting(
        "http",
        "body_min_rate",
        "16KiB",
        _positive_size,
        "Bytes per second a body must arrive at over the last 10 s, once body_timeout has passed (408).",
    ),
    Setting(
        "http",
        "body_idle_timeout",
        "10s",
        _positive_duration,
        "A request body from which no byte arrives for this long is answered 408 and its connection closed.",
    ),
    Setting(
        "http",
        "send_timeout",
        "30s",
        _positive_duration,
        "A client that reads less than 64 KiB of its pending response in this time is disconnected.",
    ),
    Setting(
        "http",
        "header_timeout",
        "10s",
        _positive_duration,
        "A connection that does not send a complete request head within this time is closed.",
    ),
    Setting(
        "http",
        "keepalive_timeout",
        "60s",
        _positive_duration,
        "An idle keep-alive connection is closed after this time.",
    ),
    Setting(
        "http",
        "max_connections",
        512,
        _positive_int,
        "Open HTTP connections in total; more are answered 503 and closed"
        " (clients on 127.0.0.1 and ::1 are held only to max_connections_per_ip).",
    ),
    Setting(
        "http",
        "max_connections_per_ip",
        64,
        _positive_int,
        "Open HTTP connections from one client address (an IPv6 client: its /64); more are answered 503"
        " and closed.",
    ),
    Setting(
        "http",
        "cors_origins",
        (),
        _origins,
        'Web origins allowed to call the API from a browser (CORS), e.g. ["https://dash.lan:3000"]; "*" for any.',
    ),
    Setting(
        "http",
        "allowed_hosts",
        (),
        _hosts,
        "Host names accepted besides localhost and IP addresses (DNS rebinding guard, on while bound to"
        " loopback or while auth is off; when set, on for any bind address).",
    ),
    Setting(
        "auth",
        "enabled",
        True,
        _bool,
        "Require a token on every endpoint except /health and /ping.",
        "auth_enabled",
    ),
    Setting(
        "auth",
        "disable_authz",
        "",
        _disable_authz,
        "Endpoints reachable without a token besides /health and /ping: metrics (for a Prometheus scraper).",
    ),
    Setting(
        "wal",
        "flush_interval",
        "1s",
        parse_duration_ns,
        "Accepted for compatibility with influxdb3: writes commit at once, in groups, never on a timer.",
    ),
    Setting(
        "wal",
        "map_size",
        "4GiB",
        parse_size,
        "Most the WAL, catalog and queues may hold; at it writes get 507 and a persist starts to free"
        " the WAL (the LMDB map is a 16th larger, at least 16 MiB, so that persist can commit).",
    ),
    Setting(
        "storage",
        "gen1_duration",
        "10m",
        _gen1,
        "Time window of one Parquet file; the buffer is persisted once per window.",
    ),
    Setting(
        "storage",
        "max_buffer_bytes",
        "64MiB",
        parse_size,
        "In-memory buffer size that triggers an early persist to Parquet.",
    ),
    Setting(
        "storage",
        "retention_check_interval",
        "30s",
        parse_duration_ns,
        "How often data past a database's retention period is removed.",
    ),
    Setting(
        "storage",
        "max_disk_bytes",
        0,
        parse_size,
        "Local disk budget for Parquet files; over it synced files are evicted oldest first (0: no budget).",
    ),
    Setting(
        "storage",
        "compact_target_bytes",
        "128MiB",
        parse_size,
        "Merge a closed day's files per table into files of up to this size (0: never compact).",
    ),
    Setting(
        "storage",
        "compact_interval",
        "1h",
        parse_duration_ns,
        "How often closed days are checked for files to compact.",
    ),
    Setting("catalog", "max_databases", 100, _positive_int, "Most databases that may exist."),
    Setting("catalog", "max_tables", 2000, _positive_int, "Most tables across all databases."),
    Setting(
        "catalog",
        "max_tables_per_database",
        1000,
        _positive_int,
        "Most tables in one database, so that one writer (an MQTT topic tree, say) cannot use up"
        " max_tables for every database.",
    ),
    Setting(
        "catalog",
        "max_columns",
        500,
        _positive_int,
        "Most tag plus field columns per table (time not counted).",
    ),
    Setting(
        "query",
        "memory_limit",
        "256MiB",
        parse_size,
        "Memory one query may use for sorts, joins and aggregations (400 above it; nothing spills to disk).",
    ),
    Setting(
        "query", "timeout", "30s", parse_duration_ns, "Longest a query may run before it is cancelled (408)."
    ),
    Setting(
        "query",
        "max_result_bytes",
        "64MiB",
        parse_size,
        "Largest result a query may return, as Arrow data and again as the rendered body (413 above it).",
    ),
    Setting(
        "query", "max_sql_bytes", "1MiB", parse_size, "Longest SQL text a query may send (400 above it)."
    ),
    Setting(
        "query",
        "max_concurrent",
        4,
        _positive_int,
        "Queries running at once over HTTP; more wait up to query.timeout for a slot, then get 503.",
    ),
    Setting(
        "engine",
        "plugin_dir",
        "",
        str,
        "Directory of processing-engine plugins; empty means <data_dir>/plugins.",
    ),
    Setting(
        "engine",
        "plugin_repo",
        "https://raw.githubusercontent.com/influxdata/influxdb3_plugins/main",
        str,
        "Where gh:PATH plugins are downloaded from (cached in the plugin directory).",
    ),
    Setting(
        "engine",
        "max_retries",
        3,
        _positive_int,
        "Retries of a failed call for error_behavior=retry, with backoff.",
    ),
    Setting(
        "engine",
        "call_timeout",
        "60s",
        parse_duration_ns,
        "Longest a plugin call may run before it is logged as overdue (504 for requests).",
    ),
    Setting(
        "engine",
        "cache_max_bytes",
        "32MiB",
        parse_size,
        "Memory cap of the plugin cache; least recently used entries go first.",
    ),
    Setting(
        "engine",
        "queue_size",
        60,
        _positive_int,
        "WAL batches a synchronous trigger may have waiting; beyond it the oldest are dropped and counted.",
    ),
    Setting(
        "engine",
        "package_manager",
        "pip",
        _package_manager,
        "How `install package` installs: pip, or disabled (403).",
    ),
    Setting(
        "mqtt",
        "broker",
        "",
        _broker,
        "MQTT broker to subscribe to: mqtt://HOST:PORT or mqtts://HOST:PORT; empty turns MQTT off.",
        "mqtt_broker",
    ),
    Setting(
        "mqtt",
        "client_id",
        "",
        str,
        "MQTT client id; empty means appliance-<node_id>. Keep it stable: the broker keys the session on it.",
        "mqtt_client_id",
    ),
    Setting("mqtt", "username", "", str, "Username for the broker; empty means none.", "mqtt_username"),
    Setting(
        "mqtt",
        "password",
        "",
        str,
        "Password for the broker; prefer password_file or env APPLIANCE_MQTT_PASSWORD.",
        "mqtt_password",
        secret=True,
    ),
    Setting(
        "mqtt",
        "password_file",
        "",
        _path_or_empty,
        "File holding the broker password (first line), e.g. /etc/appliance/mqtt-password.",
        "mqtt_password_file",
    ),
    Setting(
        "mqtt", "protocol", "3.1.1", _mqtt_protocol, "MQTT protocol version: 3.1.1 or 5.", "mqtt_protocol"
    ),
    Setting(
        "mqtt",
        "keepalive",
        "30s",
        _seconds_between(1, 65535),
        "Keepalive interval; the broker drops the connection after 1.5 times it without traffic.",
        "mqtt_keepalive",
    ),
    Setting(
        "mqtt",
        "session_expiry",
        "7d",
        _seconds_between(1, 0xFFFFFFFF),
        "MQTT 5: how long the broker keeps the session and its queued messages while disconnected.",
        "mqtt_session_expiry",
    ),
    Setting(
        "mqtt",
        "tls_ca",
        "",
        _path_or_empty,
        "CA certificate file to verify the broker (mqtts://); empty means the system CAs.",
        "mqtt_tls_ca",
    ),
    Setting(
        "mqtt", "tls_cert", "", _path_or_empty, "Client certificate file for the broker.", "mqtt_tls_cert"
    ),
    Setting("mqtt", "tls_key", "", _path_or_empty, "Client private key file.", "mqtt_tls_key"),
    Setting(
        "mqtt",
        "tls_insecure",
        False,
        _bool,
        "Skip the broker host name check (the certificate chain is still verified).",
        "mqtt_tls_insecure",
    ),
    Setting(
        "mqtt",
        "reconnect_min",
        "1s",
        _positive_duration,
        "First delay before reconnecting to the broker; doubles (with jitter) up to reconnect_max.",
        "mqtt_reconnect_min",
    ),
    Setting(
        "mqtt",
        "reconnect_max",
        "60s",
        parse_duration_ns,
        "Longest delay between reconnects.",
        "mqtt_reconnect_max",
    ),
    Setting(
        "mqtt",
        "max_inflight",
        1000,
        _positive_int,
        "Messages received but not yet committed; at the cap the client stops reading (MQTT 5 Receive Maximum).",
        "mqtt_max_inflight",
    ),
    Setting(
        "mqtt",
        "max_pending_bytes",
        "16MiB",
        _positive_size,
        "Payload bytes received but not yet committed; at the cap the client stops reading.",
        "mqtt_max_pending_bytes",
    ),
    Setting(
        "sync",
        "bucket",
        "",
        str,
        "S3 bucket that Parquet files are uploaded to; empty turns sync off.",
        "sync_bucket",
    ),
    Setting(
        "sync",
        "endpoint",
        "",
        _endpoint,
        "S3-compatible endpoint URL, e.g. http://127.0.0.1:9000 for MinIO; empty means AWS S3.",
        "sync_endpoint",
    ),
    Setting(
        "sync",
        "prefix",
        "",
        _prefix,
        "Key prefix in the bucket (objects go to <prefix>/<db>/<table>/...).",
        "sync_prefix",
    ),
    Setting("sync", "region", "us-east-1", str, "Region of the bucket.", "sync_region"),
    Setting(
        "sync",
        "path_style",
        True,
        _bool,
        "Path-style addressing (MinIO and most S3-compatible stores); false: virtual-hosted buckets.",
        "sync_path_style",
    ),
    Setting(
        "sync",
        "allow_http",
        False,
        _bool,
        "Allow a plain http:// endpoint (a local MinIO).",
        "sync_allow_http",
    ),
    Setting(
        "sync",
        "access_key_id",
        "",
        str,
        "Access key; empty: AWS_ACCESS_KEY_ID, then credentials_file, then the AWS default chain.",
        "sync_access_key_id",
    ),
    Setting(
        "sync",
        "secret_access_key",
        "",
        str,
        "Secret key; prefer AWS_SECRET_ACCESS_KEY or credentials_file.",
        "sync_secret_access_key",
        secret=True,
    ),
    Setting(
        "sync",
        "credentials_file",
        "",
        _path_or_empty,
        "AWS shared credentials file (INI with aws_access_key_id, aws_secret_access_key).",
        "sync_credentials_file",
    ),
    Setting("sync", "profile", "default", str, "Section of credentials_file to use.", "sync_profile"),
    Setting(
        "sync",
        "interval",
        "10s",
        parse_duration_ns,
        "How often the upload queue is retried.",
        "sync_interval",
    ),
    Setting("sync", "concurrency", 2, _positive_int, "Uploads running at once.", "sync_concurrency"),
    Setting(
        "sync",
        "bandwidth_limit",
        0,
        parse_size,
        "Most bytes per second all uploads together may send (0: no limit), for cellular links.",
        "sync_bandwidth_limit",
    ),
    Setting(
        "sync",
        "retry_min",
        "1s",
        _positive_duration,
        "First delay after a failed upload; doubles with jitter.",
        "sync_retry_min",
    ),
    Setting(
        "sync",
        "retry_max",
        "5m",
        parse_duration_ns,
        "Longest delay between retries of one file.",
        "sync_retry_max",
    ),
    Setting(
        "sync",
        "stale_after",
        "1h",
        parse_duration_ns,
        "/health reports sync degraded when the oldest file waiting for upload is older than this.",
        "sync_stale_after",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Subscription:
    """One `[[mqtt.subscription]]` block: what to subscribe to and how to read its payloads."""

    topic: str
    database: str
    qos: int = 1
    format: str = "line_protocol"  # or "json"
    precision: str = "auto"  # line protocol timestamps
    topic_parsing: str = ""  # "_/{site}/{device}/{measurement}"
    topic_tag: str = ""  # tag that receives the whole topic
    measurement: str = ""  # json: fixed measurement
    measurement_key: str = ""  # json: key holding the measurement
    tag_keys: tuple[str, ...] = ()
    field_keys: tuple[str, ...] = ()
    time_key: str = ""
    time_format: str = "auto"


MQTT_FORMATS = ("line_protocol", "json")
_LIST_KEYS = ("tag_keys", "field_keys")


def _subscriptions(path: Path, blocks: Any) -> tuple[Subscription, ...]:
    """Validate the `[[mqtt.subscription]]` array of tables; errors name the block and key."""
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{path}: mqtt.subscription must be an array of tables: [[mqtt.subscription]]")
    known = {f.name for f in fields(Subscription)}
    out = []
    for i, block in enumerate(blocks, 1):
        where = f"{path}: [[mqtt.subscription]] number {i}"
        for key in block:
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        for key in ("topic", "database"):
            if not isinstance(block.get(key), str) or not block[key].strip():
                raise ConfigError(f"{where}: {key} is required (a non-empty string)")
        values = dict(block)
        for key, value in block.items():
            if key in _LIST_KEYS:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f'{where}: {key} must be a list of strings, e.g. ["room"]')
                values[key] = tuple(value)
            elif key == "qos":
                if not isinstance(value, int) or isinstance(value, bool) or value not in (0, 1, 2):
                    raise ConfigError(f"{where}: qos must be 0, 1 or 2, got {value!r}")
            elif not isinstance(value, str):
                raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        if values.get("format", "line_protocol") not in MQTT_FORMATS:
            raise ConfigError(f"{where}: format must be line_protocol or json, got {values['format']!r}")
        out.append(Subscription(**values))
    return tuple(out)


@dataclass(frozen=True)
class Config:
    """Effective settings of one appliance process (see SETTINGS for meaning and defaults)."""

    node_id: str
    data_dir: str
    log_filter: str
    log_format: str
    bind: str
    max_request_size: int
    max_buffered_bytes: int
    body_timeout: int
    body_min_rate: int
    body_idle_timeout: int
    send_timeout: int
    header_timeout: int
    keepalive_timeout: int
    max_connections: int
    max_connections_per_ip: int
    cors_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    auth_enabled: bool
    disable_authz: tuple[str, ...]
    flush_interval: int
    map_size: int
    gen1_duration: int
    max_buffer_bytes: int
    retention_check_interval: int
    max_databases: int
    max_tables: int
    max_tables_per_database: int
    max_columns: int
    memory_limit: int
    timeout: int
    max_result_bytes: int
    max_sql_bytes: int
    max_concurrent: int
    plugin_dir: str
    plugin_repo: str
    max_retries: int
    call_timeout: int
    cache_max_bytes: int
    queue_size: int
    package_manager: str
    mqtt_broker: str
    mqtt_client_id: str
    mqtt_username: str
    mqtt_password: str
    mqtt_password_file: str
    mqtt_protocol: str
    mqtt_keepalive: int
    mqtt_session_expiry: int
    mqtt_tls_ca: str
    mqtt_tls_cert: str
    mqtt_tls_key: str
    mqtt_tls_insecure: bool
    mqtt_reconnect_min: int
    mqtt_reconnect_max: int
    mqtt_max_inflight: int
    mqtt_max_pending_bytes: int
    mqtt_subscriptions: tuple[Subscription, ...]
    max_disk_bytes: int
    compact_target_bytes: int
    compact_interval: int
    sync_bucket: str
    sync_endpoint: str
    sync_prefix: str
    sync_region: str
    sync_path_style: bool
    sync_allow_http: bool
    sync_access_key_id: str
    sync_secret_access_key: str
    sync_credentials_file: str
    sync_profile: str
    sync_interval: int
    sync_concurrency: int
    sync_bandwidth_limit: int
    sync_retry_min: int
    sync_retry_max: int
    sync_stale_after: int
    sources: dict[str, str]


assert {f.name for f in fields(Config)} - {"sources", "mqtt_subscriptions"} == {s.field for s in SETTINGS}


def load(
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the effective Config from defaults, the file, the environment and flag overrides.

    `overrides` maps "section.key" to a value given on the command line (None = not given).
    """
    environ = dict(os.environ if environ is None else environ)
    raw: dict[str, tuple[Any, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    file_path = _find_file(path, environ)
    subscriptions: tuple[Subscription, ...] = ()
    if file_path is not None:
        settings, subscriptions = _read_file(file_path)
        for name, value in settings.items():
            raw[name] = (value, f"file {file_path}")
    for s in SETTINGS:
        if s.env in environ:
            raw[s.name] = (environ[s.env], f"env {s.env}")
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in _BY_NAME:
                raise ConfigError(f"unknown setting {name!r}")
            raw[name] = (value, "flag")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        value, source = raw[s.name]
        try:
            values[s.field] = s.parse(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"setting {s.name} (from {source}): {e}") from None
    if not values["plugin_dir"]:
        values["plugin_dir"] = str(Path(values["data_dir"]) / "plugins")
    if not values["node_id"]:
        values["node_id"] = socket.gethostname().split(".")[0] or "node"
    _check_node_id(values["node_id"])
    if not values["mqtt_client_id"]:
        values["mqtt_client_id"] = f"appliance-{values['node_id']}"
    if values["sync_endpoint"].startswith("http://") and not values["sync_allow_http"]:
        raise ConfigError(
            f"sync.endpoint {values['sync_endpoint']} is plain http: set sync.allow_http = true"
            " (a local MinIO) or use https://"
        )
    if values["max_buffered_bytes"] < values["max_request_size"]:
        raise ConfigError(
            f"http.max_buffered_bytes ({values['max_buffered_bytes']}) is smaller than http.max_request_size"
            f" ({values['max_request_size']}): one body must fit; raise it or lower max_request_size"
        )
    if subscriptions and not values["mqtt_broker"]:
        raise ConfigError("[[mqtt.subscription]] blocks are set but mqtt.broker is empty: set the broker URL")
    return Config(
        **values, mqtt_subscriptions=subscriptions, sources={name: src for name, (_, src) in raw.items()}
    )


def _find_file(path: str | None, environ: dict[str, str]) -> Path | None:
    explicit = path or environ.get("APPLIANCE_CONFIG")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    for p in DEFAULT_CONFIG_PATHS:
        if p.is_file():
            return p
    return None


def _read_file(path: Path) -> tuple[dict[str, Any], tuple[Subscription, ...]]:
    """The file's settings by name, and its MQTT subscriptions."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    out: dict[str, Any] = {}
    subscriptions: tuple[Subscription, ...] = ()
    for section, body in doc.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
        for key, value in body.items():
            name = f"{section}.{key}"
            if name == "mqtt.subscription":
                subscriptions = _subscriptions(path, value)
            elif name in _BY_NAME:
                out[name] = value
            else:
                raise ConfigError(f"{path}: unknown setting {name!r}")
    return out, subscriptions


def _check_node_id(node_id: str) -> None:
    if not node_id or any(not (c.isalnum() or c in "-_.") for c in node_id):
        raise ConfigError(
            f"setting server.node_id: {node_id!r} may only hold letters, digits, '-', '_' and '.'"
        )


def describe(config: Config) -> list[tuple[str, str, str]]:
    """Each setting as (name, effective value, source), for `config check` and logs."""
    rows = []
    for s in SETTINGS:
        value = getattr(config, s.field)
        shown = "(set, hidden)" if s.secret and value else repr(value)
        rows.append((s.name, shown, config.sources[s.name]))
    for i, sub in enumerate(config.mqtt_subscriptions, 1):
        rows.append((f"mqtt.subscription[{i}]", _describe_subscription(sub), "file"))
    return rows


def _describe_subscription(sub: Subscription) -> str:
    """Topic, database and every key that differs from its default."""
    default = Subscription(sub.topic, sub.database)
    return " ".join(
        f"{f.name}={getattr(sub, f.name)!r}"
        for f in fields(sub)
        if f.name in ("topic", "database") or getattr(sub, f.name) != getattr(default, f.name)
    )


_SAMPLE_HEADER = """\
# appliance configuration: every setting with its default.
# Precedence: command-line flag > APPLIANCE_<SECTION>_<KEY> environment variable > this file > default.
# The server reads /etc/appliance/config.toml when present, or the file given by --config / APPLIANCE_CONFIG.
# Regenerate this file with: appliance config sample > config.toml
"""

_SECTION_NOTES = {
    "mqtt": """\
# MQTT ingest (off while broker is empty). Every QoS 1/2 message is acknowledged to the broker
# only after the WAL commit that holds it; see README "MQTT ingest".
""",
    "sync": """\
# Object store sync (off while bucket is empty): every Parquet file is queued in LMDB and uploaded to
# s3://<bucket>/<prefix>/<db>/<table>/date=YYYY-MM-DD/node=<node_id>/<file>; see README "Object store sync".
""",
}

_SAMPLE_SUBSCRIPTION = """\

# One block per topic filter; several blocks may be given. Keys and defaults:
# [[mqtt.subscription]]
# topic = "sensors/#"            # required; + and # wildcards
# database = "iot"               # required; created on first write
# qos = 1                        # 0, 1 or 2 (2 is received as 1 and stored exactly once)
# format = "line_protocol"       # or "json"
# precision = "auto"             # line protocol timestamps: auto, s, ms, us, ns
# topic_parsing = ""             # e.g. "_/{site}/{device}/{measurement}": topic levels as tags
# topic_tag = ""                 # e.g. "topic": the whole topic as a tag
# measurement = ""               # json: fixed measurement name
# measurement_key = ""           # json: key holding the measurement
# tag_keys = []                  # json: keys stored as tags
# field_keys = []                # json: keys stored as fields (default: all other values)
# time_key = ""                  # json: key holding the time (default: arrival time)
# time_format = "auto"           # json: auto, s, ms, us, ns or rfc3339
"""


def sample() -> str:
    """A config.toml with every setting at its default, each with its help line."""
    out = [_SAMPLE_HEADER]
    for section in dict.fromkeys(s.section for s in SETTINGS):
        out.append(f"\n[{section}]\n{_SECTION_NOTES.get(section, '')}")
        for s in (x for x in SETTINGS if x.section == section):
            out.append(f"# {s.help}\n{s.key} = {_toml_value(s.default)}\n")
        if section == "mqtt":
            out.append(_SAMPLE_SUBSCRIPTION)
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
