"""The shape every long-lived part of the process has, and the one way a stage tells the next.

`app.py` holds the components in flow order: it asks each for its health, lets each register
its own metrics and stops them in reverse; it starts each once what it needs exists. A stage that must
tell a later one (the WAL committed, the manifest changed, the buffer is full) exposes a
`Listeners` and never imports the later stage: the composition root connects them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, ParamSpec, Protocol

from .metrics import Registry

P = ParamSpec("P")

#: What `health()` returns: {"status": "ok" | "degraded" | "failed", "error": ..., more fields}.
Health = dict[str, Any]


class Component(Protocol):
    """A part of the process with a lifetime: started once, stopped once, healthy or not."""

    #: Its key in /health and its `component` label in /metrics.
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> Health: ...

    def register_metrics(self, registry: Registry) -> None:
        """Add the gauges /metrics reads from this component when scraped."""
        ...


class Listeners(Generic[P]):
    """Callbacks of one event, called in the order they were added; `notify` passes the event on."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[P, object]] = []

    def add(self, callback: Callable[P, object]) -> None:
        self._callbacks.append(callback)

    def notify(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for callback in self._callbacks:
            callback(*args, **kwargs)

    def __iter__(self) -> Iterator[Callable[P, object]]:
        """The callbacks, for an owner that handles each one's failure itself."""
        return iter(list(self._callbacks))

    def __bool__(self) -> bool:
        return bool(self._callbacks)


def worst(states: list[str]) -> str:
    """The overall state of several: failed over degraded over ok."""
    return next((s for s in ("failed", "degraded") if s in states), "ok")
