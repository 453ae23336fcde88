"""When schedule triggers fire: every: alignment, coalescing missed ticks, call_time."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from appliance.engine.registry import Event, Running
from appliance.engine.schedule import Schedule, ScheduleError, Scheduler
from appliance.engine.store import TriggerDef
from appliance.engine.triggers import parse_spec
from tests.engine.test_cron import JAN1, ns

S = 1_000_000_000
HOUR = 3600 * S
DAY = 86_400 * S

# -- every: alignment -------------------------------------------------------------------------


def test_every_is_epoch_aligned() -> None:
    hourly = Schedule(parse_spec("every:1h"))
    assert hourly.next_after(ns(2025, 1, 1, 10, 17, 3)) == ns(2025, 1, 1, 11)
    assert hourly.next_after(ns(2025, 1, 1, 11)) == ns(2025, 1, 1, 12)
    seven = Schedule(parse_spec("every:7s"))
    t = ns(2025, 1, 1, 10, 17, 3) + 123
    nxt = seven.next_after(t)
    assert nxt % (7 * S) == 0 and t < nxt <= t + 7 * S
    assert seven.next_after(nxt) == nxt + 7 * S
    fast = Schedule(parse_spec("every:1ms"))
    assert fast.next_after(JAN1 + 1) == JAN1 + 1_000_000


# -- due(): coalescing missed ticks -----------------------------------------------------------


def test_due_every_coalesces_missed_ticks() -> None:
    period = 10 * S
    schedule = Schedule(parse_spec("every:10s"))
    t = JAN1
    assert schedule.due(t, t + 35 * S) == (t + 3 * period, 2)
    assert schedule.due(t, t + period) == (t + period, 0)
    assert schedule.due(t + 1, t + 30 * S) == (t + 30 * S, 2)  # ticks 10, 20 skipped, 30 due
    with pytest.raises(ValueError, match="no scheduled call is due"):
        schedule.due(t, t + period - 1)


def test_due_cron_coalesces_missed_ticks() -> None:
    schedule = Schedule(parse_spec("cron:*/10 * * * * *"))
    t = JAN1
    assert schedule.due(t, t + 35 * S) == (t + 30 * S, 2)
    assert schedule.due(t - 1, t) == (t, 0)
    with pytest.raises(ValueError, match="no scheduled call is due"):
        schedule.due(t, t + 9 * S)


def test_due_cron_counts_a_long_stall_exactly_and_quickly() -> None:
    every_second = Schedule(parse_spec("cron:* * * * * *"))
    assert every_second.due(JAN1, JAN1 + 3 * DAY + 5 * S) == (JAN1 + 3 * DAY + 5 * S, 3 * 86_400 + 4)
    weekdays = Schedule(parse_spec("cron:0 9 * * 1-5"))
    # Wed 1 Jan 10:00 -> Wed 15 Jan 10:00: 2, 3, 6-10, 13, 14, 15 = 10 ticks, the last one due.
    assert weekdays.due(ns(2025, 1, 1, 10), ns(2025, 1, 15, 10)) == (ns(2025, 1, 15, 9), 9)


@pytest.mark.parametrize(
    "expr",
    [
        "*/20 */7 * * * *",
        "5,35 */13 8-9 * * MON-FRI",
        "0 0 1,15 * 3",
        "*/17 3-4 * * *",
        "0 0 0 * * SUN",
        "0 0 L * *",
    ],
)
def test_due_matches_counting_tick_by_tick(expr: str) -> None:
    schedule = Schedule(parse_spec(f"cron:{expr}"))
    for start, span in [
        (JAN1 + 1234 * S, 7200 * S),
        (JAN1 - 5 * S, 9 * DAY + 17 * S),
        (JAN1 + 7 * HOUR, DAY),
    ]:
        ticks, t = [], start
        while (t := schedule.next_after(t)) <= start + span:
            ticks.append(t)
        if ticks:
            assert schedule.due(start, start + span) == (ticks[-1], len(ticks) - 1)
        else:
            with pytest.raises(ValueError):
                schedule.due(start, start + span)


# -- call_time --------------------------------------------------------------------------------


def test_call_time_is_naive_utc_whole_seconds() -> None:
    value = Schedule.call_time(ns(2025, 3, 4, 5, 6, 7) + 999_999_999)
    assert value == datetime(2025, 3, 4, 5, 6, 7)
    assert value.tzinfo is None and value.microsecond == 0
    assert Schedule(parse_spec("every:1h")).call_time(0) == datetime(1970, 1, 1)


def test_call_time_ignores_the_local_timezone(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert Schedule.call_time(ns(2025, 1, 1, 12)) == datetime(2025, 1, 1, 12)
    finally:
        monkeypatch.undo()
        time.tzset()


# -- the scheduler, stepped by hand -------------------------------------------------------------


def _run(name: str, spec: str) -> Running:
    return Running(TriggerDef(name, "db", "p.py", spec), parse_spec(spec))


def test_scheduler_fires_due_triggers_and_coalesces_a_stall() -> None:
    now = [JAN1 + S // 2]
    fired: list[tuple[str, Event]] = []
    scheduler = Scheduler(
        lambda run, e: fired.append((run.trigger.name, e)), lambda run: True, lambda: now[0]
    )
    scheduler.plan(_run("t", "every:10s"), now[0])
    assert scheduler.step() == 1.0  # the next fire is 9.5 s away: wait at most a second
    assert fired == []
    now[0] = JAN1 + 35 * S  # stalled past three fire times
    scheduler.step()
    assert fired == [("t", Event("schedule", JAN1 + 30 * S, 2))]
    now[0] = JAN1 + 40 * S
    scheduler.step()
    assert fired[-1] == ("t", Event("schedule", JAN1 + 40 * S, 0))


def test_scheduler_step_reports_a_broken_trigger_and_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [JAN1]
    fired: list[str] = []
    scheduler = Scheduler(lambda run, e: fired.append(run.trigger.name), lambda run: True, lambda: now[0])
    real = Schedule.next_after
    monkeypatch.setattr(Schedule, "next_after", lambda self, t: 1 // 0 if self.spec.cron else real(self, t))
    scheduler.plan(_run("broken", "cron:* * * * * *"), now[0])
    scheduler.plan(_run("ok", "every:1s"), now[0])
    with pytest.raises(ScheduleError, match="'broken' in database 'db': ZeroDivisionError"):
        scheduler.step()
    now[0] += S
    with pytest.raises(ScheduleError):
        scheduler.step()
    assert fired == ["ok"]
    monkeypatch.undo()
    scheduler.step()  # placed now; fires from the next second on
    now[0] += S
    scheduler.step()
    assert sorted(fired) == ["broken", "ok", "ok"]


def test_scheduler_drops_triggers_that_are_no_longer_current() -> None:
    now = [JAN1]
    fired: list[str] = []
    current = {"t": True}
    scheduler = Scheduler(
        lambda run, e: fired.append(run.trigger.name), lambda run: current[run.trigger.name], lambda: now[0]
    )
    scheduler.plan(_run("t", "every:1s"), now[0])
    scheduler.step()
    current["t"] = False  # disabled meanwhile
    now[0] += 5 * S
    assert scheduler.step() == 1.0
    assert fired == []
