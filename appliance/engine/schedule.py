"""When schedule triggers fire (`Schedule`, pure) and the scheduler thread that fires them.

`Schedule` says when an `every:` or `cron:` trigger fires (UTC), and coalesces missed ticks
(the cron arithmetic itself is in `cron`). `Scheduler` keeps each schedule trigger's next fire
time in a heap and, on a BackgroundLoop, queues a tick to every trigger that is due. A trigger
whose fire time cannot be computed keeps its place and is retried while the loop reports the
error: it never stops the other schedule triggers, and `/health` shows it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..lineprotocol.syntax import NS_PER_SECOND
from ..threads import BackgroundLoop
from .cron import compile_cron, count_ticks, latest_tick, next_tick
from .registry import Event, Running
from .triggers import TriggerSpec

log = logging.getLogger("appliance.engine")

#: What `Schedule.next_after` returns once a schedule has no further fire time (a cron year list
#: that has run out): the largest int64, so it sorts after every real instant in a heap.
NEVER: int = 2**63 - 1


class Schedule:
    """When an `every:` or `cron:` trigger fires, in UTC; cheap to build from a TriggerSpec."""

    def __init__(self, spec: TriggerSpec) -> None:
        if spec.kind != "schedule":
            raise ValueError(f"trigger {spec.text!r} is not a schedule trigger")
        self.spec = spec
        self._period_ns = spec.every_ns
        self._cron = compile_cron(spec.cron) if spec.cron is not None else None

    def next_after(self, t_ns: int) -> int:
        """The next fire time strictly after `t_ns` (ns since the epoch), or NEVER if none is left."""
        if self._period_ns is not None:
            # Epoch-aligned, as InfluxDB 3: every:1h fires at the top of each UTC hour.
            return (t_ns // self._period_ns + 1) * self._period_ns
        assert self._cron is not None
        # Cron ticks are whole seconds: strictly after t is strictly after floor(t).
        nxt = next_tick(self._cron, t_ns // NS_PER_SECOND)
        return NEVER if nxt is None else nxt * NS_PER_SECOND

    def due(self, last_fire_ns: int, now_ns: int) -> tuple[int, int]:
        """(latest tick in (last_fire, now], ticks skipped before it); ValueError if none is due."""
        if self._period_ns is not None:
            period = self._period_ns
            latest = now_ns // period * period
            if latest <= last_fire_ns:
                raise ValueError("no scheduled call is due yet")
            return latest, latest // period - last_fire_ns // period - 1
        assert self._cron is not None
        now_s = now_ns // NS_PER_SECOND
        latest_s = latest_tick(self._cron, now_s + 1)
        if latest_s is None or latest_s * NS_PER_SECOND <= last_fire_ns:
            raise ValueError("no scheduled call is due yet")
        return latest_s * NS_PER_SECOND, count_ticks(self._cron, last_fire_ns // NS_PER_SECOND, latest_s) - 1

    @staticmethod
    def call_time(fire_ns: int) -> datetime:
        """The `call_time` a plugin receives: the scheduled instant as a naive UTC datetime, whole seconds."""
        return datetime.fromtimestamp(fire_ns // NS_PER_SECOND, tz=UTC).replace(tzinfo=None)


#: The longest the scheduler sleeps: it rechecks the wall clock at least this often (it may jump).
MAX_WAIT_S = 1.0


class ScheduleError(Exception):
    """Fire times of one or more schedule triggers could not be computed (they are retried)."""


class Scheduler:
    """The scheduler thread: queues a tick to each schedule trigger at its fire times."""

    def __init__(
        self,
        submit: Callable[[Running, Event], None],
        is_current: Callable[[Running], bool],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._submit, self._is_current, self._clock = submit, is_current, clock
        self._heap: list[tuple[int, int, Running]] = []  # (fire ns, tie-breaker, run): loop thread only
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._pending: list[tuple[Running, int]] = []  # (run, plan its first fire after this ns)
        # A failing step retries after about a second (backoff capped at MAX_WAIT_S), so one broken
        # trigger delays the others' ticks by at most that while it is reported.
        self.loop = BackgroundLoop(
            "scheduler", self.step, MAX_WAIT_S, log, backoff_min=MAX_WAIT_S, backoff_max=MAX_WAIT_S
        )

    def plan(self, run: Running, after_ns: int) -> None:
        """Schedule `run`'s first tick after `after_ns`; the fire time is computed on the loop's thread."""
        with self._lock:
            self._pending.append((run, after_ns))
        self.loop.wake()

    def health(self) -> dict[str, Any]:
        """The scheduler loop's health: degraded with the error while fire times fail."""
        return self.loop.health()

    def step(self) -> float:
        """Fire every due trigger, place newly planned ones; returns seconds until the next fire time."""
        now = self._clock()
        problems = [p for fire, run in self._take_due(now) if (p := self._fire(run, fire, now))]
        problems += [p for run, after in self._take_pending() if (p := self._place(run, after))]
        if problems:
            raise ScheduleError("; ".join(problems))
        if not self._heap:
            return MAX_WAIT_S
        return max(0.0, min((self._heap[0][0] - self._clock()) / NS_PER_SECOND, MAX_WAIT_S))

    def _take_due(self, now: int) -> list[tuple[int, Running]]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            fire, _, run = heapq.heappop(self._heap)
            due.append((fire, run))
        return due

    def _take_pending(self) -> list[tuple[Running, int]]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _fire(self, run: Running, fire: int, now: int) -> str | None:
        if not self._is_current(run):
            return None  # disabled, deleted or restarted since: its own schedule chain ends here
        try:
            last, skipped = Schedule(run.spec).due(fire - 1, now)
        except Exception as e:
            self._push(run, fire)  # keeps its place: retried on the next step
            return _problem(run, e)
        with self._lock:
            self._pending.append((run, max(now, last)))
        try:
            self._submit(run, Event("schedule", last, skipped))
        except Exception as e:
            return _problem(run, e)
        return None

    def _place(self, run: Running, after: int) -> str | None:
        if not self._is_current(run):
            return None
        try:
            fire = Schedule(run.spec).next_after(after)
        except Exception as e:
            with self._lock:
                self._pending.append((run, after))  # retried on the next step
            return _problem(run, e)
        self._push(run, fire)
        return None

    def _push(self, run: Running, fire: int) -> None:
        heapq.heappush(self._heap, (fire, next(self._seq), run))


def _problem(run: Running, e: Exception) -> str:
    return f"trigger {run.trigger.name!r} in database {run.trigger.database!r}: {type(e).__name__}: {e}"
