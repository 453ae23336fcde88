"""The processing engine endpoints: triggers, plugin dry runs, packages and request triggers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...engine.responses import RequestResult
from ...engine.store import TriggerDef
from ...errors import BadRequest
from ..access import grant_of
from ..body import READER as BODY_READER
from ..engine_replies import engine_reply
from ..services import EngineAccess
from .common import flag, in_pool, json_body, json_response, param, required, services


def _access(request: web.Request) -> EngineAccess:
    return services(request).engine


async def create_trigger(request: web.Request) -> web.Response:
    """POST /api/v3/configure/processing_engine_trigger."""
    body = await json_body(request)
    settings = body.get("trigger_settings") or {}
    arguments = body.get("trigger_arguments")
    if not isinstance(settings, dict) or (arguments is not None and not isinstance(arguments, dict)):
        raise BadRequest("'trigger_settings' must be an object and 'trigger_arguments' an object or null")
    trigger = TriggerDef(
        name=required(body, "trigger_name"),
        database=required(body, "db"),
        plugin_filename=required(body, "plugin_filename"),
        spec=required(body, "trigger_specification"),
        run_async=bool(settings.get("run_async", False)),
        error_behavior=str(settings.get("error_behavior", "log")).lower(),
        arguments={str(k): str(v) for k, v in arguments.items()} if arguments else None,
        disabled=bool(body.get("disabled", False)),
        no_auth=bool(body.get("no_auth", False)),
    )
    access = _access(request)
    await in_pool(access.admin_pool, access.engine.create_trigger, trigger)
    return web.Response(status=200)


async def delete_trigger(request: web.Request) -> web.Response:
    """DELETE /api/v3/configure/processing_engine_trigger, by query string or JSON body."""
    if request.query.get("db"):
        db, name, force = (
            param(request, "db"),
            param(request, "trigger_name"),
            flag(request, "force", False),
        )
    else:
        body = await json_body(request)
        db, name, force = required(body, "db"), required(body, "trigger_name"), bool(body.get("force"))
    access = _access(request)
    await in_pool(access.admin_pool, access.engine.delete_trigger, db, name, force)
    return web.Response(status=200)


async def enable_trigger(request: web.Request) -> web.Response:
    """POST .../processing_engine_trigger/enable?db=...&trigger_name=..."""
    return await _set_disabled(request, False)


async def disable_trigger(request: web.Request) -> web.Response:
    """POST .../processing_engine_trigger/disable?db=...&trigger_name=..."""
    return await _set_disabled(request, True)


async def _set_disabled(request: web.Request, disabled: bool) -> web.Response:
    access = _access(request)
    db, name = param(request, "db"), param(request, "trigger_name")
    await in_pool(access.admin_pool, access.engine.set_disabled, db, name, disabled)
    return web.Response(status=200)


async def engine_request(request: web.Request) -> web.Response:
    """`/api/v3/engine/<path>`: the request trigger's plugin answers, on the engine pool. A caller
    that may not write to the trigger's database is answered as if there were no trigger: the
    path and its database stay unknown to it (no_auth triggers are open to every caller)."""
    access = _access(request)
    path = request.match_info["path"]
    trigger = access.engine.request_trigger(path)
    grant = grant_of(request)
    if trigger is None or not (trigger.no_auth or (grant and grant.may("db", trigger.database, "write"))):
        status, out_headers, out = engine_reply(RequestResult("no_trigger"))
        return web.Response(status=status, headers=out_headers, body=out)
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
    async with request.app[BODY_READER].received(request) as body:  # counted while the plugin runs
        result = await in_pool(
            access.pool, access.engine.handle_request, path, dict(request.query), headers, body, trigger
        )
    status, out_headers, out = engine_reply(result)
    return web.Response(status=status, headers=out_headers, body=out)


async def test_wal_plugin(request: web.Request) -> web.Response:
    """POST /api/v3/plugin_test/wal: process_writes once with the given line protocol."""
    body = await json_body(request)
    return await _dry_run(request, body, "wal", str(body.get("input_lp") or ""))


async def test_schedule_plugin(request: web.Request) -> web.Response:
    """POST /api/v3/plugin_test/schedule: process_scheduled_call once."""
    body = await json_body(request)
    return await _dry_run(request, body, "schedule", body.get("schedule"))


async def _dry_run(request: web.Request, body: dict[str, Any], kind: str, given: str | None) -> web.Response:
    """Both dry-run endpoints: the plugin, its database, what it is fed, arguments and cache name."""
    access = _access(request)
    result = await in_pool(
        access.pool,
        access.engine.test_plugin,
        kind,
        required(body, "filename"),
        required(body, "database"),
        given,
        _arguments(body.get("input_arguments")),
        body.get("cache_name"),
    )
    return json_response(result)


def _arguments(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("'input_arguments' must be an object of name: value")
    return {str(k): str(v) for k, v in value.items()}


async def install_packages(request: web.Request) -> web.Response:
    """POST .../plugin_environment/install_packages {packages: [...]}."""
    body = await json_body(request)
    packages = body.get("packages")
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise BadRequest("'packages' must be a list of package specifiers")
    access = _access(request)
    await in_pool(access.admin_pool, access.engine.packages.install, packages)
    return web.Response(status=200)


async def install_requirements(request: web.Request) -> web.Response:
    """POST .../plugin_environment/install_requirements {requirements_location}."""
    body = await json_body(request)
    location = required(body, "requirements_location")
    access = _access(request)
    await in_pool(access.admin_pool, access.engine.packages.install, [], location)
    return web.Response(status=200)
