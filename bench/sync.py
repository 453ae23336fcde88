"""Sync benchmark: what uploading Parquet files to S3 costs durable HTTP ingest, and how fast it uploads.

One moto S3 server (`python -m moto.server`, its own process so it does not share this process's
GIL with the load) serves bucket `edge` on a loopback port for the whole benchmark. The appliance
then runs twice (--repeat N: N times each, alternating), each time fresh, with the same workload
and the same flags (`--gen1-duration 10s` by default, so Parquet files are written continuously):

  nosync  no [sync] section;
  sync    a config file with [sync] (endpoint = moto, bucket edge, prefix fleet, allow_http,
          interval 1s) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment; moto's
          state is reset first, so the bucket holds this run's objects only.

Load: --connections keep-alive connections POST --batch-line bodies to /api/v3/write_lp (durable:
the answer comes after the WAL commit) as fast as they are answered, for --seconds. The bodies are
bench/common.py's workload, generated once (--pool-lines lines whose timestamps fall in one
second); when the pool is used up it is sent again one second of data time later (only the
timestamps' seconds digits change), so every line is a distinct point and data time advances
about as fast as the appliance ingests.

After the sync run's load: POST /api/v3/persist, then wait (--drain-timeout) until
`GET /api/v3/sync` reports queued_files == 0 and every local Parquet file has its object. Then:
  - uploaded MB and MB/s from /api/v3/sync (synced_bytes) during the load and up to the drain;
  - persist-to-visible latency per object: its LastModified minus the local file's mtime
    (`<data-dir>/parquet/<key minus prefix/>`), and the time a listing every --list-every seconds
    first showed the key minus that mtime. LastModified has S3's one-second resolution (truncated),
    so that figure reads up to 1 s low; the listing figure reads up to --list-every high;
  - the rows in the bucket (Parquet footers, pyarrow.parquet) against the appliance's count(*).

Without a sync feature in the appliance (no /api/v3/sync, nothing uploaded) the sync run still
measures ingest, says so and fails the row check. Exit status: 0, or 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for tests.s3

from common import (
    REPO,
    Appliance,
    LoadResult,
    Server,
    Workload,
    check_appliance,
    drive_load,
    free_port,
    generate_bodies,
    install_signal_handlers,
    machine,
    percentile,
    request,
)

from tests.s3 import S3

PREFIX = "fleet"
TARGET_COST = 0.15  # sync may cost at most this share of the ingest rate


# --- the workload ---------------------------------------------------------------------------------


@dataclass
class Pool:
    """Pre-encoded bodies whose timestamps all start with the digits of `base_s` (one second of
    data time); round r of the pool is the same bodies moved r seconds later."""

    bodies: list[bytes]
    counts: list[int]
    base_s: int

    @classmethod
    def generate(cls, lines: int, batch: int, devices: int, base_s: int) -> Pool:
        step = 1_000_000_000 // lines  # what generate_bodies uses for span_s = 1
        if step < 1:
            raise SystemExit("--pool-lines must be at most 1,000,000,000")
        workload = Workload(lines, batch, devices, span_s=1.0, end_ns=base_s * 1_000_000_000 + step * lines)
        bodies, counts = generate_bodies(workload)
        pool = cls(bodies, counts, base_s)
        for i in (0, len(bodies) - 1):  # each line's timestamp, and nothing else, starts " <base_s>"
            if bodies[i].count(pool._mark(0)) != counts[i]:
                raise RuntimeError("generated bodies do not have the expected timestamp layout")
        return pool

    def _mark(self, round_: int) -> bytes:
        return b" %d" % (self.base_s + round_)

    def body(self, index: int) -> tuple[bytes, int]:
        """Body number `index` of the endless stream (pool round index // len(bodies))."""
        round_, i = divmod(index, len(self.bodies))
        body = self.bodies[i]
        if round_:
            body = body.replace(self._mark(0), self._mark(round_))
        return body, self.counts[i]

    @property
    def lines(self) -> int:
        return sum(self.counts)

    @property
    def megabytes(self) -> float:
        return sum(map(len, self.bodies)) / 1e6


def run_for(port: int, path: str, pool: Pool, connections: int, seconds: float, label: str) -> LoadResult:
    """POST the pool's endless stream over `connections` keep-alive connections for `seconds`;
    no request starts after the deadline (those running finish and count)."""
    deadline = time.perf_counter() + seconds

    def body(i: int) -> tuple[bytes, int] | None:
        return pool.body(i) if time.perf_counter() < deadline else None

    return drive_load(port, path, body, connections, label, progress_every=5.0)


# --- moto ---------------------------------------------------------------------------------------


def start_moto(base_dir: Path, python: str, timeout: float) -> tuple[Server, S3]:
    """moto's standalone server in its own process, plus an `S3` handle (inspection only) on it."""
    port = free_port()
    cmd = [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = Server("moto", base_dir, port, "/moto-api/data.json", 200, cmd)
    server.start(timeout)
    s3 = S3(port=port)
    s3.create_bucket(s3.bucket)
    return server, s3


# --- watching the appliance and the bucket --------------------------------------------------------


class SyncStatus:
    """Polls `GET /api/v3/sync` every second in a thread; remembers whether it exists."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.missing: str | None = None  # why there is no status (e.g. "HTTP 404"), once known
        self.latest: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def get(self) -> dict[str, Any] | None:
        """The status now; None (and `missing` set) when the endpoint is absent or not JSON."""
        try:
            status, body = request(self.port, "GET", "/api/v3/sync", timeout=10)
        except (OSError, http.client.HTTPException) as exc:
            self.missing = repr(exc)
            return None
        if status != 200:
            self.missing = f"HTTP {status} {body[:200]!r}"
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            self.missing = f"not JSON: {body[:200]!r}"
            return None
        if not isinstance(answer, dict):
            self.missing = f"not a JSON object: {body[:200]!r}"
            return None
        self.missing, self.latest = None, answer
        return answer

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self.get() is None and self.missing and self.missing.startswith("HTTP 404"):
                return  # no such endpoint: do not keep asking

    def start(self) -> SyncStatus:
        self.get()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def number(self, key: str) -> float | None:
        value = (self.latest or {}).get(key)
        return float(value) if isinstance(value, int | float) else None


class Lister:
    """Lists the bucket every `every` seconds in a thread; the wall time each key was first seen."""

    def __init__(self, s3: S3, prefix: str, every: float) -> None:
        self.s3, self.prefix, self.every = s3, prefix, every
        self.first_seen: dict[str, float] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                keys = self.s3.keys(self.prefix)
            except Exception:  # botocore's errors are not OSErrors; a failed listing is retried
                self.errors += 1
            else:
                now = time.time()
                for key in keys:
                    self.first_seen.setdefault(key, now)
            if self._stop.wait(self.every):
                return

    def start(self) -> Lister:
        self.s3.client()  # created here, not by two threads at once
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def watching(*watchers: SyncStatus | Lister) -> Iterator[None]:
    for w in watchers:
        w.start()
    try:
        yield
    finally:
        for w in watchers:
            w.stop()


def local_files(root: Path) -> dict[str, Path]:
    """The appliance's Parquet files by path relative to `<data-dir>/parquet` (no temp files)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*.parquet") if p.is_file()}


def remote_objects(s3: S3, prefix: str) -> dict[str, dict[str, Any]]:
    """The bucket's objects under `prefix/` by key minus `prefix/`."""
    folder = prefix.strip("/") + "/"
    return {o["Key"][len(folder) :]: o for o in s3.objects(folder)}


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One appliance run's figures."""

    name: str
    label: str  # name and repetition, e.g. "sync #2"
    load: LoadResult
    server_cpu_s: float
    moto_cpu_s: float
    stored: int | None
    status_missing: str | None = None
    synced_mb_load: float | None = None  # synced_bytes growth during the load, MB
    synced_files_load: float | None = None
    final_status: dict[str, Any] | None = None
    drain_s: float | None = None  # load end to queued_files == 0 and every file uploaded
    drained: bool = False
    objects: int = 0
    object_mb: float = 0.0
    lastmodified_lat: list[float] = field(default_factory=list)
    listing_lat: list[float] = field(default_factory=list)
    without_local: int = 0  # objects whose local file is gone (merged, expired)
    not_uploaded: int = 0  # local files without an object
    bucket_rows: int | None = None
    other_keys: list[str] = field(default_factory=list)  # objects that are not .parquet
    problems: list[str] = field(default_factory=list)


def sync_config(s3: S3, interval: str) -> str:
    return (
        "[sync]\n"
        f'endpoint = "{s3.direct_endpoint}"\n'
        f'bucket = "{s3.bucket}"\n'
        f'prefix = "{PREFIX}"\n'
        f'region = "{s3.region}"\n'
        "allow_http = true\n"
        f'interval = "{interval}"\n'
    )


def appliance_args(args: argparse.Namespace) -> str:
    extra = f"--gen1-duration {shlex.quote(args.gen1_duration)}"
    if args.max_buffer_bytes:
        extra += f" --max-buffer-bytes {shlex.quote(args.max_buffer_bytes)}"
    return f"{extra} {args.appliance_args}".strip()


def run_one(
    name: str,
    label: str,
    args: argparse.Namespace,
    pool: Pool,
    python: Path,
    moto: Server,
    s3: S3,
    run_dir: Path,
) -> Run:
    """A fresh appliance (with [sync] when name is "sync"), the load, and for sync the checks."""
    extra = appliance_args(args)
    if name == "sync":
        s3.reset()  # each sync run starts from an empty bucket
        s3.create_bucket(s3.bucket)
        config = run_dir / f"sync-{time.monotonic_ns()}.toml"
        config.write_text(sync_config(s3, args.interval))
        extra = f"--config {shlex.quote(str(config))} {extra}"
    target = Appliance(run_dir, python, extra)
    root = target.base_dir / "data" / "parquet"
    print(f"  {label}: appliance on port {target.server.port} ({target.base_dir}) {extra}")
    try:
        target.server.start(args.startup_timeout)
        status = SyncStatus(target.server.port)
        lister = Lister(s3, PREFIX + "/", args.list_every)
        with watching(status, lister):
            before = dict(status.latest or {})
            cpu, moto_cpu = target.server.cpu_seconds(), moto.cpu_seconds()
            load = run_for(
                target.server.port, target.write_path(), pool, args.connections, args.seconds, label
            )
            server_cpu, moto_cpu = target.server.cpu_seconds() - cpu, moto.cpu_seconds() - moto_cpu
            after = status.get() or {}
            run = Run(name, label, load, server_cpu, moto_cpu, None, status.missing)
            if name == "sync":
                for key, attr in (("synced_bytes", "synced_mb_load"), ("synced_files", "synced_files_load")):
                    a, b = after.get(key), before.get(key, 0)
                    if isinstance(a, int | float) and isinstance(b, int | float):
                        setattr(run, attr, (a - b) / (1e6 if key == "synced_bytes" else 1))
                drain(run, target, status, s3, root, args)
        run.stored = target.count_rows()
        if name == "sync":
            check_bucket(run, s3, root, lister)
    finally:
        target.cleanup(args.keep)
    for error in run.load.errors[:5]:
        print(f"    error: {error}")
    print(
        f"  {label}: {run.load.lines_per_s:,.0f} lines/s over {run.load.seconds:.1f} s "
        f"({run.load.lines:,} lines, p50 {run.load.latency_ms(0.5):.1f} ms, p99 {run.load.latency_ms(0.99):.1f} ms), "
        f"appliance CPU {run.server_cpu_s:.1f} s, moto CPU {run.moto_cpu_s:.1f} s, stored {run.stored}"
    )
    return run


def drain(
    run: Run, target: Appliance, status: SyncStatus, s3: S3, root: Path, args: argparse.Namespace
) -> None:
    """Persist what is buffered, then wait until the sync queue is empty and every file uploaded."""
    began = time.monotonic()
    code, body = target.persist()
    if code not in (200, 204):
        run.problems.append(f"POST /api/v3/persist answered {code} {body[:200]!r}")
    timeout = args.drain_timeout
    if status.get() is None:
        timeout = min(timeout, args.no_status_wait)
        print(f"    no sync status ({status.missing}); waiting at most {timeout:.0f} s for uploads")
    last_print = 0.0
    while True:
        now = time.monotonic()
        current = status.get()
        queued = None if current is None else current.get("queued_files")
        missing = set(local_files(root)) - set(remote_objects(s3, PREFIX))
        if (current is None or queued == 0) and not missing:
            run.drained, run.drain_s = True, now - began
            break
        if now - began >= timeout:
            run.drain_s = now - began
            run.problems.append(
                f"not drained after {timeout:.0f} s: queued_files {queued}, {len(missing)} local file(s) "
                f"without an object"
            )
            break
        if now - last_print >= 5:
            print(f"    draining: queued_files {queued}, {len(missing)} local file(s) not in the bucket yet")
            last_print = now
        time.sleep(0.5)
    run.final_status = status.get()
    if run.final_status and run.final_status.get("last_error"):
        run.problems.append(f"last_error: {run.final_status['last_error']}")


def check_bucket(run: Run, s3: S3, root: Path, lister: Lister) -> None:
    """Latencies per object, uploaded size, and the bucket's rows against the appliance's count."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    local = local_files(root)
    remote = remote_objects(s3, PREFIX)
    run.objects = len(remote)
    run.object_mb = sum(o["Size"] for o in remote.values()) / 1e6
    run.not_uploaded = len(set(local) - set(remote))
    fs = pafs.S3FileSystem(
        endpoint_override=s3.direct_endpoint.removeprefix("http://"),
        scheme="http",
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        region=s3.region,
    )
    rows = 0
    for rel, obj in sorted(remote.items()):
        if not rel.endswith(".parquet"):
            run.other_keys.append(obj["Key"])
            continue
        rows += pq.read_metadata(f"{s3.bucket}/{obj['Key']}", filesystem=fs).num_rows
        path = local.get(rel)
        if path is None:
            run.without_local += 1
            continue
        mtime = path.stat().st_mtime_ns / 1e9
        run.lastmodified_lat.append(obj["LastModified"].timestamp() - mtime)
        if obj["Key"] in lister.first_seen:
            run.listing_lat.append(lister.first_seen[obj["Key"]] - mtime)
    run.bucket_rows = rows
    if run.stored is None:
        run.problems.append("the appliance's SELECT count(*) failed")
    elif rows != run.stored:
        run.problems.append(f"the bucket holds {rows:,} rows, the appliance {run.stored:,}")


# --- report and main ----------------------------------------------------------------------------


def _dist(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"p50 {percentile(values, 0.5):.2f} s, p99 {percentile(values, 0.99):.2f} s, "
        f"max {max(values):.2f} s (n={len(values)})"
    )


def report(runs: list[Run], args: argparse.Namespace) -> bool:
    """Print the summary; False if a check failed."""
    ok = True
    print()
    print(
        f"{'run':<9} {'lines/s':>11} {'seconds':>7} {'lines':>12} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'app CPU s':>9} {'moto CPU s':>10} {'load CPU s':>10} {'errors':>6} {'stored':>12}"
    )
    for r in runs:
        stored = f"{r.stored:,}" if r.stored is not None else "-"
        print(
            f"{r.label:<9} {r.load.lines_per_s:>11,.0f} {r.load.seconds:>7.1f} {r.load.lines:>12,} "
            f"{r.load.latency_ms(0.5):>7.1f} {r.load.latency_ms(0.99):>7.1f} {r.server_cpu_s:>9.1f} "
            f"{r.moto_cpu_s:>10.1f} {r.load.client_cpu_s:>10.1f} {len(r.load.errors):>6} {stored:>12}"
        )
        if r.stored is not None and r.stored != r.load.lines:
            print(f"  ! {r.label}: acknowledged {r.load.lines:,} lines, stored {r.stored:,}")
            ok = False
    rates = {
        name: [r.load.lines_per_s for r in runs if r.name == name and r.load.lines_per_s]
        for name in ("nosync", "sync")
    }
    if rates["nosync"] and rates["sync"]:
        base, with_sync = statistics.median(rates["nosync"]), statistics.median(rates["sync"])
        share = with_sync / base
        cost = 1 - share
        verdict = "within" if cost <= TARGET_COST else "OVER"
        print(
            f"ingest lines/s without sync {base:,.0f}, with sync {with_sync:,.0f} "
            f"(medians of {len(rates['nosync'])} and {len(rates['sync'])} runs): ratio {share:.3f}, "
            f"sync costs {cost * 100:.1f} % ({verdict} the {TARGET_COST * 100:.0f} % target)"
        )
    for r in runs:
        if r.name == "sync":
            ok = sync_details(r, args) and ok
    return ok


def sync_details(sync: Run, args: argparse.Namespace) -> bool:
    """One sync run's upload figures, latencies and checks; False if a check failed."""
    print(f"{sync.label}:")
    if sync.status_missing:
        print(f"  sync status: GET /api/v3/sync unavailable ({sync.status_missing})")
    if sync.synced_mb_load is not None:
        print(
            f"  uploaded during the load: {sync.synced_mb_load:,.1f} MB in {sync.synced_files_load or 0:,.0f} "
            f"files, {sync.synced_mb_load / sync.load.seconds:,.1f} MB/s (synced_bytes, synced_files)"
        )
    final = sync.final_status or {}
    if isinstance(final.get("synced_bytes"), int | float) and sync.drain_s is not None:
        total_s = sync.load.seconds + sync.drain_s
        print(
            f"  uploaded in all: {final['synced_bytes'] / 1e6:,.1f} MB in {final.get('synced_files')} files, "
            f"{final['synced_bytes'] / 1e6 / total_s:,.1f} MB/s over load + drain ({total_s:.1f} s); "
            f"last_success {final.get('last_success')}, last_error {final.get('last_error')}"
        )
    if sync.drain_s is not None:
        state = "drained" if sync.drained else "NOT drained"
        print(
            f"  after the load: {state} in {sync.drain_s:.1f} s (persist, queued_files 0, every file uploaded)"
        )
    print(
        f"  bucket: {sync.objects} objects, {sync.object_mb:,.1f} MB under {PREFIX}/; "
        f"{sync.not_uploaded} local file(s) not uploaded, {sync.without_local} object(s) without a local file"
        + (f"; other keys: {sync.other_keys[:3]}" if sync.other_keys else "")
    )
    print(f"  persist-to-visible, LastModified - mtime (reads up to 1 s low): {_dist(sync.lastmodified_lat)}")
    print(
        f"  persist-to-visible, first listed - mtime (reads up to {args.list_every:g} s high): "
        f"{_dist(sync.listing_lat)}"
    )
    if sync.bucket_rows is not None:
        same = sync.bucket_rows == sync.stored
        stored = "-" if sync.stored is None else f"{sync.stored:,}"
        print(f"  rows: bucket {sync.bucket_rows:,} {'==' if same else '!='} appliance count(*) {stored}")
    for problem in sync.problems:
        print(f"  ! {problem}")
    if sync.status_missing and not sync.objects:
        print(
            "  ! nothing was uploaded and there is no /api/v3/sync: does this appliance have the sync feature?"
        )
    return not sync.problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/sync.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: .venv/bin/python bench/sync.py --seconds 10 --connections 2",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration per run (default 30)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent HTTP connections (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the appliances' and moto's directories")
    parser.add_argument(
        "--runs", default="nosync,sync", help="comma-separated, from nosync and sync (default both)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the --runs sequence this many times; the ratio compares medians (default 1)",
    )
    parser.add_argument("--batch", type=int, default=5_000, help="lines per write request (default 5,000)")
    parser.add_argument(
        "--devices", type=int, default=1_000, help="distinct devices (series) (default 1,000)"
    )
    parser.add_argument(
        "--pool-lines",
        type=int,
        default=1_000_000,
        help="lines generated up front and re-sent one data second later each round (default 1,000,000)",
    )
    parser.add_argument(
        "--gen1-duration", default="10s", help="the appliance's --gen1-duration in both runs (default 10s)"
    )
    parser.add_argument(
        "--max-buffer-bytes",
        default="",
        help="the appliance's --max-buffer-bytes in both runs (default: its own)",
    )
    parser.add_argument("--interval", default="1s", help="[sync] interval (default 1s)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="longest wait after the load for the sync queue to empty (default 300 s)",
    )
    parser.add_argument(
        "--no-status-wait",
        type=float,
        default=15.0,
        help="the drain wait when /api/v3/sync does not answer (default 15 s)",
    )
    parser.add_argument(
        "--list-every", type=float, default=0.25, help="seconds between bucket listings (default 0.25)"
    )
    parser.add_argument(
        "--repo", type=Path, default=REPO, help=f"appliance checkout whose .venv to run (default {REPO})"
    )
    parser.add_argument(
        "--python", type=Path, help="interpreter for the appliance and moto (default <repo>/.venv/bin/python)"
    )
    parser.add_argument("--appliance-args", default="", help="extra `appliance serve` arguments (both runs)")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()), help="where the temp dirs go"
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /health")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    if not names or set(names) - {"nosync", "sync"}:
        raise SystemExit(f"--runs: choose from nosync,sync (got {args.runs!r})")
    if min(args.seconds, args.connections, args.batch, args.devices, args.pool_lines, args.repeat) <= 0:
        raise SystemExit(
            "--seconds, --connections, --repeat, --batch, --devices and --pool-lines must be positive"
        )
    install_signal_handlers()
    python = args.python or args.repo / ".venv" / "bin" / "python"
    if problem := check_appliance(python):
        print(f"cannot benchmark the appliance: {problem}")
        return 2
    print(f"machine: {machine()}")
    base_s = int(time.time()) - 3600  # data time starts an hour ago and moves 1 s per pool round
    began = time.perf_counter()
    pool = Pool.generate(args.pool_lines, args.batch, args.devices, base_s)
    print(
        f"workload: {args.devices:,} devices, {args.batch:,}-line batches, {args.connections} connections, "
        f"{args.seconds:g} s per run; pool of {pool.lines:,} lines ({len(pool.bodies)} bodies, "
        f"{pool.megabytes:.0f} MB) generated in {time.perf_counter() - began:.1f} s"
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.work_dir))
    moto = None
    runs: list[Run] = []
    ok = True
    try:
        moto, s3 = start_moto(run_dir, str(python), args.startup_timeout)
        print(f"  moto on {s3.direct_endpoint}, bucket {s3.bucket} ({run_dir})")
        os.environ.update(s3.env())  # the appliances inherit the credentials
        for k in range(args.repeat):
            for name in names:
                label = name if args.repeat == 1 else f"{name} #{k + 1}"
                runs.append(run_one(name, label, args, pool, python, moto, s3, run_dir))
    except RuntimeError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        if moto is not None:
            moto.stop()
        if runs:
            ok = report(runs, args)
        if args.keep:
            print(f"  kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
