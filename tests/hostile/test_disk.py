"""Out of space: a full disk (a small tmpfs as the data dir) and a full WAL map.

Writes that cannot be stored get 507 naming the disk and what to do, /health says degraded
with the reason, a persist on a full disk gets 507 (not 500), and once there is room again
everything carries on without a restart; every acknowledged write survives, kill -9 included.

The tmpfs needs root (CAP_SYS_ADMIN). Outside CI a test without it is skipped; in CI
(`CI=true`) a missing capability is a failure, so the check cannot quietly stop running.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from appliance.errors import StorageFull
from appliance.wal import TableRows, Wal, WalEntry
from tests.server import RUNNING, Server, wait_for

MiB = 1 << 20


def _no_tmpfs(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the disk-full tests: {reason}")
    pytest.skip(f"needs a tmpfs mount (run as root): {reason}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs("24m")` mounts a tmpfs of that size at tmp_path/data and returns the path."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / "data"
        where.mkdir()
        if os.geteuid() != 0:
            _no_tmpfs(f"running as uid {os.geteuid()}")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            _no_tmpfs(f"mount failed: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    while RUNNING:  # a server still running keeps the mount busy
        s = RUNNING.pop()
        if s.proc is not None:
            s.kill()
    for where in mounted:
        if subprocess.run(["umount", str(where)]).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)  # still busy: detach it


def fill(folder: Path, leave: int = 0) -> Path:
    """A ballast file taking every byte of the file system but `leave`."""
    ballast = folder / "ballast"
    with open(ballast, "wb") as f:
        if leave:
            st = os.statvfs(folder)
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
        else:
            try:
                while True:
                    f.write(b"\0" * (64 * 1024))
                    f.flush()
            except OSError:
                pass
    return ballast


def batch(i: int, n: int = 100, pad: int = 0) -> str:
    extra = f',pad="{"x" * pad}"' if pad else ""
    return "\n".join(
        f"m,dev=d{j % 5} seq={i * n + j}i{extra} {1_764_000_000_000_000_000 + i * n + j}" for j in range(n)
    )


def stored_seqs(server: Server) -> set[int]:
    return {r["seq"] for r in server.query("iot", "SELECT seq FROM m")}


def health(server: Server) -> dict:
    r = server.request("GET", "/health")
    assert r.status == 200, r.body  # degraded, not failed: reads still work
    return dict(r.json())


def test_full_disk_answers_507_health_degraded_and_recovers_when_space_is_freed(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    data = tmpfs("32m")
    server = Server(data).start()
    acked: set[int] = set()
    for i in range(5):
        assert server.write("iot", batch(i)).status == 204
        acked |= set(range(i * 100, i * 100 + 100))
    ballast = fill(data)

    refused = server.write("iot", batch(5))
    assert refused.status == 507, refused.body
    msg = refused.json()["error"]
    assert f"the disk holding {data} is full" in msg and "free space" in msg.lower()
    assert "Traceback" not in msg and "mdb_" not in msg
    report = health(server)
    assert report["state"] == "degraded" and report["status"] == "pass"
    assert report["components"]["wal"]["status"] == "degraded"
    assert "is full" in report["components"]["wal"]["error"]
    persisted = server.request("POST", "/api/v3/persist")
    assert persisted.status == 507, persisted.body
    assert f"the disk holding {data} is full" in persisted.json()["error"]
    assert stored_seqs(server) == acked  # reads keep working, nothing acknowledged is missing

    ballast.unlink()
    wait_for(lambda: server.write("iot", batch(6)).status == 204, what="writes to resume")
    acked |= set(range(600, 700))
    wait_for(lambda: health(server)["state"] == "ok", what="/health to be ok again (the persist retried)")
    assert server.request("POST", "/api/v3/persist").status == 200
    assert server.write("iot", batch(7)).status == 204  # in the WAL only: replayed after kill -9
    acked |= set(range(700, 800))
    assert stored_seqs(server) == acked
    server.kill()
    server.start()
    assert stored_seqs(server) == acked
    assert "Traceback" not in server.log()


def test_full_disk_then_restart_before_space_is_freed_keeps_every_acknowledged_write(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    data = tmpfs("32m")
    server = Server(data).start()
    for i in range(3):
        assert server.write("iot", batch(i)).status == 204
    ballast = fill(data)
    assert server.write("iot", batch(3)).status == 507
    server.kill()
    ballast.unlink()
    server.start()
    assert stored_seqs(server) == set(range(300))
    assert server.write("iot", batch(3)).status == 204


def test_a_short_write_on_a_nearly_full_disk_is_507_not_an_io_error(tmpfs: Callable[[str], Path]) -> None:
    """LMDB turns a write the disk took only part of into EIO; with no room left it is a full disk."""
    data = tmpfs("16m")
    wal = Wal(data / "lmdb", 64 * MiB)
    wal.start()
    try:
        rows = pa.record_batch({"v": pa.array([b"x" * 200_000])})
        entry = WalEntry(1, "iot", [TableRows(1, "m", rows)])
        assert wal.submit(entry=entry).result() == 1
        ballast = fill(data, leave=64 * 1024)
        error = wal.submit(entry=entry).exception()
        assert isinstance(error, StorageFull) and error.http_status == 507, repr(error)
        assert f"the disk holding {data} is full" in error.message
        assert wal.full is not None
        ballast.unlink()
        assert wal.submit(entry=entry).result() == 2
        assert wal.full is None
    finally:
        wal.stop()


def test_full_wal_map_starts_a_persist_and_writes_recover_by_themselves(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"APPLIANCE_WAL_MAP_SIZE": "2MiB"}).start()
    acked: set[int] = set()
    refusals: list[str] = []
    i = 0
    deadline = time.monotonic() + 60
    while not refusals or len(acked) < 40_000:  # about twice the map's capacity; never persisted by hand
        assert time.monotonic() < deadline, f"acked {len(acked)} rows; last refusal {refusals[-1:]}"
        r = server.write("iot", batch(i, pad=40))
        if r.status == 204:
            acked |= set(range(i * 100, i * 100 + 100))
            i += 1
            continue
        assert r.status == 507, r.body
        refusals.append(r.json()["error"])
        time.sleep(0.05)
    assert "wal.map_size" in refusals[0] and "persist has been started" in refusals[0]
    log = server.log()
    assert "writes refused with 507: the write-ahead log is full" in log
    assert "persisted files=" in log and "storage has room again" in log
    assert health(server)["state"] == "ok"
    assert stored_seqs(server) == acked
    server.kill()
    server.start()
    assert stored_seqs(server) == acked
