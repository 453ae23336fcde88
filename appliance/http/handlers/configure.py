"""The configuration endpoints: databases, retention, tables and tokens."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from aiohttp import web

from ...auth import Permission, TokenInfo, Tokens
from ...errors import BadRequest, MethodDisabled
from ...model import ColumnType
from ...query import formats
from ...storage.catalog import MAX_RETENTION_NS
from ...units import parse_duration_ns
from ..access import grant_of
from ..services import ConfigureAccess
from .common import in_pool, json_body, json_response, param, required, services

#: Longest token lifetime accepted (a token that should never expire is created without one).
MAX_EXPIRY_SECS = 100 * 365 * 86_400
#: Most permissions one token may carry.
MAX_PERMISSIONS = 64


def _access(request: web.Request) -> ConfigureAccess:
    return services(request).configure


async def list_databases(request: web.Request) -> web.Response:
    """GET /api/v3/configure/database?format=...: one row per database the token may read or write."""
    fmt = request.query.get("format")
    if not fmt:
        raise BadRequest("missing query parameter 'format' (use format=json)")
    grant = grant_of(request)
    assert grant is not None  # a TOKEN route: the middleware set it (OPEN with auth off)
    rows = [
        {"iox::database": d.name}
        for d in _access(request).catalog.databases()
        if grant.may("db", d.name, "read") or grant.may("db", d.name, "write")
    ]
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
    """POST /api/v3/configure/token/admin: the operator admin token (409 once it exists)."""
    return await _create_token(request, lambda tokens: tokens.create_admin(False))


async def regenerate_admin_token(request: web.Request) -> web.Response:
    """POST /api/v3/configure/token/admin/regenerate: replace the operator admin token."""
    return await _create_token(request, lambda tokens: tokens.create_admin(True))


async def create_named_admin_token(request: web.Request) -> web.Response:
    """POST /api/v3/configure/token/named_admin {token_name, expiry_secs?}: another admin token."""
    body = await json_body(request)
    name, expiry = required(body, "token_name"), _expiry_ms(body.get("expiry_secs"))
    return await _create_token(request, lambda tokens: tokens.create(name, None, expiry))


async def create_resource_token(request: web.Request) -> web.Response:
    """POST /api/v3/enterprise/configure/token {token_name, permissions, expiry_secs?}: a token that may
    do only what its permissions say (InfluxDB 3 Enterprise's body: each permission is
    {resource_type, resource_identifier: [names], actions: [...]}, or a "db:NAME:read" string)."""
    body = await json_body(request)
    name, expiry = required(body, "token_name"), _expiry_ms(body.get("expiry_secs"))
    perms = _permissions(body.get("permissions"))
    return await _create_token(request, lambda tokens: tokens.create(name, perms, expiry))


async def _create_token(
    request: web.Request, make: Callable[[Tokens], tuple[str, TokenInfo]]
) -> web.Response:
    """Run `make` on the admin pool; 201 with the token, shown this once."""
    access = _tokens_access(request)
    token, info = await in_pool(access.pool, make, access.tokens)
    return json_response(
        {
            "id": info.id,
            "name": info.name,
            "token": token,
            "hash": info.hash,
            "created_at": info.created_at,
            "expiry": info.expiry,
            "permissions": list(info.permissions),
        },
        status=201,
    )


async def list_tokens(request: web.Request) -> web.Response:
    """GET /api/v3/configure/token?format=...: every token's name, permissions and dates; never a secret."""
    chosen = formats.choose_format(request.query.get("format") or "json", None)
    table = _tokens_table(_access(request).tokens.infos())
    return web.Response(
        body=formats.render(table, chosen), headers={"Content-Type": formats.content_type(chosen)}
    )


async def delete_token(request: web.Request) -> web.Response:
    """DELETE /api/v3/configure/token?token_name=...: revoke the token at once."""
    access = _tokens_access(request)
    await in_pool(access.pool, access.tokens.delete, param(request, "token_name"))
    return web.Response(status=200)


def _tokens_access(request: web.Request) -> ConfigureAccess:
    access = _access(request)
    if not access.auth_enabled:
        raise MethodDisabled("endpoint disabled, started without auth")
    return access


def _expiry_ms(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_EXPIRY_SECS:
        raise BadRequest(
            f"'expiry_secs' must be a whole number of seconds from 1 to {MAX_EXPIRY_SECS} (omit it for none)"
        )
    return int(time.time() * 1000) + value * 1000


def _permissions(value: Any) -> tuple[Permission, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_PERMISSIONS:
        raise BadRequest(f"'permissions' must be a list of 1 to {MAX_PERMISSIONS} permissions")
    try:
        return tuple(_permission(p) for p in value)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _permission(p: Any) -> Permission:
    if isinstance(p, str):
        return Permission.parse(p)
    if isinstance(p, dict):
        kind, names, actions = p.get("resource_type"), p.get("resource_identifier"), p.get("actions")
        if (
            isinstance(kind, str)
            and isinstance(names, list)
            and isinstance(actions, list)
            and all(isinstance(x, str) for x in [*names, *actions])
        ):
            return Permission.of(kind, names, actions)
    raise ValueError(
        'each permission is "db:NAME:read" or {"resource_type": "db", "resource_identifier": ["NAME"],'
        ' "actions": ["read"]}'
    )


_TOKENS_SCHEMA = pa.schema(
    [
        ("token_id", pa.int64()),
        ("name", pa.string()),
        ("permissions", pa.string()),
        ("created_at", pa.timestamp("ms")),
        ("expiry", pa.timestamp("ms")),
        ("last_used", pa.timestamp("ms")),
    ]
)


def _tokens_table(infos: list[TokenInfo]) -> pa.Table:
    return pa.table(
        {
            "token_id": [t.id for t in infos],
            "name": [t.name for t in infos],
            "permissions": [" ".join(t.permissions) for t in infos],
            "created_at": [t.created_at for t in infos],
            "expiry": [t.expiry for t in infos],
            "last_used": [t.last_used for t in infos],
        },
        schema=_TOKENS_SCHEMA,
    )
