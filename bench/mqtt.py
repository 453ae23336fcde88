"""MQTT ingest benchmark: line protocol published to Mosquitto, stored by the appliance's subscriber.

Every scenario gets a fresh Mosquitto (tests/mosquitto.py: max_inflight_messages 1000, no queue
limit) and a fresh appliance whose config.toml subscribes to `bench/#` (client id `bench`, the
scenario's QoS, max_inflight 1000) into database `bench`. The appliance must store a probe line
before the clock starts. --publishers N (default 2) publisher processes (this file with
--publisher; paho, max_inflight 1000, client ids bench-publisher-q<qos>-<k>) then publish the
scenario's messages as fast as they can: the messages are split evenly, each publisher taking its
own contiguous slice of the scenario's lines (its own start offset, so its own timestamps and
devices, and every line stays a distinct point). All of them generate their payloads and connect
first, then start publishing together on a go signal. Meanwhile the benchmark polls
`SELECT count(*)` until every line is stored or the count stops growing for --stall seconds.

Scenarios (each writes its own measurement, mqtt_<scenario>):
  single-q0, single-q1   --messages one-line messages at QoS 0 / QoS 1
  batch-q0,  batch-q1    --lines lines in --batch-line messages at QoS 0 / QoS 1

"Stored" rates run from the first publish (of any publisher) to the poll that saw the last row.
"pub msg/s" is the publishers' combined rate, i.e. the sum of their rates over the common window
from the first publish of any to the last acknowledgement (QoS 0: write) of any; "pub cpu s" is
their CPU summed over their publishing. With --dry-run a plain paho subscriber in this process
stands in for the appliance (checks broker + publishers).
Figures only: nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for tests.mosquitto

from common import (
    DATABASE,
    KINDS,
    REPO,
    SITES,
    Appliance,
    check_appliance,
    install_signal_handlers,
    machine,
)
from paho.mqtt.client import Client, MQTTMessage

from tests.mosquitto import Broker, publish_all

SCENARIOS = ("single-q0", "single-q1", "batch-q0", "batch-q1")
TOPIC_PREFIX = "bench"
PROBE_MEASUREMENT = "mqtt_probe"
INFLIGHT = 1000


@dataclass(frozen=True)
class Scenario:
    """One run: `lines` lines in messages of `per_message` lines, published at `qos`."""

    name: str
    qos: int
    lines: int
    per_message: int

    @property
    def messages(self) -> int:
        return -(-self.lines // self.per_message)

    @property
    def measurement(self) -> str:
        return "mqtt_" + self.name.replace("-", "_")

    @property
    def topic(self) -> str:
        return f"{TOPIC_PREFIX}/{self.name}"


def scenario(name: str, args: argparse.Namespace) -> Scenario:
    kind, _, qos = name.partition("-q")
    if kind not in ("single", "batch") or qos not in ("0", "1"):
        raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if kind == "single":
        return Scenario(name, int(qos), args.messages, 1)
    return Scenario(name, int(qos), args.lines, args.batch)


# --- publisher (a separate process) ---------------------------------------------------------------


def make_payloads(
    measurement: str,
    lines: int,
    per_message: int,
    devices: int,
    first_line: int = 0,
    count: int | None = None,
    end_ns: int | None = None,
) -> list[bytes]:
    """Line-protocol messages for lines first_line .. first_line + count - 1 of a `lines`-line
    scenario: line i is device i % devices at the unique ns timestamp start + i * step (spread over
    the hour before `end_ns`), so every line of the scenario, whichever publisher sends it, is a
    distinct point; `per_message` lines per message (first_line a multiple of it), no trailing newline."""
    if first_line % per_message:
        raise ValueError(f"first_line {first_line} is not a multiple of per_message {per_message}")
    stop = lines if count is None else min(lines, first_line + count)
    end = time.time_ns() if end_ns is None else end_ns
    step = max(1, 3_600_000_000_000 // max(1, lines))
    start = end - step * lines
    series = [
        f"{measurement},device=dev{d:04d},site=s{d % SITES},kind={KINDS[d % len(KINDS)]} "
        for d in range(devices)
    ]
    payloads = []
    for first in range(first_line, stop, per_message):
        body = "\n".join(
            f'{series[i % devices]}temp={15 + (i * 7919 % 2000) / 100},hum={i * 31 % 100}i,status="ok" '
            f"{start + i * step}"
            for i in range(first, min(stop, first + per_message))
        )
        payloads.append(body.encode())
    return payloads


def publisher(args: argparse.Namespace) -> int:
    """Publish one slice of a scenario to the broker as fast as paho can; JSON lines on stdout.

    Generates the slice's payloads and connects, prints {"ready": ...}, waits for a line on stdin
    (the benchmark's go signal, sent to every publisher at once), publishes, prints a summary.
    Times are time.monotonic() (CLOCK_MONOTONIC, shared by every process on the machine)."""
    began = time.perf_counter()
    payloads = make_payloads(
        args.measurement,
        args.lines,
        args.per_message,
        args.devices,
        args.first_line,
        args.slice_lines,
        args.end_ns,
    )
    generated_s = time.perf_counter() - began
    broker = Broker(args.broker_dir, port=args.broker_port)  # started by the benchmark: a handle only
    client_id = f"bench-publisher-q{args.qos}-{args.index}"
    with broker.connected(broker.client(client_id), timeout=30) as client:
        print(json.dumps({"ready": client_id, "messages": len(payloads)}), flush=True)
        if not sys.stdin.readline():
            print("publisher: stdin closed before the go signal", file=sys.stderr)
            return 3
        cpu = time.process_time()
        first = time.monotonic()
        publish_all(client, args.topic, payloads, args.qos, args.publish_timeout)
        done = time.monotonic()
        cpu = time.process_time() - cpu
    summary = {
        "client_id": client_id,
        "messages": len(payloads),
        "lines": sum(p.count(b"\n") + 1 for p in payloads),
        "bytes": sum(map(len, payloads)),
        "generated_s": generated_s,
        "first": first,
        "done": done,
        "cpu_s": cpu,
    }
    print(json.dumps(summary), flush=True)
    return 0


def slices(s: Scenario, publishers: int) -> list[tuple[int, int]]:
    """(first line, line count) per publisher: the messages split evenly (counts differ by at most
    one message), each slice a contiguous run of whole messages; at most one publisher per message."""
    n = max(1, min(publishers, s.messages))
    bounds = [k * s.messages // n for k in range(n + 1)]
    return [
        (a * s.per_message, min(s.lines, b * s.per_message) - a * s.per_message)
        for a, b in itertools.pairwise(bounds)
    ]


def start_publisher(
    s: Scenario,
    broker: Broker,
    args: argparse.Namespace,
    index: int,
    first_line: int,
    count: int,
    end_ns: int,
) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--publisher"]
    cmd += ["--broker-port", str(broker.port), "--broker-dir", str(broker.dir)]
    cmd += ["--topic", s.topic, "--qos", str(s.qos), "--measurement", s.measurement]
    cmd += ["--lines", str(s.lines), "--per-message", str(s.per_message), "--devices", str(args.devices)]
    cmd += ["--index", str(index), "--first-line", str(first_line), "--slice-lines", str(count)]
    cmd += ["--end-ns", str(end_ns), "--publish-timeout", str(args.publish_timeout)]
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_ready(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    """Wait until every publisher has printed its ready line; RuntimeError if one exits or is late."""
    waiting = {p.stdout.fileno(): p for p in procs if p.stdout is not None}
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{len(waiting)} of {len(procs)} publishers not ready after {timeout:.0f} s")
        readable, _, _ = select.select(list(waiting), [], [], left)
        for fd in readable:
            proc = waiting.pop(fd)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if '"ready"' not in line:
                proc.kill()
                _, err = proc.communicate(timeout=10)
                raise RuntimeError(
                    f"publisher exited ({proc.returncode}) before it was ready: {(line + err).strip()[-800:]}"
                )


def go(procs: list[subprocess.Popen[str]]) -> None:
    """The go signal: one line to every publisher's stdin, back to back (communicate() closes it)."""
    for proc in procs:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write("go\n")
            proc.stdin.flush()


# --- where the lines end up ---------------------------------------------------------------------


class Sink:
    """Counts the lines of one scenario that have arrived."""

    name = "sink"

    def count(self) -> int | None:
        raise NotImplementedError

    def peak_rss_mb(self) -> float | None:
        return None

    def cpu_seconds(self) -> float | None:
        return None


class ApplianceSink(Sink):
    """The appliance's stored row count for the scenario's measurement."""

    name = "appliance"

    def __init__(self, target: Appliance, measurement: str) -> None:
        self.target, self.measurement = target, measurement

    def count(self) -> int | None:
        return count_rows(self.target, self.measurement)

    def peak_rss_mb(self) -> float | None:
        return self.target.server.peak_rss_mb()

    def cpu_seconds(self) -> float | None:
        return self.target.server.cpu_seconds()


class PahoSink(Sink):
    """--dry-run: a paho subscriber in this process that counts received lines."""

    name = "paho"

    def __init__(self, broker: Broker, topic: str, qos: int) -> None:
        self.lines = 0
        self.client = broker.client("bench")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self._connection = broker.connected(self.client)
        self._connection.__enter__()
        self.client.subscribe(topic, qos=qos)
        if not subscribed.wait(10):
            raise RuntimeError("dry-run subscriber: no SUBACK")

    def _on_message(self, _c: Client, _u: Any, msg: MQTTMessage) -> None:
        self.lines += msg.payload.count(b"\n") + (0 if msg.payload.endswith(b"\n") else 1)

    def count(self) -> int | None:
        return self.lines

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def count_rows(target: Appliance, measurement: str) -> int | None:
    """Rows stored in `measurement`; None while the table does not exist (or the query fails)."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        status, body = target.query(f"SELECT count(*) AS n FROM {measurement}")
        if status == 200:
            return int(json.loads(body)[0]["n"])
    return None


def appliance_config(broker: Broker, qos: int) -> str:
    return (
        "[mqtt]\n"
        f'broker = "{broker.url}"\n'
        'client_id = "bench"\n'
        f"max_inflight = {INFLIGHT}\n"
        "\n"
        "[[mqtt.subscription]]\n"
        f'topic = "{TOPIC_PREFIX}/#"\n'
        f'database = "{DATABASE}"\n'
        f"qos = {qos}\n"
        'format = "line_protocol"\n'
    )


def wait_until_subscribed(target: Appliance, broker: Broker, timeout: float) -> float:
    """Publish probe lines until the appliance stores one (its subscription is live); seconds taken."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if target.server.proc is not None and target.server.proc.poll() is not None:
            raise RuntimeError(f"appliance exited:\n{target.server.log_tail()}")
        broker.publish(f"{TOPIC_PREFIX}/probe", [f"{PROBE_MEASUREMENT} v=1i {time.time_ns()}"], qos=1)
        step_end = time.monotonic() + 0.5
        while time.monotonic() < step_end:
            if (count_rows(target, PROBE_MEASUREMENT) or 0) > 0:
                return time.monotonic() - began
            time.sleep(0.05)
    raise RuntimeError(
        f"the appliance stored no probe line published to {broker.url} in {timeout:.0f} s "
        f"(is its MQTT subscriber there and connected?)\n--- appliance log:\n{target.server.log_tail()}"
        f"\n--- broker log:\n{broker.log()[-3000:]}"
    )


# --- one scenario -------------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario's figures."""

    scenario: str
    qos: int
    publishers: int
    messages: int
    expected: int
    stored: int
    seconds: float  # first publish (of any publisher) to last row seen
    publish_s: float  # first publish of any to last message acknowledged (QoS 0: written) of any
    publisher_cpu_s: float  # summed over the publishers
    sink_peak_mb: float | None  # None: the dry run's subscriber has no figures of its own
    sink_cpu_s: float | None
    broker_peak_mb: float
    error: str = ""
    publisher_rates: tuple[float, ...] = ()  # each publisher's own msg/s (its first publish to last ack)

    @property
    def lost(self) -> int:
        return self.expected - self.stored

    @property
    def stored_messages(self) -> float:
        """Messages' worth of stored lines."""
        return self.messages * self.stored / self.expected if self.expected else 0.0

    def rate(self, n: float, seconds: float) -> float:
        return n / seconds if seconds > 0 else 0.0


def measure(s: Scenario, sink: Sink, broker: Broker, args: argparse.Namespace) -> Row:
    """Run the publishers together and poll the sink until every line is there or the count stalls."""
    end_ns = time.time_ns()  # one time base for every publisher's timestamps
    parts = slices(s, args.publishers)
    procs = [start_publisher(s, broker, args, k, a, n, end_ns) for k, (a, n) in enumerate(parts)]
    outs: list[tuple[str, str]] = []
    try:
        wait_ready(procs, args.startup_timeout)
        cpu_before = sink.cpu_seconds()
        go(procs)
        count, grew_at, last_print = 0, time.monotonic(), 0.0
        finished_at: float | None = None
        while True:
            now = time.monotonic()
            current = sink.count()  # None: the query failed; keep the last count
            if current is not None and current > count:
                count, grew_at = current, now
            if finished_at is None and all(p.poll() is not None for p in procs):
                finished_at = now
            if count >= s.lines:
                break
            if finished_at is not None and now - max(grew_at, finished_at) >= args.stall:
                break
            if now - last_print >= 2:
                print(f"    {s.name}: {count:>10,} of {s.lines:,} lines stored")
                last_print = now
            time.sleep(args.poll)
        outs = [p.communicate(timeout=args.publish_timeout + 60) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    errors, pubs = [], []
    for k, (proc, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        if proc.returncode == 0:
            pubs.append(json.loads(out.strip().splitlines()[-1]))
        else:
            errors.append(f"publisher {k} exited {proc.returncode}: {err.strip()[-500:]}")
    first = min((p["first"] for p in pubs), default=grew_at)
    done = max((p["done"] for p in pubs), default=first)
    seconds = grew_at - first if count else 0.0
    return Row(
        s.name,
        s.qos,
        len(procs),
        s.messages,
        s.lines,
        count,
        seconds,
        done - first,
        sum(p["cpu_s"] for p in pubs),
        sink.peak_rss_mb(),
        None if cpu_before is None else (sink.cpu_seconds() or 0.0) - cpu_before,
        broker.peak_rss_mb(),
        "; ".join(errors),
        tuple(p["messages"] / (p["done"] - p["first"]) if p["done"] > p["first"] else 0.0 for p in pubs),
    )


def run_one(s: Scenario, args: argparse.Namespace, python: Path) -> Row:
    """A fresh broker and appliance (or dry-run subscriber) for one scenario; always stopped."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-mqtt-{s.name}-", dir=args.work_dir))
    broker = Broker(run_dir / "broker", autosave_interval=1800)  # mosquitto's default autosave
    target: Appliance | None = None
    sink: Sink | None = None
    try:
        broker.start()
        print(f"  {s.name}: mosquitto on port {broker.port} ({run_dir})")
        if args.dry_run:
            sink = PahoSink(broker, f"{TOPIC_PREFIX}/#", s.qos)
        else:
            config = run_dir / "appliance.toml"
            config.write_text(appliance_config(broker, s.qos))
            extra = f"--config {shlex.quote(str(config))} {args.appliance_args}"
            target = Appliance(run_dir, python, extra)
            print(f"  {s.name}: appliance on port {target.server.port} ({target.base_dir})")
            target.server.start(args.startup_timeout)
            took = wait_until_subscribed(target, broker, args.startup_timeout)
            print(f"  {s.name}: appliance subscribed (probe stored after {took:.1f} s)")
            sink = ApplianceSink(target, s.measurement)
        row = measure(s, sink, broker, args)
    finally:
        if isinstance(sink, PahoSink):
            sink.close()
        if target is not None:
            target.server.stop()
        broker.stop()
        if args.keep:
            print(f"  kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(
        f"  {s.name}: stored {row.stored:,} of {row.expected:,} lines in {row.seconds:.2f} s "
        f"({row.rate(row.stored_messages, row.seconds):,.0f} msg/s, "
        f"{row.rate(row.stored, row.seconds):,.0f} lines/s); {row.publishers} publisher(s) "
        f"{row.rate(row.messages, row.publish_s):,.0f} msg/s together in {row.publish_s:.2f} s "
        f"(each on its own: {', '.join(f'{r:,.0f}' for r in row.publisher_rates) or '-'} msg/s)"
        f"{'; ' + row.error if row.error else ''}"
    )
    return row


# --- report and main ----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(rows: list[Row], sink_name: str) -> None:
    if not rows:
        return
    print()
    print(
        f"{'scenario':<10} {'qos':>3} {'pubs':>4} {'messages':>10} {'lines':>10} {'pub msg/s':>10} {'msg/s':>10} "
        f"{'lines/s':>10} {'seconds':>8} {'stored':>10} {'lost':>8} {sink_name + ' MB':>12} "
        f"{'cpu s':>6} {'broker MB':>9} {'pub cpu s':>9}"
    )
    for r in rows:
        print(
            f"{r.scenario:<10} {r.qos:>3} {r.publishers:>4} {r.messages:>10,} {r.expected:>10,} "
            f"{r.rate(r.messages, r.publish_s):>10,.0f} {r.rate(r.stored_messages, r.seconds):>10,.0f} "
            f"{r.rate(r.stored, r.seconds):>10,.0f} {r.seconds:>8.2f} {r.stored:>10,} {r.lost:>8,} "
            f"{_fmt(r.sink_peak_mb, '.0f'):>12} {_fmt(r.sink_cpu_s, '.1f'):>6} {r.broker_peak_mb:>9.1f} "
            f"{r.publisher_cpu_s:>9.1f}"
        )
    print(
        "msg/s and lines/s: stored, from the first publish to the poll that saw the last row; "
        "pub msg/s: the publishers' summed rate, first publish of any to last ack of any (QoS 1: "
        f"acknowledged, QoS 0: written); MB: peak RSS; cpu s: {sink_name} CPU; pub cpu s: the "
        "publishers' CPU summed"
    )
    for r in rows:
        if r.lost:
            print(f"  ! {r.scenario}: {r.lost:,} of {r.expected:,} lines missing (stored {r.stored:,})")
        if r.error:
            print(f"  ! {r.scenario}: {r.error}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/mqtt.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: .venv/bin/python bench/mqtt.py --messages 20000 --lines 200000 --scenarios single-q1,batch-q1",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=100_000,
        help="messages in the single-line scenarios (default 100,000)",
    )
    parser.add_argument(
        "--lines", type=int, default=1_000_000, help="lines in the batched scenarios (default 1,000,000)"
    )
    parser.add_argument("--batch", type=int, default=500, help="lines per message when batched (default 500)")
    parser.add_argument(
        "--devices", type=int, default=1_000, help="distinct devices (series) (default 1,000)"
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=2,
        help="publisher processes per scenario, started together, each publishing its own even share "
        "of the messages under its own client id (default 2; at most one per message)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated (default {','.join(SCENARIOS)})"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no appliance: a paho subscriber counts the lines (checks the broker and the publisher)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=10.0,
        help="give up when the count stops growing this long (default 10 s)",
    )
    parser.add_argument(
        "--poll", type=float, default=0.25, help="seconds between count queries (default 0.25)"
    )
    parser.add_argument(
        "--publish-timeout", type=float, default=600.0, help="longest a publisher may take (default 600 s)"
    )
    parser.add_argument(
        "--repo", type=Path, default=REPO, help=f"appliance checkout whose .venv to run (default {REPO})"
    )
    parser.add_argument(
        "--python", type=Path, help="interpreter for the appliance (default <repo>/.venv/bin/python)"
    )
    parser.add_argument("--appliance-args", default="", help="extra `appliance serve` arguments")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()), help="where the temp dirs go"
    )
    parser.add_argument("--keep", action="store_true", help="keep the broker's and appliance's directories")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for /health, for the subscription and for the publishers to be ready "
        "(default 60)",
    )
    # The publisher process (this file run again by the benchmark).
    hidden = argparse.SUPPRESS
    parser.add_argument("--publisher", action="store_true", help=hidden)
    parser.add_argument("--broker-port", type=int, help=hidden)
    parser.add_argument("--broker-dir", type=Path, help=hidden)
    parser.add_argument("--topic", help=hidden)
    parser.add_argument("--qos", type=int, default=1, help=hidden)
    parser.add_argument("--measurement", help=hidden)
    parser.add_argument("--per-message", type=int, default=1, help=hidden)
    parser.add_argument("--index", type=int, default=0, help=hidden)
    parser.add_argument("--first-line", type=int, default=0, help=hidden)
    parser.add_argument("--slice-lines", type=int, help=hidden)
    parser.add_argument("--end-ns", type=int, help=hidden)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.publisher:
        return publisher(args)
    if min(args.messages, args.lines, args.batch, args.devices, args.publishers) < 1:
        raise SystemExit("--messages, --lines, --batch, --devices and --publishers must be positive")
    install_signal_handlers()
    args.work_dir = Path(args.work_dir)
    scenarios = [scenario(n.strip(), args) for n in args.scenarios.split(",") if n.strip()]
    python = args.python or args.repo / ".venv" / "bin" / "python"
    if not args.dry_run and (problem := check_appliance(python)):
        print(f"cannot benchmark the appliance: {problem}")
        return 2
    print(f"machine: {machine()}")
    print(
        f"workload: {args.messages:,} one-line messages, {args.lines:,} lines in {args.batch}-line messages, "
        f"{args.devices:,} devices; {args.publishers} publisher(s); "
        f"{'dry run (paho subscriber)' if args.dry_run else 'appliance'}"
    )
    rows: list[Row] = []
    try:
        for s in scenarios:
            rows.append(run_one(s, args, python))
    except RuntimeError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        report(rows, "paho" if args.dry_run else "appliance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
