"""Ingest benchmark: line-protocol write throughput, latency and memory, appliance vs InfluxDB 1.x.

Each (target, connection count) run gets a fresh server in a fresh temporary directory, so the
peak RSS (VmHWM) belongs to that run alone. The request bodies are generated before any timing
and reused for every run. Figures only: nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from common import (
    Target,
    Workload,
    add_common_arguments,
    generate_bodies,
    prepare,
    ratio,
    run_load,
    started,
)


@dataclass
class Row:
    """One run's figures."""

    target: str
    connections: int
    lines_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    idle_rss_mb: float
    peak_rss_mb: float
    after_rss_mb: float
    server_cpu_s: float
    client_cpu_s: float
    stored: int | None
    errors: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: .venv/bin/python bench/ingest.py --lines 200000 --connections 2",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--connections", default="2,4", help="comma-separated connection counts (default 2,4)"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds between health OK and reading idle RSS (default 2)"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip counting the stored rows after each run"
    )
    return parser.parse_args(argv)


def run_one(
    target: Target, args: argparse.Namespace, bodies: list[bytes], counts: list[int], conns: int
) -> Row:
    """Start the target, measure idle memory, load every body, measure again, stop it."""
    with started(target, args.startup_timeout, args.keep):
        time.sleep(args.settle)
        idle = target.server.rss_mb()
        cpu_before = target.server.cpu_seconds()
        result = run_load(
            target.server.port,
            target.write_path(),
            bodies,
            counts,
            conns,
            f"{target.name} x{conns}",
            headers=target.write_headers(),
            tls=target.server.tls,
        )
        server_cpu = target.server.cpu_seconds() - cpu_before
        peak, after = target.server.peak_rss_mb(), target.server.rss_mb()
        stored = None if args.no_verify else target.count_rows()
    for error in result.errors[:5]:
        print(f"    error: {error}")
    row = Row(
        target.name,
        conns,
        result.lines_per_s,
        result.latency_ms(0.50),
        result.latency_ms(0.99),
        max(result.latencies, default=0) * 1000,
        idle,
        peak,
        after,
        server_cpu,
        result.client_cpu_s,
        stored,
        len(result.errors),
    )
    print(
        f"  {row.target} x{conns}: {row.lines_per_s:,.0f} lines/s, p50 {row.p50_ms:.1f} ms, "
        f"p99 {row.p99_ms:.1f} ms, idle {idle:.0f} MB, peak {peak:.0f} MB, "
        f"server CPU {server_cpu:.1f} s, stored {stored if stored is not None else '?'}"
    )
    return row


def report(rows: list[Row], lines: int) -> None:
    print()
    print(
        f"{'target':<10} {'conns':>5} {'lines/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'idle MB':>8} {'peak MB':>8} {'after MB':>8} {'srv CPU s':>9} {'cli CPU s':>9} {'stored':>10} {'errors':>6}"
    )
    for r in rows:
        stored = f"{r.stored:,}" if r.stored is not None else "-"
        print(
            f"{r.target:<10} {r.connections:>5} {r.lines_per_s:>10,.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{r.max_ms:>8.1f} {r.idle_rss_mb:>8.0f} {r.peak_rss_mb:>8.0f} {r.after_rss_mb:>8.0f} "
            f"{r.server_cpu_s:>9.1f} {r.client_cpu_s:>9.1f} {stored:>10} {r.errors:>6}"
        )
        if r.stored is not None and r.stored != lines:
            print(f"  ! {r.target} x{r.connections} stored {r.stored:,} of {lines:,} lines")
    by_key = {(r.target, r.connections): r for r in rows}
    for conns in sorted({r.connections for r in rows}):
        a, b = by_key.get(("appliance", conns)), by_key.get(("influxdb1", conns))
        if a and b:
            print(
                f"appliance/influxdb1 x{conns}: lines/s {ratio(a.lines_per_s, b.lines_per_s)}, "
                f"p50 {ratio(a.p50_ms, b.p50_ms)}, p99 {ratio(a.p99_ms, b.p99_ms)}, "
                f"idle RSS {ratio(a.idle_rss_mb, b.idle_rss_mb)}, peak RSS {ratio(a.peak_rss_mb, b.peak_rss_mb)}, "
                f"server CPU {ratio(a.server_cpu_s, b.server_cpu_s)}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    factories = prepare(args)
    if not factories:
        return 2
    connection_counts = [int(c) for c in args.connections.split(",") if c.strip()]
    workload = Workload(lines=args.lines, batch=args.batch, devices=args.devices)
    print(f"workload: {workload.describe()}; connections {connection_counts}")
    began = time.perf_counter()
    bodies, counts = generate_bodies(workload)
    size_mb = sum(map(len, bodies)) / 1e6
    print(f"generated {len(bodies)} bodies, {size_mb:.0f} MB, in {time.perf_counter() - began:.1f} s")
    rows = [run_one(make(), args, bodies, counts, conns) for conns in connection_counts for make in factories]
    report(rows, workload.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
