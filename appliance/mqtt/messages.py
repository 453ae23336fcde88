"""Received MQTT messages: their shape, their conversion into line protocol, and the record of their errors.

Every message with rejected content is counted on its route, logged (rate-limited) and kept in
`system.mqtt_errors`; a message that matches no subscription is counted as unrouted.
"""

from __future__ import annotations

import collections
import logging
import re
import time
from dataclasses import dataclass, field

from .payload import to_lines
from .reasons import PayloadError
from .routes import Route

log = logging.getLogger("appliance.mqtt")

#: The start of a line that is neither blank nor a comment.
_DATA_LINE = re.compile(rb"^[ \t\r\v\f]*+[^ \t\r\v\f\n#]", re.MULTILINE)
#: Rows kept in system.mqtt_errors, and payload and topic characters kept per row.
ERRORS_KEPT = 1000
PAYLOAD_HEAD = 64
TOPIC_KEPT = 256
#: At most this many error lines per minute reach the log; the rest are only counted.
LOG_ERRORS_PER_MINUTE = 20


@dataclass
class Message:
    """One received message, queued until its write is committed and it is acknowledged."""

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
class Part:
    """A message's share of one write: its line range in the joined body."""

    msg: Message
    first_line: int = 0  # in the joined body, 1-based
    span: int = 1  # lines it occupies there (an empty body still takes one)
    lines: int = 0  # lines of data
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    unlisted: int = 0  # rejected lines past the ones a write describes
    omitted: int = 0  # conversion problems past the MAX_REASONS listed in `errors`


def convert(msg: Message) -> tuple[Part, bytes]:
    """A message as line protocol lines (its topic parsed into tags), with its own errors."""
    route = msg.route
    if route is None:
        return Part(msg), b""
    try:
        measurement, tags = route.parsing.apply(msg.topic)
    except PayloadError as e:
        return Part(msg, errors=[str(e)]), b""
    body, errors = to_lines(msg.payload, route.json, measurement, tags, msg.arrival_ns)
    body = body.rstrip(b"\n")
    lines = sum(1 for _ in _DATA_LINE.finditer(body))  # no list of lines: memory stays flat
    span = body.count(b"\n") + 1
    return Part(msg, span=span, lines=lines, errors=list(errors), omitted=errors.omitted), body


class RateLimitedLog:
    """Warnings about messages and the connection: at most LOG_ERRORS_PER_MINUTE a minute, the rest counted."""

    def __init__(self) -> None:
        self._window = (0.0, 0)

    def __call__(self, text: str) -> None:
        """Log `text` as a warning unless this minute's share is used up."""
        start, count = self._window
        now = time.monotonic()
        if now - start > 60:
            if count > LOG_ERRORS_PER_MINUTE:
                log.warning(
                    "MQTT: %d more errors in the last minute were not logged", count - LOG_ERRORS_PER_MINUTE
                )
            start, count = now, 0
        count += 1
        self._window = (start, count)
        if count <= LOG_ERRORS_PER_MINUTE:
            log.warning("%s", text)


#: A row of system.mqtt_errors: time (ns), topic head, reason, payload head, and the database the
#: message was routed to (what a token for that database may see).
RejectRow = tuple[int, str, str, bytes, str]


class Rejects:
    """Messages with errors: counted, logged (rate-limited) and kept for system.mqtt_errors."""

    def __init__(self, rate_limited_log: RateLimitedLog) -> None:
        self.unrouted = 0
        self.errors: collections.deque[RejectRow] = collections.deque(maxlen=ERRORS_KEPT)
        self._rate_limited_log = rate_limited_log

    def record(self, parts: list[Part]) -> None:
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
                (
                    p.msg.arrival_ns,
                    p.msg.topic[:TOPIC_KEPT],
                    reason,
                    p.msg.payload[:PAYLOAD_HEAD],
                    p.msg.route.sub.database,
                )
            )
            self._rate_limited_log(f"MQTT message on {p.msg.topic!r} rejected in part: {reason}")
