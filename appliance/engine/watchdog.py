"""The engine's watchdog: plugin calls running past engine.call_timeout, and triggers dropping batches.

A plugin call cannot be killed (it is Python code on a thread), so the watchdog only says so,
once per call, in the trigger's log; a trigger whose queue overflowed gets one line per check
with how many batches it dropped. It runs on a BackgroundLoop about once a second.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..threads import BackgroundLoop
from .registry import Running
from .store import EngineLog, TriggerDef

log = logging.getLogger("appliance.engine")

CHECK_INTERVAL_S = 1.0


class Watchdog:
    """Tracks plugin calls in flight and reports overdue calls and dropped batches to the trigger logs."""

    def __init__(
        self, timeout_s: float, queue_size: int, logs: EngineLog, runs: Callable[[], list[Running]]
    ) -> None:
        self.timeout_s, self.queue_size, self._logs, self._runs = timeout_s, queue_size, logs, runs
        self._active: dict[int, tuple[float, TriggerDef, bool]] = {}  # call id -> (started, trigger, warned)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.loop = BackgroundLoop(
            "engine-watchdog",
            self.check,
            CHECK_INTERVAL_S,
            log,
            backoff_min=CHECK_INTERVAL_S,
            backoff_max=CHECK_INTERVAL_S,
        )

    def watch(self, trigger: TriggerDef, started: float) -> int:
        """Note a call of `trigger` begun at monotonic `started`; returns its id for `done`."""
        call_id = next(self._ids)
        with self._lock:
            self._active[call_id] = (started, trigger, False)
        return call_id

    def done(self, call_id: int) -> None:
        """The call has returned (or raised)."""
        with self._lock:
            self._active.pop(call_id, None)

    def health(self) -> dict[str, Any]:
        """The watchdog loop's health."""
        return self.loop.health()

    def check(self) -> None:
        """One round: report dropped batches, then overdue calls."""
        self._report_drops()
        self._warn_overdue()

    def _warn_overdue(self) -> None:
        """Log, once per call, every plugin call running past engine.call_timeout."""
        now = time.monotonic()
        with self._lock:
            overdue = [
                (k, t)
                for k, (s, t, warned) in self._active.items()
                if not warned and now - s > self.timeout_s
            ]
            for k, t in overdue:
                self._active[k] = (self._active[k][0], t, True)
        for _, t in overdue:
            self._logs.add(t.database, t.name, "WARN", "the call is still running after engine.call_timeout")

    def _report_drops(self) -> None:
        for run in self._runs():
            if run.dropped > run.dropped_logged:
                self._logs.add(
                    run.trigger.database,
                    run.trigger.name,
                    "WARN",
                    f"trigger is behind: dropped {run.dropped - run.dropped_logged} of its oldest queued batches"
                    f" ({run.dropped} so far; engine.queue_size={self.queue_size})",
                )
                run.dropped_logged = run.dropped
