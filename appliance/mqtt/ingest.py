"""MqttIngest: subscribe to a broker and write what sensors publish through WriteService.

Flow: paho's network thread receives a message and queues it (blocking, and so no longer
reading the socket, while `max_inflight` messages or `max_pending_bytes` are uncommitted:
back-pressure reaches the broker, which keeps the rest queued). One batcher thread turns
everything queued into one write per database, submits it, and once the WAL commit that
holds a batch is durable, acknowledges its QoS 1 messages in arrival order (paho's manual
ack). A kill before the ack makes the broker redeliver; the point's identity (table, tags,
time) makes the second copy overwrite the first.

QoS 2 is subscribed as QoS 1 on this last hop: paho answers a QoS 2 PUBLISH with PUBREC
before the application sees it, which would let a crash lose it. At QoS 1 the PUBACK waits
for the commit, and duplicates are removed by point identity, so storage is exactly-once.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pyarrow as pa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..backoff import backoff_delay
from ..config import MQTT_SCHEMES, Config, Subscription
from ..errors import ApplianceError, ConfigError, WalError
from ..model import Precision
from ..write import WriteRequest, WriteService
from .payload import NO_MEASUREMENT, JsonOptions, PayloadError, TopicParsing, json_to_lines, retag_lines

log = logging.getLogger("appliance.mqtt")

#: Most messages and payload bytes the batcher turns into one write.
BATCH_MESSAGES = 10_000
BATCH_BYTES = 8 * 1024 * 1024
#: Rows kept in system.mqtt_errors, and payload bytes kept per row.
ERRORS_KEPT = 1000
PAYLOAD_HEAD = 64
#: At most this many error lines per minute reach the log; the rest are only counted.
LOG_ERRORS_PER_MINUTE = 20
#: Pause before retrying a write the WAL or the buffer refused (full, behind).
RETRY_SECONDS = 1.0
#: Longest stop() waits for queued messages to be committed and acknowledged.
STOP_SECONDS = 10.0


@dataclass
class Route:
    """One subscription, compiled, with its counters."""

    sub: Subscription
    parsing: TopicParsing
    json: JsonOptions | None
    precision: Precision
    state: str = "pending"  # pending, subscribed, refused
    messages: int = 0
    lines: int = 0
    errors: int = 0
    last_message_ns: int | None = None

    @property
    def wire_qos(self) -> int:
        return min(self.sub.qos, 1)


@dataclass
class _Message:
    route: Route
    topic: str
    payload: bytes
    mid: int
    qos: int
    arrival_ns: int
    session: int  # connection number: an ack never goes to a later connection


@dataclass
class _Part:
    """A message's share of one write: its line range in the joined body."""

    msg: _Message
    first_line: int = 0  # in the joined body, 1-based
    span: int = 1  # lines it occupies there (an empty body still takes one)
    lines: int = 0  # lines of data
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def compile_routes(subscriptions: Iterable[Subscription]) -> list[Route]:
    """Check and compile every subscription; ConfigError names the block and the problem."""
    routes = []
    for i, sub in enumerate(subscriptions, 1):
        try:
            parsing = TopicParsing.compile(sub.topic_parsing, sub.topic_tag)
            opts = None
            if sub.format == "json":
                if not (sub.measurement or sub.measurement_key or parsing.gives_measurement):
                    raise ValueError(NO_MEASUREMENT)
                opts = JsonOptions(
                    sub.measurement,
                    sub.measurement_key,
                    sub.tag_keys,
                    sub.field_keys,
                    sub.time_key,
                    sub.time_format,
                )
            precision = Precision.parse(sub.precision, Precision.AUTO)
            _check_filter(sub.topic)
        except ValueError as e:
            raise ConfigError(f"[[mqtt.subscription]] number {i} (topic {sub.topic!r}): {e}") from None
        routes.append(Route(sub, parsing, opts, precision))
    return routes


