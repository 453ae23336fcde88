"""DiskBudget's check loop: a failing check backs off and logs once per interval, and /health sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from appliance.component import Listeners
from appliance.storage.budget import DiskBudget
from tests.server import wait_for


class _Manifest:
    def __init__(self, total: Callable[[], int]) -> None:
        self.total_bytes = total

    def files(self) -> list[Any]:
        return []


class _Persister:
    def __init__(self) -> None:
        self.on_disk_full: Listeners[[int]] = Listeners()


def _budget(total: Callable[[], int], max_bytes: int = 100) -> DiskBudget:
    return DiskBudget(max_bytes, _Manifest(total), _Persister(), None, check_seconds=0.01)  # type: ignore[arg-type]


def test_a_check_that_keeps_failing_logs_once_and_is_degraded_until_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = True

    def total() -> int:
        if broken:
            raise OSError("stat failed")
        return 0

    budget = _budget(total)
    with caplog.at_level("ERROR", logger="appliance.budget"):
        budget.start()
        try:
            wait_for(lambda: budget.health().get("failures", 0) >= 5, what="five failed checks")
            health = budget.health()
            assert health["status"] == "degraded" and health["error"] == "stat failed"
            failed = [r for r in caplog.records if "disk-budget step failed" in r.getMessage()]
            assert len(failed) == 1 and failed[0].exc_info is not None  # once, with its traceback
            broken = False
            budget.wake()
            wait_for(lambda: budget.health()["status"] == "ok", what="the check to recover")
        finally:
            budget.stop()
    assert budget.health() == {"status": "ok", "error": None}


def test_refusing_writes_is_degraded_with_the_507_message() -> None:
    budget = _budget(lambda: 500)
    budget.check()
    health = budget.health()
    assert health["status"] == "degraded" and health["error"] == budget.refusing
    assert "storage.max_disk_bytes is 100" in health["error"]


def test_a_dead_check_thread_is_failed() -> None:
    def total() -> int:
        raise SystemExit("gone")

    budget = _budget(total)
    budget.start()
    wait_for(lambda: budget.health()["status"] == "failed", what="the loop to report its death")
    assert "SystemExit" in budget.health()["error"]
