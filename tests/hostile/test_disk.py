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
from typing import Any, cast

import lmdb
import pyarrow as pa
import pytest

from appliance.errors import StorageFull, WalError
from appliance.storage.store import FAILING_AFTER, Store
from appliance.storage.wal import TableRows, Wal, WalEntry
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
    store = Store(data / "lmdb", 64 * MiB)
    wal = Wal(store)
    store.start()
    try:
        rows = pa.record_batch({"v": pa.array([b"x" * 200_000])})
        entry = WalEntry(1, "iot", [TableRows(1, "m", rows)])
        assert wal.append(entry).result() == 1
        ballast = fill(data, leave=64 * 1024)
        error = wal.append(entry).exception()
        assert isinstance(error, StorageFull) and error.http_status == 507, repr(error)
        assert f"the disk holding {data} is full" in error.message
        assert store.full is not None
        ballast.unlink()
        assert wal.append(entry).result() == 2
        assert store.full is None
    finally:
        store.stop()


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
        time.sleep(0.05)  # a client's pace between retries after 507 (the recovery runs meanwhile)
    assert "wal.map_size" in refusals[0] and "persist has been started" in refusals[0]
    log = server.log()
    assert "writes refused with 507: the write-ahead log is full" in log
    assert "persisted files=" in log and "storage has room again" in log
    assert health(server)["state"] == "ok"
    assert stored_seqs(server) == acked
    server.kill()
    server.start()
    assert stored_seqs(server) == acked


def test_the_disk_state_follows_the_disk_not_the_commits(tmpfs: Callable[[str], Path]) -> None:
    """Degraded as soon as the disk is full (small commits may still fit in LMDB's free pages),
    and ok again once space is freed, with no write needed to notice."""
    data = tmpfs("32m")
    server = Server(data).start()
    assert server.write("iot", batch(0)).status == 204
    ballast = fill(data, leave=256 * 1024)
    report = health(server)
    assert report["state"] == "degraded" and "is full" in report["components"]["wal"]["error"]
    assert server.write("iot", "m,dev=d seq=1i 1764000000000000000").status in (204, 507)
    assert health(server)["state"] == "degraded"  # a small commit that fits changes nothing
    ballast.unlink()
    wait_for(lambda: health(server)["state"] == "ok", what="/health to see the room (no write since)")
    assert "storage has room again" in server.log()


class _FailingCommits:
    """Stands in for the LMDB environment: every top-level write transaction fails to commit."""

    def __init__(self, env: lmdb.Environment, error: lmdb.Error) -> None:
        self._env, self.error = env, error

    def __getattr__(self, name: str) -> object:
        return getattr(self._env, name)

    def begin(self, write: bool = False, parent: lmdb.Transaction | None = None, **kw: Any) -> object:
        txn = self._env.begin(write=write, parent=parent, **kw)
        if not write or parent is not None:
            return txn
        error = self.error

        class Failing:
            def __enter__(self) -> lmdb.Transaction:
                return txn

            def __exit__(self, *exc: object) -> None:
                txn.abort()
                raise error

        return Failing()


def _failing_commits(env: lmdb.Environment, error: lmdb.Error) -> lmdb.Environment:
    """`_FailingCommits` in the place of the environment `Store.env` is declared to hold."""
    return cast(lmdb.Environment, _FailingCommits(env, error))


def test_a_commit_failing_for_another_reason_is_a_failing_state_and_never_ends_disk_full(
    tmpfs: Callable[[str], Path],
) -> None:
    data = tmpfs("16m")
    store = Store(data / "lmdb", 64 * MiB)
    wal = Wal(store)
    store.start()
    rows = pa.record_batch({"v": pa.array([b"x" * 200_000])})
    entry = WalEntry(1, "iot", [TableRows(1, "m", rows)])
    real = store.env
    try:
        assert wal.append(entry).result() == 1
        ballast = fill(data, leave=64 * 1024)
        assert isinstance(wal.append(entry).exception(), StorageFull)
        full = store.full
        assert full is not None
        store.env = _failing_commits(
            real, lmdb.PanicError("mdb_txn_commit: MDB_PANIC: Update of meta page failed")
        )
        for attempt in range(1, FAILING_AFTER + 1):
            error = wal.append(entry).exception()
            assert isinstance(error, WalError) and not isinstance(error, StorageFull), repr(error)
            assert error.http_status == 503 and "MDB_PANIC" in error.message
            assert store.full == full  # still full: a failure that is not about space says nothing of it
            assert (store.failing is None) == (attempt < FAILING_AFTER)
        assert store.failing is not None and "MDB_PANIC" in store.failing
        ballast.unlink()
        store.env = _failing_commits(real, lmdb.Error("mdb_txn_commit: Input/output error"))  # EIO with room
        error = wal.append(entry).exception()
        assert isinstance(error, WalError) and not isinstance(error, StorageFull) and error.http_status == 503
        assert store.failing is not None
        store.env = real
        assert wal.append(entry).result() == 2
        assert store.failing is None and store.full is None
    finally:
        store.env = real
        store.stop()


