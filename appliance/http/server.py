"""The aiohttp application: middleware for errors, auth and CORS, and the route table."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..app import App
from ..errors import ApplianceError, BadRequest, LineProtocolError, TooLarge, Unauthorized
from . import handlers, routes

log = logging.getLogger("appliance.http")

APP_KEY: web.AppKey[App] = handlers.APP_KEY
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create(app: App) -> web.Application:
    """Build the web application around a running App."""
    web_app = web.Application(
        middlewares=[_errors, _auth],
        client_max_size=app.config.max_request_size,
        # Bodies are gunzipped in handlers.read_body: a clear 400 for bad gzip, and the size
        # limit applies after decompression.
        handler_args={"auto_decompress": False},
    )
    web_app[APP_KEY] = app
    web_app[handlers.WRITE_SLOTS] = asyncio.Semaphore(handlers.WRITE_CONCURRENCY)
    web_app.on_shutdown.append(handlers.stop_queries)  # before aiohttp waits for in-flight requests
    r = web_app.router
    r.add_post(routes.WRITE_LP, handlers.write_lp)
    r.add_post(routes.WRITE_V2, handlers.write_v2)
    r.add_post(routes.WRITE_V1, handlers.write_v1)
    r.add_route("GET", routes.QUERY_SQL, handlers.query_sql)
    r.add_route("POST", routes.QUERY_SQL, handlers.query_sql)
    for path in (routes.QUERY_INFLUXQL, routes.QUERY_V1):
        r.add_route("GET", path, handlers.influxql)
        r.add_route("POST", path, handlers.influxql)
    r.add_get(routes.HEALTH, handlers.health)
    r.add_get(routes.HEALTH_V1, handlers.health)
    r.add_get(routes.PING, handlers.ping)
    r.add_post(routes.PING, handlers.ping)
    r.add_get(routes.CONFIGURE_DATABASE, handlers.list_databases)
    r.add_post(routes.CONFIGURE_DATABASE, handlers.create_database)
    r.add_put(routes.CONFIGURE_DATABASE, handlers.update_database)
    r.add_delete(routes.CONFIGURE_DATABASE, handlers.delete_database)
    r.add_post(routes.CONFIGURE_RETENTION, handlers.set_retention)
    r.add_delete(routes.CONFIGURE_RETENTION, handlers.clear_retention)
    r.add_post(routes.CONFIGURE_TABLE, handlers.create_table)
    r.add_delete(routes.CONFIGURE_TABLE, handlers.delete_table)
    r.add_post(routes.TOKEN_ADMIN, handlers.create_admin_token)
    r.add_post(routes.TOKEN_ADMIN_REGENERATE, handlers.regenerate_admin_token)
    r.add_post(routes.PERSIST, handlers.persist)
    r.add_get(routes.METRICS, handlers.metrics)
    r.add_get(routes.SYNC, handlers.sync_status)
    r.add_post(routes.SYNC, handlers.sync_now)
    r.add_post(routes.TRIGGER, handlers.create_trigger)
    r.add_delete(routes.TRIGGER, handlers.delete_trigger)
    r.add_post(routes.TRIGGER_ENABLE, handlers.enable_trigger)
    r.add_post(routes.TRIGGER_DISABLE, handlers.disable_trigger)
    r.add_post(routes.INSTALL_PACKAGES, handlers.install_packages)
    r.add_post(routes.INSTALL_REQUIREMENTS, handlers.install_requirements)
    r.add_post(routes.PLUGIN_TEST_WAL, handlers.test_wal_plugin)
    r.add_post(routes.PLUGIN_TEST_SCHEDULE, handlers.test_schedule_plugin)
    r.add_get(routes.ENGINE, handlers.engine_request)
    r.add_post(routes.ENGINE, handlers.engine_request)
    web_app.on_response_prepare.append(_cors)
    return web_app


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Access-Control-Allow-Origin", "*")


def error_response(request: web.Request, err: ApplianceError) -> web.Response:
    """Shape an error as the endpoint's InfluxDB counterpart does."""
    style = handlers.error_style(request)
    status = err.http_status
    if style == "v2":
        return handlers.json_response({"code": err.code, "message": _v2_message(err)}, status=status)
    if style == "v1":
        return handlers.json_response({"error": _v2_message(err)}, status=status)
    if err.body_kind == "text":
        return web.Response(text=err.message, status=status, content_type="text/plain")
    body: dict[str, object] = {"error": err.message}
    if err.data is not None:
        body["data"] = err.data
    return handlers.json_response(body, status=status)


def _v2_message(err: ApplianceError) -> str:
    if isinstance(err, LineProtocolError) and isinstance(err.data, dict):
        d = err.data
        return f"{err.message}: line {d['line_number']}: {d['error_message']} ({d['original_line']!r})"
    return err.message


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApplianceError as e:
        return error_response(request, e)
    except web.HTTPRequestEntityTooLarge as e:
        limit = request.app[APP_KEY].config.max_request_size
        return error_response(
            request,
            TooLarge(
                f"request body is larger than the limit of {limit} bytes (http.max_request_size);"
                f" split the write into smaller batches ({e.text})"
            ),
        )
    except web.HTTPNotFound:
        return web.Response(text="Not found", status=404)
    except web.HTTPException:
        raise  # aiohttp's own answers: 405 for a wrong method, and so on
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return handlers.json_response(
            {"error": "internal error; the details are in the server log"}, status=500
        )


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app[APP_KEY]
    if request.method == "OPTIONS":
        return handlers.options()  # CORS pre-flight on any path, before routing and auth
    if not app.config.auth_enabled or request.path in routes.PUBLIC:
        return await handler(request)
    if request.path == routes.METRICS and "metrics" in app.config.disable_authz:
        return await handler(request)
    if request.path.startswith(routes.ENGINE_PREFIX) and app.engine.is_public(
        request.path[len(routes.ENGINE_PREFIX) :]
    ):
        return await handler(request)  # a request trigger created with no_auth (local webhooks)
    if request.path == routes.TOKEN_ADMIN and app.tokens.admin() is None:
        return await handler(request)  # bootstrap: the first admin token needs no token
    token = _token_of(request)
    if token is None or not app.tokens.verify(token):
        raise Unauthorized("the request was not authenticated")
    return await handler(request)


def _token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() in ("bearer", "token") and value:
            return value
        if scheme.lower() == "basic" and value:
            try:
                return base64.b64decode(value).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                pass
        raise BadRequest("Authorization header was malformed; use 'Authorization: Bearer <token>'")
    return request.query.get("p") if request.path in (routes.WRITE_V1, routes.QUERY_V1) else None
