"""Trigger definitions and which of them run: create, enable, disable, delete, and the paths they serve.

The registry keeps the stored definitions (`TriggerStore`) and the running state in step under
one lock. Starting and stopping the work of a trigger (its worker thread, its schedule, its
module and cache) is the engine's: the registry calls `on_start` and `on_stop` for that.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import BadRequest, Conflict, NotFound
from ..storage.catalog import Catalog
from .loader import PluginLoader
from .store import TriggerDef, TriggerStore, trigger_key
from .triggers import TriggerSpec, check_arguments, check_trigger_name, parse_spec

ERROR_BEHAVIORS = ("log", "retry", "disable")


@dataclass
class Event:
    """One thing for a trigger to handle: a WAL batch, a schedule tick or an HTTP request."""

    kind: str
    payload: Any
    skipped: int = 0


@dataclass
class Running:
    """A started trigger: its definition, parsed spec, queue and worker."""

    trigger: TriggerDef
    spec: TriggerSpec
    queue: deque[Event] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stopped: bool = False
    dropped: int = 0
    dropped_logged: int = 0
    in_flight: int = 0
    thread: threading.Thread | None = None

    def halt(self) -> None:
        """Stop taking events: the worker ends after its current call, queued events never run."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class RunHooks(Protocol):
    """What starting and stopping a trigger means beyond the registry (workers, schedules, caches)."""

    def run_started(self, run: Running) -> None:
        """`run` was just registered: give it its worker or schedule."""

    def run_stopped(self, run: Running) -> None:
        """`run` was halted and removed: release what it held."""


