"""Settings per config.toml section: each section's frozen dataclass declares its own settings.

A setting is declared once, as a field of its section's dataclass (its key, default as written in
config.toml, parser, help, secret); SETTINGS, the flat table that `config sample`, `config check`,
the environment (`APPLIANCE_<SECTION>_<KEY>`) and command-line flags ("section.key") use, is
generated from those fields, in declaration order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

from ..units import parse_duration_ns, parse_size
from . import parse
from .subscriptions import Subscription

T = TypeVar("T")

#: Key of a setting's declaration in its dataclass field's metadata.
_SPEC = "appliance.setting"


@dataclass(frozen=True)
class Setting:
    """One setting: where it lives in config.toml, its default, how to parse it, and help."""

    section: str
    key: str
    default: Any  # as written in config.toml, before parsing
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False  # never printed or logged

    @property
    def name(self) -> str:
        """ "section.key", as flags, errors and `config check` name it."""
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return f"APPLIANCE_{self.section.upper()}_{self.key.upper()}"

    def value(self, config: Config) -> Any:
        """Its effective value in `config`."""
        return getattr(getattr(config, self.section), self.key)


def setting(default: Any, parse: Callable[[Any], T], help: str, *, secret: bool = False) -> T:
    """Declare a field of a section dataclass as a setting; load() always gives its value."""
    spec: Any = field(metadata={_SPEC: (default, parse, help, secret)})
    return spec  # a dataclass field specifier, typed as the value it holds


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """[server]: identity, data directory and logging."""

    node_id: str = setting("", str, "Node id used in Parquet paths; empty means the host name.")
    data_dir: str = setting(
        "~/.appliance", parse.path, "Directory for the LMDB WAL/catalog, Parquet files and the admin token."
    )
    log_filter: str = setting(
        "info", parse.log_filter, "Log level, optionally per component: info or info,appliance.wal=debug."
    )
    log_format: str = setting(
        "text",
        parse.log_format,
        "Log lines on stderr: text (LEVEL component: message; journald priorities under systemd) or json.",
    )


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """[http]: the listener, its TLS certificate and its limits on connections and request bodies."""

    bind: str = setting("127.0.0.1:8181", parse.bind, "Address and port the HTTP API listens on.")
    max_request_size: int = setting(
        10 * 1024 * 1024, parse_size, "Largest request body accepted, after gzip decoding (413 above it)."
    )
    max_buffered_bytes: int = setting(
        "64MiB",
        parse.positive_size,
        "Request bodies held in memory at once, all connections together (at least max_request_size); "
        "room for a whole body is reserved before it is read (its Content-Length, or max_request_size if "
        "chunked or gzip), in arrival order; one client address holds at most twice max_request_size of "
        "it; a body that finds no room waits up to body_timeout, then 503.",
    )
    body_timeout: int = setting(
        "30s",
        parse.positive_duration,
        "Grace time for a request body: within it any rate is fine; after it body_min_rate applies (408);"
        " also the longest a body waits for room in max_buffered_bytes (503).",
    )
    body_min_rate: int = setting(
        "16KiB",
        parse.positive_size,
        "Bytes per second a body must arrive at over the last 10 s, once body_timeout has passed (408).",
    )
    body_idle_timeout: int = setting(
        "10s",
        parse.positive_duration,
        "A request body from which no byte arrives for this long is answered 408 and its connection closed.",
    )
    send_timeout: int = setting(
        "30s",
        parse.positive_duration,
        "A client that reads less than 64 KiB of its pending response in this time is disconnected.",
    )
    header_timeout: int = setting(
        "10s",
        parse.positive_duration,
        "A connection that does not send a complete request head within this time is closed.",
    )
    keepalive_timeout: int = setting(
        "60s", parse.positive_duration, "An idle keep-alive connection is closed after this time."
    )
    max_connections: int = setting(
        512,
        parse.positive_int,
        "Open HTTP connections in total; more are answered 503 and closed (clients on 127.0.0.1 and ::1 "
        "are held only to max_connections_per_ip).",
    )
    max_connections_per_ip: int = setting(
        64,
        parse.positive_int,
        "Open HTTP connections from one client address (an IPv6 client: its /64); more are answered 503 "
        "and closed.",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        parse.origins,
        'Web origins allowed to call the API from a browser (CORS), e.g. ["https://dash.lan:3000"]; "*" '
        "for any.",
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        parse.hosts,
        "Host names accepted besides localhost and IP addresses (DNS rebinding guard, on while bound to "
        "loopback or while auth is off; when set, on for any bind address).",
    )
    tls_cert: str = setting(
        "",
        parse.path_or_empty,
        "PEM certificate file (then its intermediates) to serve HTTPS with, e.g. /etc/appliance/tls/cert.pem;"
        " empty serves plain HTTP. Set with tls_key; re-read on SIGHUP.",
    )
    tls_key: str = setting(
        "",
        parse.path_or_empty,
        "PEM private key of tls_cert, unencrypted, readable only by the appliance's user; re-read on SIGHUP.",
    )
    tls_minimum_version: str = setting(
        "1.2", parse.tls_version, "Oldest TLS version a client may use for HTTPS: 1.2 or 1.3."
    )


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """[auth]: tokens."""

    enabled: bool = setting(
        True, parse.boolean, "Require a token on every endpoint except /health and /ping."
    )
    disable_authz: tuple[str, ...] = setting(
        "",
        parse.disable_authz,
        "Endpoints reachable without a token besides /health and /ping: metrics (for a Prometheus scraper).",
    )
    allow_unauthenticated_network: bool = setting(
        False,
        parse.boolean,
        "Confirm serving with auth off on an address other than loopback (anyone who reaches it may read,"
        " write and delete); without it such a start is refused. Logged as a warning at every start.",
    )


@dataclass(frozen=True, kw_only=True)
class WalSettings:
    """[wal]: the write-ahead log in LMDB."""

    flush_interval: int = setting(
        "1s",
        parse_duration_ns,
        "Accepted for compatibility with influxdb3: writes commit at once, in groups, never on a timer.",
    )
    map_size: int = setting(
        "4GiB",
        parse_size,
        "Most the WAL, catalog and queues may hold; at it writes get 507 and a persist starts to free the"
        " WAL (the LMDB map is a 16th larger, at least 16 MiB, so that persist can commit).",
    )


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """[storage]: the in-memory buffer, Parquet files, retention, compaction and the disk budget."""

    gen1_duration: int = setting(
        "10m", parse.gen1, "Time window of one Parquet file; the buffer is persisted once per window."
    )
    max_buffer_bytes: int = setting(
        "64MiB", parse_size, "In-memory buffer size that triggers an early persist to Parquet."
    )
    retention_check_interval: int = setting(
        "30s", parse_duration_ns, "How often data past a database's retention period is removed."
    )
    max_disk_bytes: int = setting(
        0,
        parse_size,
        "Local disk budget for Parquet files; over it synced files are evicted oldest first (0: no budget).",
    )
    compact_target_bytes: int = setting(
        "128MiB",
        parse_size,
        "Merge a closed day's files per table into files of up to this size (0: never compact).",
    )
    compact_interval: int = setting(
        "1h", parse_duration_ns, "How often closed days are checked for files to compact."
    )


@dataclass(frozen=True, kw_only=True)
class CatalogSettings:
    """[catalog]: limits on databases, tables and columns."""

    max_databases: int = setting(100, parse.positive_int, "Most databases that may exist.")
    max_tables: int = setting(2000, parse.positive_int, "Most tables across all databases.")
    max_tables_per_database: int = setting(
        1000,
        parse.positive_int,
        "Most tables in one database, so that one writer (an MQTT topic tree, say) cannot use up "
        "max_tables for every database.",
    )
    max_columns: int = setting(
        500, parse.positive_int, "Most tag plus field columns per table (time not counted)."
    )


@dataclass(frozen=True, kw_only=True)
class QuerySettings:
    """[query]: limits of one SQL query and of all queries together."""

    memory_limit: int = setting(
        "256MiB",
        parse_size,
        "Memory one query may use for sorts, joins and aggregations (400 above it; nothing spills to disk).",
    )
    timeout: int = setting("30s", parse_duration_ns, "Longest a query may run before it is cancelled (408).")
    max_result_bytes: int = setting(
        "64MiB",
        parse_size,
        "Largest result a query may return, as Arrow data and again as the rendered body (413 above it).",
    )
    max_sql_bytes: int = setting("1MiB", parse_size, "Longest SQL text a query may send (400 above it).")
    max_concurrent: int = setting(
        4,
        parse.positive_int,
        "Queries running at once over HTTP; more wait up to query.timeout for a slot, then get 503.",
    )


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """[engine]: the processing engine and its plugins."""

    plugin_dir: str = setting(
        "", str, "Directory of processing-engine plugins; empty means <data_dir>/plugins."
    )
    plugin_repo: str = setting(
        "https://raw.githubusercontent.com/influxdata/influxdb3_plugins/main",
        str,
        "Where gh:PATH plugins are downloaded from (cached in the plugin directory).",
    )
    max_retries: int = setting(
        3, parse.positive_int, "Retries of a failed call for error_behavior=retry, with backoff."
    )
    call_timeout: int = setting(
        "60s",
        parse_duration_ns,
        "Longest a plugin call may run before it is logged as overdue (504 for requests).",
    )
    cache_max_bytes: int = setting(
        "32MiB", parse_size, "Memory cap of the plugin cache; least recently used entries go first."
    )
    queue_size: int = setting(
        60,
        parse.positive_int,
        "WAL batches a synchronous trigger may have waiting; beyond it the oldest are dropped and counted.",
    )
    package_manager: str = setting(
        "pip", parse.package_manager, "How `install package` installs: pip, or disabled (403)."
    )


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """[mqtt]: MQTT ingest (off while broker is empty) and its subscriptions."""

    broker: str = setting(
        "",
        parse.broker,
        "MQTT broker to subscribe to: mqtt://HOST:PORT or mqtts://HOST:PORT; empty turns MQTT off.",
    )
    client_id: str = setting(
        "",
        str,
        "MQTT client id; empty means appliance-<node_id>. Keep it stable: the broker keys the session on it.",
    )
    username: str = setting("", str, "Username for the broker; empty means none.")
    password: str = setting(
        "", str, "Password for the broker; prefer password_file or env APPLIANCE_MQTT_PASSWORD.", secret=True
    )
    password_file: str = setting(
        "",
        parse.path_or_empty,
        "File holding the broker password (first line), e.g. /etc/appliance/mqtt-password.",
    )
    protocol: str = setting("3.1.1", parse.mqtt_protocol, "MQTT protocol version: 3.1.1 or 5.")
    keepalive: int = setting(
        "30s",
        parse.seconds_between(1, 65535),
        "Keepalive interval; the broker drops the connection after 1.5 times it without traffic.",
    )
    session_expiry: int = setting(
        "7d",
        parse.seconds_between(1, 0xFFFFFFFF),
        "MQTT 5: how long the broker keeps the session and its queued messages while disconnected.",
    )
    tls_ca: str = setting(
        "",
        parse.path_or_empty,
        "CA certificate file to verify the broker (mqtts://); empty means the system CAs.",
    )
    tls_cert: str = setting("", parse.path_or_empty, "Client certificate file for the broker.")
    tls_key: str = setting("", parse.path_or_empty, "Client private key file.")
    tls_insecure: bool = setting(
        False, parse.boolean, "Skip the broker host name check (the certificate chain is still verified)."
    )
    reconnect_min: int = setting(
        "1s",
        parse.positive_duration,
        "First delay before reconnecting to the broker; doubles (with jitter) up to reconnect_max.",
    )
    reconnect_max: int = setting("60s", parse_duration_ns, "Longest delay between reconnects.")
    max_inflight: int = setting(
        1000,
        parse.positive_int,
        "Messages received but not yet committed; at the cap the client stops reading (MQTT 5 Receive "
        "Maximum).",
    )
    max_pending_bytes: int = setting(
        "16MiB",
        parse.positive_size,
        "Payload bytes received but not yet committed; at the cap the client stops reading.",
    )
    #: The `[[mqtt.subscription]]` blocks (not a setting: only the file holds them).
    subscriptions: tuple[Subscription, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SyncSettings:
    """[sync]: uploads of Parquet files to an S3 bucket (off while bucket is empty)."""

    bucket: str = setting(
        "",
        str,
        "S3 bucket that Parquet files are uploaded to, or file:///folder for a local or mounted folder; empty turns sync off.",
    )
    endpoint: str = setting(
        "",
        parse.endpoint,
        "S3-compatible endpoint URL, e.g. http://127.0.0.1:9000 for MinIO; empty means AWS S3.",
    )
    prefix: str = setting(
        "", parse.prefix, "Key prefix in the bucket (objects go to <prefix>/<db>/<table>/...)."
    )
    region: str = setting("us-east-1", str, "Region of the bucket.")
    path_style: bool = setting(
        True,
        parse.boolean,
        "Path-style addressing (MinIO and most S3-compatible stores); false: virtual-hosted buckets.",
    )
    allow_http: bool = setting(False, parse.boolean, "Allow a plain http:// endpoint (a local MinIO).")
    access_key_id: str = setting(
        "", str, "Access key; empty: AWS_ACCESS_KEY_ID, then credentials_file, then the AWS default chain."
    )
    secret_access_key: str = setting(
        "", str, "Secret key; prefer AWS_SECRET_ACCESS_KEY or credentials_file.", secret=True
    )
    credentials_file: str = setting(
        "",
        parse.path_or_empty,
        "AWS shared credentials file (INI with aws_access_key_id, aws_secret_access_key).",
    )
    profile: str = setting("default", str, "Section of credentials_file to use.")
    interval: int = setting("10s", parse_duration_ns, "How often the upload queue is retried.")
    concurrency: int = setting(2, parse.positive_int, "Uploads running at once.")
    bandwidth_limit: int = setting(
        0,
        parse_size,
        "Most bytes per second all uploads together may send (0: no limit), for cellular links.",
    )
    retry_min: int = setting(
        "1s", parse.positive_duration, "First delay after a failed upload; doubles with jitter."
    )
    retry_max: int = setting("5m", parse_duration_ns, "Longest delay between retries of one file.")
    stale_after: int = setting(
        "1h",
        parse_duration_ns,
        "/health reports sync degraded when the oldest file waiting for upload is older than this.",
    )


@dataclass(frozen=True)
class Config:
    """Effective settings of one appliance process: one attribute per config.toml section."""

    server: ServerSettings
    http: HttpSettings
    auth: AuthSettings
    wal: WalSettings
    storage: StorageSettings
    catalog: CatalogSettings
    query: QuerySettings
    engine: EngineSettings
    mqtt: MqttSettings
    sync: SyncSettings
    sources: dict[str, str]  # "section.key" -> where its value came from

    def with_settings(self, other: Config, names: Iterable[str]) -> Config:
        """This Config with the named settings ("section.key") taken from `other`; sources stay."""
        changes: dict[str, dict[str, Any]] = {}
        for name in names:
            section, _, key = name.partition(".")
            changes.setdefault(section, {})[key] = getattr(getattr(other, section), key)
        replaced = {s: dataclasses.replace(getattr(self, s), **kv) for s, kv in changes.items()}
        return dataclasses.replace(self, **replaced)


#: The section dataclasses by section name, in config.toml order (Config's attributes).
SECTIONS: dict[str, type] = {
    f.name: get_type_hints(Config)[f.name] for f in fields(Config) if f.name != "sources"
}


def _declared(section: str, cls: type) -> tuple[Setting, ...]:
    """The settings a section dataclass declares, in declaration order."""
    return tuple(Setting(section, f.name, *f.metadata[_SPEC]) for f in fields(cls) if _SPEC in f.metadata)


SETTINGS: tuple[Setting, ...] = tuple(s for name, cls in SECTIONS.items() for s in _declared(name, cls))
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
