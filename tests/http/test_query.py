"""The query endpoints in-process: SQL answers in the format asked, errors name the parameter,
InfluxQL is refused clearly, and the query slots are never lost."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.app import App
from appliance.errors import QueryError
from appliance.http import routes
from appliance.http.handlers.query import run_query
from appliance.query.service import QueryLimits
from tests.http.conftest import call


def test_sql_by_get_and_post_in_the_format_asked(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, str]]:
        await client.post(
            routes.WRITE_LP, params={"db": "home"}, data=b"room,name=k temp=1 1\nroom,name=l temp=2 2"
        )
        sql = "SELECT name FROM room ORDER BY name"
        by_get = await client.get(routes.QUERY_SQL, params={"db": "home", "q": sql, "format": "csv"})
        by_post = await client.post(routes.QUERY_SQL, json={"db": "home", "q": sql, "format": "jsonl"})
        return [(r.status, await r.text()) for r in (by_get, by_post)]

    assert call(app, scenario) == [
        (200, "name\nk\nl\n"),
        (200, '{"name":"k"}\n{"name":"l"}\n'),
    ]


def test_query_errors_name_what_is_wrong(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, Any]]:
        no_db = await client.get(routes.QUERY_SQL, params={"q": "SELECT 1"})
        bad_params = await client.post(routes.QUERY_SQL, json={"db": "x", "q": "SELECT 1", "params": [1]})
        influxql = await client.get(routes.QUERY_INFLUXQL, params={"db": "x", "q": "SHOW MEASUREMENTS"})
        return [(r.status, await r.json()) for r in (no_db, bad_params, influxql)]

    no_db, bad_params, influxql = call(app, scenario)
    assert no_db == (400, {"error": "missing query parameter 'db'"})
    assert bad_params == (400, {"error": "'params' must be a JSON object of name: value"})
    assert influxql[0] == 501 and "send SQL to /api/v3/query_sql" in influxql[1]["error"]


def test_query_slots_are_given_back_on_timeout_and_when_the_pool_refuses() -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        limits = QueryLimits(1 << 20, int(0.2e9), 1 << 20)
        app: Any = SimpleNamespace(
            service=SimpleNamespace(limits=limits),
            slots=asyncio.Semaphore(1),
            pool=pool,
            max_concurrent=1,
        )
        assert await run_query(app, lambda: [b"ok"]) == [b"ok"]
        await app.slots.acquire()  # every slot busy: the next query waits, then answers 503
        with pytest.raises(QueryError) as busy:
            await run_query(app, lambda: [b"never"])
        assert busy.value.http_status == 503
        app.slots.release()

        # many waiters timing out while slots come and go leave the count where it was
        def slow() -> list[bytes]:
            time.sleep(0.05)  # time is the behaviour: the slot is held while other waiters time out
            return [b"x"]

        waiters = [asyncio.ensure_future(run_query(app, slow)) for _ in range(20)]
        await asyncio.gather(*waiters, return_exceptions=True)
        # The pool has one thread: once a no-op ran on it, every query before it has released its slot.
        await asyncio.get_running_loop().run_in_executor(pool, lambda: None)
        assert app.slots._value == 1
        pool.shutdown()
        with pytest.raises(QueryError) as stopping:
            await run_query(app, lambda: [b"x"])
        assert stopping.value.http_status == 503 and app.slots._value == 1

    asyncio.run(scenario())
