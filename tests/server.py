"""A real `python -m appliance serve` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.tlsca import ServerCert

REPO = Path(__file__).resolve().parent.parent

#: Servers started by the current test; the `_reap_servers` fixture kills what is left.
RUNNING: list[Server] = []


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something true (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value {value!r}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Server:
    """Start, stop, kill -9 and talk to one appliance process."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    auth: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str | None = None
    tls: ServerCert | None = None  # serve HTTPS with this certificate; requests trust its CA

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client_context(self, ca: Path | None = None) -> ssl.SSLContext:
        """A client TLS context trusting `ca` (default: the CA of the server's certificate)."""
        cafile = ca if ca is not None else self.tls.ca if self.tls is not None else None
        assert cafile is not None, "a plain-HTTP server has no CA"
        return ssl.create_default_context(cafile=str(cafile))

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "appliance",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--http-bind",
            f"127.0.0.1:{self.port}",
            "--node-id",
            "test-node",
            *self.args,
        ]
        if self.tls is not None:
            cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        if not self.auth:
            cmd.append("--without-auth")
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | self.env
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"server exited:\n{self.log()}")
            try:
                if self.request("GET", "/health").status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server did not become healthy:\n{self.log()}")
        if self.auth:
            self.token = (self.data_dir / "admin-token").read_text().strip()
        return self

    def memory_mib(self, key: str = "VmHWM") -> float:
        """The server process's peak (VmHWM) or current (VmRSS) resident memory, in MiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {key} in /proc/{self.proc.pid}/status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> Response:
        query = urllib.parse.urlencode(params or {})
        url = self.url + path + (f"?{query}" if query else "")
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        tok = token if token is not None else self.token
        if tok and "Authorization" not in (headers or {}):
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            context = self.client_context() if self.tls is not None else None
            with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
                return Response(r.status, r.read(), dict(r.headers))
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), dict(e.headers))

    def write(self, db: str, lp: str | bytes, **params: Any) -> Response:
        return self.request("POST", "/api/v3/write_lp", {"db": db, **params}, lp)

    def query(self, db: str, sql: str, fmt: str = "json", **extra: Any) -> Any:
        r = self.request("GET", "/api/v3/query_sql", {"db": db, "q": sql, "format": fmt, **extra})
        assert r.status == 200, (r.status, r.body)
        return r.json() if fmt == "json" else r.body
