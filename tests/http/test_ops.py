"""The operations endpoints in-process: health, ping, metrics, persist and sync control."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from appliance.app import App
from appliance.http import routes
from tests.http.conftest import call


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
