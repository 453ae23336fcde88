"""The Engine in-process: a real LMDB store and catalog, plugins from a temporary plugin dir.

Its background loops (scheduler, log flusher, watchdog) report to `Engine.health()`: a failing
scheduler step degrades it with the error and the loop goes on; a dead loop fails it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest

from appliance.engine.runner import Engine, EngineArgs
from appliance.engine.schedule import Schedule
from appliance.engine.store import TriggerDef
from appliance.http.engine_replies import engine_reply
from appliance.query.service import QueryService
from appliance.storage.catalog import Catalog, CatalogLimits
from appliance.storage.store import Store
from appliance.storage.wal import Wal
from appliance.threads import LOOP_ERRORS
from appliance.write import WriteService
from tests.server import wait_for

TICK_PLUGIN = """
def process_scheduled_call(influxdb3_local, call_time, args=None):
    influxdb3_local.info("fired")
"""
REQUEST_PLUGIN = """
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    if query_parameters.get("fail"):
        raise RuntimeError("asked to fail")
    return {"echo": query_parameters.get("x")}
"""


class _NoQueries:
    def execute(self, db: str, sql: str, params: dict[str, Any] | None) -> pa.Table:
        raise AssertionError("these plugins do not query")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    store = Store(tmp_path / "lmdb", 1 << 28)
    wal = Wal(store)
    store.start()
    catalog = Catalog(store, CatalogLimits())
    catalog.create_database("db", None)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tick.py").write_text(TICK_PLUGIN)
    (plugins / "answer.py").write_text(REQUEST_PLUGIN)
    args = EngineArgs(plugins, "", max_retries=0, call_timeout_s=10, cache_max_bytes=1 << 20, queue_size=10)
    e = Engine(args, store, catalog, WriteService(catalog, wal), cast(QueryService, _NoQueries()))
    e.start()
    yield e
    e.stop(grace_s=2)
    store.stop()


def _fired(engine: Engine) -> bool:
    return "fired" in engine.logs.table("db").column("log_text").to_pylist()


def _raise(exc: BaseException) -> Callable[..., int]:
    def fail(self: Schedule, t_ns: int) -> int:
        raise exc

    return fail


def test_a_failing_scheduler_step_degrades_health_and_the_loop_recovers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.health()["status"] == "ok"
    errors_before = LOOP_ERRORS.value(loop="scheduler")
    monkeypatch.setattr(Schedule, "next_after", _raise(ValueError("croniter gave up")))
    engine.create_trigger(TriggerDef("tick", "db", "tick.py", "every:1s"))
    wait_for(lambda: engine.health()["status"] == "degraded", timeout=10)
    health = engine.health()
    assert (
        "scheduler" in health["error"]
        and "croniter gave up" in health["error"]
        and "'tick'" in health["error"]
    )
    assert health["triggers_running"] == 1
    assert engine.scheduler.loop.alive
    assert LOOP_ERRORS.value(loop="scheduler") > errors_before
    assert not _fired(engine)

    monkeypatch.undo()  # the fire time computes again: the retried trigger is placed and fires
    wait_for(lambda: engine.health()["status"] == "ok", timeout=10)
    assert "error" not in engine.health()
    wait_for(lambda: _fired(engine), timeout=10)


def test_a_dead_scheduler_fails_health(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Schedule, "next_after", _raise(SystemExit(3)))
    engine.create_trigger(TriggerDef("tick", "db", "tick.py", "every:1s"))
    wait_for(lambda: not engine.scheduler.loop.alive, timeout=10)
    health = engine.health()
    assert health["status"] == "failed"
    assert "scheduler" in health["error"] and "SystemExit" in health["error"]


def test_one_broken_schedule_does_not_stop_the_others(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Schedule.next_after

    def only_cron_fails(self: Schedule, t_ns: int) -> int:
        if self.spec.cron is not None:
            raise ValueError("bad cron")
        return real(self, t_ns)

    monkeypatch.setattr(Schedule, "next_after", only_cron_fails)
    engine.create_trigger(TriggerDef("broken", "db", "tick.py", "cron:* * * * * *"))
    engine.create_trigger(TriggerDef("tick", "db", "tick.py", "every:1s"))
    wait_for(lambda: _fired(engine), timeout=10)
    logs = engine.logs.table("db")
    lines = zip(logs.column("trigger_name").to_pylist(), logs.column("log_text").to_pylist(), strict=True)
    assert {name for name, text in lines if text == "fired"} == {"tick"}
    assert engine.health()["status"] == "degraded"
    assert "'broken'" in engine.health()["error"]


def test_request_results_become_http_replies_on_the_http_side(engine: Engine) -> None:
    engine.create_trigger(TriggerDef("hook", "db", "answer.py", "request:hook"))
    assert engine_reply(engine.handle_request("hook", {"x": "1"}, {}, b"")) == (
        200,
        {"Content-Type": "application/json"},
        b'{"echo": "1"}',
    )
    assert engine_reply(engine.handle_request("nope", {}, {}, b"")) == (
        404,
        {"Content-Type": "application/json"},
        b'{"error":"not found"}',
    )
    status, headers, body = engine_reply(engine.handle_request("hook", {"fail": "1"}, {}, b""))
    assert status == 500 and headers == {"Content-Type": "application/json"}
    assert body.startswith(b'{"error": "Python function call failed: RuntimeError: asked to fail')
    engine.catalog.delete_database("db")  # no drop listener here: the trigger outlives its database
    assert engine_reply(engine.handle_request("hook", {}, {}, b"")) == (
        500,
        {"Content-Type": "application/json"},
        b'{"error":"database not found"}',
    )
