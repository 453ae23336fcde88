"""MqttIngest: subscribe to a broker and write what sensors publish through WriteService.

Flow: paho's network thread receives a message and queues it (blocking, and so no longer
reading the socket, while `max_inflight` messages or `max_pending_bytes` are uncommitted:
back-pressure reaches the broker, which keeps the rest queued). One batcher thread turns
everything queued into one write per database, submits it, and once the WAL commit that
holds a batch is durable, acknowledges its QoS 1 messages in arrival order (paho's manual
ack). A kill before the ack makes the broker redeliver; the point's identity (table, tags,
time) makes the second copy overwrite the first, when the lines carry their own timestamps.

QoS 2 is subscribed as QoS 1 on this last hop: paho answers a QoS 2 PUBLISH with PUBREC
before the application sees it, which would let a crash lose it. At QoS 1 the PUBACK waits
for the commit, and duplicates are removed by point identity.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import logging
import re
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
from ..config import MQTT_SCHEMES, MqttSettings, Subscription
from ..errors import ApplianceError, CatalogError, ConfigError, LimitExceeded, WalError
from ..lineprotocol import parser
from ..model import Precision, strip_bom
from ..storage.catalog import check_database_name
from ..write import WriteRequest, WriteService
from .payload import (
    NO_MEASUREMENT,
    JsonOptions,
    PayloadError,
    Reasons,
    TopicParsing,
    json_to_lines,
    retag_lines,
)

log = logging.getLogger("appliance.mqtt")

#: The start of a line that is neither blank nor a comment.
_DATA_LINE = re.compile(rb"^[ \t\r\v\f]*+[^ \t\r\v\f\n#]", re.MULTILINE)


#: Most messages and payload bytes the batcher turns into one write.
BATCH_MESSAGES = 10_000
BATCH_BYTES = 8 * 1024 * 1024
#: Rows kept in system.mqtt_errors, and payload and topic characters kept per row.
ERRORS_KEPT = 1000
PAYLOAD_HEAD = 64
TOPIC_KEPT = 256
#: At most this many error lines per minute reach the log; the rest are only counted.
LOG_ERRORS_PER_MINUTE = 20
#: Pause before retrying a write the WAL or the buffer refused (full, behind), and once per
#: batch that failed unexpectedly (its halves are then tried at once, down to the one message
#: that fails, which waits this long before each of its attempts).
RETRY_SECONDS = 1.0
#: Times a message that fails alone is written before it is given up.
MAX_ATTEMPTS = 3
#: Topics whose subscription is remembered (the cache starts over when full).
ROUTE_CACHE = 10_000
#: Longest stop() waits for queued messages to be committed and acknowledged.
STOP_SECONDS = 10.0


@dataclass
class Route:
    """One subscription, compiled, with its counters."""

    sub: Subscription
    parsing: TopicParsing
    json: JsonOptions | None
    precision: Precision
    state: str = "pending"  # pending, subscribed, refused, downgraded (granted QoS below asked)
    messages: int = 0
    lines: int = 0
    errors: int = 0
    last_message_ns: int | None = None

    @property
    def wire_qos(self) -> int:
        return min(self.sub.qos, 1)


@dataclass
class _Message:
    route: Route | None  # None: the topic matches no subscription (left in the session)
    topic: str
    payload: bytes
    mid: int
    qos: int
    arrival_ns: int
    seq: int  # arrival order: acknowledgements follow it
    session: int  # connection number: an ack never goes to a later connection
    attempts: int = 0  # unexpected failures while written alone
    retry_at: float = 0.0  # monotonic time before which it is not written again (after a failure)
    group: int = 0  # not 0: part of a failed batch, written only with the messages of its group


@dataclass
class _Part:
    """A message's share of one write: its line range in the joined body."""

    msg: _Message
    first_line: int = 0  # in the joined body, 1-based
    span: int = 1  # lines it occupies there (an empty body still takes one)
    lines: int = 0  # lines of data
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    unlisted: int = 0  # rejected lines past the ones a write describes
    omitted: int = 0  # conversion problems past the MAX_REASONS listed in `errors`


@dataclass
class _Batch:
    """Messages written together; acknowledged once all their commits are durable."""

    parts: list[_Part]
    waiting: int
    ok: bool = True
    done: bool = False


