"""The in-process component tier: the App built from a tmp data dir, served by aiohttp's test
server on loopback, and driven by its test client; no subprocess, well under a second a test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from appliance import app as app_module
from appliance import config
from appliance.http import server as http_server
from appliance.lifecycle import http_services

T = TypeVar("T")
Scenario = Callable[[TestClient], Awaitable[T]]


def build_app(data_dir: Path, **settings: object) -> app_module.App:
    """An App on `data_dir`, auth off unless a setting says otherwise; no environment or file."""
    overrides = {"server.data_dir": str(data_dir), "server.node_id": "test", "auth.enabled": False}
    overrides |= settings
    return app_module.build(config.load(None, overrides, environ={}))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[app_module.App]:
    """A running App (WAL writer, persister, engine) on its own data dir, stopped after the test."""
    built = build_app(tmp_path / "data")
    yield built
    built.stop()


def call(app: app_module.App, scenario: Scenario[T]) -> T:
    """Serve `app` over HTTP in-process for one scenario, on its own event loop."""

    async def main() -> T:
        async with TestClient(TestServer(http_server.create(http_services(app)))) as client:
            return await scenario(client)

    return asyncio.run(main())
