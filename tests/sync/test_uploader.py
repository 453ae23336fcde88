"""Syncer in-process: a real SyncQueue on LMDB, a FileStore (or a recording fake) for the bucket, no S3."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance import config as config_module
from appliance.config import SyncSettings
from appliance.storage.manifest import Change, ParquetFile
from appliance.sync.filestore import FileStore
from appliance.sync.queue import DELETE, QUEUED, SYNCED, SyncQueue
from appliance.sync.uploader import Syncer
from tests.server import wait_for
from tests.sync.test_queue import change, pf, states

REL = "iot/cpu/date=2025-11-24/node=test-node/1600-1.parquet"


def settings(**over: object) -> SyncSettings:
    base = config_module.load(None, {"sync.bucket": "file:///unused"}, environ={}).sync
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


class _Store:
    """Uploads succeed; every delete fails (the endpoint refuses deletes, say)."""

    def __init__(self) -> None:
        self.put_paths: list[str] = []
        self.delete_calls = 0
        self.strays_checked = 0

    def put(self, local: Path, rel: str, rows: int, stop: object) -> None:
        self.put_paths.append(rel)

    def delete(self, rel: str) -> None:
        self.delete_calls += 1
        raise OSError(f"DELETE s3://edge/{rel} answered 403 AccessDenied")

    def remove_strays(self) -> int:
        self.strays_checked += 1
        return 0


class _Manifest:
    def __init__(self, paths: set[str]) -> None:
        self.live = paths

    def pinned(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def paths(self) -> set[str]:
        return self.live


def test_a_failing_delete_backs_off_alone_and_never_holds_up_uploads(
    queue: SyncQueue, tmp_path: Path
) -> None:
    store, manifest = _Store(), _Manifest({"a", "b"})
    syncer = Syncer(settings(), queue, store, manifest, tmp_path / "parquet")  # type: ignore[arg-type]
    change(queue, Change.PERSIST, [pf("old")], [])
    queue.mark_synced("old")
    change(queue, Change.PERSIST, [pf("a")], [pf("old")])  # a replaces old: old's object goes after a
    assert syncer._pass(ignore_backoff=False)  # the pass succeeds: a delete failing is not an outage
    assert store.put_paths == ["a"] and store.delete_calls == 1 and store.strays_checked == 1
    assert states(queue)["old"] == (DELETE, ["a"])  # a is synced now, so it is due, but failed
    assert queue.records(DELETE)[0].attempts == 1  # its own retry time
    change(queue, Change.PERSIST, [pf("b")], [])
    assert syncer._pass(ignore_backoff=False)
    assert store.put_paths == ["a", "b"] and store.delete_calls == 1  # not due yet: b went anyway
    assert syncer._failures == 0


# -- the running loop with a FileStore -----------------------------------------------------------
class FlakyStore(FileStore):
    """A FileStore whose first `failures` puts raise, as an unreachable NAS would."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root, "fleet")
        self.failures = failures

    def put(self, local: Path, rel: str, rows: int, stop: threading.Event) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("NAS unreachable")
        super().put(local, rel, rows, stop)


@contextlib.contextmanager
def running(queue: SyncQueue, tmp_path: Path, store: FileStore, **over: object) -> Iterator[Syncer]:
    """A started Syncer over one queued local Parquet file (REL); stopped on exit."""
    root = tmp_path / "parquet"
    (root / REL).parent.mkdir(parents=True)
    pq.write_table(pa.table({"v": pa.array([1, 2, 3], pa.int64())}), root / REL)
    size = (root / REL).stat().st_size
    change(queue, Change.PERSIST, [ParquetFile(REL, 1, "iot", 1, "cpu", size, 3, 0, 1, 0)], [])
    # A long interval: every pass in these tests is asked for, none comes from the timer.
    syncer = Syncer(settings(interval=3600 * 10**9, **over), queue, store, _Manifest({REL}), root)  # type: ignore[arg-type]
    syncer.start()
    try:
        yield syncer
    finally:
        syncer.stop()


