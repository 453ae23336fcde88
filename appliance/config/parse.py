"""Value parsers of settings: each takes a TOML, environment or flag value and returns the typed one.

A parser raises ValueError (or TypeError) with a message naming what was expected; load() adds the
setting's name and where the value came from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..log import parse_filter
from ..units import parse_duration_ns, parse_size

#: Broker URL schemes: Mosquitto's and Telegraf's spellings; the value says whether TLS is on.
MQTT_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True, "tls": True}


def path(v: Any) -> str:
    """A file system path, with ~ expanded."""
    return str(Path(str(v)).expanduser())


def path_or_empty(v: Any) -> str:
    """A path, or "" for none."""
    return path(v) if str(v).strip() else ""


def boolean(v: Any) -> bool:
    """A TOML boolean, or true/false, yes/no, on/off, 1/0 as text."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def positive_int(v: Any) -> int:
    """An integer above 0."""
    n = int(v)
    if n <= 0:
        raise ValueError(f"must be a positive integer, got {v!r}")
    return n


def positive_duration(v: Any) -> int:
    """A duration above 0, in nanoseconds."""
    ns = parse_duration_ns(v)
    if ns <= 0:
        raise ValueError(f"must be more than 0, got {v!r}")
    return ns


def positive_size(v: Any) -> int:
    """A size above 0, in bytes."""
    n = parse_size(v)
    if n <= 0:
        raise ValueError(f"must be more than 0, got {v!r}")
    return n


def gen1(v: Any) -> int:
    """The Parquet time window: a duration of at least 1 s, in nanoseconds."""
    ns = parse_duration_ns(v)
    if ns < 1_000_000_000:
        raise ValueError(f"must be at least 1s, got {v!r}")
    return ns


def seconds_between(low: int, high: int) -> Callable[[Any], int]:
    """A duration of whole seconds within [low, high] (MQTT carries them in 16 or 32 bits)."""

    def parse(v: Any) -> int:
        ns = parse_duration_ns(v)
        if not low <= ns // 1_000_000_000 <= high or ns % 1_000_000_000:
            raise ValueError(f"must be whole seconds between {low}s and {high}s, got {v!r}")
        return ns

    return parse


def bind(v: Any) -> str:
    """HOST:PORT to listen on."""
    host, sep, port = str(v).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    return str(v)


def str_list(v: Any) -> tuple[str, ...]:
    """A TOML list of strings, or one string of comma-separated items (environment, flags)."""
    items = v if isinstance(v, list | tuple) else str(v).split(",")
    if not all(isinstance(x, str) for x in items):
        raise ValueError(f"expected a list of strings, got {v!r}")
    return tuple(x.strip() for x in items if x.strip())


def origins(v: Any) -> tuple[str, ...]:
    """Web origins (scheme://host[:port], lower case, no trailing slash), or "*"."""
    found = tuple(o.rstrip("/").lower() for o in str_list(v))
    for o in found:
        scheme, sep, host = o.partition("://")
        if o != "*" and (scheme not in ("http", "https") or not sep or not host or "/" in host):
            raise ValueError(f"expected origins like https://dash.example:3000 (or *), got {o!r}")
    return found


def hosts(v: Any) -> tuple[str, ...]:
    """Host names without a port, lower case."""
    found = tuple(h.lower() for h in str_list(v))
    for h in found:
        if not all(c.isalnum() or c in "-._" for c in h):  # IP addresses are always accepted
            raise ValueError(f"expected host names without a port, like gateway.lan, got {h!r}")
    return found


def disable_authz(v: Any) -> tuple[str, ...]:
    """Endpoints opened without a token: a sorted subset of health, ping and metrics."""
    items = tuple(sorted({x.strip().lower() for x in str(v).split(",") if x.strip()}))
    unknown = set(items) - {"health", "ping", "metrics"}
    if unknown:
        raise ValueError(f"unknown endpoint(s) {', '.join(sorted(unknown))}: use health, ping or metrics")
    return items


def package_manager(v: Any) -> str:
    """pip or disabled."""
    s = str(v).strip().lower()
    if s not in ("pip", "disabled"):
        raise ValueError(f"expected pip or disabled, got {v!r}")
    return s


def log_format(v: Any) -> str:
    """text or json."""
    s = str(v).strip().lower()
    if s not in ("text", "json"):
        raise ValueError(f"expected text or json, got {v!r}")
    return s


def log_filter(v: Any) -> str:
    """A log filter as log.parse_filter reads it, kept as text."""
    s = str(v).strip()
    try:
        parse_filter(s)
    except ConfigError as e:
        raise ValueError(e.message) from None
    return s


def endpoint(v: Any) -> str:
    """An S3 endpoint URL without credentials or trailing slash, or "" for AWS."""
    s = str(v).strip().rstrip("/")
    if s and not (s.startswith("http://") or s.startswith("https://")):
        raise ValueError(f"expected http://HOST:PORT or https://HOST, got {v!r}")
    if "@" in s:
        raise ValueError("put the credentials in the environment or sync.credentials_file, not in the URL")
    return s


def prefix(v: Any) -> str:
    """A key prefix without leading or trailing slashes."""
    return str(v).strip().strip("/")


def broker(v: Any) -> str:
    """An MQTT broker URL (a scheme of MQTT_SCHEMES, a host, maybe a port), or "" for none."""
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


def mqtt_protocol(v: Any) -> str:
    """3.1.1 or 5, from the spellings people use (v5, 5.0, 311...)."""
    s = str(v).strip().lower().removeprefix("v")
    if s in ("3.1.1", "311", "3"):
        return "3.1.1"
    if s in ("5", "5.0"):
        return "5"
    raise ValueError(f"expected 3.1.1 or 5, got {v!r}")


def tls_version(v: Any) -> str:
    """A TLS version: 1.2 or 1.3, from the spellings people use (tls-1.3 as influxdb3, TLSv1.3)."""
    s = str(v).strip().lower().removeprefix("tls").lstrip("v-_ ")
    if s not in ("1.2", "1.3"):
        raise ValueError(f"expected 1.2 or 1.3 (older TLS versions are not offered), got {v!r}")
    return s
