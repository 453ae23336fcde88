"""A small pool of daemon threads for plugin code: a plugin that never returns cannot hold up exit.

concurrent.futures' pool joins its (non-daemon) threads when the interpreter exits, so one
looping plugin would keep a stopped server alive forever.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


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
