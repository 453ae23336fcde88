"""The watchdog says, once, when a plugin call runs past engine.call_timeout or a trigger drops batches."""

from __future__ import annotations

import time
from typing import cast

from appliance.engine.registry import Running
from appliance.engine.store import EngineLog, TriggerDef
from appliance.engine.triggers import parse_spec
from appliance.engine.watchdog import Watchdog


class _Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str, str]] = []

    def add(self, database: str, trigger: str, level: str, text: str) -> None:
        self.lines.append((database, trigger, level, text))


def _watchdog(runs: list[Running]) -> tuple[Watchdog, _Lines]:
    lines = _Lines()
    return Watchdog(0.5, 7, cast(EngineLog, lines), lambda: runs), lines


def test_an_overdue_call_is_reported_once_and_a_finished_one_never() -> None:
    watchdog, lines = _watchdog([])
    slow = TriggerDef("slow", "db", "p.py", "table:cpu")
    quick = TriggerDef("quick", "db", "p.py", "table:cpu")
    watchdog.watch(slow, time.monotonic() - 60)
    watchdog.done(watchdog.watch(quick, time.monotonic() - 60))
    watchdog.check()
    watchdog.check()
    assert lines.lines == [("db", "slow", "WARN", "the call is still running after engine.call_timeout")]


def test_dropped_batches_are_reported_as_they_grow() -> None:
    run = Running(TriggerDef("behind", "db", "p.py", "all_tables"), parse_spec("all_tables"))
    watchdog, lines = _watchdog([run])
    watchdog.check()
    assert lines.lines == []
    run.dropped = 3
    watchdog.check()
    watchdog.check()
    run.dropped = 5
    watchdog.check()
    assert [text for *_, text in lines.lines] == [
        "trigger is behind: dropped 3 of its oldest queued batches (3 so far; engine.queue_size=7)",
        "trigger is behind: dropped 2 of its oldest queued batches (5 so far; engine.queue_size=7)",
    ]
