"""The rows `process_writes` receives: from WAL batches (fanout) and from a dry run's parsed lines."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from appliance.engine.dryrun import _rows as dry_run_rows
from appliance.engine.fanout import Fanout, table_batches
from appliance.engine.registry import Event, Running, metric_labels
from appliance.engine.store import TriggerDef
from appliance.engine.triggers import parse_spec
from appliance.lineprotocol.parser import parse
from appliance.metrics import PLUGIN_ERRORS
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


def test_a_failing_call_path_is_counted_and_the_trigger_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A bug outside the plugin (in the call path) must not end a synchronous trigger's worker."""
    trigger = TriggerDef("t", "db", "p.py", "table:cpu")
    run = Running(trigger, parse_spec(trigger.spec))
    seen: list[str] = []
    done = threading.Event()

    def call(run: Running, event: Event) -> None:
        seen.append(event.payload)
        if event.payload == "first":
            raise RuntimeError("bug in the call path")
        done.set()

    fanout = Fanout(10, ThreadPoolExecutor(1), call, lambda: [run])
    before = PLUGIN_ERRORS.value(**metric_labels(trigger))
    with caplog.at_level(logging.ERROR, logger="appliance.engine"):
        fanout.start_worker(run)
        fanout.submit(run, Event("wal", "first"))
        fanout.submit(run, Event("wal", "second"))
        assert done.wait(10), "the worker died with the first event"
    run.halt()
    assert seen == ["first", "second"]
    assert PLUGIN_ERRORS.value(**metric_labels(trigger)) - before == 1
    assert any("bug in the call path" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