def _check_filter(topic: str) -> None:
    levels = topic.split("/")
    for n, level in enumerate(levels):
        if ("#" in level and (level != "#" or n != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ValueError("'+' must be a whole level and '#' the whole last level, e.g. sensors/+/temp/#")


class Backoff:
    """Reconnect delays: exponential with jitter, reset after a successful connection."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, max(high, low)
        self.attempt = 0

    def next(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt - 1, self.low, self.high)

    def reset(self) -> None:
        self.attempt = 0


class _Client(paho.Client):
    """paho's client with jittered reconnect delays (its own are exponential without jitter)."""

    backoff: Backoff
    stopping: threading.Event

    def _reconnect_wait(self) -> None:
        self.stopping.wait(self.backoff.next())


class MqttIngest:
    """The MQTT client, its batcher thread and the state `/health` and system tables show."""

    def __init__(self, config: Config, clock: Callable[[], int] = time.time_ns) -> None:
        """Check the subscriptions and credentials (ConfigError); nothing starts yet."""
        self.config = config
        self.writes: WriteService | None = None
        self.clock = clock
        self.routes = compile_routes(config.mqtt_subscriptions)
        self.url = urllib.parse.urlsplit(config.mqtt_broker)
        self.connected = False
        self.last_error: str | None = None
        self.errors: collections.deque[tuple[int, str, str, bytes]] = collections.deque(maxlen=ERRORS_KEPT)
        self._session = 0
        self._queue: collections.deque[_Message] = collections.deque()
        self._inflight = 0
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._acked: Future[None] = _done()
        self._log_window = (0.0, 0)
        self._client = self._make_client()
        self._batcher = threading.Thread(target=self._run_batcher, name="mqtt-batcher", daemon=True)

    # -- connection ------------------------------------------------------------------------
    def _make_client(self) -> _Client:
        cfg = self.config
        v5 = cfg.mqtt_protocol == "5"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.mqtt_client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.backoff = Backoff(cfg.mqtt_reconnect_min / 1e9, cfg.mqtt_reconnect_max / 1e9)
        client.stopping = self._stopping
        password = self._password()
        if cfg.mqtt_username or password:
            client.username_pw_set(cfg.mqtt_username or None, password or None)
        if MQTT_SCHEMES[self.url.scheme.lower()]:
            client.tls_set(
                ca_certs=cfg.mqtt_tls_ca or None,
                certfile=cfg.mqtt_tls_cert or None,
                keyfile=cfg.mqtt_tls_key or None,
            )
            client.tls_insecure_set(cfg.mqtt_tls_insecure)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _password(self) -> str:
        cfg = self.config
        if cfg.mqtt_password or not cfg.mqtt_password_file:
            return cfg.mqtt_password
        try:
            return Path(cfg.mqtt_password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise ConfigError(
                f"mqtt.password_file {cfg.mqtt_password_file}: cannot read a password from it ({e})"
            ) from None

    def start(self, writes: WriteService) -> None:
        """Start connecting in the background: a broker that is down does not stop the server."""
        self.writes = writes
        cfg = self.config
        properties = None
        if cfg.mqtt_protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = min(cfg.mqtt_session_expiry // 1_000_000_000, 0xFFFFFFFF)
            properties.ReceiveMaximum = min(cfg.mqtt_max_inflight, 65535)
        port = self.url.port or (8883 if MQTT_SCHEMES[self.url.scheme.lower()] else 1883)
        self._client.connect_async(
            self.url.hostname or "127.0.0.1",
            port,
            keepalive=max(1, cfg.mqtt_keepalive // 1_000_000_000),
            clean_start=False if cfg.mqtt_protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._batcher.start()
        self._client.loop_start()
        log.info(
            "MQTT connecting to %s as %s, %d subscription(s)",
            self.config.mqtt_broker,
            cfg.mqtt_client_id,
            len(self.routes),
        )

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("MQTT %s", self.last_error)
            return
        with self._cond:
            self._session += 1
            self.connected = True
        self._client.backoff.reset()
        self.last_error = None
        log.info("MQTT connected to %s (session present: %s)", self.config.mqtt_broker, flags.session_present)
        client.subscribe([(r.sub.topic, r.wire_qos) for r in self.routes])

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.last_error = f"cannot connect to {self.config.mqtt_broker}"
        self._rate_limited_log(f"MQTT {self.last_error}; retrying with backoff")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self._session += 1  # acks still owed to the old connection are never sent
            was_connected, self.connected = self.connected, False
            self._cond.notify_all()
        for r in self.routes:
            r.state = "pending"
        if was_connected and not self._stopping.is_set():  # else the refusal says more
            self.last_error = f"disconnected from the broker: {reason}"
            log.warning("MQTT %s; reconnecting", self.last_error)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        for route, reason in zip(self.routes, reasons, strict=False):
            route.state = "refused" if reason.is_failure else "subscribed"
            if reason.is_failure:
                self.last_error = f"broker refused subscription {route.sub.topic!r}: {reason}"
                log.error("MQTT %s", self.last_error)

    # -- receiving -------------------------------------------------------------------------
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        route = self._route(msg.topic)
        with self._cond:
            session = self._session
            while (
                self._inflight >= self.config.mqtt_max_inflight
                or self._pending_bytes >= self.config.mqtt_max_pending_bytes
            ) and not self._stopping.is_set():
                self._cond.wait(0.5)  # back-pressure: the network thread stops reading
            if self._stopping.is_set():
                return  # unacknowledged: the broker sends it again after the restart
            if route is None:
                return  # not ours (an old session's subscription): unacknowledged, never stored
            self._inflight += 1
            self._pending_bytes += len(msg.payload)
            self._queue.append(
                _Message(route, msg.topic, bytes(msg.payload), msg.mid, msg.qos, self.clock(), session)
            )
            self._cond.notify_all()

    def _route(self, topic: str) -> Route | None:
        return next((r for r in self.routes if paho.topic_matches_sub(r.sub.topic, topic)), None)

    def _run_batcher(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping.is_set())
                if not self._queue:
                    return
                batch: list[_Message] = []
                size = 0
                while self._queue and len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
                    batch.append(self._queue.popleft())
                    size += len(batch[-1].payload)
            try:
                self._write(batch)
            except _Abandoned:
                self._release(batch)
            except Exception:  # a bug here must not stop ingestion: the messages stay unacknowledged
                log.exception("MQTT batch of %d messages failed", len(batch))
                self._release(batch)

    def _write(self, batch: list[_Message]) -> None:
        """Submit one write per (database, precision); ack the batch once all are committed."""
        groups: dict[tuple[str, Precision], tuple[list[_Part], list[bytes]]] = {}
        for msg in batch:
            precision = msg.route.precision if msg.route.json is None else Precision.NS
            parts, bodies = groups.setdefault((msg.route.sub.database, precision), ([], []))
            part, body = self._convert(msg)
            part.first_line = parts[-1].first_line + parts[-1].span if parts else 1
            parts.append(part)
            bodies.append(body)
        futures = []
        for (db, precision), (parts, bodies) in groups.items():
            committed = self._submit(db, precision, b"\n".join(bodies), parts)
            if committed is not None:
                futures.append(committed)
        done: Future[None] = Future()
        previous, self._acked = self._acked, done

        def finish(ok: bool) -> None:  # runs on the WAL writer thread, in commit order
            try:
                self._finish([p for parts, _ in groups.values() for p in parts], ok)
            finally:
                done.set_result(None)

        _when_all([previous, *futures], finish)

    def _convert(self, msg: _Message) -> tuple[_Part, bytes]:
        """A message as line protocol lines (its topic parsed into tags), with its own errors."""
        route = msg.route
        try:
            measurement, tags = route.parsing.apply(msg.topic)
        except PayloadError as e:
            return _Part(msg, errors=[str(e)]), b""
        if route.json is not None:
            body, errors = json_to_lines(msg.payload, route.json, measurement, tags, msg.arrival_ns)
        else:
            body, errors = retag_lines(msg.payload, measurement, tags), []
        body = body.rstrip(b"\n")
        lines = sum(1 for line in body.split(b"\n") if line.strip() and not line.lstrip().startswith(b"#"))
        return _Part(msg, span=body.count(b"\n") + 1, lines=lines, errors=list(errors)), body

    def _submit(self, db: str, precision: Precision, body: bytes, parts: list[_Part]) -> Future[Any] | None:
        """Write one joined body; per-line errors go back to the message that held the line."""
        assert self.writes is not None, "start() first"
        while True:
            try:
                report = self.writes.submit(WriteRequest(db, body, precision))
                break
            except WalError as e:  # buffer or disk full: keep the messages, hold the broker back
                self.last_error = e.message
                self._rate_limited_log(f"MQTT write to {db!r} waits: {e.message}")
                if self._stopping.wait(RETRY_SECONDS):
                    raise _Abandoned from None
            except ApplianceError as e:  # the database cannot take it (bad name, a limit)
                for p in parts:
                    p.errors.append(e.message)
                    p.rejected = p.lines
                self._record(parts)
                return None
        starts = [p.first_line for p in parts]
        for err in report.errors:
            part = parts[bisect.bisect_right(starts, err.line_number) - 1]
            part.rejected += 1
            part.errors.append(f"line {err.line_number - part.first_line + 1}: {err.error_message}")
        self._record(parts)
        return report.committed

    def _record(self, parts: list[_Part]) -> None:
        """Count, log (rate-limited) and keep in system.mqtt_errors every message with errors."""
        for p in parts:
            if not p.errors:
                continue
            reason = "; ".join(p.errors[:3]) + (
                f"; and {len(p.errors) - 3} more" if len(p.errors) > 3 else ""
            )
            self.errors.append((p.msg.arrival_ns, p.msg.topic, reason, p.msg.payload[:PAYLOAD_HEAD]))
            self._rate_limited_log(f"MQTT message on {p.msg.topic!r} rejected in part: {reason}")

    def _finish(self, parts: list[_Part], committed: bool) -> None:
        """Acknowledge the messages whose data is now durable, count them and free their slots."""
        if not committed:
            log.error("MQTT: a WAL commit failed; %d messages stay unacknowledged", len(parts))
            self._release([p.msg for p in parts])
            return
        with self._cond:
            session = self._session
        for p in sorted(parts, key=lambda p: p.msg.arrival_ns):
            route = p.msg.route
            route.messages += 1
            route.lines += p.lines - p.rejected
            route.errors += bool(p.errors)
            route.last_message_ns = p.msg.arrival_ns
            if p.msg.qos and p.msg.session == session:
                self._client.ack(p.msg.mid, p.msg.qos)
        self._release([p.msg for p in parts])

    def _release(self, batch: list[_Message]) -> None:
        with self._cond:
            self._inflight -= len(batch)
            self._pending_bytes -= sum(len(m.payload) for m in batch)
            self._cond.notify_all()

    def _rate_limited_log(self, text: str) -> None:
        start, count = self._log_window
        now = time.monotonic()
        if now - start > 60:
            if count > LOG_ERRORS_PER_MINUTE:
                log.warning(
                    "MQTT: %d more errors in the last minute were not logged", count - LOG_ERRORS_PER_MINUTE
                )
            start, count = now, 0
        count += 1
        self._log_window = (start, count)
        if count <= LOG_ERRORS_PER_MINUTE:
            log.warning("%s", text)

    # -- stopping and state ----------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading, commit and acknowledge what was received, then disconnect."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._batcher.join(STOP_SECONDS)
        try:
            self._acked.result(STOP_SECONDS)
        except TimeoutError:
            log.warning("MQTT: stopping before every commit was acknowledged; the broker will redeliver")
        self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT stopped")

    def health(self) -> dict[str, Any]:
        """The MQTT part of /health: degraded while disconnected or a subscription is refused."""
        ok = self.connected and all(r.state == "subscribed" for r in self.routes)
        return {
            "status": "ok" if ok else "degraded",
            "broker": self.config.mqtt_broker,
            "connected": self.connected,
            "inflight": self._inflight,
            "error": self.last_error,
        }

    def system_tables(self, database: str) -> dict[str, pa.Table]:
        """`mqtt_subscriptions` and `mqtt_errors` (every subscription, whichever database)."""
        routes = self.routes
        errors = list(self.errors)
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


class _Abandoned(Exception):
    """Stopping while a write waited for room: its messages stay unacknowledged."""


def _done() -> Future[None]:
    f: Future[None] = Future()
    f.set_result(None)
    return f


def _when_all(futures: list[Future[Any]], then: Callable[[bool], None]) -> None:
    """Call `then(all succeeded)` once, when the last of `futures` completes."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then(all(not f.cancelled() and f.exception() is None for f in futures))

    for f in futures:
        f.add_done_callback(one_done)
