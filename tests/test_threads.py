"""BackgroundLoop: steps on wake, survives failing steps, backs off, logs once, reports health."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from appliance.threads import LOOP_ERRORS, BackgroundLoop

log = logging.getLogger("appliance.test")


class Steps:
    """A step function driven by the test: each call takes the next outcome and signals it ran."""

    def __init__(self, outcomes: list[BaseException | None], gate: threading.Event | None = None) -> None:
        self.outcomes = outcomes
        self.calls = 0
        self.ran = threading.Semaphore(0)
        self.gate = gate  # once the outcomes are used up, a step waits here before it succeeds

    def __call__(self) -> float | None:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is None and self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        self.ran.release()
        if outcome is not None:
            raise outcome
        return None

    def wait(self, n: int = 1) -> None:
        for _ in range(n):
            assert self.ran.acquire(timeout=10), "the loop did not run a step"


def _loop(steps: Steps, **kw: Any) -> BackgroundLoop:
    loop = BackgroundLoop(
        "test-loop", steps, interval=3600, log=log, backoff_min=0.001, backoff_max=0.01, **kw
    )
    loop.start()
    return loop


def test_a_step_runs_at_start_and_on_every_wake() -> None:
    steps = Steps([])
    loop = _loop(steps)
    steps.wait()
    loop.wake()
    steps.wait()
    loop.stop(timeout=10)
    assert steps.calls == 2
    assert not loop.alive or loop.stopping
    assert loop.health() == {"status": "ok"}


def test_a_failing_step_degrades_health_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    before = LOOP_ERRORS.value(loop="test-loop")
    gate = threading.Event()
    steps = Steps([OSError("disk on fire"), OSError("disk on fire")], gate)
    with caplog.at_level(logging.ERROR, logger="appliance.test"):
        loop = _loop(steps)
        steps.wait(2)  # two failures back to back (backoff is capped at 10 ms)
        failing = loop.health()  # the third step is held at the gate
        gate.set()
        steps.wait()  # the third step succeeds
        loop.stop(timeout=10)
    assert failing["status"] == "degraded" and failing["error"] == "disk on fire"
    assert loop.health() == {"status": "ok"} and loop.last_error is None
    assert LOOP_ERRORS.value(loop="test-loop") - before == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "a failure repeating within log_every is logged once"
    assert errors[0].exc_info is not None, "the first failure carries its traceback"


def test_a_loop_whose_thread_died_reports_failed() -> None:
    steps = Steps([SystemExit(3)])
    loop = _loop(steps)
    steps.wait()
    loop._thread.join(10)
    health = loop.health()
    assert health["status"] == "failed"
    assert "SystemExit" in health["error"]


def test_stop_ends_the_loop_without_waiting_for_the_interval() -> None:
    steps = Steps([])
    loop = _loop(steps)
    steps.wait()
    loop.stop(timeout=10)
    assert not loop._thread.is_alive()
