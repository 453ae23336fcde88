"""The write endpoints: InfluxDB 3's /api/v3/write_lp, v2's /api/v2/write and v1's /write."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ...errors import BadRequest, CatalogError, LimitExceeded, PartialWrite
from ...model import Precision
from ...write import WriteRequest
from ..access import require_database
from ..body import READER as BODY_READER
from .common import flag, in_pool, param, precision, services

#: Writes being parsed and committed at once; more wait with their body read (http.max_buffered_bytes).
WRITE_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("write_slots", asyncio.Semaphore)
WRITE_CONCURRENCY = 8


async def _write(
    request: web.Request, db: str, precision: Precision, accept_partial: bool, no_sync: bool = False
) -> web.Response:
    """One write. The body is read first (a slow client holds no slot, only the bytes it sent,
    within http.max_buffered_bytes); then at most WRITE_SLOTS writes are processed at a time."""
    require_database(request, db, "write")
    access = services(request).write
    await access.writes.wait_for_room()
    async with request.app[BODY_READER].received(request) as data, request.app[WRITE_SLOTS]:
        if not data.strip():
            raise BadRequest("incoming write was empty")
        req = WriteRequest(db, data, precision, accept_partial, no_sync)
        try:
            report = await in_pool(access.pool, access.writes.submit, req)
        except LimitExceeded:
            raise
        except CatalogError as e:
            raise BadRequest(e.message) from None  # write errors are JSON, unlike catalog errors
        if report.committed is not None:
            await asyncio.wrap_future(report.committed)
    if report.errors:
        raise PartialWrite(
            report.summary(),
            data=[e.to_json() for e in report.errors],
            http_status=422 if report.limit_hit else 400,
        )
    return web.Response(status=204)


async def write_lp(request: web.Request) -> web.Response:
    """POST /api/v3/write_lp: partial writes accepted unless accept_partial=false."""
    return await _write(
        request,
        param(request, "db"),
        precision(request, Precision.AUTO),
        accept_partial=flag(request, "accept_partial", True),
        no_sync=flag(request, "no_sync", False),
    )


async def write_v2(request: web.Request) -> web.Response:
    """POST /api/v2/write: the bucket is the database; all lines or none."""
    return await _write(
        request, param(request, "bucket"), precision(request, Precision.NS), accept_partial=False
    )


async def write_v1(request: web.Request) -> web.Response:
    """POST /write: a retention policy other than the default names the database `db/rp`."""
    db = param(request, "db")
    rp = request.query.get("rp", "")
    if rp and rp not in ("autogen", "default"):
        db = f"{db}/{rp}"
    return await _write(request, db, precision(request, Precision.NS), accept_partial=False)
