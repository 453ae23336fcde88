"""load(): the effective Config from defaults, the config file, the environment and flags.

Precedence, highest first: command-line flag, `APPLIANCE_<SECTION>_<KEY>` environment
variable, the config file, the default. Checks that span sections run here, once every
setting is parsed.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .settings import BY_NAME, SECTIONS, SETTINGS, Config
from .subscriptions import Subscription, subscriptions

DEFAULT_CONFIG_PATHS = (Path("/etc/appliance/config.toml"),)


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
    subs: tuple[Subscription, ...] = ()
    if file_path is not None:
        settings, subs = _read_file(file_path)
        for name, value in settings.items():
            raw[name] = (value, f"file {file_path}")
    for s in SETTINGS:
        if s.env in environ:
            raw[s.name] = (environ[s.env], f"env {s.env}")
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in BY_NAME:
                raise ConfigError(f"unknown setting {name!r}")
            raw[name] = (value, "flag")
    values = _parse(raw)
    _derive(values)
    _check(values, subs)
    values["mqtt"]["subscriptions"] = subs
    sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
    return Config(**sections, sources={name: src for name, (_, src) in raw.items()})


def _parse(raw: dict[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    """Each setting's parsed value, by section and key; an error names the setting and its source."""
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for s in SETTINGS:
        value, source = raw[s.name]
        try:
            values[s.section][s.key] = s.parse(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"setting {s.name} (from {source}): {e}") from None
    return values


def _derive(values: dict[str, dict[str, Any]]) -> None:
    """Fill the defaults that depend on other settings (or on the host)."""
    server, engine, mqtt = values["server"], values["engine"], values["mqtt"]
    if not engine["plugin_dir"]:
        engine["plugin_dir"] = str(Path(server["data_dir"]) / "plugins")
    if not server["node_id"]:
        server["node_id"] = socket.gethostname().split(".")[0] or "node"
    _check_node_id(server["node_id"])
    if not mqtt["client_id"]:
        mqtt["client_id"] = f"appliance-{server['node_id']}"


def _check(values: dict[str, dict[str, Any]], subs: tuple[Subscription, ...]) -> None:
    """The rules that span settings: each names the settings to change."""
    http, sync = values["http"], values["sync"]
    if sync["endpoint"].startswith("http://") and not sync["allow_http"]:
        raise ConfigError(
            f"sync.endpoint {sync['endpoint']} is plain http: set sync.allow_http = true"
            " (a local MinIO) or use https://"
        )
    if http["max_buffered_bytes"] < http["max_request_size"]:
        raise ConfigError(
            f"http.max_buffered_bytes ({http['max_buffered_bytes']}) is smaller than http.max_request_size"
            f" ({http['max_request_size']}): one body must fit; raise it or lower max_request_size"
        )
    if bool(http["tls_cert"]) != bool(http["tls_key"]):
        raise ConfigError(
            "http.tls_cert and http.tls_key go together: set both (the certificate file and its private"
            " key) for HTTPS, or neither for plain HTTP"
        )
    if subs and not values["mqtt"]["broker"]:
        raise ConfigError("[[mqtt.subscription]] blocks are set but mqtt.broker is empty: set the broker URL")


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
    subs: tuple[Subscription, ...] = ()
    for section, body in doc.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
        for key, value in body.items():
            name = f"{section}.{key}"
            if name == "mqtt.subscription":
                subs = subscriptions(path, value)
            elif name in BY_NAME:
                out[name] = value
            else:
                raise ConfigError(f"{path}: unknown setting {name!r}")
    return out, subs


def _check_node_id(node_id: str) -> None:
    if not node_id or any(not (c.isalnum() or c in "-_.") for c in node_id):
        raise ConfigError(
            f"setting server.node_id: {node_id!r} may only hold letters, digits, '-', '_' and '.'"
        )
