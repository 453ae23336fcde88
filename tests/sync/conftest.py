"""Fixtures of the sync tests: a SyncQueue on a real LMDB Store in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.storage.store import Store
from appliance.sync.queue import SyncQueue


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SyncQueue]:
    store = Store(tmp_path / "lmdb", 1 << 26)
    store.start()
    yield SyncQueue(store)
    store.stop()
