"""Query benchmark: typical dashboard queries, appliance (SQL) vs InfluxDB 1.x (InfluxQL).

Both servers get the same rows (by default 1,000,000 points from 1,000 devices spread over the
last two hours), written over 4 connections. The appliance is then persisted to Parquet
(`POST /api/v3/persist`) so the queries read files, as they would on a running box. Each query
runs once to warm up, then `--repeat` times; the median wall time of the HTTP request (the JSON
body included) is printed. Figures only: nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from common import (
    MEASUREMENT,
    Appliance,
    Target,
    Workload,
    add_common_arguments,
    generate_bodies,
    median_ms,
    prepare,
    ratio,
    run_load,
    started,
)


@dataclass(frozen=True)
class Query:
    """One question asked in both dialects."""

    name: str
    sql: str
    influxql: str


QUERIES = (
    Query("count", f"SELECT count(*) FROM {MEASUREMENT}", f"SELECT count(temp) FROM {MEASUREMENT}"),
    Query(
        "avg 5m/device, last hour",
        "SELECT date_bin(INTERVAL '5 minutes', time, '1970-01-01T00:00:00Z') AS time, device, avg(temp) AS mean "
        f"FROM {MEASUREMENT} WHERE time > now() - INTERVAL '1 hour' GROUP BY 1, device ORDER BY device, 1",
        f"SELECT mean(temp) FROM {MEASUREMENT} WHERE time > now() - 1h GROUP BY time(5m), device",
    ),
    Query(
        "last value/device",
        f"SELECT device, last_value(temp ORDER BY time) AS temp FROM {MEASUREMENT} GROUP BY device",
        f"SELECT last(temp) FROM {MEASUREMENT} GROUP BY device",
    ),
    Query(
        "one device, 10 min raw",
        f"SELECT * FROM {MEASUREMENT} WHERE device = 'dev0042' AND time > now() - INTERVAL '10 minutes' ORDER BY time",
        f"SELECT * FROM {MEASUREMENT} WHERE device = 'dev0042' AND time > now() - 10m",
    ),
)


@dataclass
class Timing:
    """One query's figures on one target."""

    median_ms: float | None
    rows: int | None
    body_kb: float
    error: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/query.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="queries:\n"
        + "\n".join(f"  {q.name}:\n    SQL: {q.sql}\n    InfluxQL: {q.influxql}" for q in QUERIES),
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per query after one warm-up (default 5)"
    )
    parser.add_argument(
        "--span", type=float, default=120.0, help="minutes the timestamps cover (default 120)"
    )
    parser.add_argument(
        "--connections", type=int, default=4, help="connections used to load the data (default 4)"
    )
    parser.add_argument("--no-persist", action="store_true", help="query the appliance's buffer, not Parquet")
    return parser.parse_args(argv)


def time_query(target: Target, text: str, repeat: int) -> Timing:
    """Warm up once, then time `repeat` runs; the median and the last answer's size."""
    status, body = target.query(text)
    if status != 200:
        return Timing(None, None, len(body) / 1024, f"HTTP {status}: {body[:300]!r}")
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        status, body = target.query(text)
        samples.append(time.perf_counter() - began)
    return Timing(median_ms(samples), target.result_rows(body), len(body) / 1024)


def load(target: Target, bodies: list[bytes], counts: list[int], connections: int) -> None:
    result = run_load(
        target.server.port, target.write_path(), bodies, counts, connections, f"{target.name} load"
    )
    print(
        f"  {target.name}: loaded {result.lines:,} lines in {result.seconds:.1f} s "
        f"({result.lines_per_s:,.0f} lines/s), {len(result.errors)} errors"
    )
    for error in result.errors[:5]:
        print(f"    error: {error}")


def run_target(
    target: Target, args: argparse.Namespace, bodies: list[bytes], counts: list[int]
) -> dict[str, Timing]:
    """Start, load, (persist), run every query, stop."""
    timings: dict[str, Timing] = {}
    with started(target, args.startup_timeout, args.keep):
        load(target, bodies, counts, args.connections)
        if isinstance(target, Appliance) and not args.no_persist:
            began = time.perf_counter()
            status, body = target.persist()
            print(
                f"  appliance: persist -> HTTP {status} in {time.perf_counter() - began:.1f} s {body[:200]!r}"
            )
        print(f"  {target.name}: {target.count_rows()} rows stored, RSS {target.server.rss_mb():.0f} MB")
        for query in QUERIES:
            text = query.sql if isinstance(target, Appliance) else query.influxql
            timing = time_query(target, text, args.repeat)
            timings[query.name] = timing
            shown = f"{timing.median_ms:.1f} ms" if timing.median_ms is not None else timing.error
            print(f"    {target.name} {query.name}: {shown}, {timing.rows} rows, {timing.body_kb:.0f} KB")
        print(
            f"  {target.name}: peak RSS {target.server.peak_rss_mb():.0f} MB, now {target.server.rss_mb():.0f} MB"
        )
    return timings


def report(results: dict[str, dict[str, Timing]]) -> None:
    names = list(results)
    print()
    print(f"{'query (median ms)':<26}" + "".join(f"{n:>14}" for n in names) + f"{'ratio':>10}  rows")
    for query in QUERIES:
        cells = [results[n].get(query.name) for n in names]
        values = [c.median_ms if c else None for c in cells]
        shown = "".join(f"{v:>14.1f}" if v is not None else f"{'error':>14}" for v in values)
        r = ratio(values[0], values[1]) if len(values) == 2 else "-"
        rows = "/".join(str(c.rows) if c else "-" for c in cells)
        print(f"{query.name:<26}{shown}{r:>10}  {rows}")
    if len(names) == 2:
        print(f"(ratio = {names[0]} / {names[1]})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    factories = prepare(args)
    if not factories:
        return 2
    workload = Workload(lines=args.lines, batch=args.batch, devices=args.devices, span_s=args.span * 60)
    print(f"workload: {workload.describe()}; {args.repeat} timed runs per query")
    bodies, counts = generate_bodies(workload)
    results: dict[str, dict[str, Timing]] = {}
    for make in factories:
        target = make()
        results[target.name] = run_target(target, args, bodies, counts)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
