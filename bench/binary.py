"""Frozen-build benchmark: what each artifact costs on disk, how fast it starts, how much memory it holds.

For every artifact (`--binary PATH`, repeatable, each optionally followed by `--runner CMD` to run
it under, e.g. packaging/emulate-arm64), it reports:

- size on disk and number of files (the one-folder build's folder, or the one-file executable);
- the glibc floor: the one packaging/build.sh recorded in build-info.json beside the build, else
  what packaging/glibc_floor.py measures; measured here, a one-file build's floor is its
  bootloader's only (the libraries in its archive are not scanned);
- start-to-healthy time, the median of `--runs` starts on fresh data dirs: from spawning
  `[runner] binary serve --data-dir TMP --http-bind 127.0.0.1:PORT --without-auth --node-id bench`
  to the first 200 from GET /health;
- natively only: idle VmRSS once healthy, and peak VmHWM after writing `--lines` lines and
  running one SQL query (the process tree: the one-file build's bootloader and its child). Under a
  runner the resident memory is the emulator's, so it is reported as n/a.

Without `--binary` it takes every dist/appliance-onedir/appliance, dist/appliance and the same in
each folder of dist/ (dist/arm64/..., dist/amd64-bullseye/...) that exists; aarch64 executables
(read from the ELF header) on another machine run under packaging/emulate-arm64. Under emulation absolute times mean little. Figures only:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DATABASE,
    MEASUREMENT,
    REPO,
    Server,
    Workload,
    free_port,
    generate_bodies,
    install_signal_handlers,
    machine,
    request,
    run_load,
)

EMULATE_ARM64 = REPO / "packaging" / "emulate-arm64"
GLIBC_FLOOR = REPO / "packaging" / "glibc_floor.py"
#: ELF e_machine values we know by name.
MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
#: platform.machine() names of this host that run each e_machine natively.
NATIVE = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"}}
QUERY = (
    f"SELECT device, count(*) AS n, avg(temp) AS temp FROM {MEASUREMENT}"
    " GROUP BY device ORDER BY n DESC, device LIMIT 10"
)


@dataclass
class Artifact:
    """One executable to measure and what to run it under."""

    path: Path
    runner: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path | None:
        """The one-folder build's folder (the executable beside its _internal/), else None."""
        return self.path.parent if (self.path.parent / "_internal").is_dir() else None

    @property
    def label(self) -> str:
        with contextlib.suppress(ValueError):
            return str(self.path.relative_to(REPO))
        return str(self.path)


@dataclass
class Row:
    """What was measured for one artifact; None where it was not (or could not be)."""

    artifact: Artifact
    arch: str
    size_bytes: int
    files: int
    floor: str
    healthy_s: list[float] = field(default_factory=list)
    idle_mib: float | None = None
    peak_mib: float | None = None
    error: str | None = None


# --- static facts ---------------------------------------------------------------------------


def elf_machine(path: Path) -> str | None:
    """The architecture in an ELF file's header (e_machine), or None for anything else."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    number = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return MACHINES.get(number, f"e_machine {number}")


def disk_usage(artifact: Artifact) -> tuple[int, int]:
    """Bytes and files of the artifact: the whole folder of a one-folder build."""
    if artifact.folder is None:
        return artifact.path.stat().st_size, 1
    size = files = 0
    for path in artifact.folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            size += path.stat().st_size
            files += 1
    return size, files


def glibc_floor(artifact: Artifact) -> str:
    """The build's own measurement (build-info.json), else what packaging/glibc_floor.py measures."""
    recorded = floor_from_build_info(artifact)
    if recorded is not None:
        return recorded
    # A one-file build's libraries are inside its archive: only its bootloader can be scanned.
    note = "" if artifact.folder is not None else " (bootloader only)"
    target = artifact.folder or artifact.path
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "floor.json"
        cmd = [sys.executable, str(GLIBC_FLOOR), "--json", str(out), str(target)]
        subprocess.run(cmd, capture_output=True, timeout=600)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            floor = json.loads(out.read_text()).get("glibc_floor")
            if floor:
                return f"GLIBC_{floor}{note}"
    return "? (packaging/glibc_floor.py found no GLIBC version; is binutils' readelf installed?)"


