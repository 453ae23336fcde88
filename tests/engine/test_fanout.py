"""The rows `process_writes` receives: from WAL batches (fanout) and from a dry run's parsed lines."""

from __future__ import annotations

import pyarrow as pa

from appliance.engine.dryrun import _rows as dry_run_rows
from appliance.engine.fanout import table_batches
from appliance.lineprotocol.parser import parse
from appliance.model import ColumnType, Precision
from appliance.storage.wal import TableRows, WalEntry


def _batch(**columns: pa.Array) -> pa.RecordBatch:
    return pa.record_batch(columns)


def test_wal_batches_become_rows_per_table_with_absent_columns_left_out() -> None:
    tag = ColumnType.TAG.arrow_type
    cpu = _batch(
        host=pa.array(["a", None]).cast(tag),
        v=pa.array([None, 2.5]),
        n=pa.array([2**64 - 1, None], pa.uint64()),
        time=pa.array([1, 2], pa.timestamp("ns")),
    )
    mem = _batch(ok=pa.array([True]), time=pa.array([3], pa.timestamp("ns")))
    entries = [
        WalEntry(1, "db", [TableRows(1, "cpu", cpu), TableRows(2, "mem", mem)]),
        WalEntry(1, "db", [TableRows(1, "cpu", cpu.slice(1))]),
    ]
    expected_cpu = [{"host": "a", "n": 2**64 - 1, "time": 1}, {"v": 2.5, "time": 2}]
    assert table_batches(entries, None) == [
        {"table_name": "cpu", "rows": [*expected_cpu, expected_cpu[1]]},
        {"table_name": "mem", "rows": [{"ok": True, "time": 3}]},
    ]
    assert table_batches(entries, "mem") == [{"table_name": "mem", "rows": [{"ok": True, "time": 3}]}]
    row = table_batches(entries, "cpu")[0]["rows"][0]
    assert type(row["host"]) is str and type(row["time"]) is int


def test_dry_run_rows_are_tags_fields_then_time_with_absent_columns_left_out() -> None:
    parsed = parse(b'm,host=a v=1.5,s="x" 7\nm n=3i,u=4u,b=t 8', Precision.NS, 0)
    (table,) = parsed.tables
    rows = dry_run_rows(table)
    assert rows == [
        {"host": "a", "v": 1.5, "s": "x", "time": 7},
        {"n": 3, "u": 4, "b": True, "time": 8},
    ]
    assert list(rows[0]) == ["host", "v", "s", "time"]
