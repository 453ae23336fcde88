"""`config sample` and `config check`: every setting with its default, or with its effective value."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .settings import SETTINGS, Config
from .subscriptions import Subscription


def describe(config: Config) -> list[tuple[str, str, str]]:
    """Each setting as (name, effective value, source), for `config check` and logs."""
    rows = []
    for s in SETTINGS:
        value = s.value(config)
        shown = "(set, hidden)" if s.secret and value else repr(value)
        rows.append((s.name, shown, config.sources[s.name]))
    for i, sub in enumerate(config.mqtt.subscriptions, 1):
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
