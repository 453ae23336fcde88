"""Fixtures over real LMDB in tmp_path: the Wal on the started Store (tests/conftest.py `store`)."""

from __future__ import annotations

import pytest

from appliance.storage.store import Store
from appliance.storage.wal import Wal


@pytest.fixture
def wal(store: Store) -> Wal:
    return Wal(store)
