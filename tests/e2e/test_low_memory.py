"""The low-memory profile (packaging/low-memory.toml + systemd/low-memory.conf) under a small gateway's load.

The server runs from source with the profile and the drop-in's Environment=. The workload is what
a Pi Zero 2 W gateway plausibly does: 8 sensors at 10 Hz (three fields each) arriving as Telegraf
sends them (1000 lines a request) until 200,000 lines, about 40 minutes of data; a dashboard's
queries (per-minute averages over the last hour, each sensor's last value, statistics over
everything, 10 minutes of raw rows); a persist; the same queries on Parquet. A query that sorts
all raw rows is over query.memory_limit: it must get a clear 400 and leave the server healthy.
The process's peak (VmHWM) must stay under the drop-in's MemoryMax minus the pip child it leaves
room for.

Figures for both the profile and the defaults, for the same workload:
    python -m tests.e2e.test_low_memory
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.packaging.test_systemd_unit import PIP_CHILD_MIB, _one, _systemd_bytes, read_unit
from tests.server import REPO, Server

PROFILE = REPO / "packaging" / "low-memory.toml"
DROPIN = REPO / "systemd" / "low-memory.conf"
DB = "farm"
SENSORS = 8
HZ = 10
LINES = 200_000
BATCH = 1_000  # Telegraf's default metric_batch_size

DASHBOARD = {
    "per-minute averages, last hour": (
        "SELECT date_bin(INTERVAL '1 minute', time) AS minute, sensor, avg(temp) AS temp, avg(hum) AS hum"
        " FROM env WHERE time > now() - INTERVAL '1 hour' GROUP BY 1, 2 ORDER BY 1, 2"
    ),
    "last value per sensor": (
        "SELECT sensor, last_value(temp ORDER BY time) AS temp, max(time) AS at FROM env GROUP BY sensor"
    ),
    "statistics over everything": (
        "SELECT sensor, count(*) AS n, min(temp) AS lo, max(temp) AS hi, avg(temp) AS mean,"
        " stddev(pressure) AS sd FROM env GROUP BY sensor ORDER BY sensor"
    ),
    "raw rows, last 10 minutes": "SELECT * FROM env WHERE time > now() - INTERVAL '10 minutes' ORDER BY time",
}
#: Sorting every raw row with a 400-byte column: far more than the profile's 32 MiB lets a query
#: use, whatever the file layout (the bare rows sit near the limit, so their sort passed or not
#: depending on the clock's gen1 windows).
OVER_LIMIT = "SELECT *, repeat(sensor, 200) AS pad FROM env ORDER BY temp DESC"


def dropin_environment() -> dict[str, str]:
    """The drop-in's Environment= assignments."""
    service = read_unit(DROPIN.read_text())["Service"]
    return dict(word.split("=", 1) for value in service["Environment"] for word in shlex.split(value))


def process_budget_mib() -> float:
    """What the process may peak at: MemoryMax= minus the pip child the drop-in leaves room for."""
    service = read_unit(DROPIN.read_text())["Service"]
    return _systemd_bytes(_one(service, "MemoryMax")) / (1 << 20) - PIP_CHILD_MIB


@dataclass
class Figures:
    idle_rss: float = 0.0
    peak: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    over_limit: tuple[int, str] = (0, "")
    seconds: float = 0.0


