"""Shared parts of the benchmarks: the workload, the servers under test, HTTP load and reports.

Two targets speak the same workload:

- the appliance, started as `<repo>/.venv/bin/python -m appliance serve ... --without-auth` (with
  `--auth`: with auth on, writing with a token that may only write the benchmark's database; with
  `--tls`: over HTTPS, with a self-signed certificate made by `openssl` for the run);
- InfluxDB 1.x (`influxd` from Debian's `influxdb` package), started on a generated config with
  `wal-fsync-delay = "0s"` (an fsync per write, like the appliance's acknowledged writes).

Every server runs in its own temporary directory and process session; `Server.stop` ends it by
its pid and the directory is removed afterwards (unless `--keep`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATABASE = "bench"
MEASUREMENT = "weather"
KINDS = ("th", "co2", "pm", "air")
SITES = 50
PAGE = 4096


# --- workload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What to write: `lines` points for `devices` devices, evenly spread over `span_s`
    seconds that end at `end_ns`, cut into bodies of `batch` lines."""

    lines: int = 1_000_000
    batch: int = 5_000
    devices: int = 1_000
    span_s: float = 3_600.0
    end_ns: int = 0  # 0 means "now" when the bodies are generated

    def describe(self) -> str:
        return (
            f"{self.lines:,} lines, {self.devices:,} devices, {self.batch:,}-line batches, "
            f"timestamps over the last {self.span_s / 60:.0f} min"
        )