class Registry:
    """The triggers: stored definitions, the running ones, and the request path each one serves."""

    def __init__(self, store: TriggerStore, catalog: Catalog, loader: PluginLoader, hooks: RunHooks) -> None:
        self.store, self.catalog, self.loader, self._hooks = store, catalog, loader, hooks
        self.lock = threading.RLock()
        self._triggers: dict[str, TriggerDef] = {t.key: t for t in store.load()}
        self._running: dict[str, Running] = {}
        self._paths: dict[str, Running] = {}  # request path -> the running trigger serving it
        self._path_owners: dict[str, str] = {}  # request path -> key of the trigger it belongs to
        self._index_paths()

    def start_all(self) -> list[tuple[TriggerDef, Exception]]:
        """Start every enabled trigger; returns those that could not start, with why."""
        failed = []
        for t in list(self._triggers.values()):
            if not t.disabled:
                try:
                    self.loader.resolve(t.plugin_filename)
                    self._start(t)
                except Exception as e:
                    failed.append((t, e))
        return failed

    def halt_all(self) -> list[Running]:
        """Halt every running trigger and forget them; returns them so the caller can wait for their workers."""
        with self.lock:
            runs = list(self._running.values())
            for run in runs:
                run.halt()
            self._running.clear()
            self._paths.clear()
        return runs

    def running(self) -> list[Running]:
        """The running triggers now (a copy: safe to iterate on any thread)."""
        return list(self._running.values())

    def is_current(self, run: Running) -> bool:
        """True while `run` is the live run of its trigger (not disabled, deleted or restarted since)."""
        return not run.stopped and self._running.get(run.trigger.key) is run

    def serving(self, path: str) -> Running | None:
        """The running request trigger at `path`, if any."""
        return self._paths.get(path)

    # -- trigger management --------------------------------------------------
    def create(self, trigger: TriggerDef) -> None:
        """Validate, persist and (unless disabled) start a trigger."""
        check_trigger_name(trigger.name)
        check_arguments(trigger.arguments)
        spec = parse_spec(trigger.spec)
        if trigger.error_behavior not in ERROR_BEHAVIORS:
            raise BadRequest(f"invalid error_behavior {trigger.error_behavior!r}: use log, retry or disable")
        if self.catalog.get(trigger.database) is None:
            raise NotFound(f"Database not found {trigger.database}")
        self.loader.fetch(trigger.plugin_filename)  # checks the filename first
        trigger = replace(trigger, spec=spec.text)
        with self.lock:
            if trigger.key in self._triggers:
                raise Conflict("attempted to create a resource that already exists")
            self._check_path_free(spec)
            self.store.put(trigger)
            self._triggers[trigger.key] = trigger
            if spec.path is not None:
                self._path_owners[spec.path] = trigger.key
            if not trigger.disabled:
                self._start(trigger)

    def set_disabled(self, database: str, name: str, disabled: bool) -> None:
        """Enable or disable a trigger; the catalog and the running state agree afterwards."""
        with self.lock:
            trigger = self._require(database, name)
            if trigger.disabled != disabled:
                trigger = replace(trigger, disabled=disabled)
                self.store.put(trigger)
                self._triggers[trigger.key] = trigger
            if disabled:
                self._stop(trigger.key)
            elif trigger.key not in self._running:
                self.loader.resolve(trigger.plugin_filename)
                self._start(trigger)

    def disable_run(self, run: Running) -> None:
        """Disable the trigger of `run`, unless it was re-created meanwhile (error_behavior=disable)."""
        with self.lock:
            if self._running.get(run.trigger.key) is run:
                self.set_disabled(run.trigger.database, run.trigger.name, True)

    def delete(self, database: str, name: str, force: bool) -> None:
        """Stop and forget a trigger; a running one only with `force`."""
        with self.lock:
            trigger = self._require(database, name)
            if not trigger.disabled and not force:
                raise BadRequest(f"Cannot delete running plugin {name}. Disable it first or use --force.")
            self._stop(trigger.key)
            self.store.delete(trigger)
            del self._triggers[trigger.key]
            self._index_paths()

    def drop_database(self, db_id: int, table_id: int | None, name: str | None = None) -> None:
        """Catalog drop listener: a deleted database takes its triggers with it."""
        if table_id is not None:
            return
        live = {d.name for d in self.catalog.databases()}
        with self.lock:
            for trigger in [t for t in self._triggers.values() if t.database not in live]:
                self._stop(trigger.key)
                self.store.delete(trigger)
                del self._triggers[trigger.key]
            self._index_paths()

    def triggers(self, database: str | None = None) -> list[TriggerDef]:
        """The definitions of one database (all when None), sorted by database and name."""
        with self.lock:
            return sorted(
                (t for t in self._triggers.values() if database in (None, t.database)),
                key=lambda t: (t.database, t.name),
            )

    def _require(self, database: str, name: str) -> TriggerDef:
        trigger = self._triggers.get(trigger_key(database, name))
        if trigger is None:
            raise NotFound(f"trigger {name!r} not found in database {database!r}")
        return trigger

    def _start(self, trigger: TriggerDef) -> None:
        """Run a trigger whose plugin file the caller has resolved (or fetched) just before."""
        spec = parse_spec(trigger.spec)
        owner = self._path_owners.get(spec.path) if spec.path is not None else None
        if owner is not None and owner != trigger.key:  # two definitions stored by an older version
            holder = self._triggers[owner]
            raise Conflict(
                f"request path {spec.path!r} is already served by trigger {holder.name!r}"
                f" in database {holder.database!r}"
            )
        run = Running(trigger, spec)
        self._running[trigger.key] = run
        if spec.path is not None:
            self._paths[spec.path] = run
        self._hooks.run_started(run)

    def _stop(self, key: str) -> None:
        run = self._running.pop(key, None)
        if run is None:
            return
        run.halt()
        if run.spec.path is not None and self._paths.get(run.spec.path) is run:
            del self._paths[run.spec.path]
        self._hooks.run_stopped(run)

    # -- request paths -------------------------------------------------------
    def _check_path_free(self, spec: TriggerSpec) -> None:
        """One request path, one trigger: a second one would silently take the path over."""
        owner = self._path_owners.get(spec.path) if spec.path is not None else None
        if owner is not None:
            other = self._triggers[owner]
            raise Conflict(
                f"request path {spec.path!r} is already served by trigger {other.name!r} in database"
                f" {other.database!r}; delete that trigger or choose another path"
            )

    def _index_paths(self) -> None:
        """Rebuild path -> trigger key: the one trigger each request path belongs to.

        Running triggers first, then enabled ones, so a path two definitions stored by an older
        version both claim stays with the one that serves it. A stored spec that no longer
        parses claims no path: it must not block every new request trigger.
        """
        owners: dict[str, str] = {}
        order = sorted(self._triggers.values(), key=lambda t: (t.key not in self._running, t.disabled))
        for t in order:
            path = _spec_path(t.spec)
            if path is not None:
                owners.setdefault(path, t.key)
        self._path_owners = owners


def metric_labels(trigger: TriggerDef) -> dict[str, str]:
    """Metric labels of a trigger: database and name apart, so `x/y`+`z` and `x`+`y/z` stay two series."""
    return {"database": trigger.database, "trigger": trigger.name}


def _spec_path(spec: str) -> str | None:
    """The request path a stored spec serves; None for other kinds and for specs that no longer parse."""
    try:
        return parse_spec(spec).path
    except Exception:
        return None
