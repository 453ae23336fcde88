"""The in-memory buffer's admission against its cap."""

from __future__ import annotations

import threading

import pytest

from appliance.model import WalSeq
from appliance.storage.buffer import Buffer
from appliance.storage.wal import TableRows, WalEntry
from tests.storage.rows import batch


def test_buffer_admits_writes_only_below_twice_its_cap() -> None:
    from appliance.errors import WalError

    buf = Buffer(max_bytes=100)
    buf.admit(0.01)  # empty: at once
    big = WalEntry(1, "db", [TableRows(2, "cpu", batch(["a"] * 20, list(range(20)), [1.0] * 20))])
    buf.on_commit([(WalSeq(1), big)])
    assert buf.nbytes >= 200
    with pytest.raises(WalError, match="buffer is full"):
        buf.admit(0.05)
    threading.Timer(0.05, buf.release, args=(1,)).start()
    buf.admit(5.0)  # released by the persister meanwhile
    assert buf.nbytes == 0