def generate_bodies(workload: Workload) -> tuple[list[bytes], list[int]]:
    """Pre-encode every request body (line protocol, ns timestamps) and its line count.

    Line i belongs to device i % devices, so each device's points are `devices` steps apart and
    their timestamps never repeat. The values vary deterministically (no random module)."""
    end = workload.end_ns or time.time_ns()
    step = max(1, int(workload.span_s * 1e9) // max(1, workload.lines))
    start = end - step * workload.lines
    series = [
        f"{MEASUREMENT},device=dev{d:04d},site=s{d % SITES},kind={KINDS[d % len(KINDS)]} "
        for d in range(workload.devices)
    ]
    bodies: list[bytes] = []
    counts: list[int] = []
    for first in range(0, workload.lines, workload.batch):
        last = min(workload.lines, first + workload.batch)
        lines = [
            f"{series[i % workload.devices]}temp={15 + (i * 7919 % 2000) / 100},hum={i * 31 % 100}i,"
            f'ok={"false" if i % 97 == 0 else "true"},status="{"warn" if i % 13 == 0 else "ok"}" '
            f"{start + i * step}"
            for i in range(first, last)
        ]
        bodies.append(("\n".join(lines) + "\n").encode())
        counts.append(last - first)
    return bodies, counts


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    """An unused loopback TCP port (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (through /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


@dataclass
class Server:
    """One server process under test, with its own temporary directory."""

    name: str
    base_dir: Path
    port: int
    health_path: str
    health_status: int = 200
    cmd: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    tls: ssl.SSLContext | None = None  # the client side of an HTTPS server

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def start(self, timeout: float) -> None:
        """Start the process and wait until its health endpoint answers."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.base_dir,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us in order
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = request(self.port, "GET", self.health_path, timeout=2, tls=self.tls)
                if status == self.health_status:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; only this server's own process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def rss_mb(self) -> float:
        """Current resident memory of the process tree (VmRSS), MB."""
        return sum(_status_kb(p, "VmRSS") for p in self._pids()) / 1024

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the process tree, MB (children summed)."""
        return sum(_status_kb(p, "VmHWM") for p in self._pids()) / 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time consumed by the process tree so far."""
        return sum(_cpu_seconds(p) for p in self._pids())

    def _pids(self) -> list[int]:
        return _process_tree(self.proc.pid) if self.proc is not None else []


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 300,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """One HTTP(S) request on a fresh loopback connection: (status, body)."""
    conn = connect(port, timeout, tls)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def connect(port: int, timeout: float, tls: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """A loopback connection: HTTPS when `tls` (the client context) is given."""
    if tls is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)


def self_signed(folder: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate and key for 127.0.0.1 made by `openssl`, and a client context trusting it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-days", "1", "-subj", "/CN=bench", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key, ssl.create_default_context(cafile=str(cert))


# --- targets --------------------------------------------------------------------------------


class Target:
    """A server plus how to write to it and query it."""

    name = "target"
    server: Server

    def __init__(self, work_dir: Path) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-", dir=work_dir))

    def write_path(self) -> str:
        raise NotImplementedError

    def write_headers(self) -> dict[str, str]:
        """Headers every write carries (a token, when the target checks one)."""
        return {}

    def setup(self) -> None:
        """Prepare the database after start (nothing by default)."""

    def query(self, text: str) -> tuple[int, bytes]:
        raise NotImplementedError

    def count_rows(self) -> int | None:
        raise NotImplementedError

    def result_rows(self, body: bytes) -> int:
        raise NotImplementedError

    def cleanup(self, keep: bool) -> None:
        self.server.stop()
        if keep:
            print(f"  kept {self.name} data in {self.base_dir}")
        else:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class Appliance(Target):
    name = "appliance"

    def __init__(
        self, work_dir: Path, python: Path, extra_args: str = "", auth: bool = False, tls: bool = False
    ) -> None:
        super().__init__(work_dir)
        port = free_port()
        cmd = [str(python), "-m", "appliance", "serve", "--data-dir", str(self.base_dir / "data")]
        cmd += ["--http-bind", f"127.0.0.1:{port}", "--node-id", "bench"]
        cmd += [] if auth else ["--without-auth"]
        client_tls = None
        if tls:
            cert, key, client_tls = self_signed(self.base_dir)
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
        self.server = Server(
            self.name, self.base_dir, port, "/health", 200, cmd + shlex.split(extra_args), tls=client_tls
        )
        self.auth = auth
        self.admin: dict[str, str] = {}  # the admin token's header, for queries and persist
        self.writer: dict[str, str] = {}  # a token that may only write the benchmark's database

    def setup(self) -> None:
        """With auth on: the admin token from the data dir, and a write-only token made with it."""
        if not self.auth:
            return
        admin = (self.base_dir / "data" / "admin-token").read_text().strip()
        self.admin = {"Authorization": f"Bearer {admin}"}
        payload = {"token_name": "bench-writer", "permissions": [f"db:{DATABASE}:write"]}
        status, body = request(
            self.server.port,
            "POST",
            "/api/v3/enterprise/configure/token",
            json.dumps(payload).encode(),
            {**self.admin, "Content-Type": "application/json"},
            tls=self.server.tls,
        )
        if status != 201:
            raise RuntimeError(f"could not create the write token: {status} {body[:200]!r}")
        self.writer = {"Authorization": f"Bearer {json.loads(body)['token']}"}

    def write_path(self) -> str:
        return f"/api/v3/write_lp?db={DATABASE}"

    def write_headers(self) -> dict[str, str]:
        return self.writer

    def query(self, text: str) -> tuple[int, bytes]:
        params = urllib.parse.urlencode({"db": DATABASE, "q": text, "format": "json"})
        return request(
            self.server.port, "GET", f"/api/v3/query_sql?{params}", headers=self.admin, tls=self.server.tls
        )

    def persist(self) -> tuple[int, bytes]:
        return request(self.server.port, "POST", "/api/v3/persist", headers=self.admin, tls=self.server.tls)

    def count_rows(self) -> int | None:
        status, body = self.query(f"SELECT count(*) AS n FROM {MEASUREMENT}")
        return int(json.loads(body)[0]["n"]) if status == 200 else None

    def result_rows(self, body: bytes) -> int:
        return len(json.loads(body))


INFLUXDB_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{base}/meta"
  logging-enabled = false

[data]
  dir = "{base}/data"
  wal-dir = "{base}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  max-body-size = 0

[logging]
  level = "warn"
  suppress-logo = true

[[graphite]]
  enabled = false
[[collectd]]
  enabled = false
[[opentsdb]]
  enabled = false
[[udp]]
  enabled = false
"""


class InfluxDB1(Target):
    name = "influxdb1"

    def __init__(self, work_dir: Path, influxd: Path) -> None:
        super().__init__(work_dir)
        port = free_port()
        config = self.base_dir / "influxdb.conf"
        config.write_text(INFLUXDB_CONFIG.format(base=self.base_dir, port=port, rpc_port=free_port()))
        self.server = Server(
            self.name, self.base_dir, port, "/ping", 204, [str(influxd), "-config", str(config)]
        )

    def setup(self) -> None:
        status, body = request(self.server.port, "POST", f"/query?q=CREATE+DATABASE+{DATABASE}")
        if status != 200:
            raise RuntimeError(f"CREATE DATABASE failed: {status} {body[:200]!r}")

    def write_path(self) -> str:
        return f"/write?db={DATABASE}&precision=ns"

    def query(self, text: str) -> tuple[int, bytes]:
        params = urllib.parse.urlencode({"db": DATABASE, "q": text})
        status, body = request(self.server.port, "GET", f"/query?{params}")
        if status == 200 and b'"error"' in body:  # InfluxQL errors come back as 200
            status = 400
        return status, body

    def count_rows(self) -> int | None:
        status, body = self.query(f"SELECT count(temp) FROM {MEASUREMENT}")
        if status != 200:
            return None
        series = json.loads(body)["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0

    def result_rows(self, body: bytes) -> int:
        results = json.loads(body)["results"]
        return sum(len(s.get("values", [])) for r in results for s in r.get("series", []))


def check_influxd(path: Path) -> str | None:
    """Why InfluxDB cannot be benchmarked, or None."""
    if not path.exists():
        return f"{path} not found (apt-get install -y influxdb)"
    return None


def check_appliance(python: Path) -> str | None:
    """Why the appliance cannot be benchmarked, or None."""
    if not python.exists():
        return f"{python} not found (make the venv: `make test` or `python3 -m venv .venv`)"
    probe = subprocess.run(
        [str(python), "-m", "appliance", "serve", "--help"], capture_output=True, cwd=REPO, timeout=60
    )
    if probe.returncode != 0:
        return f"`{python} -m appliance serve --help` failed:\n{probe.stderr.decode()[-2000:]}"
    return None


def choose_targets(args: argparse.Namespace) -> list[Callable[[], Target]]:
    """Factories for the targets to benchmark, after checking each can run."""
    python = args.python or args.repo / ".venv" / "bin" / "python"
    chosen: list[Callable[[], Target]] = []
    if not args.peer_only:
        problem = check_appliance(python)
        if problem:
            print(f"appliance skipped: {problem}")
        else:
            chosen.append(lambda: Appliance(args.work_dir, python, args.appliance_args, args.auth, args.tls))
    if not args.no_peer:
        problem = check_influxd(args.influxd)
        if problem:
            print(f"influxdb1 skipped: {problem}")
        else:
            chosen.append(lambda: InfluxDB1(args.work_dir, args.influxd))
    return chosen


# --- load -----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one load run measured."""

    lines: int
    seconds: float
    latencies: list[float]
    errors: list[str]
    client_cpu_s: float

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_load(
    port: int,
    path: str,
    bodies: list[bytes],
    counts: list[int],
    connections: int,
    label: str,
    progress_every: float = 2.0,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """POST every body once over `connections` keep-alive connections (one thread each)."""

    def body(i: int) -> tuple[bytes, int] | None:
        return (bodies[i], counts[i]) if i < len(bodies) else None

    return drive_load(port, path, body, connections, label, progress_every, headers, tls)


def drive_load(
    port: int,
    path: str,
    body: Callable[[int], tuple[bytes, int] | None],
    connections: int,
    label: str,
    progress_every: float = 2.0,
    extra_headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """POST `body(0)`, `body(1)`... (bytes and their line count) until it gives None, over
    `connections` keep-alive connections (one thread each).

    The threads take the next body number from a shared counter; a batch's latency runs from
    sending the request to reading the whole response (the acknowledgement)."""
    next_index = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    done = [0]
    stop = threading.Event()

    def worker() -> None:
        conn = connect(port, 300, tls)
        headers = {"Content-Type": "text/plain; charset=utf-8", **(extra_headers or {})}
        try:
            while (item := body(i := next(next_index))) is not None:
                data, count = item
                began = time.perf_counter()
                try:
                    conn.request("POST", path, body=data, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = connect(port, 300, tls)
                    with lock:
                        errors.append(f"batch {i}: {exc!r}")
                    continue
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    if resp.status in (200, 204):
                        done[0] += count
                    else:
                        errors.append(f"batch {i}: HTTP {resp.status} {answer[:300]!r}")
        finally:
            conn.close()

    def progress(began: float) -> None:
        while not stop.wait(progress_every):
            elapsed = time.perf_counter() - began
            print(f"    {label}: {done[0]:>12,} lines in {elapsed:5.1f} s ({done[0] / elapsed:,.0f} lines/s)")

    cpu_before = time.process_time()
    began = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    reporter = threading.Thread(target=progress, args=(began,), daemon=True)
    reporter.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    stop.set()
    reporter.join()
    return LoadResult(done[0], seconds, latencies, errors, time.process_time() - cpu_before)


# --- running and reporting ------------------------------------------------------------------


@contextlib.contextmanager
def started(target: Target, timeout: float, keep: bool) -> Iterator[Target]:
    """Start a target, prepare it, and always stop it and remove its directory afterwards."""
    try:
        print(f"  starting {target.name} on port {target.server.port} ({target.base_dir})")
        target.server.start(timeout)
        target.setup()
        yield target
    finally:
        target.cleanup(keep)


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so `finally` blocks stop the servers."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def machine() -> str:
    """A one-line description of this machine: cores, CPU model, memory, kernel."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem_gb:.1f} GB RAM, {os.uname().release}, Python {sys.version.split()[0]}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by both benchmarks."""
    parser.add_argument(
        "--lines", type=int, default=1_000_000, help="lines to write per run (default 1,000,000)"
    )
    parser.add_argument("--batch", type=int, default=5_000, help="lines per write request (default 5,000)")
    parser.add_argument(
        "--devices", type=int, default=1_000, help="distinct devices (series) (default 1,000)"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip InfluxDB 1.x")
    parser.add_argument("--appliance-only", dest="no_peer", action="store_true", help="same as --no-peer")
    parser.add_argument("--peer-only", action="store_true", help="benchmark only InfluxDB 1.x")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help=f"appliance checkout whose .venv to run (default {REPO})"
    )
    parser.add_argument(
        "--python", type=Path, help="interpreter for the appliance (default <repo>/.venv/bin/python)"
    )
    parser.add_argument(
        "--appliance-args",
        default="",
        help="extra `appliance serve` arguments, e.g. '--wal-flush-interval 10ms'",
    )
    parser.add_argument(
        "--influxd", type=Path, default=Path("/usr/bin/influxd"), help="InfluxDB 1.x server binary"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()), help="where the servers' temp dirs go"
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data directories")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="run the appliance with auth on, writing with a token that may only write the benchmark database",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="run the appliance over HTTPS (a self-signed certificate made by openssl)",
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /health")


def prepare(args: argparse.Namespace) -> list[Callable[[], Target]]:
    """Shared start of every benchmark: signal handling, work dir, targets, the machine line."""
    install_signal_handlers()
    args.work_dir = Path(args.work_dir)
    factories = choose_targets(args)
    if factories:
        print(f"machine: {machine()}")
    else:
        print("nothing to benchmark")
    return factories
