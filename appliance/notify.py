"""The systemd notify protocol (sd_notify) over a plain datagram socket, and an event-loop heartbeat.

systemd passes `NOTIFY_SOCKET` (a path, or an abstract name starting with '@') to `Type=notify`
services; each message is one datagram of newline-separated `KEY=VALUE` assignments. Without
`NOTIFY_SOCKET` (a terminal, a container, the tests) every call here is a no-op. Sending never
raises: the server must not fail because its supervisor is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("appliance.notify")

#: Longest one send may block when the receiver's queue is full (PID 1 stuck): the message is dropped.
SEND_TIMEOUT_SECONDS = 1.0


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (AF_UNIX SOCK_DGRAM; abstract namespace when it starts with '@'); a no-op when unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _positive_int(env.get("WATCHDOG_USEC", ""))
        self._watchdog_pid = _positive_int(env.get("WATCHDOG_PID", ""))
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._send_failed = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to send to."""
        return self._address is not None

    def ready(self, status: str = "") -> None:
        """Startup is complete: systemd marks the unit active and starts its watchdog."""
        self._send("READY=1", *_status(status), f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "") -> None:
        """Shutdown has begun (TimeoutStopSec applies from here)."""
        self._send("STOPPING=1", *_status(status))

    def status(self, text: str) -> None:
        """One line of free-form status, shown by `systemctl status`."""
        self._send(*_status(text))

    def reloading(self, status: str = "") -> None:
        """A reload (SIGHUP) has begun; MONOTONIC_USEC lets systemd ≥ 253 match it to its request."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def reloaded(self, status: str = "") -> None:
        """The reload is complete."""
        self._send("READY=1", *_status(status))

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when no watchdog applies to us."""
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None  # meant for another process (we inherited the environment)
        return self._watchdog_usec / 2 / 1e6

    def start_watchdog(self, alive: Callable[[], bool]) -> None:
        """Ping WATCHDOG=1 every watchdog_interval() from a daemon thread, but only while alive() is True."""
        interval = self.watchdog_interval()
        if not self.enabled or interval is None:
            log.debug("no systemd watchdog (NOTIFY_SOCKET or WATCHDOG_USEC unset, or not for this pid)")
            return
        if self._thread is not None:
            log.debug("systemd watchdog already running")
            return
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self._watchdog_loop, args=(alive, interval), name="sd-watchdog", daemon=True
        )
        self._thread.start()
        log.info("systemd watchdog: pinging every %.1fs while healthy", interval)

    def stop(self) -> None:
        """Stop the watchdog thread and close the socket."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(SEND_TIMEOUT_SECONDS + 1.0)
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _watchdog_loop(self, alive: Callable[[], bool], interval: float) -> None:
        warned = False
        while True:
            try:
                ok = bool(alive())
            except Exception:
                log.exception("systemd watchdog: the liveness check failed")
                ok = False
            if ok:
                if warned:
                    log.warning("systemd watchdog: healthy again, pinging resumed")
                    warned = False
                self._send("WATCHDOG=1")
            elif not warned:
                log.warning(
                    "systemd watchdog: liveness check failed (WAL committer or event loop stuck?);"
                    " not pinging, so systemd will restart the service"
                )
                warned = True
            if self._stopped.wait(interval):
                return

    def _send(self, *fields: str) -> bool:
        """Send one datagram; False (logged, never raised) when it could not be sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock = self._sock
            sock.sendto(message, self._address)
        except OSError as e:
            level = logging.DEBUG if self._send_failed else logging.WARNING
            self._send_failed = True
            log.log(level, "cannot notify systemd at %r: %s", self._address, e)
            return False
        return True


class LoopHeartbeat:
    """Proves the asyncio event loop still runs: `run()` stamps a monotonic time every `period` seconds."""

    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self._last = time.monotonic()

    async def run(self) -> None:
        """Stamp forever (cancel the task to end it)."""
        while True:
            self._last = time.monotonic()
            await asyncio.sleep(self.period)

    def alive(self, within: float) -> bool:
        """True when the loop stamped within the last `within` seconds."""
        return time.monotonic() - self._last <= within


def _address(value: str) -> str | None:
    """The sendto() address for NOTIFY_SOCKET, or None when unset or of a kind we do not speak."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: only absolute paths and @abstract names are supported", value)
    return None


def _positive_int(value: str) -> int | None:
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n > 0 else None


def _status(text: str) -> tuple[str, ...]:
    """A STATUS= field on one line (a newline would start a new assignment), or none for empty text."""
    text = " ".join(text.splitlines()).strip()
    return (f"STATUS={text}",) if text else ()