def floor_from_build_info(artifact: Artifact) -> str | None:
    """glibc_floor of this output in the build-info.json that packaging/build.sh writes beside it."""
    for folder in (artifact.path.parent, artifact.path.parent.parent):
        info = folder / "build-info.json"
        if not info.is_file():
            continue
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        outputs = data.get("outputs") or {}
        if artifact.folder is not None and artifact.folder.parent == folder:
            output = outputs.get("onedir") or {}
        elif artifact.folder is None and artifact.path.parent == folder:
            output = outputs.get("onefile") or {}
        else:
            continue
        floor = output.get("glibc_floor") or data.get("glibc_floor")
        if floor:
            return f"GLIBC_{floor} (build-info.json)"
    return None


# --- running --------------------------------------------------------------------------------


def start(artifact: Artifact, base: Path, timeout: float, env: dict[str, str]) -> tuple[Server, float]:
    """Spawn `serve` on a fresh data dir; (the server, seconds until /health answered 200)."""
    port = free_port()
    cmd = [*artifact.runner, str(artifact.path), "serve", "--data-dir", str(base / "data")]
    cmd += ["--http-bind", f"127.0.0.1:{port}", "--without-auth", "--node-id", "bench"]
    server = Server(artifact.label, base, port, "/health", 200, cmd)
    log = server.log_path.open("ab")
    began = time.monotonic()
    # The runner sees the current directory and /tmp: run where the executable is.
    server.proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=artifact.path.parent,
        env={k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | env,
        start_new_session=True,
    )
    log.close()
    while time.monotonic() - began < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"exited with {server.proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                return server, time.monotonic() - began
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"not healthy after {timeout:.0f} s:\n{server.log_tail()}")


def measure(artifact: Artifact, args: argparse.Namespace, env: dict[str, str]) -> Row:
    arch = elf_machine(artifact.path) or "not ELF"
    size, files = disk_usage(artifact)
    row = Row(artifact, arch, size, files, glibc_floor(artifact))
    timeout = args.startup_timeout * (10 if artifact.runner else 1)
    print(f"{artifact.label} ({arch}{', under ' + shlex.join(artifact.runner) if artifact.runner else ''})")
    try:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-binary-", dir=args.work_dir) as tmp:
                server, took = start(artifact, Path(tmp), timeout, env)
                try:
                    row.healthy_s.append(took)
                    print(f"  start {run + 1}: healthy after {took:.2f} s")
                    if run == 0 and not artifact.runner:
                        row.idle_mib, row.peak_mib = workload(server, args)
                finally:
                    server.stop()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        row.error = " / ".join(lines[:1] + lines[-1:])
        print(f"  failed: {exc}")
    return row


def workload(server: Server, args: argparse.Namespace) -> tuple[float, float]:
    """Idle VmRSS now; peak VmHWM after writing `--lines` lines and one query (MiB)."""
    time.sleep(0.5)  # let start-up threads settle
    idle = server.rss_mb()
    bodies, counts = generate_bodies(Workload(lines=args.lines, batch=5_000, devices=100, span_s=3_600))
    result = run_load(server.port, f"/api/v3/write_lp?db={DATABASE}", bodies, counts, 2, "write", 5.0)
    if result.errors:
        raise RuntimeError(f"writes failed: {result.errors[0]}")
    params = urllib.parse.urlencode({"db": DATABASE, "q": QUERY, "format": "json"})
    status, body = request(server.port, "GET", f"/api/v3/query_sql?{params}")
    if status != 200:
        raise RuntimeError(f"query answered {status}: {body[:200]!r}")
    peak = server.peak_rss_mb()
    print(f"  idle VmRSS {idle:.0f} MiB; {result.lines:,} lines + 1 query: peak VmHWM {peak:.0f} MiB")
    return idle, peak


# --- report ---------------------------------------------------------------------------------


