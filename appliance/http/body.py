"""Request bodies: room in a shared byte budget reserved before the first byte is read, read
against an idle timeout and a minimum rate, gunzipped off the event loop as they arrive.

A body waits for its room in first-come order and never waits while holding part of it, so
concurrent bodies cannot lock each other out. One client address holds at most
PEER_SHARE x http.max_request_size of the budget. A body that stops arriving, or trickles in
slower than http.body_min_rate once http.body_timeout has passed, gets 408.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import BadRequest, BodyTimeout, Busy, NotImplementedYet, TooLarge, UnsupportedMediaType
from ..log import QuietLog
from ..metrics import HTTP_REFUSED, Registry
from .connections import client_key, parser_reason

#: Most gzip members one body may hold; clients that append a member per batch stay far below.
MAX_GZIP_MEMBERS = 1000
#: Input fed to zlib per call, so what a finished member leaves over is never more than this.
_GZIP_PIECE = 64 * 1024
#: One client address holds at most this many times http.max_request_size of the budget.
PEER_SHARE = 2
#: Once http.body_timeout has passed, the bytes of the last this many seconds must have arrived
#: at http.body_min_rate at least.
RATE_WINDOW_SECONDS = 10.0

_QUIET = QuietLog(logging.getLogger("appliance.http"))


@dataclass(frozen=True)
class BodyLimits:
    """How large a body may be (after decoding) and how it must keep arriving."""

    max_size: int
    timeout: float  # seconds of grace, in which any rate is fine ...
    min_rate: int  # ... after which the last RATE_WINDOW_SECONDS must bring this many bytes a second
    idle_timeout: float  # and never this long without a byte


@dataclass
class _Waiter:
    size: int
    peer: str
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ByteBudget:
    """Bytes of request bodies in memory, all requests together, reserved in first-come order;
    one client address holds at most `per_peer` of them. Waiting for room needs no thread."""

    def __init__(self, capacity: int, per_peer: int) -> None:
        self.capacity = capacity
        self.per_peer = min(per_peer, capacity)
        self.free = capacity
        self.held: Counter[str] = Counter()
        self._queue: deque[_Waiter] = deque()

    async def reserve(self, size: int, peer: str, deadline: float) -> None:
        """Wait until `size` bytes are free (and within `peer`'s share) and hold them; Busy (503)
        at `deadline` (loop time). Nobody who asked later is served first, unless whoever waits
        ahead of it waits for bodies of its own address to finish."""
        waiter = _Waiter(size, peer)
        self._queue.append(waiter)
        self._serve()
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(waiter.granted)
        except BaseException as e:
            if waiter.granted.done():
                self.give(size, peer)  # granted just as the wait ended
            else:
                waiter.granted.cancel()
                self._queue.remove(waiter)
                self._serve()  # who waited behind it may fit now
            if isinstance(e, TimeoutError):
                HTTP_REFUSED.inc(reason="max_buffered_bytes")
                _QUIET.info(
                    "budget",
                    f"answered 503: request bodies hold {self.capacity} bytes (http.max_buffered_bytes)",
                )
                raise Busy(
                    "too many request bodies are in memory at once (http.max_buffered_bytes); retry shortly"
                ) from None
            raise

    def give(self, size: int, peer: str) -> None:
        """Return `size` bytes reserved earlier and serve whoever waits for room."""
        if size <= 0:
            return
        self.free += size
        self.held[peer] -= size
        if self.held[peer] <= 0:
            del self.held[peer]
        self._serve()

    def register_metrics(self, registry: Registry) -> None:
        """The budget's gauges /metrics reads when scraped."""
        registry.gauge(
            "appliance_http_buffered_bytes",
            "Bytes of request bodies in memory or reserved for them (http.max_buffered_bytes).",
            lambda: self.capacity - self.free,
        )
        registry.gauge(
            "appliance_http_bodies_waiting",
            "Request bodies waiting for room in http.max_buffered_bytes.",
            lambda: len(self._queue),
        )

    def _serve(self) -> None:
        for waiter in list(self._queue):
            if self.held[waiter.peer] + waiter.size > self.per_peer:
                continue  # waits for its own address's bodies; blocks nobody else
            if waiter.size > self.free:
                break  # first come, first served: no smaller body goes ahead of it
            self._queue.remove(waiter)
            self.free -= waiter.size
            self.held[waiter.peer] += waiter.size
            waiter.granted.set_result(None)


class _Pace:
    """Says when a body has stopped arriving, or arrives too slowly, from the bytes so far."""

    def __init__(self, limits: BodyLimits, now: float) -> None:
        self.limits = limits
        self.started = now
        self.last = now  # when the last byte arrived
        self.size = 0
        self.samples: deque[tuple[float, int]] = deque([(now, 0)])  # (time, bytes so far)

    def wait(self, now: float) -> float:
        """How long to wait for the next bytes before checking again."""
        grace_end = self.started + self.limits.timeout
        check = grace_end if now < grace_end else now + 1.0
        return max(min(self.last + self.limits.idle_timeout, check) - now, 0.0)

    def arrived(self, n: int, now: float) -> None:
        self.size += n
        self.last = now
        self.samples.append((now, self.size))

    def check(self, now: float) -> None:
        """BodyTimeout if no byte came for idle_timeout, or the last window brought too few."""
        limits = self.limits
        if now - self.last >= limits.idle_timeout:
            raise _timed_out(
                f"no byte of the request body arrived for {limits.idle_timeout:g} s"
                f" (http.body_idle_timeout); {self.size} bytes arrived"
            )
        if now < self.started + limits.timeout:
            return
        start = max(now - RATE_WINDOW_SECONDS, self.started)
        while len(self.samples) > 1 and self.samples[1][0] <= start:
            self.samples.popleft()
        if (self.size - self.samples[0][1]) < limits.min_rate * (now - start):
            raise _timed_out(
                f"request body arrives slower than {limits.min_rate} bytes a second"
                f" (http.body_min_rate) after the first {limits.timeout:g} s (http.body_timeout);"
                f" {self.size} bytes arrived"
            )


class BodyReader:
    """Reads every request body the handlers see (writes, JSON APIs and engine requests alike)."""

    def __init__(self, limits: BodyLimits, budget: ByteBudget, pool: Executor) -> None:
        self.limits = limits
        self.budget = budget
        self.pool = pool

    @asynccontextmanager
    async def received(
        self, request: web.Request, max_size: int | None = None, setting: str = ""
    ) -> AsyncIterator[bytes]:
        """The decoded body, at most `max_size` bytes (http.max_request_size by default; `setting`
        names a smaller limit in the 413); its bytes count against the budget until the block ends."""
        limit = min(max_size or self.limits.max_size, self.limits.max_size)
        setting = setting if limit < self.limits.max_size else ""
        gzipped = _content_encoding(request)
        declared = request.content_length
        if not request.body_exists or declared == 0:
            yield b""
            return
        if declared is not None and declared > limit:
            raise _too_large(limit, setting)
        # Room for the whole body before its first byte is read: what Content-Length declares,
        # or the limit for a chunked or gzip body (what is not used is given back at its end).
        size = declared if declared is not None and not gzipped else limit
        peer = client_key(request.remote or "local")
        loop = asyncio.get_running_loop()
        await self.budget.reserve(size, peer, loop.time() + self.limits.timeout)
        held = size
        try:
            body = await self._read(request, limit, gzipped, setting)
            self.budget.give(held - len(body), peer)
            held = len(body)
            yield body
        finally:
            self.budget.give(held, peer)

    async def _read(self, request: web.Request, limit: int, gzipped: bool, setting: str) -> bytes:
        loop = asyncio.get_running_loop()
        pace = _Pace(self.limits, loop.time())
        decoder = GzipStream(limit, setting=setting) if gzipped else None
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(pace.wait(loop.time())):
                        chunk = await request.content.readany()
                except TimeoutError:
                    pace.check(loop.time())
                    continue
                if not chunk:
                    break
                pace.arrived(len(chunk), loop.time())
                pace.check(loop.time())
                if decoder is not None:
                    chunk = await loop.run_in_executor(self.pool, decoder.feed, chunk)
                elif size + len(chunk) > limit:
                    raise _too_large(limit, setting)
                size += len(chunk)
                parts.append(chunk)
        except HttpProcessingError as e:  # a broken chunked encoding
            raise BadRequest(f"request body is malformed: {parser_reason(e)}") from None
        if decoder is not None:
            decoder.finish()
        return b"".join(parts)

    async def held(self, request: web.Request, max_size: int | None = None, setting: str = "") -> bytes:
        """The body, counted against the budget until the request's handler returns
        (hold_bodies middleware)."""
        stack = request.get(_BODIES)
        if stack is None:
            raise RuntimeError("hold_bodies middleware is not installed")
        return await stack.enter_async_context(self.received(request, max_size, setting))


READER: web.AppKey[BodyReader] = web.AppKey("body_reader", BodyReader)
#: A RequestKey, not a str: aiohttp warns about a str key (an error under the tests' filterwarnings).
_BODIES: web.RequestKey[AsyncExitStack] = web.RequestKey("appliance.bodies", AsyncExitStack)


@web.middleware
async def hold_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bodies read with BodyReader.held count against the budget until the handler returns."""
    async with AsyncExitStack() as stack:
        request[_BODIES] = stack
        return await handler(request)  # type: ignore[no-any-return]


def _content_encoding(request: web.Request) -> bool:
    """Whether the body is gzip; 415 for an unknown Content-Encoding, 501 for a transfer coding
    other than chunked (which aiohttp would otherwise pass through undecoded)."""
    codings = [c.strip().lower() for c in request.headers.get("Transfer-Encoding", "").split(",")]
    if any(c not in ("", "chunked", "identity") for c in codings):
        HTTP_REFUSED.inc(reason="transfer_encoding")
        raise NotImplementedYet(
            f"unsupported Transfer-Encoding {request.headers['Transfer-Encoding'][:60]!r}: send chunked"
            " or a Content-Length (and Content-Encoding: gzip to compress)"
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding[:60]!r}: send gzip or identity")
    return encoding == "gzip"


class GzipStream:
    """Decodes a (multi-member) gzip stream fed piece by piece, in time linear in its size, at
    most `limit` bytes out and MAX_GZIP_MEMBERS members. Not thread-safe: feed one piece at a time."""

    def __init__(self, limit: int, setting: str = "") -> None:
        self.limit = limit
        self.setting = setting
        self.size = 0
        self.members = 0
        self._inflater: Any = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        view = memoryview(data)
        pos = 0
        pending: bytes | memoryview = b""  # input the current member has not consumed yet
        try:
            while pending or pos < len(view):
                if self._inflater is None:
                    self.members += 1
                    if self.members > MAX_GZIP_MEMBERS:
                        HTTP_REFUSED.inc(reason="gzip_members")
                        raise BadRequest(
                            f"request body has more than {MAX_GZIP_MEMBERS} gzip members; send one gzip stream"
                        )
                    self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                if not pending:
                    pending = view[pos : pos + _GZIP_PIECE]
                    pos += len(pending)
                piece = self._inflater.decompress(pending, self.limit + 1 - self.size)
                self.size += len(piece)
                out.append(piece)
                if self.size > self.limit:
                    raise _too_large(self.limit, self.setting, after_decoding=True)
                if self._inflater.eof:
                    pending, self._inflater = self._inflater.unused_data, None  # the next member
                else:
                    pending = self._inflater.unconsumed_tail
        except zlib.error as e:
            raise BadRequest(f"request body is not valid gzip data: {e}") from None
        return b"".join(out)

    def finish(self) -> None:
        if self._inflater is not None:
            raise BadRequest("request body is truncated gzip data; nothing was stored")


def _too_large(limit: int, setting: str = "", after_decoding: bool = False) -> TooLarge:
    """413; `setting` names a limit other than http.max_request_size (a JSON API's)."""
    HTTP_REFUSED.inc(reason="max_request_size")
    when = " after decompression" if after_decoding else ""
    if setting:
        return TooLarge(f"request body is larger than the limit of {limit} bytes{when} ({setting})")
    return TooLarge(
        f"request body is larger than the limit of {limit} bytes{when} (http.max_request_size);"
        " split the write into smaller batches"
    )


def _timed_out(reason: str) -> BodyTimeout:
    HTTP_REFUSED.inc(reason="body_timeout")
    error = BodyTimeout(f"request body not received in time: {reason}")
    _QUIET.info("body-timeout", f"answered 408: {error.message}")
    return error
