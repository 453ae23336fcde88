"""`appliance serve`: the server, with the flags influxdb3 serve takes mapped onto settings."""

from __future__ import annotations

import argparse
from typing import Any

from .. import config

#: serve flags: flag name -> setting (the flag's value overrides the setting).
SERVE_FLAGS: dict[str, str] = {
    "--node-id": "server.node_id",
    "--data-dir": "server.data_dir",
    "--plugin-dir": "engine.plugin_dir",
    "--log-filter": "server.log_filter",
    "--log-format": "server.log_format",
    "--http-bind": "http.bind",
    "--max-http-request-size": "http.max_request_size",
    "--tls-cert": "http.tls_cert",
    "--tls-key": "http.tls_key",
    "--tls-minimum-version": "http.tls_minimum_version",
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


def add_parser(sub: Any) -> None:
    """`serve` and its flags, each one's help naming its setting, env variable and default."""
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
    s.add_argument(
        "--allow-unauthenticated-network",
        action="store_true",
        help="confirm --without-auth on an address other than loopback: anyone who reaches it may read,"
        " write and delete [auth.allow_unauthenticated_network; env"
        " APPLIANCE_AUTH_ALLOW_UNAUTHENTICATED_NETWORK; default False]",
    )
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..lifecycle import serve

    overrides = {name: getattr(args, name) for name in SERVE_FLAGS.values()}
    if args.without_auth:
        overrides["auth.enabled"] = False
    if args.allow_unauthenticated_network:
        overrides["auth.allow_unauthenticated_network"] = True
    return serve(config.load(args.config, overrides), lambda: config.load(args.config, overrides))
