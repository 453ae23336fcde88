"""Fixtures over real LMDB in tmp_path: a started Store and the Wal on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.storage.store import Store
from appliance.storage.wal import Wal


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "lmdb", 1 << 30)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def wal(store: Store) -> Wal:
    return Wal(store)
