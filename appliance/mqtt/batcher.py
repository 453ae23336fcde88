"""Batcher: turns queued MQTT messages into writes and acknowledges each only after its WAL commit.

paho's network thread hands every message to `offer`, which blocks (so the socket is no longer
read) while `max_inflight` messages or `max_pending_bytes` are uncommitted: back-pressure
reaches the broker, which keeps the rest queued. The batcher loop (a BackgroundLoop, woken by
each offer) writes everything queued as one write per database, and once the WAL commits that
hold a batch are durable, acknowledges its QoS 1 messages in arrival order, batches in
submission order (paho's manual ack). A batch that fails is written again in halves, so one
poison message costs its neighbours about log2(n) tries, and is given up alone after
MAX_ATTEMPTS, recorded in system.mqtt_errors and acknowledged.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import ApplianceError, LimitExceeded, WalError
from ..lineprotocol import syntax
from ..model import Precision
from ..threads import BackgroundLoop
from ..write import WriteRequest, WriteService
from .messages import Message, Part, RateLimitedLog, Rejects, convert
from .routes import Route

log = logging.getLogger("appliance.mqtt")

#: Most messages and payload bytes the batcher turns into one write.
BATCH_MESSAGES = 10_000
BATCH_BYTES = 8 * 1024 * 1024
#: Pause before retrying a write the WAL or the buffer refused (full, behind), and once per
#: batch that failed unexpectedly (its halves are then tried at once, down to the one message
#: that fails, which waits this long before each of its attempts).
RETRY_SECONDS = 1.0
#: Times a message that fails alone is written before it is given up.
MAX_ATTEMPTS = 3
#: Longest stop() waits for queued messages to be committed and acknowledged.
STOP_SECONDS = 10.0
#: The loop's idle tick: every message wakes it, so this only bounds a wait nobody shortened.
TICK_SECONDS = 1.0


@dataclass
class _Batch:
    """Messages written together; acknowledged once all their commits are durable."""

    parts: list[Part]
    waiting: int
    ok: bool = True
    done: bool = False


class Batcher:
    """The queue of received messages, the loop that writes them, and their acknowledgements."""

    def __init__(
        self,
        max_inflight: int,
        max_pending_bytes: int,
        stopping: threading.Event,
        rate_limited_log: RateLimitedLog,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """`stopping` is the ingest's: once set, nothing more is queued and waits give up."""
        self.max_inflight, self.max_pending_bytes = max_inflight, max_pending_bytes
        self.clock = clock
        self.writes: WriteService | None = None
        #: Sends one PUBACK (paho's client.ack); set by whoever owns the connection.
        self.ack: Callable[[int, int], Any] = lambda mid, qos: None
        self.write_error: str | None = None  # while writes wait (buffer or disk full, a limit)
        self.rejects = Rejects(rate_limited_log)
        self.blocked_since: float | None = None  # monotonic time the network thread began waiting
        #: Messages the loop has finished with (submitted, recorded or put back for a retry): a
        #: test hook, so a test can wait until the batcher got past where it would have acted.
        self.handled = 0
        self._stopping = stopping
        self._rate_limited_log = rate_limited_log
        self._session = 0
        self._seq = itertools.count()
        self._groups = itertools.count(1)
        self._queue: collections.deque[Message] = collections.deque()
        self._inflight = 0
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._batches: collections.deque[_Batch] = collections.deque()  # in submission order
        self._ack_lock = threading.Condition()
        self.loop = BackgroundLoop("mqtt-batcher", self._step, TICK_SECONDS, log)

    @property
    def inflight(self) -> int:
        """Messages received and not yet acknowledged."""
        return self._inflight

    def start(self, writes: WriteService) -> None:
        """Start writing through `writes`."""
        self.writes = writes
        self.loop.start()

    def stop(self) -> None:
        """Write what is queued (the ingest set `stopping`), then wait for its acknowledgements."""
        with self._cond:
            self._cond.notify_all()  # a network thread held back by back-pressure gives up
        self.loop.stop(STOP_SECONDS)
        if not self.loop.alive:
            self._step()  # what was queued after the loop's last step
        with self._ack_lock:
            if not self._ack_lock.wait_for(lambda: not self._batches, STOP_SECONDS):
                log.warning("MQTT: stopping before every commit was acknowledged; the broker will redeliver")

    def next_session(self) -> None:
        """A connection began or ended: acks still owed to the old one are never sent."""
        with self._cond:
            self._session += 1
            self._cond.notify_all()

    # -- receiving -------------------------------------------------------------------------
    def offer(self, route: Route | None, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """Queue a message; blocks (back-pressure) while the in-flight caps are reached."""
        with self._cond:
            while (
                self._inflight >= self.max_inflight or self._pending_bytes >= self.max_pending_bytes
            ) and not self._stopping.is_set():
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                self._cond.wait(0.5)  # back-pressure: the network thread stops reading
            self.blocked_since = None
            if self._stopping.is_set():
                return  # unacknowledged: the broker sends it again after the restart
            self._inflight += 1
            self._pending_bytes += len(payload)
            self._queue.append(
                Message(route, topic, payload, mid, qos, self.clock(), next(self._seq), self._session)
            )
        self.loop.wake()

    # -- the loop ----------------------------------------------------------------------------
    def _step(self) -> float | None:
        """Write every queued batch; a retry that is not due yet makes the loop wait for it."""
        while True:
            with self._cond:
                if not self._queue:
                    return None
                batch = self._peek()
                # A retry: give what failed a moment (once per failure, not per message).
                wait = max(m.retry_at for m in batch) - time.monotonic()
                if wait > 0 and not self._stopping.is_set():
                    return wait  # new messages queue behind it and wake the loop: it waits again
                for _ in batch:
                    self._queue.popleft()
            self._write_batch(batch)
            self.handled += len(batch)

    def _peek(self) -> list[Message]:
        """The head of the queue as one batch: one retry group, within the size caps (_cond held)."""
        batch: list[Message] = []
        size = 0
        group = self._queue[0].group
        for m in self._queue:
            if batch and (m.group != group or len(batch) >= BATCH_MESSAGES or size >= BATCH_BYTES):
                break
            batch.append(m)
            size += len(m.payload)
        return batch

    def _write_batch(self, batch: list[Message]) -> None:
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
                return
            if not any(m.group for m in batch):  # once: retries of the same messages stay quiet
                log.error(
                    "MQTT batch of %d messages failed; writing the %d not yet written again, in"
                    " halves, to find the message that fails",
                    len(batch),
                    len(e.messages),
                    exc_info=e.__cause__,
                )
            self._retry(e.messages)

    def _retry(self, batch: list[Message]) -> None:
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
        parts = [Part(m, errors=["internal error while writing it (see the log)"])]
        self.rejects.record(parts)
        done = _Batch(parts, 0)
        with self._ack_lock:
            self._batches.append(done)
        self._settle(done)

    def _requeue(self, messages: list[Message]) -> None:
        with self._cond:
            self._queue.extendleft(sorted(messages, key=lambda m: m.seq, reverse=True))
            self._cond.notify_all()
        self.loop.wake()

    def _write(self, batch: list[Message]) -> None:
        """Submit one write per (database, precision); ack the batch once all are committed.

        A line protocol message whose last record is left open (an unterminated string) is
        written alone, so it cannot swallow the messages joined after it.
        """
        groups: dict[tuple[str, Precision, int], tuple[list[Part], list[bytes]]] = {}
        loose: list[Part] = []  # no route or a topic that does not parse: nothing to write
        for msg in batch:
            try:
                part, body = self._convert(msg)
            except Exception as e:  # a bug on one payload: that message alone is recorded as bad
                log.exception("MQTT message on %r could not be converted; recorded as bad", msg.topic)
                part, body = Part(msg, errors=[f"internal error while converting it: {e!r:.200}"]), b""
            if msg.route is None or not body:
                loose.append(part)
                continue
            precision = msg.route.precision if msg.route.json is None else Precision.NS
            alone = msg.seq if msg.route.json is None and syntax.ends_open(body) else -1
            parts, bodies = groups.setdefault((msg.route.sub.database, precision, alone), ([], []))
            part.first_line = parts[-1].first_line + parts[-1].span if parts else 1
            parts.append(part)
            bodies.append(body)
        self.rejects.record(loose)
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

    def _settle_later(self, written: list[Part], futures: list[Future[Any]]) -> None:
        """Acknowledge `written` (in order with earlier batches) once every commit in `futures` is durable."""
        pending = _Batch(written, len(futures))
        with self._ack_lock:
            self._batches.append(pending)
        if not futures:
            self._settle(pending)
        for f in futures:
            f.add_done_callback(functools.partial(self._settle, pending))

    def _convert(self, msg: Message) -> tuple[Part, bytes]:
        return convert(msg)

    def _submit(self, db: str, precision: Precision, body: bytes, parts: list[Part]) -> Future[Any] | None:
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
                self.rejects.record(parts)
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
        self.rejects.record(parts)
        return report.committed

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
                    self.ack(p.msg.mid, p.msg.qos)
            self._free(messages)

    def _release(self, batch: list[Message]) -> None:
        """Free the slots of messages left unacknowledged (the broker sends them again)."""
        with self._cond:
            self._free(batch)

    def _free(self, messages: list[Message]) -> None:
        """Give back the messages' in-flight slots and bytes (with _cond held): reading resumes."""
        self._inflight -= len(messages)
        self._pending_bytes -= sum(len(m.payload) for m in messages)
        self._cond.notify_all()


class _Abandoned(Exception):
    """Stopping while a write waited for room: its messages stay unacknowledged."""


class _Unwritten(Exception):
    """A batch was written in part: `messages` were not (abandoned, or the write failed)."""

    def __init__(self, messages: list[Message], abandoned: bool) -> None:
        super().__init__(f"{len(messages)} messages not written")
        self.messages = messages
        self.abandoned = abandoned
