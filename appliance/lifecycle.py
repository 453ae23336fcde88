"""The process's life: build the App, serve HTTP until SIGTERM/SIGINT, stop in order; sd_notify.

The systemd notify protocol (sd_notify) goes over a plain datagram socket, with an event-loop
heartbeat for the watchdog. systemd passes `NOTIFY_SOCKET` (a path, or an abstract name starting with '@') to `Type=notify`
services; each message is one datagram of newline-separated `KEY=VALUE` assignments. Without
`NOTIFY_SOCKET` (a terminal, a container, the tests) every sd_notify call is a no-op. Sending never
raises: the server must not fail because its supervisor is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from . import app as app_module
from . import log as log_module
from .config import Config
from .errors import ConfigError
from .http import server as http_server
from .http.body import READER as BODY_READER
from .http.body import BodyLimits
from .http.connections import ConnectionGuard, ConnectionLimits, GuardedRunner
from .http.services import (
    ConfigureAccess,
    EngineAccess,
    HttpServices,
    HttpSettings,
    OpsAccess,
    QueryAccess,
    WriteAccess,
)
from .http.tls import ServerTls
from .metrics import REGISTRY

log = logging.getLogger("appliance.server")

#: How long in-flight requests get at shutdown; a plugin still running after that is abandoned.
SHUTDOWN_GRACE_SECONDS = 10.0

#: File descriptors kept free of HTTP connections: LMDB, Parquet files, plugins, MQTT, S3.
FD_RESERVE = 256

#: The systemd watchdog is fed only while the event loop has run within this many seconds.
LOOP_STALL_SECONDS = 10.0
#: ... and while no WAL commit (fsync included) has been running for longer than this.
WAL_STALL_SECONDS = 30.0


def serve(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Serve until a stop signal; returns the process exit code. `reload` re-reads the
    configuration on SIGHUP."""
    log_module.setup(config.server.log_filter, config.server.log_format)
    if network_exposure(config):  # refused (ConfigError) before the WAL replay unless confirmed
        log.warning(
            "auth is off and http.bind %s is reachable from the network: anyone who can reach it can"
            " read, write and delete data, create triggers that run code and install packages"
            " (confirmed by auth.allow_unauthenticated_network; only Host names that are IP"
            " addresses, localhost or in http.allowed_hosts are answered)",
            config.http.bind,
        )
    tls = ServerTls.of(config.http)  # a bad certificate or key stops the start before the replay
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no reload (and no death) during the WAL replay
    notifier = Notifier()
    notifier.status("replaying the WAL")
    app = app_module.build(config)
    try:
        asyncio.run(_run_http(app, notifier, reload, tls))
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # the final persist is not interrupted (Ctrl-C still is)
        notifier.status("stopping: persisting the buffer")
        app.stop()
    return 0


def network_exposure(config: Config) -> bool:
    """Whether auth is off on an address other than loopback, confirmed by
    auth.allow_unauthenticated_network; unconfirmed, a ConfigError saying what is exposed and the ways out."""
    if config.auth.enabled or http_server.loopback_bind(config.http.bind):
        return False
    if config.auth.allow_unauthenticated_network:
        return True
    port = config.http.bind.rpartition(":")[2]
    raise ConfigError(
        f"refusing to serve without auth on {config.http.bind}, an address reachable from the network:"
        " anyone who can reach it could read, write and delete every database, create triggers that"
        f" run code and install packages. Either bind to loopback (--http-bind 127.0.0.1:{port}), or"
        " turn auth on (drop --without-auth / auth.enabled = false) and give each client a token"
        ' (appliance create token --name NAME --permission "db:NAME:read"), or, on a network you'
        " trust completely, confirm with --allow-unauthenticated-network"
        " (auth.allow_unauthenticated_network = true)."
    )


def _fit_fd_limit(max_connections: int, max_per_peer: int) -> int:
    """Raise the open-file limit to fit max_connections plus FD_RESERVE plus what this machine's
    own clients may open beyond max_connections (127.0.0.1 and ::1, max_per_peer each); if the
    hard limit is too low, serve fewer connections (logged) rather than run out of descriptors
    for the data files."""
    reserve = FD_RESERVE + 2 * max_per_peer
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitted = max(soft - reserve, 16)
        log.warning(
            "http.max_connections %d lowered to %d: the open-file limit is %d (raise LimitNOFILE)",
            max_connections,
            fitted,
            soft,
        )
        return fitted
    return max_connections


def _reload(
    app: app_module.App,
    notifier: Notifier,
    reload: Callable[[], Config] | None,
    tls: ServerTls | None = None,
) -> None:
    notifier.reloading("reloading the configuration")
    try:
        if reload is not None:
            app.reload(reload())
    except ConfigError as e:
        log.error("reload failed, keeping the running configuration: %s", e)
    finally:
        if tls is not None:
            tls.renew()
        notifier.reloaded(f"listening on {_url(app.config)}")


