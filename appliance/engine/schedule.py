"""When schedule triggers fire (`Schedule`, pure) and the scheduler thread that fires them.

`Schedule` says when an `every:` or `cron:` trigger fires (UTC), and coalesces missed ticks.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .cron import compile_cron, count_ticks, latest_tick, next_tick
from .triggers import TriggerSpec

#: What `Schedule.next_after` returns once a schedule has no further fire time (a cron year list
#: that has run out): the largest int64, so it sorts after every real instant in a heap.
NEVER: int = 2**63 - 1
_NS_PER_S = 1_000_000_000


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
        nxt = next_tick(self._cron, t_ns // _NS_PER_S)
        return NEVER if nxt is None else nxt * _NS_PER_S

    def due(self, last_fire_ns: int, now_ns: int) -> tuple[int, int]:
        """(latest tick in (last_fire, now], ticks skipped before it); ValueError if none is due."""
        if self._period_ns is not None:
            period = self._period_ns
            latest = now_ns // period * period
            if latest <= last_fire_ns:
                raise ValueError("no scheduled call is due yet")
            return latest, latest // period - last_fire_ns // period - 1
        assert self._cron is not None
        now_s = now_ns // _NS_PER_S
        latest_s = latest_tick(self._cron, now_s + 1)
        if latest_s is None or latest_s * _NS_PER_S <= last_fire_ns:
            raise ValueError("no scheduled call is due yet")
        return latest_s * _NS_PER_S, count_ticks(self._cron, last_fire_ns // _NS_PER_S, latest_s) - 1

    @staticmethod
    def call_time(fire_ns: int) -> datetime:
        """The `call_time` a plugin receives: the scheduled instant as a naive UTC datetime, whole seconds."""
        return datetime.fromtimestamp(fire_ns // _NS_PER_S, tz=UTC).replace(tzinfo=None)
