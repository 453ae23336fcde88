"""Connection: the paho client (credentials, TLS, CONNECT properties), reconnects with jitter, and its callbacks.

The callbacks run on paho's network thread: a message goes to the batcher (which may block it,
back-pressure), a connect subscribes every route, a disconnect starts a new session so that
acks still owed to the old connection are never sent. QoS 2 is subscribed as QoS 1 on this
last hop: paho answers a QoS 2 PUBLISH with PUBREC before the application sees it, which would
let a crash lose it. At QoS 1 the PUBACK waits for the commit, and duplicates are removed by
point identity.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..backoff import backoff_delay
from ..config import MQTT_SCHEMES, MqttSettings
from ..errors import ConfigError
from .batcher import Batcher
from .messages import RateLimitedLog
from .routes import Router

log = logging.getLogger("appliance.mqtt")


class Backoff:
    """Reconnect delays: exponential with jitter, reset after a successful connection."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, max(high, low)
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        self.attempt += 1
        return backoff_delay(self.attempt - 1, self.low, self.high)

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self.attempt = 0


class ReconnectingClient(paho.Client):
    """paho's client with jittered reconnect delays (its own are exponential without jitter)."""

    backoff: Backoff
    stopping: threading.Event

    def _reconnect_wait(self) -> None:
        if self.stopping.is_set():
            self.disconnect()  # makes paho's loop end instead of retrying at once
            return
        self.stopping.wait(self.backoff.next())


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """A paho callback that logs its exceptions: one escaping would end paho's network thread."""

    def run(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__name__)

    run.__name__ = fn.__name__
    return run


class Connection:
    """One broker connection: made (and its TLS files and password checked) at once, started by `start`."""

    def __init__(
        self,
        config: MqttSettings,
        router: Router,
        batcher: Batcher,
        stopping: threading.Event,
        rate_limited_log: RateLimitedLog,
    ) -> None:
        """ConfigError for a password file or TLS files that cannot be read; nothing connects yet."""
        self.config = config
        self.router, self.routes, self.batcher = router, router.routes, batcher
        self.url = urllib.parse.urlsplit(config.broker)
        self.connected = False
        self.last_error: str | None = None
        self._stopping = stopping
        self._rate_limited_log = rate_limited_log
        self._session = 0
        self.client = self._make_client()

    def _make_client(self) -> ReconnectingClient:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = ReconnectingClient(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.backoff = Backoff(cfg.reconnect_min / 1e9, cfg.reconnect_max / 1e9)
        client.stopping = self._stopping
        password = self._password()
        if cfg.username or password:
            client.username_pw_set(cfg.username or None, password or None)
        if MQTT_SCHEMES[self.url.scheme.lower()]:
            self._tls(client)
        client.on_connect = guarded(self._on_connect)
        client.on_connect_fail = guarded(self._on_connect_fail)
        client.on_disconnect = guarded(self._on_disconnect)
        client.on_subscribe = guarded(self._on_subscribe)
        client.on_message = guarded(self._on_message)
        return client

    def _tls(self, client: paho.Client) -> None:
        cfg = self.config
        try:
            client.tls_set(
                ca_certs=cfg.tls_ca or None,
                certfile=cfg.tls_cert or None,
                keyfile=cfg.tls_key or None,
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"mqtt.tls_ca/tls_cert/tls_key ({cfg.tls_ca or 'system CAs'}, {cfg.tls_cert or '-'},"
                f" {cfg.tls_key or '-'}): cannot load them: {e}"
            ) from None
        client.tls_insecure_set(cfg.tls_insecure)

    def _password(self) -> str:
        cfg = self.config
        if cfg.password or not cfg.password_file:
            return cfg.password
        try:
            return Path(cfg.password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise ConfigError(
                f"mqtt.password_file {cfg.password_file}: cannot read a password from it ({e})"
            ) from None

    def start(self) -> None:
        """Start connecting in the background (paho's thread); a broker that is down is retried."""
        cfg = self.config
        properties = None
        if cfg.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = min(cfg.session_expiry // 1_000_000_000, 0xFFFFFFFF)
            properties.ReceiveMaximum = min(cfg.max_inflight, 65535)
            properties.MaximumPacketSize = min(cfg.max_pending_bytes + 1024, 268_435_455)
        port = self.url.port or (8883 if MQTT_SCHEMES[self.url.scheme.lower()] else 1883)
        self.client.connect_async(
            self.url.hostname or "127.0.0.1",
            port,
            keepalive=cfg.keepalive // 1_000_000_000,
            clean_start=False if cfg.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect and end paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho's callbacks (its network thread) -------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("MQTT %s", self.last_error)
            return
        self.batcher.next_session()
        self._session += 1
        self.connected = True
        self.client.backoff.reset()
        self.last_error = None
        log.info("MQTT connected to %s (session present: %s)", self.config.broker, flags.session_present)
        if self._session > 1 and not flags.session_present:
            log.warning(
                "MQTT broker kept no session for %s: messages published while disconnected are lost;"
                " enable persistence on the broker (and session_expiry for MQTT 5)",
                self.config.client_id,
            )
        client.subscribe([(r.sub.topic, r.wire_qos) for r in self.routes])

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.last_error = f"cannot connect to {self.config.broker}"
        self._rate_limited_log(f"MQTT {self.last_error}; retrying with backoff")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.batcher.next_session()  # acks still owed to the old connection are never sent
        self._session += 1
        was_connected, self.connected = self.connected, False
        for r in self.routes:
            r.state = "pending"
        if was_connected and not self._stopping.is_set():  # else the refusal says more
            self.last_error = f"disconnected from the broker: {reason}"
            log.warning("MQTT %s; reconnecting", self.last_error)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        for route, reason in zip(self.routes, reasons, strict=False):
            if reason.is_failure:
                route.state = "refused"
                self.last_error = f"broker refused subscription {route.sub.topic!r}: {reason}"
                log.error("MQTT %s", self.last_error)
            elif reason.value < route.wire_qos:
                route.state = "downgraded"
                self.last_error = (
                    f"broker granted QoS {reason.value} for {route.sub.topic!r}: messages may be lost"
                )
                log.error("MQTT %s", self.last_error)
            else:
                route.state = "subscribed"

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic = msg._topic.decode("utf-8", "replace")  # msg.topic raises on invalid UTF-8
        self.batcher.offer(self.router.match(topic), topic, bytes(msg.payload), msg.mid, msg.qos)
