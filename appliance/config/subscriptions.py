"""`[[mqtt.subscription]]` blocks: what to subscribe to and how to read its payloads, validated."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError


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


def subscriptions(path: Path, blocks: Any) -> tuple[Subscription, ...]:
    """Validate the `[[mqtt.subscription]]` array of tables; errors name the block and key."""
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{path}: mqtt.subscription must be an array of tables: [[mqtt.subscription]]")
    return tuple(
        _subscription(f"{path}: [[mqtt.subscription]] number {i}", b) for i, b in enumerate(blocks, 1)
    )


def _subscription(where: str, block: dict[str, Any]) -> Subscription:
    known = {f.name for f in fields(Subscription)}
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
    return Subscription(**values)
