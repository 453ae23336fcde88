"""WAL batches (and schedule ticks) to triggers: each trigger's bounded queue, worker or async pool.

WAL batches reach a trigger through its own bounded queue right after each group commit
(the WAL writer only enqueues; conversion and plugin code run on the trigger's thread). A
synchronous trigger handles one event at a time in order; an asynchronous one runs events
concurrently on a shared pool. When a synchronous trigger falls behind, the oldest queued
batches are dropped, counted and logged: writes are never held up by a plugin.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..metrics import PLUGIN_DROPPED, PLUGIN_ERRORS
from ..model import WalSeq
from ..query.rows import table_rows
from ..storage.wal import WalEntry
from .registry import Event, Running, metric_labels

log = logging.getLogger("appliance.engine")

#: Runs one event of one trigger (the plugin call, with its retries and error behaviour).
Call = Callable[[Running, Event], Any]


class Fanout:
    """Queues events to triggers; a synchronous trigger's worker takes them in order, the pool runs async ones."""

    def __init__(
        self, queue_size: int, pool: Executor, call: Call, runs: Callable[[], list[Running]]
    ) -> None:
        self.queue_size, self._pool, self._call, self._runs = queue_size, pool, call, runs

    def on_commit(self, entries: list[tuple[WalSeq, WalEntry]]) -> None:
        """Queue each database's entries to its WAL triggers (no plugin code here)."""
        try:
            for run in self._runs():
                if run.spec.kind != "wal":
                    continue
                mine = [e for _, e in entries if e.db == run.trigger.database and e.origin != run.trigger.key]
                if mine:
                    self.submit(run, Event("wal", mine))
        except Exception:  # on the WAL writer thread: a bug here must not stop the server
            log.exception("could not hand a WAL batch to the triggers")

    def start_worker(self, run: Running) -> None:
        """Give a synchronous trigger its worker thread, which runs its queued events in order."""
        run.thread = threading.Thread(
            target=self._work, args=(run,), name=f"trigger-{run.trigger.name}", daemon=True
        )
        run.thread.start()

    def submit(self, run: Running, event: Event) -> None:
        """Queue `event`: at most `queue_size` waiting per trigger, one pending schedule tick."""
        if run.trigger.run_async:
            self._submit_async(run, event)
            return
        with run.cond:
            if event.kind == "schedule" and any(e.kind == "schedule" for e in run.queue):
                pending = next(e for e in run.queue if e.kind == "schedule")
                pending.payload, pending.skipped = event.payload, pending.skipped + 1 + event.skipped
                return
            if len(run.queue) >= self.queue_size:
                run.queue.popleft()
                run.dropped += 1  # logged by the watchdog thread, not on the WAL writer thread
                PLUGIN_DROPPED.inc(1, **metric_labels(run.trigger))
            run.queue.append(event)
            run.cond.notify()

    def _submit_async(self, run: Running, event: Event) -> None:
        with run.cond:
            if run.in_flight >= self.queue_size:  # bounded backlog for async triggers too
                run.dropped += 1
                PLUGIN_DROPPED.inc(1, **metric_labels(run.trigger))
                return
            run.in_flight += 1
        self._pool.submit(self._call_async, run, event)

    def _call_async(self, run: Running, event: Event) -> None:
        try:
            self._run_guarded(run, event)
        finally:
            with run.cond:
                run.in_flight -= 1

    def _work(self, run: Running) -> None:
        while True:
            with run.cond:
                while not run.queue and not run.stopped:
                    run.cond.wait()
                if run.stopped:
                    return
                event = run.queue.popleft()
            self._run_guarded(run, event)

    def _run_guarded(self, run: Running, event: Event) -> None:
        """One event; a failure outside the plugin (the call path itself) is counted and logged,
        and the trigger's worker goes on with the next event instead of dying silently."""
        try:
            self._call(run, event)
        except Exception:
            PLUGIN_ERRORS.inc(1, **metric_labels(run.trigger))
            log.exception(
                "trigger %s: could not run a %s event; the trigger goes on", run.trigger.name, event.kind
            )


def table_batches(entries: list[WalEntry], only_table: str | None) -> list[dict[str, Any]]:
    """WAL entries as `process_writes` receives them: per table, rows as dicts, absent columns omitted."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        for rows in entry.tables:
            if only_table is not None and rows.table != only_table:
                continue
            tables.setdefault(rows.table, []).extend(table_rows(rows.batch, omit_nulls=True))
    return [{"table_name": name, "rows": rows} for name, rows in tables.items()]
