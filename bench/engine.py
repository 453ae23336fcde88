"""Processing-engine benchmark: WAL-trigger latency, schedule jitter and request-trigger throughput.

Every phase gets a fresh appliance in a fresh temporary directory; its plugins go into
`<data dir>/plugins` (the default plugin directory). Figures only: nothing is asserted, the
targets from issue 3 are printed beside the figures.

1. ack -> process_writes start. One client writes single lines (`m id=<n>i`) over one keep-alive
   connection, one at a time, with a pause of 5-10 ms after each acknowledgement. It records
   time.time_ns() right after reading each 204. Each `table:m` trigger's plugin records
   time.time_ns() on entry and the ids of the rows it got, appending one line per call to its own
   file (opened per call) in the server's temp dir. Latency = plugin entry - client ack, per id and
   per trigger; it can be slightly negative, since triggers are queued before writers are answered.
   Runs with one trigger and with ten; with ten, "each start" pools every trigger's start and
   "last of ten" takes the slowest trigger per write. The first `--warmup` writes are not counted.
2. every:1s jitter. The plugin records time.time_ns() on entry and its call_time (a naive UTC
   datetime of the scheduled second); jitter = entry - scheduled instant.
3. request:PATH throughput. A plugin that returns "ok"; 1, 4 and 8 client threads, each with its
   own keep-alive http.client connection, request GET /api/v3/engine/<path> in a loop for
   `--request-seconds`. Client and server share the machine's cores, so the client's CPU time is
   printed too.

Targets (issue 3): ack -> start p50 <= 20 ms and p99 <= 100 ms; >= 1000 requests/s.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import random
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    DATABASE,
    REPO,
    Appliance,
    check_appliance,
    install_signal_handlers,
    machine,
    percentile,
    request,
    started,
)

TABLE = "m"
WRITE_PATH = f"/api/v3/write_lp?db={DATABASE}&precision=ns"
TRIGGER_PATH = "/api/v3/configure/processing_engine_trigger"
REQUEST_PATH = "bench/ok"
P50_TARGET_MS, P99_TARGET_MS, RPS_TARGET = 20.0, 100.0, 1000.0

WAL_PLUGIN = """\
import time


def process_writes(influxdb3_local, table_batches, args):
    entered = time.time_ns()
    ids = [row["id"] for batch in table_batches for row in batch["rows"] if "id" in row]
    with open(args["out"], "a") as out:
        out.write(f"{entered} {','.join(map(str, ids))}\\n")
"""

SCHEDULE_PLUGIN = """\
import datetime
import time

EPOCH = datetime.datetime(1970, 1, 1)


def process_scheduled_call(influxdb3_local, call_time, args):
    entered = time.time_ns()
    scheduled = (call_time - EPOCH) // datetime.timedelta(microseconds=1) * 1000
    with open(args["out"], "a") as out:
        out.write(f"{entered} {scheduled}\\n")
"""

REQUEST_PLUGIN = """\
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    return "ok"
"""


# --- figures ------------------------------------------------------------------------------


@dataclass
class Latency:
    """A latency figure (ms) over some samples, with the target it is held against."""

    label: str
    samples: list[float]  # ms
    missed: int = 0  # expected samples that never came
    target: str = ""
    met: bool | None = None

    def q(self, q: float) -> float:
        return percentile(self.samples, q)


@dataclass
class Throughput:
    """One request-trigger run."""

    clients: int
    requests: int
    seconds: float
    latencies: list[float]  # ms
    errors: int
    client_cpu_s: float
    server_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def latency_target(samples: list[float]) -> tuple[str, bool | None]:
    if not samples:
        return f"p50<={P50_TARGET_MS:g} p99<={P99_TARGET_MS:g}", None
    met = percentile(samples, 0.5) <= P50_TARGET_MS and percentile(samples, 0.99) <= P99_TARGET_MS
    return f"p50<={P50_TARGET_MS:g} p99<={P99_TARGET_MS:g}", met


# --- the appliance ------------------------------------------------------------------------


def install_plugin(target: Appliance, name: str, code: str) -> str:
    """Write a plugin into the server's default plugin directory; returns its filename."""
    path = target.base_dir / "data" / "plugins" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return name


