"""Runs the appliance: builds the App, serves HTTP until SIGTERM/SIGINT, stops in order."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable

from aiohttp import web

from . import app as app_module
from . import log as log_module
from .config import Config
from .errors import ConfigError
from .http import server as http_server
from .http.connections import ConnectionGuard, ConnectionLimits, GuardedRunner
from .notify import LoopHeartbeat, Notifier

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
    log_module.setup(config.log_filter, config.log_format)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no reload (and no death) during the WAL replay
    notifier = Notifier()
    notifier.status("replaying the WAL")
    app = app_module.build(config)
    try:
        asyncio.run(_run_http(app, notifier, reload))
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # the final persist is not interrupted (Ctrl-C still is)
        notifier.status("stopping: persisting the buffer")
        app.stop()
    return 0


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


def _reload(app: app_module.App, notifier: Notifier, reload: Callable[[], Config] | None) -> None:
    notifier.reloading("reloading the configuration")
    try:
        if reload is not None:
            app.reload(reload())
    except ConfigError as e:
        log.error("reload failed, keeping the running configuration: %s", e)
    finally:
        notifier.reloaded(f"listening on http://{app.config.bind}")


async def _run_http(
    app: app_module.App, notifier: Notifier, reload: Callable[[], Config] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app, notifier, reload)
    config = app.config
    limits = ConnectionLimits(
        _fit_fd_limit(config.max_connections, config.max_connections_per_ip),
        config.max_connections_per_ip,
        config.header_timeout / 1e9,
        config.send_timeout / 1e9,
    )
    runner = GuardedRunner(
        http_server.create(app),
        ConnectionGuard(limits),
        access_log=logging.getLogger("appliance.access"),  # quiet unless --log-filter enables it
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        keepalive_timeout=config.keepalive_timeout / 1e9,
    )
    await runner.setup()
    host, _, port = app.config.bind.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {app.config.bind}: {e.strerror}; choose another --http-bind"
        ) from None
    log.info(
        "listening on http://%s node_id=%s data_dir=%s auth=%s",
        app.config.bind,
        app.config.node_id,
        app.config.data_dir,
        "on" if app.config.auth_enabled else "off",
    )
    if not app.config.auth_enabled and not http_server.loopback_bind(app.config.bind):
        log.warning(
            "auth is off and http.bind %s is reachable from the network: anyone who can reach it can"
            " read, write and delete data (only Host names that are IP addresses, localhost or in"
            " http.allowed_hosts are answered)",
            app.config.bind,
        )
    heartbeat = LoopHeartbeat()
    beat = asyncio.create_task(heartbeat.run())
    notifier.ready(f"listening on http://{app.config.bind}")
    notifier.start_watchdog(
        lambda: app.wal.responsive(WAL_STALL_SECONDS) and heartbeat.alive(LOOP_STALL_SECONDS)
    )
    await stop.wait()
    notifier.stop()  # the watchdog thread: systemd does not enforce it while stopping
    notifier.stopping("stopping: finishing in-flight requests")
    beat.cancel()
    log.info("stopping: no new requests; finishing in-flight writes")
    await runner.cleanup()
