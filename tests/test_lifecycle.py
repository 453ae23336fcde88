"""sd_notify over real AF_UNIX datagram sockets: what Notifier sends, the watchdog, and the real server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.lifecycle import LoopHeartbeat, Notifier
from tests.server import Server, wait_for


class Listener:
    """The systemd side: a bound datagram socket that parses each datagram into KEY=VALUE fields."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def recv(self, timeout: float = 5.0) -> dict[str, str] | None:
        """The next message, or None when none arrives within timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    def collect(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Every message arriving within `seconds`, with its monotonic arrival time."""
        out: list[tuple[float, dict[str, str]]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None:
                out.append((time.monotonic(), msg))
        return out

    def wait_for(self, key: str, timeout: float) -> tuple[dict[str, str], list[dict[str, str]]]:
        """Read until a message carrying `key` arrives; returns it and everything read before it."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is None:
                break
            if key in msg:
                return msg, seen
            seen.append(msg)
        raise AssertionError(f"no {key} within {timeout}s; got {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "notify.sock"


@pytest.fixture
def listener(sock_path: Path) -> Iterator[Listener]:
    lst = Listener(str(sock_path))
    yield lst
    lst.close()


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers a test made; stopped afterwards so no watchdog thread outlives its test."""
    made: list[Notifier] = []
    yield made
    for n in made:
        n.stop()


def _notifier(notifiers: list[Notifier], **env: str) -> Notifier:
    n = Notifier(env)
    notifiers.append(n)
    return n


def test_ready_sends_status_and_mainpid(
    listener: Listener, sock_path: Path, notifiers: list[Notifier]
) -> None:
    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path))
    assert n.enabled
    n.ready("listening on 127.0.0.1:8181")
    assert listener.recv() == {
        "READY": "1",
        "STATUS": "listening on 127.0.0.1:8181",
        "MAINPID": str(os.getpid()),
    }


def test_ready_without_status_sends_no_status(
    listener: Listener, sock_path: Path, notifiers: list[Notifier]
) -> None:
    _notifier(notifiers, NOTIFY_SOCKET=str(sock_path)).ready()
    assert listener.recv() == {"READY": "1", "MAINPID": str(os.getpid())}


def test_stopping_and_status(listener: Listener, sock_path: Path, notifiers: list[Notifier]) -> None:
    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path))
    n.status("persisting the buffer")
    n.stopping("stopping: finishing in-flight writes")
    assert listener.recv() == {"STATUS": "persisting the buffer"}
    assert listener.recv() == {"STOPPING": "1", "STATUS": "stopping: finishing in-flight writes"}


def test_status_is_kept_on_one_line(listener: Listener, sock_path: Path, notifiers: list[Notifier]) -> None:
    _notifier(notifiers, NOTIFY_SOCKET=str(sock_path)).status("line one\nREADY=1")
    assert listener.recv() == {"STATUS": "line one READY=1"}


def test_reloading_sends_monotonic_usec_then_ready(
    listener: Listener, sock_path: Path, notifiers: list[Notifier]
) -> None:
    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloaded()
    msg = listener.recv()
    assert msg is not None and msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert listener.recv() == {"READY": "1"}


def test_abstract_namespace_socket(notifiers: list[Notifier]) -> None:
    name = f"appliance-test-{uuid.uuid4().hex}"
    lst = Listener("\0" + name)
    try:
        n = _notifier(notifiers, NOTIFY_SOCKET="@" + name)
        assert n.enabled
        n.ready("abstract")
        n.stopping()
        assert lst.recv() == {"READY": "1", "STATUS": "abstract", "MAINPID": str(os.getpid())}
        assert lst.recv() == {"STOPPING": "1"}
    finally:
        lst.close()


def test_watchdog_interval_is_half_of_watchdog_usec(sock_path: Path, notifiers: list[Notifier]) -> None:
    path = str(sock_path)
    assert _notifier(notifiers, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000").watchdog_interval() == 0.1
    assert _notifier(notifiers, NOTIFY_SOCKET=path, WATCHDOG_USEC="30000000").watchdog_interval() == 15.0
    mine = _notifier(notifiers, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()))
    assert mine.watchdog_interval() == 0.1
    assert _notifier(notifiers, NOTIFY_SOCKET=path).watchdog_interval() is None
    assert _notifier(notifiers, NOTIFY_SOCKET=path, WATCHDOG_USEC="0").watchdog_interval() is None
    assert _notifier(notifiers, NOTIFY_SOCKET=path, WATCHDOG_USEC="soon").watchdog_interval() is None


def test_watchdog_pings_at_half_the_timeout(
    listener: Listener, sock_path: Path, notifiers: list[Notifier]
) -> None:
    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    n.start_watchdog(lambda: True)
    got = listener.collect(1.05)
    assert all(msg == {"WATCHDOG": "1"} for _, msg in got)
    assert 7 <= len(got) <= 13, got  # one at once, then every 0.1 s
    gaps = [b - a for (a, _), (b, _) in zip(got, got[1:], strict=False)]
    assert 0.07 <= statistics.median(gaps) <= 0.15, gaps
    n.stop()
    listener.collect(0.15)  # one may have been in flight
    assert listener.collect(0.3) == []


