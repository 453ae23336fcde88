"""The operations endpoints in-process: health, ping, metrics, persist and sync control."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from appliance.app import App
from appliance.http import routes
from appliance.threads import BackgroundLoop
from tests.http.conftest import build_app, call


def test_health_and_ping_describe_this_process(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, Any]]:
        health = await client.get(routes.HEALTH)
        ping = await client.get(routes.PING)
        head = await client.head(routes.PING)
        return [(health.status, await health.json()), (ping.status, await ping.json()), (head.status, None)]

    (hs, health), (ps, ping), (head, _) = call(app, scenario)
    assert hs == 200 and health["state"] == "ok" and health["status"] == "pass"
    assert {"wal", "persist", "engine"} <= set(health["components"])
    assert ps == 200 and ping["process_id"] == app.process_id and head == 204


def test_persist_writes_the_buffer_to_parquet(app: App) -> None:
    async def scenario(client: TestClient) -> tuple[int, Any]:
        await client.post(routes.WRITE_LP, params={"db": "home"}, data=b"m v=1i 1")
        r = await client.post(routes.PERSIST)
        return r.status, await r.json()

    status, body = call(app, scenario)
    assert status == 200 and body["files"] == 1
    assert len(app.manifest.paths()) == 1


def test_metrics_and_sync_without_a_bucket(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, str]]:
        metrics = await client.get(routes.METRICS)
        status = await client.get(routes.SYNC)
        now = await client.post(routes.SYNC)
        return [(r.status, await r.text()) for r in (metrics, status, now)]

    (ms, metrics), (ss, status), (ns, now) = call(app, scenario)
    assert ms == 200 and "appliance_wal_last_sequence" in metrics
    assert (ss, status) == (200, '{"enabled":false}')
    assert ns == 404 and "sync is not configured" in now


def test_connection_and_body_budget_gauges_follow_the_counts() -> None:
    import asyncio

    from appliance.http.body import ByteBudget
    from appliance.http.connections import ConnectionGuard, ConnectionLimits
    from appliance.metrics import Registry

    registry = Registry()
    guard = ConnectionGuard(ConnectionLimits(10, 5, 1.0))
    budget = ByteBudget(100, 60)
    guard.register_metrics(registry)
    budget.register_metrics(registry)

    def values() -> dict[str, float]:
        lines = [line.split() for line in registry.render().splitlines() if not line.startswith("#")]
        return {name: float(value) for name, value in lines}

    async def scenario() -> dict[str, float]:
        assert guard.admit("10.0.0.1") is None and guard.admit("10.0.0.2") is None
        guard.release("10.0.0.2")
        deadline = asyncio.get_running_loop().time() + 5
        await budget.reserve(60, "10.0.0.1", deadline)
        waiting = asyncio.ensure_future(budget.reserve(10, "10.0.0.1", deadline))  # over the share
        # Callbacks run in order: once this one has, the reservation's first step has queued it.
        queued = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(queued.set_result, None)
        await queued
        seen = values()
        budget.give(60, "10.0.0.1")
        await waiting
        return seen | {"after": values()["appliance_http_buffered_bytes"]}

    assert asyncio.run(scenario()) == {
        "appliance_http_connections": 1.0,
        "appliance_http_buffered_bytes": 60.0,
        "appliance_http_bodies_waiting": 1.0,
        "after": 10.0,
    }


#: A secret-looking error text a component reports; only an admin may ever read it.
LEAK = "apiv3_l34ked-s3cret"


class _DeadSidecar:
    """A real background loop whose thread died with an error text: a failed component."""

    name = "sidecar"

    def __init__(self) -> None:
        def step() -> float:
            raise SystemExit(f"cannot reach {LEAK}")

        self.loop = BackgroundLoop("sidecar", step, interval=3600, log=logging.getLogger("appliance.test"))

    def start(self) -> None:
        self.loop.start()
        self.loop._thread.join(10)

    def stop(self) -> None:
        self.loop.stop(timeout=10)

    def health(self) -> dict[str, Any]:
        return self.loop.health()

    def register_metrics(self, registry: Any) -> None:
        """No gauges."""


def test_a_failed_component_is_503_for_everyone_and_its_error_only_for_a_token(tmp_path: Path) -> None:
    app = build_app(tmp_path / "data", **{"auth.enabled": True})
    try:
        sidecar = _DeadSidecar()
        sidecar.start()
        app.components.append(sidecar)
        admin = (tmp_path / "data" / "admin-token").read_text().strip()

        async def scenario(client: TestClient) -> list[tuple[int, str]]:
            out = []
            for path in (routes.HEALTH, routes.HEALTH_V1):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {admin}"}):
                    r = await client.get(path, headers=headers)
                    out.append((r.status, await r.text()))
            return out

        answers = call(app, scenario)
    finally:
        app.stop()
    for i, (status, text) in enumerate(answers):
        body = json.loads(text)
        assert status == 503 and body["status"] == "fail" and body["state"] == "failed", text
        assert body["components"]["sidecar"]["status"] == "failed"
        if i % 3 == 2:  # the admin token: the whole report
            assert LEAK in body["components"]["sidecar"]["error"] and LEAK in body["message"]
        else:
            assert LEAK not in text and "SystemExit" not in text and body["message"] == "failed"
            assert body["components"]["sidecar"] == {"status": "failed"}
