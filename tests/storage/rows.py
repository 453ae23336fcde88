"""Record batches of one shape (host tag, time, usage) for the storage tests."""

from __future__ import annotations

import pyarrow as pa

from appliance.storage.wal import TableRows, WalEntry


def batch(hosts: list[str | None], times: list[int], values: list[float | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(hosts, pa.string()),
            pa.array(times, pa.int64()).cast(pa.timestamp("ns")),
            pa.array(values, pa.float64()),
        ],
        names=["host", "time", "usage"],
    )


def entry(host: str, time: int, value: float = 1.0) -> WalEntry:
    """One row of `cpu` (table 2) in database `db` (1)."""
    return WalEntry(1, "db", [TableRows(2, "cpu", batch([host], [time], [value]))])
