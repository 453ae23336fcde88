"""HTTP connections: the caps of .guard applied at accept, a deadline for every request head, and
one quiet log line (never a traceback) for a malformed request.

aiohttp has an idle timeout (keepalive_timeout) but no deadline for a request head that arrives
one byte at a time, and it logs a traceback for every request its parser rejects. GuardedHandler
adds both; GuardedRunner makes aiohttp build GuardedHandlers.

Under HTTPS the port listens as plain TCP and each GuardedHandler starts TLS itself, after counting
the connection: a client opening sockets that never finish a handshake is held to the caps like
any other, and the head deadline runs from the accept, handshake included.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from ..metrics import HTTP_REFUSED
from .guard import ConnectionGuard, ConnectionLimits, client_key, peer_of
from .tls import ServerTls

#: ConnectionGuard, ConnectionLimits and client_key live in .guard; importers find them here too.
__all__ = [
    "ConnectionGuard",
    "ConnectionLimits",
    "GuardedHandler",
    "GuardedRunner",
    "client_error",
    "client_key",
    "parser_reason",
    "track_requests",
]

log = logging.getLogger("appliance.http")

#: A refused connection gets its 503, then this long to read it before the socket is dropped.
_REFUSED_LINGER_SECONDS = 1.0
#: Where an aiohttp parser message starts quoting the client's bytes.
_QUOTED = re.compile(r"\s+b?['\"]|:\s*$")
#: A client whose response waits unsent must read at least this much every http.send_timeout.
_SEND_PROGRESS = 64 * 1024


class _SendWatch:
    """While started, drops its connection when the client reads less than _SEND_PROGRESS bytes
    of `unsent()` (or all of it) in an http.send_timeout."""

    __slots__ = ("_handler", "_unsent", "_timer")

    def __init__(self, handler: GuardedHandler, unsent: Callable[[], int]) -> None:
        self._handler = handler
        self._unsent = unsent
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin watching (already watching: go on)."""
        if self._timer is None:
            self._arm(self._unsent())

    def stop(self) -> None:
        """The client caught up, or the connection is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, unsent: int) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handler._guard.limits.send_timeout, self._check, unsent)

    def _check(self, unsent_before: int) -> None:
        self._timer = None
        unsent = self._unsent()
        if unsent == 0:
            return
        if unsent_before - unsent >= _SEND_PROGRESS:
            self._arm(unsent)
            return
        self._handler._drop_slow_reader(max(unsent_before - unsent, 0))


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, plus the caps, the head deadline and quiet client errors."""

    __slots__ = (
        "_guard",
        "_tls",
        "_handshake",
        "_early",
        "_peer",
        "_timer",
        "_busy",
        "_refused",
        "_current",
        "_send_watch",
        "_tcp_watch",
    )

    def __init__(
        self, manager: web.Server, *, guard: ConnectionGuard, tls: ServerTls | None = None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._tls = tls
        #: The TLS handshake under way: aiohttp's side of the connection starts when it is done.
        self._handshake: asyncio.Task[None] | None = None
        self._early = b""  # request bytes decrypted before aiohttp's side started
        self._peer: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = 0
        self._refused = False
        self._current: web.BaseRequest | None = None
        self._send_watch = _SendWatch(self, self._unsent)
        self._tcp_watch: _SendWatch | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A TCP connection was accepted: count it (or refuse it) before anything else, TLS included."""
        peer = peer_of(transport)
        refusal = self._guard.admit(peer)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self._peer = peer
        self._arm()
        if self._tls is None:
            super().connection_made(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for start_tls's protocol, not for the HTTP parser
        self._handshake = self._loop.create_task(self._start_tls(transport, self._tls.context))

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        """Run the TLS handshake within the head deadline, then start aiohttp's side over it.
        A failed handshake is the client's business: one debug line, the socket closed."""
        tls: asyncio.BaseTransport | None = None
        try:
            tls = await self._loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                # a backstop: the head deadline, armed earlier, ends a slow handshake first
                ssl_handshake_timeout=self._guard.limits.header_timeout,
            )
        except OSError as e:  # ssl.SSLError, a reset, asyncio's own handshake timeout
            log.debug("TLS handshake with %s failed: %s", self._peer, e)
        finally:
            lost = self._handshake is None  # connection_lost came first
            self._handshake = None
            if tls is None or lost or tls.is_closing():
                self._cancel()
                self._release()
                if not raw.is_closing():
                    raw.abort()
        if tls is None or lost or tls.is_closing():
            return
        super().connection_made(tls)
        self._watch_tls_socket(tls)
        early, self._early = self._early, b""
        if early:
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped, so that closing sends no reset before the 503 is read
        if self._handshake is not None:
            self._early += data  # decrypted in the handshake's last read, before _start_tls resumed
            return
        if data and not self._busy and self._timer is None:
            self._arm()  # the first byte of the next request head on a kept-alive connection
        super().data_received(data)
        if self._current is not None and self._messages:
            self._fail_body()

    def _fail_body(self) -> None:
        """aiohttp queues a body's parse error (a bad chunk) as the next request and leaves the
        current body waiting forever; hand the error to the reader of that body instead."""
        assert self._current is not None
        for message, _ in self._messages:
            if isinstance(message, _ErrInfo) and not self._current.content.is_eof():
                self._current.content.set_exception(message.exc)

    def pause_writing(self) -> None:
        """The client reads slower than we send: from now on it must read at least
        _SEND_PROGRESS bytes (or all there is) every http.send_timeout, or it is dropped."""
        super().pause_writing()
        self._send_watch.start()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._send_watch.stop()

    def _unsent(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _watch_tls_socket(self, transport: asyncio.BaseTransport) -> None:
        """Under TLS, asyncio hands a whole response to the socket's transport at once and pauses
        only itself, never us, when the client stops reading: watch that transport's pauses too."""
        tls = getattr(transport, "_ssl_protocol", None)  # asyncio.sslproto, 3.11 and later
        tcp = getattr(tls, "_transport", None)
        if tls is None or tcp is None:
            return
        watch = self._tcp_watch = _SendWatch(self, tcp.get_write_buffer_size)
        pause, resume = tls.pause_writing, tls.resume_writing

        def paused() -> None:
            pause()
            watch.start()

        def resumed() -> None:
            watch.stop()
            resume()

        tls.pause_writing, tls.resume_writing = paused, resumed

    def _drop_slow_reader(self, read: int) -> None:
        """Drop the connection and the unsent bytes it holds: its client read `read` bytes in
        http.send_timeout."""
        if self.transport is None:
            return
        HTTP_REFUSED.inc(reason="send_timeout")
        self._guard.quiet.info(
            "send-timeout",
            f"dropped a connection from {self._peer}: it read {read} bytes of its response in"
            f" {self._guard.limits.send_timeout:g} s (http.send_timeout)",
        )
        self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel()
        self._send_watch.stop()
        if self._tcp_watch is not None:
            self._tcp_watch.stop()
        if self._refused:
            return
        self._release()
        if self._handshake is not None:  # lost before aiohttp's side started: nothing of it to close
            self._handshake = None
            return
        super().connection_lost(exc)

    def _release(self) -> None:
        """Count this connection out of the caps, once."""
        if self._peer is not None:
            self._guard.release(self._peer)
            self._peer = None

    def request_started(self, request: web.BaseRequest) -> None:
        """The head of a request is complete and its handler runs: no deadline while it does."""
        self._busy += 1
        self._current = request
        self._cancel()

    def request_finished(self) -> None:
        self._busy -= 1
        self._current = None

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp's parser rejected: a one-line 4xx and at most one log line."""
        if isinstance(exc, ConnectionError):
            log.debug("client %s went away: %s", self._peer, exc)
            response = web.Response(status=400)
            response.force_close()
            return response
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; cannot send an error instead")
        status, text = client_error(exc)
        HTTP_REFUSED.inc(reason="bad_request")
        self._guard.quiet.info("bad-request", f"bad request from {self._peer}: {text}")
        response = web.Response(status=status, text=text + "\n")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """Client-caused failures (a broken body, a dropped connection) are one quiet line."""
        exc = kw.get("exc_info")
        if isinstance(exc, ConnectionError):
            log.debug("client %s went away: %s", self._peer, exc)
            return
        if isinstance(exc, HttpProcessingError):
            self._guard.quiet.info("bad-request", f"bad request from {self._peer}: {parser_reason(exc)}")
            return
        super().log_exception(*args, **kw)

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self._guard.limits.header_timeout, self._head_timed_out)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        HTTP_REFUSED.inc(reason="header_timeout")
        handshaking = self._handshake is not None
        self._guard.quiet.info(
            "slow-head",
            f"closed a connection from {self._peer}: no complete"
            f" {'TLS handshake and ' if handshaking else ''}request head within"
            f" {self._guard.limits.header_timeout:g} s (http.header_timeout)",
        )
        if self._handshake is not None:
            self._handshake.cancel()  # start_tls closes the socket; _start_tls counts it out
        else:
            self.force_close()

    def _refuse(self, transport: asyncio.BaseTransport, reason: str) -> None:
        self._refused = True
        self._guard.quiet.info("refused", f"refused a connection: {reason}")
        assert isinstance(transport, asyncio.Transport)
        if self._tls is not None:
            transport.abort()  # no handshake for it (that is the cost refused), so no 503 it could read
            return
        text = f"too many connections: {reason}; retry later\n".encode()
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nRetry-After: 5\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
        )
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(_REFUSED_LINGER_SECONDS, transport.abort)


