"""A real Mosquitto broker on a free loopback port, for MQTT tests and the MQTT benchmark.

`Broker(dir).start()` writes `dir/mosquitto.conf` and runs `mosquitto -c` on it: persistence in
`dir/`, the log in `dir/mosquitto.log`, optionally a password file (`users`) and a TLS listener
with a throw-away CA (`tls`). Brokers still running are listed in `RUNNING_BROKERS`; `reap()`
kills them (call it from a fixture: a failed assertion skips `stop()`).

`python tests/mosquitto.py` is a self-check: it starts a plain, a password, a TLS and a mutual-TLS
broker and sends messages through each (and through a restart, to a persistent session).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python tests/mosquitto.py`: make `tests.server` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paho.mqtt.client import CallbackAPIVersion, Client, ConnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.server import free_port

#: Brokers started and not yet stopped; `reap()` kills them.
RUNNING_BROKERS: list[Broker] = []

_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin")
_INSTALL_HINT = "install it: `sudo apt-get install -y mosquitto` (Debian/Ubuntu) or `brew install mosquitto`"


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SEARCH:
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def _apt_install(package: str) -> str:
    """`apt-get install -y package`, with `apt-get update` first if the lists are missing; its output."""
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        return (done.stdout + done.stderr)[-2000:]
    except OSError as exc:
        return str(exc)


def _tool(name: str, package: str, hint: str) -> str:
    """The path of a command; as root, apt-get install its package when missing; else RuntimeError."""
    found = _find(name)
    tried = ""
    if found is None and os.geteuid() == 0 and _find("apt-get"):
        output = _apt_install(package)
        found = _find(name)
        tried = f" (`apt-get install -y {package}` did not provide it:\n{output})"
    if found is None:
        why = tried or ("" if os.geteuid() == 0 else " (not root, so not installing it)")
        raise RuntimeError(f"{name} not found on PATH or in /usr/sbin; {hint}{why}")
    return found


def mosquitto_binary() -> str:
    """The mosquitto broker binary; installed with apt-get when missing and running as root."""
    return _tool("mosquitto", "mosquitto", _INSTALL_HINT)


def reap() -> None:
    """Kill every broker still running (for a test fixture's teardown)."""
    while RUNNING_BROKERS:
        RUNNING_BROKERS.pop().kill()


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` (not just anyone) has a socket listening on 127.0.0.1:`port`.

    Read from /proc, so no probe connection shows up in the broker's log; without /proc, whether
    the port accepts a TCP connection."""
    if not Path("/proc/net/tcp").exists():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False
    inodes = set()
    with contextlib.suppress(OSError):
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[1] == f"0100007F:{port:04X}" and cols[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return True
    return False


@dataclass
class Broker:
    """Start, stop, kill, restart and publish to one Mosquitto process."""

    dir: Path
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)  # non-empty: password file, no anonymous access
    tls: bool = False
    require_certificate: bool = False  # with tls: clients must present a certificate signed by the CA
    autosave_interval: int = 1  # seconds between persistence saves (0: only on clean exit)
    extra: list[str] = field(default_factory=list)  # more mosquitto.conf lines
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "mosquitto.log"

    @property
    def ca_file(self) -> Path:
        """With tls: the CA certificate that signed the broker's (and `client_cert`'s) certificates."""
        return self.dir / "tls" / "ca.pem"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- configuration ------------------------------------------------------------------------

    def config(self) -> str:
        """The mosquitto.conf text for this broker."""
        lines = []
        if os.geteuid() == 0:
            # As root mosquitto switches to user `mosquitto`, which cannot read a private tmp dir.
            lines.append("user root")
        lines += [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"autosave_interval {self.autosave_interval}",
            "max_queued_messages 0",  # no limit: a persistent session's queue never drops messages
            "max_inflight_messages 1000",
            f"log_dest file {self.log_path}",
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),  # one per line
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self.dir / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            tls = self.dir / "tls"
            lines += [
                f"cafile {self.ca_file}",
                f"certfile {tls / 'server.pem'}",
                f"keyfile {tls / 'server.key'}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        return "\n".join([*lines, *self.extra]) + "\n"

    def _write_password_file(self) -> None:
        passwd = self.dir / "passwd"
        passwd.unlink(missing_ok=True)
        tool = _tool("mosquitto_passwd", "mosquitto", _INSTALL_HINT)
        for i, (user, password) in enumerate(self.users.items()):
            _run([tool, "-b", *(["-c"] if i == 0 else []), str(passwd), user, password], self.dir)
        passwd.chmod(0o600)

    def _openssl(self, *args: str) -> None:
        _run([_tool("openssl", "openssl", "install openssl"), *args], self.dir / "tls")

    def _make_ca(self) -> None:
        """A CA and a server certificate for 127.0.0.1/localhost (RSA 2048, valid 1 day); once per dir."""
        tls = self.dir / "tls"
        if (tls / "server.pem").exists():
            return
        tls.mkdir(parents=True, exist_ok=True)
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=appliance test CA",
            "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        self._sign("server", "127.0.0.1", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost")

    def _sign(self, name: str, cn: str, usage: str, *ext: str) -> tuple[Path, Path]:
        tls = self.dir / "tls"
        self._openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                      "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        (tls / f"{name}.ext").write_text(
            "\n".join(
                [
                    "basicConstraints=critical,CA:FALSE",
                    "keyUsage=critical,digitalSignature,keyEncipherment",
                    f"extendedKeyUsage={usage}",
                    "subjectKeyIdentifier=hash",
                    "authorityKeyIdentifier=keyid,issuer",
                    *ext,
                ]
            )
            + "\n"
        )
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                      "-CAcreateserial", "-days", "1", "-sha256", "-extfile", f"{name}.ext",
                      "-out", f"{name}.pem")  # fmt: skip
        return tls / f"{name}.pem", tls / f"{name}.key"

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """With tls: a client certificate (CN=name) and its key, signed by the broker's CA."""
        if not self.tls:
            raise RuntimeError("client_cert needs Broker(tls=True)")
        self._make_ca()
        return self._sign(f"client-{name}", name, "clientAuth")

    # --- process --------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Broker:
        """Write the config, start mosquitto and wait until it listens on its port."""
        if self.running:
            raise RuntimeError(f"broker on port {self.port} is already running")
        binary = mosquitto_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.users:
            self._write_password_file()
        if self.tls:
            self._make_ca()
        self.conf_path.write_text(self.config())
        with open(self.dir / "mosquitto.out", "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        RUNNING_BROKERS.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                self._forget()
                raise RuntimeError(f"mosquitto exited with {code}:\n{self.log()}")
            if _listens(self.proc.pid, self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not accept connections on port {self.port} in {timeout} s:\n{self.log()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on a clean exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"mosquitto ignored SIGTERM for {timeout} s:\n{self.log()}") from None
        self.proc = None
        self._forget()

    def save(self, timeout: float = 10.0) -> None:
        """Make mosquitto write its persistence file now (SIGUSR1) and wait until it has."""
        assert self.proc is not None, "broker not running"
        marker = "Saving in-memory database"
        before = self.log().count(marker)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self.log().count(marker) <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not save its database in {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL. Persistence keeps only the last save: autosave_interval 1 saves about every 2 s
        (mosquitto waits until more than the interval has passed, in whole seconds); `save()` first."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        self._forget()

    def restart(self, timeout: float = 10.0) -> Broker:
        """Stop (if running) and start again on the same port with the same persistence."""
        self.stop()
        return self.start(timeout)

    def _forget(self) -> None:
        with contextlib.suppress(ValueError):
            RUNNING_BROKERS.remove(self)

    def log(self) -> str:
        """The broker's log (and anything it printed before the log file opened)."""
        parts = []
        for path in (self.dir / "mosquitto.out", self.log_path):
            with contextlib.suppress(OSError):
                if text := path.read_text(errors="replace").strip():
                    parts.append(text)
        return "\n".join(parts) or "(no broker log)"

    def peak_rss_mb(self) -> float:
        """The broker's peak resident memory (VmHWM), MB; 0 when not running."""
        if self.proc is None:
            return 0.0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    # --- clients --------------------------------------------------------------------------------

    def client(
        self,
        client_id: str = "",
        username: str = "",
        password: str = "",
        cert: tuple[Path, Path] | None = None,
        clean_session: bool = True,
    ) -> Client:
        """A paho client (callback API 2, MQTT 3.1.1) set up for this broker; not yet connected.

        It keeps up to 1000 QoS 1/2 messages in flight and queues the rest without limit."""
        c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        c.max_inflight_messages_set(1000)  # only before connect()
        c.max_queued_messages_set(0)
        if username:
            c.username_pw_set(username, password or None)
        if self.tls:
            certfile, keyfile = (str(p) for p in cert) if cert else (None, None)
            c.tls_set(ca_certs=str(self.ca_file), certfile=certfile, keyfile=keyfile)
        return c

    @contextlib.contextmanager
    def connected(self, client: Client, timeout: float = 10.0) -> Iterator[Client]:
        """Connect with a network thread, wait for CONNACK (failure: RuntimeError), disconnect at the end."""
        answer: list[ReasonCode] = []
        event = threading.Event()

        def on_connect(
            _c: Client, _u: Any, _f: ConnectFlags, code: ReasonCode, _p: Properties | None
        ) -> None:
            answer.append(code)
            event.set()

        def on_disconnect(_c: Client, _u: Any, _f: Any, code: ReasonCode, _p: Properties | None) -> None:
            answer.append(code)  # e.g. a TLS client certificate refused after the handshake
            event.set()

        previous = client.on_disconnect
        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.connect("127.0.0.1", self.port, keepalive=60)
        client.loop_start()
        try:
            if not event.wait(timeout):
                raise TimeoutError(f"no CONNACK from the broker in {timeout} s:\n{self.log()}")
            if answer[0].is_failure:
                raise RuntimeError(f"broker refused the connection: {answer[0]}\n{self.log()}")
            client.on_disconnect = previous
            yield client
        finally:
            client.disconnect()
            client.loop_stop()

    def publish(
        self,
        topic: str,
        payloads: Iterable[bytes | str],
        qos: int = 1,
        username: str = "",
        password: str = "",
        timeout: float = 60.0,
        cert: tuple[Path, Path] | None = None,
    ) -> None:
        """Publish the payloads in order and return once every one is acknowledged (QoS 0: sent)."""
        client = self.client(f"test-pub-{os.getpid()}-{time.monotonic_ns()}", username, password, cert)
        with self.connected(client, timeout):
            try:
                publish_all(client, topic, payloads, qos, timeout)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}:\n{self.log()}") from None


#: Unacknowledged messages `publish_all` lets paho hold: message ids are 16 bits, and paho refuses
#: (MQTT_ERR_QUEUE_SIZE) a QoS 1/2 message whose id is still pending, so never near 65,535.
PUBLISH_WINDOW = 20_000


def publish_all(
    client: Client, topic: str, payloads: Iterable[bytes | str], qos: int = 1, timeout: float = 60.0
) -> int:
    """Publish in order on a connected client and wait until every message is acknowledged (QoS 0:
    written to the socket); the count. TimeoutError if slower. In-flight limit: `Broker.client`'s."""
    deadline = time.monotonic() + timeout
    pending: deque[MQTTMessageInfo] = deque()
    done = 0

    def settle(info: MQTTMessageInfo) -> None:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        if not info.is_published():
            raise TimeoutError(f"only {done} messages acknowledged in {timeout} s")

    for payload in payloads:
        if len(pending) >= PUBLISH_WINDOW:
            settle(pending.popleft())
            done += 1
        pending.append(client.publish(topic, payload, qos=qos))
    while pending:
        settle(pending.popleft())
        done += 1
    return done


# --- self-check -----------------------------------------------------------------------------------


def _collect(
    broker: Broker, topic: str, expect: int, publish: Any, client_id: str = "", clean: bool = True, **kw: Any
) -> list[bytes]:
    """Subscribe (QoS 1) with a fresh client, call `publish()`, return the payloads received."""
    got: list[bytes] = []
    done, subscribed = threading.Event(), threading.Event()

    def on_message(_c: Client, _u: Any, msg: MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        if len(got) >= expect:
            done.set()

    client = broker.client(client_id, clean_session=clean, **kw)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    with broker.connected(client):
        client.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"
        publish()
        if expect:
            done.wait(10)
    return got


def _self_check(base: Path) -> None:
    payloads = [f"weather,device=d{i} temp={i} {i}" for i in range(3)]
    want = [p.encode() for p in payloads]

    plain = Broker(base / "plain").start()
    got = _collect(plain, "bench/#", 3, lambda: plain.publish("bench/a", payloads))
    assert got == want, (got, plain.log())
    print(f"plain {plain.url}: ok")

    # A persistent session keeps its QoS 1 messages while offline and across a broker restart.
    def offline() -> None:
        return None

    _collect(plain, "keep/#", 0, offline, client_id="keeper", clean=False)
    plain.publish("keep/x", payloads)
    plain.restart()
    got = _collect(plain, "keep/#", 3, offline, client_id="keeper", clean=False)
    assert got == want, (got, plain.log())
    plain.publish("keep/x", payloads)
    plain.save()
    plain.kill()
    plain.start()
    got = _collect(plain, "keep/#", 3, offline, client_id="keeper", clean=False)
    assert got == want, (got, plain.log())
    plain.stop()
    print("persistent session across restart, and across save() + kill: ok")

    users = Broker(base / "users", users={"gateway": "s3cret", "other": "pw"}).start()
    got = _collect(
        users,
        "bench/#",
        1,
        lambda: users.publish("bench/b", ["x"], username="other", password="pw"),
        username="gateway",
        password="s3cret",
    )
    assert got == [b"x"], (got, users.log())
    try:
        users.publish("bench/b", ["x"], username="gateway", password="wrong")
    except RuntimeError as exc:
        assert "refused" in str(exc), exc
    else:
        raise AssertionError("a wrong password was accepted")
    users.stop()
    print(f"users {users.url}: ok (wrong password refused)")

    tls = Broker(base / "tls", tls=True).start()
    cert = tls.client_cert("device1")
    got = _collect(tls, "bench/#", 3, lambda: tls.publish("bench/c", payloads, qos=0), cert=cert)
    assert got == want, (got, tls.log())
    tls.kill()
    print(f"tls {tls.url}: ok (CA {tls.ca_file})")

    mtls = Broker(base / "mtls", tls=True, require_certificate=True).start()
    mtls.publish("bench/d", ["x"], cert=mtls.client_cert("device2"))
    try:
        mtls.publish("bench/d", ["x"])
    except (OSError, RuntimeError):  # the TLS 1.3 handshake ends, then the broker hangs up
        pass
    else:
        raise AssertionError("require_certificate let a client without a certificate in")
    mtls.stop()
    print(f"mutual tls {mtls.url}: ok (no client certificate refused)")
    assert not RUNNING_BROKERS, RUNNING_BROKERS


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mosquitto-check-") as tmp:
        os.chmod(tmp, 0o700)  # like pytest's tmp_path: private to this user
        try:
            _self_check(Path(tmp))
        finally:
            reap()
    print("OK")
