"""Thread helpers: BackgroundLoop, the one shape of every background thread, and DaemonPool.

Each loop waits for its interval, a `wake()` or `stop()`, then runs one step. A step that raises
does not end the loop: the loop keeps the error as `last_error`, counts it in
`appliance_background_loop_errors_total`, logs it at most once per `log_every` seconds (the
first time with its traceback), and waits with exponential backoff before the next try. A loop
whose thread has died, or whose last step failed, reports itself in `health()` as failed or
degraded, so `/health` and `/metrics` never say "ok" about a loop that is not doing its job.

DaemonPool runs plugin code and uploads on daemon threads: concurrent.futures' pool joins its
(non-daemon) threads at interpreter exit, so one looping plugin would keep a stopped server alive.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from .backoff import backoff_delay
from .errors import ApplianceError
from .metrics import REGISTRY

LOOP_ERRORS = REGISTRY.counter(
    "appliance_background_loop_errors_total", "Failed steps of background loops, by loop.", ["loop"]
)

#: A step returns how long to wait before the next one (seconds), or None for the loop's interval.
Step = Callable[[], float | None]


class BackgroundLoop:
    """A named daemon thread running `step` on every tick or wake until stopped; failures back off."""

    def __init__(
        self,
        name: str,
        step: Step,
        interval: float,
        log: logging.Logger,
        *,
        backoff_min: float = 1.0,
        backoff_max: float = 60.0,
        log_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.interval, self.log_every = name, interval, log_every
        self.backoff_min, self.backoff_max = backoff_min, max(backoff_min, backoff_max)
        self._step, self._log, self._clock = step, log, clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.last_error: str | None = None
        self.failures = 0  # consecutive failed steps
        self.steps = 0  # steps run, failed or not
        self._logged_at: float | None = None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run the next step now instead of at the end of the current wait."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end after its current step and wait up to `timeout` for it."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        """The thread runs (or has not been started yet)."""
        return self._thread.is_alive() or self._thread.ident is None

    def health(self) -> dict[str, Any]:
        """failed when the thread died, degraded while steps fail, else ok; with the last error."""
        if not self.alive and not self.stopping:
            return {"status": "failed", "error": self.last_error or f"the {self.name} thread has stopped"}
        if self.last_error is not None:
            return {"status": "degraded", "error": self.last_error, "failures": self.failures}
        return {"status": "ok"}

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                wait = self._run_step()
                self._wake.wait(wait)
                self._wake.clear()
        except BaseException as e:  # SystemExit or KeyboardInterrupt from a step ends the loop: say so
            self.last_error = f"{type(e).__name__}: {e}"
            self._log.critical("%s loop died: %s", self.name, self.last_error, exc_info=True)

    def _run_step(self) -> float:
        self.steps += 1
        try:
            wait = self._step()
        except Exception as e:
            return self._failed(e)
        if self.failures:
            self._log.info("%s recovered after %d failed steps", self.name, self.failures)
        self.failures, self.last_error, self._logged_at = 0, None, None
        return self.interval if wait is None else max(0.0, wait)

    def _failed(self, e: Exception) -> float:
        self.failures += 1
        self.last_error = str(e) or type(e).__name__
        LOOP_ERRORS.inc(loop=self.name)
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= self.log_every:
            first = self._logged_at is None
            self._logged_at = now
            self._log.error(
                "%s step failed (%d in a row), retrying with backoff: %s",
                self.name,
                self.failures,
                self.last_error,
                # An ApplianceError (a full disk, say) is a state its message explains: no traceback.
                exc_info=first and not isinstance(e, ApplianceError),
            )
        return backoff_delay(self.failures - 1, self.backoff_min, self.backoff_max)


class DaemonPool(Executor):
    """`submit(fn, *args) -> Future` on a fixed number of daemon threads."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()
        self._workers = workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        if self._closed:
            future.set_exception(RuntimeError("the processing engine is stopping"))
            return future
        self._queue.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False) -> None:
        """Stop taking work; idle threads end, busy ones end with their call (or with the process)."""
        self._closed = True
        for _ in range(self._workers):
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: never started
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - reported through the future
                future.set_exception(e)