def table(rows: list[Row], runs: int) -> str:
    head = [
        "artifact",
        "arch",
        "run",
        "size",
        "files",
        "glibc floor",
        f"start to healthy (median of {runs})",
        "idle VmRSS",
        "peak VmHWM",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        run = "emulated" if r.artifact.runner else "native"
        if r.healthy_s:
            healthy = f"{statistics.median(r.healthy_s):.2f} s"
        else:
            healthy = f"failed: {r.error}" if r.error else "-"
        idle = f"{r.idle_mib:.0f} MiB" if r.idle_mib is not None else "n/a" if r.artifact.runner else "-"
        peak = f"{r.peak_mib:.0f} MiB" if r.peak_mib is not None else "n/a" if r.artifact.runner else "-"
        cells = [
            f"`{r.artifact.label}`",
            r.arch,
            run,
            f"{r.size_bytes / 2**20:.0f} MiB",
            f"{r.files:,}",
            r.floor,
            healthy,
            idle,
            peak,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- arguments ------------------------------------------------------------------------------


class _BinaryAction(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None
    ) -> None:
        ns.artifacts.append(Artifact(Path(value).resolve()))


class _RunnerAction(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None
    ) -> None:
        if not ns.artifacts:
            parser.error("--runner applies to the --binary before it: give --binary first")
        ns.artifacts[-1].runner = shlex.split(value)


def default_artifacts(dist: Path) -> list[Artifact]:
    """The builds in dist/, each with the emulator when it is for another architecture."""
    found = [dist / "appliance-onedir" / "appliance", dist / "appliance"]
    variants = sorted(p for p in dist.iterdir() if p.is_dir()) if dist.is_dir() else []
    for variant in variants:
        if not (variant / "_internal").is_dir():  # dist/appliance-onedir is a build, not a variant
            found += [variant / "appliance-onedir" / "appliance", variant / "appliance"]
    # Resolved: a runner binds the real current directory, which must hold the executable's path.
    paths = dict.fromkeys(p.resolve() for p in found if p.is_file() and os.access(p, os.X_OK))
    return [runner_for(Artifact(p)) for p in paths]


def runner_for(artifact: Artifact) -> Artifact:
    """An aarch64 executable on a machine that is not: run it under packaging/emulate-arm64."""
    arch = elf_machine(artifact.path)
    if not artifact.runner and arch == "aarch64" and platform.machine().lower() not in NATIVE[arch]:
        artifact.runner = [str(EMULATE_ARM64)]
    return artifact


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/binary.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(artifacts=[])
    parser.add_argument(
        "--binary", action=_BinaryAction, metavar="PATH", help="an executable to measure (repeatable)"
    )
    parser.add_argument(
        "--runner",
        action=_RunnerAction,
        metavar="CMD",
        help="command to run the --binary before it under, e.g. packaging/emulate-arm64",
    )
    parser.add_argument(
        "--dist",
        type=Path,
        default=REPO / "dist",
        help="where to look without --binary (default <repo>/dist)",
    )
    parser.add_argument("--runs", type=int, default=3, help="starts per artifact (default 3)")
    parser.add_argument(
        "--lines", type=int, default=100_000, help="lines written before the peak is read (default 100,000)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the server, e.g. MALLOC_ARENA_MAX=2 (repeatable)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds to wait for /health (x10 under a runner)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the data dirs go (default /tmp)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    artifacts = [runner_for(a) for a in args.artifacts] or default_artifacts(args.dist)
    if not artifacts:
        print("no artifact: build one (`make binary`) or give --binary PATH")
        return 1
    env = dict(item.split("=", 1) for item in args.env)
    print(f"machine: {machine()}")
    if env:
        print(f"environment: {' '.join(f'{k}={v}' for k, v in env.items())}")
    rows = [measure(a, args, env) for a in artifacts]
    print()
    print(table(rows, args.runs))
    if any(r.artifact.runner for r in rows):
        print("\nemulated: user-mode qemu under proot on this machine; its times are not a board's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
