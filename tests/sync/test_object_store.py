"""The ObjectStore contract, run against every backend: S3Store on moto's S3 server, FileStore in tmp_path."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance import config
from appliance.errors import ConfigError
from appliance.sync.backends import endpoint_label, open_store
from appliance.sync.filestore import FileStore
from appliance.sync.s3store import S3Store
from appliance.sync.store import ObjectStore, Stopped
from tests import s3 as s3_module
from tests.s3 import S3

REL = "iot/cpu/date=2025-11-24/node=test-node/1600-1.parquet"
_prefixes = itertools.count()


@dataclass
class Backend:
    """A store under a fresh prefix, with what the test needs to look behind it."""

    store: ObjectStore
    prefix: str
    keys: Callable[[], list[str]]  # every object under the prefix
    plant_stray: Callable[[], None]  # what an earlier version or a crash leaves behind


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    server = S3().start()
    yield server
    s3_module.reap()


def _s3_backend(s3: S3) -> Backend:
    prefix = f"contract{next(_prefixes)}"
    overrides = {
        "sync.bucket": s3.bucket,
        "sync.prefix": prefix,
        "sync.endpoint": s3.endpoint,
        "sync.region": s3.region,
        "sync.allow_http": "true",
        "sync.access_key_id": s3.access_key,
        "sync.secret_access_key": s3.secret_key,
    }
    store = S3Store(config.load(None, overrides, environ={}).sync)
    return Backend(
        store, prefix, lambda: s3.keys(prefix + "/"), lambda: s3.put(f"{prefix}/_staging/x.parquet", b"x")
    )


def _file_backend(root: Path) -> Backend:
    prefix = "fleet"
    store = FileStore(root, prefix)

    def keys() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def plant() -> None:
        folder = root / prefix / "iot" / "cpu"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".abc123.tmp").write_bytes(b"half a file")

    return Backend(store, prefix, keys, plant)


@pytest.fixture(params=["s3", "file"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "s3":
        return _s3_backend(request.getfixturevalue("s3"))
    return _file_backend(tmp_path / "bucket")


def parquet(path: Path, rows: int = 3) -> int:
    pq.write_table(pa.table({"v": pa.array(range(rows), pa.int64())}), path)
    return rows


def test_put_stores_the_whole_file_under_the_prefixed_key(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    rows = parquet(local)
    backend.store.put(local, REL, rows, threading.Event())
    assert backend.store.head(REL) == local.stat().st_size
    assert backend.keys() == [f"{backend.prefix}/{REL}"]
    assert backend.store.url(REL).endswith(f"/{backend.prefix}/{REL}")


def test_put_again_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    rows = parquet(local)
    for _ in range(2):
        backend.store.put(local, REL, rows, threading.Event())
    assert backend.keys() == [f"{backend.prefix}/{REL}"]
    assert backend.store.head(REL) == local.stat().st_size


def test_a_wrong_row_count_fails_verification_and_leaves_no_object(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    rows = parquet(local)
    with pytest.raises(OSError, match="verification failed"):
        backend.store.put(local, REL, rows + 1, threading.Event())
    assert backend.store.head(REL) is None and backend.keys() == []


def test_a_stop_before_the_put_sends_nothing(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    rows = parquet(local)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        backend.store.put(local, REL, rows, stop)
    assert backend.keys() == []


def test_a_missing_local_file_fails_with_oserror(backend: Backend, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        backend.store.put(tmp_path / "gone.parquet", REL, 1, threading.Event())
    assert backend.keys() == []


def test_delete_removes_the_object_and_tolerates_one_already_gone(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    backend.store.put(local, REL, parquet(local), threading.Event())
    backend.store.delete(REL)
    assert backend.store.head(REL) is None and backend.keys() == []
    backend.store.delete(REL)  # already gone: fine
    assert backend.keys() == []


def test_remove_strays_deletes_what_was_left_and_keeps_data(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local.parquet"
    backend.store.put(local, REL, parquet(local), threading.Event())
    assert backend.store.remove_strays() == 0
    backend.plant_stray()
    assert backend.store.remove_strays() == 1
    assert backend.keys() == [f"{backend.prefix}/{REL}"]


def test_the_throttle_is_the_store_s(backend: Backend) -> None:
    backend.store.throttle.rate = 1 << 20
    assert backend.store.throttle.rate == 1 << 20


# -- picking the backend -------------------------------------------------------------------------
def test_a_file_url_bucket_picks_the_file_store(tmp_path: Path) -> None:
    cfg = config.load(None, {"sync.bucket": f"file://{tmp_path}/nas", "sync.prefix": "fleet"}, environ={})
    store = open_store(cfg.sync)
    assert isinstance(store, FileStore) and store.root == tmp_path / "nas" and store.prefix == "fleet"
    assert endpoint_label(cfg.sync) == "local"


def test_a_bucket_name_picks_the_s3_store() -> None:
    cfg = config.load(None, {"sync.bucket": "edge", "sync.access_key_id": "k"}, environ={})
    with pytest.raises(ConfigError, match="secret_access_key"):  # S3Store's own checks run
        open_store(cfg.sync)
    cfg = config.load(None, {"sync.bucket": "edge"}, environ={})
    assert endpoint_label(cfg.sync) == "AWS"


@pytest.mark.parametrize("url", ["file://host/share", "file:relative/path"])
def test_a_file_url_must_name_an_absolute_local_folder(url: str) -> None:
    cfg = config.load(None, {"sync.bucket": url}, environ={})
    with pytest.raises(ConfigError, match="file:///absolute/path"):
        open_store(cfg.sync)