def test_a_pass_uploads_a_queued_file_to_the_folder(queue: SyncQueue, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "nas", "fleet")
    with running(queue, tmp_path, store) as syncer:
        syncer.sync_now().result(timeout=10)
        assert store.head(REL) == (tmp_path / "parquet" / REL).stat().st_size
        assert (tmp_path / "nas" / "fleet" / REL).read_bytes() == (tmp_path / "parquet" / REL).read_bytes()
        assert states(queue) == {REL: (SYNCED, [])}
        assert syncer.stats.uploaded_files == 1 and syncer.queued_bytes == 0
        assert syncer.health()["status"] == "ok"
        assert syncer.status()["endpoint"] == "local" and syncer.status()["queued_files"] == 0


def test_a_failed_put_is_recorded_and_sent_at_the_next_pass(queue: SyncQueue, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "nas", failures=1)
    with running(queue, tmp_path, store) as syncer:
        syncer.sync_now().result(timeout=10)
        assert store.head(REL) is None
        [rec] = queue.records(QUEUED)
        assert rec.attempts == 1 and rec.error == f"upload of {REL} failed: NAS unreachable"
        assert syncer.stats.failed_attempts == 1 and syncer._failures == 1  # the pass backs off
        syncer.sync_now().result(timeout=10)  # asked for: ignores the backoff
        assert states(queue) == {REL: (SYNCED, [])} and store.head(REL) is not None
        assert syncer._failures == 0 and syncer.stats.uploaded_files == 1


def test_reload_takes_the_new_interval_bandwidth_and_retry_times(queue: SyncQueue, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "nas", failures=1)
    with running(queue, tmp_path, store) as syncer:
        syncer.reload(settings(interval=5 * 10**9, bandwidth_limit=1 << 20, retry_min=100 * 10**9))
        assert syncer._loop.interval == 5.0 and store.throttle.rate == 1 << 20
        before = time.time_ns()
        syncer.sync_now().result(timeout=10)
        [rec] = queue.records(QUEUED)
        assert rec.next_ns - before >= 50 * 10**9  # the new retry_min (jittered to half at least)


def test_a_failing_step_shows_in_health_and_the_loop_carries_on(
    queue: SyncQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "nas", "fleet")
    with running(queue, tmp_path, store) as syncer:
        real = syncer._refresh

        def refresh() -> None:
            raise OSError("LMDB read failed")

        monkeypatch.setattr(syncer, "_refresh", refresh)
        syncer.sync_now().result(timeout=10)  # an asked-for pass resolves even when the step fails
        health = wait_for(lambda: syncer.health() if syncer._loop.failures else None, 10, "a failed step")
        assert health["status"] == "degraded" and health["error"] == "LMDB read failed"
        assert store.head(REL) is not None  # the upload itself went through
        monkeypatch.setattr(syncer, "_refresh", real)
        syncer.sync_now().result(timeout=10)  # asked for: a wake ends the loop's backoff
        wait_for(lambda: syncer._loop.failures == 0, 10, "the loop to recover")
        assert syncer.health()["status"] == "ok"


def test_app_reload_hands_the_syncer_its_new_settings(tmp_path: Path) -> None:
    from appliance import app as app_module

    overrides = {
        "server.data_dir": str(tmp_path / "data"),
        "sync.bucket": f"file://{tmp_path}/nas",
        "auth.enabled": False,
    }
    cfg = config_module.load(None, overrides, environ={})
    app = app_module.build(cfg)
    try:
        assert app.syncer is not None and isinstance(app.syncer.store, FileStore)
        new = config_module.load(
            None, overrides | {"sync.interval": "7s", "sync.bandwidth_limit": "1MiB"}, environ={}
        )
        app.reload(new)
        assert app.syncer.settings.interval == 7 * 10**9 and app.syncer._loop.interval == 7.0
        assert app.syncer.store.throttle.rate == 1 << 20
    finally:
        app.stop()