def _url(config: Config) -> str:
    """Where the API listens, as clients write it."""
    return f"{'https' if config.http.tls_cert else 'http'}://{config.http.bind}"


async def _run_http(
    app: app_module.App,
    notifier: Notifier,
    reload: Callable[[], Config] | None = None,
    tls: ServerTls | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app, notifier, reload, tls)
    runner = await _listen(app, tls)
    heartbeat = LoopHeartbeat()
    beat = asyncio.create_task(heartbeat.run())
    notifier.ready(f"listening on {_url(app.config)}")
    notifier.start_watchdog(
        lambda: app.store.responsive(WAL_STALL_SECONDS) and heartbeat.alive(LOOP_STALL_SECONDS)
    )
    await stop.wait()
    notifier.stop()  # the watchdog thread: systemd does not enforce it while stopping
    notifier.stopping("stopping: finishing in-flight requests")
    beat.cancel()
    log.info("stopping: no new requests; finishing in-flight writes")
    await runner.cleanup()


async def _listen(app: app_module.App, tls: ServerTls | None = None) -> GuardedRunner:
    """Build the aiohttp app behind its connection guard and listen on http.bind, over TLS when
    `tls` is given (ConfigError if taken)."""
    settings = app.config.http
    limits = ConnectionLimits(
        _fit_fd_limit(settings.max_connections, settings.max_connections_per_ip),
        settings.max_connections_per_ip,
        settings.header_timeout / 1e9,
        settings.send_timeout / 1e9,
    )
    web_app = http_server.create(http_services(app))
    guard = ConnectionGuard(limits)
    guard.register_metrics(REGISTRY)
    web_app[BODY_READER].budget.register_metrics(REGISTRY)
    runner = GuardedRunner(
        web_app,
        guard,
        tls,
        access_log=logging.getLogger("appliance.access"),  # quiet unless --log-filter enables it
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        keepalive_timeout=settings.keepalive_timeout / 1e9,
    )
    await runner.setup()
    host, _, port = settings.bind.rpartition(":")
    # plain TCP even for HTTPS: each connection is counted before its handshake (GuardedHandler)
    site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {settings.bind}: {e.strerror}; choose another --http-bind"
        ) from None
    log.info(
        "listening on %s node_id=%s data_dir=%s auth=%s",
        _url(app.config),
        app.config.server.node_id,
        app.config.server.data_dir,
        "on" if app.config.auth.enabled else "off",
    )
    return runner


def http_services(app: app_module.App) -> HttpServices:
    """What the HTTP layer may reach of a running App, by area (handlers never see the App)."""
    config = app.config
    syncer = app.syncer
    settings = HttpSettings(
        auth_enabled=config.auth.enabled,
        bind=config.http.bind,
        allowed_hosts=config.http.allowed_hosts,
        cors_origins=config.http.cors_origins,
        metrics_without_token="metrics" in config.auth.disable_authz,
        body=BodyLimits(
            config.http.max_request_size,
            config.http.body_timeout / 1e9,
            config.http.body_min_rate,
            config.http.body_idle_timeout / 1e9,
        ),
        max_buffered_bytes=config.http.max_buffered_bytes,
    )
    return HttpServices(
        settings=settings,
        write=WriteAccess(app.writes, app.pools.write_pool),
        query=QueryAccess(app.queries, app.pools.query_pool, app.query_slots, config.query.max_concurrent),
        configure=ConfigureAccess(app.catalog, app.tokens, app.pools.admin_pool, config.auth.enabled),
        engine=EngineAccess(app.engine, app.pools.engine_pool, app.pools.admin_pool),
        ops=OpsAccess(
            health=app.health,
            persist=app.persister.request,
            sync_status=app.sync_status,
            sync_now=syncer.sync_now if syncer is not None else None,
            process_id=app.process_id,
            pool=app.pools.admin_pool,
        ),
    )


notify_log = logging.getLogger("appliance.notify")

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
            notify_log.debug(
                "no systemd watchdog (NOTIFY_SOCKET or WATCHDOG_USEC unset, or not for this pid)"
            )
            return
        if self._thread is not None:
            notify_log.debug("systemd watchdog already running")
            return
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self._watchdog_loop, args=(alive, interval), name="sd-watchdog", daemon=True
        )
        self._thread.start()
        notify_log.info("systemd watchdog: pinging every %.1fs while healthy", interval)

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
                notify_log.exception("systemd watchdog: the liveness check failed")
                ok = False
            if ok:
                if warned:
                    notify_log.warning("systemd watchdog: healthy again, pinging resumed")
                    warned = False
                self._send("WATCHDOG=1")
            elif not warned:
                notify_log.warning(
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
            notify_log.log(level, "cannot notify systemd at %r: %s", self._address, e)
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
    notify_log.warning(
        "ignoring NOTIFY_SOCKET=%r: only absolute paths and @abstract names are supported", value
    )
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