def create_trigger(
    target: Appliance, name: str, filename: str, spec: str, arguments: dict[str, str] | None
) -> None:
    body = {
        "db": DATABASE,
        "trigger_name": name,
        "plugin_filename": filename,
        "trigger_specification": spec,
        "trigger_settings": {"run_async": False, "error_behavior": "log"},
        "trigger_arguments": arguments,
        "disabled": False,
    }
    status, answer = request(
        target.server.port,
        "POST",
        TRIGGER_PATH,
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    if status != 200:
        raise RuntimeError(f"creating trigger {name} ({spec}) failed: {status} {answer[:300]!r}")


def create_database(target: Appliance) -> None:
    """The first write creates the database (and table m, which WAL triggers name)."""
    status, answer = request(target.server.port, "POST", WRITE_PATH, f"{TABLE} id=-1i 1\n".encode())
    if status not in (200, 204):
        raise RuntimeError(f"first write failed: {status} {answer[:300]!r}")


def engine_errors(target: Appliance) -> list[str]:
    """ERROR/WARN lines of system.processing_engine_logs (dropped batches, plugin failures)."""
    status, body = target.query(
        "SELECT trigger_name, log_level, log_text FROM system.processing_engine_logs "
        "WHERE log_level <> 'INFO' ORDER BY event_time"
    )
    if status != 200:
        return [f"(could not read system.processing_engine_logs: {status} {body[:200]!r})"]
    return [f"{r['trigger_name']} {r['log_level']}: {r['log_text']}" for r in json.loads(body)]


def report_engine_errors(target: Appliance) -> None:
    problems = engine_errors(target)
    for line in problems[:5]:
        print(f"    engine log: {line}")
    if len(problems) > 5:
        print(f"    engine log: ... {len(problems) - 5} more WARN/ERROR lines")


# --- phase 1: ack -> process_writes start -------------------------------------------------


def read_calls(path: Path) -> list[tuple[int, list[int]]]:
    """(entry ns, ids) per plugin call; a half-written last line is skipped."""
    calls = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        entered, _, ids = line.partition(" ")
        try:
            calls.append((int(entered), [int(i) for i in ids.split(",") if i]))
        except ValueError:
            continue
    return calls


def first_start(calls: list[tuple[int, list[int]]]) -> dict[int, int]:
    """id -> entry ns of the first call that saw it."""
    seen: dict[int, int] = {}
    for entered, ids in calls:
        for i in ids:
            if i not in seen or entered < seen[i]:
                seen[i] = entered
    return seen


def wal_phase(args: argparse.Namespace, python: Path, triggers: int) -> list[Latency]:
    label = f"{triggers} WAL trigger{'s' if triggers > 1 else ''}"
    print(
        f"\n[ack -> process_writes start, {label} (table:{TABLE}), {args.writes} writes + {args.warmup} warm-up]"
    )
    target = Appliance(args.work_dir, python, args.appliance_args)
    rng = random.Random(3)
    with started(target, args.startup_timeout, args.keep):
        create_database(target)
        plugin = install_plugin(target, "bench_wal.py", WAL_PLUGIN)
        outputs = [target.base_dir / f"calls-{n}.txt" for n in range(triggers)]
        for n, out in enumerate(outputs):
            create_trigger(target, f"wal{n}", plugin, f"table:{TABLE}", {"out": str(out)})
        print(f"  created {triggers} trigger(s); writing")

        total = args.warmup + args.writes
        acks: dict[int, int] = {}
        write_ms: list[float] = []
        errors = 0
        conn = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=60)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        began = time.perf_counter()
        try:
            for i in range(total):
                body = f"{TABLE},src=bench id={i}i,v={i % 100} {time.time_ns()}\n".encode()
                sent = time.perf_counter()
                try:
                    conn.request("POST", WRITE_PATH, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    acked_ns = 0
                    errors += 1
                    print(f"    write {i}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=60)
                else:
                    acked_ns = time.time_ns()
                    write_ms.append((time.perf_counter() - sent) * 1000)
                    if resp.status == 204:
                        acks[i] = acked_ns
                    else:
                        errors += 1
                        print(f"    write {i}: HTTP {resp.status}")
                if (i + 1) % 100 == 0:
                    done = len(first_start(read_calls(outputs[0])))
                    print(
                        f"    {i + 1:>5} writes in {time.perf_counter() - began:5.1f} s, "
                        f"write p50 {percentile(write_ms, 0.5):.2f} ms; trigger 0 has seen {done}"
                    )
                time.sleep(rng.uniform(args.gap_min_ms, args.gap_max_ms) / 1000)
        finally:
            conn.close()

        measured = [i for i in acks if i >= args.warmup]
        deadline = time.monotonic() + args.settle
        while True:
            starts = [first_start(read_calls(out)) for out in outputs]
            complete = all(all(i in s for i in measured) for s in starts)
            if complete or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        report_engine_errors(target)

    each: list[float] = []
    last: list[float] = []
    missed_each = missed_last = 0
    per_trigger: list[list[float]] = [[] for _ in outputs]
    for i in measured:
        lat = []
        for n, s in enumerate(starts):
            if i in s:
                ms = (s[i] - acks[i]) / 1e6
                lat.append(ms)
                per_trigger[n].append(ms)
            else:
                missed_each += 1
        each += lat
        if len(lat) == len(starts):
            last.append(max(lat))
        else:
            missed_last += 1
    if errors:
        print(f"  {errors} writes failed")
    if triggers > 1:
        worst = max(range(triggers), key=lambda n: percentile(per_trigger[n], 0.99))
        print(
            "  per trigger p50/p99 ms: "
            + ", ".join(f"{percentile(t, 0.5):.1f}/{percentile(t, 0.99):.1f}" for t in per_trigger)
            + f" (worst p99: wal{worst})"
        )
    figures = [Latency(f"ack->start, {label}" + (" (each start)" if triggers > 1 else ""), each, missed_each)]
    if triggers > 1:
        figures.append(Latency(f"ack->start, {label} (last of {triggers})", last, missed_last))
    for f in figures:
        f.target, f.met = latency_target(f.samples)
        print(
            f"  {f.label}: p50 {f.q(0.5):.2f} ms, p99 {f.q(0.99):.2f} ms, max {max(f.samples, default=0):.2f} ms, "
            f"min {min(f.samples, default=0):.2f} ms, {len(f.samples)} samples, {f.missed} never started"
        )
    return figures


# --- phase 2: every:1s jitter -------------------------------------------------------------


def schedule_phase(args: argparse.Namespace, python: Path) -> list[Latency]:
    print(f"\n[every:1s jitter, {args.schedule_seconds:g} s]")
    target = Appliance(args.work_dir, python, args.appliance_args)
    with started(target, args.startup_timeout, args.keep):
        create_database(target)
        plugin = install_plugin(target, "bench_tick.py", SCHEDULE_PLUGIN)
        out = target.base_dir / "ticks.txt"
        create_trigger(target, "tick", plugin, "every:1s", {"out": str(out)})
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < args.schedule_seconds:
            time.sleep(min(5.0, args.schedule_seconds - elapsed))
            ticks = read_calls(out)
            last = (ticks[-1][0] - ticks[-1][1][0]) / 1e6 if ticks and ticks[-1][1] else float("nan")
            print(f"    {time.monotonic() - began:5.1f} s: {len(ticks)} calls, last jitter {last:.2f} ms")
        ticks = read_calls(out)
        report_engine_errors(target)
    jitter = [(entered - ids[0]) / 1e6 for entered, ids in ticks if ids]
    scheduled = [ids[0] for _, ids in ticks if ids]
    skipped = sum(max(0, (b - a) // 1_000_000_000 - 1) for a, b in itertools.pairwise(scheduled))
    figure = Latency("every:1s start - scheduled instant", jitter, skipped)
    print(
        f"  jitter: p50 {figure.q(0.5):.2f} ms, p99 {figure.q(0.99):.2f} ms, max {max(jitter, default=0):.2f} ms, "
        f"min {min(jitter, default=0):.2f} ms, {len(jitter)} calls, {skipped} scheduled seconds never called"
    )
    return [figure]


# --- phase 3: request-trigger throughput --------------------------------------------------


def request_load(
    port: int, path: str, clients: int, seconds: float
) -> tuple[int, float, list[float], int, float]:
    """`clients` threads, each with one keep-alive connection, GET `path` until time is up."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        mine: list[float] = []
        bad = 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        barrier.wait()
        try:
            while not stop.is_set():
                sent = time.perf_counter()
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read()
                except (OSError, http.client.HTTPException):
                    bad += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                if resp.status == 200 and body == b"ok":
                    mine.append((time.perf_counter() - sent) * 1000)
                else:
                    bad += 1
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                errors[0] += bad

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    cpu_before = time.process_time()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    took = time.perf_counter() - began
    return len(latencies), took, latencies, errors[0], time.process_time() - cpu_before


def request_phase(args: argparse.Namespace, python: Path) -> list[Throughput]:
    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    print(
        f'\n[request trigger throughput, plugin returns "ok", clients {clients_list}, {args.request_seconds:g} s each]'
    )
    target = Appliance(args.work_dir, python, args.appliance_args)
    rows = []
    with started(target, args.startup_timeout, args.keep):
        create_database(target)
        plugin = install_plugin(target, "bench_ok.py", REQUEST_PLUGIN)
        create_trigger(target, "ok", plugin, f"request:{REQUEST_PATH}", None)
        path = f"/api/v3/engine/{REQUEST_PATH}"
        port = target.server.port
        status, body = request(port, "GET", path)
        if status != 200 or body != b"ok":
            raise RuntimeError(f"GET {path} answered {status} {body[:200]!r}")
        request_load(port, path, 1, 0.5)  # warm-up
        for clients in clients_list:
            cpu_before = target.server.cpu_seconds()
            done, took, lat, errors, client_cpu = request_load(port, path, clients, args.request_seconds)
            row = Throughput(
                clients, done, took, lat, errors, client_cpu, target.server.cpu_seconds() - cpu_before
            )
            rows.append(row)
            print(
                f"    x{clients}: {row.per_s:,.0f} req/s, p50 {percentile(lat, 0.5):.2f} ms, "
                f"p99 {percentile(lat, 0.99):.2f} ms, {errors} errors, server CPU {row.server_cpu_s:.1f} s, "
                f"client CPU {client_cpu:.1f} s"
            )
        report_engine_errors(target)
    return rows


# --- report -------------------------------------------------------------------------------


def report(latencies: list[Latency], throughputs: list[Throughput]) -> None:
    def verdict(met: bool | None) -> str:
        return "-" if met is None else ("yes" if met else "NO")

    print()
    if latencies:
        print(
            f"{'figure':<42} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>5} {'missed':>6}  {'target':<20} {'met':>3}"
        )
        for f in latencies:
            print(
                f"{f.label:<42} {f.q(0.5):>8.2f} {f.q(0.99):>8.2f} {max(f.samples, default=0):>8.2f} "
                f"{len(f.samples):>5} {f.missed:>6}  {f.target or '(none)':<20} {verdict(f.met):>3}"
            )
    if throughputs:
        if latencies:
            print()
        print(
            f"{'request trigger':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>6} "
            f"{'srv CPU s':>9} {'cli CPU s':>9}  {'target':<14} {'met':>3}"
        )
        for r in throughputs:
            print(
                f"{f'x{r.clients} clients':<18} {r.per_s:>8,.0f} {percentile(r.latencies, 0.5):>8.2f} "
                f"{percentile(r.latencies, 0.99):>8.2f} {r.requests:>9,} {r.errors:>6} {r.server_cpu_s:>9.1f} "
                f"{r.client_cpu_s:>9.1f}  {f'>={RPS_TARGET:,.0f} req/s':<14} {verdict(r.per_s >= RPS_TARGET):>3}"
            )


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/engine.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: .venv/bin/python bench/engine.py --writes 200 --only wal,request",
    )
    parser.add_argument(
        "--only",
        default="wal,schedule,request",
        help="comma-separated phases to run: wal, schedule, request (default all)",
    )
    parser.add_argument(
        "--writes", type=int, default=500, help="measured single-line writes per WAL run (default 500)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="writes before the measured ones (default 20)")
    parser.add_argument(
        "--triggers", default="1,10", help="comma-separated WAL trigger counts (default 1,10)"
    )
    parser.add_argument(
        "--gap-min-ms", type=float, default=5.0, help="shortest pause after an ack (default 5)"
    )
    parser.add_argument(
        "--gap-max-ms", type=float, default=10.0, help="longest pause after an ack (default 10)"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds to wait for the last plugin calls (default 10)"
    )
    parser.add_argument(
        "--schedule-seconds", type=float, default=20.0, help="how long the every:1s trigger runs (default 20)"
    )
    parser.add_argument(
        "--clients", default="1,4,8", help="comma-separated request client counts (default 1,4,8)"
    )
    parser.add_argument(
        "--request-seconds", type=float, default=5.0, help="seconds per request client count (default 5)"
    )
    parser.add_argument(
        "--repo", type=Path, default=REPO, help=f"appliance checkout whose .venv to run (default {REPO})"
    )
    parser.add_argument(
        "--python", type=Path, help="interpreter for the appliance (default <repo>/.venv/bin/python)"
    )
    parser.add_argument(
        "--appliance-args", default="", help="extra `appliance serve` arguments, e.g. '--log-filter warn'"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()), help="where the servers' temp dirs go"
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data directories")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /health")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    args.work_dir = Path(args.work_dir)
    python = args.python or args.repo / ".venv" / "bin" / "python"
    problem = check_appliance(python)
    if problem:
        print(f"appliance skipped: {problem}")
        print("nothing to benchmark")
        return 2
    print(f"machine: {machine()}")
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = phases - {"wal", "schedule", "request"}
    if unknown:
        print(f"unknown phase(s): {', '.join(sorted(unknown))}")
        return 2
    latencies: list[Latency] = []
    throughputs: list[Throughput] = []
    if "wal" in phases:
        for count in (int(c) for c in args.triggers.split(",") if c.strip()):
            latencies += wal_phase(args, python, count)
    if "schedule" in phases:
        latencies += schedule_phase(args, python)
    if "request" in phases:
        throughputs += request_phase(args, python)
    report(latencies, throughputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
