"""The write endpoints in-process: a write is durable and queryable, bad ones get their errors,
and admission (disk budget 507, full buffer 503) is the same for HTTP and for direct writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.app import App
from appliance.errors import StorageFull, WalError
from appliance.http import routes
from appliance.storage.buffer import Buffer
from appliance.write import Admission, WriteRequest
from tests.http.conftest import call


def test_a_write_is_acknowledged_then_queryable(app: App) -> None:
    async def scenario(client: TestClient) -> tuple[int, Any]:
        written = await client.post(
            routes.WRITE_LP, params={"db": "home", "precision": "s"}, data=b"room,name=k temp=21.5 1735689600"
        )
        queried = await client.get(
            routes.QUERY_SQL, params={"db": "home", "q": "SELECT name, temp FROM room", "format": "json"}
        )
        return written.status, await queried.json()

    status, rows = call(app, scenario)
    assert status == 204
    assert rows == [{"name": "k", "temp": 21.5}]


def test_v1_and_v2_writes_name_their_database(app: App) -> None:
    async def scenario(client: TestClient) -> list[int]:
        v2 = await client.post(routes.WRITE_V2, params={"bucket": "b2"}, data=b"m v=1i 1")
        v1 = await client.post(routes.WRITE_V1, params={"db": "b1", "rp": "weekly"}, data=b"m v=1i 1")
        return [v2.status, v1.status]

    assert call(app, scenario) == [204, 204]
    assert {d.name for d in app.catalog.databases()} == {"b2", "b1/weekly"}


def test_empty_and_partial_writes_say_what_was_wrong(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, Any]]:
        empty = await client.post(routes.WRITE_LP, params={"db": "home"}, data=b"  \n")
        partial = await client.post(routes.WRITE_LP, params={"db": "home"}, data=b"m v=1i 1\nm v=oops 2\n")
        missing = await client.post(routes.WRITE_LP, data=b"m v=1i 1")
        return [(r.status, await r.json()) for r in (empty, partial, missing)]

    (s1, empty), (s2, partial), (s3, missing) = call(app, scenario)
    assert (s1, empty) == (400, {"error": "incoming write was empty"})
    assert s2 == 400 and partial["error"] == "partial write of line protocol occurred"
    assert [e["line_number"] for e in partial["data"]] == [2]
    assert (s3, missing) == (400, {"error": "missing query parameter 'db'"})


def test_the_disk_budget_refuses_http_and_direct_writes_alike(app: App) -> None:
    reason = "the disk budget is full of data not yet uploaded"
    assert app.writes.admission is not None
    app.writes.admission.budget_refusing = lambda: reason

    async def scenario(client: TestClient) -> tuple[int, Any]:
        r = await client.post(routes.WRITE_LP, params={"db": "home"}, data=b"m v=1i 1")
        return r.status, await r.json()

    assert call(app, scenario) == (507, {"error": reason})
    with pytest.raises(StorageFull, match=reason):  # MQTT and plugins write through submit
        app.writes.submit(WriteRequest("home", b"m v=1i 1", protocol="mqtt"))


def test_a_full_buffer_holds_a_write_then_refuses_it_with_503() -> None:
    buffer = Buffer(max_bytes=0)  # always at twice its cap
    admission = Admission(buffer, timeout=0.05)
    with pytest.raises(WalError, match="buffer is full") as blocking:
        admission.admit()
    with pytest.raises(WalError, match="buffer is full") as on_loop:
        asyncio.run(admission.wait_for_room())
    assert blocking.value.http_status == on_loop.value.http_status == 503
    buffer.max_bytes = 1 << 20
    admission.admit()  # room again: at once
    asyncio.run(admission.wait_for_room())
