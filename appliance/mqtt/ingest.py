"""MqttIngest: subscribe to a broker and write what sensors publish through WriteService.

The component is three parts, in the order a message meets them: routes.py (which
subscription a topic belongs to), client.py (the paho connection, its TLS and reconnects,
feeding the batcher from paho's network thread) and batcher.py (one write per database per
batch; each QoS 1 message acknowledged only once the WAL commit that holds it is durable, in
arrival order). A kill before the ack makes the broker redeliver; the point's identity
(table, tags, time) makes the second copy overwrite the first, when the lines carry their own
timestamps. This module holds them together: start, stop, /health and the system tables.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ..config import MqttSettings
from ..errors import ConfigError
from ..metrics import Registry
from ..write import WriteService
from .batcher import Batcher
from .client import Connection
from .messages import RateLimitedLog, RejectRow
from .routes import Route, Router, compile_routes

log = logging.getLogger("appliance.mqtt")


class MqttIngest:
    """The MQTT client, its batcher loop and the state `/health` and system tables show."""

    name = "mqtt"

    def __init__(self, config: MqttSettings, clock: Callable[[], int] = time.time_ns) -> None:
        """Check the subscriptions, credentials and TLS files (ConfigError); nothing starts yet."""
        self.config = config
        self.routes: list[Route] = compile_routes(config.subscriptions)
        if not self.routes:
            raise ConfigError("mqtt.broker is set but there is no [[mqtt.subscription]] block: add one")
        self._stopping = threading.Event()
        rate_limited_log = RateLimitedLog()
        self.batcher = Batcher(
            config.max_inflight, config.max_pending_bytes, self._stopping, rate_limited_log, clock
        )
        self.connection = Connection(
            config, Router(self.routes), self.batcher, self._stopping, rate_limited_log
        )
        self.batcher.ack = lambda mid, qos: self.connection.client.ack(mid, qos)
        self.writes: WriteService | None = None  # set by bind() before start()

    def bind(self, writes: WriteService) -> None:
        """Give the component the write path it feeds (built after the config is checked)."""
        self.writes = writes

    @property
    def connected(self) -> bool:
        """Connected to the broker now."""
        return self.connection.connected

    @property
    def unrouted(self) -> int:
        """Messages no subscription matched."""
        return self.batcher.rejects.unrouted

    @property
    def errors(self) -> collections.deque[RejectRow]:
        """The rows of system.mqtt_errors: (time ns, topic, reason, payload head)."""
        return self.batcher.rejects.errors

    def start(self) -> None:
        """Start connecting in the background: a broker that is down does not stop the server."""
        assert self.writes is not None, "bind(writes) comes before start()"
        self.batcher.start(self.writes)
        self.connection.start()
        log.info(
            "MQTT connecting to %s as %s, %d subscription(s)",
            self.config.broker,
            self.config.client_id,
            len(self.routes),
        )

    def stop(self) -> None:
        """Stop reading, commit and acknowledge what was received, then disconnect."""
        self._stopping.set()
        self.batcher.stop()
        self.connection.stop()
        log.info("MQTT stopped")

    def health(self) -> dict[str, Any]:
        """The MQTT part of /health: degraded while disconnected, refused, or not reading for long;
        failed when the batcher loop died."""
        write_error = self.batcher.write_error
        blocked = self.batcher.blocked_since
        stalled = blocked is not None and time.monotonic() - blocked > self.config.keepalive / 1e9
        ok = (
            self.connected
            and not stalled
            and not write_error
            and all(r.state == "subscribed" for r in self.routes)
        )
        error = self.connection.last_error or write_error
        if stalled:
            error = f"not reading from the broker for longer than the keepalive: {write_error or 'writes are slow'}"
        status = "ok" if ok else "degraded"
        loop = self.batcher.loop.health()
        if loop["status"] != "ok":
            status, error = ("failed" if loop["status"] == "failed" else "degraded"), loop["error"]
        return {
            "status": status,
            "connected": self.connected,
            "inflight": self.batcher.inflight,
            "unrouted_messages": self.unrouted,
            "error": error,
        }

    def register_metrics(self, registry: Registry) -> None:
        """The MQTT gauges /metrics reads when scraped."""
        registry.gauge(
            "appliance_mqtt_connected", "1 while connected to the broker.", lambda: float(self.connected)
        )
        registry.gauge(
            "appliance_mqtt_inflight_messages",
            "Messages received and not yet committed.",
            lambda: self.health()["inflight"],
        )
        registry.gauge(
            "appliance_mqtt_unrouted_messages_total",
            "Messages no subscription matched.",
            lambda: self.unrouted,
            kind="counter",
        )
        for attr, help in (
            ("messages", "Messages written, by subscription."),
            ("lines", "Lines stored, by subscription."),
            ("errors", "Messages with rejected content, by subscription."),
        ):
            registry.gauge(
                f"appliance_mqtt_{attr}_total",
                help,
                lambda attr=attr: [((r.sub.topic,), getattr(r, attr)) for r in self.routes],  # type: ignore[misc]
                ["subscription"],
                kind="counter",
            )

    def system_tables(self, database: str, every_database: bool) -> dict[str, pa.Table]:
        """`mqtt_subscriptions` and `mqtt_errors`: of every subscription, or only of those that write
        into `database` and of the messages routed to it."""
        routes = [r for r in self.routes if every_database or r.sub.database == database]
        errors = [e for e in self.errors if every_database or e[4] == database]
        return {
            "mqtt_subscriptions": pa.table(
                {
                    "topic": pa.array([r.sub.topic for r in routes], pa.string()),
                    "database": pa.array([r.sub.database for r in routes], pa.string()),
                    "format": pa.array([r.sub.format for r in routes], pa.string()),
                    "qos": pa.array([r.sub.qos for r in routes], pa.int64()),
                    "state": pa.array([r.state for r in routes], pa.string()),
                    "messages": pa.array([r.messages for r in routes], pa.uint64()),
                    "lines": pa.array([r.lines for r in routes], pa.uint64()),
                    "errors": pa.array([r.errors for r in routes], pa.uint64()),
                    "last_message_time": pa.array([r.last_message_ns for r in routes], pa.timestamp("ns")),
                }
            ),
            "mqtt_errors": pa.table(
                {
                    "time": pa.array([e[0] for e in errors], pa.timestamp("ns")),
                    "topic": pa.array([e[1] for e in errors], pa.string()),
                    "reason": pa.array([e[2] for e in errors], pa.string()),
                    "payload": pa.array([e[3].decode("utf-8", "replace") for e in errors], pa.string()),
                }
            ),
        }