def compile_routes(subscriptions: Iterable[Subscription]) -> list[Route]:
    """Check and compile every subscription; ConfigError names the block and the problem."""
    routes = []
    seen: set[str] = set()
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
            if sub.topic in seen:
                raise ValueError(
                    "the same topic filter is given twice; a message is written once, by the first"
                )
            seen.add(sub.topic)
            check_database_name(sub.database)
        except (ValueError, CatalogError) as e:
            raise ConfigError(f"[[mqtt.subscription]] number {i} (topic {sub.topic!r}): {e}") from None
        routes.append(Route(sub, parsing, opts, precision))
    return routes


def _check_filter(topic: str) -> None:
    if topic.startswith("$share/"):
        raise ValueError("shared subscriptions ($share/...) are not supported: subscribe to the topic itself")
    if "\0" in topic:
        raise ValueError("a topic filter may not contain NUL")
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
        if self.stopping.is_set():
            self.disconnect()  # makes paho's loop end instead of retrying at once
            return
        self.stopping.wait(self.backoff.next())


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """A paho callback that logs its exceptions: one escaping would end paho's network thread."""

    def run(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__name__)

    run.__name__ = fn.__name__
    return run


class MqttIngest:
    """The MQTT client, its batcher thread and the state `/health` and system tables show."""

    def __init__(self, config: MqttSettings, clock: Callable[[], int] = time.time_ns) -> None:
        """Check the subscriptions, credentials and TLS files (ConfigError); nothing starts yet."""
        self.config = config
        self.writes: WriteService | None = None
        self.clock = clock
        self.routes = compile_routes(config.subscriptions)
        if not self.routes:
            raise ConfigError("mqtt.broker is set but there is no [[mqtt.subscription]] block: add one")
        self.url = urllib.parse.urlsplit(config.broker)
        self.connected = False
        self.last_error: str | None = None  # of the connection
        self.write_error: str | None = None  # while writes wait (buffer or disk full, a limit)
        self.unrouted = 0
        self.errors: collections.deque[tuple[int, str, str, bytes]] = collections.deque(maxlen=ERRORS_KEPT)
        self._session = 0
        self._seq = itertools.count()
        self._groups = itertools.count(1)
        self._queue: collections.deque[_Message] = collections.deque()
        self._inflight = 0
        self._pending_bytes = 0
        self._blocked_since: float | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._batches: collections.deque[_Batch] = collections.deque()  # in submission order
        self._ack_lock = threading.Condition()
        self._log_window = (0.0, 0)
        self._routes_by_topic: dict[str, Route | None] = {}
        self._client = self._make_client()
        self._batcher = threading.Thread(target=self._run_batcher, name="mqtt-batcher", daemon=True)

    # -- connection ------------------------------------------------------------------------
    def _make_client(self) -> _Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = _Client(
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
        client.on_connect = _guarded(self._on_connect)
        client.on_connect_fail = _guarded(self._on_connect_fail)
        client.on_disconnect = _guarded(self._on_disconnect)
        client.on_subscribe = _guarded(self._on_subscribe)
        client.on_message = _guarded(self._on_message)
        return client

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

    def start(self, writes: WriteService) -> None:
        """Start connecting in the background: a broker that is down does not stop the server."""
        self.writes = writes
        cfg = self.config
        properties = None
        if cfg.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = min(cfg.session_expiry // 1_000_000_000, 0xFFFFFFFF)
            properties.ReceiveMaximum = min(cfg.max_inflight, 65535)
            properties.MaximumPacketSize = min(cfg.max_pending_bytes + 1024, 268_435_455)
        port = self.url.port or (8883 if MQTT_SCHEMES[self.url.scheme.lower()] else 1883)
        self._client.connect_async(
            self.url.hostname or "127.0.0.1",
            port,
            keepalive=cfg.keepalive // 1_000_000_000,
            clean_start=False if cfg.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._batcher.start()
        self._client.loop_start()
        log.info(
            "MQTT connecting to %s as %s, %d subscription(s)",
            cfg.broker,
            cfg.client_id,
            len(self.routes),
        )

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("MQTT %s", self.last_error)
            return
        with self._cond:
            self._session += 1
            reconnect = self._session > 1
            self.connected = True
        self._client.backoff.reset()
        self.last_error = None
        log.info("MQTT connected to %s (session present: %s)", self.config.broker, flags.session_present)
        if reconnect and not flags.session_present:
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

    # -- receiving -------------------------------------------------------------------------
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic = msg._topic.decode("utf-8", "replace")  # msg.topic raises on invalid UTF-8
        route = self._route(topic)
        with self._cond:
            while (
                self._inflight >= self.config.max_inflight
                or self._pending_bytes >= self.config.max_pending_bytes
            ) and not self._stopping.is_set():
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                self._cond.wait(0.5)  # back-pressure: the network thread stops reading
            self._blocked_since = None
            if self._stopping.is_set():
                return  # unacknowledged: the broker sends it again after the restart
            self._inflight += 1
            self._pending_bytes += len(msg.payload)
            self._queue.append(
                _Message(
                    route,
                    topic,
                    bytes(msg.payload),
                    msg.mid,
                    msg.qos,
                    self.clock(),
                    next(self._seq),
                    self._session,
                )
            )
            self._cond.notify_all()

    def _route(self, topic: str) -> Route | None:
        """The first subscription whose filter matches (cached: devices repeat their topics)."""
        try:
            return self._routes_by_topic[topic]
        except KeyError:
            pass
        route = next((r for r in self.routes if paho.topic_matches_sub(r.sub.topic, topic)), None)
        if len(self._routes_by_topic) >= ROUTE_CACHE:
            self._routes_by_topic.clear()
        self._routes_by_topic[topic] = route
        return route

    def _run_batcher(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping.is_set())
                if not self._queue:
                    return
                batch: list[_Message] = [self._queue.popleft()]
                size = len(batch[0].payload)
                group = batch[0].group
                while (
                    self._queue
                    and self._queue[0].group == group
                    and len(batch) < BATCH_MESSAGES
                    and size < BATCH_BYTES
                ):
                    batch.append(self._queue.popleft())
                    size += len(batch[-1].payload)
            wait = max(m.retry_at for m in batch) - time.monotonic()
            if wait > 0:  # a retry: give what failed a moment (once per failure, not per message)
                self._stopping.wait(wait)
            try:
                try:
                    self._write(batch)
                except _Unwritten:
                    raise
                except Exception as e:  # before anything was submitted
                    raise _Unwritten(batch, False) from e
            except _Unwritten as e:
                if e.abandoned:
                    self._release(e.messages)
                    continue
                if not any(m.group for m in batch):  # once: retries of the same messages stay quiet
                    log.error(
                        "MQTT batch of %d messages failed; writing the %d not yet written again, in"
                        " halves, to find the message that fails",
                        len(batch),
                        len(e.messages),
                        exc_info=e.__cause__,
                    )
                self._retry(e.messages)

    def _retry(self, batch: list[_Message]) -> None:
        """Put a failed batch back at the head of the queue in two halves, each written on its
        own, so that the messages beside a poison message are written after about log2(n) tries;
        a message failing alone is tried MAX_ATTEMPTS times, then recorded and acknowledged."""
        now = time.monotonic()
        if len(batch) > 1:
            pause = 0.0 if batch[0].group else now + RETRY_SECONDS  # one pause per failed batch
            half = len(batch) // 2
            for part in (batch[:half], batch[half:]):
                group = next(self._groups)
                for m in part:
                    m.group, m.retry_at = group, pause
            self._requeue(batch)
            return
        m = batch[0]
        m.attempts += 1
        if m.attempts < MAX_ATTEMPTS:
            m.group, m.retry_at = next(self._groups), now + RETRY_SECONDS
            self._requeue(batch)
            return
        parts = [_Part(m, errors=["internal error while writing it (see the log)"])]
        self._record(parts)
        done = _Batch(parts, 0)
        with self._ack_lock:
            self._batches.append(done)
        self._settle(done)

    def _requeue(self, messages: list[_Message]) -> None:
        with self._cond:
            self._queue.extendleft(sorted(messages, key=lambda m: m.seq, reverse=True))
            self._cond.notify_all()

    def _write(self, batch: list[_Message]) -> None:
        """Submit one write per (database, precision); ack the batch once all are committed.

        A line protocol message whose last record is left open (an unterminated string) is
        written alone, so it cannot swallow the messages joined after it.
        """
        groups: dict[tuple[str, Precision, int], tuple[list[_Part], list[bytes]]] = {}
        loose: list[_Part] = []  # no route or a topic that does not parse: nothing to write
        for msg in batch:
            try:
                part, body = self._convert(msg)
            except Exception as e:  # a bug on one payload: that message alone is recorded as bad
                log.exception("MQTT message on %r could not be converted; recorded as bad", msg.topic)
                part, body = _Part(msg, errors=[f"internal error while converting it: {e!r:.200}"]), b""
            if msg.route is None or not body:
                loose.append(part)
                continue
            precision = msg.route.precision if msg.route.json is None else Precision.NS
            alone = msg.seq if msg.route.json is None and parser.ends_open(body) else -1
            parts, bodies = groups.setdefault((msg.route.sub.database, precision, alone), ([], []))
            part.first_line = parts[-1].first_line + parts[-1].span if parts else 1
            parts.append(part)
            bodies.append(body)
        self._record(loose)
        futures: list[Future[Any]] = []
        written = loose  # recorded or submitted: acknowledged with this batch, never written again
        try:
            for (db, precision, _), (parts, bodies) in groups.items():
                committed = self._submit(db, precision, b"\n".join(bodies), parts)
                written.extend(parts)
                if committed is not None:
                    futures.append(committed)
        except Exception as e:  # the groups already submitted are in the WAL: retry only the rest
            done = {id(p.msg) for p in written}
            raise _Unwritten([m for m in batch if id(m) not in done], isinstance(e, _Abandoned)) from e
        finally:
            if written:
                self._settle_later(written, futures)

    def _settle_later(self, written: list[_Part], futures: list[Future[Any]]) -> None:
        """Acknowledge `written` (in order with earlier batches) once every commit in `futures` is durable."""
        pending = _Batch(written, len(futures))
        with self._ack_lock:
            self._batches.append(pending)
        if not futures:
            self._settle(pending)
        for f in futures:
            f.add_done_callback(functools.partial(self._settle, pending))

    def _convert(self, msg: _Message) -> tuple[_Part, bytes]:
        """A message as line protocol lines (its topic parsed into tags), with its own errors."""
        route = msg.route
        if route is None:
            return _Part(msg), b""
        try:
            measurement, tags = route.parsing.apply(msg.topic)
        except PayloadError as e:
            return _Part(msg, errors=[str(e)]), b""
        if route.json is not None:
            body, errors = json_to_lines(msg.payload, route.json, measurement, tags, msg.arrival_ns)
        else:
            errors = Reasons()
            body = retag_lines(strip_bom(msg.payload), measurement, tags, errors)
        body = body.rstrip(b"\n")
        lines = sum(1 for _ in _DATA_LINE.finditer(body))  # no list of lines: memory stays flat
        span = body.count(b"\n") + 1
        return _Part(msg, span=span, lines=lines, errors=list(errors), omitted=errors.omitted), body

    def _submit(self, db: str, precision: Precision, body: bytes, parts: list[_Part]) -> Future[Any] | None:
        """Write one joined body; per-line errors go back to the message that held the line."""
        assert self.writes is not None, "start() first"
        while True:
            try:
                report = self.writes.submit(WriteRequest(db, body, precision, protocol="mqtt"))
                break
            except (WalError, LimitExceeded) as e:  # full, or a limit: keep them, hold the broker back
                self.write_error = e.message
                self._rate_limited_log(f"MQTT write to {db!r} waits: {e.message}")
                if self._stopping.wait(RETRY_SECONDS):
                    raise _Abandoned from None
            except ApplianceError as e:  # cannot be written as it is
                for p in parts:
                    p.errors.append(e.message)
                    p.rejected = p.lines
                self._record(parts)
                return None
        self.write_error = None
        starts = [p.first_line for p in parts]
        numbers = report.rejected.sorted_numbers()  # every rejected line; the listed ones have text
        for p in parts:
            end = p.first_line + p.span
            p.rejected += bisect.bisect_left(numbers, end) - bisect.bisect_left(numbers, p.first_line)
        listed = [0] * len(parts)
        for err in report.errors:
            i = bisect.bisect_right(starts, err.line_number) - 1
            listed[i] += 1
            parts[i].errors.append(f"line {err.line_number - parts[i].first_line + 1}: {err.error_message}")
        for p, n in zip(parts, listed, strict=True):
            p.unlisted = p.rejected - n
        self._record(parts)
        return report.committed

    def _record(self, parts: list[_Part]) -> None:
        """Count, log (rate-limited) and keep in system.mqtt_errors every message with errors."""
        for p in parts:
            if p.msg.route is None:
                self.unrouted += 1
                self._rate_limited_log(
                    f"MQTT message on {p.msg.topic!r} matches no subscription (left from an earlier"
                    " configuration in the broker's session?); acknowledged and dropped"
                )
                continue
            if not p.errors:
                continue
            more = len(p.errors) - 3 + p.omitted
            reason = "; ".join(p.errors[:3]) + (f"; and {more} more" if more > 0 else "")
            if p.unlisted:
                reason += f"; {p.rejected} lines rejected in all"
            self.errors.append(
                (p.msg.arrival_ns, p.msg.topic[:TOPIC_KEPT], reason, p.msg.payload[:PAYLOAD_HEAD])
            )
            self._rate_limited_log(f"MQTT message on {p.msg.topic!r} rejected in part: {reason}")

    def _settle(self, batch: _Batch, commit: Future[Any] | None = None) -> None:
        """Note one commit of `batch`; acknowledge every finished batch at the head, in order."""
        with self._ack_lock:
            if commit is not None:
                batch.waiting -= 1
                batch.ok = batch.ok and not commit.cancelled() and commit.exception() is None
            if batch.waiting > 0:
                return
            batch.done = True
            while self._batches and self._batches[0].done:
                head = self._batches.popleft()
                try:
                    self._finish(head)
                except Exception:
                    log.exception("MQTT: acknowledging a batch failed")
                    self._release([p.msg for p in head.parts])
            self._ack_lock.notify_all()

    def _finish(self, batch: _Batch) -> None:
        """Acknowledge the messages whose data is now durable, count them and free their slots."""
        messages = [p.msg for p in batch.parts]
        if not batch.ok:
            log.error("MQTT: a WAL commit failed; writing %d messages again", len(messages))
            retry_at = time.monotonic() + RETRY_SECONDS
            for m in messages:
                m.retry_at = retry_at
            self._requeue(messages)
            return
        with self._cond:  # held across the acks: no reconnect can slip in between check and ack
            for p in sorted(batch.parts, key=lambda p: p.msg.seq):
                route = p.msg.route
                if route is not None:
                    route.messages += 1
                    route.lines += p.lines - p.rejected
                    route.errors += bool(p.errors)
                    route.last_message_ns = p.msg.arrival_ns
                if p.msg.qos and p.msg.session == self._session:
                    self._client.ack(p.msg.mid, p.msg.qos)
            self._free(messages)

    def _release(self, batch: list[_Message]) -> None:
        with self._cond:
            self._free(batch)

    def _free(self, messages: list[_Message]) -> None:
        """Give back the messages' in-flight slots and bytes (with _cond held): reading resumes."""
        self._inflight -= len(messages)
        self._pending_bytes -= sum(len(m.payload) for m in messages)
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
        with self._ack_lock:
            if not self._ack_lock.wait_for(lambda: not self._batches, STOP_SECONDS):
                log.warning("MQTT: stopping before every commit was acknowledged; the broker will redeliver")
        self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT stopped")

    def health(self) -> dict[str, Any]:
        """The MQTT part of /health: degraded while disconnected, refused, or not reading for long."""
        blocked = self._blocked_since
        stalled = blocked is not None and time.monotonic() - blocked > self.config.keepalive / 1e9
        ok = (
            self.connected
            and not stalled
            and not self.write_error
            and all(r.state == "subscribed" for r in self.routes)
        )
        error = self.last_error or self.write_error
        if stalled:
            error = f"not reading from the broker for longer than the keepalive: {self.write_error or 'writes are slow'}"
        return {
            "status": "ok" if ok else "degraded",
            "connected": self.connected,
            "inflight": self._inflight,
            "unrouted_messages": self.unrouted,
            "error": error,
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


class _Unwritten(Exception):
    """A batch was written in part: `messages` were not (abandoned, or the write failed)."""

    def __init__(self, messages: list[_Message], abandoned: bool) -> None:
        super().__init__(f"{len(messages)} messages not written")
        self.messages = messages
        self.abandoned = abandoned