def bodies(end_ns: int) -> list[str]:
    """Line protocol of SENSORS sensors at HZ, LINES lines ending at `end_ns`, BATCH lines a body."""
    step = 1_000_000_000 // HZ
    start = end_ns - (LINES // SENSORS) * step
    out = []
    for first in range(0, LINES, BATCH):
        lines = []
        for i in range(first, first + BATCH):
            tick, sensor = divmod(i, SENSORS)
            lines.append(
                f"env,site=barn,sensor=s{sensor} temp={19 + (tick * 7 + sensor) % 600 / 100},"
                f"hum={40 + (tick // 50 + sensor) % 30}i,pressure={1000 + (tick % 700) / 10}"
                f" {start + tick * step}"
            )
        out.append("\n".join(lines))
    return out


def run_workload(server: Server) -> Figures:
    """The gateway's day in a few seconds; returns what it measured."""
    began = time.monotonic()
    figures = Figures(idle_rss=server.memory_mib("VmRSS"))
    for body in bodies(time.time_ns()):
        r = server.write(DB, body)
        assert r.status == 204, (r.status, r.body)

    def dashboard(stage: str) -> None:
        for name, sql in DASHBOARD.items():
            figures.rows[f"{stage}: {name}"] = len(server.query(DB, sql))

    dashboard("buffer")
    r = server.request("POST", "/api/v3/persist")
    assert r.status == 200, r.body
    dashboard("parquet")
    r = server.request("GET", "/api/v3/query_sql", {"db": DB, "q": OVER_LIMIT})
    figures.over_limit = (r.status, r.text)
    dashboard("after the refused query")
    figures.peak = server.memory_mib("VmHWM")
    figures.seconds = time.monotonic() - began
    return figures


def test_low_memory_profile_holds_a_small_gateways_load(tmp_path: Path) -> None:
    budget = process_budget_mib()
    server = Server(tmp_path / "data", args=["--config", str(PROFILE)], env=dropin_environment()).start()
    figures = run_workload(server)
    print(f"\nlow-memory profile: idle VmRSS {figures.idle_rss:.0f} MiB, peak VmHWM {figures.peak:.0f} MiB")

    status, text = figures.over_limit
    assert status == 400 and "query.memory_limit" in text and "33554432 bytes" in text, (status, text)
    assert server.request("GET", "/health").status == 200
    stats = server.query(DB, DASHBOARD["statistics over everything"])
    assert sum(row["n"] for row in stats) == LINES
    rows = figures.rows
    assert rows["parquet: statistics over everything"] == SENSORS
    assert rows["parquet: last value per sensor"] == SENSORS
    assert rows["parquet: per-minute averages, last hour"] >= 40 * SENSORS  # ~42 minutes of data
    # 10 minutes at 10 Hz, less the seconds the clock moved on since the data's last point
    assert 570 * HZ * SENSORS <= rows["parquet: raw rows, last 10 minutes"] <= 600 * HZ * SENSORS
    assert rows["buffer: statistics over everything"] == SENSORS

    assert figures.peak < budget, (
        f"peak VmHWM {figures.peak:.0f} MiB is over the process budget of {budget:.0f} MiB"
        f" (systemd/low-memory.conf: MemoryMax minus {PIP_CHILD_MIB} MiB for a pip child)"
    )
    server.stop()


def main() -> int:
    """Run the workload with the profile and with the defaults; print both."""
    print(
        f"workload: {LINES:,} lines ({SENSORS} sensors at {HZ} Hz) in {BATCH}-line bodies, dashboard queries,"
    )
    print("persist, the dashboard again, one query over the memory limit\n")
    print("| configuration | idle VmRSS | peak VmHWM | over-limit query | workload |")
    print("|---|---|---|---|---|")
    runs = {
        "low-memory profile + drop-in Environment=": (["--config", str(PROFILE)], dropin_environment()),
        "low-memory profile alone": (["--config", str(PROFILE)], {}),
        "defaults + drop-in Environment=": ([], dropin_environment()),
        "defaults": ([], {}),
    }
    for name, (args, env) in runs.items():
        with tempfile.TemporaryDirectory(prefix="low-memory-") as tmp:
            server = Server(Path(tmp) / "data", args=args, env=env).start()
            try:
                f = run_workload(server)
            finally:
                server.stop()
        print(f"| {name} | {f.idle_rss:.0f} MiB | {f.peak:.0f} MiB | {f.over_limit[0]} | {f.seconds:.1f} s |")
    print(f"\nprocess budget of the profile: {process_budget_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