def test_health_shows_failing_commits_as_degraded_with_the_reason(tmp_path: Path) -> None:

    from appliance.app import App

    store = Store(tmp_path / "lmdb", 64 * MiB)
    store.failing = "3 write-ahead log commits in a row failed: MDB_PANIC"
    app = App.__new__(App)
    app.components = [Wal(store)]
    report = app.health()
    assert report["status"] == "degraded"
    assert report["components"]["wal"] == report["components"]["wal"] | {
        "status": "degraded",
        "error": "3 write-ahead log commits in a row failed: MDB_PANIC",
    }
    store.stop()


def test_one_write_larger_than_the_wal_can_ever_hold_is_413_naming_the_setting(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"APPLIANCE_WAL_MAP_SIZE": "2MiB"}).start()
    huge = server.write("iot", batch(0, n=20_000, pad=100))  # ~2.5 MB stored, in one write
    assert huge.status == 413, huge.body
    message = huge.json()["error"]
    assert "wal.map_size" in message and "split" in message and "Traceback" not in message
    assert server.write("iot", batch(1)).status == 204
    assert health(server)["state"] == "ok"


def test_the_map_reserve_lets_the_trim_commit_through_fill_and_trim_cycles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 64 MiB map with only a 16th in reserve (the real reserve is larger below 256 MiB):
    filled with WAL entries (large and small) to the 507, the persist's transaction (trim
    every entry, record files and queue records) still commits, three times over."""
    monkeypatch.setattr("appliance.storage.store.map_reserve", lambda map_size: map_size // 16)
    store = Store(tmp_path / "lmdb", 64 * MiB)
    wal = Wal(store)
    files, sync = store.database(b"files"), store.database(b"sync")
    store.start()
    big = WalEntry(1, "iot", [TableRows(1, "m", pa.record_batch({"v": pa.array([b"x" * 256_000])}))])
    small = WalEntry(1, "iot", [TableRows(1, "m", pa.record_batch({"v": pa.array([b"y" * 1500])}))])
    try:
        for cycle in range(3):
            stored, i = 0, 0
            while True:
                futures = [wal.append(big if (i + k) % 4 == 0 else small) for k in range(64)]
                errors = [f.exception() for f in futures]
                i += 64
                stored += sum(e is None for e in errors)
                if any(isinstance(e, StorageFull) for e in errors):
                    break
            assert store.full is not None and "wal.map_size" in store.full
            assert stored > 1000, f"cycle {cycle}: only {stored} entries fit"

            def persist_step(txn: lmdb.Transaction, cycle: int = cycle) -> int:
                for n in range(500):  # the files and sync records a big persist adds
                    txn.put(f"{cycle}/file-{n}".encode(), b"r" * 300, db=files)
                    txn.put(f"{cycle}/file-{n}".encode(), b"q" * 120, db=sync)
                return wal.trim(txn, wal.last_seq)

            assert store.submit(persist_step).result() == stored + (cycle > 0)  # + the last cycle's probe
            assert wal.append(small).result()  # a commit that fits ends the state
            assert store.full is None
    finally:
        store.stop()


def test_a_persist_on_a_full_disk_evicts_synced_files_and_then_succeeds(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    """Persist fails for a full disk: with [sync] the files the bucket already holds are
    evicted (oldest first) to make room, so the persist retried by itself succeeds."""
    import json
    import secrets

    from tests import s3 as s3_module

    s3 = s3_module.S3().start()
    try:
        data = tmpfs("32m")
        config = tmp_path / "config.toml"
        settings = {"endpoint": s3.endpoint, "bucket": s3.bucket, "region": s3.region, "allow_http": True}
        config.write_text(
            "[sync]\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
            + '[storage]\nmax_disk_bytes = "1GiB"\n'
        )
        server = Server(data, args=["--config", str(config)], env=s3.env()).start()
        base = 1_764_000_000_000_000_000
        for day in range(4):  # four files of ~1 MB in the bucket
            body = "\n".join(
                f'm,dev=d seq={day * 2000 + i}i,pad="{secrets.token_hex(250)}" {base + day * 86_400 * 10**9 + i}'
                for i in range(2000)
            )
            assert server.write("iot", body).status == 204
        assert server.request("POST", "/api/v3/persist").status == 200
        wait_for(
            lambda: server.request("GET", "/api/v3/sync").json()["synced_files"] == 4, what="the uploads"
        )
        assert server.write("iot", batch(100)).status == 204  # buffered, in the WAL
        fill(data)
        refused = server.request("POST", "/api/v3/persist")
        assert refused.status == 507, refused.body
        wait_for(lambda: "disk full: evicted" in server.log(), what="synced files to be evicted")
        wait_for(
            lambda: server.request("GET", "/health").json()["components"]["persist"]["error"] is None,
            what="the persist retried after the eviction to succeed",
        )
        assert {r["seq"] for r in server.query("iot", "SELECT seq FROM m WHERE seq >= 10000")} == set(
            range(10_000, 10_100)
        )
        assert len(s3.keys("")) >= 4  # what was evicted is in the bucket
    finally:
        s3_module.reap()