def client_error(exc: HttpProcessingError) -> tuple[int, str]:
    """Status and one clean line for a request aiohttp's parser rejected."""
    if isinstance(exc, LineTooLong):
        return 431, f"request line or header field is longer than {exc.args[1]} bytes"
    if isinstance(exc, InvalidURLError):
        return 400, "bad request: invalid URL"
    reason = parser_reason(exc)
    if reason == "Too many headers received":
        return 431, "too many header fields"
    return 400, f"bad request: {reason}"


def parser_reason(exc: BaseException) -> str:
    """The parser's reason without the client's bytes it quotes: one printable line."""
    text = str(getattr(exc, "message", "") or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Bad status line"):
        lines = lines[1:]
    line = _QUOTED.split(lines[0] if lines else "", maxsplit=1)[0].rstrip(": ")
    return "".join(c for c in line if c.isprintable())[:120] or type(exc).__name__


class _GuardedServer(web.Server):
    """aiohttp's low-level server, building GuardedHandlers."""

    guard: ConnectionGuard
    tls: ServerTls | None

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, guard=self.guard, tls=self.tls, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are GuardedHandlers sharing one ConnectionGuard, over TLS
    when `tls` is given (its site then listens as plain TCP: each handler starts TLS)."""

    def __init__(
        self, app: web.Application, guard: ConnectionGuard, tls: ServerTls | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.tls = tls

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        server = _GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )
        server.guard = self.guard
        server.tls = self.tls
        return server


@web.middleware
async def track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the connection a request is being handled (its head deadline does not apply)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):
        return await handler(request)  # type: ignore[no-any-return]
    protocol.request_started(request)
    try:
        return await handler(request)  # type: ignore[no-any-return]
    finally:
        protocol.request_finished()
