"""Running one plugin call: its entry point and arguments, retries, error behaviour and write-back.

A call never raises to its caller: a failing plugin (SystemExit included) is logged with the
trigger's name, counted, and comes back as a `Failure`. `error_behavior=retry` retries WAL and
schedule calls with exponential backoff; `disable` halts the trigger after the error. The lines
a plugin buffered are written after it returns, marked as the trigger's own so they never
re-trigger it. A request call waits at most engine.call_timeout for its plugin.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..lineprotocol.syntax import NS_PER_SECOND
from ..metrics import PLUGIN_ERRORS, PLUGIN_RUNS, PLUGIN_SECONDS
from ..model import Precision
from ..query.service import QueryService
from ..write import WriteRequest, WriteService
from .api import PluginApi, own_copy
from .cache import PluginCache
from .fanout import table_batches
from .loader import PluginLoader
from .registry import Event, Running, metric_labels
from .responses import RequestResult, flask_response
from .schedule import Schedule
from .store import EngineLog, TriggerDef
from .watchdog import Watchdog

log = logging.getLogger("appliance.engine")

ENTRY_POINTS = {
    "wal": ("process_writes", "process_writes(influxdb3_local, table_batches, args=None)"),
    "schedule": ("process_scheduled_call", "process_scheduled_call(influxdb3_local, call_time, args=None)"),
    "request": (
        "process_request",
        "process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None)",
    ),
}


@dataclass(frozen=True)
class CallContext:
    """What a plugin call needs from the rest of the engine."""

    logs: EngineLog
    loader: PluginLoader
    cache: PluginCache
    writes: WriteService
    queries: QueryService
    watchdog: Watchdog
    max_retries: int
    #: Disables the trigger of a run (error_behavior=disable); called on a thread of its own.
    disable: Callable[[Running], None]


@dataclass
class Failure:
    """A call that raised: the message a request reply carries."""

    message: str


class _MissingEntryPoint(Exception):
    pass


class Calls:
    """Runs plugin calls for the triggers, with their retries and error behaviour."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.logs = ctx.logs

    def call(self, run: Running, event: Event) -> Any:
        """One plugin invocation with the trigger's error behaviour; returns the entry point's value."""
        attempts = 1 + (
            self.ctx.max_retries if run.trigger.error_behavior == "retry" and event.kind != "request" else 0
        )
        delay = 0.5
        for attempt in range(1, attempts + 1):
            outcome = self._invoke(run, event)
            if not isinstance(outcome, Failure):
                return outcome
            if attempt < attempts and not run.stopped:
                self._log(
                    run.trigger, "WARN", f"retrying in {delay:g}s (attempt {attempt + 1} of {attempts})"
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        if event.kind != "request" and run.trigger.error_behavior == "disable" and not run.stopped:
            run.halt()  # no further queued events run
            self._log(run.trigger, "ERROR", "disabling the trigger after the error (error_behavior=disable)")
            threading.Thread(target=self._disable_quietly, args=(run,), daemon=True).start()
        elif attempts > 1:
            self._log(run.trigger, "ERROR", f"failed after {attempts} attempts")
        return outcome

    def request(
        self, run: Running, payload: tuple[Any, ...], pool: Executor, timeout_s: float
    ) -> RequestResult:
        """Run a request trigger's plugin on `pool`, waiting at most `timeout_s`, and shape its reply."""
        future: Future[Any] = pool.submit(self.call, run, Event("request", payload))
        try:
            result = future.result(timeout=timeout_s)
        except FutureTimeout:
            if not future.cancel():  # already running: it finishes, and its writes still land
                self._log(
                    run.trigger,
                    "WARN",
                    "the request got 504 but the plugin is still running; its writes will be kept",
                )
            self._log(run.trigger, "ERROR", "request plugin exceeded engine.call_timeout")
            return RequestResult("timeout", error="the plugin did not answer within engine.call_timeout")
        if isinstance(result, Failure):
            return RequestResult("failed", error=result.message)
        try:
            return RequestResult("answered", flask_response(result))
        except ValueError as e:
            self._log(run.trigger, "ERROR", str(e))
            return RequestResult("failed", error=str(e))

    def write(self, trigger: TriggerDef, db: str, lines: str, no_sync: bool) -> None:
        """Write line protocol as `trigger`'s own (it never re-triggers it); waits for the commit."""
        report = self.ctx.writes.submit(
            WriteRequest(
                db,
                lines.encode(),
                Precision.NS,
                accept_partial=False,
                no_sync=no_sync,
                origin=trigger.key,
                protocol="plugin",
            )
        )
        if report.committed is not None:
            report.committed.result()

    def _log(self, trigger: TriggerDef, level: str, text: str) -> None:
        self.logs.add(trigger.database, trigger.name, level, text)

    def _disable_quietly(self, run: Running) -> None:
        try:
            self.ctx.disable(run)
        except Exception:
            log.exception("could not disable trigger %s", run.trigger.key)

    def _invoke(self, run: Running, event: Event) -> Any:
        trigger = run.trigger
        fn_name, signature = ENTRY_POINTS[run.spec.kind]
        api = PluginApi(trigger.database, TriggerHooks(self, trigger), self.ctx.cache.namespace(trigger.key))
        started = time.monotonic()
        call_id = self.ctx.watchdog.watch(trigger, started)
        try:
            module = self.ctx.loader.module(trigger.key, trigger.plugin_filename)
            fn = getattr(module, fn_name, None)
            if not callable(fn):
                raise _MissingEntryPoint(
                    f"the {fn_name} function is not present in the plugin. Should be defined as: {signature}"
                )
            self._log(trigger, "INFO", _start_text(event))
            result = fn(api, *self._arguments(run, event), own_copy(trigger.arguments))
        except BaseException as e:  # SystemExit and friends too: a plugin never stops the server
            api.discard_writes()
            PLUGIN_ERRORS.inc(1, **metric_labels(trigger))
            text = _error_text(e)
            self._log(trigger, "ERROR", text)
            return Failure(("Python function call failed: " if event.kind == "request" else "") + text)
        finally:
            self.ctx.watchdog.done(call_id)
            PLUGIN_RUNS.inc(1, **metric_labels(trigger))
            PLUGIN_SECONDS.observe(time.monotonic() - started, **metric_labels(trigger))
        self._write_back(trigger, api.take_writes())
        self._log(trigger, "INFO", f"finished execution in {_duration(time.monotonic() - started)}")
        return result

    def _arguments(self, run: Running, event: Event) -> tuple[Any, ...]:
        if event.kind == "wal":
            return (table_batches(event.payload, run.spec.table),)
        if event.kind == "schedule":
            if event.skipped:
                self._log(
                    run.trigger,
                    "WARN",
                    f"{event.skipped} scheduled call(s) skipped: the previous run was still going",
                )
            return (Schedule(run.spec).call_time(event.payload),)
        return tuple(event.payload)  # (query parameters, headers, body)

    def _write_back(self, trigger: TriggerDef, writes: dict[str, list[str]]) -> None:
        for db, lines in writes.items():
            try:
                self.write(trigger, db, "\n".join(lines), no_sync=False)
            except Exception as e:
                self._log(trigger, "ERROR", f"error writing back lines to {db}: {e}")


class TriggerHooks:
    """What the plugin API may ask of the engine, for one trigger."""

    def __init__(self, calls: Calls, trigger: TriggerDef) -> None:
        self.calls, self.trigger = calls, trigger

    def log(self, level: str, text: str) -> None:
        """Record a plugin log line under the trigger's name."""
        self.calls.logs.add(self.trigger.database, self.trigger.name, level, text)

    def write_lines(self, db: str, lines: str, no_sync: bool) -> None:
        """Write now, as the trigger's own lines."""
        self.calls.write(self.trigger, db, lines, no_sync)

    def query(self, db: str, sql: str, params: dict[str, Any] | None) -> pa.Table:
        """Run SQL on the appliance's query service."""
        return self.calls.ctx.queries.execute(db, sql, params, every_database=True)  # trusted code


def _start_text(event: Event) -> str:
    if event.kind == "wal":
        return "starting execution of wal plugin."
    if event.kind == "schedule":
        return f"starting execution with scheduled time {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(event.payload // NS_PER_SECOND))}"
    return "starting execution of request plugin."


def _error_text(e: BaseException) -> str:
    if isinstance(e, _MissingEntryPoint):
        return str(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def _duration(seconds: float) -> str:
    ms, us = divmod(int(seconds * 1_000_000), 1000)
    s, ms = divmod(ms, 1000)
    parts = [f"{s}s"] if s else []
    if ms:
        parts.append(f"{ms}ms")
    parts.append(f"{us}us")
    return " ".join(parts)
