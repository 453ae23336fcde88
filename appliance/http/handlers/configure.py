"""The configuration endpoints: databases, retention, tables and the admin token."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from aiohttp import web

from ...errors import BadRequest, MethodDisabled
from ...model import ColumnType
from ...query import formats
from ...storage.catalog import MAX_RETENTION_NS
from ...units import parse_duration_ns
from ..services import ConfigureAccess
from .common import in_pool, json_body, json_response, param, required, services


def _access(request: web.Request) -> ConfigureAccess:
    return services(request).configure


async def list_databases(request: web.Request) -> web.Response:
    """GET /api/v3/configure/database?format=...: one row per database."""
    fmt = request.query.get("format")
    if not fmt:
        raise BadRequest("missing query parameter 'format' (use format=json)")
    rows = [{"iox::database": d.name} for d in _access(request).catalog.databases()]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("iox::database", pa.string())]))
    chosen = formats.choose_format(fmt, None)
    return web.Response(
        body=formats.render(table, chosen), headers={"Content-Type": formats.content_type(chosen)}
    )


def _retention(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        ns = parse_duration_ns(str(value))
    except ValueError as e:
        raise BadRequest(f"invalid retention_period: {e}") from None
    if ns <= 0:
        raise BadRequest(
            "invalid retention_period: it must be longer than zero (omit it to keep data forever)"
        )
    if ns > MAX_RETENTION_NS:
        raise BadRequest("invalid retention_period: at most 100 years (omit it to keep data forever)")
    return ns


async def create_database(request: web.Request) -> web.Response:
    """POST /api/v3/configure/database {db, retention_period?}."""
    body = await json_body(request)
    name = required(body, "db")
    access = _access(request)
    await in_pool(access.pool, access.catalog.create_database, name, _retention(body.get("retention_period")))
    return web.Response(status=200)


async def update_database(request: web.Request) -> web.Response:
    """PUT /api/v3/configure/database {db, retention_period?}: sets or clears the retention."""
    body = await json_body(request)
    access = _access(request)
    db, retention = required(body, "db"), _retention(body.get("retention_period"))
    await in_pool(access.pool, access.catalog.set_retention, db, retention)
    return web.Response(status=200)


async def delete_database(request: web.Request) -> web.Response:
    """DELETE /api/v3/configure/database?db=...: the database and its data."""
    access = _access(request)
    await in_pool(access.pool, access.catalog.delete_database, param(request, "db"))
    return web.Response(status=200)


async def set_retention(request: web.Request) -> web.Response:
    """POST /api/v3/configure/database/retention_period?db=...&duration=..."""
    access = _access(request)
    db, retention = param(request, "db"), _retention(param(request, "duration"))
    await in_pool(access.pool, access.catalog.set_retention, db, retention)
    return web.Response(status=204)


async def clear_retention(request: web.Request) -> web.Response:
    """DELETE /api/v3/configure/database/retention_period?db=...: keep data forever."""
    access = _access(request)
    await in_pool(access.pool, access.catalog.set_retention, param(request, "db"), None)
    return web.Response(status=204)


async def create_table(request: web.Request) -> web.Response:
    """POST /api/v3/configure/table {db, table, tags, fields: [{name, type}]}."""
    body = await json_body(request)
    db, table = required(body, "db"), required(body, "table")
    tags, fields = body.get("tags"), body.get("fields")
    if not isinstance(tags, list) or not isinstance(fields, list):
        raise BadRequest("'tags' (a list of names) and 'fields' (a list of {name, type}) are required")
    if not all(isinstance(t, str) for t in tags):
        raise BadRequest("'tags' must be a list of names (strings)")
    access = _access(request)
    await in_pool(access.pool, access.catalog.create_table, db, table, tags, _field_types(fields))
    return web.Response(status=200)


def _field_types(fields: list[Any]) -> dict[str, ColumnType]:
    """The `fields` of a create-table body as column types; 400 for a malformed one."""
    typed: dict[str, ColumnType] = {}
    for f in fields:
        if (
            not isinstance(f, dict)
            or not isinstance(f.get("name"), str)
            or not isinstance(f.get("type"), str)
        ):
            raise BadRequest('each field must be {"name": "...", "type": "utf8|int64|uint64|float64|bool"}')
        try:
            typed[f["name"]] = ColumnType.from_api(f["type"])
        except ValueError as e:
            raise BadRequest(str(e)) from None
    return typed


async def delete_table(request: web.Request) -> web.Response:
    """DELETE /api/v3/configure/table?db=...&table=..."""
    access = _access(request)
    await in_pool(access.pool, access.catalog.delete_table, param(request, "db"), param(request, "table"))
    return web.Response(status=200)


# -- tokens --------------------------------------------------------------------
async def create_admin_token(request: web.Request) -> web.Response:
    """POST /api/v3/configure/token/admin: the first admin token (no token needed for it)."""
    return await _admin_token(request, regenerate=False)


async def regenerate_admin_token(request: web.Request) -> web.Response:
    """POST /api/v3/configure/token/admin/regenerate: replace the admin token."""
    return await _admin_token(request, regenerate=True)


async def _admin_token(request: web.Request, regenerate: bool) -> web.Response:
    access = _access(request)
    if not access.auth_enabled:
        raise MethodDisabled("endpoint disabled, started without auth")
    token, info = await in_pool(access.pool, access.tokens.create_admin, regenerate)
    return json_response(
        {
            "id": info.id,
            "name": info.name,
            "token": token,
            "hash": info.hash,
            "created_at": info.created_at,
            "expiry": info.expiry,
        },
        status=201,
    )