def test_watchdog_sends_nothing_while_not_alive(
    listener: Listener, sock_path: Path, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    healthy = threading.Event()
    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    with caplog.at_level(logging.WARNING, logger="appliance.notify"):
        n.start_watchdog(healthy.is_set)
        assert listener.collect(0.6) == []
        warnings = [r for r in caplog.records if "liveness check failed" in r.getMessage()]
        assert len(warnings) == 1  # warned once, not on every tick
        healthy.set()
        assert listener.wait_for("WATCHDOG", 1.0)[0] == {"WATCHDOG": "1"}
        healthy.clear()
        listener.collect(0.15)  # a tick that checked just before clear()
        assert listener.collect(0.5) == []


def test_watchdog_treats_a_failing_check_as_not_alive(
    listener: Listener, sock_path: Path, notifiers: list[Notifier]
) -> None:
    def broken() -> bool:
        raise RuntimeError("cannot tell")

    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    n.start_watchdog(broken)
    assert listener.collect(0.5) == []


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    listener: Listener, sock_path: Path, notifiers: list[Notifier]
) -> None:
    other = str(os.getppid())
    n = _notifier(notifiers, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000", WATCHDOG_PID=other)
    assert n.watchdog_interval() is None
    n.start_watchdog(lambda: True)
    assert listener.collect(0.5) == []
    n.status("still notifies")  # only the watchdog is off
    assert listener.recv() == {"STATUS": "still notifies"}


def test_without_notify_socket_everything_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, notifiers: list[Notifier]
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    for n in (Notifier(), _notifier(notifiers)):
        notifiers.append(n)
        assert not n.enabled
        n.ready("x")
        n.status("x")
        n.reloading()
        n.reloaded()
        n.stopping()
        n.start_watchdog(lambda: True)
        n.stop()
    assert not [t for t in threading.enumerate() if t.name == "sd-watchdog"]


def _cannot_notify(record: logging.LogRecord) -> bool:
    return record.name == "appliance.notify" and "cannot notify" in record.getMessage()


def test_unreachable_socket_does_not_raise(
    tmp_path: Path, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    n = _notifier(notifiers, NOTIFY_SOCKET=str(tmp_path / "missing.sock"), WATCHDOG_USEC="200000")
    assert n.enabled
    with caplog.at_level(logging.DEBUG, logger="appliance.notify"):
        n.ready("x")
        n.status("x")
        n.stopping()
        n.start_watchdog(lambda: True)
        # ready, status and stopping failed; two more failures are the watchdog's pings (every 0.1 s)
        wait_for(lambda: len([r for r in caplog.records if _cannot_notify(r)]) >= 5)
        n.stop()
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "cannot notify" in r.getMessage()
    ]
    assert len(warnings) == 1  # then debug only
    # A bound socket that nobody reads from any more: also no exception.
    dead = Listener(str(tmp_path / "dead.sock"))
    dead.close()
    _notifier(notifiers, NOTIFY_SOCKET=str(tmp_path / "dead.sock")).ready()


def test_unsupported_notify_socket_is_ignored(notifiers: list[Notifier]) -> None:
    assert not _notifier(notifiers, NOTIFY_SOCKET="relative/notify.sock").enabled
    assert not _notifier(notifiers, NOTIFY_SOCKET="vsock:2:1234").enabled


def _block(seconds: float) -> None:
    time.sleep(seconds)


async def _until(check: Callable[[], bool]) -> None:
    """Give the event loop turns until `check()` holds; fail after about 10 s."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)  # a turn for the other tasks (the heartbeat stamps on a timer)
    raise AssertionError("timed out waiting for the condition")


def test_loop_heartbeat_notices_a_blocked_loop() -> None:
    async def scenario() -> None:
        beat = LoopHeartbeat(period=0.05)
        task = asyncio.create_task(beat.run())
        await _until(lambda: beat.alive(within=0.2))
        assert beat.alive(within=0.2)
        _block(0.3)  # the loop is blocked: no stamps
        assert not beat.alive(within=0.2)
        await _until(lambda: beat.alive(within=0.2))  # the loop runs again: the heartbeat stamps
        assert beat.alive(within=0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


@pytest.mark.e2e
def test_server_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, listener: Listener, sock_path: Path
) -> None:
    """End to end: needs the Notifier wired into appliance.lifecycle."""
    server = Server(tmp_path / "data", env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    ready, before = listener.wait_for("READY", 10.0)
    assert ready["MAINPID"] == str(pid)
    assert not [m for m in before if "WATCHDOG" in m], "watchdog pings before READY=1"
    assert server.request("GET", "/health").status == 200
    pings = [m for _, m in listener.collect(2.6) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 4, pings  # every 0.5 s
    assert server.stop() == 0
    rest = listener.collect(0.5)
    assert any(m.get("STOPPING") == "1" for _, m in rest), rest


@pytest.mark.e2e
def test_server_notifies_reloading_on_sighup(tmp_path: Path, listener: Listener, sock_path: Path) -> None:
    """End to end: `systemctl reload` (ExecReload=kill -HUP) gets RELOADING=1 then READY=1; needs the wiring."""
    server = Server(tmp_path / "data", env={"NOTIFY_SOCKET": str(sock_path)})
    server.start()
    assert server.proc is not None
    listener.wait_for("READY", 10.0)
    began = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    server.proc.send_signal(signal.SIGHUP)
    reloading, _ = listener.wait_for("RELOADING", 10.0)
    assert int(reloading["MONOTONIC_USEC"]) >= began
    listener.wait_for("READY", 10.0)
    assert server.request("GET", "/health").status == 200  # SIGHUP did not stop it
    assert server.stop() == 0
