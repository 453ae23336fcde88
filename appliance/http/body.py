"""Request bodies: read against a deadline and a shared byte budget, gunzipped off the event loop.

A slow client holds no write slot and no more budget than the bytes it actually sent; a body that
stops arriving gets 408. Gzip is decoded in a small thread pool, in time linear in its size, with
a bound on members and on the decoded size.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import BadRequest, BodyTimeout, Busy, TooLarge, UnsupportedMediaType
from ..metrics import HTTP_REFUSED
from .connections import QuietLog, parser_reason

#: Most gzip members one body may hold; clients that append a member per batch stay far below.
MAX_GZIP_MEMBERS = 1000
#: Input fed to zlib per call, so what a finished member leaves over is never more than this.
_GZIP_PIECE = 64 * 1024

_QUIET = QuietLog()


@dataclass(frozen=True)
class BodyLimits:
    """How large a body may be (after decoding) and how long it may take to arrive."""

    max_size: int
    timeout: float  # seconds for the whole body ...
    min_rate: int  # ... plus one second per this many bytes received


class ByteBudget:
    """Bytes of request bodies in memory, all requests together; waiting for room needs no thread."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._room = asyncio.Event()

    async def take(self, n: int, deadline: float) -> None:
        """Wait until `n` bytes are free and hold them; Busy (503) at `deadline` (loop time)."""
        try:
            async with asyncio.timeout_at(deadline):
                while self.free < n:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            HTTP_REFUSED.inc(reason="max_buffered_bytes")
            _QUIET.info(
                "budget", f"answered 503: request bodies hold {self.capacity} bytes (http.max_buffered_bytes)"
            )
            raise Busy(
                "too many request bodies are in memory at once (http.max_buffered_bytes); retry shortly"
            ) from None
        self.free -= n

    def give(self, n: int) -> None:
        """Return `n` bytes taken earlier and wake whoever waits for room."""
        self.free += n
        self._room.set()


class BodyReader:
    """Reads every request body the handlers see (writes, JSON APIs and engine requests alike)."""

    def __init__(self, limits: BodyLimits, budget: ByteBudget, pool: Executor) -> None:
        self.limits = limits
        self.budget = budget
        self.pool = pool

    @asynccontextmanager
    async def received(self, request: web.Request) -> AsyncIterator[bytes]:
        """The decoded body; its bytes count against the budget until the block ends."""
        held = 0
        try:
            raw, held = await self._read(request)
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding in ("", "identity"):
                yield raw
                return
            if encoding != "gzip":
                raise UnsupportedMediaType(
                    f"unsupported Content-Encoding {encoding!r}: send gzip or identity"
                )
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(self.pool, gunzip, raw, self.limits.max_size)
            del raw
            if len(body) > held:
                await self.budget.take(len(body) - held, loop.time() + self.limits.timeout)
            else:
                self.budget.give(held - len(body))
            held = len(body)
            yield body
        finally:
            self.budget.give(held)

    async def _read(self, request: web.Request) -> tuple[bytes, int]:
        """The bytes as sent, and how many of them were taken from the budget."""
        limits = self.limits
        if request.content_length is not None and request.content_length > limits.max_size:
            raise _too_large(limits.max_size)
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                deadline = started + limits.timeout + size / limits.min_rate
                try:
                    async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                        chunk = await request.content.readany()
                except TimeoutError:
                    raise _timed_out(limits, size) from None
                if not chunk:
                    return b"".join(chunks), size
                if size + len(chunk) > limits.max_size:
                    raise _too_large(limits.max_size)
                await self.budget.take(len(chunk), deadline)
                size += len(chunk)
                chunks.append(chunk)
        except BaseException as e:
            self.budget.give(size)
            if isinstance(e, HttpProcessingError):  # a broken chunked encoding
                raise BadRequest(f"request body is malformed: {parser_reason(e)}") from None
            raise


READER: web.AppKey[BodyReader] = web.AppKey("body_reader", BodyReader)


def gunzip(raw: bytes, limit: int, max_members: int = MAX_GZIP_MEMBERS) -> bytes:
    """Decode a (multi-member) gzip stream in time linear in its size; at most `limit` bytes out."""
    out: list[bytes] = []
    size = 0
    view = memoryview(raw)
    pos = 0
    pending: bytes | memoryview = b""  # input the current member has not consumed yet
    inflater = None
    members = 0
    try:
        while pending or pos < len(view):
            if inflater is None:
                members += 1
                if members > max_members:
                    HTTP_REFUSED.inc(reason="gzip_members")
                    raise BadRequest(
                        f"request body has more than {max_members} gzip members; send one gzip stream"
                    )
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if not pending:
                pending = view[pos : pos + _GZIP_PIECE]
                pos += len(pending)
            piece = inflater.decompress(pending, limit + 1 - size)
            size += len(piece)
            out.append(piece)
            if size > limit:
                raise _too_large(limit, after_decoding=True)
            if inflater.eof:
                pending, inflater = inflater.unused_data, None  # the next member starts here
            else:
                pending = inflater.unconsumed_tail
    except zlib.error as e:
        raise BadRequest(f"request body is not valid gzip data: {e}") from None
    if inflater is not None:
        raise BadRequest("request body is truncated gzip data; nothing was stored")
    return b"".join(out)


def _too_large(limit: int, after_decoding: bool = False) -> TooLarge:
    HTTP_REFUSED.inc(reason="max_request_size")
    when = " after decompression" if after_decoding else ""
    return TooLarge(
        f"request body is larger than the limit of {limit} bytes{when} (http.max_request_size);"
        " split the write into smaller batches"
    )


def _timed_out(limits: BodyLimits, size: int) -> BodyTimeout:
    HTTP_REFUSED.inc(reason="body_timeout")
    error = BodyTimeout(
        f"request body not received in time: {size} bytes arrived; a body must arrive within"
        f" {limits.timeout:g} s (http.body_timeout) plus one second per {limits.min_rate} bytes"
        " (http.body_min_rate)"
    )
    _QUIET.info("body-timeout", f"answered 408: {error.message}")
    return error
