"""The query endpoints: SQL (/api/v3/query_sql) and the InfluxQL ones, not supported yet."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.payload import AsyncIterablePayload

from ...errors import SHUTTING_DOWN, BadRequest, NotImplementedYet, QueryError, QueryTimeout
from ...query import formats
from ...query.service import timeout_message
from ..access import grant_of, require_database
from ..services import QueryAccess
from .common import MAX_JSON_BODY, SERVICES, json_body, services

#: Beyond its own deadline (the engine stops the query there), how long the handler still waits.
QUERY_GRACE_SECONDS = 5.0


async def query_sql(request: web.Request) -> web.Response:
    """GET or POST /api/v3/query_sql: run the query and render it in one hop to the query pool."""
    access = services(request).query
    if request.method == "POST":
        # Room for a query of query.max_sql_bytes, escaped, and its parameters: a longer text gets
        # query.max_sql_bytes' own 400, not a 413.
        body = await json_body(request, max(MAX_JSON_BODY, 2 * access.service.limits.max_sql_bytes))
        db, sql, fmt, params = body.get("db"), body.get("q"), body.get("format"), body.get("params")
    else:
        db, sql, fmt = request.query.get("db"), request.query.get("q"), request.query.get("format")
        params = _json_param(request.query.get("params"))
    db, sql = _text(db, "db"), _text(sql, "q")
    require_database(request, db, "read")
    grant = grant_of(request)
    every_database = grant is not None and grant.admin  # system tables span all databases only for admins
    if fmt is not None and not isinstance(fmt, str):
        raise BadRequest("'format' must be a string: json, jsonl, csv, parquet or pretty")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'params' must be a JSON object of name: value")
    chosen = formats.choose_format(fmt, request.headers.get("Accept"))

    def run() -> list[bytes]:  # query and rendering in one hop to the query pool, off the event loop
        limits = access.service.limits
        deadline = time.monotonic() + limits.timeout_ns / 1e9  # the query's and its rendering's
        table = access.service.execute(db, sql, params, every_database=every_database)
        return formats.render_pieces(table, chosen, limits.max_result_bytes, deadline)

    pieces = await run_query(access, run)
    headers = {"Content-Type": formats.content_type(chosen), "Content-Length": str(sum(map(len, pieces)))}
    return web.Response(body=AsyncIterablePayload(_drain(pieces)), headers=headers)


async def _drain(pieces: list[bytes]) -> AsyncIterator[bytes]:
    """Each piece of a body once, releasing it as it is sent."""
    pieces.reverse()
    while pieces:
        yield pieces.pop()


async def run_query(access: QueryAccess, run: Callable[[], list[bytes]]) -> list[bytes]:
    """Run `run` on the query pool once a slot is free; the slot is held until the thread is done."""
    timeout = access.service.limits.timeout_ns / 1e9
    try:
        # Not wait_for: on Python 3.11 it can drop a permit that was granted as the timeout fired.
        # Semaphore.acquire gives a granted permit back itself if it is cancelled.
        async with asyncio.timeout(timeout):
            await access.slots.acquire()
    except TimeoutError:
        raise QueryError(
            f"too many queries running (query.max_concurrent = {access.max_concurrent}); retry later",
            http_status=503,
        ) from None
    # No await between the acquire and the hand-off: the permit belongs to the thread's future.
    try:
        future = asyncio.get_running_loop().run_in_executor(access.pool, run)
    except RuntimeError:  # the pool is shut down: the server is stopping
        access.slots.release()
        raise QueryError(f"query refused: {SHUTTING_DOWN}", http_status=503) from None
    future.add_done_callback(lambda _: access.slots.release())
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout + QUERY_GRACE_SECONDS)
    except TimeoutError:
        raise QueryTimeout(timeout_message(access.service.limits)) from None


async def stop_queries(web_app: web.Application) -> None:
    """On shutdown: running queries end now (503) rather than hold the stop for their timeout."""
    web_app[SERVICES].query.service.close()


def _text(value: Any, name: str) -> str:
    if not value:
        raise BadRequest(f"missing query parameter '{name}'")
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    return value


def _json_param(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise BadRequest(f"query parameter 'params' is not valid JSON: {e}") from None


async def influxql(request: web.Request) -> web.Response:
    """/api/v3/query_influxql and v1's /query: 501 pointing at SQL (after the token's check)."""
    db = request.query.get("db")
    if db:
        require_database(request, db, "read")
    raise NotImplementedYet("InfluxQL is not supported yet; send SQL to /api/v3/query_sql instead")
